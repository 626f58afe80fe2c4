"""The feature engine's hot loops: one-pass column moments, the fused numeric transform, row hashes.

Each public function takes the array module of its input (NumPy or CuPy) and returns its
result there; nothing is copied between host and device. On the device the work runs in
hand-written kernels, because CuPy's own routines are slow on the shapes that matter here:
``sum(axis=0)`` over a row-major table reads it column by column (about 5.5 GB/s on an
H100 against 3,000 GB/s for a copy), and an unfused elementwise expression writes and
re-reads a float64 temporary per step. On the host the same algorithms run in NumPy, so
every kernel has a twin that the CPU tests check.

CuPy is imported only inside functions that were handed a CuPy array (the array exists,
so CuPy is already imported); the CUDA sources compile on first use and are cached by
CuPy per device. The sources use compiler builtins only, so NVRTC needs no headers and a
test can compile them on a machine without a GPU (``cuda_sources``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from tasks.features.arrays import get_array_module

#: Threads per block of every raw kernel (the CUDA source reads the same constant).
THREADS = 256
#: Loads each thread issues before using the first: enough bytes in flight to cover DRAM latency.
_UNROLL = 8
#: A stats thread reads at least this many rows, so per-thread bookkeeping stays a small cost.
_MIN_ROWS_PER_THREAD = 16
#: Resident stats blocks of an H100 (132 SMs x 4): the plan the host twin mirrors by default.
_HOST_MAX_BLOCKS = 132 * 4
#: float64 elements per host chunk of the fused transform: chunk and mask stay in L2 (~300 KiB).
_HOST_CHUNK_ELEMENTS = 1 << 15
_MAX_GRID_Y = 65_535

_SPLITMIX_1 = 0xBF58476D1CE4E5B9
_SPLITMIX_2 = 0x94D049BB133111EB


class MomentFields(NamedTuple):
    """Per-column moments in :class:`tasks.features.stats.ColumnMoments`' field order.

    ``count`` and ``null_count`` are int64, the rest float64; a column without finite
    values has count 0, m2 0 and NaN mean, min and max.
    """

    count: Any
    null_count: Any
    mean: Any
    m2: Any
    min: Any
    max: Any


# --------------------------------------------------------------------------------------
# CUDA sources. Builtins only (isfinite, log1p, fmin, ...): NVRTC compiles them headerless.
# --------------------------------------------------------------------------------------

_HASH_PREAMBLE = r"""
// SplitMix64's finalizer, as tasks.features.split._mix.
__device__ __forceinline__ unsigned long long updraft_mix64(unsigned long long x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}
"""

_RAW_SOURCE = r"""
#define UPDRAFT_THREADS @THREADS@
#define UPDRAFT_UNROLL @UNROLL@
#define UPDRAFT_NAN __longlong_as_double(0x7ff8000000000000LL)

struct Moments {
    long long n;
    double mean;
    double m2;
    double lo;
    double hi;
};

// Chan, Golub and LeVeque's pairwise update; an empty side leaves the other untouched.
__device__ __forceinline__ void merge_into(Moments& a, const Moments& b) {
    if (b.n == 0) return;
    if (a.n == 0) { a = b; return; }
    const double fb = (double)b.n / (double)(a.n + b.n);
    const double delta = b.mean - a.mean;
    a.mean = a.mean + delta * fb;
    a.m2 = a.m2 + b.m2 + delta * delta * ((double)a.n * fb);
    a.n += b.n;
    a.lo = fmin(a.lo, b.lo);
    a.hi = fmax(a.hi, b.hi);
}

// Sums of deviations from the thread's first finite value: no division per element,
// and as exact as Welford's update while the thread's values stay near that value.
struct Shifted {
    long long n;
    double shift, s1, s2, lo, hi;
};

__device__ __forceinline__ void accumulate(Shifted& s, double v) {
    if (isfinite(v)) {
        if (s.n == 0) { s.shift = v; s.lo = v; s.hi = v; }
        const double d = v - s.shift;
        s.s1 += d;
        s.s2 += d * d;
        s.lo = fmin(s.lo, v);
        s.hi = fmax(s.hi, v);
        s.n += 1;
    }
}

