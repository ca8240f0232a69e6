"""The CG preconditioners: the band model is exact where it claims to be, and everything is SPD."""

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv._backend import numpy_backend
from gpu_deconv.data import gaussian_kernel, scene
from gpu_deconv.solvers.deconvolve import build_problem
from gpu_deconv.solvers.precond import band_rows, band_stencil, make_preconditioner
from gpu_deconv.solvers.regularizers import laplacian_kernel

COMBOS = [(m, b) for m in ("same", "valid", "full")
          for b in ("zero", "periodic", "symmetric", "reflect", "replicate")]


@pytest.mark.parametrize("mode,boundary", COMBOS)
@pytest.mark.parametrize("axis", [0, 1])
def test_band_stencil_matches_brute_force(rng, mode, boundary, axis):
    # (G^T G)[(r, j), (r', j + d)] read off G^T G applied to deltas, far
    # from the faces the band does not touch.
    n = (30, 31)
    g = rng.standard_normal((4, 3))
    op = gd.ConvolutionOperator(g, n, mode, boundary=boundary)
    w = 5
    rows = band_rows(n[axis], w)
    S = band_stencil(g, op.plans[axis], op.boundary, axis, rows)
    kt = g.shape[1 - axis]
    j0 = n[1 - axis] // 2
    for rp in range(2 * w):
        row = rows[rp]
        delta = np.zeros(n)
        idx = [0, 0]
        idx[axis], idx[1 - axis] = row, j0
        delta[tuple(idx)] = 1.0
        col = op.normal(delta)
        for r in range(2 * w):
            rr = rows[r]
            for d in range(-(kt - 1), kt):
                # S[r, r', d] is the coefficient of x[(r', j + d)] in (Mx)[(r, j)],
                # i.e. M[(r, j0 - d), (r', j0)].
                pos = [0, 0]
                pos[axis], pos[1 - axis] = rr, j0 - d
                assert abs(S[r, rp, d + kt - 1] - col[tuple(pos)]) < 1e-10


def _dense_preconditioner(mode, boundary, n, h, lam, kind):
    y_shape = gd.ConvolutionOperator(h, n, mode, boundary=boundary).out_shape
    prob = build_problem(np.ones((len(lam),) + y_shape), h, lam=np.array(lam), reg="laplacian",
                         mode=mode, boundary=boundary)
    P = make_preconditioner(prob.bk, prob, prob.dtype, kind)
    N = int(np.prod(n))
    eye = np.eye(N).reshape((N,) + n)
    cols = np.stack([P(np.broadcast_to(e, (len(lam),) + n).copy()) for e in eye], axis=-1)
    return cols.reshape(len(lam), N, N)


@pytest.mark.parametrize("mode,boundary", [("valid", "zero"), ("same", "reflect"), ("same", "symmetric"),
                                           ("full", "periodic")])
@pytest.mark.parametrize("kind", ["circulant", "band"])
def test_preconditioner_is_spd(rng, mode, boundary, kind):
    h = rng.standard_normal((3, 4))
    for P in _dense_preconditioner(mode, boundary, (9, 10), h, [1e-3, 0.5], kind):
        np.testing.assert_allclose(P, P.T, atol=1e-12 * np.abs(P).max())
        assert np.linalg.eigvalsh(0.5 * (P + P.T)).min() > 0


def test_band_preconditioner_cuts_iterations_five_fold():
    # The benchmark problem at a test-sized scale: valid mode, 15x15 Gaussian
    # (sigma 2.5), lam 1e-3, Laplacian. Iteration counts are deterministic.
    x_true = scene((96, 96))
    h = gaussian_kernel(15, 2.5)
    y = gd.convolve(x_true, h, "valid")
    y = y + 0.01 * np.random.default_rng(0).standard_normal(y.shape)
    kw = dict(mode="valid", lam=1e-3, reg="laplacian", return_info=True)
    ref = gd.deconvolve(y, h, rtol=1e-12, **kw)[0]
    plain, ip = gd.deconvolve(y, h, precondition=False, rtol=1e-6, **kw)
    band, ib = gd.deconvolve(y, h, rtol=1e-6, **kw)
    err = lambda x: np.linalg.norm(x - ref) / np.linalg.norm(ref)  # noqa: E731
    assert err(band) <= err(plain)  # at least as accurate...
    assert 5 * ib.iterations <= ip.iterations  # ...in at most a fifth of the iterations


