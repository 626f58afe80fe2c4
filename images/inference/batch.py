"""Batch transform: every object under a prefix through the server's own parsing and prediction.

What SageMaker batch transform does with this image, done in-process over any fsspec
filesystem (s3fs on the embedded endpoint or on AWS, or local files): each input object
gives one ``<name>.out`` under the output location, at the same path relative to the
input prefix. With ``split_type="Line"`` records are lines, sent in mini-batches of at most
``max_payload_mb`` (SageMaker's ``MaxPayloadInMB``, 6 by default as the server's
``/execution-parameters`` says) with the ``MultiRecord`` strategy, and the responses are
joined with newlines (``AssembleWith="Line"``): with ``accept="text/csv"`` that is one
prediction per input line; with JSON it is one ``{"predictions": [...]}`` per mini-batch.
CSV lines are rows; JSON lines are one instance each (an object or a list). With
``split_type="None"`` each object is one request body (Parquet must be sent this way).

Bodies go through :class:`images.inference.predictor.Predictor`, so a file predicts
exactly as the same rows sent to the endpoint. The first record the server would answer
with a 4xx stops the job, as it fails a SageMaker transform job, naming the object and
its lines; no partial output is left for that object.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from images.inference.payloads import JSON, MAX_PAYLOAD_BYTES, PARQUET, RequestError, accept_type_of, content_type_of
from images.inference.predictor import Predictor
from tasks.errors import ConfigError, DataError

SPLIT_TYPES = ("Line", "None")
OUTPUT_SUFFIX = ".out"
DEFAULT_MAX_PAYLOAD_MB = MAX_PAYLOAD_BYTES // 2**20

logger = logging.getLogger("updraft.batch")


@dataclass
class BatchTransformResult:
    """What a transform wrote: one entry per input object, in the order they were read."""

    input_uri: str
    output_uri: str
    objects: int = 0
    records: int = 0
    requests: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_transform(
    fs: Any,
    input_uri: str,
    output_uri: str,
    model_dir: str | Path,
    content_type: str,
    accept: str,
    split_type: str = "Line",
    *,
    max_payload_mb: int = DEFAULT_MAX_PAYLOAD_MB,
) -> BatchTransformResult:
    """Predict every object under ``input_uri`` into ``output_uri`` with the model in ``model_dir``.

    ``fs`` is an fsspec filesystem that reaches both URIs (``Target.filesystem()`` for S3,
    ``fsspec.filesystem("file")`` for local paths). ``input_uri`` names one object or a
    prefix; objects in folders below it keep their relative paths. ``model_dir`` is an
    extracted model folder or a local ``model.tar.gz``. ``content_type`` and ``accept`` are
    the server's (``text/csv``, ``application/json``, ``application/x-parquet``; JSON or CSV out).
    Raises :class:`ConfigError` for arguments that cannot work and :class:`DataError` for
    input the model cannot read.
    """
    from fsspec.core import strip_protocol

    try:
        kind = content_type_of(content_type)
        answer = accept_type_of(accept)
    except RequestError as exc:
        raise ConfigError(f"batch transform: {exc}") from None
    if split_type not in SPLIT_TYPES:
        raise ConfigError(f"batch transform: split_type {split_type!r} is not supported; use one of {', '.join(SPLIT_TYPES)}")
    if kind == PARQUET and split_type == "Line":
        raise ConfigError("batch transform: Parquet files cannot be split into lines; use split_type='None' (one request per file)")
    if not 1 <= max_payload_mb <= 100:
        raise ConfigError(f"batch transform: max_payload_mb must be 1 to 100 (SageMaker's MaxPayloadInMB), got {max_payload_mb}")
    limit = max_payload_mb * 2**20
    source = strip_protocol(input_uri)
    target = strip_protocol(output_uri).rstrip("/")
    objects, base = _list_inputs(fs, source, input_uri)
    if target == base.rstrip("/") or target.startswith(base.rstrip("/") + "/"):
        raise ConfigError(
            f"batch transform: the output location {output_uri} lies inside the input {input_uri}; "
            "a rerun would read its own output: write it elsewhere"
        )
    started = time.perf_counter()
    result = BatchTransformResult(input_uri=input_uri, output_uri=output_uri)
    with _extracted_model(model_dir) as folder:
        from tasks.modelbundle import load_model_bundle

        predictor = Predictor(load_model_bundle(folder))
        for path in objects:
            relative = posixpath.relpath(path, base) if base else posixpath.basename(path)
            out_path = f"{target}/{relative}{OUTPUT_SUFFIX}"
            location = _uri_like(input_uri, path)
            records, requests = _transform_object(fs, path, out_path, location, predictor, kind, answer, split_type, limit)
            result.objects += 1
            result.records += records
            result.requests += requests
            result.outputs.append(_uri_like(output_uri, out_path))
            logger.info("batch transform: %s -> %s (%d records, %d requests)", location, result.outputs[-1], records, requests)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _uri_like(template: str, path: str) -> str:
    """``path`` with the protocol ``template`` was given with (``s3://...`` stays a URI)."""
    scheme, sep, _ = template.partition("://")
    return f"{scheme}://{path}" if sep else path


def _list_inputs(fs: Any, source: str, input_uri: str) -> tuple[list[str], str]:
    """The objects to transform, sorted, and the folder their output paths are relative to."""
    if fs.isfile(source):
        return [source], posixpath.dirname(source)
    if fs.isdir(source):
        base = source.rstrip("/")
        found = fs.find(base)
    else:  # a key prefix, as SageMaker's S3Prefix: every object whose key starts with it
        base = posixpath.dirname(source)
        found = [p for p in (fs.find(base) if base and fs.isdir(base) else []) if p.startswith(source)]
    objects = sorted(p for p in found if not p.endswith("/"))
    if not objects:
        raise DataError(f"batch transform: no objects under {input_uri}")
    return objects, base


@contextlib.contextmanager
def _extracted_model(model_dir: str | Path) -> Iterator[Path]:
    """The extracted model folder: ``model_dir`` itself, or a local model.tar.gz unpacked for the run."""
    path = Path(model_dir)
    if not path.is_file():
        yield path
        return
    from tasks.modelbundle import extract_model_tar

    with tempfile.TemporaryDirectory(prefix="updraft-batch-model-") as tmp:
        yield extract_model_tar(path, Path(tmp) / "model")


def _is_local(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool({"file", "local"} & set(protocols))


def _transform_object(
    fs: Any,
    path: str,
    out_path: str,
    location: str,
    predictor: Predictor,
    kind: str,
    answer: str,
    split_type: str,
    limit: int,
) -> tuple[int, int]:
    """Write ``out_path`` for the object at ``path``; ``(records, requests)``. Removes the output on failure."""
    records = requests = 0
    if _is_local(fs):  # object stores have no folders to make
        fs.makedirs(posixpath.dirname(out_path), exist_ok=True)
    try:
        with fs.open(path, "rb") as source, fs.open(out_path, "wb") as sink:
            for first_line, body, count in _requests(source, location, kind, split_type, limit):
                try:
                    response, predicted = predictor.respond(body, kind, answer)
                except RequestError as exc:
                    where = f"lines {first_line}-{first_line + count - 1}" if split_type == "Line" else "the object"
                    raise DataError(f"batch transform: {location}, {where}: {exc}") from None
                if split_type == "Line" and predicted != count:
                    raise DataError(
                        f"batch transform: {location}, lines {first_line}-{first_line + count - 1}: {count} lines gave "
                        f"{predicted} predictions (a quoted CSV field spans lines?); each line must be one record"
                    )
                sink.write(response if answer != JSON else response + b"\n")
                records += predicted
                requests += 1
    except BaseException:
        try:
            fs.rm(out_path)
        except (FileNotFoundError, OSError):
            pass
        raise
    return records, requests


def _requests(source: Any, location: str, kind: str, split_type: str, limit: int) -> Iterator[tuple[int, bytes, int]]:
    """``(first line number, body, records)`` per request: the whole object, or lines in mini-batches under ``limit``."""
    if split_type == "None":
        body = source.read(limit + 1)
        if len(body) > limit:
            raise DataError(
                f"batch transform: {location} is over the {limit // 2**20} MB payload limit as one request; "
                "split it into lines (split_type='Line') or raise max_payload_mb (at most 100)"
            )
        if body.strip():
            yield 1, body, 1
        return
    pending: list[bytes] = []
    size = 0
    first = 1
    for line_number, line in enumerate(source, start=1):
        if not line.endswith(b"\n"):
            line += b"\n"
        if len(line) > limit:
            raise DataError(f"batch transform: {location}, line {line_number} is over the {limit // 2**20} MB payload limit")
        if size + len(line) + (2 if kind == JSON else 0) > limit and pending:
            yield first, _body(pending, kind), len(pending)
            pending, size, first = [], 0, line_number
        pending.append(line)
        size += len(line) + (1 if kind == JSON else 0)
    if pending:
        yield first, _body(pending, kind), len(pending)


def _body(lines: list[bytes], kind: str) -> bytes:
    """CSV lines as they are; JSON lines (one instance each) as a JSON list of instances."""
    if kind == JSON:
        return b"[" + b",".join(line.rstrip(b"\r\n") for line in lines) + b"]"
    return b"".join(lines)
