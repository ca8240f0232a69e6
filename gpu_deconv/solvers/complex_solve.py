"""Complex deconvolution: the split into real problems, and the complex circulant preconditioner.

For real kernels and regularizers the normal matrix ``M = H^T H + lam sum w_i G_i^T G_i +
alpha I`` is real symmetric, so ``M x = H^T y + alpha z`` with complex y, z is two real systems:
the real part of x solves it for the real parts of y and z, the imaginary part for the
imaginary parts. :func:`solve_split` stacks the two as a batch of 2B real images and runs the
real solvers (the DCT closed form, CG with the band preconditioner and the GPU's fused
kernels): the cost is that of two real solves, about that of one complex FFT solve. The DFT
closed forms ("fft", "fft_approx") run on the full complex spectrum instead (measured faster
than the split, which copies the parts in and out).

A complex kernel (or regularizer) makes M complex Hermitian: then the operators run on full
complex FFTs, CG takes real step sizes from ``Re <u, v>`` (:class:`~.cg.ArrayCGOps`) and is
preconditioned by :func:`complex_circulant`, the circulant part of the real preconditioner on
the full spectrum (the band part is built for real stencils only).
"""

from __future__ import annotations

import numpy as np

from .._spectra import kernel_power, weighted_power
from .._validation import real_dtype
from .cg import SolveInfo
from .closed_form import image_scalars

__all__ = ["solve_split", "complex_circulant"]


def _stack(xp, a, rdt):
    """(B, ...) complex -> (2B, ...) real: real parts, then imaginary parts."""
    return xp.concatenate([a.real, a.imag]).astype(rdt, copy=False)


def real_problem(prob):
    """The problem of the stacked real and imaginary parts (batch 2B, real dtype)."""
    xp = prob.bk.xp
    rdt = real_dtype(prob.dtype)
    changes = dict(dtype=rdt, batch=(2,) + tuple(prob.batch), y=_stack(xp, prob.y, rdt),
                   z=None if prob.z is None else _stack(xp, prob.z, rdt),
                   x0=None if prob.x0 is None else _stack(xp, prob.x0, rdt),
                   lam=np.concatenate([prob.lam, prob.lam]), alpha=np.concatenate([prob.alpha, prob.alpha]))
    if prob.A.kernel_batch:
        changes["h"] = xp.concatenate([prob.h, prob.h])
    return prob.replace(**changes)


def solve_split(prob, method, solve, *, rtol, maxiter, precondition, return_info, batch_size):
    """Solve a complex problem with real operators as two real problems; ``(x, info or None)``.

    `solve` is ``deconvolve._solve_problem``. The per-image info merges both parts:
    iterations the larger, converged / breakdown / stagnated of either part, and the
    residual ``||b - M x|| / ||b||`` of the complex system, computed afresh.
    """
    xp = prob.bk.xp
    sub = real_problem(prob)
    xs, info = solve(sub, method, rtol, maxiter, precondition, return_info, batch_size)
    xs = xs.reshape((2,) + tuple(prob.batch) + tuple(prob.n))
    if xp is np:  # written through the real and imaginary views: no complex temporaries
        x = np.empty(xs.shape[1:], dtype=prob.dtype)
        x.real, x.imag = xs[0], xs[1]
    else:
        x = (xs[0] + 1j * xs[1]).astype(prob.dtype, copy=False)
    if info is None:
        return x, None
    shape = tuple(prob.batch)
    if return_info:
        res = prob.residual(x.reshape((prob.B,) + tuple(prob.n))).reshape(shape)
    else:  # only for the ConvergenceWarning: the larger part's bounds the combined residual
        res = np.maximum(*np.asarray(info.residual).reshape((2,) + shape))

    def both(name, how):
        v = getattr(info, name)
        return None if v is None else how(np.asarray(v)[0], np.asarray(v)[1])

    conv = both("converged", np.logical_and)
    if method == "cg":
        conv = conv & (res <= rtol)
    hist = [np.maximum(*np.asarray(hk).reshape((2, -1))) for hk in info.history]
    return x, SolveInfo(info.method, both("iterations", np.maximum), res, conv,
                        both("breakdown", np.logical_or), both("stagnated", np.logical_or),
                        rtol=info.rtol, preconditioned=info.preconditioned, history=hist)


def complex_circulant(bk, prob):
    """``r -> E F^-1 diag(1/D) F E^T r`` with full complex FFTs, ``D = |H|^2 + lam R + alpha``.

    The grid is the real preconditioner's (padded by 2(k-1) per axis); D is floored
    as there. Hermitian positive definite (a real positive diagonal in Fourier).
    """
    from . import precond

    xp, nd = bk.xp, prob.ndim
    cdt, rdt = prob.dtype, real_dtype(prob.dtype)
    grid = tuple(precond._fast(prob, a) for a in range(nd))

    def build():
        D = kernel_power(bk, prob.h, grid, cdt)
        if prob.use_reg:
            D = D + image_scalars(bk, prob.lam, rdt, nd) * weighted_power(bk, prob.reg_terms(), grid, cdt)
        D = D + image_scalars(bk, prob.alpha, rdt, nd)
        axes = tuple(range(-nd, 0))
        floor = xp.maximum(D.max(axis=axes, keepdims=True) * (1e3 * np.finfo(rdt).eps), np.finfo(rdt).tiny)
        return (1 / xp.maximum(D, floor)).astype(rdt, copy=False)

    Dinv = precond._cached(bk, prob, cdt, "circulant", build)
    window = (Ellipsis,) + tuple(slice(0, n) for n in prob.n)

    def apply(r):
        R_ = bk.fftn(r, grid)
        R_ *= Dinv
        return xp.ascontiguousarray(bk.ifftn(R_, grid)[window])

    return apply
