"""Where a model came from: the data it was trained on and the code that trained it.

Both go into the model's metadata (and later the registry's customer metadata), so a
reviewer can tell whether two models saw the same data and the same code without
trusting run ids alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from tasks.ingest.manifest import Manifest, load_manifest

#: Set to pin the revision a run reports (CI builds, images without ``.git``).
GIT_REVISION_ENV = "UPDRAFT_GIT_REVISION"


def manifest_hash(manifest: Manifest) -> str | None:
    """A SHA-256 over every object the curated data holds (key, ETag, size, status); None when nothing was ingested.

    Only what identifies the data counts: run ids and timestamps change on every rewrite
    of the same data and would make equal data look different.
    """
    if not manifest.entries:
        return None
    canonical = [
        [key, entry.etag, entry.size, entry.status, entry.rows_curated]
        for key, entry in sorted(manifest.entries.items())
    ]
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":")).encode()).hexdigest()


def data_manifest_hash(fs: Any, manifest_uri: str) -> str | None:
    """:func:`manifest_hash` of the ingest manifest at ``manifest_uri``."""
    return manifest_hash(load_manifest(fs, manifest_uri))


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """The commit the run's code is at: ``UPDRAFT_GIT_REVISION``, else ``git rev-parse HEAD`` (``-dirty`` with local changes).

    None outside a git checkout or without git: provenance is best effort, never a failure.
    """
    pinned = os.environ.get(GIT_REVISION_ENV, "").strip()
    if pinned:
        return pinned
    folder = Path(cwd) if cwd is not None else Path.cwd()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if status else head
