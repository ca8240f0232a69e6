"""Complex deconvolve / estimate_kernel / solve_multichannel / cg against dense complex solves.

Reference: numpy.linalg.solve of the complex normal equations built from to_matrix (no FFT).
Tolerances (relative to the largest entry of the reference): complex128 1e-8, complex64 1e-4.
"""

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv import ConvolutionOperator as CO

TOL = {np.dtype(np.complex128): 1e-8, np.dtype(np.complex64): 1e-4}
LAP = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0.0]])


def crandn(rng, shape, cplx=True):
    a = rng.standard_normal(shape)
    return a + 1j * rng.standard_normal(shape) if cplx else a


def dense_deconvolve(y, h, mode, boundary, lam, alpha, z, reg, n):
    """Solve (A^H A + lam G^H G + alpha I) x = A^H y + alpha z with explicit matrices."""
    A = CO(h, n, mode, boundary=boundary).to_matrix()
    N = A.conj().T @ A + alpha * np.eye(A.shape[1])
    if lam:
        if reg is None:
            N = N + lam * np.eye(A.shape[1])
        else:
            circ = mode == "circular"
            G = CO(reg, n, "circular" if circ else "same",
                   boundary="periodic" if circ else boundary).to_matrix()
            N = N + lam * G.conj().T @ G
    b = A.conj().T @ np.ravel(y) + (alpha * np.ravel(z) if alpha else 0)
    return np.linalg.solve(N, b).reshape(n)


def rel_err(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


CASES = [  # (mode, boundary, method); dct needs a real centre-symmetric kernel
    ("circular", "periodic", "fft"),
    ("same", "symmetric", "dct"),
    ("same", "zero", "fft_approx"),
    ("valid", "zero", "cg"),
    ("same", "replicate", "cg"),
    ("full", "zero", "cg"),
    ("same", "symmetric", "cg"),
    ("circular", "periodic", "cg"),
]


@pytest.mark.parametrize("mode,boundary,method", CASES)
@pytest.mark.parametrize("hc", [False, True], ids=["real_h", "complex_h"])
@pytest.mark.parametrize("reg", [None, "lap"])
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_deconvolve_matches_dense(rng, mode, boundary, method, hc, reg, dtype):
    if method == "dct" and hc:
        pytest.skip("dct needs a real kernel (covered by test_dct_refuses_complex_kernels)")
    if method == "dct":
        h = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1.0]]) / 16
    else:
        h = crandn(rng, (3, 3), hc)
    n = (8, 7)
    x = crandn(rng, n)
    y = gd.convolve(x, h, mode if method != "fft_approx" else "circular", boundary=boundary)
    y = y + 0.1 * crandn(rng, y.shape)
    z = crandn(rng, n)
    regk = LAP if reg else None
    lam, alpha = 0.05, 0.1
    rtol = 1e-12 if dtype == np.complex128 else 1e-6
    xs, info = gd.deconvolve(y.astype(dtype), h, mode=mode, boundary=boundary, lam=lam, reg=regk, alpha=alpha,
                             z=z.astype(dtype), method=method, rtol=rtol, return_info=True)
    assert xs.dtype == dtype
    assert info.method == method
    model_mode = "circular" if method == "fft_approx" else mode
    model_boundary = "periodic" if method == "fft_approx" else boundary
    xd = dense_deconvolve(y, h, model_mode, model_boundary, lam, alpha, z, regk, n)
    assert rel_err(xs, xd) <= TOL[np.dtype(dtype)]
    if method == "cg" and dtype == np.complex128:
        assert info.converged.all() and info.residual.max() <= rtol


def test_mixed_real_complex_promotes(rng):
    h = rng.standard_normal((3, 3))
    y = rng.standard_normal((9, 9)).astype(np.float32)
    z = crandn(rng, (9, 9))
    x = gd.deconvolve(y, h, mode="circular", alpha=0.5, z=z)
    assert x.dtype == np.complex64  # precision of y, complex because of z
    xd = dense_deconvolve(y, h, "circular", "periodic", 0.0, 0.5, z, None, (9, 9))
    assert rel_err(x, xd) <= 1e-4
    xr = gd.deconvolve(y.astype(np.float64), crandn(rng, (3, 3)), mode="same", lam=0.1)
    assert xr.dtype == np.complex128


def test_real_split_info_and_batch(rng):
    """Real kernel, complex data: two real solves; info per image, residual of the complex system."""
    h = rng.standard_normal((3, 3))
    y = crandn(rng, (3, 10, 10))
    x, info = gd.deconvolve(y, h, mode="valid", lam=[0.01, 0.1, 1.0], rtol=1e-10, return_info=True)
    assert x.shape == (3, 12, 12) and info.iterations.shape == (3,)
    assert info.converged.all() and (info.residual <= 1e-10).all()
    for b, lam in enumerate([0.01, 0.1, 1.0]):
        xd = dense_deconvolve(y[b], h, "valid", "zero", lam, 0.0, None, None, (12, 12))
        assert rel_err(x[b], xd) <= 1e-8
    # the real and imaginary parts are the real solves of the real and imaginary data
    xre = gd.deconvolve(y.real.copy(), h, mode="valid", lam=[0.01, 0.1, 1.0], rtol=1e-10)
    assert rel_err(x.real, xre) <= 1e-8


