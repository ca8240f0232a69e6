"""Choosing lam: GCV and the discrepancy principle against dense influence matrices.

The dense systems come from tests/reference.py (numpy.pad + direct sums), not
from the package: ``A(lam) = H (H^T H + lam R + alpha I)^-1 H^T``, the residual
``||H x_lam - y||^2`` and ``tr(I - A)``. Closed forms agree with them to 1e-9
relative in float64 (1e-5 for float32 data: the criteria are summed in float64
from float32 spectra). The CG models' trace is a Hutchinson estimate, so there
the test is on the criterion at the chosen lam (within a few percent of the
dense minimum) rather than on the estimate itself.
"""

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv.data import gaussian_kernel, scene
from gpu_deconv.solvers import deconvolve as dec
from gpu_deconv.solvers import lam as lamsel
from gpu_deconv.solvers.regularizers import laplacian_kernel

from conftest import to_numpy
from reference import ref_matrix


def _reg_mode(mode, boundary):
    circ = mode == "circular" or (mode == "same" and boundary == "periodic")
    return ("same", "periodic") if circ else ("same", boundary)


class Dense:
    """Dense matrices of a regularized problem with a Laplacian (built once, evaluated at many lam)."""

    def __init__(self, h, n, mode, boundary, convention="scipy"):
        self.H = ref_matrix(h, n, mode, boundary, convention)
        rm, rb = _reg_mode(mode, boundary)
        G = ref_matrix(laplacian_kernel(len(n)), n, rm, rb, convention)
        self.HtH, self.GtG = self.H.T @ self.H, G.T @ G

    def terms(self, y, lam, alpha=0.0, z=None):
        """(||H x - y||^2, tr(I - A)) at lam."""
        H = self.H
        M = self.HtH + lam * self.GtG + alpha * np.eye(H.shape[1])
        b = H.T @ y.ravel() + (alpha * z.ravel() if z is not None else 0.0)
        x = np.linalg.solve(M, b)
        A = H @ np.linalg.solve(M, H.T)
        r = H @ x - y.ravel()
        return float(r @ r), float(H.shape[0] - np.trace(A))

    def gcv(self, y, lam):
        res, tr = self.terms(y, lam)
        return y.size * res / tr ** 2


def dense_terms(h, n, mode, boundary, y, lam, alpha=0.0, z=None):
    return Dense(h, n, mode, boundary).terms(y, lam, alpha, z)


CLOSED = [
    ("fft", "circular", "periodic", (24,), (5,)),
    ("fft", "circular", "periodic", (10, 9), (3, 4)),
    ("dct", "same", "symmetric", (11, 8), (3, 5)),
    ("dct", "same", "symmetric", (5, 4, 6), (3, 3, 1)),
]


def _symmetric_kernel(rng, shape):
    """A kernel symmetric about its centre in every axis (odd sizes), for the DCT cases."""
    k = rng.random(shape)
    for ax in range(len(shape)):
        k = k + np.flip(k, ax)
    return k / k.sum()


@pytest.mark.parametrize("method, mode, boundary, n, k", CLOSED)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_spectral_terms_match_dense(rng, method, mode, boundary, n, k, dtype, alpha):
    h = _symmetric_kernel(rng, k) if method == "dct" else rng.random(k)
    y = rng.standard_normal(n).astype(dtype)
    z = rng.standard_normal(n) if alpha else None
    prob = dec.build_problem(y, h, lam=1.0, reg="laplacian", mode=mode, boundary=boundary, alpha=alpha,
                             z=z)
    assert dec.choose_method(prob, "auto") == method
    model = lamsel.spectral_model(prob, method)
    tol = 1e-9 if dtype == np.float64 else 1e-5
    for lam in (1e-4, 3e-2, 2.0):
        res, tr = model.evaluate(np.array([lam]))
        dres, dtr = dense_terms(h, n, mode, boundary, y.astype(np.float64), lam, alpha=alpha, z=z)
        assert abs(res[0] - dres) <= tol * max(dres, 1e-300), (lam, res[0], dres)
        assert abs(tr[0] - dtr) <= tol * dtr, (lam, tr[0], dtr)


def test_spectral_terms_per_image_kernels(rng):
    """One kernel per image: each image's criterion is that of its own kernel."""
    n = (12, 10)
    hs = [rng.random((3, 3)), rng.random((5, 3))]
    hs[0] = np.pad(hs[0], ((1, 1), (0, 0)))  # one shape for the stack
    ys = rng.standard_normal((2,) + n)
    prob = dec.build_problem(ys, hs, lam=1.0, reg="laplacian", mode="circular")
    model = lamsel.spectral_model(prob, "fft")
    res, tr = model.evaluate(np.array([1e-2, 5e-1]))
    for b, lam in enumerate((1e-2, 5e-1)):
        dres, dtr = dense_terms(hs[b], n, "circular", "periodic", ys[b], lam)
        assert abs(res[b] - dres) <= 1e-9 * dres
        assert abs(tr[b] - dtr) <= 1e-9 * dtr