// Block (tile, stripe) reads rows [stripe * stripe_rows, +stripe_rows) of columns
// [tile * tile_width, +tile_width): thread t owns column t % tile_width and every
// lanes-th row from lane t / tile_width, so a warp reads consecutive addresses. The
// lanes of a column merge in shared memory; one partial per (column, stripe) is written.
template <typename T>
__device__ __forceinline__ void moments_partial(
        const T* __restrict__ x, long long n_rows, int n_cols, int tile_width, int lanes,
        int lanes_pow2, long long stripe_rows, int n_stripes,
        long long* __restrict__ p_n, double* __restrict__ p_mean, double* __restrict__ p_m2,
        double* __restrict__ p_lo, double* __restrict__ p_hi) {
    __shared__ Moments shared[UPDRAFT_THREADS];
    const int t = threadIdx.x;
    const int lane = t / tile_width;
    const int col = blockIdx.x * tile_width + t % tile_width;
    const int stripe = blockIdx.y;
    const bool active = lane < lanes && col < n_cols;
    Moments m = {0, 0.0, 0.0, 0.0, 0.0};
    if (active) {
        Shifted s = {0, 0.0, 0.0, 0.0, 0.0, 0.0};
        const long long first = (long long)stripe * stripe_rows;
        const long long end = first + stripe_rows < n_rows ? first + stripe_rows : n_rows;
        const long long step = lanes;
        const T* __restrict__ column = x + col;
        long long r = first + lane;
        for (; r + (UPDRAFT_UNROLL - 1) * step < end; r += UPDRAFT_UNROLL * step) {
            T v[UPDRAFT_UNROLL];
#pragma unroll
            for (int u = 0; u < UPDRAFT_UNROLL; ++u) v[u] = column[(r + u * step) * n_cols];
#pragma unroll
            for (int u = 0; u < UPDRAFT_UNROLL; ++u) accumulate(s, (double)v[u]);
        }
        for (; r < end; r += step) accumulate(s, (double)column[r * n_cols]);
        if (s.n > 0) {
            const double mean_offset = s.s1 / (double)s.n;
            m.n = s.n;
            m.mean = s.shift + mean_offset;
            m.m2 = fmax(s.s2 - s.s1 * mean_offset, 0.0);
            m.lo = s.lo;
            m.hi = s.hi;
        }
    }
    shared[t] = m;
    __syncthreads();
    for (int half = lanes_pow2 / 2; half > 0; half /= 2) {
        if (active && lane < half && lane + half < lanes) merge_into(shared[t], shared[t + half * tile_width]);
        __syncthreads();
    }
    if (active && lane == 0) {
        const long long k = (long long)col * n_stripes + stripe;
        p_n[k] = shared[t].n;
        p_mean[k] = shared[t].mean;
        p_m2[k] = shared[t].m2;
        p_lo[k] = shared[t].lo;
        p_hi[k] = shared[t].hi;
    }
}

extern "C" __global__ void __launch_bounds__(UPDRAFT_THREADS) updraft_moments_partial_f32(
        const float* __restrict__ x, long long n_rows, int n_cols, int tile_width, int lanes,
        int lanes_pow2, long long stripe_rows, int n_stripes, long long* p_n, double* p_mean,
        double* p_m2, double* p_lo, double* p_hi) {
    moments_partial<float>(x, n_rows, n_cols, tile_width, lanes, lanes_pow2, stripe_rows, n_stripes,
                           p_n, p_mean, p_m2, p_lo, p_hi);
}

extern "C" __global__ void __launch_bounds__(UPDRAFT_THREADS) updraft_moments_partial_f64(
        const double* __restrict__ x, long long n_rows, int n_cols, int tile_width, int lanes,
        int lanes_pow2, long long stripe_rows, int n_stripes, long long* p_n, double* p_mean,
        double* p_m2, double* p_lo, double* p_hi) {
    moments_partial<double>(x, n_rows, n_cols, tile_width, lanes, lanes_pow2, stripe_rows, n_stripes,
                            p_n, p_mean, p_m2, p_lo, p_hi);
}

// One block per column: thread t merges stripes t, t + THREADS, ... in order, then a tree.
extern "C" __global__ void __launch_bounds__(UPDRAFT_THREADS) updraft_moments_final(
        const long long* __restrict__ p_n, const double* __restrict__ p_mean,
        const double* __restrict__ p_m2, const double* __restrict__ p_lo,
        const double* __restrict__ p_hi, int n_stripes, long long n_rows,
        long long* count, long long* null_count, double* mean, double* m2, double* lo, double* hi) {
    __shared__ Moments shared[UPDRAFT_THREADS];
    const int col = blockIdx.x;
    const int t = threadIdx.x;
    Moments m = {0, 0.0, 0.0, 0.0, 0.0};
    for (int g = t; g < n_stripes; g += UPDRAFT_THREADS) {
        const long long k = (long long)col * n_stripes + g;
        const Moments b = {p_n[k], p_mean[k], p_m2[k], p_lo[k], p_hi[k]};
        merge_into(m, b);
    }
    shared[t] = m;
    __syncthreads();
    for (int half = UPDRAFT_THREADS / 2; half > 0; half /= 2) {
        if (t < half) merge_into(shared[t], shared[t + half]);
        __syncthreads();
    }
    if (t == 0) {
        const Moments r = shared[0];
        count[col] = r.n;
        null_count[col] = n_rows - r.n;
        mean[col] = r.n > 0 ? r.mean : UPDRAFT_NAN;
        m2[col] = r.n > 0 ? r.m2 : 0.0;
        lo[col] = r.n > 0 ? r.lo : UPDRAFT_NAN;
        hi[col] = r.n > 0 ? r.hi : UPDRAFT_NAN;
    }
}

__device__ __forceinline__ float fused_one(double v, double fill, double lo, double hi, bool use_log,
                                           double shift, double inv_scale) {
    v = isfinite(v) ? v : fill;
    v = v < lo ? lo : v;  // NaN passes both comparisons, as through np.maximum/np.minimum
    v = v > hi ? hi : v;
    if (use_log) v = copysign(log1p(fabs(v)), v);
    return (float)((v - shift) * inv_scale);
}

