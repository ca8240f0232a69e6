"""GPU twins: every public function on CuPy against NumPy, and the custom kernels against generic CuPy.

Skipped, with the reason, where cupy or a CUDA device is missing (CUPY,
CUPY_REASON from conftest). Sizes are small on purpose: the same tests run
under ``compute-sanitizer`` (see the last test) in reasonable time.

Tolerances are relative to the largest entry of the reference: 1e-10 in
float64 and 1e-4 in float32 for everything computed by a fixed sequence of
operations (transforms, closed forms); iterative solves are compared at the
accuracy they were asked for (each side stops on its own rounding), on
well-conditioned problems.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv import _cuda, _memory
from gpu_deconv._backend import _backend, numpy_backend
from gpu_deconv._cuda import modules as _kernels
from gpu_deconv._ops import ArrayOps
from gpu_deconv._padding import input_shape, plan_axis
from gpu_deconv.solvers.closed_form import SingularSystemError

from conftest import CUPY, CUPY_REASON, SIMULATOR, assert_close, to_numpy

#: The array-expression path (NumPy): the reference the kernels are compared with.
ARRAY_OPS = ArrayOps(numpy_backend())

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(CUPY is None, reason=CUPY_REASON or "cupy is not available")]
cp = CUPY
ROOT = Path(__file__).resolve().parent.parent

MODE_BOUNDARY = [("full", b) for b in ("zero", "periodic", "symmetric", "reflect", "replicate")] \
    + [("same", b) for b in ("zero", "symmetric", "reflect", "replicate", "periodic")] \
    + [("valid", "zero"), ("valid", "reflect"), ("circular", "zero")]
DTYPES = [np.float64, np.float32]


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
    monkeypatch.delenv(_cuda.ENV_DISABLE, raising=False)


def to_gpu(a):
    if isinstance(a, np.ndarray):
        return cp.asarray(a)
    if isinstance(a, list) and a and all(isinstance(v, np.ndarray) for v in a):
        return [cp.asarray(v) for v in a]
    return a


def on_device(a):
    assert isinstance(a, cp.ndarray), type(a)
    assert a.device.id == cp.cuda.Device().id
    return a


def twin(fn, *args, **kw):
    """(NumPy result, CuPy result) of fn on the same inputs."""
    host = fn(*args, **kw)
    dev = fn(*[to_gpu(a) for a in args], **{k: to_gpu(v) for k, v in kw.items()})
    return host, dev


def generic(monkeypatch, fn, *args, **kw):
    """fn with the custom kernels turned off (the generic CuPy path)."""
    with monkeypatch.context() as m:
        m.setenv(_cuda.ENV_DISABLE, "1")
        assert not _cuda.enabled(cp)
        return fn(*args, **kw)


# ------------------------------------------------------------ conv, operator
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
@pytest.mark.parametrize("mode,boundary", MODE_BOUNDARY)
def test_convolve_and_correlate(rng, mode, boundary, convention, dtype):
    x = rng.standard_normal((2, 11, 10)).astype(dtype)
    h = rng.standard_normal((4, 3)).astype(dtype)
    for fn in (gd.convolve, gd.correlate):
        host, dev = twin(fn, x, h, mode, boundary=boundary, convention=convention)
        assert on_device(dev).dtype == dtype
        assert_close(dev, host, dtype)


@pytest.mark.parametrize("shape,k", [((13,), (4,)), ((6, 5, 7), (3, 2, 4)), ((4, 3, 5, 4), (2, 2, 3, 2))])
@pytest.mark.parametrize("mode,boundary", MODE_BOUNDARY)
def test_operator_forward_adjoint_normal_matrix(rng, monkeypatch, shape, k, mode, boundary):
    # 1-D to 3-D take the pad/fold kernels; 4-D falls back to the generic CuPy path.
    h = rng.standard_normal(k)
    x = rng.standard_normal((3,) + shape)
    A = gd.ConvolutionOperator(h, shape, mode, boundary=boundary)
    Ad = gd.ConvolutionOperator(cp.asarray(h), shape, mode, boundary=boundary)
    y = rng.standard_normal((3,) + A.out_shape)
    for name, arg in (("forward", x), ("adjoint", y), ("normal", x)):
        want = getattr(A, name)(arg)
        got = on_device(getattr(Ad, name)(cp.asarray(arg)))
        assert_close(got, want, np.float64)
        assert_close(got, generic(monkeypatch, getattr(Ad, name), cp.asarray(arg)), np.float64)
    if len(shape) < 3:
        assert_close(Ad.to_matrix(), A.to_matrix(), np.float64)
    # adjointness on the device
    lhs = float(cp.vdot(Ad.forward(cp.asarray(x)), cp.asarray(y)))
    rhs = float(cp.vdot(cp.asarray(x), Ad.adjoint(cp.asarray(y))))
    assert abs(lhs - rhs) <= 1e-10 * max(abs(lhs), 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_operator_per_image_kernels_and_float32(rng, monkeypatch, dtype):
    h = rng.standard_normal((3, 5, 4)).astype(dtype)
    x = rng.standard_normal((3, 12, 9)).astype(dtype)
    A = gd.ConvolutionOperator(h, (12, 9), "valid", boundary="symmetric", ndim=2)
    Ad = gd.ConvolutionOperator(cp.asarray(h), (12, 9), "valid", boundary="symmetric", ndim=2)
    y = rng.standard_normal((3,) + A.out_shape).astype(dtype)
    for name, arg in (("forward", x), ("adjoint", y), ("normal", x)):
        got = on_device(getattr(Ad, name)(cp.asarray(arg)))
        assert got.dtype == dtype
        assert_close(got, getattr(A, name)(arg), dtype)
        assert_close(got, generic(monkeypatch, getattr(Ad, name), cp.asarray(arg)), dtype)


@pytest.mark.parametrize("mode,boundary", [("full", "zero"), ("same", "reflect"), ("valid", "zero"),
                                           ("circular", "periodic"), ("full", "replicate")])
def test_grad_x_and_grad_h(rng, mode, boundary):
    x = rng.standard_normal((2, 12, 11))
    h = rng.standard_normal((3, 4))
    y = gd.convolve(x, h, mode, boundary=boundary) + 0.1 * rng.standard_normal(
        gd.convolve(x, h, mode, boundary=boundary).shape)
    for fn in (gd.grad_x, gd.grad_h):
        host, dev = twin(fn, x, h, y, mode, boundary=boundary)
        assert_close(on_device(dev), host, np.float64)


# ----------------------------------------------------------------- solvers
CLOSED = [("circular", "periodic", "fft", "laplacian"), ("same", "periodic", "fft", None),
          ("same", "symmetric", "dct", "laplacian"), ("same", "symmetric", "dct", "gradient"),
          ("full", "zero", "fft_approx", None), ("valid", "zero", "fft_approx", "laplacian")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,boundary,method,reg", CLOSED)
def test_deconvolve_closed_forms(rng, monkeypatch, mode, boundary, method, reg, dtype):
    h = np.outer([1.0, 3.0, 1.0], [1.0, 2.0, 4.0, 2.0, 1.0])
    h = (h + h[::-1, ::-1]) / h.sum() / 2  # centre-symmetric, odd: dct applies
    y = rng.standard_normal((3, 16, 14)).astype(dtype)
    z = rng.standard_normal(y.shape[:1] + input_shape(mode, y.shape[1:], h.shape)).astype(dtype)
    kw = dict(mode=mode, boundary=boundary, method=method, lam=[0.05, 0.1, 0.5], reg=reg,
              alpha=[0.0, 0.2, 0.1], z=z, return_info=True)
    (xh, ih), (xd, idv) = twin(gd.deconvolve, y, h, **kw)
    assert on_device(xd).dtype == dtype and idv.method == method
    assert_close(xd, xh, dtype, factor=10)
    np.testing.assert_array_equal(idv.converged, ih.converged)
    xg, _ = generic(monkeypatch, gd.deconvolve, cp.asarray(y), cp.asarray(h),
                    **{**kw, "z": cp.asarray(z)})
    assert_close(xd, xg, dtype, factor=10)


def test_fft_singular_system_raises_the_numpy_message(rng):
    h = np.array([[0.25, 0.25], [0.25, 0.25]])  # vanishes at the Nyquist frequencies
    y = rng.standard_normal((2, 8, 8))
    with pytest.raises(SingularSystemError) as host:
        gd.deconvolve(y, h, mode="circular")
    with pytest.raises(SingularSystemError) as dev:
        gd.deconvolve(cp.asarray(y), cp.asarray(h), mode="circular")
    assert str(dev.value) == str(host.value)


CG_CASES = [("valid", "zero", True), ("full", "zero", "circulant"), ("same", "reflect", True),
            ("same", "replicate", False), ("full", "symmetric", True), ("valid", "periodic", True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,boundary,precondition", CG_CASES)
def test_deconvolve_cg(rng, monkeypatch, mode, boundary, precondition, dtype):
    h = rng.uniform(0.2, 1.0, (4, 5))
    y = rng.standard_normal((3, 15, 13)).astype(dtype)
    rtol = 1e-11 if dtype == np.float64 else 1e-5
    tol = 1e-8 if dtype == np.float64 else 1e-2  # each side stops at rtol on its own rounding
    kw = dict(mode=mode, boundary=boundary, lam=[0.1, 0.3, 1.0], reg="laplacian", method="cg",
              precondition=precondition, rtol=rtol, return_info=True)
    (xh, ih), (xd, idv) = twin(gd.deconvolve, y, h, **kw)
    assert on_device(xd).dtype == dtype
    assert idv.converged.all() and ih.converged.all()
    assert (idv.residual <= rtol).all()
    assert np.abs(idv.iterations - ih.iterations).max() <= 3
    assert_close(xd, xh, np.float64, factor=tol / 1e-10)
    xg, ig = generic(monkeypatch, gd.deconvolve, cp.asarray(y), cp.asarray(h), **kw)
    assert ig.converged.all()
    assert_close(xd, xg, np.float64, factor=tol / 1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deconvolve_cg_border_preconditioner(rng, monkeypatch, dtype):
    # same + symmetric, large enough for border blocks (3 x 3 kernel: 12 px), per-image lam.
    h = rng.uniform(0.2, 1.0, (3, 3))
    y = rng.standard_normal((2, 16, 14)).astype(dtype)
    rtol = 1e-11 if dtype == np.float64 else 1e-5
    tol = 1e-8 if dtype == np.float64 else 1e-2
    kw = dict(mode="same", boundary="symmetric", lam=[1e-2, 0.3], reg="laplacian", method="cg",
              precondition="border", rtol=rtol, return_info=True)
    (xh, ih), (xd, idv) = twin(gd.deconvolve, y, h, **kw)
    assert on_device(xd).dtype == dtype
    assert idv.converged.all() and ih.converged.all() and idv.preconditioned
    assert np.abs(idv.iterations - ih.iterations).max() <= 3
    assert_close(xd, xh, np.float64, factor=tol / 1e-10)
    xg, ig = generic(monkeypatch, gd.deconvolve, cp.asarray(y), cp.asarray(h), **kw)
    assert ig.converged.all()
    assert_close(xd, xg, np.float64, factor=tol / 1e-10)


def test_deconvolve_cg_per_image_kernels_prox_start(rng, monkeypatch):
    hs = rng.uniform(0.2, 1.0, (3, 3, 4))  # one kernel per image
    y = rng.standard_normal((3, 12, 12))
    z = rng.standard_normal((3, 14, 15))
    x0 = rng.standard_normal((14, 15))
    kw = dict(mode="valid", lam=0.2, reg="gradient", alpha=[0.1, 0.0, 0.3], z=z, x0=x0, rtol=1e-11,
              return_info=True, ndim=2)
    (xh, ih), (xd, idv) = twin(gd.deconvolve, y, hs, **kw)
    assert idv.converged.all()
    assert_close(xd, xh, np.float64, factor=100)
    assert len(idv.history) == idv.iterations.max() + 1
    xg, _ = generic(monkeypatch, gd.deconvolve, cp.asarray(y), cp.asarray(hs),
                    **{**kw, "z": cp.asarray(z), "x0": cp.asarray(x0)})
    assert_close(xd, xg, np.float64, factor=100)


def test_estimate_kernel(rng):
    x = rng.standard_normal((2, 20, 18))
    h = rng.standard_normal((3, 4))
    for mode, boundary in (("valid", "zero"), ("same", "reflect"), ("full", "symmetric")):
        y = gd.convolve(x, h, mode, boundary=boundary)
        host, dev = twin(gd.estimate_kernel, x, y, (3, 4), lam=1e-6, mode=mode, boundary=boundary)
        assert_close(on_device(dev), host, np.float64, factor=100)


@pytest.mark.parametrize("dtype", DTYPES)
def test_solve_multichannel(rng, monkeypatch, dtype):
    d = rng.standard_normal((3, 5, 4)).astype(dtype)
    z = rng.standard_normal((2, 3, 16, 12)).astype(dtype)
    y = rng.standard_normal((2, 16, 12)).astype(dtype)
    alpha = np.array([0.5, 1.5])
    host, dev = twin(gd.solve_multichannel, y, d, alpha, z)
    assert on_device(dev).dtype == dtype
    assert_close(dev, host, dtype, factor=10)
    gen = generic(monkeypatch, gd.solve_multichannel, cp.asarray(y), cp.asarray(d), alpha, cp.asarray(z))
    assert_close(dev, gen, dtype, factor=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_public_cg(rng, monkeypatch, dtype):
    dd = rng.uniform(0.5, 3.0, (4, 50)).astype(dtype)
    b = rng.standard_normal((4, 50)).astype(dtype)
    b[2] = 0
    rtol = 1e-10 if dtype == np.float64 else 1e-5
    xh, ih = gd.cg(lambda v: dd * v, b, ndim=1, rtol=rtol)
    ddg = cp.asarray(dd)
    xd, idv = gd.cg(lambda v: ddg * v, cp.asarray(b), ndim=1, rtol=rtol, M=lambda r: r / ddg)
    assert on_device(xd).dtype == dtype and idv.converged.all() and ih.converged.all()
    assert_close(xd, b / dd, dtype, factor=100)
    xg, ig = generic(monkeypatch, gd.cg, lambda v: ddg * v, cp.asarray(b), ndim=1, rtol=rtol)
    np.testing.assert_array_equal(ig.converged, ih.converged)
    assert_close(xg, xh, dtype, factor=100)


class _ArrayScalarsCG(_cuda.CGKernels):
    """CGKernels with the per-image bookkeeping as the array expressions the kernels replaced."""

    def step(self, rz, pq, active, breakdown, broken, out):
        step = rz / cp.where(pq > 0, pq, 1)
        bad = active & ~((pq > 0) & cp.isfinite(step))
        breakdown |= bad
        active &= ~bad
        broken[...] = bad
        out[...] = cp.where(active, step, 0)
        return out

    def check(self, rr, bnorm, rtol, active, breakdown, broken, iters, res, done, flags):
        iters += active
        res[...] = cp.sqrt(rr) / bnorm
        bad = active & ~cp.isfinite(res)
        breakdown |= bad
        active &= ~bad
        broken |= bad
        done[...] = active & (res <= rtol)
        flags[...] = cp.stack([broken.any(), done.any(), active.any()])
        return flags

    def beta(self, rz_new, rz, keep, out):
        out[...] = cp.where(keep, rz_new / cp.where(rz != 0, rz, 1), 0)
        return out


def _cg_cases(rng):
    """(name, dtype, A, b, x0, M, rtol): restarts, stagnation, b = 0, breakdowns, B > a block's threads."""
    for dtype in DTYPES:
        d = rng.uniform(0.5, 5.0, (6, 40)).astype(dtype)
        d[1] = np.linspace(1, 1e4, 40)  # ill-conditioned: restarts (stagnation in float32)
        b = rng.standard_normal((6, 40)).astype(dtype)
        b[2] = 0
        d[3, 5] = -1.0  # indefinite: a breakdown on the curvature
        d[4, :] = np.inf  # the operator overflows: inf * 0 makes p . A p NaN
        b[4, 7] = 0
        dg = cp.asarray(d)
        calls = [0]

        def A(v, dg=dg, calls=calls):
            calls[0] += 1
            out = dg * v
            if calls[0] == 4:
                out[5, 3] = np.nan  # the operator fails once for image 5: a NaN curvature
            return out

        x0 = cp.asarray(rng.standard_normal((6, 40)).astype(dtype))
        tight = 1e-12 if dtype == np.float64 else 1e-7
        yield f"plain-{np.dtype(dtype).name}", dtype, A, cp.asarray(b), None, None, tight, calls

        def M(r, dg=dg):  # an inexact preconditioner
            return r / cp.sqrt(cp.abs(dg))

        yield f"x0-M-{np.dtype(dtype).name}", dtype, A, cp.asarray(b), x0, M, 1e-4, calls
    dg = cp.asarray(rng.uniform(0.5, 5.0, (300, 8)))
    b = cp.asarray(rng.standard_normal((300, 8)))
    yield "B=300", np.float64, (lambda v: dg * v), b, None, None, 1e-9, [0]


