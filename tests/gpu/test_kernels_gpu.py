"""The device path of the feature kernels equals the host path (run where CuPy and a GPU exist).

Run with ``make gpu-check`` on a machine with an NVIDIA GPU and CuPy (see the Makefile).
"""

from __future__ import annotations

import numpy as np
import pytest

cupy = pytest.importorskip("cupy")

from tasks.features import kernels  # noqa: E402
from tasks.features.arrays import get_array_module, is_device_array, to_numpy  # noqa: E402
from tasks.features.kernels import (  # noqa: E402
    NumericParams,
    buckets,
    fused_numeric,
    missing_mask,
    mix64,
    one_pass_moments,
    uniforms,
)
from tasks.features.stats import column_moments, empty_moments, merge_moments, tree_reduce  # noqa: E402

pytestmark = pytest.mark.gpu


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


# ---------------------------------------------------------------------------------------
# The hand-written kernels against their host twins, on odd shapes
# ---------------------------------------------------------------------------------------

SHAPES = [(1, 6), (7, 1), (1_000_003, 17), (0, 6), (5, 0), (4099, 300)]


def _odd_block(shape: tuple[int, int], dtype: type, seed: int = 0) -> np.ndarray:
    """Mixed scales, gaps, +-inf, an all-NaN and a constant column (where there are enough columns)."""
    n, c = shape
    rng = np.random.default_rng(seed)
    scale = np.geomspace(1e-3, 1e6, max(c, 1))[:c]
    block = rng.normal(0.0, 1.0, (n, c)) * scale + np.linspace(-1e4, 1e6, max(c, 1))[:c]
    block[rng.random((n, c)) < 0.03] = np.nan
    block[rng.random((n, c)) < 0.002] = np.inf
    block[rng.random((n, c)) < 0.002] = -np.inf
    if c >= 3:
        block[:, 1] = np.nan
        block[:, 2] = 42.25
    return block.astype(dtype)


def _params(n_cols: int) -> NumericParams:
    rng = np.random.default_rng(n_cols)
    j = np.arange(n_cols)
    return NumericParams.build(
        n_cols,
        fill=rng.normal(size=n_cols),
        lo=np.where(j % 3 == 0, -50.0, -np.inf),
        hi=np.where(j % 3 == 0, 5e4, np.inf),
        log=j % 4 == 1,
        shift=rng.normal(size=n_cols),
        inv_scale=1.0 / rng.uniform(0.5, 3.0, n_cols),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_moments_kernel_equals_host_statistics(shape: tuple[int, int], dtype: type) -> None:
    block = _odd_block(shape, dtype)
    device = one_pass_moments(cupy.asarray(block))
    assert all(get_array_module(f) is cupy for f in device)
    got = [to_numpy(f) for f in device]
    host = column_moments(block)
    for field, value in zip(kernels.MomentFields._fields, got):
        want = to_numpy(getattr(host, field))
        if field in ("count", "null_count", "min", "max"):
            np.testing.assert_array_equal(value, want, err_msg=field)
        else:
            np.testing.assert_allclose(value, want, rtol=1e-9, atol=0, equal_nan=True, err_msg=field)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moments_kernel_equals_its_host_twin_under_the_device_plan(dtype: type) -> None:
    block = _odd_block((200_003, 17), dtype)
    name = "updraft_moments_partial_f32" if dtype == np.float32 else "updraft_moments_partial_f64"
    blocks = kernels._resident_blocks(name, kernels._current_device_id())
    twin = kernels._moments_host(block, kernels._moments_plan(*block.shape, blocks))
    device = one_pass_moments(cupy.asarray(block))
    for field, want, value in zip(kernels.MomentFields._fields, twin, device):
        # Same partition and order; only the device's fused multiply-adds round differently.
        np.testing.assert_allclose(to_numpy(value), want, rtol=1e-11, atol=0, equal_nan=True, err_msg=field)


def test_moments_kernel_takes_integer_and_strided_device_blocks() -> None:
    block = _odd_block((30_001, 12), np.float64)
    device = cupy.asarray(block)
    _assert_same(column_moments(device[::3, 1::2]), column_moments(block[::3, 1::2]), rtol=1e-9)
    ints = np.random.default_rng(1).integers(-1000, 1000, (10_007, 5)).astype(np.int32)
    _assert_same(column_moments(cupy.asarray(ints)), column_moments(ints), rtol=1e-9)


def _assert_fused_equal(got: np.ndarray, want: np.ndarray, params: NumericParams) -> None:
    plain = ~params.log
    # Compare, select, subtract, multiply: IEEE-exact, so bit-equal. log1p may differ by an ulp
    # of float64 between CUDA and the host libm, which can move the float32 result by one ulp.
    np.testing.assert_array_equal(got[:, plain], want[:, plain])
    np.testing.assert_allclose(got[:, ~plain], want[:, ~plain], rtol=1.2e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_kernel_equals_host_transform(shape: tuple[int, int], dtype: type) -> None:
    block = _odd_block(shape, dtype)
    params = _params(shape[1])
    out = cupy.full(shape, cupy.nan, dtype=cupy.float32)  # poisoned: every element must be written
    got = fused_numeric(cupy.asarray(block), params.to(cupy), out=out)
    assert got is out
    _assert_fused_equal(to_numpy(got), fused_numeric(block, params), params)


def test_fused_kernel_in_place_strided_and_integer_blocks() -> None:
    block = _odd_block((100_001, 9), np.float32)
    params = _params(9)
    on_device = params.to(cupy)
    want = fused_numeric(block, params)
    device = cupy.asarray(block)
    assert fused_numeric(device, on_device, out=device) is device
    _assert_fused_equal(to_numpy(device), want, params)
    wide = _odd_block((5000, 18), np.float64)
    _assert_fused_equal(to_numpy(fused_numeric(cupy.asarray(wide)[:, ::2], on_device)), fused_numeric(wide[:, ::2], params), params)
    ints = np.arange(-4500, 4500, dtype=np.int64).reshape(-1, 9)
    _assert_fused_equal(to_numpy(fused_numeric(cupy.asarray(ints), on_device)), fused_numeric(ints, params), params)


def test_fused_kernel_needs_its_parameters_on_the_device() -> None:
    with pytest.raises(TypeError, match="params.to"):
        fused_numeric(cupy.zeros((3, 2)), _params(2))
    assert get_array_module(_params(2).to(cupy).to(np).fill) is np


def test_missing_mask_on_the_device() -> None:
    block = _odd_block((1001, 6), np.float32)
    np.testing.assert_array_equal(to_numpy(missing_mask(cupy.asarray(block), [0, 1])), missing_mask(block, [0, 1]))


@pytest.mark.parametrize("n", [0, 1, 1_000_003])
def test_hashes_are_bit_identical_on_both_devices(n: int) -> None:
    h = np.random.default_rng(n).integers(0, 2**64, n, dtype=np.uint64)
    h[: min(n, 2)] = [0, 2**64 - 1][: min(n, 2)]
    d = cupy.asarray(h)
    np.testing.assert_array_equal(to_numpy(mix64(d)), mix64(h))
    np.testing.assert_array_equal(to_numpy(mix64(d.view(cupy.int64))), mix64(h))
    salt = 0x9E3779B97F4A7C15
    u = to_numpy(uniforms(d, salt=salt))
    assert u.dtype == np.float64
    np.testing.assert_array_equal(u.view(np.uint64), uniforms(h, salt=salt).view(np.uint64))
    for k in (0, 7, 63):
        got = to_numpy(buckets(d, k))
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, buckets(h, k))
