"""The element logic of kernels/*.cuh on the CPU, against the NumPy path of the package.

tests/harness/harness.cpp is compiled with the host C++ compiler alone (once
per session, into a temporary folder) and loaded with ctypes. Each of its
functions loops over the indexes a kernel launch covers and calls exactly the
``__host__ __device__`` functions that the ``__global__`` wrappers of
kernels/*.cu call; reductions replay the per-thread sweep and the
shared-memory tree level by level, with the launch layout that
gpu_deconv._cuda computes. The geometry arguments are built by the same
Python helpers (``_cuda.pad_geometry`` ...) that build the kernels' arguments.
"""

import ctypes
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpu_deconv import _cuda
from gpu_deconv._backend import numpy_backend
from gpu_deconv._ops import ArrayOps
from gpu_deconv._padding import plan_axis, source_index
from gpu_deconv.solvers import closed_form as cf
from gpu_deconv.solvers.cg import batched_cg, batched_cg_fused

from conftest import RTOL, assert_close

#: The array-expression path (NumPy): the reference the kernels are compared with.
ARRAY_OPS = ArrayOps(numpy_backend())

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
HARNESS = ROOT / "tests" / "harness" / "harness.cpp"
BK = numpy_backend()
BOUNDARIES = ("zero", "periodic", "symmetric", "reflect", "replicate")
DTYPES = (np.float32, np.float64)

LL, I32, VP, DP = ctypes.c_longlong, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_double)
_ARGTYPES = {
    "gdh_source_index": (I32, LL, VP, VP, LL),
    "gdh_pad": (I32, I32, I32, VP, VP, LL, VP),
    "gdh_fold": (I32, I32, I32, VP, VP, LL, VP),
    "gdh_crop": (I32, I32, VP, VP, LL, VP),
    "gdh_mask": (I32, I32, VP, LL, VP),
    "gdh_window_scaled": (I32, I32, I32, VP, VP, VP, LL, VP),
    "gdh_spectral_solve": (I32, VP, VP, VP, VP, VP, VP, LL, LL, LL, LL, I32, I32),
    "gdh_spectral_extrema": (I32, VP, VP, VP, VP, VP, VP, LL, LL, LL, LL, LL, I32, I32),
    "gdh_precond_mul": (I32, VP, VP, LL, LL, LL),
    "gdh_precond_div": (I32, VP, VP, VP, LL, LL, LL),
    "gdh_sherman_morrison": (I32, VP, VP, VP, VP, VP, LL, LL, LL),
    "gdh_dot_partial": (I32, VP, VP, VP, LL, LL, LL, I32),
    "gdh_sum_partials": (VP, VP, LL, LL, I32),
    "gdh_cg_update_xr": (I32, VP, VP, VP, VP, VP, VP, LL, LL, LL, I32),
    "gdh_cg_update_p": (I32, VP, VP, VP, LL, LL),
}


def _cxx():
    for c in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