def test_cg_scalar_kernels_give_the_array_expressions_results(rng):
    # The deferred CG branch's step / check / beta kernels against the array expressions they
    # replaced, everything else (the vector kernels) the same: bit for bit, per image.
    from gpu_deconv.solvers.cg import batched_cg_fused

    bk = _backend("cupy")
    for name, dtype, A, b, x0, M, rtol, calls in _cg_cases(rng):
        runs = []
        for ops_class in (_cuda.CGKernels, _ArrayScalarsCG):
            calls[0] = 0
            seen = []
            ops = ops_class(b.shape[:1], b.shape[1:], dtype)
            with np.errstate(all="ignore"):
                x, info = batched_cg_fused(bk, A, b, 1, ops, x0=x0, rtol=rtol, maxiter=60, M=M,
                                           callback=lambda xs, seen=seen: seen.append(to_numpy(xs)),
                                           keep_history=True)
            runs.append((to_numpy(x), info, seen))
        (x1, i1, s1), (x2, i2, s2) = runs
        np.testing.assert_array_equal(x1, x2, err_msg=name)
        for key in ("iterations", "residual", "converged", "breakdown", "stagnated"):
            np.testing.assert_array_equal(i1[key], i2[key], err_msg=f"{name} {key}")
        assert len(i1["history"]) == len(i2["history"]) and len(s1) == len(s2), name
        for h1, h2 in zip(i1["history"] + s1, i2["history"] + s2):
            np.testing.assert_array_equal(h1, h2, err_msg=name)
        if name.startswith("plain"):  # what the cases are there for did happen
            assert i1["breakdown"][[3, 4, 5]].all() and not i1["breakdown"][[0, 1, 2]].any(), name
            assert i1["iterations"][2] == 0 and i1["converged"][[0, 2]].all(), name


