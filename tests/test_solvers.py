"""deconvolve / estimate_kernel / solve_multichannel against dense numpy.linalg.solve.

The dense systems are built from tests/reference.py (numpy.pad + direct sums),
not from the package. Tolerances: float64 solutions agree with the dense
solve to 1e-8 relative (CG run to rtol 1e-12); float32 to 1e-4 (lam large
enough that float32 can resolve the system).
"""

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv.solvers.regularizers import difference_kernel, laplacian_kernel

from conftest import to_numpy
from reference import ref_matrix

MODES = ["same", "valid", "full", "circular"]
BOUNDARIES = ["zero", "periodic", "symmetric", "reflect", "replicate"]
COMBOS = [(m, b) for m in MODES for b in BOUNDARIES if m != "circular" or b == "periodic"]
SHAPES = [((13,), (4,)), ((9, 8), (3, 4)), ((6, 5, 4), (3, 2, 3))]


def _reg_mode(mode, boundary):
    circ = mode == "circular" or (mode == "same" and boundary == "periodic")
    return ("same", "periodic") if circ else ("same", boundary)


def dense_solve(h, n, mode, boundary, convention, y, lam=0.0, regs=(), alpha=0.0, z=None):
    """x = solve(A^T A + lam sum w G^T G + alpha I, A^T y + alpha z) from reference matrices."""
    A = ref_matrix(h, n, mode, boundary, convention)
    N = A.shape[1]
    M = A.T @ A + alpha * np.eye(N)
    b = A.T @ y.ravel()
    if z is not None:
        b = b + alpha * z.ravel()
    for w, G in regs:
        M += lam * w * (G.T @ G)
    return np.linalg.solve(M, b).reshape(n)


def _unknown_shape(mode, m, k):
    if mode in ("same", "circular"):
        return m
    if mode == "valid":
        return tuple(a + b - 1 for a, b in zip(m, k))
    return tuple(a - b + 1 for a, b in zip(m, k))


def rel(a, b):
    a, b = to_numpy(a).astype(np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("mode,boundary", COMBOS)
@pytest.mark.parametrize("m,k", SHAPES)
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
@pytest.mark.parametrize("reg", [None, "laplacian"])
def test_deconvolve_matches_dense(rng, mode, boundary, m, k, convention, reg):
    h = rng.standard_normal(k)
    n = _unknown_shape(mode, m, k)
    y = rng.standard_normal(m)
    lam = 0.05
    rm, rb = _reg_mode(mode, boundary)
    g = np.ones((1,) * len(n)) if reg is None else laplacian_kernel(len(n))
    G = ref_matrix(g, n, rm, rb, convention)
    want = dense_solve(h, n, mode, boundary, convention, y, lam, [(1.0, G)])
    x, info = gd.deconvolve(y, h, lam=lam, reg=reg, mode=mode, boundary=boundary,
                            convention=convention, rtol=1e-12, return_info=True)
    assert x.shape == n and x.dtype == np.float64
    assert rel(x, want) < 1e-8, (info.method, rel(x, want))
    assert info.converged.all()
    circ = mode == "circular" or (mode == "same" and boundary == "periodic")
    assert info.method == ("fft" if circ else "cg")


@pytest.mark.parametrize("mode,boundary", COMBOS)
def test_deconvolve_float32(rng, mode, boundary):
    m, k = (10, 9), (3, 3)
    h = rng.standard_normal(k).astype(np.float32)
    n = _unknown_shape(mode, m, k)
    y = rng.standard_normal(m).astype(np.float32)
    rm, rb = _reg_mode(mode, boundary)
    G = ref_matrix(laplacian_kernel(2), n, rm, rb, "scipy")
    want = dense_solve(h.astype(float), n, mode, boundary, "scipy", y.astype(float), 0.3, [(1.0, G)])
    # rtol 1e-5: float32 rounding can hold the true residual near 1e-6.
    x, info = gd.deconvolve(y, h, lam=0.3, reg="laplacian", mode=mode, boundary=boundary,
                            rtol=1e-5, return_info=True)
    assert x.dtype == np.float32
    assert info.converged.all()
    assert rel(x, want) < 1e-4


@pytest.mark.parametrize("n", [(15,), (9, 10), (5, 6, 7)])
@pytest.mark.parametrize("reg", [None, "laplacian", "gradient"])
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
def test_dct_closed_form(rng, n, reg, convention):
    nd = len(n)
    h = rng.random((5,) * nd)
    for ax in range(nd):
        h = h + np.flip(h, axis=ax)  # centre-symmetric, odd
    y = rng.standard_normal(n)
    z = rng.standard_normal(n)
    if reg is None:
        regs = [(1.0, np.eye(int(np.prod(n))))]
    elif reg == "laplacian":
        regs = [(1.0, ref_matrix(laplacian_kernel(nd), n, "same", "symmetric", convention))]
    else:
        regs = [(1.0, ref_matrix(difference_kernel(nd, a), n, "same", "symmetric", convention))
                for a in range(nd)]
    want = dense_solve(h, n, "same", "symmetric", convention, y, 0.1, regs, alpha=0.2, z=z)
    x, info = gd.deconvolve(y, h, lam=0.1, reg=reg, mode="same", boundary="symmetric",
                            convention=convention, alpha=0.2, z=z, return_info=True)
    assert info.method == "dct"
    assert rel(x, want) < 1e-10
    assert info.residual.max() < 1e-12


def test_auto_method_choice(rng):
    y = rng.standard_normal((12, 12))
    sym = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])
    asym = rng.standard_normal((3, 3))

    def method(**kw):
        return gd.deconvolve(y, kw.pop("h", sym), lam=0.1, return_info=True, **kw)[1].method

    assert method(mode="circular") == "fft"
    assert method(mode="same", boundary="periodic") == "fft"
    assert method(mode="same", boundary="symmetric") == "dct"
    assert method(mode="same", boundary="symmetric", reg="laplacian") == "dct"
    assert method(mode="same", boundary="symmetric", h=asym) == "cg"
    assert method(mode="same", boundary="symmetric", reg=asym) == "cg"
    assert method(mode="same", boundary="symmetric", h=np.ones((2, 2))) == "cg"  # even size
    assert method(mode="same") == "cg"
    assert method(mode="full") == "cg"
    assert method(mode="valid") == "cg"
    # A regularizer operator with a non-circular mode rules the closed form out.
    G = gd.ConvolutionOperator(laplacian_kernel(2), (12, 12), "same")
    assert method(mode="circular", reg=G) == "cg"