// Flat grid-stride loop whose stride (active threads) is a multiple of n_cols: a thread
// meets one column only, so it loads that column's parameters once and never divides.
template <typename T>
__device__ __forceinline__ void fused_numeric(
        const T* __restrict__ x, float* __restrict__ out, const double* __restrict__ fill,
        const double* __restrict__ lo, const double* __restrict__ hi,
        const bool* __restrict__ use_log, const double* __restrict__ shift,
        const double* __restrict__ inv_scale, long long total, int n_cols, long long active) {
    const long long g = (long long)blockIdx.x * UPDRAFT_THREADS + threadIdx.x;
    if (g >= active) return;
    const int j = (int)(g % n_cols);
    const double f = fill[j], l = lo[j], h = hi[j], s = shift[j], k = inv_scale[j];
    const bool lg = use_log[j];
    long long i = g;
    for (; i + (UPDRAFT_UNROLL - 1) * active < total; i += UPDRAFT_UNROLL * active) {
        T v[UPDRAFT_UNROLL];
#pragma unroll
        for (int u = 0; u < UPDRAFT_UNROLL; ++u) v[u] = x[i + u * active];
#pragma unroll
        for (int u = 0; u < UPDRAFT_UNROLL; ++u) out[i + u * active] = fused_one((double)v[u], f, l, h, lg, s, k);
    }
    for (; i < total; i += active) out[i] = fused_one((double)x[i], f, l, h, lg, s, k);
}

extern "C" __global__ void __launch_bounds__(UPDRAFT_THREADS) updraft_fused_numeric_f32(
        const float* __restrict__ x, float* __restrict__ out, const double* fill, const double* lo,
        const double* hi, const bool* use_log, const double* shift, const double* inv_scale,
        long long total, int n_cols, long long active) {
    fused_numeric<float>(x, out, fill, lo, hi, use_log, shift, inv_scale, total, n_cols, active);
}

