"""The regularizer's normal operator ``sum_t w_t G_t^T G_t`` as one gather (kernels/stencil.cu).

:class:`gpu_deconv._direct.StencilSum` sums the normal operators of
small-kernel convolutions (the Laplacian, the forward differences, the
identity; any real kernel of a few taps) in every mode and boundary. Its
array-expression path (NumPy) is checked against the dense matrices of the
operators; the CUDA kernel, which evaluates the whole sum per output sample
(preimages of the fold near the faces, the autocorrelation stencil inside),
runs on the simulator's grid executor over the launcher's grid, a few blocks
and a single block, with the blocks in reverse order, against the same
matrices. Then the solver wiring: CG with a Laplacian or gradient regularizer
gives the same iterates through the kernel as through the array path.
Tolerances: 1e-12 (float64) and 2e-5 (float32) relative to the largest entry
(sums in another order).
"""

import math

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv import _cuda
from gpu_deconv._backend import get_backend, numpy_backend
from gpu_deconv._direct import StencilSum
from gpu_deconv._simulator import executor
from gpu_deconv.operators import ConvolutionOperator
from gpu_deconv.solvers.regularizers import difference_kernel, laplacian_kernel

from conftest import CUPY, SIMULATOR, assert_close

BOUNDARIES = tuple(_cuda.BOUNDARY_CODES)
OPS = numpy_backend().ops
I64 = np.int64

#: Spatial shapes: unit axes, kernels longer than the axis (periodic wraps more than once),
#: odd and even, and ones with an interior where the autocorrelation stencil applies.
SHAPES = {1: [(1,), (2,), (5,), (8,), (23,)], 2: [(1, 3), (4, 5), (7, 6), (19, 16)],
          3: [(3, 4, 5), (2, 1, 3), (9, 8, 7)]}


def _kernels(rng, nd):
    ks = [laplacian_kernel(nd)] + [difference_kernel(nd, a) for a in range(nd)]
    sparse = rng.standard_normal((2,) * nd)
    sparse.flat[0] = 0.0  # a zero tap: skipped by the plan, must not be read as one
    ks.append(sparse)
    ks.append(rng.standard_normal((3,) + (1,) * (nd - 1)))
    return ks


def _terms(rng, nd, n, mode, boundary, convention, count, identity=True):
    """(weight, operator) pairs on the shift-and-add path, plus the identity."""
    out = []
    for k in _kernels(rng, nd):
        if mode == "valid" and any(a > b for a, b in zip(k.shape, n)):
            continue
        op = ConvolutionOperator(k, n, mode, boundary=boundary, convention=convention)
        if op.direct_term() is not None:
            out.append((float(rng.uniform(0.5, 2.0)), op))
    rng.shuffle(out)
    out = out[:count]
    if identity:
        out.append((0.75, None))
    return out


def _stencil(terms, n):
    return StencilSum([(w, None, None) if op is None else (w,) + op.direct_term() for w, op in terms], n)


def _dense(terms, n):
    N = math.prod(n)
    M = np.zeros((N, N))
    for w, op in terms:
        if op is None:
            M += w * np.eye(N)
        else:
            G = op.to_matrix()
            M += w * (G.T @ G)
    return M


def _model(nd):
    modes = [(m, b) for m in ("same", "full", "valid") for b in BOUNDARIES] + [("circular", "periodic")]
    return modes


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_array_path_matches_dense_matrices(rng, nd):
    for n in SHAPES[nd]:
        for mode, boundary in _model(nd):
            for convention in ("scipy", "matlab"):
                terms = _terms(rng, nd, n, mode, boundary, convention, count=3)
                S = _stencil(terms, n)
                x = rng.standard_normal((2,) + n)
                scale = np.array([0.5, 3.0]).reshape((2,) + (1,) * nd)
                got = OPS.stencil_normal(x, S, (2,), scale)
                want = (x.reshape(2, -1) @ _dense(terms, n).T).reshape(x.shape) * scale
                assert_close(got, want, np.float64)


def test_tables_hold_the_autocorrelation_inside():
    n = (19, 16)
    op = ConvolutionOperator(laplacian_kernel(2), n, "same", boundary="symmetric")
    tab, vals = StencilSum([(2.0,) + op.direct_term()], n).tables()
    nterms, ncomb, ntaps = tab[:3]
    assert (nterms, ncomb, ntaps) == (1, 13, 5)
    # The box where the 13-point biharmonic stencil holds: two samples from each face.
    assert list(tab[3:7]) == [2, 16, 2, 13]
    coef = dict(zip(tab[9:9 + ncomb].tolist(), vals[:ncomb].tolist()))
    assert coef[0] == 2.0 * 20 and coef[1] == 2.0 * -8 and coef[2 * 16] == 2.0 * 1 and coef[17] == 2.0 * 2


