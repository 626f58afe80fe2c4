"""The inference server: SageMaker's serving contract, runnable as a plain process.

SageMaker starts the image as ``docker run IMAGE serve`` with the model unpacked in
``/opt/ml/model`` and expects ``GET /ping`` and ``POST /invocations`` on port 8080 (the
image's ``serve`` runs :func:`main`). Local endpoints run the very same app (from
:func:`create_app`, under uvicorn in ``tasks/deploy/endpoint_process.py``), so what a
user tests on a laptop is what runs behind a SageMaker endpoint.

The app is a plain ASGI callable under uvicorn: a one-row request costs well under a
millisecond of CPU, so the server adds as little as it can of its own (no framework
routing, no pandas on the hot path: :mod:`images.inference.csv_rows`,
:mod:`images.inference.booster_call`; benchmarks/serve.py measures it). Bodies are parsed and predicted by
:class:`images.inference.predictor.Predictor`, which batch transform shares, and which
gives exactly what ``ModelBundle.predict_frame`` gives: no training/serving skew.
Anything wrong with a request is the caller's to fix and answers 4xx with a sentence
saying what; a 5xx means a bug (in updraft, or in a user's own inference script).
Each request is logged as method, path, status, bytes in and out and latency, never
its payload.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Awaitable, Callable

from images.inference.payloads import (
    CONTENT_TYPES,
    JSON,
    MAX_PAYLOAD_BYTES,
    InvalidRequest,
    RequestError,
    accept_type_of,
    check_size,
    content_type_of,
    error_body,
)
from images.inference.payloads import parse_csv, parse_json  # still importable from here, as before
from images.inference.predictor import Predictor
from tasks.errors import UpdraftError

__all__ = [
    "InferenceApp", "app_from_environment", "create_app", "load_bundle", "main", "parse_csv", "parse_json", "worker_count",
]

# The serving contract's names (STYLE habit 10), read by main().
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
HOST_ENV = "UPDRAFT_SERVE_HOST"
MODEL_DIR_ENV = "SM_MODEL_DIR"
#: Server processes (SageMaker's inference toolkit reads the same variable); the image sets
#: ``auto`` (one per core: SageMaker gives the container the instance), local endpoints leave it
#: unset and run one (a laptop runs several endpoints and the load generator beside them).
WORKERS_ENV = "SAGEMAKER_MODEL_SERVER_WORKERS"
DEFAULT_PORT = 8080
DEFAULT_HOST = "0.0.0.0"
DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_WORKERS = 1
SUPPORTED_CONTENT_TYPES = CONTENT_TYPES
#: SageMaker keeps a container 30 s between SIGTERM and SIGKILL; finish in-flight requests within that.
GRACEFUL_SHUTDOWN_S = 25
#: Bodies up to this size are parsed and predicted on the event loop (a few hundred rows,
#: about a millisecond); larger ones in the predict thread, so /ping stays answerable.
INLINE_MAX_BYTES = 64 * 1024
#: Keep idle connections longer than a load balancer's idle timeout (60 s), so the
#: server never closes one the balancer is about to reuse.
KEEP_ALIVE_S = 75

logger = logging.getLogger("updraft.serve")
access_logger = logging.getLogger("updraft.serve.access")

_JSON_HEADER = (b"content-type", b"application/json")
_PING_BODY = b'{"status":"ok"}'

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def load_bundle(model_dir: str | Path) -> Any:
    """The model bundle; imported here so ``main`` can limit XGBoost's threads before it loads."""
    from tasks.modelbundle import load_model_bundle

    return load_model_bundle(model_dir)


