"""What ingest can read: raw objects under the source prefix, their formats and compression.

A ``SourceObject`` is a plain value (key, size, version tag) so the manifest can compare
what is under the prefix now with what was ingested before.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from tasks.errors import DataError

log = logging.getLogger("updraft.ingest")

#: Base name endings and the format each holds. ``.json`` means JSON lines.
BASE_FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".parquet": "parquet",
}
#: Compression by extension, as pyarrow's codecs name it (pyarrow decompresses all three,
#: so zstd needs no extra package). Parquet compresses inside the file instead.
COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
#: Every file name ending ingest reads, and the format each holds.
FORMATS: dict[str, str] = {
    **BASE_FORMATS,
    **{
        base + ext: fmt
        for base, fmt in BASE_FORMATS.items()
        if fmt != "parquet"
        for ext in COMPRESSIONS
    },
}
FORMAT_NAMES = {"csv": "CSV", "tsv": "TSV", "json": "JSON lines", "parquet": "Parquet"}


@dataclass(frozen=True)
class SourceObject:
    """One raw file to ingest.

    ``etag`` is the store's version tag: S3's ETag, or ``local-<mtime_ns>-<size>`` on a
    local disk (which has none), so a replaced file is told apart from the one ingested.
    """

    uri: str
    key: str
    size: int
    etag: str | None = None

    @property
    def format(self) -> str:
        return FORMATS[_suffix(self.key)]

    @property
    def compression(self) -> str | None:
        """pyarrow's codec name for the file's compression, or None."""
        suffix = _suffix(self.key)
        for ext, codec in COMPRESSIONS.items():
            if suffix.endswith(ext):
                return codec
        return None

    @property
    def compressed(self) -> bool:
        return self.compression is not None


def _suffix(key: str) -> str:
    name = key.rsplit("/", 1)[-1].lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def list_source_objects(fs: Any, source_uri: str) -> list[SourceObject]:
    """Every readable file under ``source_uri`` (a prefix or one file), sorted by key.

    Other objects are left where they are, named in a warning, so a stray README or
    ``_SUCCESS`` marker does not fail the run.
    """
    path = fs._strip_protocol(source_uri).rstrip("/")
    try:
        infos = {path: fs.info(path)} if fs.isfile(path) else fs.find(path, detail=True)
    except FileNotFoundError:
        infos = {}
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    remote = protocol not in ("file", "local")
    objects: list[SourceObject] = []
    skipped: list[str] = []
    for name, info in sorted(infos.items()):
        if info.get("type", "file") != "file":
            continue
        if not _suffix(name):
            skipped.append(name)
            continue
        size = int(info.get("size") or 0)
        etag = info.get("ETag") or info.get("etag")
        if etag:
            etag = str(etag).strip('"')
        elif not remote and info.get("mtime") is not None:
            etag = f"local-{int(float(info['mtime']) * 1e9)}-{size}"
        objects.append(
            SourceObject(
                uri=f"{protocol}://{name}" if remote else name,
                key=name.split("/", 1)[1] if remote else name,
                size=size,
                etag=etag or None,
            )
        )
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning(
            "skipping %d files under %s that are not CSV, JSON lines or Parquet: %s", len(skipped), source_uri, shown
        )
    if not objects:
        raise no_files(source_uri)
    return objects


def no_files(source_uri: str) -> DataError:
    return DataError(f"no CSV, JSON-lines or Parquet files under {source_uri}; upload data there or fix 'source'")


def file_slug(key: str) -> str:
    """The name of one source file's output: readable, stable per key, and never starting
    with '_' or '.' or holding '=' (Parquet readers skip or reinterpret those)."""
    base = key.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9-]+", "_", base).strip("_-")[:60] or "file"
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
