"""convolve / correlate / ConvolutionOperator against independent references.

Tolerances: float64 results agree with the direct sums to 1e-10 of the
largest entry, float32 to 1e-4 (see conftest.RTOL).
"""

import itertools

import numpy as np
import pytest
import scipy.signal

import gpu_deconv as gd

from conftest import assert_close, to_numpy
from reference import (
    conv2_matlab,
    filter2_matlab,
    psf2otf_convolve,
    ref_convolve,
    ref_matrix,
    scipy_convolve,
)

MODES = ["full", "same", "valid"]
BOUNDARIES = ["zero", "periodic", "symmetric", "reflect", "replicate"]
CONVENTIONS = ["scipy", "matlab"]
# circular is same + periodic: it takes no other boundary.
MODE_BOUNDARY = [(m, b) for m in MODES + ["circular"] for b in BOUNDARIES
                 if m != "circular" or b in ("zero", "periodic")]

# (image size, kernel size) per case: odd, even, larger than half the image, 1-tap.
SIZES = {1: [(9, 3), (10, 4), (7, 5), (6, 1)],
         2: [(7, 3), (8, 4), (6, 5)],
         3: [(5, 3), (6, 4)]}


def _cases():
    for nd, sizes in SIZES.items():
        for (n, k) in sizes:
            yield nd, n, k


CASES = list(_cases())


def _shapes(nd, n, k):
    # Vary the sizes per axis so a transposed index bug cannot hide.
    nshape = tuple(n + a for a in range(nd))
    kshape = tuple(max(1, k - (a % 2)) if k > 1 else 1 for a in range(nd))
    return nshape, kshape


