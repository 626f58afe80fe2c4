"""The ingest manifest: which raw objects are in ``curated/`` already, at which version.

One JSON document per dataset (``Layout.manifest()``), written last by every run, so it
only ever names outputs that are fully in place. A rerun compares the source listing
with it (:func:`diff_objects`) and reads only what is new or changed; ``--watch`` polls
the same diff.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from tasks.errors import DataError
from tasks.ingest.sources import SourceObject

FORMAT = "updraft.manifest/1"
INGESTED, REJECTED = "ingested", "rejected"


@dataclass(frozen=True)
class ManifestEntry:
    """One raw object as a run took it: ``status`` is "ingested" (rows curated or
    quarantined) or "rejected" (the file could not be read; ``reason`` says why and
    ``copy`` is where it was kept)."""

    key: str
    uri: str
    etag: str | None
    size: int
    status: str
    rows_in: int
    rows_curated: int
    rows_quarantined: int
    run_id: str
    ingested_at: str
    outputs: tuple[str, ...] = ()  # the curated Parquet files holding its rows
    quarantine: str | None = None  # the folder holding its quarantined rows, if any
    reason: str | None = None
    copy: str | None = None


@dataclass
class Manifest:
    """``fingerprint`` names the contract and settings the outputs were made with; when it
    changes, every object is ingested again so curated data follows one contract."""

    entries: dict[str, ManifestEntry] = field(default_factory=dict)
    fingerprint: str | None = None
    updated_at: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "updated_at": self.updated_at,
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "objects": {key: _entry_dict(entry) for key, entry in sorted(self.entries.items())},
        }

    def merged(self, entries: Iterable[ManifestEntry], *, run_id: str, fingerprint: str | None) -> "Manifest":
        """A copy with ``entries`` recorded (replacing earlier ones of the same keys)."""
        updated = dict(self.entries)
        updated.update({entry.key: entry for entry in entries})
        return Manifest(entries=updated, fingerprint=fingerprint, updated_at=now(), run_id=run_id)


@dataclass(frozen=True)
class ObjectDiff:
    """The source listing against the manifest: ``new`` keys, ``changed`` ones (another
    ETag or size than recorded) and ``unchanged`` ones (skipped by a rerun)."""

    new: list[SourceObject]
    changed: list[SourceObject]
    unchanged: list[SourceObject]

    @property
    def to_ingest(self) -> list[SourceObject]:
        return sorted(self.new + self.changed, key=lambda obj: obj.key)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _entry_dict(entry: ManifestEntry) -> dict[str, Any]:
    data = asdict(entry)
    data["outputs"] = list(entry.outputs)
    return data


def entry_from_dict(data: dict[str, Any]) -> ManifestEntry:
    return ManifestEntry(**{**data, "outputs": tuple(data.get("outputs") or ())})


def load_manifest(fs: Any, uri: str) -> Manifest:
    """The manifest at ``uri``, or an empty one where none was written yet."""
    path = fs._strip_protocol(uri)
    try:
        with fs.open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return Manifest()
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format is {data.get('format') if isinstance(data, dict) else None!r}, not {FORMAT!r}")
        entries = {key: entry_from_dict(value) for key, value in (data.get("objects") or {}).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"the ingest manifest {uri} is unreadable ({exc}); delete it to ingest every object again"
        ) from None
    return Manifest(
        entries=entries, fingerprint=data.get("fingerprint"), updated_at=data.get("updated_at"), run_id=data.get("run_id")
    )


def write_manifest(fs: Any, uri: str, manifest: Manifest) -> None:
    """Write ``manifest`` whole: to a temporary name first, then moved over the old one, so a
    reader (or a run killed meanwhile) sees the old manifest or the new, never half of one."""
    path = fs._strip_protocol(uri)
    folder = path.rsplit("/", 1)[0]
    fs.makedirs(folder, exist_ok=True)
    temporary = f"{folder}/.manifest-{uuid.uuid4().hex}.tmp"
    fs.pipe_file(temporary, json.dumps(manifest.to_dict(), indent=1).encode())
    fs.mv(temporary, path)


def diff_objects(manifest: Manifest, objects: Iterable[SourceObject]) -> ObjectDiff:
    """Split ``objects`` by what the manifest recorded for their keys.

    An object with no version tag at all (a store that gives none) is always "changed":
    re-reading it is safe, skipping it on a guess is not.
    """
    new: list[SourceObject] = []
    changed: list[SourceObject] = []
    unchanged: list[SourceObject] = []
    for obj in objects:
        entry = manifest.entries.get(obj.key)
        if entry is None:
            new.append(obj)
        elif obj.etag is None or entry.etag != obj.etag or entry.size != obj.size:
            changed.append(obj)
        else:
            unchanged.append(obj)
    return ObjectDiff(new=new, changed=changed, unchanged=unchanged)
