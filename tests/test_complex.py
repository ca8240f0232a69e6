"""Complex data in convolve/correlate, the operator and the gradients; SciPy's valid swap and axes=.

Reference values come from SciPy (scipy.signal.convolve/correlate/fftconvolve) or from the
explicit matrix built without FFTs (to_matrix). Tolerances: relative to the largest entry of the
reference, 1e-12 (complex128) and 2e-5 (complex64).
"""

import itertools

import numpy as np
import pytest
import scipy.signal

import gpu_deconv as gd

from conftest import to_numpy

MODES = ["full", "same", "valid", "circular"]
BOUNDARIES = ["zero", "periodic", "symmetric", "reflect", "replicate"]
TOL = {np.dtype(np.complex128): 1e-12, np.dtype(np.complex64): 2e-5,
       np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}


def crandn(rng, shape, cplx=True, dtype=np.float64):
    """Standard normal samples: complex (in dtype's precision) or real of dtype."""
    a = rng.standard_normal(shape)
    if not cplx:
        return a.astype(dtype)
    a = a + 1j * rng.standard_normal(shape)
    return a.astype(np.complex64 if dtype == np.float32 else np.complex128)


def close(a, b, dtype):
    a, b = to_numpy(a), to_numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(b).max(initial=0.0), 1e-300)
    err = np.abs(a.astype(np.complex128) - b.astype(np.complex128)).max(initial=0.0)
    assert err <= TOL[np.dtype(dtype)] * scale, f"max error {err:.3e} vs scale {scale:.3e}"


def combos():
    # (x complex, h complex): both, one, the other
    return [(True, True), (True, False), (False, True)]


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("xc,hc", combos())
@pytest.mark.parametrize("shapes", [((17,), (4,)), ((9, 8), (3, 4)), ((6, 5, 4), (2, 3, 3))])
def test_matches_scipy_complex(rng, mode, xc, hc, shapes):
    x = crandn(rng, shapes[0], xc)
    h = crandn(rng, shapes[1], hc)
    for ours, theirs in ((gd.convolve, scipy.signal.convolve), (gd.correlate, scipy.signal.correlate)):
        got = ours(x, h, mode)
        want = theirs(x, h, mode)
        assert got.dtype == np.complex128
        close(got, want, np.complex128)


def test_correlate_conjugates_the_kernel(rng):
    x = crandn(rng, 12)
    h = crandn(rng, 3)
    got = gd.correlate(x, h, "full")
    want = gd.convolve(x, np.conj(h[::-1]), "full")
    close(got, want, np.complex128)
    assert np.abs(got - gd.convolve(x, h[::-1], "full")).max() > 0.1  # the conjugate matters


@pytest.mark.parametrize("xdt,hdt,want", [
    (np.float32, np.complex64, np.complex64),
    (np.complex64, np.float32, np.complex64),
    (np.complex64, np.complex128, np.complex64),  # the precision of x, as for real data
    (np.complex128, np.float32, np.complex128),
    (np.float64, np.complex64, np.complex128),
    (np.float32, np.float64, np.float32),
    (np.int32, np.complex128, np.complex128),
])
def test_dtype_promotion(rng, xdt, hdt, want):
    x = (crandn(rng, 20) * 4).astype(xdt) if np.dtype(xdt).kind == "c" else (rng.standard_normal(20) * 4)
    x = x.astype(xdt)
    h = crandn(rng, 5).astype(hdt) if np.dtype(hdt).kind == "c" else rng.standard_normal(5).astype(hdt)
    got = gd.convolve(x, h, "same")
    assert got.dtype == want
    ref = scipy.signal.convolve(x.astype(np.complex128), h.astype(np.complex128), "same")
    close(got, ref, want)


def test_dtype_keyword_sets_the_precision(rng):
    x = crandn(rng, (6, 7))
    h = crandn(rng, (2, 2))
    assert gd.convolve(x, h, dtype=np.float32).dtype == np.complex64
    assert gd.convolve(x.astype(np.complex64), h, dtype=np.float64).dtype == np.complex128