@pytest.fixture(scope="session")
def lib(tmp_path_factory):
    cxx = _cxx()
    if cxx is None:
        pytest.skip("no host C++ compiler (g++, clang++, c++ or $CXX) on PATH: the CUDA element logic "
                    "of kernels/*.cuh is not checked on the CPU")
    out = tmp_path_factory.mktemp("harness") / "libgdharness.so"
    cmd = [cxx, "-std=c++14", "-O1", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
           f"-I{KERNELS}", str(HARNESS), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
    so = ctypes.CDLL(str(out))
    for name, types in _ARGTYPES.items():
        fn = getattr(so, name)
        fn.argtypes = types
        fn.restype = I32 if name in ("gdh_pad", "gdh_fold", "gdh_crop", "gdh_mask",
                                     "gdh_window_scaled") else None
    return so


def _p(a):
    """Pointer to a C-contiguous array's data (None for None)."""
    if a is None:
        return None
    assert a.flags.c_contiguous
    return a.ctypes.data


def _geom(values):
    return np.ascontiguousarray(values, dtype=np.int64)


def _is64(dtype):
    return int(np.dtype(dtype) == np.float64)


def _cdt(dtype):
    return np.complex128 if np.dtype(dtype) == np.float64 else np.complex64


def _crandn(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(_cdt(dtype))


# --------------------------------------------------------------- pad / fold
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_source_index_matches_padding(lib, boundary):
    m = np.arange(-40, 50, dtype=np.int64)
    for n in (1, 2, 3, 4, 7):
        out = np.empty_like(m)
        lib.gdh_source_index(_cuda.BOUNDARY_CODES[boundary], n, _p(m), _p(out), m.size)
        np.testing.assert_array_equal(out, source_index(boundary, n, m))


# (n, k) per axis: n == 1, kernels longer than the image (L or R > n), odd and even sizes.
AXES = [(1, 1), (1, 4), (2, 9), (5, 3), (6, 4), (7, 7), (3, 6)]


def _cases(nd):
    if nd == 1:
        return [(a,) for a in AXES]
    if nd == 2:
        return [(AXES[i], AXES[(3 * i + 2) % len(AXES)]) for i in range(len(AXES))]
    return [(AXES[i], AXES[(2 * i + 1) % len(AXES)], AXES[(5 * i + 3) % len(AXES)]) for i in range(4)]


def _plans(case, mode, boundary, convention):
    return tuple(plan_axis(n, k, mode, boundary, convention, BK.next_fast_len) for n, k in case)


MODES = [("full", b) for b in BOUNDARIES] + [("same", b) for b in BOUNDARIES] \
    + [("valid", b) for b in BOUNDARIES] + [("circular", "periodic")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode,boundary", MODES)
def test_pad_and_fold_match_numpy(lib, rng, mode, boundary, nd, convention, dtype):
    batch = (2, 3) if nd < 3 else (2,)
    bc = _cuda.BOUNDARY_CODES[boundary]
    for case in _cases(nd):
        plans = _plans(case, mode, boundary, convention)
        n = tuple(p.n for p in plans)
        G = tuple(p.G for p in plans)
        ext = tuple(p.n_ext for p in plans)
        geom = _geom(_cuda.pad_geometry(plans))
        x = rng.standard_normal(batch + n).astype(dtype)
        # P x written into the grid, zero beyond the extension.
        got = np.full(batch + G, np.nan, dtype=dtype)
        assert lib.gdh_pad(_is64(dtype), bc, nd, _p(x), _p(got), got.size, _p(geom)) == 0
        want = np.zeros(batch + G, dtype=dtype)
        want[(Ellipsis,) + tuple(slice(0, e) for e in ext)] = ARRAY_OPS.pad(x, plans, boundary)
        np.testing.assert_array_equal(got, want, err_msg=f"pad {case}")
        # P^T read from the grid; the grid beyond the extension must be ignored.
        v = rng.standard_normal(batch + G).astype(dtype)
        got = np.full(batch + n, np.nan, dtype=dtype)
        assert lib.gdh_fold(_is64(dtype), bc, nd, _p(v), _p(got), got.size, _p(geom)) == 0
        vw = np.ascontiguousarray(v[(Ellipsis,) + tuple(slice(0, e) for e in ext)])
        want = ARRAY_OPS.fold(vw, plans, boundary)
        assert_close(got, want, dtype, factor=10)
        # And they are adjoint: <P x, v> = <x, P^T v>.
        lhs = float((want.astype(np.float64) * x).sum())
        pv = np.zeros(batch + G)
        win = (Ellipsis,) + tuple(slice(0, e) for e in ext)
        pv[win] = ARRAY_OPS.pad(x.astype(np.float64), plans, boundary)
        assert math.isclose(lhs, float((pv * v).sum()), rel_tol=1e-3 if dtype == np.float32 else 1e-10,
                            abs_tol=1e-3 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_pad_and_fold_with_exact_grids(lib, rng, boundary):
    # A grid exactly the extended length (what _padding.pad / fold dispatch with).
    bc = _cuda.BOUNDARY_CODES[boundary]
    for case in _cases(2):
        plans = _plans(case, "full", boundary, "scipy")
        ext = tuple(p.n_ext for p in plans)
        geom = _geom(_cuda.pad_geometry(plans, ext))
        x = rng.standard_normal((3,) + tuple(p.n for p in plans))
        got = np.empty((3,) + ext)
        lib.gdh_pad(1, bc, 2, _p(x), _p(got), got.size, _p(geom))
        np.testing.assert_array_equal(got, ARRAY_OPS.pad(x, plans, boundary) if boundary != "zero" else x)
        v = rng.standard_normal((3,) + ext)
        got = np.empty_like(x)
        lib.gdh_fold(1, bc, 2, _p(v), _p(got), got.size, _p(geom))
        assert_close(got, ARRAY_OPS.fold(v, plans, boundary), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_crop_and_mask(lib, rng, nd, dtype):
    G = (7, 6, 5)[:nd]
    for m in [(1, 1, 1)[:nd], (7, 3, 5)[:nd], (4, 6, 2)[:nd], (0, 6, 5)[:nd]]:
        v = rng.standard_normal((2,) + G).astype(dtype)
        geom = _geom(_cuda.window_geometry(m, G))
        got = np.empty((2,) + m, dtype=dtype)
        assert lib.gdh_crop(_is64(dtype), nd, _p(v), _p(got), got.size, _p(geom)) == 0
        win = (Ellipsis,) + tuple(slice(0, a) for a in m)
        np.testing.assert_array_equal(got, v[win])
        want = np.zeros_like(v)
        want[win] = v[win]
        assert lib.gdh_mask(_is64(dtype), nd, _p(v), v.size, _p(geom)) == 0
        np.testing.assert_array_equal(v, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_weighted_embed_and_crop(lib, rng, nd, dtype):
    # The taper of the preconditioner's circulant part, one weight (m...) for every image.
    G = (7, 6, 5)[:nd]
    for m in [(1, 1, 1)[:nd], (7, 3, 5)[:nd], (4, 6, 2)[:nd], (0, 6, 5)[:nd]]:
        geom = _geom(_cuda.window_geometry(m, G))
        win = (Ellipsis,) + tuple(slice(0, a) for a in m)
        s = rng.uniform(-2.0, 2.0, m).astype(dtype)
        x = rng.standard_normal((3,) + m).astype(dtype)
        got = np.full((3,) + G, np.nan, dtype=dtype)
        assert lib.gdh_window_scaled(_is64(dtype), nd, 0, _p(x), _p(s), _p(got), got.size, _p(geom)) == 0
        want = np.zeros((3,) + G, dtype=dtype)
        want[win] = x * s
        np.testing.assert_array_equal(got, want)
        v = rng.standard_normal((3,) + G).astype(dtype)
        got = np.full((3,) + m, np.nan, dtype=dtype)
        assert lib.gdh_window_scaled(_is64(dtype), nd, 1, _p(v), _p(s), _p(got), got.size, _p(geom)) == 0
        np.testing.assert_array_equal(got, v[win] * s)


# ------------------------------------------------------------------ spectra
def _spectral_problem(rng, dtype, B, F, h_batched, with_r, with_z):
    H = _crandn(rng, ((B,) if h_batched else ()) + F, dtype)
    R = rng.uniform(0.5, 2.0, F).astype(dtype) if with_r else None
    lam = rng.uniform(0.1, 1.0, B).astype(dtype)
    alpha = (rng.uniform(0.1, 1.0, B) if with_z else np.zeros(B)).astype(dtype)
    Y = _crandn(rng, (B,) + F, dtype)
    Z = _crandn(rng, (B,) + F, dtype) if with_z else None
    return H, R, lam, alpha, Y, Z


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h_batched", [False, True])
@pytest.mark.parametrize("with_r", [False, True])
@pytest.mark.parametrize("with_z", [False, True])
def test_spectral_solve_matches_filters(lib, rng, dtype, h_batched, with_r, with_z):
    B, F = 3, (6, 4)
    H, R, lam, alpha, Y, Z = _spectral_problem(rng, dtype, B, F, h_batched, with_r, with_z)
    # The NumPy path: the cached filters W = conj(H)/D, V = alpha/D.
    W, V = cf.spectral_filter(BK, H, R, lam, alpha, 2, np.dtype(dtype))
    want = W * Y + (V * Z if V is not None else 0)
    nf = math.prod(F)
    got = Y.copy()
    lib.gdh_spectral_solve(_is64(dtype), _p(got), _p(H), _p(R), _p(lam), _p(alpha), _p(Z), got.size, nf,
                           nf if h_batched else 0, 0, int(with_r), int(with_z))
    assert_close(got.real, want.real, dtype, factor=10)
    assert_close(got.imag, want.imag, dtype, factor=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h_batched", [False, True])
def test_spectral_extrema_and_singularity_message(lib, rng, dtype, h_batched):
    B, F = 4, (37, 19)  # enough frequencies for several blocks per image
    H, R, lam, alpha, _, _ = _spectral_problem(rng, dtype, B, F, h_batched, True, True)
    nf = math.prod(F)
    nblk, grid = _cuda.reduction_layout(nf, B)
    assert nblk > 1 and grid == (nblk, B)

    def extrema(H, R, lam, alpha):
        pmin = np.empty((B, nblk), dtype=dtype)
        pmax = np.empty((B, nblk), dtype=dtype)
        lib.gdh_spectral_extrema(_is64(dtype), _p(H), _p(R), _p(lam), _p(alpha), _p(pmin), _p(pmax), nf, B,
                                 nblk, nf if H.size > nf else 0, 0, int(R is not None), _cuda.BLOCK)
        return pmin.min(axis=1), pmax.max(axis=1)

    den = (H.real * H.real + H.imag * H.imag) + lam[:, None, None] * R + alpha[:, None, None]
    dmin, dmax = extrema(H, R, lam, alpha)
    np.testing.assert_array_equal(dmin, den.min(axis=(1, 2)))
    np.testing.assert_array_equal(dmax, den.max(axis=(1, 2)))
    # A vanishing transfer function without lam or alpha: the GPU check raises
    # the NumPy path's SingularSystemError, message and all.
    H = H.copy()
    H[..., 3, 2] = 0
    zero = np.zeros(B, dtype=dtype)
    dmin, dmax = extrema(H, None, zero, zero)
    with pytest.raises(cf.SingularSystemError) as numpy_err:
        cf.spectral_filter(BK, H, None, zero, zero, 2, np.dtype(dtype))
    with pytest.raises(cf.SingularSystemError) as gpu_err:
        cf.check_extrema(dmin, dmax, np.finfo(dtype).eps, zero, zero)
    assert str(gpu_err.value) == str(numpy_err.value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [False, True])
def test_precondition_products(lib, rng, dtype, shared):
    B, F = 3, (5, 4)
    nf = math.prod(F)
    D = rng.uniform(-0.5, 2.0, ((1,) if shared else (B,)) + F).astype(dtype)
    floor = rng.uniform(0.1, 0.3, B).astype(dtype)
    Y = _crandn(rng, (B,) + F, dtype)
    stride = 0 if shared else nf
    Dmax = np.maximum(D, floor[:, None, None])
    got = Y.copy()
    lib.gdh_precond_div(_is64(dtype), _p(got), _p(D), _p(floor), got.size, nf, stride)
    assert_close(got.real, (Y / Dmax).real, dtype)
    assert_close(got.imag, (Y / Dmax).imag, dtype)
    Dinv = np.ascontiguousarray((1 / Dmax)[:1] if shared else 1 / Dmax)
    want = Y.copy()
    want *= Dinv  # what precond.circulant_part does
    got = Y.copy()
    lib.gdh_precond_mul(_is64(dtype), _p(got), _p(Dinv), got.size, nf, stride)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------ multichannel
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 3])
def test_sherman_morrison_matches_numpy(lib, rng, dtype, C):
    B, F = 2, (5, 3)
    nf = math.prod(F)
    D = _crandn(rng, (C,) + F, dtype)
    Y = _crandn(rng, (B,) + F, dtype)
    Z = _crandn(rng, (B, C) + F, dtype)
    alpha = rng.uniform(0.2, 1.5, B).astype(dtype)
    want = ARRAY_OPS.sherman_morrison(D, Y, Z, alpha.reshape(B, 1, 1))
    got = np.empty_like(Z)
    lib.gdh_sherman_morrison(_is64(dtype), _p(D), _p(Y), _p(Z), _p(alpha), _p(got), B * nf, C, nf)
    assert_close(got.real, want.real, dtype, factor=10)
    assert_close(got.imag, want.imag, dtype, factor=10)
    # In place on Z, as the kernel allows.
    lib.gdh_sherman_morrison(_is64(dtype), _p(D), _p(Y), _p(Z), _p(alpha), _p(Z), B * nf, C, nf)
    np.testing.assert_array_equal(Z, got)


def test_sherman_morrison_dense(lib, rng):
    B, C, F = 2, 4, (3, 2)
    nf = math.prod(F)
    D = _crandn(rng, (C,) + F, np.float64)
    Y = _crandn(rng, (B,) + F, np.float64)
    Z = _crandn(rng, (B, C) + F, np.float64)
    alpha = np.array([0.3, 1.7])
    got = np.empty_like(Z)
    lib.gdh_sherman_morrison(1, _p(D), _p(Y), _p(Z), _p(alpha), _p(got), B * nf, C, nf)
    for b in range(B):
        for f in np.ndindex(*F):
            d = D[(slice(None),) + f]
            M = np.outer(np.conj(d), d) + alpha[b] * np.eye(C)
            rhs = np.conj(d) * Y[(b,) + f] + alpha[b] * Z[(b, slice(None)) + f]
            np.testing.assert_allclose(got[(b, slice(None)) + f], np.linalg.solve(M, rhs), rtol=1e-12,
                                       atol=1e-12)


# ----------------------------------------------------------------------- CG
class HarnessCGOps:
    """The CGKernels interface on NumPy arrays, through the harness (the kernels' own code)."""

    def __init__(self, lib, batch, n, dtype):
        self.lib = lib
        self.batch = tuple(batch)
        self.B = math.prod(self.batch)
        self.N = math.prod(n)
        self.f64 = _is64(dtype)
        self.nblk, grid = _cuda.reduction_layout(self.N, self.B)
        self.partial = np.empty(self.B * self.nblk)
        self.calls = {"dot": 0, "update_xr": 0, "update_p": 0}

    def _out(self, out):
        return np.empty(self.batch) if out is None else out

    def _finish(self, out):
        self.lib.gdh_sum_partials(_p(self.partial), _p(out), self.nblk, self.B, _cuda.BLOCK)
        return out

    def dot(self, u, v, out=None):
        self.calls["dot"] += 1
        out = self._out(out)
        self.lib.gdh_dot_partial(self.f64, _p(u), _p(v), _p(self.partial), self.N, self.B, self.nblk,
                                 _cuda.BLOCK)
        return self._finish(out)

    def update_xr(self, x, r, p, q, a, out=None):
        self.calls["update_xr"] += 1
        out = self._out(out)
        a = np.ascontiguousarray(a, dtype=np.float64).reshape(-1)
        self.lib.gdh_cg_update_xr(self.f64, _p(x), _p(r), _p(p), _p(q), _p(a), _p(self.partial), self.N,
                                  self.B, self.nblk, _cuda.BLOCK)
        return self._finish(out)

    def update_p(self, p, z, beta):
        self.calls["update_p"] += 1
        beta = np.ascontiguousarray(beta, dtype=np.float64).reshape(-1)
        self.lib.gdh_cg_update_p(self.f64, _p(p), _p(z), _p(beta), p.size, self.N)
        return p


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 300, 5000])
def test_dot_and_updates(lib, rng, dtype, n):
    batch = (3, 2)
    ops = HarnessCGOps(lib, batch, (n,), dtype)
    u, v, p, q, z = (rng.standard_normal(batch + (n,)).astype(dtype) for _ in range(5))
    got = ops.dot(u, v)
    want = (u.astype(np.float64) * v).sum(axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * n)
    a = rng.standard_normal(batch)
    x, r = u.copy(), v.copy()
    rr = ops.update_xr(x, r, p, q, a)
    a_t = a.astype(dtype)[..., None]
    np.testing.assert_allclose(x, u + a_t * p, rtol=RTOL[np.dtype(dtype)] * 10, atol=1e-6)
    np.testing.assert_allclose(r, v - a_t * q, rtol=RTOL[np.dtype(dtype)] * 10, atol=1e-6)
    np.testing.assert_allclose(rr, (r.astype(np.float64) ** 2).sum(axis=-1), rtol=1e-12)
    beta = rng.standard_normal(batch)
    p0 = p.copy()
    ops.update_p(p, z, beta)
    np.testing.assert_allclose(p, z + beta.astype(dtype)[..., None] * p0, rtol=RTOL[np.dtype(dtype)] * 10,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_update_leaves_a_stopped_image_untouched(lib, rng, dtype):
    # A step of 0 must leave x and r exactly as they are even where p and q hold inf/NaN (an
    # image that broke down): batched_cg zeroes those vectors only after the iteration's one
    # host read. Multiplying instead (x += 0 * inf) would put NaN into x.
    batch, n = (3,), 257
    ops = HarnessCGOps(lib, batch, (n,), dtype)
    x0, r0, p, q = (rng.standard_normal(batch + (n,)).astype(dtype) for _ in range(4))
    p[1, ::3], q[1, 1::3] = np.inf, np.nan
    a = np.array([0.5, 0.0, -0.25])
    x, r = x0.copy(), r0.copy()
    rr = ops.update_xr(x, r, p, q, a)
    np.testing.assert_array_equal(x[1], x0[1])
    np.testing.assert_array_equal(r[1], r0[1])
    assert rr[1] == pytest.approx((r0[1].astype(np.float64) ** 2).sum(), rel=1e-12)
    a_t = a.astype(dtype)[[0, 2], None]
    np.testing.assert_allclose(x[[0, 2]], x0[[0, 2]] + a_t * p[[0, 2]], rtol=RTOL[np.dtype(dtype)] * 10,
                               atol=1e-6)


def test_reduction_layout_and_names():
    assert _cuda.reduction_layout(1, 1) == (1, (1, 1))
    assert _cuda.reduction_layout(10**7, 1) == (_cuda.launch.MAX_PARTIALS, (_cuda.launch.MAX_PARTIALS, 1))
    nblk, grid = _cuda.reduction_layout(10**6, 100000)
    assert nblk == 1 and grid == (1, _cuda.launch.MAX_GRID_Y)  # the kernels loop over the images beyond
    assert _cuda.grid_1d(0) == (1,) and _cuda.grid_1d(257) == (2,)
    assert _cuda.grid_1d(10**12) == (_cuda.launch.MAX_BLOCKS,)
    assert _cuda.kernel_name("fold", np.float32, boundary="reflect", ndim=2) == "gd_fold_reflect_2d_f32"
    assert _cuda.kernel_name("spectral_solve", np.float64) == "gd_spectral_solve_f64"
    with pytest.raises(ValueError, match="ndim=4"):
        _cuda.kernel_name("pad", np.float32, boundary="zero", ndim=4)
    with pytest.raises(TypeError, match="float16"):
        _cuda.kernel_name("crop", np.float16, ndim=1)
    with pytest.raises(ValueError, match="fit in grid"):
        _cuda.window_geometry((5,), (4,))


def _diag_problem(rng, dtype, batch, n):
    d = rng.uniform(0.5, 5.0, batch + (n,)).astype(dtype)
    b = rng.standard_normal(batch + (n,)).astype(dtype)
    return (lambda v: d * v), b, d


def _run_both(lib, A, b, nd, dtype, **kw):
    with np.errstate(all="ignore"):
        x1, d1 = batched_cg(BK, A, b, nd, **kw)
        ops = HarnessCGOps(lib, b.shape[:b.ndim - nd], b.shape[b.ndim - nd:], dtype)
        x2, d2 = batched_cg_fused(BK, A, b, nd, ops, **kw)
    return (x1, d1), (x2, d2), ops


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_cg_loop_matches_batched_cg(lib, rng, dtype):
    # Images of different difficulty (own iteration counts), one zero right-hand side.
    A, b, d = _diag_problem(rng, dtype, (4,), 40)
    d[1] = np.linspace(1, 1000, 40)
    b[2] = 0
    (x1, d1), (x2, d2), ops = _run_both(lib, A, b, 1, dtype, rtol=1e-5, maxiter=500, keep_history=True)
    for key in ("converged", "breakdown", "stagnated"):
        np.testing.assert_array_equal(d1[key], d2[key], err_msg=key)
    assert np.abs(d1["iterations"] - d2["iterations"]).max() <= 1
    assert d2["converged"].all() and d2["iterations"][2] == 0
    assert_close(x2, x1, dtype, factor=100)
    res = np.linalg.norm((b - d * x2).astype(np.float64), axis=-1)
    assert (res <= 1e-5 * np.linalg.norm(b.astype(np.float64), axis=-1) * 1.01).all()
    assert len(d2["history"]) >= 2 and d2["history"][0].shape == (4,)
    # one fused update of x and r per iteration, and no separate r . r pass
    assert ops.calls["update_xr"] == int(d2["iterations"].max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_cg_loop_preconditioned_deconvolution(lib, rng, dtype):
    # A real normal operator with the band preconditioner, per-image lam, a batch.
    from gpu_deconv.solvers import deconvolve as dv
    from gpu_deconv.solvers.precond import make_preconditioner

    h = rng.uniform(0.1, 1.0, (5, 4))
    y = rng.standard_normal((3, 20, 18)).astype(dtype)
    prob = dv.build_problem(y, h, lam=[1e-2, 3e-2, 1e-1], reg="laplacian", mode="valid",
                            boundary="zero", dtype=dtype)
    normal = prob.normal_operator()
    M = make_preconditioner(BK, prob, prob.dtype, "band")
    b = np.ascontiguousarray(prob.rhs())
    x0 = rng.standard_normal(b.shape).astype(dtype) * 0.1
    (x1, d1), (x2, d2), _ = _run_both(lib, normal, b, 2, dtype, M=M, x0=x0,
                                      rtol=1e-4 if dtype == np.float32 else 1e-7, maxiter=500)
    assert d1["converged"].all() and d2["converged"].all()
    # The kernels round the step sizes differently: over ~100 iterations the counts
    # drift by a few (measured over 12 seeds: up to 3, before and after the
    # preconditioner's taper changed), so the bound is relative.
    assert np.abs(d1["iterations"] - d2["iterations"]).max() <= max(2, 0.05 * d1["iterations"].max())
    assert_close(x2, x1, dtype, factor=1e3 if dtype == np.float32 else 1e4)


def test_fused_cg_loop_breakdown(lib, rng):
    # An indefinite operator: p . A p < 0 stops the image, as in batched_cg.
    dsign = np.ones((2, 10))
    dsign[1, ::2] = -3.0

    def A(v):
        return dsign * v

    b = np.ones((2, 10))
    (x1, d1), (x2, d2), _ = _run_both(lib, A, b, 1, np.float64, rtol=1e-10, maxiter=50)
    for key in ("converged", "breakdown", "stagnated", "iterations"):
        np.testing.assert_array_equal(d1[key], d2[key], err_msg=key)
    assert d2["breakdown"].tolist() == [False, True]
    np.testing.assert_allclose(x2, x1, rtol=1e-12, atol=1e-12)