def test_mixed_boundaries_have_no_single_kernel(rng):
    n = (6, 5)
    a = ConvolutionOperator(laplacian_kernel(2), n, "same", boundary="symmetric")
    b = ConvolutionOperator(laplacian_kernel(2), n, "same", boundary="zero")
    S = StencilSum([(1.0,) + a.direct_term(), (1.0,) + b.direct_term()], n)
    assert S.boundary is None
    x = rng.standard_normal((1,) + n)
    want = (x.reshape(1, -1) @ _dense([(1.0, a), (1.0, b)], n).T).reshape(x.shape)
    assert_close(OPS.stencil_normal(x, S, (1,)), want, np.float64)


# ------------------------------------------------------- the kernel on the simulator's executor
needs_compiler = pytest.mark.skipif(executor.compiler() is None,
                                    reason="no host C++ compiler (g++ or $CXX): the simulator builds nothing")
_MODULES: dict = {}


def _launch(dtype, grid, args, boundary, nd, reverse):
    from gpu_deconv._cuda import modules

    key = np.dtype(dtype).str
    if key not in _MODULES:
        code = (modules.source_dir() / "stencil.cu").read_text()
        _MODULES[key] = executor.Module(code, modules.compile_options(dtype))
    name = _cuda.kernel_name("stencil_normal", dtype, boundary=boundary, ndim=nd)
    _MODULES[key].launch(name, grid, (_cuda.BLOCK,), args, reverse=reverse)


def _check_kernel(rng, nd, dtype, shapes, modes, conventions):
    tol = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}[np.dtype(dtype)]
    for n in shapes:
        for mode, boundary in modes:
            for convention in conventions:
                terms = _terms(rng, nd, n, mode, boundary, convention, count=3)
                S = _stencil(terms, n)
                bnd = S.boundary
                tab, vals = S.tables()
                B = 3
                x = rng.standard_normal((B,) + n).astype(dtype)
                scale = rng.uniform(0.5, 2.0, B).astype(dtype)
                want = (x.reshape(B, -1).astype(np.float64) @ _dense(terms, n).T).reshape(x.shape)
                want *= scale.reshape((B,) + (1,) * nd)
                total = x.size
                dims = tuple(I64(v) for v in n + (1,) * (3 - nd))
                full = _cuda.grid_1d(total)
                for i, grid in enumerate([full, (max(1, min(3, full[0] - 1)),), (1,)]):
                    for stride, sc in ((1, scale), (0, scale[:1])):
                        ref = want if stride else want / scale.reshape((B,) + (1,) * nd) * scale[0]
                        base = rng.standard_normal(x.shape).astype(dtype)
                        for acc in (0, 1):  # written, or added to what out holds
                            got = base.copy() if acc else np.full(x.shape, np.nan, dtype=dtype)
                            args = (x, got, sc, tab, vals.astype(dtype), I64(total), I64(stride))
                            _launch(dtype, grid, args + dims + (I64(acc),), bnd, nd, reverse=i == 1)
                            exp = ref + base if acc else ref
                            err = np.abs(got - exp).max() / max(np.abs(exp).max(), 1e-300)
                            assert err <= tol, (n, mode, boundary, convention, grid, stride, acc, err)


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_kernel_matches_dense_matrices(rng, nd, dtype):
    # Every boundary and mode; a convention and a few shapes per dimension (the rest: -m simulator).
    shapes = SHAPES[nd][::2] if nd < 3 else SHAPES[nd][:2]
    _check_kernel(rng, nd, dtype, shapes, _model(nd), ("scipy",) if nd == 3 else ("scipy", "matlab"))


@needs_compiler
@pytest.mark.simulator
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_kernel_matches_dense_matrices_exhaustive(rng, nd, dtype):
    _check_kernel(rng, nd, dtype, SHAPES[nd], _model(nd), ("scipy", "matlab"))


# ------------------------------------------------------------- through the package on the simulator
needs_cupy = pytest.mark.skipif(CUPY is None, reason="no usable cupy (GPU_DECONV_SIMULATOR=1: the simulator)")


@pytest.mark.gpu
@needs_cupy
@pytest.mark.parametrize("reg", ["laplacian", "gradient", [(1.0, "laplacian"), (0.5, None)]])
@pytest.mark.parametrize("mode,boundary", [("valid", "zero"), ("same", "reflect"), ("full", "replicate")])
def test_cg_through_the_kernel_matches_numpy(rng, reg, mode, boundary):
    cp = CUPY
    h = np.outer([1.0, 2, 1], [1, 3, 3, 1]) / 32
    y = rng.standard_normal((3, 20, 21))
    kw = dict(mode=mode, boundary=boundary, lam=np.array([1e-2, 1e-1, 1.0]), reg=reg, method="cg",
              rtol=1e-10, return_info=True)
    x_np, info_np = gd.deconvolve(y, h, **kw)
    x_cp, info_cp = gd.deconvolve(cp.asarray(y), cp.asarray(h), **kw)
    assert_close(x_cp, x_np, np.float64, factor=1e3)
    assert np.all(np.abs(info_cp.iterations - info_np.iterations) <= 1)


