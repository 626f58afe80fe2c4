"""Committing a run: staged files moved into place, the manifest written last.

Once every file of a run is staged, ingest writes a commit record (``_commit.json`` in the
run's staging folder: the moves, the earlier outputs to remove, the manifest entries),
then carries it out. A run killed before the record exists left nothing outside
staging: the next run discards that folder and reads the same objects again (the manifest
does not name them). A run killed after it left a record: the next run carries the record
out first, which is safe to repeat, so the commit completes exactly once.

S3 has no rename: each move is a copy of one object, which readers see whole or not at
all, then a delete. While a commit runs (seconds), a reader listing ``curated/`` may see
some of a replaced object's files gone before the new ones arrive; never a partial file.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasks.ingest.manifest import (
    ManifestEntry,
    _entry_dict,
    entry_from_dict,
    load_manifest,
    write_manifest,
)

log = logging.getLogger("updraft.ingest")

JOURNAL = "_commit.json"
FORMAT = "updraft.ingest-commit/1"
#: A staging folder without a commit record this old belongs to a run that died.
STALE_AFTER_S = 3600.0


@dataclass
class Journal:
    """What committing ``run_id`` does. ``manifest_uri`` None: a failed run that only keeps
    its quarantine (and records nothing). ``result`` is the run's summary, for a retry."""

    run_id: str
    moves: list[tuple[str, str]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    entries: list[ManifestEntry] = field(default_factory=list)
    fingerprint: str | None = None
    manifest_uri: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "run_id": self.run_id,
            "moves": [list(move) for move in self.moves],
            "remove": self.remove,
            "entries": [_entry_dict(entry) for entry in self.entries],
            "fingerprint": self.fingerprint,
            "manifest_uri": self.manifest_uri,
            "result": self.result,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Journal":
        if data.get("format") != FORMAT:
            raise ValueError(f"not a commit record: format {data.get('format')!r}")
        return cls(
            run_id=data["run_id"],
            moves=[(src, dst) for src, dst in data["moves"]],
            remove=list(data["remove"]),
            entries=[entry_from_dict(entry) for entry in data["entries"]],
            fingerprint=data.get("fingerprint"),
            manifest_uri=data.get("manifest_uri"),
            result=dict(data.get("result") or {}),
        )


def commit_run(fs: Any, run_staging: str, journal: Journal) -> None:
    """Record the commit, then carry it out."""
    path = fs._strip_protocol(run_staging).rstrip("/") + "/" + JOURNAL
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    fs.pipe_file(path, json.dumps(journal.to_dict()).encode())
    apply_journal(fs, run_staging, journal)


def apply_journal(fs: Any, run_staging: str, journal: Journal) -> None:
    """Carry out a commit record; repeating it after an interruption finishes the same commit."""
    root = fs._strip_protocol(run_staging).rstrip("/")
    _remove(fs, [fs._strip_protocol(uri) for uri in journal.remove])
    try:
        staged = set(fs.find(root))
    except FileNotFoundError:
        staged = set()
    pending = [(fs._strip_protocol(src), fs._strip_protocol(dst)) for src, dst in journal.moves]
    todo = [(src, dst) for src, dst in pending if src in staged]
    lost = [src for src, dst in pending if src not in staged and not fs.exists(dst)]
    if lost:
        raise RuntimeError(f"the commit of run {journal.run_id} lost {len(lost)} staged files, e.g. {lost[0]}")
    if todo:
        if _is_local(fs):
            for folder in {posixpath.dirname(dst) for _, dst in todo}:
                fs.makedirs(folder, exist_ok=True)
        fs.copy([src for src, _ in todo], [dst for _, dst in todo])
        _remove(fs, [src for src, _ in todo])
    if journal.manifest_uri is not None:
        manifest = load_manifest(fs, journal.manifest_uri)
        write_manifest(
            fs,
            journal.manifest_uri,
            manifest.merged(journal.entries, run_id=journal.run_id, fingerprint=journal.fingerprint),
        )
    _remove(fs, [root], recursive=True)


def recover(fs: Any, staging_root: str, current_run: str) -> list[Journal]:
    """Finish the commits interrupted runs recorded; drop what runs that died before
    committing staged. Returns the commit records carried out."""
    root = fs._strip_protocol(staging_root).rstrip("/")
    try:
        folders = [entry for entry in fs.ls(root, detail=True) if entry.get("type") == "directory"]
    except FileNotFoundError:
        return []
    finished: list[Journal] = []
    for entry in folders:
        folder = entry["name"].rstrip("/")
        run_id = folder.rsplit("/", 1)[-1]
        journal = _read_journal(fs, folder + "/" + JOURNAL)
        if journal is not None:
            log.warning("completing the commit of run %s, which was interrupted", journal.run_id)
            apply_journal(fs, fs.unstrip_protocol(folder) + "/", journal)
            finished.append(journal)
        elif run_id == current_run or _age_s(fs, folder) > STALE_AFTER_S:
            log.warning("discarding the staged output of run %s, which stopped before committing", run_id)
            _remove(fs, [folder], recursive=True)
        else:
            log.warning("staged output of run %s is recent and uncommitted: is another ingest running?", run_id)
    return finished


def _read_journal(fs: Any, path: str) -> Journal | None:
    try:
        with fs.open(path, "rb") as handle:
            return Journal.from_dict(json.loads(handle.read()))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):  # cut short while written: nothing was moved yet
        return None


def _age_s(fs: Any, folder: str) -> float:
    newest = 0.0
    for info in fs.find(folder, detail=True).values():
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
        if isinstance(stamp, datetime):
            stamp = stamp.timestamp()
        if stamp:
            newest = max(newest, float(stamp))
    return time.time() - newest if newest else float("inf")


def _remove(fs: Any, paths: list[str], *, recursive: bool = False) -> None:
    if not paths:
        return
    try:
        fs.rm(paths, recursive=recursive)
    except FileNotFoundError:
        for path in paths:
            try:
                fs.rm(path, recursive=recursive)
            except FileNotFoundError:
                pass


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return protocol in ("file", "local")