def test_real_inputs_stay_real(rng):
    x = rng.standard_normal((8, 9)).astype(np.float32)
    h = rng.standard_normal((3, 3))
    assert gd.convolve(x, h).dtype == np.float32
    A = gd.ConvolutionOperator(h, x.shape, "same")
    G = A.grid_shape
    assert A.spectrum().shape == (G[0], G[1] // 2 + 1)  # half spectrum for real data
    assert A.spectrum(np.complex128).shape == G  # full spectrum for complex data


def _cases():
    for mode, boundary in itertools.product(MODES, BOUNDARIES):
        if mode == "circular" and boundary not in ("zero", "periodic"):
            continue
        yield mode, boundary


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode,boundary", list(_cases()))
@pytest.mark.parametrize("xc,hc", combos())
def test_operator_dot_product_and_matrix(xp, rng, mode, boundary, dtype, xc, hc):
    """<A x, r> = <x, A^H r> with complex inner products; A x = M x; A.H's matrix is M^H."""
    cdt = np.complex64 if dtype == np.float32 else np.complex128
    h = crandn(rng, (3, 4), hc, dtype)
    x = crandn(rng, (2, 7, 6), xc, dtype)
    A = gd.ConvolutionOperator(xp.asarray(h), (7, 6), mode, boundary=boundary)
    y = A.forward(xp.asarray(x))
    assert y.dtype == cdt
    r = crandn(rng, tuple(y.shape), True, dtype)
    back = A.adjoint(xp.asarray(r))
    assert back.dtype == cdt
    lhs = np.vdot(to_numpy(y).astype(np.complex128), r)
    rhs = np.vdot(x.astype(np.complex128), to_numpy(back).astype(np.complex128))
    scale = (np.linalg.norm(to_numpy(y)) * np.linalg.norm(r)
             + np.linalg.norm(x) * np.linalg.norm(to_numpy(back)))
    assert abs(lhs - rhs) <= 10 * TOL[np.dtype(cdt)] * scale
    M = to_numpy(A.to_matrix())
    assert M.dtype.kind == ("c" if hc else "f")
    close(y, (x.reshape(2, -1) @ M.T.astype(np.complex128)).reshape(y.shape), cdt)
    close(A.H.to_matrix(), M.conj().T, cdt)
    close(A.normal(xp.asarray(x)), A.adjoint(y), cdt)
    if hc and not A.kernel_batch:
        S = A.to_matrix(sparse=True)
        close(S.toarray() if hasattr(S, "toarray") else to_numpy(S.todense()), M, cdt)


def test_aslinearoperator_complex(rng):
    h = crandn(rng, (3, 3))
    A = gd.ConvolutionOperator(h, (6, 5), "valid")
    L = A.aslinearoperator()
    v = crandn(rng, 30)
    close(L.matvec(v), A.to_matrix() @ v, np.complex128)
    w = crandn(rng, L.shape[0])
    close(L.rmatvec(w), A.to_matrix().conj().T @ w, np.complex128)


def test_few_tap_complex_kernel(rng):
    """Complex kernels with few taps take the FFT path (the real shift-and-add has no conjugate)."""
    h = np.array([[0, 1j, 0], [1, -4, 1], [0, -1j, 0]])
    x = crandn(rng, (6, 7))
    A = gd.ConvolutionOperator(h, x.shape, "same", boundary="symmetric")
    r = crandn(rng, x.shape)
    close(A.adjoint(r), (A.to_matrix().conj().T @ r.ravel()).reshape(x.shape), np.complex128)
    Ar = gd.ConvolutionOperator(h.real, x.shape, "same", boundary="symmetric")  # direct path, complex x
    close(Ar.adjoint(r), (Ar.to_matrix().T @ r.ravel()).reshape(x.shape), np.complex128)
    close(Ar.forward(x), (Ar.to_matrix() @ x.ravel()).reshape(x.shape), np.complex128)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("boundary", ["zero", "symmetric", "replicate"])
@pytest.mark.parametrize("xc,hc,yc", [(True, True, True), (True, False, True), (False, True, False),
                                      (False, False, True)])
def test_gradients_finite_differences(rng, mode, boundary, xc, hc, yc):
    """df = Re <g, dx> along real and imaginary directions (the conjugate gradient's definition)."""
    if mode == "circular":
        boundary = "zero"
    x = crandn(rng, (2, 6, 5), xc)
    h = crandn(rng, (3, 2), hc)
    m = gd.convolve(x.astype(np.complex128), h, mode, boundary=boundary).shape
    y = crandn(rng, m, yc)

    def f(xx, hh):
        return 0.5 * np.sum(np.abs(gd.convolve(xx, hh, mode, boundary=boundary) - y) ** 2)

    gx = gd.grad_x(x, h, y, mode, boundary=boundary)
    gh = gd.grad_h(x, h, y, mode, boundary=boundary)
    assert gx.shape == x.shape and gh.shape == h.shape
    assert gx.dtype == np.complex128 and gh.dtype == np.complex128
    eps = 1e-5
    for _ in range(2):
        for part in ("real", "imag"):
            dx = crandn(rng, x.shape)
            dx = dx.real + 0j if part == "real" else 1j * dx.imag
            dh = crandn(rng, h.shape)
            dh = dh.real + 0j if part == "real" else 1j * dh.imag
            xc_ = x.astype(np.complex128)
            fd_x = (f(xc_ + eps * dx, h) - f(xc_ - eps * dx, h)) / (2 * eps)
            fd_h = (f(xc_, h + eps * dh) - f(xc_, h - eps * dh)) / (2 * eps)
            assert abs(fd_x - np.vdot(gx, dx).real) <= 1e-6 * max(1.0, abs(fd_x))
            assert abs(fd_h - np.vdot(gh, dh).real) <= 1e-6 * max(1.0, abs(fd_h))


def test_gradients_complex64(rng):
    x = crandn(rng, (9, 8), True, np.float32)
    h = crandn(rng, (3, 3), True, np.float32)
    y = crandn(rng, (9, 8), True, np.float32)
    gx = gd.grad_x(x, h, y, "same")
    A = gd.ConvolutionOperator(h.astype(np.complex128), x.shape, "same")
    assert gx.dtype == np.complex64
    close(gx, A.adjoint(A.forward(x.astype(np.complex128)) - y), np.complex64)


# ------------------------------------------------------------------- valid: SciPy's swap
@pytest.mark.parametrize("xs,hs", [((3,), (5,)), ((4, 3), (6, 3)), ((2, 3), (5, 7)), ((4, 4), (4, 4))])
@pytest.mark.parametrize("cplx", [False, True])
def test_valid_swaps_like_scipy(rng, xs, hs, cplx):
    x = crandn(rng, xs, cplx)
    h = crandn(rng, hs, cplx)
    for ours, theirs in ((gd.convolve, scipy.signal.convolve), (gd.correlate, scipy.signal.correlate)):
        close(ours(x, h, "valid"), theirs(x, h, "valid"), np.complex128 if cplx else np.float64)
    # MATLAB's convention never swaps: an empty result
    assert gd.convolve(x, h, "valid", convention="matlab").shape == tuple(
        max(a - b + 1, 0) for a, b in zip(xs, hs))


def test_valid_larger_in_some_axes_raises(rng):
    x, h = rng.standard_normal((5, 3)), rng.standard_normal((3, 5))
    with pytest.raises(ValueError, match="valid"):
        scipy.signal.convolve(x, h, "valid")
    with pytest.raises(ValueError, match="valid"):
        gd.convolve(x, h, "valid")
    with pytest.raises(ValueError, match="valid"):
        gd.correlate(x, h, "valid")
    assert gd.convolve(x, h, "valid", convention="matlab").shape == (3, 0)


def test_valid_swap_keeps_the_precision_of_x(rng):
    x = rng.standard_normal(3).astype(np.float32)
    h = rng.standard_normal(6)
    assert gd.convolve(x, h, "valid").dtype == np.float32


# ------------------------------------------------------------------------------ axes=
AXES_CASES = [
    ((4, 9, 8), (1, 3, 4), (1, 2)),
    ((4, 9, 8), (4, 3, 1), (1,)),
    ((9, 3, 8), (3, 1, 4), (0, 2)),
    ((9, 4), (3, 4), 0),
    ((9, 4), (3, 4), -2),
    ((3, 4), (9, 4), [0]),
    ((1, 7, 5), (3, 2, 5), (1,)),
]


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("xs,hs,axes", AXES_CASES)
def test_axes_match_fftconvolve(rng, mode, xs, hs, axes):
    x = crandn(rng, xs)
    h = crandn(rng, hs)
    close(gd.convolve(x, h, mode, axes=axes), scipy.signal.fftconvolve(x, h, mode, axes=axes), np.complex128)
    ax = [axes] if isinstance(axes, int) else list(axes)
    hr = np.conj(np.flip(h, axis=ax))
    fc = scipy.signal.fftconvolve
    close(gd.correlate(x, h, mode, axes=axes), fc(x, hr, mode, axes=axes), np.complex128)
    xr, hr_ = x.real.copy(), h.real.copy()
    close(gd.convolve(xr, hr_, mode, axes=axes), fc(xr, hr_, mode, axes=axes), np.float64)


def test_axes_errors(rng):
    x, h = rng.standard_normal((4, 5)), rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match="mutually exclusive"):
        gd.convolve(x, h, axes=(1,), ndim=1)
    with pytest.raises(ValueError, match="mutually exclusive"):
        gd.correlate(x, h, axes=(1,), ndim=1)
    with pytest.raises(ValueError, match="broadcast"):
        gd.convolve(x, h, axes=(1,))  # axis 0 not convolved: 4 vs 2
    with pytest.raises(ValueError, match="same number of dimensions"):
        gd.convolve(x, h[0], axes=(1,))
    with pytest.raises(ValueError, match="exceeds dimensionality"):
        gd.convolve(x, h, axes=(2,))
    with pytest.raises(ValueError, match="unique"):
        gd.convolve(x, h, axes=(1, -1))
    with pytest.raises(ValueError, match="axes must be a scalar or iterable of integers"):
        gd.convolve(x, h, axes="1")
    with pytest.raises(ValueError, match="empty"):
        gd.convolve(x, h, axes=[])