# ------------------------------------------------------- kernels in detail
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("boundary", ["zero", "periodic", "symmetric", "reflect", "replicate"])
def test_pad_fold_launchers_large_pads_and_single_samples(rng, boundary, dtype):
    nfl = numpy_backend().next_fast_len
    for n, k in (((1, 5), (4, 9)), ((2, 7), (9, 2)), ((3,), (7,)), ((1, 1, 2), (3, 5, 6))):
        plans = tuple(plan_axis(a, b, "full", boundary, "scipy", nfl) for a, b in zip(n, k))
        G = tuple(p.G for p in plans)
        ext = tuple(p.n_ext for p in plans)
        x = rng.standard_normal((2,) + n).astype(dtype)
        got = on_device(_cuda.pad_to_grid(cp.asarray(x), plans, boundary))
        want = np.zeros((2,) + G, dtype=dtype)
        want[(Ellipsis,) + tuple(slice(0, e) for e in ext)] = ARRAY_OPS.pad(x, plans, boundary)
        np.testing.assert_array_equal(to_numpy(got), want)
        v = rng.standard_normal((2,) + G).astype(dtype)
        got = on_device(_cuda.fold_from_grid(cp.asarray(v), plans, boundary))
        want = ARRAY_OPS.fold(np.ascontiguousarray(v[(Ellipsis,) + tuple(slice(0, e) for e in ext)]), plans,
                    boundary)
        assert_close(got, want, dtype, factor=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_spectral_and_precondition_launchers(rng, dtype):
    from gpu_deconv.solvers import closed_form as cf

    cdt = np.complex64 if dtype == np.float32 else np.complex128
    B, F = 3, (7, 4)

    def crandn(shape):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(cdt)

    H, Y, Z = crandn((B,) + F), crandn((B,) + F), crandn((B,) + F)
    R = rng.uniform(0.5, 2, (B,) + F).astype(dtype)  # one regularizer power per image
    lam, alpha = rng.uniform(0.1, 1, B).astype(dtype), rng.uniform(0.1, 1, B).astype(dtype)
    W, V = cf.spectral_filter(numpy_backend(), H, R, lam, alpha, 2, np.dtype(dtype))
    want = W * Y + V * Z
    got = _cuda.spectral_solve(cp.asarray(Y), cp.asarray(H), cp.asarray(R), lam, cp.asarray(alpha),
                               cp.asarray(Z), ndim=2)
    assert_close(got.real, want.real, dtype, factor=10)
    assert_close(got.imag, want.imag, dtype, factor=10)
    dmin, dmax = _cuda.spectral_extrema(cp.asarray(H), cp.asarray(R), lam, alpha, (B,), ndim=2)
    den = np.abs(H) ** 2 + lam[:, None, None] * R + alpha[:, None, None]
    assert_close(dmin, den.min(axis=(1, 2)), dtype)
    assert_close(dmax, den.max(axis=(1, 2)), dtype)
    D = rng.uniform(-0.5, 2, F).astype(dtype)  # shared by the batch
    floor = rng.uniform(0.1, 0.3, B).astype(dtype)
    got = _cuda.precondition_apply(cp.asarray(Y), D=cp.asarray(D), floor=floor, ndim=2)
    want = Y / np.maximum(D, floor[:, None, None])
    assert_close(got.real, want.real, dtype)
    assert_close(got.imag, want.imag, dtype)
    got = _cuda.precondition_apply(cp.asarray(Y), Dinv=cp.asarray(1 / np.maximum(D, 0.2)), ndim=2)
    assert_close(got.real, (Y / np.maximum(D, 0.2)).real, dtype)


WEIGHTED_CASES = (((9,), (16,)), ((5, 7), (8, 12)), ((3, 4, 5), (6, 4, 9)))  # (window, grid), odd and even


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_embed_and_crop_launchers(rng, dtype):
    batch = (2, 3)
    for n, grid in WEIGHTED_CASES:
        win = (Ellipsis,) + tuple(slice(0, a) for a in n)
        x = rng.standard_normal(batch + n).astype(dtype)
        s = rng.uniform(-1.0, 1.0, n).astype(dtype)
        want = np.zeros(batch + grid, dtype=dtype)
        want[win] = x * s
        got = on_device(_cuda.embed(cp.asarray(x), grid, scale=cp.asarray(s)))
        np.testing.assert_array_equal(to_numpy(got), want)
        out = cp.full(batch + grid, np.nan, dtype=dtype)
        assert _cuda.embed(cp.asarray(x), grid, out=out, scale=cp.asarray(s)) is out
        np.testing.assert_array_equal(to_numpy(out), want)
        v = rng.standard_normal(batch + grid).astype(dtype)
        got = on_device(_cuda.crop(cp.asarray(v), n, scale=cp.asarray(s)))
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(to_numpy(got), v[win] * s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_circulant_apply_matches_the_array_path(rng, dtype):
    # T E F^-1 diag(Dinv) F E^T (T r): the weight rides in the embed and crop kernels. On the
    # simulator (NumPy's FFT on both sides) bit for bit; on a GPU cuFFT rounds differently.
    ops = _backend("cupy").ops
    assert type(ops).__name__ == "CudaOps"
    for n, grid in WEIGHTED_CASES:
        F = grid[:-1] + (grid[-1] // 2 + 1,)
        r = rng.standard_normal((2,) + n).astype(dtype)
        Dinv = rng.uniform(0.1, 2.0, F).astype(dtype)
        taper = rng.uniform(0.0, 1.0, n).astype(dtype)
        for T in (None, taper, taper[..., :1]):  # none, the spatial shape, one that broadcasts to it
            want = ARRAY_OPS.circulant_apply(r, T, Dinv, grid, n)
            got = on_device(ops.circulant_apply(cp.asarray(r), None if T is None else cp.asarray(T),
                                                cp.asarray(Dinv), grid, n))
            if SIMULATOR:
                np.testing.assert_array_equal(to_numpy(got), want)
            else:
                assert_close(got, want, dtype, factor=10)


def test_sherman_morrison_launcher_broadcasts(rng):

    D = rng.standard_normal((3, 6, 4)) + 1j * rng.standard_normal((3, 6, 4))
    Y = rng.standard_normal((6, 4)) + 1j * rng.standard_normal((6, 4))  # one image for two centres
    Z = rng.standard_normal((2, 3, 6, 4)) + 1j * rng.standard_normal((2, 3, 6, 4))
    alpha = np.array([0.5, 2.0]).reshape(2, 1, 1)
    want = ARRAY_OPS.sherman_morrison(D, np.broadcast_to(Y, (2, 6, 4)), Z, alpha)
    got = _cuda.sherman_morrison(cp.asarray(D), cp.asarray(Y), cp.asarray(Z), cp.asarray(alpha))
    assert got.shape == (2, 3, 6, 4)
    assert_close(got.real, want.real, np.float64)
    assert_close(got.imag, want.imag, np.float64)
    assert not _cuda.sherman_morrison_supported(cp.asarray(D), cp.asarray(Y), cp.asarray(Z),
                                                cp.ones((6, 4)))  # alpha varying over frequencies


def test_launchers_validate_their_arguments():
    plans = (plan_axis(8, 3, "same", "reflect", "scipy", numpy_backend().next_fast_len),)
    with pytest.raises(TypeError, match="float32 or float64"):
        _cuda.pad_to_grid(cp.zeros((2, 8), dtype=cp.int32), plans, "reflect")
    with pytest.raises(TypeError, match="cupy.ndarray"):
        _cuda.pad_to_grid(np.zeros((2, 8)), plans, "reflect")
    with pytest.raises(ValueError, match="trailing shape"):
        _cuda.pad_to_grid(cp.zeros((2, 7)), plans, "reflect")
    Y = cp.zeros((2, 9, 5), dtype=cp.complex128)
    with pytest.raises(ValueError, match="C-contiguous"):
        _cuda.spectral_solve(Y[:, ::2], cp.ones((5, 5), dtype=cp.complex128), None, 1.0, 1.0, ndim=2)
    with pytest.raises(TypeError, match="dtype"):
        _cuda.spectral_solve(Y, cp.ones((9, 5), dtype=cp.complex64), None, 1.0, 1.0, ndim=2)
    with pytest.raises(ValueError, match="one value per image"):
        _cuda.spectral_solve(Y, cp.ones((9, 5), dtype=cp.complex128), None, [1.0, 2.0, 3.0], 1.0, ndim=2)
    with pytest.raises(ValueError, match="C-contiguous"):
        _cuda.mask_window(cp.zeros((4, 6))[:, ::2], (2, 2))
    with pytest.raises(ValueError, match=r"scale must have exactly the spatial shape \(3, 4\)"):
        _cuda.crop(cp.zeros((2, 6, 6)), (3, 4), scale=cp.ones((3, 5)))
    with pytest.raises(ValueError, match="scale must have exactly the spatial shape"):
        _cuda.embed(cp.zeros((2, 3, 4)), (6, 6), scale=cp.ones((2, 3, 4)))  # not one per image
    with pytest.raises(TypeError, match="scale must have the dtype of the data"):
        _cuda.embed(cp.zeros((2, 3, 4)), (6, 6), scale=cp.ones((3, 4), dtype=cp.float32))
    with pytest.raises(TypeError, match="scale must be a cupy.ndarray"):
        _cuda.crop(cp.zeros((2, 6, 6)), (3, 4), scale=np.ones((3, 4)))


def test_kernel_switch_and_memoized_modules(rng, monkeypatch):
    x = cp.asarray(rng.standard_normal((2, 16, 15)))
    h = cp.asarray(rng.standard_normal((3, 3)))
    _kernels.clear()
    generic(monkeypatch, gd.convolve, x, h, "same", boundary="reflect")
    assert not _kernels._MODULES  # disabled: nothing compiled, nothing launched
    gd.convolve(x, h, "same", boundary="reflect")
    keys = set(_kernels._MODULES)
    assert (cp.cuda.Device().id, "pad_extract", np.dtype(np.float64).str) in keys
    gd.convolve(x, h, "same", boundary="reflect")
    assert set(_kernels._MODULES) == keys  # memoized
    gd.convolve(x.astype(cp.float32), h.astype(cp.float32), "same", boundary="reflect")
    assert (cp.cuda.Device().id, "pad_extract", np.dtype(np.float32).str) in _kernels._MODULES


@pytest.mark.skipif(CUPY is None or CUPY.cuda.runtime.getDeviceCount() < 2, reason="needs two GPUs")
def test_results_stay_on_the_inputs_device(rng):
    with cp.cuda.Device(1):
        x = cp.asarray(rng.standard_normal((2, 12, 10)))
        h = cp.asarray(rng.standard_normal((3, 3)))
        out = gd.convolve(x, h, "same", boundary="reflect")
        assert out.device.id == 1
        xd = gd.deconvolve(x, h, mode="valid", lam=0.1, reg="laplacian")
        assert xd.device.id == 1


def test_no_host_round_trip_in_the_operator_passes(rng):
    import warnings

    import cupyx

    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this cupy has no cupyx.allow_synchronize (deprecated since v10) to detect host syncs")
    A = gd.ConvolutionOperator(cp.asarray(rng.standard_normal((4, 3))), (20, 18), "valid",
                               boundary="zero")
    B = gd.ConvolutionOperator(cp.asarray(rng.standard_normal((4, 3))), (20, 18), "same",
                               boundary="symmetric")
    x = cp.asarray(rng.standard_normal((2, 20, 18)))
    for op in (A, B):  # warm up: spectra, kernels, cuFFT plans
        y = op.forward_unchecked(x, (2,))
        op.adjoint_unchecked(y, (2,))
        op.normal_unchecked(x, (2,))
    with warnings.catch_warnings():
        # Deprecated since CuPy v10, and still the one detector of host syncs it has;
        # CuPy 13.0-14.2 also warn (UserWarning) that it will be removed.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="cupyx.allow_synchronize will be removed",
                                category=UserWarning)
        with cupyx.allow_synchronize(False):
            for op in (A, B):
                y = op.forward_unchecked(x, (2,))
                op.adjoint_unchecked(y, (2,))
                op.normal_unchecked(x, (2,))
    cp.cuda.get_current_stream().synchronize()


def test_memory_chunks_on_the_device(rng):
    y = rng.standard_normal((5, 20, 20))
    h = rng.uniform(0, 1, (3, 3))
    kw = dict(mode="valid", lam=0.1, reg="laplacian", rtol=1e-11, return_info=True)
    x_all, i_all = gd.deconvolve(cp.asarray(y), cp.asarray(h), batch_size=5, **kw)
    for bs in ("auto", 2, None):
        x, info = gd.deconvolve(cp.asarray(y), cp.asarray(h), batch_size=bs, **kw)
        assert_close(on_device(x), x_all, np.float64, factor=100)
        # cuFFT may pick other algorithms for other batch sizes: rounding, not results, differs
        assert np.abs(info.iterations - i_all.iterations).max() <= 2


@pytest.mark.slow
def test_out_of_memory_is_retried_in_smaller_chunks():
    # A real allocation that does not fit: 8 items of a quarter of the free memory each.
    free, _ = cp.cuda.Device().mem_info
    per_item = free // 4

    def work(start, stop):
        a = cp.empty((stop - start) * per_item, dtype=cp.uint8)
        del a
        return stop - start

    retries = []
    parts = _memory.run_chunks(work, 8, 8, retry_on=_backend("cupy").ops.oom_errors(),
                               on_retry=lambda exc, size: (retries.append(size),
                                                           cp.get_default_memory_pool().free_all_blocks()))
    cp.get_default_memory_pool().free_all_blocks()
    assert sum(r for _, _, r in parts) == 8 and retries


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("compute-sanitizer") is None, reason="compute-sanitizer is not on PATH")
def test_kernels_under_compute_sanitizer(tmp_path):
    script = tmp_path / "sanitize.py"
    script.write_text(
        "import numpy as np, cupy as cp, gpu_deconv as gd\n"
        "rng = np.random.default_rng(0)\n"
        "for b in ('zero', 'periodic', 'symmetric', 'reflect', 'replicate'):\n"
        "    for dt in (np.float32, np.float64):\n"
        "        x = cp.asarray(rng.standard_normal((2, 7, 6)).astype(dt))\n"
        "        h = cp.asarray(rng.standard_normal((3, 9)).astype(dt))\n"
        "        A = gd.ConvolutionOperator(h, (7, 6), 'full', boundary=b)\n"
        "        A.normal(x); A.adjoint(A.forward(x))\n"
        "y = cp.asarray(rng.standard_normal((3, 9, 8)))\n"
        "gd.deconvolve(y, cp.ones((3, 3)) / 9, mode='circular', lam=0.1, reg='laplacian')\n"
        "gd.deconvolve(y, cp.ones((3, 3)) / 9, mode='valid', lam=0.1, reg='laplacian')\n"
        "gd.solve_multichannel(y, cp.ones((2, 3, 3)), 0.5, cp.zeros((3, 2, 9, 8)))\n"
        "cp.cuda.Device().synchronize(); print('done')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "9",
                          sys.executable, str(script)], capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0 and "done" in res.stdout, res.stdout[-4000:] + res.stderr[-4000:]