def test_cg_agrees_with_closed_forms(rng):
    y = rng.standard_normal((2, 16, 15))
    h = rng.standard_normal((4, 3))
    x_fft = gd.deconvolve(y, h, lam=0.01, reg="laplacian", mode="circular")
    x_cg = gd.deconvolve(y, h, lam=0.01, reg="laplacian", mode="circular", method="cg", rtol=1e-12)
    assert rel(x_cg, x_fft) < 1e-9
    s = np.outer([1.0, 3.0, 1.0], [2.0, 5.0, 2.0])
    x_dct = gd.deconvolve(y, s, lam=0.01, mode="same", boundary="symmetric")
    x_cg = gd.deconvolve(y, s, lam=0.01, mode="same", boundary="symmetric", method="cg", rtol=1e-12)
    assert rel(x_cg, x_dct) < 1e-9


def test_cg_single_system_without_batch_axes(rng):
    # One system (b.ndim == ndim): the per-image scalars are 0-d, and must stay
    # writable arrays across iterations (a regression of the shared CG loop).
    d = rng.uniform(0.5, 50.0, 40)
    b = rng.standard_normal(40)
    for M in (None, lambda r: r / d):
        x, info = gd.cg(lambda v: d * v, b, rtol=1e-12, M=M)
        assert rel(x, b / d) < 1e-10
        assert info.converged.shape == () and bool(info.converged)
        assert int(info.iterations) >= (1 if M is not None else 2)


def test_method_not_exact_is_refused(rng):
    y = rng.standard_normal((8, 8))
    h = rng.standard_normal((3, 3))
    with pytest.raises(ValueError, match="fft_approx"):
        gd.deconvolve(y, h, lam=0.1, mode="full", method="fft")
    with pytest.raises(ValueError, match="dct"):
        gd.deconvolve(y, h, lam=0.1, mode="same", boundary="symmetric", method="dct")
    with pytest.raises(ValueError, match="method must be one of"):
        gd.deconvolve(y, h, method="fourier")