def test_preconditioner_kind_choices(rng):
    y = rng.standard_normal((20, 20))
    h = gaussian_kernel(5, 1.0)
    xs = [gd.deconvolve(y, h, mode="valid", lam=1e-2, reg="laplacian", precondition=p, rtol=1e-11)
          for p in (False, "circulant", "band", True)]
    for x in xs[1:]:
        np.testing.assert_allclose(x, xs[0], rtol=0, atol=1e-8 * np.abs(xs[0]).max())
    with pytest.raises(ValueError):
        make_preconditioner(numpy_backend(), None, np.float64, "jacobi")
    assert laplacian_kernel(1).tolist() == [1.0, -2.0, 1.0]


@pytest.mark.parametrize("lam", [0.0, 1e-300])
def test_singular_valid_system_gives_the_minimiser_nearest_x0(rng, lam):
    # valid mode has a null space; with lam ~ 0 an SPD preconditioner would
    # steer PCG to the minimiser nearest x0 in its own metric (measured: a
    # null-space component 2e3 x the scene). The answer must be Euclidean-nearest:
    # x0 + pinv(A) (y - A x0), the same as plain CG gives.
    n = (14, 15)
    h = rng.random((3, 4)) + 0.5  # full row rank A, condition ~10 on its range
    x_true = scene(n)
    y = gd.convolve(x_true, h, "valid")
    x0 = rng.standard_normal(n)
    A = gd.ConvolutionOperator(h, n, "valid").to_matrix()
    want = x0 + (np.linalg.pinv(A) @ (y.ravel() - A @ x0.ravel())).reshape(n)
    for x0_ in (None, x0):
        ref = want if x0_ is not None else (np.linalg.pinv(A) @ y.ravel()).reshape(n)
        for p in (True, "circulant", False):
            x, info = gd.deconvolve(y, h, mode="valid", lam=lam, reg="laplacian", x0=x0_, precondition=p,
                                    rtol=1e-10, maxiter=5000, return_info=True)
            assert info.converged
            np.testing.assert_allclose(x, ref, rtol=0, atol=1e-6 * np.abs(ref).max())  # float64, rtol 1e-10


def test_singular_image_of_a_batch_is_left_unpreconditioned(rng):
    # Per image: lam = 0 gets the minimum-norm answer, lam = 1e-2 its regularized one, fast.
    n = (24, 24)
    h = gaussian_kernel(5, 1.2)
    y = gd.convolve(scene(n), h, "valid")
    ys = np.stack([y, y])
    x, info = gd.deconvolve(ys, h, mode="valid", lam=np.array([0.0, 1e-2]), reg="laplacian", rtol=1e-8,
                            maxiter=5000, return_info=True)
    ref0 = gd.deconvolve(y, h, mode="valid", lam=0.0, precondition=False, rtol=1e-8, maxiter=5000)
    ref1, i1 = gd.deconvolve(y, h, mode="valid", lam=1e-2, reg="laplacian", rtol=1e-8, return_info=True)
    np.testing.assert_allclose(x[0], ref0, rtol=0, atol=1e-6 * np.abs(ref0).max())
    np.testing.assert_allclose(x[1], ref1, rtol=0, atol=1e-6 * np.abs(ref1).max())
    assert info.preconditioned and i1.iterations < info.iterations[0]


