"""Batched preconditioned conjugate gradient: many independent SPD systems at once.

Each image of the batch has its own step sizes and its own convergence test;
an image that has converged (or broken down) stops changing while the others
go on. Nothing is raised for non-convergence: it is reported, per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._backend import get_backend, is_cupy_array
from .._typing import Array, ArrayLike
from .._validation import all_finite, as_float_array, check_positive, finite_result, quiet_fp

__all__ = ["cg", "SolveInfo", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """Some images of a batch did not reach the requested tolerance.

    Issued by :func:`gpu_deconv.deconvolve` when it was not asked for
    ``return_info=True`` (with it, ``info.converged`` reports the same, per image).
    """

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
    breakdown : ndarray of bool, optional
        CG stopped on non-positive curvature or a non-finite value.
    stagnated : ndarray of bool, optional
        CG stopped because rounding keeps the true residual above `rtol`
        (restarts from the true residual stopped gaining); typical of
        float32 with a tight `rtol`.
    rtol : float
        Requested tolerance (CG only).
    preconditioned : bool
        Whether CG used the circulant preconditioner.
    history : list of ndarray, optional
        Relative (recursive) residual per iteration and image, if asked for.
    lam : ndarray, optional
        The ``lam`` used per image (:func:`~gpu_deconv.deconvolve` fills it,
        whether given or chosen).
    lam_curve : LamCurve, optional
        With a chosen ``lam``: every ``lam`` tried and the criterion there.
    """

    method: str
    iterations: np.ndarray
    residual: np.ndarray
    converged: np.ndarray
    breakdown: np.ndarray | None = None
    stagnated: np.ndarray | None = None
    rtol: float | None = None
    preconditioned: bool = False
    history: list = field(default_factory=list, repr=False)
    lam: np.ndarray | None = None
    lam_curve: Any = field(default=None, repr=False)

    def __getitem__(self, key):
        return getattr(self, key)

    def keys(self):
        return ("method", "iterations", "residual", "converged", "breakdown", "stagnated", "rtol",
                "preconditioned")

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    @classmethod
    def concat(cls, infos, shape) -> SolveInfo:
        """One SolveInfo for a batch from those of its consecutive chunks (flat order), of batch `shape`.

        A chunk whose images all stopped early has a shorter history; its last
        entry is repeated, which is what the whole-batch history holds for images
        that have stopped (their residual no longer changes). History entries
        stay flat (one value per image of the flat batch), as batched_cg makes them.
        """
        def cat(name):
            parts = [getattr(i, name) for i in infos]
            if any(p is None for p in parts):
                return None
            return np.concatenate([np.asarray(p).reshape(-1) for p in parts]).reshape(shape)

        first = infos[0]
        hist = []
        steps = max(len(i.history) for i in infos)
        if steps and all(i.history for i in infos):
            for k in range(steps):
                hist.append(np.concatenate([np.asarray(i.history[min(k, len(i.history) - 1)]).reshape(-1)
                                            for i in infos]))
        return cls(first.method, cat("iterations"), cat("residual"), cat("converged"), cat("breakdown"),
                   cat("stagnated"), rtol=first.rtol, preconditioned=first.preconditioned, history=hist)


def pow2_scale(xp, a, nd):
    """Per system, the power of two that brings ``max |a|`` into [0.5, 1) (1 for a zero system).

    Scaling by a power of two is exact, so a linear solve on ``a * s`` gives
    bit for bit ``s`` times the unscaled iterates; it keeps ``||a||^2`` from
    overflowing (data near 1e200 in float64, 1e20 in float32) or underflowing
    to 0 (near 1e-200 / 1e-25), where the norms would read inf or 0 and an
    unsolved system would be reported converged.
    """
    amax = xp.abs(a).max(axis=tuple(range(-nd, 0)))
    _, e = xp.frexp(amax)
    lim = np.finfo(a.dtype).maxexp - 8  # keep the factor itself a normal number
    return xp.ldexp(xp.ones(amax.shape, dtype=amax.dtype), xp.clip(-e, -lim, lim))  # real, also for complex a


