"""Batched preconditioned conjugate gradient: many independent SPD systems at once.

Each image of the batch has its own step sizes and its own convergence test;
an image that has converged (or broken down) stops changing while the others
go on. Nothing is raised for non-convergence: it is reported, per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._backend import get_backend
from .._validation import as_float_array, check_positive

__all__ = ["cg", "SolveInfo"]

#: Default iteration limit of the batched CG (per image).
DEFAULT_MAXITER = 1000


@dataclass
class SolveInfo:
    """What a solve did, per image.

    Attributes
    ----------
    method : str
        ``"fft"``, ``"dct"``, ``"cg"`` or ``"fft_approx"``.
    iterations : ndarray of int
        CG iterations per image (batch shape; 0 for closed forms).
    residual : ndarray of float
        Final relative residual of the normal equations per image,
        ``||b - M x|| / ||b||`` (computed afresh at the end, not the recursive
        estimate; for closed forms it is the residual of the exact solve).
    converged : ndarray of bool
        ``residual <= rtol`` (always True for a closed form that succeeded).
    breakdown : ndarray of bool
        CG stopped on non-positive curvature or a non-finite value.
    stagnated : ndarray of bool
        CG stopped because rounding keeps the true residual above `rtol`
        (restarts from the true residual stopped gaining); typical of
        float32 with a tight `rtol`.
    rtol : float
        Requested tolerance (CG only).
    preconditioned : bool
        Whether CG used the circulant preconditioner.
    history : list of ndarray, optional
        Relative (recursive) residual per iteration and image, if asked for.
    """

    method: str
    iterations: np.ndarray
    residual: np.ndarray
    converged: np.ndarray
    breakdown: np.ndarray = None
    stagnated: np.ndarray = None
    rtol: float | None = None
    preconditioned: bool = False
    history: list = field(default_factory=list, repr=False)

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        return ("method", "iterations", "residual", "converged", "breakdown", "stagnated", "rtol",
                "preconditioned")

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))


def _dot(xp, u, v, nd):
    return (u * v).sum(axis=tuple(range(-nd, 0)))


def batched_cg(bk, A, b, nd, *, x0=None, rtol=1e-6, maxiter=DEFAULT_MAXITER, M=None,
               callback=None, keep_history=False):
    """Core loop. `A`, `M` map arrays of b's shape to that shape; systems are the trailing `nd` axes."""
    xp = bk.xp
    batch = b.shape[:b.ndim - nd]
    expand = (Ellipsis,) + (None,) * nd
    bnorm = xp.sqrt(_dot(xp, b, b, nd))
    zero_rhs = bnorm == 0
    safe_bnorm = xp.where(zero_rhs, 1, bnorm)
    if x0 is None:
        x = xp.zeros_like(b)
        r = b.copy()
    else:
        x = x0.astype(b.dtype, copy=True)
        r = b - A(x)
    x[zero_rhs] = 0  # the exact answer of b = 0
    r[zero_rhs] = 0
    res = xp.sqrt(_dot(xp, r, r, nd)) / safe_bnorm
    active = (res > rtol) & ~zero_rhs
    breakdown = xp.zeros(batch, dtype=bool)
    stagnated = xp.zeros(batch, dtype=bool)
    last_true = xp.full(batch, np.inf)
    iters = xp.zeros(batch, dtype=np.int64)
    history = [bk.asnumpy(res)] if keep_history else []
    z = M(r) if M is not None else r
    p = z.copy()
    rz = _dot(xp, r, z, nd)
    n_apply = 0
    while bool(active.any()) and n_apply < maxiter:
        q = A(p)
        n_apply += 1
        pq = _dot(xp, p, q, nd)
        bad = active & ~(pq > 0)
        if bool(bad.any()):
            breakdown |= bad
            active &= ~bad
        a = xp.where(active, rz / xp.where(pq > 0, pq, 1), 0).astype(b.dtype)
        x += a[expand] * p
        r -= a[expand] * q
        iters += active
        rr = _dot(xp, r, r, nd)
        res = xp.sqrt(rr) / safe_bnorm
        bad = active & ~xp.isfinite(res)
        if bool(bad.any()):
            breakdown |= bad
            active &= ~bad
        if keep_history:
            history.append(bk.asnumpy(res))
        done = active & (res <= rtol)
        restart = None
        if bool(done.any()):
            # The recursive residual drifts from the true one; confirm before
            # declaring an image converged, and restart from the true residual if not.
            rt = b - A(x)
            res_true = xp.sqrt(_dot(xp, rt, rt, nd)) / safe_bnorm
            ok = done & (res_true <= rtol)
            active &= ~ok
            restart = done & ~ok
            # Rounding caps what the true residual can reach (in float32 near
            # 1e-6 for harder problems): stop an image whose restarts no longer
            # gain, and report it as not converged rather than loop to maxiter.
            stuck = restart & (res_true > 0.5 * last_true)
            if bool(stuck.any()):
                stagnated |= stuck
                active &= ~stuck
                restart &= ~stuck
            last_true = xp.where(restart, res_true, last_true)
            if bool(restart.any()):
                r = xp.where(restart[expand], rt, r)
        if callback is not None:
            callback(x)
        if not bool(active.any()):
            break
        z = M(r) if M is not None else r
        rz_new = _dot(xp, r, z, nd)
        keep = active if restart is None else active & ~restart
        beta = xp.where(keep, rz_new / xp.where(rz != 0, rz, 1), 0).astype(b.dtype)
        p = z + beta[expand] * p
        rz = rz_new
    # Report the true residual of what is returned.
    rt = b - A(x)
    res_true = xp.sqrt(_dot(xp, rt, rt, nd)) / safe_bnorm
    res_true = xp.where(zero_rhs, 0, res_true)
    converged = (res_true <= rtol) & ~breakdown & xp.isfinite(res_true)
    return x, {
        "iterations": bk.asnumpy(iters),
        "residual": bk.asnumpy(res_true).astype(np.float64),
        "converged": bk.asnumpy(converged),
        "breakdown": bk.asnumpy(breakdown),
        "stagnated": bk.asnumpy(stagnated),
        "history": history,
    }