@pytest.mark.parametrize("method, mode, boundary, n, k", CLOSED[:3])
def test_gcv_choice_minimises_dense_gcv(rng, method, mode, boundary, n, k):
    h = _symmetric_kernel(rng, k) if method == "dct" else rng.random(k) + 0.2
    x = np.cumsum(rng.standard_normal(n), axis=-1)
    y = gd.convolve(x, h, mode, boundary=boundary) + 0.3 * rng.standard_normal(n)
    lam, curve = gd.choose_lam(y, h, reg="laplacian", mode=mode, boundary=boundary, return_curve=True)
    D = Dense(h, n, mode, boundary)
    grid = 10.0 ** np.linspace(-8, 3, 221)
    g = np.array([D.gcv(y, t) for t in grid])
    assert D.gcv(y, float(lam)) <= g.min() * (1 + 1e-4)
    # the curve holds what was evaluated: the exact GCV at those lam (where the
    # dense solve itself is well conditioned)
    ok = np.isfinite(curve.lam)
    assert curve.exact[ok].all() and ok.sum() >= 15
    ok &= curve.lam >= 1e-5
    for t, v in list(zip(curve.lam[ok], curve.value[ok]))[::3]:
        assert v == pytest.approx(D.gcv(y, t), rel=1e-8)


@pytest.mark.parametrize("method, mode, boundary, n, k", CLOSED[:3])
def test_discrepancy_closed_form_hits_target(rng, method, mode, boundary, n, k):
    h = _symmetric_kernel(rng, k) if method == "dct" else rng.random(k) + 0.2
    x = np.cumsum(rng.standard_normal(n), axis=-1)
    y = gd.convolve(x, h, mode, boundary=boundary) + 0.3 * rng.standard_normal(n)
    lam = gd.choose_lam(y, h, "discrepancy", noise_sigma=0.25, reg="laplacian", mode=mode,
                        boundary=boundary)
    res, _ = dense_terms(h, n, mode, boundary, y, float(lam))
    assert res == pytest.approx(y.size * 0.25 ** 2, rel=1e-3)


@pytest.mark.parametrize("mode, boundary", [("same", "zero"), ("valid", "zero"), ("same", "reflect"),
                                            ("full", "zero")])
def test_gcv_cg_modes_near_dense_minimum(rng, mode, boundary):
    """Surrogate + exact refinement (Hutchinson trace): GCV at the chosen lam near the dense minimum."""
    n = (20, 18)
    h = gaussian_kernel(5, 1.2)
    x = scene(n)
    y = gd.convolve(x, h, mode, boundary=boundary)
    y = y + 0.02 * rng.standard_normal(y.shape)
    xs = x.shape if mode != "full" else tuple(a - b + 1 for a, b in zip(y.shape, h.shape))
    lam = gd.choose_lam(y, h, reg="laplacian", mode=mode, boundary=boundary)
    D = Dense(h, xs, mode, boundary)
    grid = 10.0 ** np.linspace(-6, 1, 22)
    g = np.array([D.gcv(y, t) for t in grid])
    assert g.argmin() not in (0, grid.size - 1)
    assert D.gcv(y, float(lam)) <= g.min() * 1.05


@pytest.mark.parametrize("mode, boundary", [("same", "zero"), ("valid", "zero")])
def test_discrepancy_cg_modes_hits_target(rng, mode, boundary):
    n = (20, 18)
    h = gaussian_kernel(5, 1.2)
    y = gd.convolve(scene(n), h, mode, boundary=boundary)
    y = y + 0.02 * rng.standard_normal(y.shape)
    xs = n
    lam = gd.choose_lam(y, h, "discrepancy", noise_sigma=0.02, reg="laplacian", mode=mode,
                        boundary=boundary)
    res, _ = dense_terms(h, xs, mode, boundary, y, float(lam))
    assert res == pytest.approx(y.size * 0.02 ** 2, rel=0.03)


def test_deconvolve_reports_lam_and_curve(rng):
    n = (32, 32)
    h = gaussian_kernel(7, 1.5)
    y = gd.convolve(scene(n), h, "circular")[None] + np.array([0.005, 0.05])[:, None, None] * \
        rng.standard_normal((2,) + n)
    x, info = gd.deconvolve(y, h, mode="circular", lam="gcv", reg="laplacian", return_info=True)
    assert info.lam.shape == (2,) and info.lam[1] > info.lam[0] > 0  # more noise, more smoothing
    assert info.lam_curve.lam.shape[:1] == (2,) and info.lam_curve.criterion == "gcv"
    # the answer is the solve at the chosen lam
    x2 = gd.deconvolve(y, h, mode="circular", lam=info.lam, reg="laplacian")
    np.testing.assert_allclose(x, x2, rtol=0, atol=1e-12)
    _, info_n = gd.deconvolve(y, h, mode="circular", lam=[1e-3, 2e-3], reg="laplacian", return_info=True)
    np.testing.assert_array_equal(info_n.lam, [1e-3, 2e-3])
    assert info_n.lam_curve is None