def batched_cg(bk, A, b, nd, *, x0=None, rtol=1e-6, maxiter=DEFAULT_MAXITER, M=None,
               callback=None, keep_history=False, overwrite_b=False):
    """Core loop. `A`, `M` map arrays of b's shape to that shape; systems are the trailing `nd` axes.

    The vector passes are the device seam's (``bk.ops.cg_ops``: the GPU's fused
    kernels when they are enabled, array expressions otherwise); the iteration
    itself is :func:`batched_cg_fused`.
    ``overwrite_b=True`` lets it scale a C-contiguous `b` in place (one image-sized
    array less at the peak); `b` is then garbage.
    """
    ops = bk.ops.cg_ops(b.shape[:b.ndim - nd], b.shape[b.ndim - nd:], b.dtype)
    return batched_cg_fused(bk, A, b, nd, ops, x0=x0, rtol=rtol, maxiter=maxiter, M=M,
                            callback=callback, keep_history=keep_history, overwrite_b=overwrite_b)


def batched_cg_fused(bk, A, b, nd, ops, *, x0=None, rtol=1e-6, maxiter=DEFAULT_MAXITER, M=None,
                     callback=None, keep_history=False, overwrite_b=False):
    """The batched (P)CG iteration, with its passes over the vectors done by `ops`.

    `ops` (:class:`gpu_deconv._ops.ArrayCGOps`; :class:`gpu_deconv._cuda.CGKernels` on the
    GPU; the CPU harness of the tests provides one that runs the kernels'
    per-element code on the host) offers:

    * ``dot(u, v, out)``: per-image dot product;
    * ``update_xr(x, r, p, q, a, out)``: ``x += a p``, ``r -= a q`` in one
      pass, returning the new ``r . r``;
    * ``update_p(p, z, beta)``: ``p = z + beta p`` in place;
    * with ``skips_zero_steps`` (the GPU's kernels), also ``step``, ``check`` and
      ``beta``: the per-image bookkeeping of the iteration (step sizes, breakdown
      checks, residuals, the flags of its one host read), in place on the loop's
      arrays; the array expressions they replace are written out beside them.

    x, r and p are allocated once, before the loop, and updated in place; the
    per-image scalars have the dtype of ``ops.dot`` (float64 on the GPU, where
    the kernels round the step sizes to the working precision). Without a
    preconditioner ``r . z`` is the ``r . r`` of the update pass, not a pass of
    its own.
    """
    xp = bk.xp
    batch = b.shape[:b.ndim - nd]
    expand = (Ellipsis,) + (None,) * nd
    if not all_finite(xp, b):
        # b was formed from finite inputs (deconvolve's A^T y + alpha z): an
        # overflow. Iterating on it would stop at once with x = 0, "not converged".
        raise ValueError(f"the right-hand side of the normal equations overflows {b.dtype}: the "
                         "magnitudes of the data and the operator (y, h, alpha, z) are too large for the "
                         "working precision; rescale them (or pass dtype=float64)")
    scale = pow2_scale(xp, b, nd)[expand]
    if overwrite_b and b.flags.c_contiguous and b.flags.writeable:
        b *= scale  # exact (a power of two), and no second copy of b
    else:
        b = xp.ascontiguousarray(b * scale)
    if x0 is not None:
        x0 = x0 * scale
    if callback is not None:
        user_callback = callback

        def callback(xs):
            user_callback(xs / scale)

    def vec(v):  # a user A may promote; the kernels want contiguous data of b's dtype
        return xp.ascontiguousarray(v, dtype=b.dtype)

    bnorm = xp.sqrt(ops.dot(b, b))
    zero_rhs = bnorm == 0
    safe_bnorm = xp.where(zero_rhs, 1, bnorm)
    if x0 is None:
        # b = 0 exactly where its norm is 0 (b was scaled so that its largest value squares
        # without underflow): x = 0 and r = b are already that answer there, no mask pass.
        x = xp.zeros_like(b)
        r = b.copy()
    else:
        x = xp.array(x0, dtype=b.dtype, order="C", copy=True)
        r = vec(b - A(x))
        x[zero_rhs] = 0  # the exact answer of b = 0
        r[zero_rhs] = 0
    res = xp.sqrt(ops.dot(r, r)) / safe_bnorm
    active = (res > rtol) & ~zero_rhs
    breakdown = xp.zeros(batch, dtype=bool)
    stagnated = xp.zeros(batch, dtype=bool)
    last_true = xp.full(batch, np.inf)
    final_res = xp.zeros(batch, dtype=res.dtype)
    final_known = xp.zeros(batch, dtype=bool)
    iters = xp.zeros(batch, dtype=np.int64)
    history = [bk.asnumpy(res)] if keep_history else []
    z = vec(M(r)) if M is not None else r
    p = xp.array(z, order="C", copy=True)
    rz = ops.dot(r, z)
    del z
    rz_new = xp.empty_like(rz)
    pq = xp.empty_like(rz)
    rr = xp.empty_like(rz)
    n_apply = 0
    # Host reads of per-image flags. Where the update pass leaves the images whose
    # step is 0 untouched (ops.skips_zero_steps: the GPU's kernels), an iteration
    # reads its flags once, at its end, and repairs a breakdown after that read;
    # elsewhere (array expressions, whose reads cost nothing on the host) a
    # breakdown is repaired before the update, as it must be there.
    deferred = bool(getattr(ops, "skips_zero_steps", False))
    if deferred:
        # The per-image bookkeeping below is then ops.step / ops.check / ops.beta (a launch
        # each on the GPU, not some 30 launches of tiny array expressions), into these.
        a, beta = xp.empty_like(rz), xp.empty_like(rz)
        broken, done = xp.zeros(batch, dtype=bool), xp.zeros(batch, dtype=bool)
        flags = xp.zeros(3, dtype=bool)
    active_any = bool(active.any())
    while active_any and n_apply < maxiter:
        q = vec(A(p))
        n_apply += 1
        ops.dot(p, q, out=pq)
        # A non-finite curvature or step (an operator that overflowed) would put
        # NaN into x: the image stops at its last finite iterate instead, and its
        # r and p are zeroed so that the steps of 0 that follow add exactly 0.
        if deferred:
            ops.step(rz, pq, active, breakdown, broken, out=a)  # the same as below; broken = bad
        else:
            step = rz / xp.where(pq > 0, pq, 1)
            bad = active & ~((pq > 0) & xp.isfinite(step))
            breakdown |= bad
            active &= ~bad
            if bool(bad.any()):
                r[bad] = 0
                p[bad] = 0
            a = xp.where(active, step, 0)
        ops.update_xr(x, r, p, q, a, out=rr)
        del q
        if deferred:
            # The same as below, with broken |= bad, and the flags of the one host read.
            ops.check(rr, safe_bnorm, rtol, active, breakdown, broken, iters, res, done, flags)
        else:
            iters += active
            res = xp.sqrt(rr) / safe_bnorm
            bad = active & ~xp.isfinite(res)
            breakdown |= bad
            active &= ~bad
            if bool(bad.any()):
                r[bad] = 0
                p[bad] = 0
            done = active & (res <= rtol)
        if keep_history:
            history.append(bk.asnumpy(res))
        if deferred:
            # The iteration's one host read: a breakdown, an image below rtol, any image left.
            broken_any, done_any, active_any = (bool(v) for v in bk.asnumpy(flags))
            if broken_any:
                r[broken] = 0
                p[broken] = 0
        else:
            done_any = bool(done.any())
        restart = None
        restarted = False
        if done_any:
            # The recursive residual drifts from the true one; confirm before
            # declaring an image converged, and restart from the true residual if not.
            rt = vec(b - A(x))
            res_true = xp.sqrt(ops.dot(rt, rt)) / safe_bnorm
            ok = done & (res_true <= rtol)
            # A confirmed image no longer changes: its final residual is known.
            final_res = xp.where(ok, res_true, final_res)
            final_known |= ok
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
                xp.copyto(r, rt, where=restart[expand])
                restarted = True
            del rt
        if callback is not None:
            callback(x)
        if done_any or not deferred:
            active_any = bool(active.any())
        if not active_any:
            break
        if M is None:
            z = r
            if restarted:
                ops.dot(r, r, out=rz_new)
            elif deferred:
                rz_new, rr = rr, rz_new  # r . r of the update pass, by a swap (no copy launch)
            else:
                rz_new[...] = rr  # r . r of the update pass; r has not changed since
        else:
            z = vec(M(r))
            ops.dot(r, z, out=rz_new)
        keep = active if restart is None else active & ~restart
        if deferred:
            ops.beta(rz_new, rz, keep, out=beta)  # the same as below
        else:
            beta = xp.where(keep, rz_new / xp.where(rz != 0, rz, 1), 0)
        ops.update_p(p, z, beta)
        del z  # not needed until the next M(r): one image-sized array less at the peaks
        rz, rz_new = rz_new, rz
    # Report the true residual of what is returned (one more operator
    # application unless every image was confirmed converged above).
    res_true = final_res
    if not bool((final_known | zero_rhs).all()):
        rt = vec(b - A(x))
        res_true = xp.where(final_known, final_res, xp.sqrt(ops.dot(rt, rt)) / safe_bnorm)
    res_true = xp.where(zero_rhs, 0, res_true)
    converged = (res_true <= rtol) & ~breakdown & xp.isfinite(res_true)
    x /= scale
    return x, {
        "iterations": bk.asnumpy(iters),
        "residual": bk.asnumpy(res_true).astype(np.float64),
        "converged": bk.asnumpy(converged),
        "breakdown": bk.asnumpy(breakdown),
        "stagnated": bk.asnumpy(stagnated),
        "history": history,
    }


