"""The real ``kernels/*.cu`` (``__global__`` bodies included) run over their grids on the CPU.

The simulator's grid executor (gpu_deconv/_simulator: ``cuda_host.h`` maps
``__global__``, ``__shared__``, ``threadIdx``, ``__syncthreads()`` onto host
threads and a barrier) compiles each module with the options the package
gives NVRTC and launches its kernels through ctypes. Every kernel is compared
with the NumPy path of the package, over the grid the Python launcher
computes and over deliberately small grids (fewer blocks than the work, fewer
``gridDim.y`` than images) so that every grid-stride and image loop runs, and
with the blocks in reverse order. The reductions also run under
ThreadSanitizer, which must catch a deleted barrier; the pad/fold kernels run
under AddressSanitizer on buffers of exactly their size.

This proves the kernels' logic on the CPU, not their behaviour on a device.
Exhaustive variants are marked ``simulator`` and skipped unless asked for:
``python -m pytest -m simulator tests/test_kernels_simulated.py``.
Tolerances: exact equality for data movement (pad, crop, mask, the weighted
embed and crop, the circulant product); 1e-10 (float64) / 1e-4 (float32) relative to the largest entry for
sums in another order (fold, spectral division, reductions).
"""

import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from gpu_deconv import _cuda
from gpu_deconv._backend import numpy_backend
from gpu_deconv._cuda import modules as _kernels
from gpu_deconv._ops import ArrayOps
from gpu_deconv._padding import plan_axis
from gpu_deconv._simulator import executor
from gpu_deconv.solvers import closed_form as cf

from conftest import assert_close

#: The array-expression path (NumPy): the reference the kernels are compared with.
ARRAY_OPS = ArrayOps(numpy_backend())

pytestmark = pytest.mark.skipif(executor.compiler() is None,
                                reason="no host C++ compiler (g++ or $CXX): the simulator builds nothing")
BK = numpy_backend()
BOUNDARIES = tuple(_cuda.BOUNDARY_CODES)
DTYPES = (np.float32, np.float64)
I64, I32 = np.int64, np.int32
BLOCK = (_cuda.BLOCK,)

_MODULES: dict = {}


def module(name, dtype):
    """The executor module of kernels/<name>.cu for one precision, built as the package builds it."""
    key = (name, np.dtype(dtype).str)
    if key not in _MODULES:
        code = (_kernels.source_dir() / f"{name}.cu").read_text()
        _MODULES[key] = executor.Module(code, _kernels.compile_options(dtype))
    return _MODULES[key]


def launch(kind, dtype, grid, args, *, boundary=None, ndim=None, block=BLOCK, reverse=False, threads=None):
    name = _cuda.kernel_name(kind, dtype, boundary=boundary, ndim=ndim)
    module(_cuda.MODULE_OF[kind], dtype).launch(name, grid, block, args, reverse=reverse, threads=threads)


def grids_1d(total):
    """The launcher's grid, a grid of a few blocks, and a single block (grid-stride loops)."""
    return [_cuda.grid_1d(total), (max(1, min(3, _cuda.grid_1d(total)[0] - 1)),), (1,)]


def _cdt(dtype):
    return np.complex128 if np.dtype(dtype) == np.float64 else np.complex64


