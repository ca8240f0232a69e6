"""grad_x and grad_h against central finite differences (float64) and the explicit matrices."""

import numpy as np
import pytest

import gpu_deconv as gd

from conftest import assert_close
from reference import ref_convolve, ref_matrix

MODES = ["full", "same", "valid", "circular"]
BOUNDARIES = ["zero", "periodic", "symmetric", "reflect", "replicate"]
COMBOS = [(m, b) for m in MODES for b in BOUNDARIES if m != "circular" or b == "periodic"]
SHAPES = [((9,), (4,)), ((8,), (3,)), ((6, 7), (3, 2)), ((5, 4), (4, 3)), ((4, 5, 3), (2, 3, 2))]


def _loss(x, h, y, mode, boundary, convention):
    r = ref_convolve(x, h, mode, boundary, convention) - y
    return 0.5 * float((r * r).sum())


def _fd(f, v, eps=1e-6):
    g = np.zeros_like(v)
    for i in np.ndindex(v.shape):
        e = np.zeros_like(v)
        e[i] = eps
        g[i] = (f(v + e) - f(v - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("mode,boundary", COMBOS)
@pytest.mark.parametrize("nshape,kshape", SHAPES)
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
def test_grad_x_finite_differences(rng, mode, boundary, nshape, kshape, convention):
    x = rng.standard_normal(nshape)
    h = rng.standard_normal(kshape)
    y = rng.standard_normal(gd.convolve(x, h, mode, boundary=boundary, convention=convention).shape)
    g = gd.grad_x(x, h, y, mode, boundary=boundary, convention=convention)
    fd = _fd(lambda v: _loss(v, h, y, mode, boundary, convention), x)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("mode,boundary", COMBOS)
@pytest.mark.parametrize("nshape,kshape", SHAPES)
@pytest.mark.parametrize("convention", ["scipy", "matlab"])
def test_grad_h_finite_differences(rng, mode, boundary, nshape, kshape, convention):
    x = rng.standard_normal((2,) + nshape)  # batch of two images, one kernel
    h = rng.standard_normal(kshape)
    y = rng.standard_normal(gd.convolve(x, h, mode, boundary=boundary, convention=convention).shape)
    g = gd.grad_h(x, h, y, mode, boundary=boundary, convention=convention)
    assert g.shape == h.shape
    fd = _fd(lambda v: _loss(x, v, y, mode, boundary, convention), h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())


def test_same_mode_even_kernel_image_gradient_is_not_the_matlab_formula(rng):
    # conv2(r, rot180(h), 'same') is the textbook formula; it is off by one
    # sample for even kernels. The adjoint-derived gradient is right.
    x = rng.standard_normal((7, 8))
    h = rng.standard_normal((4, 4))
    y = rng.standard_normal((7, 8))
    g = gd.grad_x(x, h, y, "same", convention="matlab")
    A = ref_matrix(h, x.shape, "same", "zero", "matlab")
    want = (A.T @ (A @ x.ravel() - y.ravel())).reshape(x.shape)
    assert_close(g, want, np.float64)
    r = gd.convolve(x, h, "same", convention="matlab") - y
    textbook = gd.convolve(r, h[::-1, ::-1], "same", convention="matlab")
    assert np.abs(textbook - want).max() > 1e-3


def test_seed_001_valid_formulas(rng):
    # Seed 001 (valid mode, MATLAB): grad_h = conv2(rot180(x), r, 'valid'),
    # grad_x = conv2(r, rot180(h), 'full').
    x = rng.standard_normal((9, 8))
    h = rng.standard_normal((3, 4))
    y = rng.standard_normal((7, 5))
    r = gd.convolve(x, h, "valid") - y
    np.testing.assert_allclose(gd.grad_h(x, h, y, "valid"),
                               gd.convolve(x[::-1, ::-1].copy(), r, "valid"), atol=1e-12)
    np.testing.assert_allclose(gd.grad_x(x, h, y, "valid"),
                               gd.convolve(r, h[::-1, ::-1].copy(), "full"), atol=1e-12)


def test_grad_batched_and_per_image_kernels(rng):
    x = rng.standard_normal((3, 10, 9))
    h = rng.standard_normal((3, 3, 3))
    y = rng.standard_normal((3, 10, 9))
    gx = gd.grad_x(x, h, y, "same", boundary="symmetric", ndim=2)
    gh = gd.grad_h(x, h, y, "same", boundary="symmetric", ndim=2)
    assert gh.shape == h.shape
    for b in range(3):
        assert_close(gx[b], gd.grad_x(x[b], h[b], y[b], "same", boundary="symmetric"), np.float64)
        assert_close(gh[b], gd.grad_h(x[b], h[b], y[b], "same", boundary="symmetric"), np.float64)
    # One kernel for the batch: gradients add up over images.
    g_sum = gd.grad_h(x, h[0], y, "same", boundary="symmetric")
    g_each = sum(gd.grad_h(x[b], h[0], y[b], "same", boundary="symmetric") for b in range(3))
    assert_close(g_sum, g_each, np.float64)


def test_grad_y_shape_checked(rng):
    x = rng.standard_normal((6, 6))
    h = rng.standard_normal((3, 3))
    with pytest.raises(ValueError, match="y must have shape"):
        gd.grad_x(x, h, np.zeros((6, 6)), "valid")
    with pytest.raises(ValueError, match="y must have shape"):
        gd.grad_h(x, h, np.zeros((4, 5)), "valid")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_dtype(xp, rng, dtype):
    x = xp.asarray(rng.standard_normal((5, 6)).astype(dtype))
    h = xp.asarray(rng.standard_normal((2, 3)).astype(dtype))
    y = xp.asarray(rng.standard_normal((6, 8)).astype(dtype))
    assert gd.grad_x(x, h, y).dtype == dtype
    assert gd.grad_h(x, h, y).dtype == dtype