class InferenceApp:
    """The ASGI app: ``GET /ping``, ``POST /invocations``, ``GET /execution-parameters``."""

    def __init__(self, predictor: Predictor, *, workers: int = 1) -> None:
        self.predictor = predictor
        # One prediction at a time per process (one XGBoost thread): large bodies go to this
        # thread; small ones run inline only while it is idle, so the two never overlap.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="updraft-predict")
        self._in_thread = 0
        self._execution_parameters = json.dumps(
            {"MaxConcurrentTransforms": workers, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": MAX_PAYLOAD_BYTES // 2**20}
        ).encode()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _freeze_heap()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._executor.shutdown(wait=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        received = 0
        headers: list[tuple[bytes, bytes]] = [_JSON_HEADER]
        if path == "/invocations":
            if method == "POST":
                status, body, content_type, received = await self._invocations(scope, receive)
                headers = [(b"content-type", content_type.encode())]
            else:
                status, body = 405, error_body("use POST /invocations")
                headers.append((b"allow", b"POST"))
        elif path == "/ping":
            if method in ("GET", "HEAD"):
                status, body = 200, _PING_BODY
            else:
                status, body = 405, error_body("use GET /ping")
                headers.append((b"allow", b"GET, HEAD"))
        elif path == "/execution-parameters" and method == "GET":
            status, body = 200, self._execution_parameters
        else:
            status, body = 404, error_body(f"no such path {path!r}; the server answers GET /ping and POST /invocations")
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        access_logger.info(
            "%s %s %d in=%dB out=%dB %.2fms", method, path, status, received, len(body), (time.perf_counter() - started) * 1e3
        )

    async def _invocations(self, scope: dict[str, Any], receive: Receive) -> tuple[int, bytes, str, int]:
        """``(status, body, its content type, bytes received)``; a 4xx for anything the caller must fix."""
        content_type_header = accept_header = length_header = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type_header = value.decode("latin-1")
            elif name == b"accept":
                accept_header = value.decode("latin-1")
            elif name == b"content-length":
                length_header = value
        received = 0
        try:
            content_type = content_type_of(content_type_header)
            accept = accept_type_of(accept_header)
            if length_header is not None and length_header.isdigit():
                check_size(int(length_header))  # answered at once; uvicorn discards the unread body
            body, received = await _read_body(receive)
            if self._in_thread or len(body) > INLINE_MAX_BYTES:
                self._in_thread += 1
                try:
                    loop = asyncio.get_running_loop()
                    answer, _ = await loop.run_in_executor(self._executor, self.predictor.respond, body, content_type, accept)
                finally:
                    self._in_thread -= 1
            else:
                answer, _ = self.predictor.respond(body, content_type, accept)
            return 200, answer, accept, received
        except RequestError as exc:
            return exc.status, error_body(str(exc)), JSON, received
        except Exception as exc:  # a bug: the caller gets a 500 that says so, the log the traceback
            logger.exception("POST /invocations failed")
            return 500, error_body(f"internal error ({type(exc).__name__}): this is a bug in the server, not in the request"), JSON, received


async def _read_body(receive: Receive) -> tuple[bytes, int]:
    """The whole request body, or :class:`PayloadTooLarge` as soon as it passes the limit."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        check_size(len(body))
        return body, len(body)
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        check_size(size)
        chunks.append(chunk)
    return b"".join(chunks), size


def create_app(model_dir: str | Path, *, workers: int = 1) -> InferenceApp:
    """The ASGI app around the model in ``model_dir``, loaded once, here, before any request."""
    started = time.perf_counter()
    bundle = load_bundle(model_dir)
    predictor = Predictor(bundle)
    logger.info(
        "model loaded from %s in %.2f s: %s, %s, %d features; plain CSV rows %s",
        model_dir,
        time.perf_counter() - started,
        bundle.spec["task"],
        getattr(bundle, "algorithm", "xgboost"),
        len(bundle.spec["feature_names"]),
        "skip pandas" if predictor.skips_pandas else "go through pandas (date-time inputs)",
    )
    return InferenceApp(predictor, workers=workers)


def app_from_environment() -> InferenceApp:
    """:func:`create_app` for the model in ``SM_MODEL_DIR``: the factory each worker process calls."""
    return create_app(model_dir_from_environment(), workers=worker_count())


def _freeze_heap() -> None:
    """Move everything loaded so far (pandas, XGBoost, the model) out of the garbage collector's
    sight, once the server is about to serve: a full collection then scans only what requests
    allocate. Measured over 30,000 one-row requests: one full collection of 74 ms without, none with."""
    gc.collect()
    gc.freeze()


def model_dir_from_environment() -> str:
    return os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR


def worker_count() -> int:
    """Server processes: ``SAGEMAKER_MODEL_SERVER_WORKERS`` (a number, or ``auto``: one per usable
    core, as the image sets it), else :data:`DEFAULT_WORKERS` (local endpoints: one)."""
    text = (os.environ.get(WORKERS_ENV) or str(DEFAULT_WORKERS)).strip()
    if text.lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        workers = int(text)
    except ValueError:
        raise SystemExit(f"{WORKERS_ENV}={text!r} is not a whole number or 'auto'") from None
    if workers < 1:
        raise SystemExit(f"{WORKERS_ENV}={text!r}: run at least one worker")
    return workers


def logging_config() -> dict[str, Any]:
    """One line per event on stderr, the server's and uvicorn's alike (uvicorn's own access log is off)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stderr"}},
        "loggers": {
            "updraft": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }


def main() -> None:
    """Serve the model in ``SM_MODEL_DIR`` (or ``/opt/ml/model``) until SIGTERM."""
    # XGBoost reads its thread count when its OpenMP runtime loads: set it before the
    # bundle (and with it xgboost) is imported. One XGBoost thread per worker: requests
    # bring the parallelism (ENVIRONMENT.md, "Serving a 1-row CSV request").
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging.config

    import uvicorn

    logging.config.dictConfig(logging_config())
    model_dir = model_dir_from_environment()
    host = os.environ.get(HOST_ENV) or DEFAULT_HOST
    port_text = os.environ.get(PORT_ENV) or str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        raise SystemExit(f"{PORT_ENV}={port_text!r} is not a port number") from None
    workers = worker_count()
    try:
        app = create_app(model_dir, workers=workers)  # with several workers: a check that it loads
    except UpdraftError as exc:  # a model the user must fix: one line in the log, no traceback
        logger.error("cannot serve the model in %s: %s", model_dir, exc)
        raise SystemExit(1) from None
    logger.info("serving on %s:%d with %d worker process%s", host, port, workers, "" if workers == 1 else "es")
    target: Any = app if workers == 1 else "images.inference.serve:app_from_environment"
    if workers > 1:
        del app  # each worker loads its own
    uvicorn.run(
        target,
        factory=workers > 1,
        host=host,
        port=port,
        workers=workers,
        log_config=logging_config(),
        access_log=False,  # ours logs bytes and latency too, and never a payload
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


if __name__ == "__main__":
    main()