def _crandn(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(_cdt(dtype))


def _i64(values):
    return tuple(I64(v) for v in values)


# --------------------------------------------------------------- pad / fold
AXES = [(1, 1), (1, 4), (2, 9), (5, 3), (6, 4), (7, 7), (3, 6)]  # n == 1, k > n, odd and even


def _cases(nd, count):
    if nd == 1:
        return [(a,) for a in AXES][:count]
    if nd == 2:
        return [(AXES[i], AXES[(3 * i + 2) % len(AXES)]) for i in range(len(AXES))][:count]
    return [(AXES[i], AXES[(2 * i + 1) % len(AXES)], AXES[(5 * i + 3) % len(AXES)]) for i in range(4)][:count]


MODES = [("full", b) for b in BOUNDARIES] + [("same", b) for b in BOUNDARIES] \
    + [("valid", b) for b in BOUNDARIES] + [("circular", "periodic")]


def check_pad_fold(rng, mode, boundary, nd, convention, dtype, ncases, reverse=False):
    batch = (2, 3) if nd < 3 else (2,)
    for case in _cases(nd, ncases):
        plans = tuple(plan_axis(n, k, mode, boundary, convention, BK.next_fast_len) for n, k in case)
        n = tuple(p.n for p in plans)
        G = tuple(p.G for p in plans)
        ext = tuple(p.n_ext for p in plans)
        geom = _i64(_cuda.pad_geometry(plans))
        win = (Ellipsis,) + tuple(slice(0, e) for e in ext)
        x = rng.standard_normal(batch + n).astype(dtype)
        want = np.zeros(batch + G, dtype=dtype)
        want[win] = ARRAY_OPS.pad(x, plans, boundary)
        v = rng.standard_normal(batch + G).astype(dtype)
        want_fold = ARRAY_OPS.fold(np.ascontiguousarray(v[win]), plans, boundary)
        total = math.prod(batch + G)
        for grid in grids_1d(total):
            got = np.full(batch + G, np.nan, dtype=dtype)
            launch("pad", dtype, grid, (x, got, I64(total)) + geom, boundary=boundary, ndim=nd,
                   reverse=reverse)
            np.testing.assert_array_equal(got, want, err_msg=f"pad {case} grid {grid}")
        total = math.prod(batch + n)
        for grid in grids_1d(total):
            got = np.full(batch + n, np.nan, dtype=dtype)
            launch("fold", dtype, grid, (v, got, I64(total)) + geom, boundary=boundary, ndim=nd,
                   reverse=reverse)
            assert_close(got, want_fold, dtype, factor=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode,boundary", MODES)
def test_pad_and_fold_kernels_match_numpy(rng, mode, boundary, nd, dtype):
    # Both conventions in turn (the matlab one moves the 'same' window of even kernels).
    for convention in ("scipy", "matlab"):
        check_pad_fold(rng, mode, boundary, nd, convention, dtype, ncases=2, reverse=convention == "matlab")


@pytest.mark.simulator
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode,boundary", MODES)
def test_pad_and_fold_kernels_exhaustive(rng, mode, boundary, nd, convention, dtype):
    check_pad_fold(rng, mode, boundary, nd, convention, dtype, ncases=len(AXES))
    check_pad_fold(rng, mode, boundary, nd, convention, dtype, ncases=2, reverse=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_crop_and_mask_kernels(rng, nd, dtype):
    G = (7, 6, 5)[:nd]
    for m in [(1, 1, 1)[:nd], (7, 3, 5)[:nd], (4, 6, 2)[:nd], (0, 6, 5)[:nd]]:
        v = rng.standard_normal((2,) + G).astype(dtype)
        geom = _i64(_cuda.window_geometry(m, G))
        win = (Ellipsis,) + tuple(slice(0, a) for a in m)
        total = 2 * math.prod(m)
        for grid in grids_1d(total):
            got = np.full((2,) + m, np.nan, dtype=dtype)
            if total:
                launch("crop", dtype, grid, (v, got, I64(total)) + geom, ndim=nd)
            np.testing.assert_array_equal(got, v[win])
        want = np.zeros_like(v)
        want[win] = v[win]
        for grid in grids_1d(v.size):
            got = v.copy()
            launch("mask", dtype, grid, (got, I64(v.size)) + geom, ndim=nd, reverse=True)
            np.testing.assert_array_equal(got, want)


WINDOWS = ((7, 6, 5), [(1, 1, 1), (7, 3, 5), (4, 6, 2), (0, 6, 5), (6, 5, 4)])  # grid; windows, odd and even


def check_scaled_window(rng, nd, dtype, batch, G, m, reverse=False):
    """embed_scaled / crop_scaled over the launcher's grid and smaller ones, against the array expressions."""
    geom = _i64(_cuda.window_geometry(m, G))
    win = (Ellipsis,) + tuple(slice(0, a) for a in m)
    s = rng.uniform(-2.0, 2.0, m).astype(dtype)
    x = rng.standard_normal(batch + m).astype(dtype)
    want = np.zeros(batch + G, dtype=dtype)
    want[win] = x * s
    total = math.prod(batch + G)
    for grid in grids_1d(total):
        got = np.full(batch + G, np.nan, dtype=dtype)  # every grid element written, zeros included
        launch("embed_scaled", dtype, grid, (x, s, got, I64(total)) + geom, ndim=nd, reverse=reverse)
        np.testing.assert_array_equal(got, want, err_msg=f"embed_scaled {m} in {G}, grid {grid}")
    v = rng.standard_normal(batch + G).astype(dtype)
    want = v[win] * s
    total = math.prod(batch + m)
    for grid in grids_1d(total):
        got = np.full(batch + m, np.nan, dtype=dtype)
        if total:
            launch("crop_scaled", dtype, grid, (v, s, got, I64(total)) + geom, ndim=nd, reverse=not reverse)
        np.testing.assert_array_equal(got, want, err_msg=f"crop_scaled {m} of {G}, grid {grid}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_scaled_embed_and_crop_kernels(rng, nd, dtype):
    # The weight is one array of the spatial shape shared by every image: a kernel that indexed
    # it by the flat index (batch included) would read past it or the wrong weight for image > 0.
    G, windows = WINDOWS
    batch = (2, 3) if nd < 3 else (3,)
    for i, m in enumerate(windows):
        check_scaled_window(rng, nd, dtype, batch, G[:nd], m[:nd], reverse=i % 2 == 1)


def test_scaled_kernels_make_the_circulant_product_of_the_array_path(rng):
    # embed_scaled -> rfftn -> precond_mul -> irfftn -> crop_scaled is ArrayOps.circulant_apply
    # (T E F^-1 diag(Dinv) F E^T T r) bit for bit: each weight is one rounding either way.
    for dtype, n, grid in ((np.float64, (9, 6), (16, 15)), (np.float32, (5, 7, 4), (8, 12, 9)),
                           (np.float32, (11,), (20,))):
        nd = len(n)
        batch = (2, 3) if nd < 3 else (2,)
        r = rng.standard_normal(batch + n).astype(dtype)
        T = rng.uniform(0.0, 1.0, n).astype(dtype)
        F = grid[:-1] + (grid[-1] // 2 + 1,)
        Dinv = rng.uniform(0.1, 3.0, F).astype(dtype)
        want = ARRAY_OPS.circulant_apply(r, T, Dinv, grid, n)
        geom = _i64(_cuda.window_geometry(n, grid))
        rg = np.full(batch + grid, np.nan, dtype=dtype)
        launch("embed_scaled", dtype, _cuda.grid_1d(rg.size), (r, T, rg, I64(rg.size)) + geom, ndim=nd)
        R = np.ascontiguousarray(BK.rfftn(rg, grid))
        launch("precond_mul", dtype, _cuda.grid_1d(R.size), (R, Dinv, I64(R.size), I64(Dinv.size), I64(0)))
        v = np.ascontiguousarray(BK.irfftn(R, grid))
        got = np.full(batch + n, np.nan, dtype=dtype)
        launch("crop_scaled", dtype, _cuda.grid_1d(got.size), (v, T, got, I64(got.size)) + geom, ndim=nd)
        np.testing.assert_array_equal(got, want, err_msg=f"{dtype.__name__} {n} on {grid}")


@pytest.mark.simulator
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_scaled_embed_and_crop_kernels_exhaustive(rng, nd, dtype):
    for G in [(1, 1, 1), (8, 5, 6), (9, 10, 3)]:
        for m in {tuple(min(a, g) for a, g in zip(mm, G)) for mm in WINDOWS[1]} | {G}:
            check_scaled_window(rng, nd, dtype, (2,) if nd == 3 else (3, 2), G[:nd], m[:nd])
            check_scaled_window(rng, nd, dtype, (1,), G[:nd], m[:nd], reverse=True)


# ------------------------------------------------------------------ spectra
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h_batched", [False, True])
@pytest.mark.parametrize("with_r,with_z", [(False, False), (True, False), (True, True), (False, True)])
def test_spectral_solve_kernel(rng, dtype, h_batched, with_r, with_z):
    B, F = 3, (7, 4)
    nf = math.prod(F)
    H = _crandn(rng, ((B,) if h_batched else ()) + F, dtype)
    R = rng.uniform(0.5, 2.0, F).astype(dtype) if with_r else None
    lam = rng.uniform(0.1, 1.0, B).astype(dtype)
    alpha = (rng.uniform(0.1, 1.0, B) if with_z else np.zeros(B)).astype(dtype)
    Y = _crandn(rng, (B,) + F, dtype)
    Z = _crandn(rng, (B,) + F, dtype) if with_z else None
    W, V = cf.spectral_filter(BK, H, R, lam, alpha, 2, np.dtype(dtype))
    want = W * Y + (V * Z if V is not None else 0)
    stand_in_r, stand_in_z = np.zeros(1, dtype=dtype), np.zeros(1, dtype=_cdt(dtype))
    for grid in grids_1d(Y.size):
        got = Y.copy()
        launch("spectral_solve", dtype, grid,
               (got, H, R if with_r else stand_in_r, lam, alpha, Z if with_z else stand_in_z, I64(Y.size),
                I64(nf), I64(nf if h_batched else 0), I64(0), I32(with_r), I32(with_z)))
        assert_close(got.real, want.real, dtype, factor=10)
        assert_close(got.imag, want.imag, dtype, factor=10)


def extrema(dtype, H, R, lam, alpha, B, nf, grid_y=None, nblk=None, reverse=False):
    """Per-image min/max of the denominator by the kernel, on the launcher's layout or a smaller one."""
    lay_nblk, lay_grid = _cuda.reduction_layout(nf, B)
    nblk = lay_nblk if nblk is None else nblk
    grid = (nblk, lay_grid[1] if grid_y is None else grid_y)
    pmin = np.full((B, nblk), np.nan, dtype=dtype)
    pmax = np.full((B, nblk), np.nan, dtype=dtype)
    stand_in = np.zeros(1, dtype=dtype)
    launch("spectral_extrema", dtype, grid,
           (H, stand_in if R is None else R, lam, alpha, pmin, pmax, I64(nf), I64(B), I64(nblk),
            I64(nf if H.size > nf else 0), I64(0), I32(R is not None)), reverse=reverse)
    return pmin.min(axis=1), pmax.max(axis=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spectral_extrema_kernel(rng, dtype):
    B, F = 3, (23, 13)
    nf = math.prod(F)
    H = _crandn(rng, (B,) + F, dtype)
    R = rng.uniform(0.5, 2.0, F).astype(dtype)
    lam, alpha = rng.uniform(0.1, 1.0, B).astype(dtype), rng.uniform(0.1, 1.0, B).astype(dtype)
    den = (H.real * H.real + H.imag * H.imag) + lam[:, None, None] * R + alpha[:, None, None]
    # the launcher's layout, then fewer blocks than the work and fewer gridDim.y than images
    for nblk, gy, rev in ((None, None, False), (1, 2, True)):
        dmin, dmax = extrema(dtype, H, R, lam, alpha, B, nf, grid_y=gy, nblk=nblk, reverse=rev)
        np.testing.assert_array_equal(dmin, den.min(axis=(1, 2)))
        np.testing.assert_array_equal(dmax, den.max(axis=(1, 2)))
    # no regularizer: the has_r = 0 branch (the singularity message is test_kernels_harness's)
    dmin, dmax = extrema(dtype, H, None, lam, alpha, B, nf, grid_y=1)
    den = (H.real * H.real + H.imag * H.imag) + alpha[:, None, None]
    np.testing.assert_array_equal(dmin, den.min(axis=(1, 2)))
    np.testing.assert_array_equal(dmax, den.max(axis=(1, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [False, True])
def test_precondition_kernels(rng, dtype, shared):
    B, F = 3, (5, 4)
    nf = math.prod(F)
    D = rng.uniform(-0.5, 2.0, ((1,) if shared else (B,)) + F).astype(dtype)
    floor = rng.uniform(0.1, 0.3, B).astype(dtype)
    Y = _crandn(rng, (B,) + F, dtype)
    stride = I64(0 if shared else nf)
    Dmax = np.maximum(D, floor[:, None, None])
    Dinv = np.ascontiguousarray((1 / Dmax)[:1] if shared else 1 / Dmax)
    want = Y.copy()
    want *= Dinv
    for grid in grids_1d(Y.size):
        got = Y.copy()
        launch("precond_div", dtype, grid, (got, D, floor, I64(Y.size), I64(nf), stride))
        assert_close(got.real, (Y / Dmax).real, dtype)
        assert_close(got.imag, (Y / Dmax).imag, dtype)
        got = Y.copy()
        launch("precond_mul", dtype, grid, (got, Dinv, I64(Y.size), I64(nf), stride), reverse=True)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 3])
def test_sherman_morrison_kernel(rng, dtype, C):
    B, F = 2, (5, 3)
    nf = math.prod(F)
    D = _crandn(rng, (C,) + F, dtype)
    Y = _crandn(rng, (B,) + F, dtype)
    Z = _crandn(rng, (B, C) + F, dtype)
    alpha = rng.uniform(0.2, 1.5, B).astype(dtype)
    want = ARRAY_OPS.sherman_morrison(D, Y, Z, alpha.reshape(B, 1, 1))
    for grid in grids_1d(B * nf):
        got = np.full_like(Z, np.nan)
        launch("sherman_morrison", dtype, grid, (D, Y, Z, alpha, got, I64(B * nf), I64(C), I64(nf)))
        assert_close(got.real, want.real, dtype, factor=10)
        assert_close(got.imag, want.imag, dtype, factor=10)
    Zc = Z.copy()  # in place on Z, as the kernel allows
    launch("sherman_morrison", dtype, (1,), (D, Y, Zc, alpha, Zc, I64(B * nf), I64(C), I64(nf)))
    assert_close(Zc.real, want.real, dtype, factor=10)


# ----------------------------------------------------------------------- CG
def cg_reductions(dtype, u, v, p, q, z, a, beta, nblk, grid_y, reverse=False, threads=None):
    """dot, update_xr (with its r.r), update_p through the kernels: what CGKernels launches."""
    B, N = u.shape
    partial = np.full(B * nblk, np.nan)
    fin = (max(1, min(B, grid_y)),)

    def finish():
        out = np.full(B, np.nan)
        launch("sum_partials", dtype, fin, (partial, out, I64(nblk), I64(B)), reverse=reverse,
               threads=threads)
        return out

    grid = (nblk, grid_y)
    launch("dot_partial", dtype, grid, (u, v, partial, I64(N), I64(B), I64(nblk)), reverse=reverse,
           threads=threads)
    dot = finish()
    x, r = u.copy(), v.copy()
    launch("cg_update_xr", dtype, grid, (x, r, p, q, a, partial, I64(N), I64(B), I64(nblk)), reverse=reverse,
           threads=threads)
    rr = finish()
    pp = p.copy()
    launch("cg_update_p", dtype, _cuda.grid_1d(B * N), (pp, z, beta, I64(B * N), I64(N)), reverse=reverse)
    return dot, x, r, rr, pp


def check_cg(rng, dtype, B, N, layouts, threads=None):
    u, v, p, q, z = (rng.standard_normal((B, N)).astype(dtype) for _ in range(5))
    a, beta = rng.standard_normal(B), rng.standard_normal(B)
    ad = a.astype(dtype)[:, None]
    want_x, want_r = u + ad * p, v - ad * q
    tol = dict(dtype=np.float64, factor=1e6 if dtype == np.float32 else 10)
    for nblk, gy, rev in layouts:
        dot, x, r, rr, pp = cg_reductions(dtype, u, v, p, q, z, a, beta, nblk, gy, rev, threads)
        assert_close(dot, (u.astype(np.float64) * v).sum(axis=1), **tol)
        assert_close(x, want_x, dtype, factor=10)
        assert_close(r, want_r, dtype, factor=10)
        assert_close(rr, (r.astype(np.float64) ** 2).sum(axis=1), **tol)
        assert_close(pp, z + beta.astype(dtype)[:, None] * p, dtype, factor=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N", [(3, 1), (5, 700)])
def test_cg_kernels(rng, dtype, B, N):
    nblk, grid = _cuda.reduction_layout(N, B)
    # the launcher's layout; fewer blocks per image; fewer gridDim.y than images, reversed
    check_cg(rng, dtype, B, N, [(nblk, grid[1], False), (1, B, True), (2, 2, False)])


@pytest.mark.simulator
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N", [(1, 1), (2, 255), (3, 257), (7, 3000), (40, 513)])
def test_cg_kernels_exhaustive(rng, dtype, B, N):
    nblk, grid = _cuda.reduction_layout(N, B)
    check_cg(rng, dtype, B, N, [(nblk, grid[1], False), (nblk, grid[1], True), (1, 1, False),
                                (3, max(1, B // 3), True)])
    # the block's threads as blockDim OS threads at a real barrier (what the sanitizer runs use)
    check_cg(rng, dtype, B, N, [(2, 2, False)], threads="pool")


# The per-image scalars of an iteration (gd_cg_step / gd_cg_check / gd_cg_beta): bit for bit the
# array expressions of batched_cg_fused's array path, written out here as the reference.
def _scalars_ref(rz, pq, rr, bnorm, rtol, active, breakdown, iters, rz_new, keep):
    with np.errstate(all="ignore"):
        step = rz / np.where(pq > 0, pq, 1)
        bad = active & ~((pq > 0) & np.isfinite(step))
        breakdown = breakdown | bad
        active = active & ~bad
        broken = bad
        a = np.where(active, step, 0)
        iters = iters + active
        res = np.sqrt(rr) / bnorm
        bad = active & ~np.isfinite(res)
        breakdown = breakdown | bad
        active = active & ~bad
        broken = broken | bad
        done = active & (res <= rtol)
        beta = np.where(keep, rz_new / np.where(rz != 0, rz, 1), 0)
    return {"a": a, "active": active, "breakdown": breakdown, "broken": broken, "iters": iters, "res": res,
            "done": done, "flags": np.array([broken.any(), done.any(), active.any()]), "beta": beta}


def _same_bits(got, want, what):
    """Equal bit for bit, NaN apart (its payload is the FPU's): -0.0 is not 0.0."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    nan = np.isnan(want) if want.dtype.kind == "f" else np.zeros(want.shape, bool)
    np.testing.assert_array_equal(np.isnan(got) if got.dtype.kind == "f" else nan, nan, err_msg=what)
    g, w = got[~nan], want[~nan]
    if w.dtype.kind == "f":
        g, w = g.view(np.uint64), w.view(np.uint64)
    np.testing.assert_array_equal(g, w, err_msg=what)


def _special(rng, B, values):
    """B random values with a share of the given special ones."""
    v = rng.standard_normal(B) * 10.0 ** rng.integers(-5, 6, B)
    pick = rng.random(B) < 0.3
    v[pick] = rng.choice(values, pick.sum())
    return v


def _scalar_case(rng, B):
    inf, nan = np.inf, np.nan
    rz = _special(rng, B, [0.0, -0.0, inf, -inf, nan, 1e300, 5e-324])
    pq = _special(rng, B, [0.0, -0.0, inf, -inf, nan, -1.0, 1e-300, 5e-324])
    rr = np.abs(_special(rng, B, [0.0, inf, nan, 1e308, 1e-6, 1e-300]))
    rr[rng.random(B) < 0.05] = nan
    bnorm = np.where(rng.random(B) < 0.2, 1.0, rng.uniform(0.5, 2.0, B) * 10.0 ** rng.integers(-3, 4, B))
    rz_new = _special(rng, B, [0.0, inf, nan, 1e-300])
    active = rng.random(B) < 0.8  # some images already stopped
    breakdown = ~active & (rng.random(B) < 0.5)
    iters = rng.integers(0, 50, B).astype(np.int64)
    keep = active & (rng.random(B) < 0.9)
    return rz, pq, rr, bnorm, active, breakdown, iters, rz_new, keep


def run_cg_scalars(rz, pq, rr, bnorm, rtol, active, breakdown, iters, rz_new, keep, grid, reverse=False,
                   threads=None):
    """The three kernels as CGKernels launches them (the step's and the beta's grid given)."""
    B = rz.size
    out = {"active": active.copy(), "breakdown": breakdown.copy(), "iters": iters.copy(),
           "broken": rng_garbage_bool(B), "a": np.full(B, np.nan), "res": np.full(B, np.nan),
           "done": rng_garbage_bool(B), "flags": np.array([True, False, True]), "beta": np.full(B, np.nan)}
    launch("cg_step", np.float64, grid, (rz, pq, out["active"], out["breakdown"], out["broken"], out["a"],
                                        I64(B)), reverse=reverse)
    # (one kernel for both precisions: here that of the float32 module)
    launch("cg_check", np.float32, (1,), (rr, bnorm, np.float64(rtol), out["active"], out["breakdown"],
                                         out["broken"], out["iters"], out["res"], out["done"], out["flags"],
                                         I64(B)), reverse=reverse, threads=threads)
    launch("cg_beta", np.float64, grid, (rz_new, rz, keep, out["beta"], I64(B)), reverse=reverse)
    return out


def rng_garbage_bool(B):
    """What the kernels overwrite starts as alternating True / False (not what they will write)."""
    return np.arange(B) % 2 == 0


@pytest.mark.parametrize("B", [1, 5, 256, 600])
def test_cg_scalar_kernels_match_the_array_expressions(rng, B):
    # B = 600: more images than one block has threads (the check kernel's stride loop and its
    # block reduction of the flags); NaN / inf / zero / negative pq, rr, rz; stopped images.
    rtol = 1e-3
    case = _scalar_case(rng, B)
    rz, pq, rr, bnorm, active, breakdown, iters, rz_new, keep = case
    # some residuals right at the tolerance
    near = rng.random(B) < 0.2
    rr[near] = (rtol * bnorm[near] * rng.uniform(0.9, 1.1, near.sum())) ** 2
    want = _scalars_ref(rz, pq, rr, bnorm, rtol, active, breakdown, iters, rz_new, keep)
    for grid in grids_1d(B):
        for reverse in (False, True):
            got = run_cg_scalars(*case[:4], rtol, *case[4:], grid=grid, reverse=reverse)
            for k in want:
                _same_bits(got[k], want[k], f"{k} B={B} grid={grid} reverse={reverse}")


@pytest.mark.parametrize("threads", [None, "pool"])
@pytest.mark.parametrize("B,where", [(600, 599), (600, 0), (300, 257), (3, 1)])
def test_cg_check_flags_of_one_image(rng, B, where, threads):
    # One image anywhere (beyond the first block-stride sweep too) sets each flag alone; none
    # when it does not. Threads on the pool: the block reduction's barriers are real.
    ones, rtol = np.ones(B), 1e-3
    inactive, zeros = np.zeros(B, bool), np.zeros(B, np.int64)

    def flags(rr, active, pq=ones):
        return run_cg_scalars(ones, pq, rr, ones, rtol, active, inactive, zeros, ones, active, grid=(1,),
                              threads=threads)["flags"].tolist()

    assert flags(ones, inactive) == [False, False, False]
    one = np.zeros(B, bool)
    one[where] = True
    assert flags(ones, one) == [False, False, True]  # active, not done
    rr = ones.copy()
    rr[where] = 1e-8
    assert flags(rr, one) == [False, True, True]  # done
    rr[where] = np.inf
    assert flags(rr, one) == [True, False, False]  # broken after the update
    pq = ones.copy()
    pq[where] = 0.0
    assert flags(ones, one, pq) == [True, False, False]  # broken at the step (non-positive curvature)
    assert flags(rr, inactive) == [False, False, False]  # a stopped image's inf residual is no breakdown


# ---------------------------------------------------------- strict launches
def test_launches_are_checked_strictly(rng):
    x = np.zeros((2, 8))
    out = np.zeros((2, 8))
    geom = _i64((8, 1, 1, 0, 0, 0, 8, 1, 1, 8, 1, 1))
    with pytest.raises(executor.LaunchError, match="numpy.int64|int64"):
        launch("pad", np.float64, (1,), (x, out, 16) + geom, boundary="zero", ndim=1)  # a Python int
    with pytest.raises(executor.LaunchError, match="dtype float64"):
        launch("pad", np.float64, (1,), (x.astype(np.float32), out, I64(16)) + geom, boundary="zero", ndim=1)
    with pytest.raises(executor.LaunchError, match="C-contiguous"):
        launch("pad", np.float64, (1,), (np.zeros((2, 16))[:, ::2], out, I64(16)) + geom, boundary="zero",
               ndim=1)
    with pytest.raises(executor.LaunchError, match="takes 15 arguments"):
        launch("pad", np.float64, (1,), (x, out), boundary="zero", ndim=1)
    with pytest.raises(executor.LaunchError, match="grid dimension y"):
        launch("dot_partial", np.float64, (1, 65536), (x, x, np.zeros(2), I64(8), I64(2), I64(1)))
    with pytest.raises(executor.LaunchError, match="more than 1024 threads"):
        launch("mask", np.float64, (1,), (x, I64(16)) + geom[:6], ndim=1, block=(64, 32))


BAD_SOURCE = r"""
extern "C" __global__ void divergent(double* out, long long n) {
    __shared__ double sh[256];
    sh[threadIdx.x] = 1.0;
    if (threadIdx.x < 128) __syncthreads();   // not every thread of the block reaches it
    out[threadIdx.x] = sh[threadIdx.x];
}
extern "C" __global__ void sync_without_shared(double* out, long long n) {
    __syncthreads();
    out[threadIdx.x] = 1.0;
}
"""


@pytest.mark.parametrize("threads", ["fibers", "pool"])
def test_barrier_misuse_is_reported(threads):
    mod = executor.Module(BAD_SOURCE)
    out = np.zeros(256)
    with pytest.raises(executor.LaunchError, match="barrier divergence"):
        mod.launch("divergent", (2,), (256,), (out, I64(256)), threads=threads)
    with pytest.raises(executor.LaunchError, match="run serially"):
        mod.launch("sync_without_shared", (1,), (256,), (out, I64(256)))


# ---------------------------------------------------------------- sanitizers
_SAN_OK: dict = {}


def sanitizer_or_skip(name, tmp_path):
    if name not in _SAN_OK:
        src = tmp_path / "probe.cpp"
        src.write_text("#include <thread>\nint main(){std::thread t([]{}); t.join(); return 0;}\n")
        exe = tmp_path / "probe"
        cmd = [executor.compiler(), f"-fsanitize={name}", "-pthread", str(src), "-o", str(exe)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        ok = res.returncode == 0 and subprocess.run([str(exe)], capture_output=True).returncode == 0
        _SAN_OK[name] = "" if ok else (res.stderr.strip().splitlines() or ["the program does not run"])[-1]
    if _SAN_OK[name]:
        pytest.skip(f"-fsanitize={name} is not usable with this compiler: {_SAN_OK[name]}")


def _reduction_launches(dtype, B, N, nblk, gy):
    """Buffers and launches of dot, update_xr and sum_partials (the CG reductions) for the driver."""
    rng = np.random.default_rng(7)
    bufs = [rng.standard_normal((B, N)).astype(dtype) for _ in range(4)]  # x, r, p, q
    bufs += [rng.standard_normal(B), np.zeros(B * nblk), np.zeros(B), np.zeros(B)]  # a, partial, dot, rr
    grid = (nblk, gy)
    b = [("buf", i) for i in range(len(bufs))]
    sfx = _kernels.dtype_suffix(dtype)
    launches = [
        (f"gd_dot_partial_{sfx}", grid, BLOCK, (b[2], b[3], b[5], I64(N), I64(B), I64(nblk))),
        ("gd_sum_partials", (min(B, gy),), BLOCK, (b[5], b[6], I64(nblk), I64(B))),
        (f"gd_cg_update_xr_{sfx}", grid, BLOCK, (b[0], b[1], b[2], b[3], b[4], b[5], I64(N), I64(B),
                                                 I64(nblk)), True),
        ("gd_sum_partials", (1,), BLOCK, (b[5], b[7], I64(nblk), I64(B)), True),
    ]
    return bufs, launches


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_under_thread_sanitizer(tmp_path, dtype):
    sanitizer_or_skip("thread", tmp_path)
    B, N, nblk, gy = 3, 700, 2, 2
    bufs, launches = _reduction_launches(dtype, B, N, nblk, gy)
    out, _ = module("cg", dtype).run_sanitized("thread", bufs, launches)
    x, r, p, q, a = bufs[:5]
    assert_close(out[6], (p.astype(np.float64) * q).sum(axis=1), np.float64,
                 factor=1e6 if dtype == np.float32 else 10)
    r_new = r - a.astype(dtype)[:, None] * q
    assert_close(out[7], (r_new.astype(np.float64) ** 2).sum(axis=1), np.float64,
                 factor=1e6 if dtype == np.float32 else 10)
    # the spectral extrema reduction (min and max through one shared array)
    rng = np.random.default_rng(3)
    F, nf = (23, 13), 23 * 13
    H = _crandn(rng, (B,) + F, dtype)
    lam, alpha = rng.uniform(0.1, 1, B).astype(dtype), rng.uniform(0.1, 1, B).astype(dtype)
    sbufs = [H, np.zeros(1, dtype=dtype), lam, alpha, np.zeros((B, 2), dtype=dtype),
             np.zeros((B, 2), dtype=dtype)]
    sb = [("buf", i) for i in range(len(sbufs))]
    sout, _ = module("spectral", dtype).run_sanitized("thread", sbufs, [
        (f"gd_spectral_extrema_{_kernels.dtype_suffix(dtype)}", (2, 2), BLOCK,
         (sb[0], sb[1], sb[2], sb[3], sb[4], sb[5], I64(nf), I64(B), I64(2), I64(nf), I64(0), I32(0)))])
    den = np.abs(H.astype(np.complex128)) ** 2 + alpha[:, None, None]  # has_r = 0: no lam R
    assert_close(sout[4].min(axis=1), den.min(axis=(1, 2)), dtype)
    assert_close(sout[5].max(axis=1), den.max(axis=(1, 2)), dtype)


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_cg_scalar_kernels_under_sanitizers(tmp_path, rng, sanitizer):
    # The flags' block reduction on real threads (ThreadSanitizer), every per-image array a
    # heap block of exactly its size (AddressSanitizer); more images than the block's threads.
    sanitizer_or_skip(sanitizer, tmp_path)
    B, rtol = 600, 1e-3
    case = _scalar_case(rng, B)
    rz, pq, rr, bnorm, active, breakdown, iters, rz_new, keep = case
    want = _scalars_ref(rz, pq, rr, bnorm, rtol, active, breakdown, iters, rz_new, keep)
    bufs = [rz, pq, rr, bnorm, active.copy(), breakdown.copy(), np.zeros(B, bool), iters.copy(), np.zeros(B),
            np.zeros(B), np.zeros(B, bool), np.zeros(3, bool), rz_new, keep, np.zeros(B)]
    b = [("buf", i) for i in range(len(bufs))]
    out, _ = module("cg", np.float64).run_sanitized(sanitizer, bufs, [
        ("gd_cg_step", (2,), BLOCK, (b[0], b[1], b[4], b[5], b[6], b[8], I64(B))),
        ("gd_cg_check", (1,), BLOCK, (b[2], b[3], np.float64(rtol), b[4], b[5], b[6], b[7], b[9], b[10],
                                      b[11], I64(B)), True),
        ("gd_cg_beta", (2,), BLOCK, (b[12], b[0], b[13], b[14], I64(B))),
    ])
    for k, i in (("active", 4), ("breakdown", 5), ("broken", 6), ("iters", 7), ("a", 8), ("res", 9),
                 ("done", 10), ("flags", 11), ("beta", 14)):
        _same_bits(out[i], want[k], k)


def _without_barrier(which):
    """A copy of kernels/ whose gd_block_reduce lacks its `which`-th __syncthreads().

    Kept at a fixed place of the simulator's cache, so that its sanitized build is reused.
    """
    src = executor.cache_dir() / f"test-kernels-without-barrier-{which}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(_kernels.source_dir(), src)
    path = src / "gd_reduce.cuh"
    text = path.read_text()
    hits = [m.start() for m in re.finditer(r"__syncthreads\(\);", text)]
    assert len(hits) == 3, "gd_block_reduce changed: update this test"
    cut = hits[which]
    path.write_text(text[:cut] + "/* barrier deleted */" + text[cut + len("__syncthreads();"):])
    return src


@pytest.mark.parametrize("which", [0, 1, 2])
def test_thread_sanitizer_catches_a_deleted_barrier(tmp_path, which):
    sanitizer_or_skip("thread", tmp_path)
    src = _without_barrier(which)
    code = (src / "cg.cu").read_text()
    mod = executor.Module(code, (f"-I{src}", "-DGD_ONLY_F64"))
    bufs, launches = _reduction_launches(np.float64, 3, 700, 2, 2)
    with pytest.raises(executor.LaunchError, match="ThreadSanitizer: data race"):
        mod.run_sanitized("thread", bufs, launches)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_pad_fold_under_address_sanitizer(tmp_path, rng, boundary):
    # Every buffer is a heap block of exactly its size: a read or write outside it is reported.
    sanitizer_or_skip("address", tmp_path)
    launches, bufs = [], []
    for nd, case in ((1, ((1, 4),)), (2, ((2, 9), (5, 3))), (3, ((1, 1), (6, 4), (3, 6)))):
        plans = tuple(plan_axis(n, k, "full", boundary, "scipy", BK.next_fast_len) for n, k in case)
        n, G = tuple(p.n for p in plans), tuple(p.G for p in plans)
        geom = _i64(_cuda.pad_geometry(plans))
        i = len(bufs)
        bufs += [rng.standard_normal((2,) + n), np.zeros((2,) + G), np.zeros((2,) + n)]
        for kind, src, dst, total in (("pad", i, i + 1, 2 * math.prod(G)),
                                      ("fold", i + 1, i + 2, 2 * math.prod(n))):
            launches.append((_cuda.kernel_name(kind, np.float64, boundary=boundary, ndim=nd), (2,), BLOCK,
                             (("buf", src), ("buf", dst), I64(total)) + geom))
    out, _ = module("pad_extract", np.float64).run_sanitized("address", bufs, launches)
    for j in range(0, len(bufs), 3):
        x = bufs[j]
        nd = x.ndim - 1
        case = [((1, 4),), ((2, 9), (5, 3)), ((1, 1), (6, 4), (3, 6))][j // 3]
        plans = tuple(plan_axis(n, k, "full", boundary, "scipy", BK.next_fast_len) for n, k in case)
        ext = tuple(p.n_ext for p in plans)
        assert nd == len(plans)
        np.testing.assert_array_equal(out[j + 1][(Ellipsis,) + tuple(slice(0, e) for e in ext)],
                                      ARRAY_OPS.pad(x, plans, boundary))
        assert_close(out[j + 2], ARRAY_OPS.fold(np.ascontiguousarray(
            out[j + 1][(Ellipsis,) + tuple(slice(0, e) for e in ext)]), plans, boundary), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_window_kernels_under_address_sanitizer(tmp_path, rng, dtype):
    # Exact-size buffers, the weight of the spatial shape included (read by the spatial index
    # of each element, never past it for the images beyond the first).
    sanitizer_or_skip("address", tmp_path)
    cases = (((5,), (8,)), ((3, 4), (4, 7)), ((2, 3, 1), (3, 5, 2)))
    bufs, launches = [], []
    for m, G in cases:
        nd = len(m)
        geom = _i64(_cuda.window_geometry(m, G))
        i = len(bufs)
        bufs += [rng.standard_normal((3,) + m).astype(dtype), rng.uniform(0.5, 2, m).astype(dtype),
                 np.zeros((3,) + G, dtype=dtype), np.zeros((3,) + m, dtype=dtype),
                 np.zeros((3,) + m, dtype=dtype)]
        b = [("buf", i + j) for j in range(5)]
        launches += [
            (_cuda.kernel_name("embed_scaled", dtype, ndim=nd), (2,), BLOCK,
             (b[0], b[1], b[2], I64(3 * math.prod(G))) + geom),
            (_cuda.kernel_name("crop_scaled", dtype, ndim=nd), (1,), BLOCK,
             (b[2], b[1], b[3], I64(3 * math.prod(m))) + geom, True),
            (_cuda.kernel_name("crop", dtype, ndim=nd), (2,), BLOCK,
             (b[2], b[4], I64(3 * math.prod(m))) + geom),
            (_cuda.kernel_name("mask", dtype, ndim=nd), (1,), BLOCK, (b[2], I64(3 * math.prod(G))) + geom),
        ]
    out, _ = module("pad_extract", dtype).run_sanitized("address", bufs, launches)
    for k, (m, G) in enumerate(cases):
        x, s, grid_out, scaled, plain = out[5 * k:5 * k + 5]
        want = np.zeros((3,) + G, dtype=dtype)
        want[(Ellipsis,) + tuple(slice(0, a) for a in m)] = x * s
        np.testing.assert_array_equal(grid_out, want)  # mask keeps the window, which is all there is
        np.testing.assert_array_equal(plain, x * s)
        np.testing.assert_array_equal(scaled, (x * s) * s)


def test_address_sanitizer_catches_an_out_of_bounds_write(tmp_path):
    sanitizer_or_skip("address", tmp_path)
    x, out = np.zeros((2, 8)), np.zeros((2, 7))  # one sample short per image
    geom = _i64((8, 1, 1, 0, 0, 0, 8, 1, 1, 8, 1, 1))
    with pytest.raises(executor.LaunchError, match="AddressSanitizer: heap-buffer-overflow"):
        module("pad_extract", np.float64).run_sanitized(
            "address", [x, out],
            [("gd_pad_zero_1d_f64", (1,), BLOCK, (("buf", 0), ("buf", 1), I64(16)) + geom)])


def test_spectral_multichannel_cg_under_address_sanitizer(tmp_path, rng):
    # Exact-size buffers, the one-element stand-ins of absent operands included: a kernel that read
    # an operand its flag says is absent, or past a shared (stride 0) operand, would be reported.
    sanitizer_or_skip("address", tmp_path)
    B, F, nf = 3, (7, 4), 28
    H, Y = _crandn(rng, F, np.float64), _crandn(rng, (B,) + F, np.float64)
    lam, alpha = rng.uniform(0.1, 1, B), rng.uniform(0.1, 1, B)
    bufs = [Y, H, np.zeros(1), lam, alpha, np.zeros(1, dtype=np.complex128), np.zeros((B, 1)),
            np.zeros((B, 1)), rng.uniform(0.5, 2, F), rng.uniform(0.1, 0.3, B)]
    b = [("buf", i) for i in range(len(bufs))]
    out, _ = module("spectral", np.float64).run_sanitized("address", bufs, [
        ("gd_spectral_extrema_f64", (1, 2), BLOCK,
         (b[1], b[2], b[3], b[4], b[6], b[7], I64(nf), I64(B), I64(1), I64(0), I64(0), I32(0))),
        ("gd_spectral_solve_f64", (1,), BLOCK,
         (b[0], b[1], b[2], b[3], b[4], b[5], I64(B * nf), I64(nf), I64(0), I64(0), I32(0), I32(0))),
        ("gd_precond_div_f64", (1,), BLOCK, (b[0], b[8], b[9], I64(B * nf), I64(nf), I64(0))),
        ("gd_precond_mul_f64", (1,), BLOCK, (b[0], b[8], I64(B * nf), I64(nf), I64(0)), True),
    ])
    den = np.abs(H) ** 2 + alpha[:, None, None]
    assert_close(out[6].ravel(), den.min(axis=(1, 2)), np.float64)
    want = np.conj(H) * Y / den
    want = want / np.maximum(bufs[8], bufs[9][:, None, None]) * bufs[8]
    assert_close(out[0].view(np.float64), want.view(np.float64), np.float64, factor=10)
    C = 2
    D, Z = _crandn(rng, (C,) + F, np.float64), _crandn(rng, (B, C) + F, np.float64)
    mbufs = [D, Y, Z, alpha, np.zeros_like(Z)]
    m = [("buf", i) for i in range(5)]
    out, _ = module("multichannel", np.float64).run_sanitized("address", mbufs, [
        ("gd_sherman_morrison_f64", (2,), BLOCK,
         (m[0], m[1], m[2], m[3], m[4], I64(B * nf), I64(C), I64(nf)))])
    want = ARRAY_OPS.sherman_morrison(D, Y, Z, alpha.reshape(B, 1, 1))
    assert_close(out[4].view(np.float64), want.view(np.float64), np.float64, factor=10)
    cbufs, launches = _reduction_launches(np.float64, 3, 300, 2, 2)
    out, _ = module("cg", np.float64).run_sanitized("address", cbufs, launches)
    assert_close(out[6], (cbufs[2] * cbufs[3]).sum(axis=1), np.float64, factor=10)
