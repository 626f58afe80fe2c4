"""GPU tests run only where CuPy sees a CUDA device; elsewhere they skip, never fail."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _device() -> None:
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA device")