def test_fft_approx_full_is_seed_recipe_and_not_exact(rng):
    # Seed 000's recipe: grid of y's size (n + k - 1), divide, keep the first n.
    x_true = rng.standard_normal(20) + 3.0  # nonzero ends: where the gap shows
    h = np.array([1.0, 2.0, 1.5, 0.5])
    y = np.convolve(x_true, h)
    lam = 1e-2
    approx = gd.deconvolve(y, h, lam=lam, mode="full", method="fft_approx")
    Y, H = np.fft.fft(y), np.fft.fft(h, len(y))
    recipe = np.real(np.fft.ifft(np.conj(H) * Y / (np.abs(H) ** 2 + lam)))[:20]
    np.testing.assert_allclose(approx, recipe, atol=1e-12)
    exact = gd.deconvolve(y, h, lam=lam, mode="full", rtol=1e-13)
    dense = dense_solve(h, (20,), "full", "zero", "scipy", y, lam, [(1.0, np.eye(20))])
    assert rel(exact, dense) < 1e-9
    # The Toeplitz normal matrix is not circulant: Fourier division is off.
    assert rel(approx, dense) > 1e-3


def test_fft_approx_same_equals_circular(rng):
    y = rng.standard_normal((10, 11))
    h = rng.standard_normal((3, 4))
    a = gd.deconvolve(y, h, lam=0.1, mode="same", method="fft_approx")
    b = gd.deconvolve(y, h, lam=0.1, mode="circular")
    assert rel(a, b) < 1e-12
    x, info = gd.deconvolve(y, h, lam=0.1, mode="valid", method="fft_approx", return_info=True)
    assert x.shape == (12, 14) and info.method == "fft_approx"


def test_batch_equals_per_image_and_per_image_parameters(rng):
    B = 3
    y = rng.standard_normal((B, 11, 10))
    hs = [rng.standard_normal((3, 3)) for _ in range(B)]
    lam = np.array([0.01, 0.1, 1.0])
    alpha = np.array([0.0, 0.5, 0.2])
    z = rng.standard_normal((B, 13, 12))
    for mode in ("valid", "circular"):
        kw = dict(mode=mode, reg="laplacian", rtol=1e-12)
        zz = z if mode == "valid" else z[:, 1:12, 1:11]
        xb, info = gd.deconvolve(y, hs, lam=lam, alpha=alpha, z=zz, return_info=True, **kw)
        assert info.iterations.shape == (B,)
        for b in range(B):
            xi = gd.deconvolve(y[b], hs[b], lam=lam[b], alpha=alpha[b], z=zz[b], **kw)
            assert rel(xb[b], xi) < 1e-9
        # Same with the kernels as an array with a batch axis (ndim=2).
        xa = gd.deconvolve(y, np.stack(hs), ndim=2, lam=lam, alpha=alpha, z=zz, **kw)
        assert rel(xa, xb) < 1e-12


def test_regularizer_forms(rng):
    n = (9, 10)
    y = rng.standard_normal((7, 8))
    h = rng.standard_normal((3, 3))
    lap = laplacian_kernel(2)
    G_same_zero = ref_matrix(lap, n, "same", "zero", "scipy")
    D = [ref_matrix(difference_kernel(2, a), n, "same", "reflect", "scipy") for a in range(2)]
    G_op = gd.ConvolutionOperator(lap, n, "valid")
    G_valid = ref_matrix(lap, n, "valid", "zero", "scipy")
    eye = np.eye(90)
    cases = [
        # A bare kernel gets mode='same' with the call's boundary.
        (dict(reg=lap, boundary="zero"), [(1.0, G_same_zero)], "zero"),
        (dict(reg="gradient", boundary="reflect"), [(1.0, D[0]), (1.0, D[1])], "reflect"),
        # An operator keeps its own mode.
        # (valid + valid alone is singular: add the identity, written as None.)
        (dict(reg=[(1.0, G_op), (0.1, None)]), [(1.0, G_valid), (0.1, eye)], "zero"),
        (dict(reg=[(2.0, lap), (0.5, G_op)]), [(2.0, G_same_zero), (0.5, G_valid)], "zero"),
    ]
    for kw, regs, boundary in cases:
        want = dense_solve(h, n, "valid", boundary, "scipy", y, 0.1, regs)
        x = gd.deconvolve(y, h, lam=0.1, mode="valid", rtol=1e-12, **kw)
        assert rel(x, want) < 1e-8, kw


def test_seed_002_single_channel_closed_form(rng):
    # X* = F^-1[(conj(F D) F Y + alpha F X) / (conj(F D) F D + alpha)]: circular, proximal.
    d = rng.standard_normal((4, 4))
    y = rng.standard_normal((16, 16))
    z = rng.standard_normal((16, 16))
    alpha = 0.3
    x = gd.deconvolve(y, d, mode="circular", alpha=alpha, z=z)
    from reference import psf2otf_convolve  # noqa: F401  (documents the origin convention)

    D = np.fft.fft2(np.roll(np.pad(d, ((0, 12), (0, 12))), (-1, -1), axis=(0, 1)))
    want = np.real(np.fft.ifft2((np.conj(D) * np.fft.fft2(y) + alpha * np.fft.fft2(z))
                                / (np.abs(D) ** 2 + alpha)))
    assert rel(x, want) < 1e-12


