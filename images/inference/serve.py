"""The inference server: SageMaker's serving contract, runnable as a plain process.

SageMaker starts the image as ``docker run IMAGE serve`` with the model unpacked in
``/opt/ml/model`` and expects ``GET /ping`` and ``POST /invocations`` on port 8080. The
local targets run this very module as a process (``python -m images.inference.serve``),
so what a user tests on a laptop is what runs behind a SageMaker endpoint.

Requests are parsed here and handed to ``ModelBundle.predict_frame``, which applies the
same ``transform.json`` as preprocessing did: no training/serving skew. Anything wrong
with a request is the caller's to fix and answers 4xx with a sentence saying what; a
5xx means a bug in updraft.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pandas as pd
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tasks.errors import DataError, UpdraftError
from tasks.features.transform import numeric_values

# The serving contract's names (STYLE habit 10); tasks/deploy/local_endpoints.py sets the first three.
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
HOST_ENV = "UPDRAFT_SERVE_HOST"
MODEL_DIR_ENV = "SM_MODEL_DIR"
DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"
DEFAULT_MODEL_DIR = "/opt/ml/model"
#: SageMaker refuses real-time payloads above 6 MB; answering the same locally keeps
#: a request that works on a laptop working behind the real endpoint.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
CSV = "text/csv"
JSON = "application/json"
SUPPORTED_CONTENT_TYPES = (CSV, JSON)
#: SageMaker keeps a container 30 s between SIGTERM and SIGKILL; finish in-flight requests within that.
GRACEFUL_SHUTDOWN_S = 25

logger = logging.getLogger("updraft.serve")


class InvalidRequest(ValueError):
    """A request the caller must fix; its message is sent back with a 400."""


def _columns(spec: dict[str, Any]) -> tuple[list[str], set[str]]:
    columns = list(spec["input_columns"])
    numeric = {entry["name"] for entry in spec.get("numeric", [])}
    return columns, numeric


def _frame(rows: list[list[Any]], spec: dict[str, Any]) -> pd.DataFrame:
    """Rows of raw values (``None`` = missing) to the frame ``predict_frame`` takes.

    Numeric columns are parsed here with the transform's own parser, so text the
    training side would refuse is refused here too, as a 400 that names the column;
    every other column keeps its raw values for the transform to encode.
    """
    columns, numeric = _columns(spec)
    data: dict[str, Any] = {}
    for j, name in enumerate(columns):
        raw = pd.Series([row[j] for row in rows], dtype=object)
        if name in numeric:
            flags = raw.map(lambda v: isinstance(v, bool)).to_numpy(dtype=bool)
            if flags.any():
                i = int(flags.nonzero()[0][0])
                raise InvalidRequest(f"row {i + 1}, column {name!r}: expected a number, got {raw[i]!r}")
            try:
                data[name] = numeric_values(raw, name)
            except DataError as exc:
                raise InvalidRequest(str(exc)) from None
        else:
            data[name] = raw
    return pd.DataFrame(data, columns=columns)


def parse_csv(body: bytes, spec: dict[str, Any]) -> pd.DataFrame:
    """``text/csv`` rows, no header, columns in ``spec["input_columns"]`` order; empty fields are missing."""
    columns, _ = _columns(spec)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the CSV body is not UTF-8 text (byte {exc.start})") from None
    rows: list[list[Any]] = []
    try:
        for i, fields in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            # csv yields [] for an empty line: one empty field, i.e. a row of one missing value.
            fields = fields or [""]
            if len(fields) != len(columns):
                raise InvalidRequest(
                    f"row {i} has {len(fields)} field{'s' if len(fields) != 1 else ''}; expected "
                    f"{len(columns)} ({', '.join(columns)}), without a header and without the label"
                )
            rows.append([f if f != "" else None for f in fields])
    except csv.Error as exc:
        raise InvalidRequest(f"the CSV body cannot be parsed: {exc}") from None
    if not rows:
        raise InvalidRequest("the CSV body has no rows")
    return _frame(rows, spec)


def parse_json(body: bytes, spec: dict[str, Any]) -> pd.DataFrame:
    """``{"instances": [{column: value, ...}, ...]}``; absent keys are missing values."""
    columns, _ = _columns(spec)
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise InvalidRequest('the JSON body must be an object {"instances": [{column: value, ...}, ...]}')
    extra = sorted(set(doc) - {"instances"})
    if extra:
        raise InvalidRequest(f"unknown top-level key(s) {extra}; only 'instances' is accepted")
    instances = doc["instances"]
    if not instances:
        raise InvalidRequest("'instances' is empty: nothing to predict")
    known = set(columns)
    rows: list[list[Any]] = []
    for i, instance in enumerate(instances, start=1):
        if not isinstance(instance, dict):
            raise InvalidRequest(f"instance {i} is a {type(instance).__name__}, expected an object of column: value")
        unknown = sorted(set(instance) - known)
        if unknown:
            raise InvalidRequest(
                f"instance {i} has unknown key(s) {unknown}; the model takes {', '.join(columns)}"
            )
        row = [instance.get(name) for name in columns]
        for name, value in zip(columns, row):
            if isinstance(value, (dict, list)):
                raise InvalidRequest(f"instance {i}, column {name!r}: expected a single value, got a {type(value).__name__}")
        rows.append(row)
    return _frame(rows, spec)


_PARSERS = {CSV: parse_csv, JSON: parse_json}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def load_bundle(model_dir: str | Path) -> Any:
    """The model bundle; imported here so ``main`` can limit XGBoost's threads before it loads."""
    from tasks.modelbundle import load_model_bundle

    return load_model_bundle(model_dir)


