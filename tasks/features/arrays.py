"""The one switch between host (NumPy) and device (CuPy) arrays.

CuPy is never imported here: an array can only be a CuPy array if CuPy is already
imported by whoever made it, so looking it up in ``sys.modules`` is enough and keeps
this module (and everything that serves models) importable with NumPy alone.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

#: Where preprocess's array work may run: ``auto`` takes a worker's GPU when it has one.
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")


def _cupy_if_loaded() -> ModuleType | None:
    return sys.modules.get("cupy")


def is_device_array(x: Any) -> bool:
    """True for a CuPy array (device memory), False for anything else."""
    cupy = _cupy_if_loaded()
    return cupy is not None and isinstance(x, cupy.ndarray)


def get_array_module(x: Any) -> ModuleType:
    """``cupy`` for a CuPy array, ``numpy`` for anything else (like ``cupy.get_array_module``)."""
    if is_device_array(x):
        return sys.modules["cupy"]
    return np


def to_numpy(x: Any) -> np.ndarray:
    """A host copy of ``x`` (no copy when it already is a NumPy array)."""
    if is_device_array(x):
        return x.get()
    return np.asarray(x)