def test_info_and_non_convergence_reported(rng):
    y = rng.standard_normal((2, 30, 30))
    h = rng.standard_normal((5, 5))
    x, info = gd.deconvolve(y, h, lam=1e-4, mode="valid", maxiter=2, return_info=True)
    assert np.isfinite(x).all()
    assert info.method == "cg" and info.iterations.tolist() == [2, 2]
    assert not info.converged.any() and (info.residual > 1e-6).all()
    assert info["method"] == "cg"
    x, info = gd.deconvolve(y, h, lam=1e-2, mode="valid", rtol=1e-8, return_info=True)
    assert info.converged.all() and (info.residual <= 1e-8).all()
    assert info.preconditioned


def test_dtype_and_backend_kept(xp, rng):
    y = xp.asarray(rng.standard_normal((12, 12)).astype(np.float32))
    h = xp.asarray(rng.standard_normal((3, 3)))
    for mode in MODES:
        x = gd.deconvolve(y, h, lam=0.1, mode=mode)
        assert x.dtype == np.float32 and type(x) is type(y)


def test_zero_data_gives_zero(rng):
    x, info = gd.deconvolve(np.zeros((8, 8)), rng.standard_normal((3, 3)), lam=0.1, mode="valid",
                            return_info=True)
    assert np.array_equal(x, np.zeros((10, 10))) and info.converged.all()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kw,exc,match", [
    (dict(lam=-1.0), ValueError, "lam must be non-negative"),
    (dict(lam=np.nan), ValueError, "lam must be finite"),
    (dict(lam=[0.1, 0.2, 0.3]), ValueError, "lam must be a scalar or one value per image"),
    (dict(lam="big"), TypeError, "lam"),
    (dict(alpha=0.5), ValueError, "alpha > 0 needs z"),
    (dict(alpha=0.5, z=np.zeros((5, 5))), ValueError, "z must have the unknown's shape"),
    (dict(rtol=0.0), ValueError, "rtol must be a positive"),
    (dict(maxiter=0), ValueError, "maxiter must be a positive integer"),
    (dict(maxiter=2.5), ValueError, "maxiter must be a positive integer"),
    (dict(x0=np.zeros((3, 3))), ValueError, "x0 must have the unknown's shape"),
    (dict(reg="tv"), ValueError, "reg must be"),
    (dict(reg=[(-1.0, "laplacian")], lam=0.1), ValueError, "reg weights must be finite and non-negative"),
    (dict(precondition="jacobi"), ValueError, "precondition must be one of"),
    (dict(mode="valid", boundary="mirror"), ValueError, "boundary must be one of"),
])
def test_bad_solver_arguments(rng, kw, exc, match):
    y = rng.standard_normal((2, 8, 8))
    with pytest.raises(exc, match=match):
        gd.deconvolve(y, np.ones((3, 3)) / 9, **kw)


def test_full_needs_y_larger_than_kernel():
    with pytest.raises(ValueError, match="mode='full' needs y at least as large"):
        gd.deconvolve(np.ones((4, 4)), np.ones((5, 5)), mode="full")


def test_singular_closed_form_is_a_clear_error():
    # [1, 1] vanishes at the Nyquist frequency: lam = 0 makes the system singular.
    y = np.random.default_rng(0).standard_normal(16)
    with pytest.raises(ValueError, match="singular"):
        gd.deconvolve(y, np.array([1.0, 1.0]), mode="circular")
    with pytest.raises(ValueError, match="singular"):
        gd.deconvolve(y, np.zeros(3), mode="circular")
    # Regularized, the same problem is fine.
    assert np.isfinite(gd.deconvolve(y, np.array([1.0, 1.0]), mode="circular", lam=1e-3)).all()


def test_singular_cg_never_returns_nan():
    y = np.random.default_rng(0).standard_normal(16)
    x, info = gd.deconvolve(y, np.array([1.0, 1.0]), mode="valid", return_info=True, maxiter=200)
    assert np.isfinite(x).all()
    assert info.converged.dtype == bool
    # An all-zero kernel with lam = alpha = 0 leaves every x a minimiser: refused, not x = 0.
    with pytest.raises(ValueError, match="h is all zeros"):
        gd.deconvolve(y, np.zeros(3), mode="valid", return_info=True, maxiter=200)


