"""Regularizers ``lam/2 sum_i w_i ||G_i x||^2``: parsing ``reg=`` into terms.

A *bare kernel* (an array, ``"laplacian"``, ``"gradient"``) takes its mode
and boundary from the data term: ``mode="circular"`` (or same + periodic)
gives circular regularizers; every other mode gives ``mode="same"`` with the
data term's ``boundary`` and ``convention``. A :class:`ConvolutionOperator`
keeps its own mode and boundary.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .._validation import as_float_array
from ..operators import ConvolutionOperator


def laplacian_kernel(ndim: int) -> np.ndarray:
    """Discrete Laplacian stencil (3 x ... x 3): -2*ndim at the centre, 1 on each axis neighbour."""
    k = np.zeros((3,) * ndim)
    c = (1,) * ndim
    k[c] = -2.0 * ndim
    for ax in range(ndim):
        for d in (0, 2):
            idx = list(c)
            idx[ax] = d
            k[tuple(idx)] = 1.0
    return k


def difference_kernel(ndim: int, axis: int) -> np.ndarray:
    """Forward difference ``[1, -1]`` along one axis (shape 2 there, 1 elsewhere)."""
    shape = [1] * ndim
    shape[axis] = 2
    return np.array([1.0, -1.0]).reshape(shape)


@dataclass
class Term:
    """One regularizer term: weight, and either a kernel (bare) or an operator.

    ``kernel is None and op is None`` is the identity (plain Tikhonov).
    ``neumann`` marks the built-in forward differences, whose normal operator
    ``D^T D`` is diagonalized by the DCT under a symmetric boundary although
    the kernel itself is not symmetric.
    """

    weight: float
    kernel: object = None
    op: ConvolutionOperator | None = None
    neumann: bool = False
    name: str = "kernel"
    #: The kernel on the host when it was made there (the built-ins): no transfer for its checks.
    host: object = None

    @property
    def is_identity(self):
        return self.kernel is None and self.op is None


def _weight(w, where):
    if isinstance(w, bool) or not isinstance(w, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"reg weights must be real numbers; got {w!r} in {where}")
    w = float(w)
    if not np.isfinite(w) or w < 0:
        raise ValueError(f"reg weights must be finite and non-negative; got {w!r} in {where}")
    return w


def _parse_one(bk, item, ndim, weight, where):
    if isinstance(item, str):
        if item == "laplacian":
            k = laplacian_kernel(ndim)
            return [Term(weight, kernel=bk.xp.asarray(k), name="laplacian", host=k)]
        if item == "gradient":
            return [Term(weight, kernel=bk.xp.asarray(difference_kernel(ndim, a)), neumann=True,
                         name=f"gradient[{a}]", host=difference_kernel(ndim, a)) for a in range(ndim)]
        if item == "identity":
            return [Term(weight, name="identity")]
        raise ValueError(f"reg must be None, 'laplacian', 'gradient', a kernel, a ConvolutionOperator "
                         f"or a list of (weight, kernel) pairs; got the string {item!r}")
    if isinstance(item, ConvolutionOperator):
        if item.backend.name != bk.name:
            raise TypeError(f"{where}: the ConvolutionOperator lives on {item.backend.name} "
                            f"but y on {bk.name}")
        if item.kernel_batch:
            raise ValueError(f"{where}: a regularizer operator must have a single kernel")
        return [Term(weight, op=item, name="operator")]
    if item is None:
        return [Term(weight, name="identity")]
    k = as_float_array(bk, where, item, allow_complex=True)
    if k.ndim != ndim:
        raise ValueError(f"{where} must be a kernel with {ndim} dimensions (like h); "
                         f"got shape {tuple(k.shape)}")
    return [Term(weight, kernel=k, name="kernel")]


def parse_reg(bk, reg, ndim):
    """``reg`` -> list of :class:`Term`. ``None`` is the identity (plain Tikhonov)."""
    if reg is None:
        return [Term(1.0, name="identity")]
    if isinstance(reg, list) and reg and all(isinstance(p, tuple) and len(p) == 2 for p in reg):
        terms = []
        for i, (w, item) in enumerate(reg):
            terms += _parse_one(bk, item, ndim, _weight(w, f"reg[{i}]"), f"reg[{i}]")
        return terms
    if isinstance(reg, list):
        raise ValueError("reg as a list must hold (weight, kernel_or_operator) pairs; "
                         f"got {reg!r:.80}")
    return _parse_one(bk, reg, ndim, 1.0, "reg")


def build_operators(terms, n, *, circular, boundary, convention, dtype):
    """Attach a ConvolutionOperator on spatial shape `n` to every bare-kernel term."""
    out = []
    for t in terms:
        if t.is_identity:
            out.append(t)
            continue
        if t.op is not None:
            if t.op.spatial_in_shape != tuple(n):
                raise ValueError(f"the regularizer operator's in_shape {t.op.spatial_in_shape} does not "
                                 f"match the unknown's shape {tuple(n)}")
            out.append(t)
            continue
        mode = "circular" if circular else "same"
        kdt = np.result_type(dtype, np.complex64) if t.kernel.dtype.kind == "c" else dtype
        k = t.kernel.astype(kdt, copy=False)
        bnd = "periodic" if circular else boundary
        if t.host is not None:  # a built-in stencil: finite by construction, known on the host
            host = np.asarray(t.host).astype(kdt, copy=False)
            op = ConvolutionOperator.from_validated(k, n, mode, boundary=bnd, convention=convention,
                                                    ndim=k.ndim, host=host)
        else:
            op = ConvolutionOperator(k, n, mode, boundary=bnd, convention=convention)
        out.append(Term(t.weight, kernel=t.kernel, op=op, neumann=t.neumann, name=t.name, host=t.host))
    return out


def is_centre_symmetric(bk, k, ndim) -> bool:
    """Odd size and ``k == flip(k)`` (to rounding) along each of the trailing `ndim` axes."""
    if any(s % 2 == 0 for s in k.shape[k.ndim - ndim:]):
        return False
    xp = bk.xp
    tol = 8 * np.finfo(k.dtype).eps * float(xp.abs(k).max())
    for ax in range(k.ndim - ndim, k.ndim):
        if float(xp.abs(k - xp.flip(k, axis=ax)).max()) > tol:
            return False
    return True
