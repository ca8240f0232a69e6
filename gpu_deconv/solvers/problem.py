"""The validated deconvolution problem: one frozen record that every solver reads.

:func:`gpu_deconv.solvers.deconvolve.build_problem` validates the arguments
of :func:`~gpu_deconv.deconvolve` once and returns a :class:`Problem` in
flat-batch form (leading axis B). Nothing changes it afterwards: a chunk of
images is :meth:`Problem.slice`, a variant (another ``lam``, probes as extra
images, the real and imaginary parts of complex data) is
:meth:`Problem.replace`. :func:`solve_in_chunks` runs a solver over the
chunks that fit in memory and joins their answers.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _cache, _memory
from .._direct import StencilSum, scaled_sum
from .._spectra import abs2
from .._typing import Boundary, Convention, Mode
from .._validation import real_dtype
from ..operators import ConvolutionOperator
from .cg import SolveInfo, pow2_scale
from .closed_form import image_scalars

__all__ = ["Problem", "solve_in_chunks"]


@dataclass(frozen=True, eq=False)
class Problem:
    """A validated problem in flat-batch form: y (B, *m), per-image lam/alpha (B,).

    Attributes
    ----------
    bk : Backend
        Array module and transforms of the data.
    dtype : numpy.dtype
        Working dtype (complex when the data or a kernel is).
    batch : tuple of int
        The caller's batch shape (B images in all).
    mode, boundary, convention : str
        The data model (``same`` + ``periodic`` is already ``circular``).
    ndim : int
        Spatial axes.
    kshape, n, m : tuple of int
        Kernel, unknown and data spatial shapes.
    y : array
        Data, ``(B, *m)``.
    h : array
        Kernel, ``kshape`` (shared) or ``(B, *kshape)`` (one per image).
    A : ConvolutionOperator
        The data term on ``n``.
    terms : list
        Regularizer terms (``weight``, ``op``, ``is_identity``, ``neumann``).
    lam, alpha : ndarray
        float64, ``(B,)``, in the (possibly rescaled) units of y and h.
    z, x0 : array or None
        Proximal centre and CG starting guess, ``(B, *n)``.
    y_sq, z_sq : float
        Squared norms of y and z (bound a closed form's output).
    x_exp, lam_exp : int or ndarray
        Exact power-of-two rescaling: the caller's answer is ``2**x_exp`` times
        this problem's, the caller's lam ``2**lam_exp`` times :attr:`lam`.
    use_reg, use_alpha : bool
        Whether the regularizer / proximal term is present anywhere in the batch
        (kept by :meth:`slice`, so a chunk computes what the whole batch computes).
    real_ops : bool
        Real kernel and regularizers (a complex problem then splits in two real ones).
    lam_precond : ndarray or None
        Per-image lam for which CG's preconditioner is built, when not :attr:`lam`
        (the solves that choose lam share one preconditioner across nearby lam).
    """

    bk: Any
    dtype: np.dtype
    batch: tuple
    mode: Mode
    boundary: Boundary
    convention: Convention
    ndim: int
    kshape: tuple
    n: tuple
    m: tuple
    y: Any
    h: Any
    A: ConvolutionOperator
    terms: list
    lam: np.ndarray
    alpha: np.ndarray
    z: Any = None
    x0: Any = None
    y_sq: float = 0.0
    z_sq: float = 0.0
    x_exp: Any = 0
    lam_exp: Any = 0
    use_reg: bool = False
    use_alpha: bool = False
    real_ops: bool = True
    lam_precond: np.ndarray | None = None

    @property
    def B(self) -> int:
        """Number of images."""
        return int(np.prod(self.batch)) if self.batch else 1

    def replace(self, **changes) -> Problem:
        """A copy with some fields changed; a new kernel `h` gets its own operator `A`."""
        if "h" in changes and "A" not in changes:
            h = changes["h"]
            changes["A"] = ConvolutionOperator(h, self.n, self.mode, boundary=self.boundary,
                                               convention=self.convention, ndim=self.ndim)
        return dataclasses.replace(self, **changes)

    def slice(self, start: int, stop: int) -> Problem:
        """Images ``start:stop``, sharing everything else (the problem-wide switches included)."""
        def part(a):
            return None if a is None else a[start:stop]

        changes = dict(batch=(stop - start,), y=self.y[start:stop], z=part(self.z), x0=part(self.x0),
                       lam=self.lam[start:stop], alpha=self.alpha[start:stop],
                       lam_precond=part(self.lam_precond))
        if self.A.kernel_batch:
            changes["h"] = self.h[start:stop]
        return self.replace(**changes)

    def key(self, *tag, dtype=None):
        """Cache identity of what is built from the operators alone (filters, preconditioners).

        Kernels, regularizers and their weights, geometry, lam and alpha, dtype; `tag` says what.
        """
        regs = ()
        if self.use_reg:
            regs = tuple((t.weight, "I" if t.is_identity else t.op.cache_key()) for t in self.terms)
        return tag + (self.A.cache_key(), regs, self.lam.tobytes() if self.use_reg else b"",
                      self.alpha.tobytes(), np.dtype(self.dtype if dtype is None else dtype).str)

    def normal_operator(self, dtype=None):
        """``x -> (A^H A + lam sum_i w_i G_i^H G_i + alpha I) x``, per image, for x of shape (B, *n)."""
        bk, A, nd = self.bk, self.A, self.ndim
        rdt = real_dtype(self.dtype if dtype is None else dtype)
        lam = image_scalars(bk, self.lam, rdt, nd)
        alpha = image_scalars(bk, self.alpha, rdt, nd)
        use_alpha = self.use_alpha
        stencil = self._reg_stencil() if self.use_reg else None

        def apply(x):
            if stencil is not None:  # the regularizer and A's normal (on the GPU: one gather pass adds them)
                out = bk.ops.stencil_normal(x, stencil, x.shape[:1], lam,
                                            plus=lambda: A.normal_unchecked(x, x.shape[:1]))
            elif self.use_reg:
                # The regularizer first, scaled in place: at most one extra array alive during A's normal.
                out = self._normal_reg(x, lam)
                out += A.normal_unchecked(x, x.shape[:1])
            else:
                out = A.normal_unchecked(x, x.shape[:1])
            if use_alpha:
                out += alpha * x
            return out

        return apply

    def _reg_stencil(self):
        """The regularizer as one :class:`StencilSum` when every term is the identity or small-kernel.

        None when some term takes the FFT path (or has per-image kernels).
        Cached by the terms (not by lam): every normal operator of the
        problem and of its variants (chunks, lam probes, the residual) shares
        one, and its device tables are uploaded once.
        """
        items = []
        for t in self.terms:
            if t.is_identity:
                items.append((t.weight, None, None))
                continue
            d = t.op.direct_term()
            if d is None or t.op.kernel_batch:
                return None
            items.append((t.weight,) + d)
        key = ("reg_stencil", tuple(self.n),
               tuple((t.weight, "I" if t.is_identity else t.op.cache_key()) for t in self.terms))
        return _cache.cached(self.bk, key, lambda: StencilSum(items, self.n))

    def _normal_reg(self, x, lam):
        """lam * sum_i w_i G_i^H G_i x, term by term."""
        return scaled_sum(x, [(t.weight, None if t.is_identity else
                               functools.partial(t.op.normal_unchecked, batch=x.shape[:1]))
                              for t in self.terms], lam)

    def rhs(self):
        """``A^H y + alpha z``, shape (B, *n)."""
        b = self.A.adjoint_unchecked(self.y, (self.B,))
        if self.use_alpha:
            b = b + image_scalars(self.bk, self.alpha, real_dtype(self.dtype), self.ndim) * self.z
        return b

    def residual(self, x):
        """``||b - M x|| / ||b||`` per image (float64 host array (B,)) of the normal equations ``M x = b``."""
        bk, nd = self.bk, self.ndim
        b = self.rhs()
        r = b - self.normal_operator()(x)
        # One exact power-of-two factor per image, so that the squares below cannot
        # overflow (or underflow to 0) for data far from 1 in magnitude.
        s = pow2_scale(bk.xp, b, nd)[(Ellipsis,) + (None,) * nd]
        b, r = b * s, r * s
        axes = tuple(range(-nd, 0))
        num = bk.asnumpy(bk.xp.sqrt(abs2(r).sum(axis=axes))).astype(np.float64)
        den = bk.asnumpy(bk.xp.sqrt(abs2(b).sum(axis=axes))).astype(np.float64)
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)

    def reg_terms(self):
        """``(w_i, kernel or None for the identity)`` of the regularizers in use (none without lam > 0)."""
        if not self.use_reg:
            return []
        return [(t.weight, None if t.is_identity else t.op.kernel) for t in self.terms]


def solve_in_chunks(prob, method, batch_size, solve, *, precondition="band", retry_on=None):
    """Run ``solve(problem) -> (x, info)`` over the batch of `prob` in chunks that fit.

    `x` of each chunk has a leading axis of its images; the result is
    ``(x of shape (B, *n), info of batch shape prob.batch)``. With a single
    chunk covering the batch, `solve` sees `prob` itself and its answer is
    returned as it is. On the GPU a chunk that runs out of memory is retried
    in halves (:func:`gpu_deconv._memory.run_chunks`) after the device's
    cached memory is released; `retry_on` overrides the exception types that
    mean "out of memory" (default: the device seam's, none on the CPU).
    """
    bk, B = prob.bk, prob.B
    batch_size = _memory.check_batch_size(batch_size)
    if batch_size is None:
        batch_size = "auto" if bk.is_gpu else B
    chunk = _memory.auto_chunk(prob, method, precondition) if batch_size == "auto" else min(batch_size, B)
    out = {}

    def run(start, stop):
        if start == 0 and stop == B:
            return solve(prob)
        x_c, info_c = solve(prob.slice(start, stop))
        if "x" not in out:
            out["x"] = bk.xp.empty((B,) + tuple(prob.n), dtype=x_c.dtype)
        out["x"][start:stop] = x_c.reshape((stop - start,) + tuple(prob.n))
        return None, info_c

    ops = bk.ops
    errors = ops.oom_errors() if retry_on is None else tuple(retry_on)
    parts = _memory.run_chunks(run, B, chunk, retry_on=errors,
                               on_retry=lambda exc, size: ops.release_memory(),
                               retry_if=ops.is_out_of_memory)
    if len(parts) == 1 and parts[0][1] - parts[0][0] == B:
        return parts[0][2]
    infos = [r[1] for _, _, r in parts]
    return out["x"], (None if infos[0] is None else SolveInfo.concat(infos, tuple(prob.batch)))