def _checked_operator(name, f, b, bk):
    """The user's A (or M), checked to return a real floating array of b's shape and module.

    Without this, a wrong shape surfaced as NumPy's "operands could not be broadcast"
    and a complex result as a casting error, neither naming the argument.
    """
    shape = tuple(b.shape)

    def apply(v):
        out = f(v)
        if not hasattr(out, "shape") or not hasattr(out, "dtype") or is_cupy_array(out) != bk.is_gpu:
            raise TypeError(f"{name}(x) must return an array of the module of b; got {type(out).__name__}")
        if tuple(out.shape) != shape:
            raise ValueError(f"{name}(x) must return an array of b's shape {shape}; got {tuple(out.shape)}")
        if out.dtype.kind != "f" and not (out.dtype.kind == "c" and b.dtype.kind == "c"):
            raise TypeError(f"{name}(x) must return real floating values (complex only for complex b); "
                            f"got dtype {out.dtype}")
        return out

    return apply


def cg(A: Callable[[Array], Array], b: ArrayLike, x0: ArrayLike | None = None, *, rtol: float = 1e-6,
       maxiter: int | None = None, M: Callable[[Array], Array] | None = None,
       callback: Callable[[Array], object] | None = None, ndim: int | None = None) -> tuple[Array, SolveInfo]:
    """Solve many symmetric positive-definite systems ``A x = b`` at once by (preconditioned) CG.

    Complex `b` solves Hermitian positive-definite systems (real step sizes from
    ``Re <u, v>``; ``A`` and ``M`` then return complex arrays).

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
    b = as_float_array(bk, "b", b, allow_complex=True)
    nd = b.ndim if ndim is None else check_positive("ndim", ndim, integer=True)
    if nd > b.ndim:
        raise ValueError(f"ndim={nd} exceeds b.ndim={b.ndim}")
    rtol = check_positive("rtol", rtol)
    maxiter = DEFAULT_MAXITER if maxiter is None else check_positive("maxiter", maxiter, integer=True)
    if x0 is not None:
        x0 = as_float_array(bk, "x0", x0, b.dtype, allow_complex=True).astype(b.dtype, copy=False)
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}; got {tuple(x0.shape)}")
    for name, f in (("A", A), ("M", M), ("callback", callback)):
        if f is not None and not callable(f):
            raise TypeError(f"{name} must be callable; got {type(f).__name__}")
    if A is None:
        raise TypeError("A must be callable; got None")
    with quiet_fp():
        x, d = batched_cg(bk, _checked_operator("A", A, b, bk), b, nd, x0=x0, rtol=rtol, maxiter=maxiter,
                          M=None if M is None else _checked_operator("M", M, b, bk), callback=callback)
    finite_result(bk, x, "the solution", ("A", "b", "x0"))
    info = SolveInfo("cg", d["iterations"], d["residual"], d["converged"], d["breakdown"],
                     d["stagnated"], rtol=rtol, preconditioned=M is not None)
    return x, info