def test_motion_blur_iterations_drop_and_smooth_kernels_stay():
    # A 13-px 30-degree motion line has near-zeros of |H|^2 that the boundary
    # strip does not share; the preconditioner's gain limit there and, in valid
    # mode, a circulant part kept on up to 2 pixels from the faces cut the
    # iterations at 96^2 from 378 to 92 (valid, lam 1e-4, Laplacian,
    # rtol 1e-6). Counts are deterministic; the bounds sit between before and after.
    from gpu_deconv.data import motion_kernel
    rng = np.random.default_rng(0)
    kw = dict(mode="valid", reg="laplacian", return_info=True)
    h = motion_kernel(13, 30)
    y = gd.convolve(scene((108, 108)), h, "valid") + 0.01 * rng.standard_normal((96, 96))
    x, info = gd.deconvolve(y, h, lam=1e-4, **kw)
    assert info.converged and info.iterations <= 120
    # same + symmetric: circulant inside, the DCT model at the faces: 501 -> 195.
    ys = gd.convolve(scene((96, 96)), h, "same", boundary="symmetric") + 0.01 * rng.standard_normal((96, 96))
    x, info = gd.deconvolve(ys, h, lam=1e-4, reg="laplacian", mode="same", boundary="symmetric",
                            return_info=True)
    assert info.method == "cg" and info.converged and info.iterations <= 260
    g = gaussian_kernel(13, 2.0)
    y = gd.convolve(scene((108, 108)), g, "valid") + 0.01 * rng.standard_normal((96, 96))
    for lam in (1e-2, 1e-4):
        x, info = gd.deconvolve(y, g, lam=lam, **kw)
        assert info.converged and info.iterations <= 16


# ------------------------------------------------------------ border blocks (exact local solves)
def _dense_normal(prob):
    n = prob.n
    N = int(np.prod(n))
    eye = np.eye(N).reshape((N, 1) + n)
    normal = prob.normal_operator()
    return np.stack([normal(np.broadcast_to(e, (prob.B,) + n).copy()).reshape(prob.B, N) for e in eye],
                    axis=-1)  # (B, N, N)


@pytest.mark.parametrize("kshape,n", [((3, 4), (30, 34)), ((5, 3), (29, 26)), ("motion", (27, 30))])
def test_border_blocks_are_exact_local_inverses(rng, monkeypatch, kshape, n):
    # Each block's matrix is read off a small problem with the same operators:
    # it must equal the big operator restricted to the block, at every face and
    # corner (float64: inverses of matrices with condition ~1e3, to 1e-9). A
    # centro-symmetric kernel (the motion line) reuses the top and left blocks,
    # rotated, for the bottom and right faces.
    from gpu_deconv.data import motion_kernel
    from gpu_deconv.solvers import border
    from gpu_deconv.solvers.precond import _cached
    monkeypatch.setattr(border, "BLOCK_DTYPE", np.float64)  # float32 by default: checked below
    h = motion_kernel(5, 30) if kshape == "motion" else rng.random(kshape) + 0.1
    lam = [1e-2, 0.3]
    prob = build_problem(rng.standard_normal((2,) + n), h, lam=np.array(lam), reg="laplacian",
                         mode="same", boundary="symmetric")
    assert border.border_eligible(prob)
    assert border._centro_symmetric(prob) == (kshape == "motion")
    Nd = _dense_normal(prob)
    w, _ = border.border_geometry(prob)
    want = np.zeros_like(Nd)
    for face in range(4):
        for st in border._starts(n[1 - face % 2], w):
            b0, b1 = border._block_coords(face, n, w, st)
            ix = b0 * n[1] + b1
            for i in range(prob.B):
                want[i][np.ix_(ix, ix)] += np.linalg.inv(Nd[i][np.ix_(ix, ix)])
    apply = border.border_part(prob.bk, prob, prob.dtype, _cached)
    N = int(np.prod(n))
    eye = np.eye(N).reshape((N, 1) + n)
    got = np.stack([apply(np.broadcast_to(e, (2,) + n).copy(), np.zeros((2,) + n)).reshape(2, N)
                    for e in eye], axis=-1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * np.abs(want).max())


def test_border_preconditioner_is_spd_and_falls_back(rng):
    h = rng.standard_normal((3, 4))
    for P in _dense_preconditioner("same", "symmetric", (20, 21), h, [1e-3, 0.5], "border"):
        np.testing.assert_allclose(P, P.T, atol=1e-12 * np.abs(P).max())
        assert np.linalg.eigvalsh(0.5 * (P + P.T)).min() > 0
    # Where the blocks do not apply (valid mode, an image too small) it is the band model.
    for mode, bd, n in (("valid", "zero", (20, 21)), ("same", "symmetric", (12, 13))):
        Pb = _dense_preconditioner(mode, bd, n, h, [1e-2], "band")
        Po = _dense_preconditioner(mode, bd, n, h, [1e-2], "border")
        np.testing.assert_array_equal(Po, Pb)


