"""The device path of the feature kernels equals the host path (run where CuPy and a GPU exist)."""

from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from tasks.features.arrays import get_array_module, is_device_array, to_numpy  # noqa: E402
from tasks.features.stats import column_moments, empty_moments, merge_moments, tree_reduce  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _device() -> None:
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA device")


def _block(dtype: type = np.float64, n: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(0)
    block = np.column_stack(
        [rng.normal(1e6, 3.0, n), rng.exponential(2.0, n), np.full(n, np.nan), np.full(n, 7.5), rng.integers(-5, 5, n)]
    ).astype(dtype)
    block[rng.random(n) < 0.05, 1] = np.nan
    block[rng.random(n) < 0.01, 4] = np.inf
    return block


def _assert_same(device, host, rtol: float) -> None:
    on_host = device.to_host()
    for field in ("count", "null_count", "min", "max"):
        np.testing.assert_array_equal(getattr(on_host, field), getattr(host, field))
    np.testing.assert_allclose(on_host.mean, host.mean, rtol=rtol, equal_nan=True)
    np.testing.assert_allclose(on_host.std, to_numpy(host.std), rtol=rtol, equal_nan=True)


def test_array_module_follows_the_input() -> None:
    x = cupy.zeros(3)
    assert get_array_module(x) is cupy and is_device_array(x)
    assert isinstance(to_numpy(x), np.ndarray)
    assert get_array_module(np.zeros(3)) is np


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_device_moments_equal_host_moments(dtype: type) -> None:
    block = _block(dtype)
    device = column_moments(cupy.asarray(block))
    assert get_array_module(device.mean) is cupy
    _assert_same(device, column_moments(block), rtol=1e-9)


def test_device_merge_equals_host_merge() -> None:
    block = _block()
    pieces = np.array_split(block, [0, 100, 100, 7000, 19_999])
    host = tree_reduce([column_moments(p) for p in pieces], merge_moments)
    device = tree_reduce([column_moments(cupy.asarray(p)) for p in pieces], merge_moments)
    _assert_same(device, host, rtol=1e-9)
    empty = empty_moments(block.shape[1], cupy)
    _assert_same(merge_moments(empty, device), host, rtol=1e-9)