# ------------------------------------------------ axes= on ConvolutionOperator and deconvolve
@pytest.mark.parametrize("mode", ["full", "same", "valid", "circular"])
def test_operator_axes_channels_last(rng, mode):
    h = crandn(rng, (3, 4))
    x = crandn(rng, (9, 8, 3))  # (H, W, C)
    A = gd.ConvolutionOperator(h, (9, 8, 3), mode, axes=(0, 1))
    ref_op = gd.ConvolutionOperator(h, (3, 9, 8), mode)
    assert A.in_shape == (9, 8, 3)
    assert A.out_shape == ref_op.out_shape[1:] + (3,)
    y = A.forward(x)
    close(y, np.moveaxis(ref_op.forward(np.moveaxis(x, -1, 0)), 0, -1), np.complex128)
    r = crandn(rng, y.shape)
    close(A.adjoint(r), np.moveaxis(ref_op.adjoint(np.moveaxis(r, -1, 0)), 0, -1), np.complex128)
    close(A.normal(x), A.adjoint(y), np.complex128)
    assert abs(np.vdot(y, r) - np.vdot(x, A.adjoint(r))) <= 1e-12 * np.linalg.norm(y) * np.linalg.norm(r) * 10
    close(A.H.forward(r), A.adjoint(r), np.complex128)