@pytest.mark.gpu
@pytest.mark.skipif(not SIMULATOR, reason="launch counts on the simulator: GPU_DECONV_SIMULATOR=1")
def test_regularizer_is_one_launch():
    import cupy as cp

    from gpu_deconv._simulator import cupy_stub as st

    n = (16, 17)
    x = cp.asarray(np.random.default_rng(3).standard_normal((2,) + n))
    for reg in ("laplacian", "gradient"):
        ks = [laplacian_kernel(2)] if reg == "laplacian" else [difference_kernel(2, a) for a in range(2)]
        ops = [ConvolutionOperator(cp.asarray(k), n, "same", boundary="symmetric") for k in ks]
        S = StencilSum([(1.0,) + op.direct_term() for op in ops], n)
        x.get()
        st.STATS.reset()
        out = get_backend(x=x).ops.stencil_normal(x, S, (2,))
        assert dict(st.STATS.launches) == {"gd_stencil_normal_symmetric_2d_f64": 1}
        assert st.STATS.array_passes == 0
        want = _dense([(1.0, ConvolutionOperator(k, n, "same", boundary="symmetric")) for k in ks], n)
        assert_close(out, (x.get().reshape(2, -1) @ want.T).reshape(x.shape), np.float64)


@pytest.mark.gpu
@needs_cupy
def test_launcher_refuses_bad_operands(rng):
    from gpu_deconv._cuda.stencil import stencil_normal

    n = (5, 6)
    op = ConvolutionOperator(CUPY.asarray(laplacian_kernel(2)), n, "same", boundary="zero")
    S = StencilSum([(1.0,) + op.direct_term()], n)
    x = CUPY.asarray(rng.standard_normal((3,) + n))
    with pytest.raises(ValueError, match="one value per image"):
        stencil_normal(x, S, CUPY.ones(2))
    with pytest.raises(ValueError, match="trailing shape"):
        stencil_normal(x[..., :5], S)
    with pytest.raises(ValueError, match="out must not be x"):
        stencil_normal(x, S, out=x)
    with pytest.raises(ValueError, match="out must have shape"):
        stencil_normal(x, S, out=CUPY.zeros((2,) + n))
    out = CUPY.asarray(rng.standard_normal(x.shape))
    before = out.get()
    assert stencil_normal(x, S, out=out) is out
    assert_close(out.get() - before, stencil_normal(x, S), np.float64)
    other = ConvolutionOperator(CUPY.asarray(laplacian_kernel(2)), n, "same", boundary="reflect")
    mixed = StencilSum([(1.0,) + op.direct_term(), (1.0,) + other.direct_term()], n)
    with pytest.raises(ValueError, match="share one boundary"):
        stencil_normal(x, mixed)


@needs_compiler
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_kernel_under_address_sanitizer(tmp_path, rng, boundary):
    # Every buffer (x, out, the scale, both tables) is a heap block of exactly its size: a read
    # outside it (a wrong interior box, a preimage beyond the image) is reported.
    from test_kernels_simulated import sanitizer_or_skip

    from gpu_deconv._cuda import modules

    sanitizer_or_skip("address", tmp_path)
    cases = [(1, (5,), "full"), (1, (2,), "same"), (2, (7, 6), "valid"), (2, (19, 16), "same"),
             (3, (3, 4, 5), "full")]
    bufs, launches, wants = [], [], []
    for nd, n, mode in cases:
        terms = _terms(rng, nd, n, mode, boundary, "matlab", count=3)
        S = _stencil(terms, n)
        tab, vals = S.tables()
        x = rng.standard_normal((2,) + n)
        scale = np.array([1.5, 0.5])
        want = (x.reshape(2, -1) @ _dense(terms, n).T).reshape(x.shape)
        wants.append(want * scale.reshape((2,) + (1,) * nd))
        i = len(bufs)
        bufs += [x, np.zeros_like(x), scale, tab, vals]
        name = _cuda.kernel_name("stencil_normal", np.float64, boundary=S.boundary, ndim=nd)
        dims = tuple(I64(v) for v in n + (1,) * (3 - nd))
        args = tuple(("buf", i + j) for j in range(5)) + (I64(x.size), I64(1)) + dims + (I64(0),)
        launches.append((name, (2,), (_cuda.BLOCK,), args))
    code = (modules.source_dir() / "stencil.cu").read_text()
    mod = executor.Module(code, modules.compile_options(np.float64))
    out, _ = mod.run_sanitized("address", bufs, launches)
    for k, want in enumerate(wants):
        assert_close(out[5 * k + 1], want, np.float64)