def test_complex_kernel_per_image(rng):
    hs = crandn(rng, (2, 3, 3))
    y = crandn(rng, (2, 8, 8))
    x = gd.deconvolve(y, hs, mode="same", boundary="symmetric", lam=0.1, ndim=2, rtol=1e-12)
    for b in range(2):
        xd = dense_deconvolve(y[b], hs[b], "same", "symmetric", 0.1, 0, None, None, (8, 8))
        assert rel_err(x[b], xd) <= 1e-8


def test_complex_regularizer(rng):
    g = np.array([[0, 1j, 0], [1, -2, 0], [0, 0, 0]])
    h = rng.standard_normal((3, 3))
    y = crandn(rng, (7, 7))
    x = gd.deconvolve(y, h, mode="same", lam=0.2, reg=g, rtol=1e-12)
    xd = dense_deconvolve(y, h, "same", "zero", 0.2, 0, None, g, (7, 7))
    assert rel_err(x, xd) <= 1e-8


def test_dct_refuses_complex_kernels(rng):
    h = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1.0]]) * (1 + 1j) / 16
    y = crandn(rng, (8, 8))
    with pytest.raises(ValueError, match="real kernels"):
        gd.deconvolve(y, h, mode="same", boundary="symmetric", lam=0.1, method="dct")
    x, info = gd.deconvolve(y, h, mode="same", boundary="symmetric", lam=0.1, return_info=True)
    assert info.method == "cg"


@pytest.mark.parametrize("mode,boundary", [("valid", "zero"), ("same", "symmetric"), ("circular", "periodic"),
                                           ("full", "zero"), ("same", "zero")])
@pytest.mark.parametrize("xc,yc", [(True, True), (False, True), (True, False)])
def test_estimate_kernel_matches_dense(rng, mode, boundary, xc, yc):
    ks = (3, 2)
    x = crandn(rng, (2, 9, 8), xc)
    y = crandn(rng, gd.convolve(x + 0j, crandn(rng, ks), mode, boundary=boundary).shape, yc)
    lam = 0.1
    h = gd.estimate_kernel(x, y, ks, lam=lam, mode=mode, boundary=boundary)
    assert h.dtype == np.complex128
    K = 6
    cols = [gd.convolve(x + 0j, np.eye(K)[i].reshape(ks), mode, boundary=boundary).ravel() for i in range(K)]
    X = np.stack(cols, 1)
    hd = np.linalg.solve(X.conj().T @ X + lam * np.eye(K), X.conj().T @ y.ravel()).reshape(ks)
    assert rel_err(h, hd) <= 1e-8
    h32 = gd.estimate_kernel(x.astype(np.complex64 if xc else np.float32),
                             y.astype(np.complex64 if yc else np.float32), ks, lam=lam, mode=mode,
                             boundary=boundary)
    assert h32.dtype == np.complex64 and rel_err(h32, hd) <= 1e-4


@pytest.mark.parametrize("yc,dc,zc", [(True, True, True), (True, False, False), (False, True, False),
                                      (False, False, True)])
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
def test_multichannel_matches_dense(rng, yc, dc, zc, convention):
    S, C, alpha = (6, 5), 3, 0.3
    d = crandn(rng, (C, 2, 3), dc)
    y = crandn(rng, S, yc)
    z = crandn(rng, (C,) + S, zc)
    x = gd.solve_multichannel(y, d, alpha, z, convention=convention)
    assert x.dtype == np.complex128
    A = np.concatenate([CO(d[i], S, "circular", convention=convention).to_matrix() for i in range(C)], 1)
    N = A.conj().T @ A + alpha * np.eye(A.shape[1])
    xd = np.linalg.solve(N, A.conj().T @ y.ravel() + alpha * z.ravel()).reshape((C,) + S)
    assert rel_err(x, xd) <= 1e-8
    y32 = y.astype(np.complex64 if yc else np.float32)
    x32 = gd.solve_multichannel(y32, d, alpha, z, convention=convention)
    assert x32.dtype == np.complex64 and rel_err(x32, xd) <= 1e-4


def test_cg_hermitian_systems(rng):
    B = crandn(rng, (3, 6, 6))
    M = np.einsum("bij,bkj->bik", B, B.conj()) + 0.5 * np.eye(6)
    b = crandn(rng, (3, 6))
    x, info = gd.cg(lambda v: np.einsum("bij,bj->bi", M, v), b, ndim=1, rtol=1e-12)
    assert info.converged.all()
    assert rel_err(x, np.linalg.solve(M, b[..., None])[..., 0]) <= 1e-8
    with pytest.raises(TypeError, match="real floating"):
        gd.cg(lambda v: v + 0j, b.real.copy(), ndim=1)


@pytest.mark.parametrize("method", ["cg", "dct"])
def test_real_split_per_image_kernels_in_chunks(rng, method):
    """Per-image real kernels, complex data, chunks of one image: the split doubles the kernels too."""
    if method == "cg":
        hs = rng.standard_normal((2, 3, 3))
    else:
        hs = np.stack([np.outer([1, 2, 1], [1, 2, 1]) / 16, np.outer([1, 4, 1], [1, 4, 1]) / 36])
    y = crandn(rng, (2, 8, 8))
    lam = [0.1, 0.3]
    x, info = gd.deconvolve(y, hs, mode="same", boundary="symmetric", lam=lam, ndim=2, rtol=1e-12,
                            method=method, return_info=True, batch_size=1)
    assert info.method == method and info.converged.all()
    for b in range(2):
        xd = dense_deconvolve(y[b], hs[b], "same", "symmetric", lam[b], 0, None, None, (8, 8))
        assert rel_err(x[b], xd) <= 1e-8
