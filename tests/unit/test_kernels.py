"""The feature kernels' host paths equal plain references, and their CUDA sources compile.

The device kernels run only in tests/gpu; here their NumPy twins (same plan, same order of
operations) are checked against straightforward NumPy, and NVRTC compiles the CUDA sources
for Hopper (``compute_90``) where CuPy and NVRTC are installed (skipped elsewhere).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.features import kernels
from tasks.features.kernels import (
    NumericParams,
    buckets,
    cuda_sources,
    fused_numeric,
    missing_mask,
    mix64,
    one_pass_moments,
    uniforms,
)
from tasks.features.split import DEFAULT_SALT, _mix, _salt_hash, row_hashes, row_uniforms
from tasks.features.stats import column_moments

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------
# Column moments
# ---------------------------------------------------------------------------------------


def _table(n: int, dtype: type = np.float64, seed: int = 0) -> np.ndarray:
    """Hard columns: a large offset with a small spread, gaps, +-inf, all-NaN, constant, integers."""
    rng = np.random.default_rng(seed)
    block = np.column_stack(
        [
            rng.normal(1e6, 3.0, n),
            rng.exponential(2.0, n),
            np.full(n, np.nan),
            np.full(n, 7.5),
            rng.integers(-5, 5, n),
            rng.normal(-3.0, 1e-3, n),
        ]
    ).astype(dtype)
    block[rng.random(n) < 0.05, 1] = np.nan
    block[rng.random(n) < 0.01, 4] = np.inf
    block[rng.random(n) < 0.01, 4] = -np.inf
    return block


def _reference(block: np.ndarray) -> dict[str, np.ndarray]:
    ok = np.isfinite(block)
    values = block.astype(np.float64)
    count = ok.sum(axis=0)
    safe = np.maximum(count, 1)
    mean = np.where(ok, values, 0.0).sum(axis=0) / safe
    m2 = (np.where(ok, values - mean, 0.0) ** 2).sum(axis=0)
    return {
        "count": count,
        "null_count": block.shape[0] - count,
        "mean": np.where(count > 0, mean, np.nan),
        "m2": m2,
        "min": np.where(count > 0, np.where(ok, values, np.inf).min(axis=0, initial=np.inf), np.nan),
        "max": np.where(count > 0, np.where(ok, values, -np.inf).max(axis=0, initial=-np.inf), np.nan),
    }


def _assert_moments(got: kernels.MomentFields, block: np.ndarray) -> None:
    want = _reference(block)
    for field in ("count", "null_count"):
        assert getattr(got, field).dtype == np.int64
        np.testing.assert_array_equal(getattr(got, field), want[field], err_msg=field)
    for field in ("min", "max"):
        np.testing.assert_array_equal(getattr(got, field), want[field], err_msg=field)
    np.testing.assert_allclose(got.mean, want["mean"], rtol=1e-12, equal_nan=True, err_msg="mean")
    np.testing.assert_allclose(got.m2, want["m2"], rtol=1e-9, atol=0, err_msg="m2")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows", [1, 2, 255, 4099, 20_011])
def test_host_twin_of_the_moments_kernel_equals_two_pass_statistics(dtype: type, n_rows: int) -> None:
    block = _table(n_rows, dtype)
    _assert_moments(one_pass_moments(block), block)


@pytest.mark.parametrize("max_blocks", [1, 2, 7, 64])
@pytest.mark.parametrize("n_cols", [1, 6, 129, 300])
def test_moments_twin_is_exact_for_every_cut_of_the_block(max_blocks: int, n_cols: int) -> None:
    # Few blocks -> long stripes; many -> short ones; wide tables -> several column tiles.
    rng = np.random.default_rng(n_cols)
    block = np.tile(_table(3001, np.float64, seed=max_blocks), (1, -(-n_cols // 6)))[:, :n_cols]
    block[rng.random(block.shape) < 0.02] = np.nan
    plan = kernels._moments_plan(block.shape[0], n_cols, max_blocks)
    _assert_moments(kernels._moments_host(block, plan), block)


def test_moments_agree_with_the_two_sweep_host_statistics_of_stats() -> None:
    block = _table(5000, np.float32)
    host = column_moments(block)
    got = one_pass_moments(block)
    for field in ("count", "null_count", "min", "max"):
        np.testing.assert_array_equal(getattr(got, field), getattr(host, field))
    np.testing.assert_allclose(got.mean, host.mean, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(got.m2, host.m2, rtol=1e-9, atol=0)


@pytest.mark.parametrize("n_rows, n_cols, max_blocks", [(1, 1, 1), (5, 3, 528), (1000, 17, 7), (999, 129, 64), (77, 300, 3)])
def test_moments_plan_reads_every_value_once_within_launch_limits(n_rows: int, n_cols: int, max_blocks: int) -> None:
    plan = kernels._moments_plan(n_rows, n_cols, max_blocks)
    assert plan.lanes * plan.tile_width <= kernels.THREADS
    assert 1 <= plan.n_stripes <= 65_535 and plan.stripe_rows % plan.lanes == 0
    seen = np.zeros((n_rows, n_cols), dtype=int)
    for tile in range(plan.n_tiles):  # the kernel's index arithmetic, thread by thread
        for stripe in range(plan.n_stripes):
            for t in range(kernels.THREADS):
                lane, col = t // plan.tile_width, tile * plan.tile_width + t % plan.tile_width
                if lane < plan.lanes and col < n_cols:
                    end = min((stripe + 1) * plan.stripe_rows, n_rows)
                    seen[stripe * plan.stripe_rows + lane : end : plan.lanes, col] += 1
    assert (seen == 1).all()


def test_moments_of_no_rows_and_no_columns() -> None:
    none = one_pass_moments(np.empty((0, 3), dtype=np.float32))
    np.testing.assert_array_equal(none.count, [0, 0, 0])
    np.testing.assert_array_equal(none.null_count, [0, 0, 0])
    assert np.isnan(none.mean).all() and np.isnan(none.min).all() and np.isnan(none.max).all()
    np.testing.assert_array_equal(none.m2, [0.0, 0.0, 0.0])
    assert all(f.shape == (0,) for f in one_pass_moments(np.empty((4, 0))))


def test_moments_of_non_contiguous_and_integer_blocks() -> None:
    block = _table(3000)
    _assert_moments(one_pass_moments(np.asfortranarray(block)), block)
    _assert_moments(one_pass_moments(block[::3, ::2]), block[::3, ::2])
    ints = np.arange(-600, 600, dtype=np.int32).reshape(-1, 4)
    _assert_moments(one_pass_moments(ints), ints)


def test_moments_reject_what_is_not_a_numeric_table() -> None:
    with pytest.raises(ValueError, match="2-D"):
        one_pass_moments(np.zeros(5))
    with pytest.raises(TypeError, match="numeric"):
        one_pass_moments(np.array([["a"]]))


# ---------------------------------------------------------------------------------------
# The fused numeric transform
# ---------------------------------------------------------------------------------------


def _reference_transform(block: np.ndarray, p: NumericParams) -> np.ndarray:
    x = block.astype(np.float64)
    x = np.where(np.isfinite(x), x, p.fill)
    x = np.minimum(np.maximum(x, p.lo), p.hi)
    x = np.where(p.log, np.copysign(np.log1p(np.abs(x)), x), x)
    return ((x - p.shift) * p.inv_scale).astype(np.float32)


def _params(n_cols: int, seed: int = 0) -> NumericParams:
    rng = np.random.default_rng(seed)
    j = np.arange(n_cols)
    return NumericParams.build(
        n_cols,
        fill=np.where(j % 5 == 4, np.nan, rng.normal(size=n_cols)),  # a NaN fill keeps missing missing
        lo=np.where(j % 3 == 0, -2.0, -np.inf),
        hi=np.where(j % 3 == 0, 30.0, np.inf),
        log=j % 2 == 1,
        shift=rng.normal(size=n_cols),
        inv_scale=1.0 / rng.uniform(0.5, 3.0, n_cols),
    )


def _numeric_block(n_rows: int, n_cols: int, dtype: type = np.float64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    block = rng.normal(0.0, 20.0, (n_rows, n_cols))
    block[rng.random(block.shape) < 0.05] = np.nan
    block[rng.random(block.shape) < 0.01] = np.inf
    block[rng.random(block.shape) < 0.01] = -np.inf
    if n_cols > 2:
        block[:, 2] = np.nan  # a column with no values at all
    return block.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (50_001, 7), (3, 300)])
def test_fused_transform_equals_the_plain_expression(dtype: type, shape: tuple[int, int]) -> None:
    block = _numeric_block(*shape, dtype=np.float64)
    block = np.nan_to_num(block, nan=0, posinf=1, neginf=-1).astype(dtype) if dtype == np.int64 else block.astype(dtype)
    p = _params(shape[1])
    got = fused_numeric(block, p)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_array_equal(got, _reference_transform(block, p))


def test_fused_transform_of_no_rows_and_no_columns() -> None:
    assert fused_numeric(np.empty((0, 4), dtype=np.float32), _params(4)).shape == (0, 4)
    assert fused_numeric(np.empty((5, 0)), NumericParams.build(0)).shape == (5, 0)


def test_fused_transform_writes_into_out_and_in_place() -> None:
    block = _numeric_block(1000, 6, np.float32)
    p = _params(6)
    want = _reference_transform(block, p)
    out = np.full(block.shape, np.float32(-12345.0))
    assert fused_numeric(block, p, out=out) is out
    np.testing.assert_array_equal(out, want)
    assert fused_numeric(block, p, out=block) is block
    np.testing.assert_array_equal(block, want)


def test_fused_transform_of_non_contiguous_blocks() -> None:
    block = _numeric_block(2000, 12)
    p = _params(6)
    np.testing.assert_array_equal(fused_numeric(block[::2, ::2], p), _reference_transform(block[::2, ::2], p))
    np.testing.assert_array_equal(fused_numeric(np.asfortranarray(block[:, :6]), p), _reference_transform(block[:, :6], p))


@pytest.mark.parametrize("shape, max_blocks", [((1, 1), 1), ((1000, 17), 1), ((1000, 17), 3), ((10, 300), 1), ((4099, 5), 1000)])
def test_the_device_grid_gives_each_thread_one_column(shape: tuple[int, int], max_blocks: int) -> None:
    # The kernel's thread g applies column g % n_cols's parameters to flat indices g + k * active.
    block = _numeric_block(*shape)
    p = _params(shape[1])
    np.testing.assert_array_equal(kernels._fused_grid_twin(block, p, max_blocks), fused_numeric(block, p))
    blocks, active = kernels._fused_launch(block.size, shape[1], max_blocks)
    assert active % shape[1] == 0 and 0 < active <= blocks * kernels.THREADS


def test_fused_transform_rejects_mismatched_arguments() -> None:
    block = np.zeros((4, 3))
    with pytest.raises(ValueError, match="3 columns, the parameters 2"):
        fused_numeric(block, _params(2))
    with pytest.raises(ValueError, match="float32 of shape"):
        fused_numeric(block, _params(3), out=np.zeros((4, 3)))
    with pytest.raises(TypeError, match="NumericParams"):
        fused_numeric(block, {"fill": [0, 0, 0]})


def test_numeric_params_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"lo 2.0 is above hi 1.0"):
        NumericParams.build(2, lo=[0.0, 2.0], hi=1.0)
    with pytest.raises(ValueError, match=r"lo\[0\] is NaN"):
        NumericParams.build(1, lo=np.nan)
    with pytest.raises(ValueError, match=r"inv_scale\[1\] is inf"):
        NumericParams.build(2, inv_scale=[1.0, np.inf])
    with pytest.raises(ValueError, match=r"log\[0\] is 0.5"):
        NumericParams(fill=[0.0], lo=[-np.inf], hi=[np.inf], log=[0.5], shift=[0.0], inv_scale=[1.0])
    with pytest.raises(ValueError, match="hi has 1 entries, fill has 2"):
        NumericParams(fill=[0.0, 1.0], lo=[0.0, 0.0], hi=[1.0], log=[0, 0], shift=[0.0, 0.0], inv_scale=[1.0, 1.0])


def test_numeric_params_accept_float_log_flags_as_the_spec_writes_them() -> None:
    p = NumericParams(fill=[0.0, 0.0], lo=[-np.inf] * 2, hi=[np.inf] * 2, log=[1.0, 0.0], shift=[0, 0], inv_scale=[1, 1])
    assert p.log.dtype == bool and p.log.tolist() == [True, False] and p.n_columns == 2
    assert p.to(np) is p
    np.testing.assert_array_equal(fused_numeric(np.array([[np.e - 1, -3.0]]), p), [[1.0, -3.0]])


def test_missing_mask_marks_nan_and_infinities() -> None:
    block = np.array([[1.0, np.nan, np.inf], [-np.inf, 0.0, 2.0]])
    np.testing.assert_array_equal(missing_mask(block), [[False, True, True], [True, False, False]])
    np.testing.assert_array_equal(missing_mask(block, [2]), [[True], [False]])


# ---------------------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------------------


def _hashes(n: int = 100_003) -> np.ndarray:
    h = np.random.default_rng(7).integers(0, 2**64, n, dtype=np.uint64)
    h[:3] = [0, 1, 2**64 - 1]
    return h


def test_mix64_is_the_split_mixer_bit_for_bit() -> None:
    h = _hashes()
    before = h.copy()
    np.testing.assert_array_equal(mix64(h), _mix(h))
    np.testing.assert_array_equal(h, before)  # the input is left alone
    np.testing.assert_array_equal(mix64(h.view(np.int64)), _mix(h))
    np.testing.assert_array_equal(mix64(h[::3]), _mix(h[::3]))
    assert mix64(np.uint64(12345)).shape == () and int(mix64(np.uint64(12345))) == int(_mix(np.array([12345], np.uint64))[0])
    assert mix64(np.empty(0, np.uint64)).shape == (0,)


def test_uniforms_are_the_split_uniforms() -> None:
    frame = pd.DataFrame({"a": np.arange(5000), "b": np.arange(5000) % 7 * 0.5})
    salt = int(_salt_hash(DEFAULT_SALT))
    got = uniforms(row_hashes(frame), salt=salt)
    np.testing.assert_array_equal(got, row_uniforms(frame, DEFAULT_SALT))
    u = uniforms(_hashes())
    assert u.dtype == np.float64 and u.min() >= 0.0 and u.max() < 1.0
    assert not np.array_equal(u, uniforms(_hashes(), salt=1))


def test_buckets_are_the_low_bits_of_the_mix() -> None:
    h = _hashes()
    b = buckets(h, 10)
    assert b.dtype == np.int64 and b.min() >= 0 and b.max() < 1024
    np.testing.assert_array_equal(b, (_mix(h) & np.uint64(1023)).astype(np.int64))
    assert len(np.unique(b)) == 1024  # 100k hashes reach every bucket
    np.testing.assert_array_equal(buckets(h, 0), np.zeros(len(h), dtype=np.int64))
    assert (buckets(h, 63) >= 0).all()


def test_hashing_rejects_wrong_inputs() -> None:
    with pytest.raises(TypeError, match="uint64"):
        mix64(np.zeros(3, dtype=np.float64))
    with pytest.raises(ValueError, match="0 to 63"):
        buckets(_hashes(3), 64)
    with pytest.raises(ValueError, match=r"salt must be an integer in \[0, 2\*\*64\)"):
        uniforms(_hashes(3), salt=-1)


def test_host_paths_never_import_cupy() -> None:
    # The inference server imports these; CuPy, where installed, must stay unloaded.
    code = (
        "import sys, numpy as np\n"
        "from tasks.features.kernels import NumericParams, buckets, fused_numeric, one_pass_moments\n"
        "one_pass_moments(np.ones((3, 2)))\n"
        "fused_numeric(np.ones((3, 2)), NumericParams.build(2, log=True))\n"
        "buckets(np.arange(3, dtype=np.uint64), 4)\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------
# The CUDA sources compile for Hopper without a GPU (NVRTC only; skipped without it)
# ---------------------------------------------------------------------------------------


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except (ImportError, OSError, RuntimeError) as error:  # no CuPy; no libnvrtc (RuntimeError subclasses)
        pytest.skip(f"CuPy's NVRTC is not usable here: {type(error).__name__}: {error}")
    return nvrtc


def _compile(nvrtc, name: str, source: str, options: list[str]) -> str:
    program = nvrtc.createProgram(source, f"{name}.cu", [], [])
    try:
        nvrtc.compileProgram(program, options)
    except nvrtc.NVRTCError:
        pytest.fail(f"{name} does not compile with {options}:\n{nvrtc.getProgramLog(program)}")
    finally:
        log = nvrtc.getProgramLog(program)
        nvrtc.destroyProgram(program)
    return log


@pytest.mark.parametrize("name", sorted(cuda_sources()))
def test_cuda_source_compiles_for_hopper_with_nvrtc(name: str) -> None:
    nvrtc = _nvrtc()
    source = cuda_sources()[name]
    _compile(nvrtc, name, source, ["-arch=compute_90", "-std=c++17"])
    # Machine code too: every kernel keeps its state in registers (a spill is local-memory traffic).
    report = _compile(nvrtc, name, source, ["-arch=sm_90", "-std=c++17", "-Xptxas=-v"])
    entries = re.findall(r"Compiling entry function '(\w+)'", report)
    assert entries, report
    if name == "raw":
        assert set(entries) == set(kernels._RAW_KERNELS)
    assert re.findall(r"(\d+) bytes spill stores", report) == ["0"] * len(entries), report