def create_app(model_dir: str | Path) -> Starlette:
    """The ASGI app around the model in ``model_dir``, loaded once, here, before any request."""
    bundle = load_bundle(model_dir)
    spec = bundle.spec
    # One prediction at a time: the process has one XGBoost thread, and /ping stays
    # answerable from the event loop while a large request is being predicted.
    predict_lock = threading.Lock()

    def predict(frame: pd.DataFrame) -> list[Any]:
        with predict_lock:
            predictions = bundle.predict_frame(frame)
        return list(predictions)

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def execution_parameters(request: Request) -> Response:
        # Asked by SageMaker batch transform; lets it size its requests to this server.
        return JSONResponse(
            {"MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": MAX_PAYLOAD_BYTES // 2**20}
        )

    async def invocations(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        parser = _PARSERS.get(content_type)
        if parser is None:
            shown = repr(content_type) if content_type else "none"
            return _error(
                415, f"unsupported content type {shown}; send one of: {', '.join(SUPPORTED_CONTENT_TYPES)}"
            )
        body = await request.body()  # the route's max_body_size answers 413 above the limit
        if not body.strip():
            return _error(400, "the request body is empty; send rows to predict")
        try:
            frame = parser(body, spec)
        except InvalidRequest as exc:
            return _error(400, str(exc))
        try:
            predictions = await run_in_threadpool(predict, frame)
        except DataError as exc:  # input the transform refuses (its message names the column)
            return _error(400, str(exc))
        return JSONResponse({"predictions": predictions})

    return Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/execution-parameters", execution_parameters, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"], max_body_size=MAX_PAYLOAD_BYTES),
        ]
    )


def main() -> None:
    """Serve the model in ``SM_MODEL_DIR`` (or ``/opt/ml/model``) until SIGTERM."""
    # XGBoost reads its thread count when its OpenMP runtime loads: set it before the
    # bundle (and with it xgboost) is imported. One worker, one thread: the measured
    # fastest setup on small machines (docs: ENVIRONMENT.md, "Serving a 1-row CSV request").
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_dir = os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR
    host = os.environ.get(HOST_ENV) or DEFAULT_HOST
    port_text = os.environ.get(PORT_ENV) or str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise SystemExit(f"{PORT_ENV}={port_text!r} is not a port number") from None
    try:
        app = create_app(model_dir)
    except UpdraftError as exc:  # a model the user must fix: one line in the log, no traceback
        logger.error("cannot serve the model in %s: %s", model_dir, exc)
        raise SystemExit(1) from None
    logger.info("model loaded from %s; serving on %s:%d", model_dir, host, port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        workers=1,
        access_log=True,  # method, path and status only: payloads are never logged
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    main()