extern "C" __global__ void __launch_bounds__(UPDRAFT_THREADS) updraft_fused_numeric_f64(
        const double* __restrict__ x, float* __restrict__ out, const double* fill, const double* lo,
        const double* hi, const bool* use_log, const double* shift, const double* inv_scale,
        long long total, int n_cols, long long active) {
    fused_numeric<double>(x, out, fill, lo, hi, use_log, shift, inv_scale, total, n_cols, active);
}
""".replace("@THREADS@", str(THREADS)).replace("@UNROLL@", str(_UNROLL))

_RAW_KERNELS = (
    "updraft_moments_partial_f32",
    "updraft_moments_partial_f64",
    "updraft_moments_final",
    "updraft_fused_numeric_f32",
    "updraft_fused_numeric_f64",
)

# (in_params, out_params, operation, name) of the elementwise hash kernels.
_HASH_KERNELS = {
    "mix64": ("uint64 h", "uint64 y", "y = updraft_mix64(h)", "updraft_mix64_kernel"),
    # (m >> 11) < 2**53 converts exactly and 2**-53 scales exactly: bit-identical to NumPy.
    "uniforms": (
        "uint64 h, uint64 salt",
        "float64 u",
        "u = (double)(updraft_mix64(h ^ salt) >> 11) * 1.1102230246251565e-16",
        "updraft_uniforms_kernel",
    ),
    "buckets": (
        "uint64 h, uint64 mask",
        "int64 b",
        "b = (long long)(updraft_mix64(h) & mask)",
        "updraft_buckets_kernel",
    ),
}


def cuda_sources() -> dict[str, str]:
    """Every CUDA source this module compiles, by name, as standalone translation units.

    The hash kernels' bodies are wrapped in a plain kernel equivalent to what CuPy's
    ElementwiseKernel generates, so the whole device code can be compile-checked with NVRTC
    (``-arch=compute_90``) where no GPU exists.
    """
    sources = {"raw": _RAW_SOURCE}
    type_names = {"uint64": "unsigned long long", "int64": "long long", "float64": "double"}
    for name, (in_params, out_params, operation, kernel_name) in _HASH_KERNELS.items():
        params = [p.split() for p in (in_params + ", " + out_params).split(", ")]
        arrays = ", ".join(f"{type_names[t]}* {v}_" for t, v in params)
        loads = "".join(f"    {type_names[t]} {v} = {v}_[i];\n" for t, v in params)
        out_var = params[-1][1]
        sources[name] = (
            _HASH_PREAMBLE
            + f'extern "C" __global__ void {kernel_name}({arrays}, long long n) {{\n'
            + "  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;"
            + " i += (long long)gridDim.x * blockDim.x) {\n"
            + loads
            + f"    {operation};\n    {out_var}_[i] = {out_var};\n  }}\n}}\n"
        )
    return sources


# --------------------------------------------------------------------------------------
# Device plumbing: compiled once per process (CuPy caches binaries per device and on disk).
# --------------------------------------------------------------------------------------


@functools.cache
def _raw_module() -> Any:
    import cupy

    return cupy.RawModule(code=_RAW_SOURCE)


@functools.cache
def _raw_kernel(name: str) -> Any:
    return _raw_module().get_function(name)


@functools.cache
def _hash_kernel(name: str) -> Any:
    import cupy

    in_params, out_params, operation, kernel_name = _HASH_KERNELS[name]
    return cupy.ElementwiseKernel(in_params, out_params, operation, kernel_name, preamble=_HASH_PREAMBLE)


@functools.cache
def _resident_blocks(name: str, device_id: int) -> int:
    """How many blocks of ``name`` run at once on the device: one full wave, no tail wave."""
    import cupy
    from cupy_backends.cuda.api import driver

    with cupy.cuda.Device(device_id):
        per_sm = driver.occupancyMaxActiveBlocksPerMultiprocessor(_raw_kernel(name).kernel.ptr, THREADS, 0)
    return max(1, per_sm) * int(cupy.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"])


def _current_device_id() -> int:
    import cupy

    return int(cupy.cuda.runtime.getDevice())


# --------------------------------------------------------------------------------------
# 1. Column moments in one pass.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MomentsPlan:
    """How the moments kernel cuts a block: column tiles x row stripes, lanes per column."""

    tile_width: int
    n_tiles: int
    lanes: int
    stripe_rows: int
    n_stripes: int

    @property
    def lanes_pow2(self) -> int:
        return 1 << (self.lanes - 1).bit_length()


def _column_tiles(n_cols: int) -> tuple[int, int]:
    """``(n_tiles, tile_width)`` that keeps most of a block's threads busy.

    A block has ``THREADS // width`` lanes of ``width`` columns; a width that divides
    THREADS badly (129 columns: 1 lane, half the threads idle) is split into narrower
    tiles, but never narrower than a warp, whose reads would no longer be contiguous.
    """
    fewest = _ceil_div(n_cols, THREADS)
    best = (0.0, fewest, _ceil_div(n_cols, fewest))
    for n_tiles in range(fewest, max(fewest, n_cols // 32) + 1):
        width = _ceil_div(n_cols, n_tiles)
        busy = (THREADS // width) * width / THREADS * n_cols / (n_tiles * width)
        if busy > best[0] + 1e-9:
            best = (busy, n_tiles, width)
        if n_tiles - fewest >= 8:
            break
    return best[1], best[2]


def _moments_plan(n_rows: int, n_cols: int, max_blocks: int) -> _MomentsPlan:
    """Equal stripes, a multiple of ``lanes`` rows each, about ``max_blocks`` blocks in all."""
    n_tiles, width = _column_tiles(n_cols)
    if n_tiles > 2**31 - 1:
        raise ValueError(f"column moments cannot tile {n_cols} columns")
    lanes = THREADS // width
    wanted = max(1, min(max_blocks // n_tiles, _MAX_GRID_Y, _ceil_div(n_rows, lanes * _MIN_ROWS_PER_THREAD)))
    stripe_rows = _ceil_div(_ceil_div(n_rows, wanted), lanes) * lanes
    return _MomentsPlan(width, n_tiles, lanes, stripe_rows, _ceil_div(n_rows, stripe_rows))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _empty_fields(n_rows: int, n_cols: int, xp: ModuleType) -> MomentFields:
    return MomentFields(
        count=xp.zeros(n_cols, dtype=xp.int64),
        null_count=xp.full(n_cols, n_rows, dtype=xp.int64),
        mean=xp.full(n_cols, xp.nan),
        m2=xp.zeros(n_cols),
        min=xp.full(n_cols, xp.nan),
        max=xp.full(n_cols, xp.nan),
    )


def one_pass_moments(block: Any) -> MomentFields:
    """Count of finite values, null count, mean, M2, min and max per column, in one read.

    ``block`` is a 2-D row-major array (NumPy or CuPy); NaN and +-inf count as missing;
    sums are float64. On the device this is the kernel behind
    :func:`tasks.features.stats.column_moments`; on the host it runs the kernel's algorithm
    (stripes of rows, shifted sums per thread, Chan merges in the kernel's order) in NumPy,
    which the CPU tests check against the two-pass statistics. Integer blocks are cast to
    float64 and non-contiguous ones copied first, where they live.
    """
    block = _checked_block(block, "one_pass_moments")
    xp = get_array_module(block)
    n_rows, n_cols = block.shape
    if n_rows == 0 or n_cols == 0:
        return _empty_fields(n_rows, n_cols, xp)
    if xp is np:
        return _moments_host(block, _moments_plan(n_rows, n_cols, _HOST_MAX_BLOCKS))
    return _moments_device(block)


def _moments_device(block: Any) -> MomentFields:
    import cupy

    block = _device_float_block(block)
    n_rows, n_cols = block.shape
    partial = _raw_kernel("updraft_moments_partial_f32" if block.dtype == cupy.float32 else "updraft_moments_partial_f64")
    plan = _moments_plan(n_rows, n_cols, _resident_blocks(partial.name, _current_device_id()))
    slots = n_cols * plan.n_stripes
    p_n = cupy.empty(slots, dtype=cupy.int64)
    p_mean, p_m2, p_lo, p_hi = (cupy.empty(slots, dtype=cupy.float64) for _ in range(4))
    partial(
        (plan.n_tiles, plan.n_stripes),
        (THREADS,),
        (
            block,
            np.int64(n_rows),
            np.int32(n_cols),
            np.int32(plan.tile_width),
            np.int32(plan.lanes),
            np.int32(plan.lanes_pow2),
            np.int64(plan.stripe_rows),
            np.int32(plan.n_stripes),
            p_n,
            p_mean,
            p_m2,
            p_lo,
            p_hi,
        ),
    )
    out = MomentFields(
        cupy.empty(n_cols, dtype=cupy.int64),
        cupy.empty(n_cols, dtype=cupy.int64),
        *(cupy.empty(n_cols, dtype=cupy.float64) for _ in range(4)),
    )
    _raw_kernel("updraft_moments_final")(
        (n_cols,), (THREADS,), (p_n, p_mean, p_m2, p_lo, p_hi, np.int32(plan.n_stripes), np.int64(n_rows), *out)
    )
    return out


def _merge_host(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """The kernel's ``merge_into`` over arrays of partials ``(n, mean, m2, lo, hi)``."""
    na, ma, m2a, loa, hia = a
    nb, mb, m2b, lob, hib = b
    n = na + nb
    with np.errstate(invalid="ignore", divide="ignore"):
        fb = nb / n
    delta = mb - ma
    mean = ma + delta * fb
    m2 = m2a + m2b + delta * delta * (na * fb)
    a_empty, b_empty = na == 0, nb == 0
    return (
        n,
        np.where(b_empty, ma, np.where(a_empty, mb, mean)),
        np.where(b_empty, m2a, np.where(a_empty, m2b, m2)),
        np.where(b_empty, loa, np.where(a_empty, lob, np.fmin(loa, lob))),
        np.where(b_empty, hia, np.where(a_empty, hib, np.fmax(hia, hib))),
    )


def _tree_host(parts: tuple[np.ndarray, ...], lanes: int) -> tuple[np.ndarray, ...]:
    """The kernels' shared-memory tree over axis 1 (``lanes`` long): lane y takes lane y + half."""
    parts = tuple(p.copy() for p in parts)
    half = (1 << (lanes - 1).bit_length()) // 2
    while half > 0:
        takers = max(0, min(half, lanes - half))
        merged = _merge_host(tuple(p[:, :takers] for p in parts), tuple(p[:, half : half + takers] for p in parts))
        for p, m in zip(parts, merged):
            p[:, :takers] = m
        half //= 2
    return tuple(p[:, 0] for p in parts)


def _stripe_threads_host(x: np.ndarray, lanes: int) -> tuple[np.ndarray, ...]:
    """Per-thread partials of whole stripes ``x`` (stripes, rows, columns): the kernel's loop."""
    n_stripes, stripe_rows, n_cols = x.shape
    x = x.reshape(n_stripes, stripe_rows // lanes, lanes, n_cols).astype(np.float64, copy=False)
    ok = np.isfinite(x)
    n = ok.sum(axis=1)
    shift = np.take_along_axis(x, ok.argmax(axis=1)[:, None], axis=1)[:, 0]
    with np.errstate(invalid="ignore"):  # inf - inf where the value is missing anyway
        d = np.where(ok, x - shift[:, None], 0.0)
    s1 = d.sum(axis=1)
    s2 = (d * d).sum(axis=1)
    lo = np.where(ok, x, np.inf).min(axis=1)
    hi = np.where(ok, x, -np.inf).max(axis=1)
    has = n > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = s1 / n
    mean = np.where(has, shift + offset, 0.0)
    m2 = np.where(has, np.maximum(s2 - s1 * offset, 0.0), 0.0)
    return n, mean, m2, np.where(has, lo, 0.0), np.where(has, hi, 0.0)


def _moments_host(block: np.ndarray, plan: _MomentsPlan) -> MomentFields:
    """The device algorithm under ``plan``, vectorised over threads (the kernels' twin).

    Stripes go through in batches of about ``_HOST_CHUNK_ELEMENTS * 32`` values, so the
    float64 temporaries stay a bounded size whatever the block.
    """
    n_rows, n_cols = block.shape
    per_batch = max(1, (_HOST_CHUNK_ELEMENTS * 32) // (plan.stripe_rows * n_cols))
    by_stripe: list[tuple[np.ndarray, ...]] = []
    for first in range(0, plan.n_stripes, per_batch):
        stop = min(first + per_batch, plan.n_stripes)
        rows = block[first * plan.stripe_rows : stop * plan.stripe_rows]
        if rows.shape[0] < (stop - first) * plan.stripe_rows:  # short last stripe: NaN is missing to the kernel too
            rows = np.concatenate([rows, np.full(((stop - first) * plan.stripe_rows - rows.shape[0], n_cols), np.nan)])
        threads = _stripe_threads_host(rows.reshape(stop - first, plan.stripe_rows, n_cols), plan.lanes)
        # (stripes, lanes, columns) -> the tree over lanes -> (stripes, columns)
        merged = _tree_host(tuple(np.swapaxes(f, 1, 2).reshape(-1, plan.lanes) for f in threads), plan.lanes)
        by_stripe.append(tuple(f.reshape(stop - first, n_cols) for f in merged))
    # The final kernel: thread t merges stripes t, t + THREADS, ... in order, then a tree.
    width = _ceil_div(plan.n_stripes, THREADS) * THREADS
    padded = []
    for i in range(5):
        field = np.concatenate([b[i] for b in by_stripe]).T
        padded.append(np.zeros((n_cols, width), dtype=field.dtype))
        padded[-1][:, : plan.n_stripes] = field
    acc = tuple(p[:, :THREADS] for p in padded)
    for start in range(THREADS, width, THREADS):
        acc = _merge_host(acc, tuple(p[:, start : start + THREADS] for p in padded))
    n, mean, m2, lo, hi = _tree_host(acc, THREADS)
    has = n > 0
    return MomentFields(
        count=n.astype(np.int64),
        null_count=(n_rows - n).astype(np.int64),
        mean=np.where(has, mean, np.nan),
        m2=np.where(has, m2, 0.0),
        min=np.where(has, lo, np.nan),
        max=np.where(has, hi, np.nan),
    )


# --------------------------------------------------------------------------------------
# 2. The fused numeric transform.
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NumericParams:
    """Per-column parameters of :func:`fused_numeric`, one entry per column.

    ``fill`` replaces NaN and +-inf; values are clipped to ``[lo, hi]`` (``-inf``/``inf``
    for none); where ``log`` is true, ``x`` becomes ``copysign(log1p(|x|), x)``; the
    result is ``(x - shift) * inv_scale``. Build it on the host (the values are checked
    there) and move it to the device once with :meth:`to`.
    """

    fill: Any
    lo: Any
    hi: Any
    log: Any
    shift: Any
    inv_scale: Any

    def __post_init__(self) -> None:
        xp = get_array_module(self.fill)
        fields = {}
        for name in ("fill", "lo", "hi", "log", "shift", "inv_scale"):
            value = getattr(self, name)
            if get_array_module(value) is not xp:
                raise TypeError(f"NumericParams.{name} lives on another device than fill; build all on the host, then .to(xp)")
            # Contiguous: the device kernel reads them through bare pointers.
            dtype = None if name == "log" else xp.float64
            fields[name] = xp.ascontiguousarray(xp.asarray(value, dtype=dtype).reshape(-1))
        n = fields["fill"].shape[0]
        for name, value in fields.items():
            if value.shape != (n,):
                raise ValueError(f"NumericParams.{name} has {value.shape[0]} entries, fill has {n}: give one per column")
        if xp is np:
            _check_host_params(fields)
        fields["log"] = fields["log"].astype(bool, copy=False)
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @property
    def n_columns(self) -> int:
        return int(self.fill.shape[0])

    @classmethod
    def build(
        cls,
        n_columns: int,
        *,
        fill: Any = 0.0,
        lo: Any = -math.inf,
        hi: Any = math.inf,
        log: Any = False,
        shift: Any = 0.0,
        inv_scale: Any = 1.0,
    ) -> NumericParams:
        """Host parameters for ``n_columns`` columns; a scalar applies to every column."""

        def column(value: Any, dtype: Any) -> np.ndarray:
            return np.broadcast_to(np.asarray(value, dtype=dtype), (n_columns,)).copy()

        return cls(
            fill=column(fill, np.float64),
            lo=column(lo, np.float64),
            hi=column(hi, np.float64),
            log=column(log, bool),
            shift=column(shift, np.float64),
            inv_scale=column(inv_scale, np.float64),
        )

    def to(self, xp: ModuleType) -> NumericParams:
        """The same parameters in ``xp``'s memory (``numpy`` or ``cupy``): one small copy."""
        if get_array_module(self.fill) is xp:
            return self
        if xp is np:
            return NumericParams(*(getattr(self, f).get() for f in _PARAM_FIELDS))
        return NumericParams(*(xp.asarray(getattr(self, f)) for f in _PARAM_FIELDS))


_PARAM_FIELDS = ("fill", "lo", "hi", "log", "shift", "inv_scale")


def _check_host_params(fields: dict[str, np.ndarray]) -> None:
    def first(mask: np.ndarray) -> int:
        return int(np.flatnonzero(mask)[0])

    for name in ("lo", "hi"):
        if np.isnan(fields[name]).any():
            raise ValueError(f"NumericParams.{name}[{first(np.isnan(fields[name]))}] is NaN: use -inf/inf for no clipping")
    wrong = fields["lo"] > fields["hi"]
    if wrong.any():
        j = first(wrong)
        raise ValueError(f"NumericParams column {j}: lo {fields['lo'][j]} is above hi {fields['hi'][j]}")
    for name in ("shift", "inv_scale"):
        bad = ~np.isfinite(fields[name])
        if bad.any():
            raise ValueError(f"NumericParams.{name}[{first(bad)}] is {fields[name][first(bad)]}: it must be finite")
    log = fields["log"]
    if log.dtype != bool:
        bad = ~np.isin(log, (0, 1))
        if bad.any():
            raise ValueError(f"NumericParams.log[{first(bad)}] is {log[first(bad)]}: use 0/1 or False/True")


def fused_numeric(block: Any, params: NumericParams, out: Any = None) -> Any:
    """Impute, clip, signed log1p and scale every value in one pass; float32 rows x columns.

    Per column ``j``: ``x = fill[j]`` where ``x`` is NaN or +-inf; ``x = min(max(x, lo[j]),
    hi[j])``; ``x = copysign(log1p(|x|), x)`` where ``log[j]``; ``(x - shift[j]) *
    inv_scale[j]``, computed in float64 and stored as float32. ``params`` must live where
    ``block`` does (see :meth:`NumericParams.to`). ``out``, if given, is a float32 array of
    the block's shape there (C-contiguous on the device); it may be ``block`` itself when
    the block is float32 and C-contiguous.
    """
    block = _checked_block(block, "fused_numeric")
    xp = get_array_module(block)
    n_rows, n_cols = block.shape
    if not isinstance(params, NumericParams):
        raise TypeError(f"fused_numeric needs NumericParams, got {type(params).__name__}")
    if params.n_columns != n_cols:
        raise ValueError(f"fused_numeric: the block has {n_cols} columns, the parameters {params.n_columns}")
    if get_array_module(params.fill) is not xp:
        where = "device" if xp is not np else "host"
        raise TypeError(f"fused_numeric: the block is on the {where}, its parameters are not; call params.to(xp) once first")
    out = _checked_out(out, block, xp)
    if n_rows == 0 or n_cols == 0:
        return out
    if xp is np:
        _fused_host(block, params, out)
    else:
        _fused_device(block, params, out)
    return out


def _checked_out(out: Any, block: Any, xp: ModuleType) -> Any:
    if out is None:
        return xp.empty(block.shape, dtype=xp.float32)
    if get_array_module(out) is not xp:
        raise TypeError("fused_numeric: out must live where the block does")
    if out.shape != block.shape or out.dtype != xp.float32:
        raise ValueError(f"fused_numeric: out must be float32 of shape {block.shape}, got {out.dtype} {out.shape}")
    if xp is not np and not out.flags.c_contiguous:
        raise ValueError("fused_numeric: out must be C-contiguous on the device")
    return out


def _fused_device(block: Any, params: NumericParams, out: Any) -> None:
    import cupy

    block = _device_float_block(block)
    n_rows, n_cols = block.shape
    kernel = _raw_kernel("updraft_fused_numeric_f32" if block.dtype == cupy.float32 else "updraft_fused_numeric_f64")
    grid, active = _fused_launch(n_rows * n_cols, n_cols, _resident_blocks(kernel.name, _current_device_id()))
    kernel(
        (grid,),
        (THREADS,),
        (
            block,
            out,
            params.fill,
            params.lo,
            params.hi,
            params.log,
            params.shift,
            params.inv_scale,
            np.int64(n_rows * n_cols),
            np.int32(n_cols),
            np.int64(active),
        ),
    )


def _fused_launch(total: int, n_cols: int, max_blocks: int) -> tuple[int, int]:
    """``(blocks, active threads)``: active is a multiple of ``n_cols`` so a thread keeps one column."""
    blocks = max(1, min(max_blocks, _ceil_div(total, THREADS * 4 * _UNROLL)), _ceil_div(n_cols, THREADS))
    return blocks, (blocks * THREADS // n_cols) * n_cols


def _fused_grid_twin(block: np.ndarray, params: NumericParams, max_blocks: int) -> np.ndarray:
    """The device kernel's thread mapping in NumPy: thread g handles flat indices g + k * active
    with column ``g % n_cols``'s parameters. Equal to :func:`fused_numeric` iff the mapping is right."""
    n_rows, n_cols = block.shape
    flat = np.ascontiguousarray(block).reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    _, active = _fused_launch(flat.size, n_cols, max_blocks)
    threads = np.arange(active)
    for start in range(0, flat.size, active):
        g = threads[: min(active, flat.size - start)]
        j = g % n_cols
        x = flat[start + g].astype(np.float64)
        x = np.where(np.isfinite(x), x, params.fill[j])
        x = np.where(x < params.lo[j], params.lo[j], x)
        x = np.where(x > params.hi[j], params.hi[j], x)
        x = np.where(params.log[j], np.copysign(np.log1p(np.abs(x)), x), x)
        out[start + g] = (x - params.shift[j]) * params.inv_scale[j]
    return out.reshape(n_rows, n_cols)


def _fused_host(block: np.ndarray, p: NumericParams, out: np.ndarray) -> None:
    """Row chunks small enough that the float64 chunk and its mask stay in cache, every step in place."""
    n_rows, n_cols = block.shape
    rows = max(1, _HOST_CHUNK_ELEMENTS // n_cols)
    buf = np.empty((min(rows, n_rows), n_cols))
    bad = np.empty(buf.shape, dtype=bool)
    clip_lo = bool((p.lo > -np.inf).any())
    clip_hi = bool((p.hi < np.inf).any())
    logs = np.flatnonzero(p.log)
    all_log = logs.size == n_cols
    shift = bool((p.shift != 0.0).any())
    scale = bool((p.inv_scale != 1.0).any())
    for start in range(0, n_rows, rows):
        b = buf[: min(rows, n_rows - start)]
        k = bad[: b.shape[0]]
        b[...] = block[start : start + b.shape[0]]
        np.isfinite(b, out=k)
        np.logical_not(k, out=k)
        np.copyto(b, p.fill, where=k)
        if clip_lo:
            np.maximum(b, p.lo, out=b)
        if clip_hi:
            np.minimum(b, p.hi, out=b)
        if logs.size:
            x = b if all_log else b[:, logs]
            y = np.abs(x)
            np.log1p(y, out=y)
            np.copysign(y, x, out=y)
            if all_log:
                b[...] = y
            else:
                b[:, logs] = y
        if shift:
            np.subtract(b, p.shift, out=b)
        if scale:
            np.multiply(b, p.inv_scale, out=b)
        out[start : start + b.shape[0]] = b


def missing_mask(block: Any, columns: Any = None) -> Any:
    """True where a value is missing (NaN or +-inf), for missing-indicator columns; where the block lives."""
    return ~get_array_module(block).isfinite(block if columns is None else block[:, columns])


# --------------------------------------------------------------------------------------
# 3. Row hashes.
# --------------------------------------------------------------------------------------


def mix64(h: Any) -> Any:
    """SplitMix64's finalizer of each uint64 (as :func:`tasks.features.split._mix`): spreads
    structured hashes over all 64 bits, bit-identically on host and device."""
    h = _checked_hashes(h, "mix64")
    xp = get_array_module(h)
    if xp is not np:
        return _hash_kernel("mix64")(h)
    return _mix64_inplace(np.array(h, dtype=np.uint64, copy=True))


def uniforms(h: Any, salt: int = 0) -> Any:
    """A float64 in [0, 1) per hash: ``(mix64(h ^ salt) >> 11) * 2**-53``, the same on every device.

    ``salt`` (an integer below 2**64) picks an independent draw for the same hashes.
    """
    h = _checked_hashes(h, "uniforms")
    salt = _checked_uint64(salt, "salt")
    xp = get_array_module(h)
    if xp is not np:
        return _hash_kernel("uniforms")(h, salt)
    mixed = _mix64_inplace(np.bitwise_xor(h, salt, dtype=np.uint64))
    mixed >>= np.uint64(11)
    out = mixed.astype(np.float64)
    out *= 2.0**-53
    return out


def buckets(h: Any, k: int) -> Any:
    """The bucket of each hash among ``2**k`` (int64 in ``[0, 2**k)``): the low ``k`` bits of ``mix64(h)``."""
    h = _checked_hashes(h, "buckets")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k <= 63:
        raise ValueError(f"buckets: k must be an integer from 0 to 63 (2**k buckets), got {k!r}")
    mask = np.uint64((1 << int(k)) - 1)
    xp = get_array_module(h)
    if xp is not np:
        return _hash_kernel("buckets")(h, mask)
    mixed = _mix64_inplace(np.array(h, dtype=np.uint64, copy=True))
    mixed &= mask
    return mixed.view(np.int64)


def _mix64_inplace(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on ``x`` in place (one scratch array, no other temporaries)."""
    t = np.empty_like(x)
    with np.errstate(over="ignore"):
        np.right_shift(x, np.uint64(30), out=t)
        x ^= t
        x *= np.uint64(_SPLITMIX_1)
        np.right_shift(x, np.uint64(27), out=t)
        x ^= t
        x *= np.uint64(_SPLITMIX_2)
        np.right_shift(x, np.uint64(31), out=t)
        x ^= t
    return x


def _checked_hashes(h: Any, what: str) -> Any:
    xp = get_array_module(h)
    h = xp.asarray(h)
    if h.dtype == xp.int64:
        return h.view(xp.uint64)
    if h.dtype != xp.uint64:
        raise TypeError(f"{what} needs uint64 (or int64) hashes, got {h.dtype}; hash the rows first")
    return h


def _checked_uint64(value: Any, what: str) -> np.uint64:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < 2**64:
        raise ValueError(f"{what} must be an integer in [0, 2**64), got {value!r}")
    return np.uint64(int(value))


# --------------------------------------------------------------------------------------
# Shared input checks.
# --------------------------------------------------------------------------------------


def _checked_block(block: Any, what: str) -> Any:
    if getattr(block, "ndim", None) != 2:
        raise ValueError(f"{what} needs a 2-D array (rows x columns), got {getattr(block, 'shape', type(block))}")
    if block.dtype.kind not in "fiu":
        raise TypeError(f"{what} needs a numeric array, got dtype {block.dtype}")
    return block


def _device_float_block(block: Any) -> Any:
    """A C-contiguous float32/float64 view of a device block, copied on the device only if it must be."""
    import cupy

    if block.dtype not in (cupy.float32, cupy.float64):
        block = block.astype(cupy.float32 if block.dtype.kind == "f" and block.dtype.itemsize < 4 else cupy.float64)
    return cupy.ascontiguousarray(block)


__all__ = [
    "MomentFields",
    "NumericParams",
    "buckets",
    "cuda_sources",
    "fused_numeric",
    "missing_mask",
    "mix64",
    "one_pass_moments",
    "uniforms",
]
