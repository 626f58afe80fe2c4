"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    """An empty folder standing for a source prefix of raw files."""
    path = tmp_path / "raw"
    path.mkdir()
    return path