def test_choose_lam_chunks_agree(rng):
    n = (24, 20)
    h = gaussian_kernel(5, 1.0)
    y = gd.convolve(scene(n), h, "same")[None] + 0.02 * rng.standard_normal((3,) + n)
    for mode, bd in (("circular", "zero"), ("same", "symmetric"), ("same", "zero")):
        a = gd.choose_lam(y, h, mode=mode, boundary=bd, reg="laplacian")
        b = gd.choose_lam(y, h, mode=mode, boundary=bd, reg="laplacian", batch_size=1)
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("shape, k", [((200,), (9,)), ((12, 14, 10), (3, 3, 3))])
def test_other_ndims(rng, shape, k, xp):
    h = np.ones(k) / np.prod(k)
    y = gd.convolve(rng.random(shape), h, "same") + 0.01 * rng.standard_normal(shape)
    for mode in ("circular", "same"):
        lam = gd.choose_lam(xp.asarray(y), xp.asarray(h), mode=mode, reg="gradient")
        assert lam.shape == () and 0 < float(lam) < np.inf


def test_gcv_quality_against_oracle(rng):
    """On a blurred noisy scene, GCV's PSNR is within 0.5 dB of the best lam on a dense grid."""
    n = (96, 96)
    h = gaussian_kernel(9, 1.8)
    x = scene(n)
    y = gd.convolve(x, h, "circular") + 0.02 * rng.standard_normal(n)

    def psnr(a):
        return -10 * np.log10(np.mean((a - x) ** 2))

    best = max(psnr(gd.deconvolve(y, h, mode="circular", lam=t, reg="laplacian"))
               for t in 10.0 ** np.arange(-5, 1, 0.125))
    got = psnr(gd.deconvolve(y, h, mode="circular", lam="gcv", reg="laplacian"))
    assert got >= best - 0.5 and got > psnr(y)


# --------------------------------------------------------------- noise estimate
@pytest.mark.parametrize("shape", [(4000,), (256, 256), (40, 40, 40)])
def test_estimate_noise_known_sigma(rng, shape, xp):
    sig = np.array([0.01, 0.1])
    if len(shape) == 2:
        smooth = gd.convolve(scene(shape), gaussian_kernel(7, 1.5), "same", boundary="symmetric")
    else:  # smooth content: a product of slow waves
        grids = np.meshgrid(*[np.linspace(0, 3, s) for s in shape], indexing="ij")
        smooth = np.prod([np.sin(g + i) for i, g in enumerate(grids)], axis=0)
    y = smooth[None] + sig.reshape((2,) + (1,) * len(shape)) * rng.standard_normal((2,) + shape)
    est = gd.estimate_noise(xp.asarray(y), ndim=len(shape))
    assert isinstance(est, np.ndarray) and est.shape == (2,)
    np.testing.assert_allclose(est, sig, rtol=0.08)


def test_estimate_noise_single_image_is_0d(rng):
    est = gd.estimate_noise(rng.standard_normal((64, 64)))
    assert est.shape == () and abs(float(est) - 1) < 0.05


# --------------------------------------------------------------------- errors
def test_bad_arguments(rng):
    y = rng.random((16, 16))
    h = np.ones((3, 3)) / 9
    with pytest.raises(TypeError, match="lam must be a non-negative number, one per image, 'gcv' or"):
        gd.deconvolve(y, h, lam="auto")
    with pytest.raises(ValueError, match="noise_sigma must be positive"):
        gd.deconvolve(y, h, lam="discrepancy", noise_sigma=0.0)
    with pytest.raises(ValueError, match="noise_sigma must be"):
        gd.deconvolve(y, h, lam="discrepancy", noise_sigma=-1.0)
    with pytest.raises(ValueError, match="fft_approx"):
        gd.deconvolve(y, h, lam="gcv", method="fft_approx")
    with pytest.raises(ValueError, match="noise_sigma is used only"):
        gd.deconvolve(y, h, lam=1e-2, noise_sigma=0.1)
    with pytest.raises(ValueError, match="criterion must be one of"):
        gd.choose_lam(y, h, "lcurve")
    with pytest.raises(ValueError, match="noise_sigma is used only"):
        gd.choose_lam(y, h, noise_sigma=0.1)
    with pytest.raises(ValueError, match="spatial shape"):
        gd.estimate_noise(np.ones((5, 1)))
    with pytest.raises(TypeError, match="noise_sigma"):
        gd.choose_lam(y, h, "discrepancy", noise_sigma="0.1")