def test_border_preconditioner_leaves_a_singular_system_to_plain_cg(rng):
    # lam = 0: every kind must return the minimiser nearest x0 (here: plain CG's answer, bit for bit).
    from gpu_deconv.data import motion_kernel
    h = motion_kernel(5, 30)
    y = gd.convolve(scene((30, 30)), h, "same", boundary="symmetric")
    x0 = rng.standard_normal((30, 30))
    kw = dict(mode="same", boundary="symmetric", lam=0.0, method="cg", x0=x0, rtol=1e-8, maxiter=4000,
              return_info=True)
    xb, ib = gd.deconvolve(y, h, precondition="border", **kw)
    xp_, ip = gd.deconvolve(y, h, precondition=False, **kw)
    assert not ib.preconditioned and ib.iterations == ip.iterations
    np.testing.assert_array_equal(xb, xp_)


def test_border_preconditioner_cuts_motion_blur_iterations():
    # 13-px 30-degree motion, same + symmetric, 72^2 (the smallest image with
    # border blocks for this kernel), Laplacian. Counts are deterministic;
    # measured: plain 249, band 93, border 33 (lam 1e-3). At a tight tolerance
    # the answer is the band preconditioner's (float64, rtol 1e-11).
    from gpu_deconv.data import motion_kernel
    h = motion_kernel(13, 30)
    n = (72, 72)
    y = gd.convolve(scene(n), h, "same", boundary="symmetric")
    y = y + 0.01 * np.random.default_rng(0).standard_normal(n)
    kw = dict(mode="same", boundary="symmetric", lam=1e-3, reg="laplacian", method="cg", return_info=True,
              maxiter=3000)
    ref = gd.deconvolve(y, h, precondition="band", rtol=1e-11, **kw)[0]
    its = {}
    for p in (False, "band", "border"):
        x, info = gd.deconvolve(y, h, precondition=p, rtol=1e-6, **kw)
        assert info.converged
        its[p] = int(info.iterations)
        if p == "border":
            x, info = gd.deconvolve(y, h, precondition=p, rtol=1e-11, **kw)
            assert info.converged
            np.testing.assert_allclose(x, ref, rtol=0, atol=1e-7 * np.abs(ref).max())
    assert its["border"] < its["band"] < its[False]


def test_default_preconditioner_uses_border_blocks_where_they_pay():
    # Only for batches (>= 4 images sharing kernel and lam) of images >= 16 w a side,
    # same + symmetric: a single image does not repay the build (measured at 512^2).
    from gpu_deconv.data import motion_kernel
    from gpu_deconv.solvers import border
    h = motion_kernel(5, 30)  # w = 8: 128 px a side
    w, _ = border.border_geometry(build_problem(np.zeros((40, 40)), h, lam=1e-3, reg="laplacian",
                                                mode="same", boundary="symmetric"))

    def pays(B, n, lam=1e-3, mode="same", boundary="symmetric"):
        prob = build_problem(np.zeros((B, n, n)), h, lam=lam, reg="laplacian", mode=mode, boundary=boundary)
        return border.border_pays(prob)

    side = border.BORDER_AUTO_SIDE * w
    assert pays(4, side) and pays(8, side + 1)
    assert not pays(3, side) and not pays(4, side - 1)
    assert not pays(4, side, lam=np.array([1e-3, 1e-3, 1e-2, 1e-3]))  # blocks per lam: not shared
    prob = build_problem(np.zeros((4, side, side)), h, lam=1e-3, reg="laplacian", mode="same",
                         boundary="symmetric")
    r = np.random.default_rng(0).standard_normal((4, side, side))
    np.testing.assert_array_equal(make_preconditioner(prob.bk, prob, prob.dtype, "band")(r),
                                  make_preconditioner(prob.bk, prob, prob.dtype, "border")(r))