def cg(A, b, x0=None, *, rtol=1e-6, maxiter=None, M=None, callback=None, ndim=None):
    """Solve many symmetric positive-definite systems ``A x = b`` at once by (preconditioned) CG.

    Parameters
    ----------
    A : callable
        ``A(x)`` applies the operator to an array shaped like `b` (all systems at once).
    b : array
        Right-hand sides, shape ``(*batch, *n)``; the trailing `ndim` axes form one system.
    x0 : array, optional
        Starting guess, shape of `b` (default zeros).
    rtol : float, optional
        Stop an image when ``||b - A x|| <= rtol ||b||`` (checked on the true residual).
    maxiter : int, optional
        Iteration limit (default 1000).
    M : callable, optional
        Preconditioner: applies an approximation of ``A^-1`` (must be SPD).
    callback : callable, optional
        ``callback(x)`` after every iteration.
    ndim : int, optional
        Number of trailing axes of one system (default ``b.ndim``: a single system).

    Returns
    -------
    x : array
        Solutions, shape of `b`.
    info : SolveInfo
        Per image: iterations, relative residual, converged, breakdown.

    Examples
    --------
    >>> import numpy as np
    >>> from gpu_deconv import cg
    >>> d = np.array([[1.0, 2.0, 4.0], [3.0, 1.0, 2.0]])  # two diagonal systems
    >>> x, info = cg(lambda v: d * v, np.ones((2, 3)), ndim=1, rtol=1e-12)
    >>> np.allclose(x, 1 / d), info.converged.tolist()
    (True, [True, True])
    """
    bk = get_backend(b=b, x0=x0)
    b = as_float_array(bk, "b", b)
    nd = b.ndim if ndim is None else check_positive("ndim", ndim, integer=True)
    if nd > b.ndim:
        raise ValueError(f"ndim={nd} exceeds b.ndim={b.ndim}")
    rtol = check_positive("rtol", rtol)
    maxiter = DEFAULT_MAXITER if maxiter is None else check_positive("maxiter", maxiter, integer=True)
    if x0 is not None:
        x0 = as_float_array(bk, "x0", x0, b.dtype)
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}; got {tuple(x0.shape)}")
    x, d = batched_cg(bk, A, b, nd, x0=x0, rtol=rtol, maxiter=maxiter, M=M, callback=callback)
    info = SolveInfo("cg", d["iterations"], d["residual"], d["converged"], d["breakdown"],
                     d["stagnated"], rtol=rtol, preconditioned=M is not None)
    return x, info