def test_result_is_on_input_module(rng, xp):
    y = xp.asarray(rng.random((16, 16)))
    x, info = gd.deconvolve(y, xp.asarray(np.ones((3, 3)) / 9), lam="gcv", mode="circular",
                            return_info=True)
    assert type(x) is type(y) and to_numpy(x).shape == (16, 16) and info.lam.shape == ()


def test_estimate_noise_poisson_is_rms(rng):
    """Poisson noise: the estimate is the root mean square noise, not the median level."""
    yc = gd.convolve(scene((256, 256)), gaussian_kernel(9, 2.0), "same", boundary="symmetric")
    y = rng.poisson(1000 * yc) / 1000
    assert float(gd.estimate_noise(y)) == pytest.approx(np.std(y - yc), rel=0.05)


@pytest.mark.parametrize("mode, boundary", [("circular", "zero"), ("same", "zero")])
def test_discrepancy_unattainable_sigma_falls_back_to_gcv(rng, mode, boundary):
    """A sigma below what any lam can fit would pick the smallest lam: warn and use GCV there."""
    n = (40, 40)
    h = gaussian_kernel(9, 2.0)
    y = gd.convolve(scene(n), h, mode, boundary=boundary) + 0.02 * rng.standard_normal(n)
    with pytest.warns(gd.LamSelectionWarning, match="used lam='gcv' there"):
        lam = gd.choose_lam(y, h, "discrepancy", noise_sigma=1e-6, mode=mode, boundary=boundary,
                            reg="laplacian")
    assert float(lam) == pytest.approx(float(gd.choose_lam(y, h, mode=mode, boundary=boundary,
                                                            reg="laplacian")), rel=1e-9)
    with pytest.warns(gd.LamSelectionWarning, match="largest lam"):
        gd.choose_lam(y, h, "discrepancy", noise_sigma=1e3, mode=mode, boundary=boundary, reg="laplacian")


@pytest.mark.parametrize("mode", ["circular", "same"])
def test_chosen_lam_follows_kernel_and_data_scale(rng, mode):
    """h -> c h, y -> d y: the chosen lam becomes c^2 lam (x -> d/c x), also far outside float range."""
    n = (32, 30)
    h = gaussian_kernel(7, 1.5)
    y = gd.convolve(scene(n), h, mode) + 0.02 * rng.standard_normal(n)
    lam, x = None, None
    # (c^2 lam and d/c x must stay float64 numbers)
    for c, d in ((1.0, 1.0), (2.0 ** -300, 1.0), (2.0 ** 300, 2.0 ** -300)):
        xs, info = gd.deconvolve(y * d, h * c, mode=mode, lam="gcv", reg="laplacian", return_info=True)
        if lam is None:
            lam, x = float(info.lam), xs
            continue
        assert float(info.lam) == pytest.approx(lam * c * c, rel=1e-9)
        np.testing.assert_allclose(xs * (c / d), x, rtol=1e-9, atol=1e-9 * np.abs(x).max())
    s = gd.choose_lam(y * 2.0 ** -700, h, "discrepancy", noise_sigma=0.02 * 2.0 ** -700, mode=mode,
                      reg="laplacian")
    assert float(s) == pytest.approx(float(gd.choose_lam(y, h, "discrepancy", noise_sigma=0.02, mode=mode,
                                                         reg="laplacian")), rel=1e-9)


def test_complex_data_with_a_chosen_lam_is_refused_clearly(rng):
    y = rng.standard_normal((16, 16)) + 1j * rng.standard_normal((16, 16))
    with pytest.raises(ValueError, match="not available for complex data"):
        gd.deconvolve(y, np.ones((3, 3)) / 9, mode="circular", lam="gcv")


def test_axes_with_a_chosen_lam(rng):
    """Channels-last data with axes=: the same lam per channel as the channels-first batch."""
    h = gaussian_kernel(5, 1.0)
    y = gd.convolve(scene((24, 20)), h, "circular")[None] + 0.02 * rng.standard_normal((3, 24, 20))
    x, info = gd.deconvolve(np.moveaxis(y, 0, -1), h, mode="circular", lam="gcv", axes=(0, 1),
                            return_info=True)
    x2, info2 = gd.deconvolve(y, h, mode="circular", lam="gcv", return_info=True)
    np.testing.assert_allclose(info.lam, info2.lam, rtol=1e-12)
    np.testing.assert_allclose(np.moveaxis(x, -1, 0), x2, rtol=1e-12, atol=1e-12)
