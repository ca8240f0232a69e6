"""The fast paths agree with the general ones: direct shift-and-add vs FFT, separable spectra vs rfftn.

float64 agreement to 1e-12 of the result's scale, float32 to 1e-5.
"""

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv._backend import numpy_backend
from gpu_deconv._spectra import kernel_power, kernel_rfft, separable_terms
from gpu_deconv.data import gaussian_kernel
from gpu_deconv.solvers.regularizers import difference_kernel, laplacian_kernel

MODE_BOUNDARY = [(m, b) for m in ("full", "same", "valid", "circular")
                 for b in ("zero", "periodic", "symmetric", "reflect", "replicate")
                 if m != "circular" or b == "periodic"]
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def _fft_only(op):
    op._direct = False  # resolved: take the FFT path
    return op


@pytest.mark.parametrize("mode,boundary", MODE_BOUNDARY)
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
@pytest.mark.parametrize("n,k", [((9, 8), (3, 2)), ((7,), (5,)), ((5, 6, 4), (1, 3, 2)), ((4,), (7,))])
def test_direct_path_equals_fft_path(rng, mode, boundary, convention, n, k):
    if mode == "valid" and any(kk > nn for kk, nn in zip(k, n)):
        convention = "matlab"
    h = rng.standard_normal(k)
    h.flat[0] = 0.0  # a zero tap is skipped by the direct path
    direct = gd.ConvolutionOperator(h, n, mode, boundary=boundary, convention=convention)
    assert direct._direct_plan() is not None  # few taps: direct
    fft = _fft_only(gd.ConvolutionOperator(h, n, mode, boundary=boundary, convention=convention))
    x = rng.standard_normal((2,) + n)
    y = rng.standard_normal((2,) + direct.spatial_out_shape)
    for a, b in ((direct.forward(x), fft.forward(x)), (direct.adjoint(y), fft.adjoint(y)),
                 (direct.normal(x), fft.normal(x))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(1.0, np.abs(b).max(initial=0.0)))


def test_direct_path_per_image_kernels_and_float32(rng):
    h = rng.standard_normal((3, 2, 3)).astype(np.float32)
    x = rng.standard_normal((3, 10, 9)).astype(np.float32)
    direct = gd.ConvolutionOperator(h, (10, 9), "same", boundary="reflect", ndim=2)
    fft = _fft_only(gd.ConvolutionOperator(h, (10, 9), "same", boundary="reflect", ndim=2))
    a, b = direct.forward(x), fft.forward(x)
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    np.testing.assert_allclose(direct.normal(x), fft.normal(x), rtol=0, atol=1e-5 * np.abs(b).max() * 10)


def test_large_kernels_take_the_fft_path(rng):
    op = gd.ConvolutionOperator(rng.standard_normal((3, 3)), (16, 16), "same")
    assert op._direct_plan() is None
    lap = gd.ConvolutionOperator(laplacian_kernel(2), (16, 16), "same")
    assert lap._direct_plan() is not None  # 5 nonzero taps of 9


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,h", [
    ("gaussian (rank 1)", gaussian_kernel(9, 1.5)),
    ("laplacian (rank 2)", laplacian_kernel(2)),
    ("gradient (rank 1)", difference_kernel(2, 1)),
    ("random (full rank)", np.random.default_rng(5).standard_normal((5, 4))),
    ("3-D gaussian (rank 1)", gaussian_kernel(5, 1.0, ndim=3)),
    ("3-D random", np.random.default_rng(6).standard_normal((3, 2, 3))),
])
def test_kernel_spectrum_equals_rfftn_of_embedded_kernel(dtype, name, h):
    bk = numpy_backend()
    nd = h.ndim
    for grid, shifts in (((32,) * nd, (0,) * nd), ((30, 17, 9)[:nd], (2, 1, 3)[:nd]),
                         ((3,) * nd, (1,) * nd)):  # a grid shorter than the kernel: taps wrap
        emb = np.zeros(grid)
        for tap in np.ndindex(*h.shape):
            pos = tuple((t - c) % G for t, c, G in zip(tap, shifts, grid))
            emb[pos] += h[tap]
        want = np.fft.rfftn(emb)
        got = kernel_rfft(bk, h.astype(dtype), grid, shifts, dtype)
        assert got.dtype == (np.complex64 if dtype == np.float32 else np.complex128)
        scale = np.abs(h).sum()
        assert np.abs(got - want).max() <= TOL[dtype] * scale, name
        pw = kernel_power(bk, h.astype(dtype), grid, dtype)
        assert np.abs(pw - np.abs(want) ** 2).max() <= 4 * TOL[dtype] * scale ** 2, name


def test_separable_terms_reconstruct_or_refuse(rng):
    g = gaussian_kernel(7, 1.2)
    (u, v), = separable_terms(g)
    np.testing.assert_allclose(np.outer(u, v), g, atol=1e-15)
    assert len(separable_terms(laplacian_kernel(2))) == 2
    assert separable_terms(rng.standard_normal((6, 6))) is None
    # float32 rounding of a rank-1 kernel is rank-1 at float32 precision, not at float64's.
    g32 = g.astype(np.float32)
    assert separable_terms(g32, dtype=np.float64) is None
    assert separable_terms(g32, dtype=np.float32) is not None


def test_kernel_batch_spectra(rng):
    bk = numpy_backend()
    h = rng.standard_normal((3, 4, 5))
    got = kernel_rfft(bk, h, (16, 16), (1, 2), np.float64)
    for b in range(3):
        emb = np.roll(np.pad(h[b], ((0, 12), (0, 11))), (-1, -2), axis=(0, 1))
        np.testing.assert_allclose(got[b], np.fft.rfft2(emb), atol=1e-12)


def test_closed_form_overflow_still_caught_when_the_bound_is_large():
    # The exact result is about 1e200 / 1e-155: beyond float64. The bound
    # (max|W| ||y||) cannot rule that out, so the result is checked and refused.
    y = np.full((16, 16), 1e200)
    with pytest.raises(ValueError, match="overflow"):
        gd.deconvolve(y, 1e-155 * np.array([[0.0, 0.1, 0.0], [0.1, 1.0, 0.1], [0.0, 0.1, 0.0]]),
                      mode="circular")
    # Small data: the bound proves the result finite; nothing to report.
    x = gd.deconvolve(np.ones((16, 16)), gaussian_kernel(3, 1.0), mode="circular", lam=1e-2)
    assert np.isfinite(x).all()