# ------------------------------------------------------------------ kernel side


@pytest.mark.parametrize("mode,boundary", COMBOS)
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
def test_estimate_kernel_matches_dense(rng, mode, boundary, convention):
    x = rng.standard_normal((2, 9, 8))
    k = (3, 4)
    op = gd.ConvolutionOperator(np.zeros(k), (9, 8), mode, boundary=boundary, convention=convention)
    y = rng.standard_normal((2,) + op.spatial_out_shape)
    # Dense X: one column per tap, from the reference convolution.
    from reference import ref_convolve

    cols = []
    for i in np.ndindex(*k):
        e = np.zeros(k)
        e[i] = 1.0
        cols.append(ref_convolve(x, e, mode, boundary, convention).ravel())
    X = np.array(cols).T
    for lam in (0.0, 0.3):
        want = np.linalg.solve(X.T @ X + lam * np.eye(12), X.T @ y.ravel()).reshape(k)
        got = gd.estimate_kernel(x, y, k, lam=lam, mode=mode, boundary=boundary, convention=convention)
        assert rel(got, want) < 1e-9


def test_estimate_kernel_recovers_kernel_and_refuses_singular(rng):
    x = rng.standard_normal((48, 40))
    h = rng.standard_normal((5, 6))
    y = gd.convolve(x, h, "same", boundary="symmetric")
    np.testing.assert_allclose(gd.estimate_kernel(x, y, (5, 6), mode="same", boundary="symmetric"), h,
                               atol=1e-9)
    with pytest.raises(ValueError, match="singular"):
        gd.estimate_kernel(np.ones((10, 10)), np.ones((8, 8)), (3, 3))
    with pytest.raises(ValueError, match="y must have spatial shape"):
        gd.estimate_kernel(x, y, (3, 3))


# ------------------------------------------------------------------ multichannel


@pytest.mark.parametrize("convention", ["scipy", "matlab"])
@pytest.mark.parametrize("S,K", [((12,), (4,)), ((6, 5), (3, 2)), ((4, 5, 3), (2, 3, 2))])
def test_multichannel_matches_dense(rng, convention, S, K):
    C = 3
    d = rng.standard_normal((C,) + K)
    y = rng.standard_normal((2,) + S)
    z = rng.standard_normal((2, C) + S)
    alpha = np.array([0.5, 2.0])
    x = gd.solve_multichannel(y, d, alpha, z, convention=convention)
    assert x.shape == (2, C) + S
    A = np.hstack([ref_matrix(d[c], S, "circular", "periodic", convention) for c in range(C)])
    for b in range(2):
        want = np.linalg.solve(A.T @ A + alpha[b] * np.eye(A.shape[1]), A.T @ y[b].ravel()
                               + alpha[b] * z[b].ravel())
        assert rel(x[b].ravel(), want) < 1e-10


def test_multichannel_one_channel_is_deconvolve(rng):
    d = rng.standard_normal((1, 5, 4))
    y = rng.standard_normal((14, 13))
    z = rng.standard_normal((1, 14, 13))
    a = gd.solve_multichannel(y, d, 0.7, z)
    b = gd.deconvolve(y, d[0], mode="circular", alpha=0.7, z=z[0])
    assert rel(a[0], b) < 1e-12


def test_multichannel_bad_input(rng):
    d = rng.standard_normal((3, 4, 4))
    y = rng.standard_normal((8, 8))
    with pytest.raises(ValueError, match="alpha must be positive"):
        gd.solve_multichannel(y, d, 0.0, np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="z must have shape"):
        gd.solve_multichannel(y, d, 1.0, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="d must have shape"):
        gd.solve_multichannel(y, np.ones(3), 1.0, np.zeros((3, 8, 8)))


def test_non_convergence_without_info_is_a_warning(rng):
    y = rng.standard_normal((3, 30, 30))
    h = rng.standard_normal((5, 5))
    with pytest.warns(gd.ConvergenceWarning, match=r"3 of 3 images did not converge.*maxiter=2 reached"):
        x = gd.deconvolve(y, h, lam=1e-4, mode="valid", maxiter=2)
    assert np.isfinite(x).all()
    # With return_info the same news is in info, and nothing is warned.
    x2, info = gd.deconvolve(y, h, lam=1e-4, mode="valid", maxiter=2, return_info=True)
    assert not info.converged.any()
    np.testing.assert_array_equal(x, x2)
