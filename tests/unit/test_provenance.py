"""Provenance: equal data gives an equal hash, changed data a different one; the revision names the commit."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import fsspec
import pytest

from tasks.ingest.manifest import Manifest, ManifestEntry, write_manifest
from tasks.provenance import data_manifest_hash, git_revision, manifest_hash


def _entry(key: str, etag: str, run_id: str = "run-1") -> ManifestEntry:
    return ManifestEntry(
        key=key, uri=f"s3://b/{key}", etag=etag, size=100, status="ingested", rows_in=10,
        rows_curated=9, rows_quarantined=1, run_id=run_id, ingested_at="2026-11-27T00:00:00+00:00",
    )


def test_the_hash_follows_the_data_not_the_run_that_wrote_it() -> None:
    a = Manifest(entries={"raw/a.csv": _entry("raw/a.csv", "e1"), "raw/b.csv": _entry("raw/b.csv", "e2")})
    rerun = Manifest(entries={k: replace(v, run_id="run-2", ingested_at="2026-12-01T00:00:00+00:00") for k, v in a.entries.items()})
    changed = Manifest(entries={**a.entries, "raw/b.csv": _entry("raw/b.csv", "e3")})
    assert manifest_hash(a) == manifest_hash(rerun)
    assert manifest_hash(a) != manifest_hash(changed)
    assert manifest_hash(Manifest()) is None


def test_the_hash_is_read_from_the_written_manifest(tmp_path: Path) -> None:
    fs = fsspec.filesystem("file")
    manifest = Manifest(entries={"raw/a.csv": _entry("raw/a.csv", "e1")})
    uri = str(tmp_path / "manifest.json")
    write_manifest(fs, uri, manifest)
    assert data_manifest_hash(fs, uri) == manifest_hash(manifest)
    assert data_manifest_hash(fs, str(tmp_path / "none.json")) is None


def test_git_revision_names_the_commit_and_marks_local_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPDRAFT_GIT_REVISION", raising=False)
    assert git_revision(tmp_path) is None  # not a checkout
    run = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f.txt").write_text("1")
    run("add", "f.txt")
    run("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "one")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_revision(tmp_path) == head
    (tmp_path / "f.txt").write_text("2")
    assert git_revision(tmp_path) == f"{head}-dirty"
    monkeypatch.setenv("UPDRAFT_GIT_REVISION", "abc123")
    assert git_revision(tmp_path) == "abc123"
