"""Run identity and the local folders a run and its endpoints keep.

``./updraft-runs/<run_id>/`` (override: ``UPDRAFT_RUNS_DIR``) holds a run's local work:
the training job's ``/opt/ml`` folder, the model, the report. ``~/.updraft``
(override: ``UPDRAFT_HOME``) holds what outlives a run: the local endpoints.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path


def new_run_id() -> str:
    """Sortable by time, unique across concurrent runs: ``20261126-153000-a1b2c3``."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def runs_root() -> Path:
    return Path(os.environ.get("UPDRAFT_RUNS_DIR") or "updraft-runs").resolve()


def run_dir(run_id: str) -> Path:
    path = runs_root() / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def updraft_home() -> Path:
    path = Path(os.environ.get("UPDRAFT_HOME") or Path.home() / ".updraft").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