@pytest.mark.parametrize("nd,n,k", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_zero_boundary_matches_scipy(xp, rng, nd, n, k, mode):
    nshape, kshape = _shapes(nd, n, k)
    x = rng.standard_normal((2,) + nshape)
    h = rng.standard_normal(kshape)
    got = gd.convolve(xp.asarray(x), xp.asarray(h), mode)
    assert_close(got, scipy_convolve(x, h, mode), np.float64)


@pytest.mark.parametrize("nd,n,k", CASES)
@pytest.mark.parametrize("mode", MODES)
def test_matlab_convention_matches_conv2(xp, rng, nd, n, k, mode):
    nshape, kshape = _shapes(nd, n, k)
    x = rng.standard_normal((3,) + nshape)
    h = rng.standard_normal(kshape)
    got = gd.convolve(xp.asarray(x), xp.asarray(h), mode, convention="matlab")
    assert_close(got, conv2_matlab(x, h, mode), np.float64)


def test_same_even_kernel_conventions_differ(rng):
    # The whole point of the convention switch: for an even kernel the
    # windows are one sample apart, and each matches its own reference.
    x = rng.standard_normal(12)
    h = rng.standard_normal(4)
    s = gd.convolve(x, h, "same")
    m = gd.convolve(x, h, "same", convention="matlab")
    full = scipy.signal.convolve(x, h, "full")
    np.testing.assert_allclose(s, full[1:13], atol=1e-12)
    np.testing.assert_allclose(m, full[2:14], atol=1e-12)
    assert np.abs(s - m).max() > 1e-3


@pytest.mark.parametrize("nd,n,k", CASES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_boundary_is_numpy_pad_then_valid(xp, rng, nd, n, k, mode, boundary, convention):
    nshape, kshape = _shapes(nd, n, k)
    x = rng.standard_normal((2,) + nshape)
    h = rng.standard_normal(kshape)
    got = gd.convolve(xp.asarray(x), xp.asarray(h), mode, boundary=boundary, convention=convention)
    assert_close(got, ref_convolve(x, h, mode, boundary, convention), np.float64)


@pytest.mark.parametrize("nd,n,k", CASES)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_circular_is_same_periodic(xp, rng, nd, n, k, convention):
    nshape, kshape = _shapes(nd, n, k)
    x = xp.asarray(rng.standard_normal((2,) + nshape))
    h = xp.asarray(rng.standard_normal(kshape))
    a = gd.convolve(x, h, "circular", convention=convention)
    b = gd.convolve(x, h, "same", boundary="periodic", convention=convention)
    assert_close(a, b, np.float64)


@pytest.mark.parametrize("nd,n,k", CASES)
def test_circular_matlab_is_psf2otf(rng, nd, n, k):
    nshape, kshape = _shapes(nd, n, k)
    x = rng.standard_normal(nshape)
    h = rng.standard_normal(kshape)
    got = gd.convolve(x, h, "circular", convention="matlab")
    assert_close(got, psf2otf_convolve(x, h), np.float64)


def test_circular_kernel_longer_than_period_aliases(rng):
    # Same + periodic with k > n: taps wrap around the period.
    x = rng.standard_normal(4)
    h = rng.standard_normal(7)
    got = gd.convolve(x, h, "circular")
    assert_close(got, ref_convolve(x, h, "same", "periodic"), np.float64)


@pytest.mark.parametrize("nd,n,k", CASES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_correlate(xp, rng, nd, n, k, mode, convention):
    nshape, kshape = _shapes(nd, n, k)
    x = rng.standard_normal(nshape)
    h = rng.standard_normal(kshape)
    got = gd.correlate(xp.asarray(x), xp.asarray(h), mode, convention=convention)
    if convention == "scipy":
        want = scipy.signal.correlate(x, h, mode)
    else:
        want = filter2_matlab(h, x, mode)
    assert_close(got, want, np.float64)


def test_valid_kernel_larger_than_image():
    x = np.ones((5, 6))
    h = np.ones((3, 7))
    with pytest.raises(ValueError, match="valid"):
        gd.convolve(x, h, "valid")
    out = gd.convolve(x, h, "valid", convention="matlab")
    assert out.shape == (3, 0)
    # Larger in every axis: convention="scipy" swaps the inputs as SciPy does; "matlab" never does.
    x3, h5 = np.arange(1.0, 4.0), np.arange(1.0, 6.0)
    assert_close(gd.convolve(x3, h5, "valid"), scipy.signal.convolve(x3, h5, "valid"), np.float64)
    assert_close(gd.correlate(x3, h5, "valid"), scipy.signal.correlate(x3, h5, "valid"), np.float64)
    assert gd.convolve(x3, h5, "valid", convention="matlab").shape == (0,)
    # The operator keeps its own rule: a kernel larger than its input is an error.
    with pytest.raises(ValueError, match="kernel"):
        gd.ConvolutionOperator(h5, (3,), "valid")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_input(xp, rng, dtype):
    x = xp.asarray(rng.standard_normal((6, 7)).astype(dtype))
    h = xp.asarray(rng.standard_normal((3, 3)))  # float64 kernel on purpose
    for mode in MODES + ["circular"]:
        y = gd.convolve(x, h, mode, boundary="zero")
        assert y.dtype == dtype
        assert type(y) is type(x)


def test_integer_input_promoted(rng):
    x = rng.integers(0, 255, (6, 6)).astype(np.uint8)
    h = np.ones((3, 3), dtype=np.int64)
    y = gd.convolve(x, h, "same")
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, scipy.signal.convolve(x.astype(float), h.astype(float), "same"),
                               atol=1e-9)
    assert gd.convolve(x, h, "same", dtype=np.float32).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_accuracy(rng, dtype):
    x = rng.standard_normal((3, 40, 33)).astype(dtype)
    h = rng.standard_normal((5, 6)).astype(dtype)
    for mode in MODES:
        assert_close(gd.convolve(x, h, mode), scipy_convolve(x, h, mode), dtype)


def test_per_image_kernels(rng):
    x = rng.standard_normal((3, 10, 9))
    h = rng.standard_normal((3, 4, 3))
    y = gd.convolve(x, h, "same", ndim=2)
    for b in range(3):
        assert_close(y[b], scipy.signal.convolve(x[b], h[b], "same"), np.float64)
    # Without ndim the same arrays mean one 3-D convolution.
    assert gd.convolve(x, h, "same").shape == (3, 10, 9)
    assert_close(gd.convolve(x, h, "same"), scipy.signal.convolve(x, h, "same"), np.float64)


def test_list_inputs_like_scipy():
    assert np.allclose(gd.convolve([1, 2, 3], [1, 1]), [1, 3, 5, 3])


# ---------------------------------------------------------------- operator


@pytest.mark.parametrize("nd,n,k", CASES)
@pytest.mark.parametrize("mode,boundary", MODE_BOUNDARY)
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_to_matrix_matches_independent_matrix(rng, nd, n, k, mode, boundary, convention):
    nshape, kshape = _shapes(nd, n, k)
    if np.prod(nshape) > 200:  # keep the dense reference small
        nshape = nshape[:2] + (kshape[-1],)
    h = rng.standard_normal(kshape)
    op = gd.ConvolutionOperator(h, nshape, mode, boundary=boundary, convention=convention)
    want = ref_matrix(h, nshape, mode, boundary, convention)
    np.testing.assert_allclose(op.to_matrix(), want, rtol=0, atol=1e-13)
    sparse = op.to_matrix(sparse=True)
    np.testing.assert_allclose(sparse.toarray(), want, rtol=0, atol=1e-13)
    # ...and the FFT path applies the same matrix.
    x = rng.standard_normal(nshape)
    assert_close(op.forward(x).ravel(), want @ x.ravel(), np.float64)
    r = rng.standard_normal(op.out_shape)
    assert_close(op.adjoint(r).ravel(), want.T @ r.ravel(), np.float64)


def test_seed_valid_example_is_E_C_P():
    # Seed 000: x in R^5, h = [1, 2, 3], valid: E (3x5) selects rows 2..4 of
    # the 5x5 circulant C_h, P = I_5.
    h = np.array([1.0, 2.0, 3.0])
    E = np.zeros((3, 5))
    E[0, 2] = E[1, 3] = E[2, 4] = 1
    C = np.array([[1, 0, 0, 3, 2],
                  [2, 1, 0, 0, 3],
                  [3, 2, 1, 0, 0],
                  [0, 3, 2, 1, 0],
                  [0, 0, 3, 2, 1]], dtype=float)
    P = np.eye(5)
    op = gd.ConvolutionOperator(h, (5,), "valid")
    np.testing.assert_array_equal(op.to_matrix(), E @ C @ P)
    x = np.arange(1.0, 6.0)
    np.testing.assert_allclose(op(x), E @ C @ P @ x, atol=1e-12)


def _dot_test(op, xp, rng, dtype, batch=(2,)):
    x = xp.asarray(rng.standard_normal(batch + op.spatial_in_shape).astype(dtype))
    y = xp.asarray(rng.standard_normal(batch + op.spatial_out_shape).astype(dtype))
    Ax = op.forward(x)
    Aty = op.adjoint(y)
    assert Ax.dtype == dtype and Aty.dtype == dtype
    lhs = float((to_numpy(Ax).astype(np.float64) * to_numpy(y)).sum())
    rhs = float((to_numpy(x).astype(np.float64) * to_numpy(Aty)).sum())
    scale = (np.linalg.norm(to_numpy(Ax)) * np.linalg.norm(to_numpy(y))
             + np.linalg.norm(to_numpy(x)) * np.linalg.norm(to_numpy(Aty)))
    tol = {np.float64: 1e-12, np.float32: 1e-5}[dtype]
    assert abs(lhs - rhs) <= tol * scale, (lhs, rhs)


@pytest.mark.parametrize("nd,n,k", CASES)
@pytest.mark.parametrize("mode,boundary", MODE_BOUNDARY)
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adjoint_dot_product(xp, rng, nd, n, k, mode, boundary, convention, dtype):
    nshape, kshape = _shapes(nd, n, k)
    h = xp.asarray(rng.standard_normal(kshape).astype(dtype))
    op = gd.ConvolutionOperator(h, nshape, mode, boundary=boundary, convention=convention)
    _dot_test(op, xp, rng, dtype)


@pytest.mark.parametrize("mode,boundary", MODE_BOUNDARY)
def test_normal_is_adjoint_of_forward(xp, rng, mode, boundary):
    for nshape, kshape in [((9, 8), (4, 3)), ((12,), (5,)), ((5, 6, 4), (3, 2, 3))]:
        h = xp.asarray(rng.standard_normal(kshape))
        op = gd.ConvolutionOperator(h, nshape, mode, boundary=boundary)
        x = xp.asarray(rng.standard_normal((3,) + nshape))
        assert_close(op.normal(x), op.adjoint(op.forward(x)), np.float64)


def test_operator_fixed_batch_and_kernel_batch(rng):
    h = rng.standard_normal((4, 3, 3))
    op = gd.ConvolutionOperator(h, (4, 8, 8), "valid", ndim=2)
    assert op.in_shape == (4, 8, 8) and op.out_shape == (4, 6, 6)
    x = rng.standard_normal((4, 8, 8))
    y = op(x)
    for b in range(4):
        assert_close(y[b], scipy.signal.convolve(x[b], h[b], "valid"), np.float64)
    mats = op.to_matrix()
    assert mats.shape == (4, 36, 64)
    np.testing.assert_allclose(mats[1] @ x[1].ravel(), y[1].ravel(), atol=1e-12)
    with pytest.raises(ValueError, match="batch shape"):
        op(rng.standard_normal((3, 8, 8)))
    _dot_test(op, np, rng, np.float64, batch=(4,))


def test_adjoint_view(rng):
    h = rng.standard_normal((3, 2))
    op = gd.ConvolutionOperator(h, (6, 5), "same", boundary="reflect")
    y = rng.standard_normal(op.out_shape)
    np.testing.assert_allclose(op.H(y), op.adjoint(y))
    np.testing.assert_allclose(op.H.to_matrix(), op.to_matrix().T)
    assert op.H.H is op


def test_linear_operator_interop(rng):
    from scipy.sparse.linalg import LinearOperator

    h = rng.standard_normal(3)
    op = gd.ConvolutionOperator(h, (8,), "full", boundary="symmetric")
    L = op.aslinearoperator()
    assert isinstance(L, LinearOperator) and L.shape == (10, 8)
    v = rng.standard_normal(8)
    np.testing.assert_allclose(L @ v, op.to_matrix() @ v, atol=1e-12)


def test_spectrum_cached_once(rng):
    gd.clear_cache()
    h = rng.standard_normal((5, 5))
    op = gd.ConvolutionOperator(h, (32, 32), "same")
    s1 = op.spectrum()
    assert op.spectrum() is s1
    # A second operator with the same kernel and geometry reuses the cached spectrum.
    op2 = gd.ConvolutionOperator(h.copy(), (32, 32), "same")
    assert op2.spectrum() is s1
    # Different kernel content: a different spectrum.
    op3 = gd.ConvolutionOperator(h + 1, (32, 32), "same")
    assert op3.spectrum() is not s1


def test_grid_is_fast_and_sufficient():
    op = gd.ConvolutionOperator(np.ones((31, 31)), (2048, 2048), "valid")
    assert op.grid_shape == (2048, 2048)  # valid needs no padding at all
    op = gd.ConvolutionOperator(np.ones(31), (1000,), "full")
    assert op.grid_shape[0] >= 1030
    op = gd.ConvolutionOperator(np.ones(8), (97,), "circular")
    assert op.grid_shape == (97,)  # the period is part of the model


def test_many_modes_one_batch_shape(rng):
    # Leading batch axes of any rank pass through.
    x = rng.standard_normal((2, 3, 7, 6))
    h = rng.standard_normal((3, 2))
    y = gd.convolve(x, h, "full", boundary="replicate")
    assert y.shape == (2, 3, 9, 7)
    want = np.stack([ref_convolve(xi, h, "full", "replicate") for xi in x.reshape(6, 7, 6)])
    assert_close(y.reshape(6, 9, 7), want, np.float64)


@pytest.mark.parametrize("mode,boundary", list(itertools.product(MODES, BOUNDARIES)))
def test_deterministic(rng, mode, boundary):
    x = rng.standard_normal((4, 33, 20))
    h = rng.standard_normal((6, 5))
    a = gd.convolve(x, h, mode, boundary=boundary)
    b = gd.convolve(x, h, mode, boundary=boundary)
    assert np.array_equal(a, b)
