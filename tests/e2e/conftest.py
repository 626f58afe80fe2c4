"""End-to-end fixtures: the CLI as a user runs it, against an embedded endpoint, cleaning up after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tasks.aws.embedded import EmbeddedAWS

UPDRAFT = shutil.which("updraft", path=str(Path(sys.executable).parent)) or "updraft"


@pytest.fixture()
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Endpoints and run folders in a temp place; any endpoint left running is stopped afterwards."""
    home = tmp_path / "updraft-home"
    monkeypatch.setenv("UPDRAFT_HOME", str(home))
    monkeypatch.setenv("UPDRAFT_RUNS_DIR", str(tmp_path / "runs"))
    yield home
    listing = subprocess.run([UPDRAFT, "endpoint", "list", "--json"], capture_output=True, text=True, timeout=60)
    if listing.returncode == 0 and listing.stdout.strip():
        for endpoint in json.loads(listing.stdout):
            subprocess.run([UPDRAFT, "endpoint", "delete", endpoint["name"]], capture_output=True, timeout=60)


@pytest.fixture()
def embedded(isolated_home: Path) -> Iterator[EmbeddedAWS]:
    """A moto endpoint in the test process; CLI subprocesses reach it through AWS_ENDPOINT_URL."""
    with EmbeddedAWS() as aws:
        yield aws


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([UPDRAFT, *args], capture_output=True, text=True, timeout=timeout, env=env)