def test_operator_axes_order_maps_kernel_axes(rng):
    h = rng.standard_normal((3, 4))
    x = rng.standard_normal((2, 9, 8))
    B = gd.ConvolutionOperator(h, (2, 9, 8), "same", axes=(2, 1))  # kernel axis 0 along data axis 2
    want = np.swapaxes(gd.convolve(np.swapaxes(x, 1, 2), h, "same"), 1, 2)
    close(B.forward(x), want, np.float64)


def test_deconvolve_axes_channels_last(rng):
    h = rng.standard_normal((3, 3))
    y = crandn(rng, (10, 9, 3))
    lam = [1e-2, 1e-1, 1.0]  # one per channel (the batch axes, in order)
    x, info = gd.deconvolve(y, h, mode="same", boundary="symmetric", lam=lam, axes=(0, 1), rtol=1e-10,
                            return_info=True)
    ref = gd.deconvolve(np.moveaxis(y, -1, 0), h, mode="same", boundary="symmetric", lam=lam, rtol=1e-10)
    assert x.shape == y.shape and info.converged.shape == (3,)
    close(x, np.moveaxis(ref, 0, -1), np.complex128)
    z = crandn(rng, (12, 11, 3))
    xv = gd.deconvolve(y, h, mode="valid", alpha=0.5, z=z, axes=(0, 1), rtol=1e-10)
    refv = gd.deconvolve(np.moveaxis(y, -1, 0), h, mode="valid", alpha=0.5, z=np.moveaxis(z, -1, 0),
                         rtol=1e-10)
    close(xv, np.moveaxis(refv, 0, -1), np.complex128)


def test_operator_and_deconvolve_axes_errors(rng):
    h = rng.standard_normal((3, 3))
    with pytest.raises(ValueError, match="mutually exclusive"):
        gd.ConvolutionOperator(h, (8, 8, 3), axes=(0, 1), ndim=2)
    with pytest.raises(ValueError, match="one data axis per kernel axis"):
        gd.ConvolutionOperator(h, (8, 8, 3), axes=(0,))
    with pytest.raises(ValueError, match="unique"):
        gd.ConvolutionOperator(h, (8, 8, 3), axes=(0, -3))
    A = gd.ConvolutionOperator(h, (8, 8, 3), axes=(0, 1))
    with pytest.raises(ValueError, match="dimensions"):
        A.forward(np.ones((8, 8)))
    with pytest.raises(ValueError, match="trailing shape|shape"):
        A.forward(np.ones((8, 3, 8)))
    y = rng.standard_normal((8, 8, 3))
    with pytest.raises(ValueError, match="mutually exclusive"):
        gd.deconvolve(y, h, axes=(0, 1), ndim=2)
    with pytest.raises(ValueError, match="number of dimensions"):
        gd.deconvolve(y, h, alpha=1.0, z=np.ones((8, 8)), axes=(0, 1))
