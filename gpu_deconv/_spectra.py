"""Transfer functions of small kernels on large grids, without full-grid work where possible.

The rfftn of a kernel embedded in a G1 x G2 grid costs as much as the
rfftn of an image of that size. Most kernels used in practice are separable or
nearly so (Gaussian: rank 1; box: rank 1; Laplacian and gradients: rank <= 2),
and the DFT is separable too: a rank-r kernel's spectrum is a sum of r outer
products of 1-D transforms, computed in r passes over the half spectrum. The
factorization is accepted only when it reproduces the kernel to rounding, so
the spectrum equals that of the embedded kernel to rounding as well.
Other kernels are embedded by writing their taps at the wrapped indices (no
full-grid pad and roll copies) and transformed with rfftn.
"""

from __future__ import annotations

import numpy as np

from . import _cache

__all__ = ["abs2", "kernel_rfft", "kernel_spectrum", "kernel_power", "weighted_power", "separable_terms"]

#: Largest rank for which the sum of outer products beats a full transform.
MAX_RANK = 3


def separable_terms(h, max_rank=MAX_RANK, dtype=np.float64):
    """Rank-r factors of a kernel (host array), or None.

    Returns a list of terms, each a list of 1-D factors (one per axis), whose
    outer products sum to `h` within 8 eps(`dtype`) of its norm: the rounding
    level of the precision the spectrum is wanted in. 2-D kernels up to
    `max_rank` (SVD); any number of axes at rank 1 (all unfoldings rank 1).
    """
    h = np.asarray(h, dtype=np.float64)
    amax = float(np.abs(h).max(initial=0.0))
    if amax == 0:
        return [[np.zeros(s) for s in h.shape]]
    if h.ndim == 1:
        return [[h.copy()]]
    # The norms and the SVD below work on h scaled by an exact power of two into
    # [0.5, 1): unscaled, ||h|| underflows to 0 for kernels near 1e-170 (the kernel
    # would read as all zeros) and overflows to inf near 1e155 (every rank-1
    # approximation would pass the test). The first factor carries the scale back.
    e = int(np.frexp(amax)[1])
    terms = _separable_scaled(np.ldexp(h, -e), max_rank, dtype)
    if terms is not None:
        for t in terms:
            t[0] = np.ldexp(t[0], e)
    return terms


def _separable_scaled(h, max_rank, dtype):
    """:func:`separable_terms` of a kernel whose largest magnitude is in [0.5, 1)."""
    nrm = np.linalg.norm(h)
    tol = 8 * np.finfo(dtype).eps * nrm * max(1.0, np.sqrt(h.size))
    if h.ndim == 2:
        U, S, Vt = np.linalg.svd(h, full_matrices=False)
        for r in range(1, min(max_rank, len(S)) + 1):
            approx = (U[:, :r] * S[:r]) @ Vt[:r]
            if np.linalg.norm(approx - h) <= tol:
                return [[U[:, j] * S[j], Vt[j].copy()] for j in range(r)]
        return None
    # N-D: rank 1 only. The dominant singular vector of each unfolding.
    factors = []
    for ax in range(h.ndim):
        unf = np.moveaxis(h, ax, 0).reshape(h.shape[ax], -1)
        U, S, _ = np.linalg.svd(unf, full_matrices=False)
        factors.append(U[:, 0])
    core = h
    for f in factors:
        core = np.tensordot(f, core, axes=(0, 0))  # contracts the leading axis each time
    factors[0] = factors[0] * float(core)
    approx = factors[0]
    for f in factors[1:]:
        approx = np.multiply.outer(approx, f)
    if np.linalg.norm(approx - h) <= tol:
        return [factors]
    return None


def _embed_1d(v, G, shift):
    """1-D kernel with tap i at (i - shift) mod G (taps beyond G wrap and add)."""
    out = np.zeros(G)
    np.add.at(out, (np.arange(v.size) - shift) % G, v)
    return out


def _embed_nd(xp, h, grid, shifts, dtype):
    """Kernel (trailing len(grid) axes) written at its wrapped indices in a zero grid."""
    nd = len(grid)
    kb = h.shape[:h.ndim - nd]
    idx = [(np.arange(k) - c) % G for k, G, c in zip(h.shape[h.ndim - nd:], grid, shifts)]
    out = xp.zeros(kb + tuple(grid), dtype=dtype)
    hh = h.astype(dtype, copy=False)
    if all(k <= G for k, G in zip(h.shape[h.ndim - nd:], grid)):
        out[(Ellipsis,) + xp.ix_(*[xp.asarray(i) for i in idx])] = hh
    else:  # a kernel longer than its period aliases: taps add up
        for tap in np.ndindex(*h.shape[h.ndim - nd:]):
            pos = tuple(int(i[t]) for i, t in zip(idx, tap))
            out[(Ellipsis,) + pos] += hh[(Ellipsis,) + tap]
    return out


def kernel_rfft(bk, h, grid, shifts, dtype):
    """rfftn over `grid` of kernel `h` placed with tap i at ``(i - shift) mod G`` per axis.

    `h` may carry leading kernel-batch axes (then no factorization is tried).
    Complex64 for float32, complex128 for float64. `h` must be real (complex
    kernels and complex data take :func:`kernel_fft`).
    """
    xp = bk.xp
    nd = len(grid)
    dtype = np.dtype(dtype)
    cdt = np.complex64 if dtype == np.float32 else np.complex128
    if h.ndim == nd and nd >= 2:
        hh = bk.asnumpy(h)
        terms = separable_terms(hh, dtype=dtype)
        if terms is not None:
            spec = None
            for term in terms:
                vecs = []
                for ax, (v, G, c) in enumerate(zip(term, grid, shifts)):
                    e = _embed_1d(v, G, c)
                    f = np.fft.rfft(e) if ax == nd - 1 else np.fft.fft(e)
                    shape = [1] * nd
                    shape[ax] = f.size
                    vecs.append(xp.asarray(f.astype(cdt).reshape(shape)))
                t = vecs[0]
                for v in vecs[1:]:
                    t = t * v
                spec = t if spec is None else spec + t
            return xp.ascontiguousarray(spec)
    return bk.rfftn(_embed_nd(xp, h, grid, shifts, dtype), grid)


def kernel_fft(bk, h, grid, shifts, dtype):
    """Full ``fftn`` spectrum of `h` placed as in :func:`kernel_rfft`, for complex data or kernels.

    `dtype` is complex64 or complex128; `h` may be real or complex.
    """
    return bk.fftn(_embed_nd(bk.xp, h, grid, shifts, np.dtype(dtype)), grid)


def kernel_power(bk, h, grid, dtype):
    """``|rfftn(h on grid)|^2`` (real, half spectrum); independent of where the kernel sits.

    Separable kernels get it from 1-D transforms: rank 1 as an outer product
    of squared magnitudes (one pass), higher rank with centred (hence real,
    for symmetric factors) 1-D transforms when they are real; otherwise from
    the complex spectrum.
    """
    xp = bk.xp
    nd = len(grid)
    dtype = np.dtype(dtype)
    if dtype.kind == "c" or h.dtype.kind == "c":
        # Complex data or kernel: the power on the full grid (no Hermitian half).
        cdt = np.complex64 if dtype in (np.float32, np.complex64) else np.complex128
        return abs2(kernel_fft(bk, h, grid, (0,) * nd, cdt))
    if h.ndim == nd and nd >= 2:
        terms = separable_terms(bk.asnumpy(h), dtype=dtype)
        if terms is not None:
            fs = [[_axis_transform(v, G, (v.size - 1) // 2, ax == nd - 1) for ax, (v, G) in
                   enumerate(zip(term, grid))] for term in terms]
            if len(fs) == 1:
                return _outer(xp, [np.abs(f) ** 2 for f in fs[0]], dtype)
            if all(np.abs(f.imag).max() <= 1e-12 * np.abs(f).max() for t in fs for f in t):
                g = None
                for t in fs:
                    o = _outer(xp, [f.real for f in t], dtype)
                    g = o if g is None else g + o
                g *= g
                return g
    return abs2(kernel_rfft(bk, h, grid, (0,) * nd, dtype))


def abs2(S):
    """``|S|^2`` of a complex array, without the square root of ``abs``."""
    return S.real * S.real + S.imag * S.imag


def kernel_spectrum(bk, h, grid, shifts, dtype, key=None):
    """:func:`kernel_rfft`, cached by kernel contents, grid, origin and dtype.

    `key` is ``_cache.content_key(bk, h)`` when the caller already has it.
    """
    dtype = np.dtype(dtype)
    if key is None:
        key = _cache.content_key(bk, h)
    if dtype.kind == "c":  # complex data: the full spectrum
        return _cache.cached(bk, ("fft", key, len(grid), tuple(grid), tuple(shifts), dtype.str),
                             lambda: kernel_fft(bk, h, grid, shifts, dtype))
    return _cache.cached(bk, ("rfft", key, len(grid), tuple(grid), tuple(shifts), dtype.str),
                         lambda: kernel_rfft(bk, h, grid, shifts, dtype))


def weighted_power(bk, terms, grid, dtype):
    """``sum_i w_i |rfftn(g_i on grid)|^2`` over ``(w_i, g_i)`` pairs; ``g_i = None`` is the identity.

    Real half spectrum of `grid`; None for no terms. A complex `dtype` (complex
    data) gives the full grid, in the real precision.
    """
    full = np.dtype(dtype).kind == "c"
    spec = tuple(grid) if full else tuple(grid[:-1]) + (grid[-1] // 2 + 1,)
    R = None
    for w, g in terms:
        P = bk.xp.ones(spec, dtype=np.finfo(dtype).dtype) if g is None else _clean_power(
            bk, kernel_power(bk, g, grid, dtype), g, np.finfo(dtype).dtype)
        if w != 1:
            P = w * P
        R = P if R is None else R + P
    return R


def _clean_power(bk, P, g, dtype):
    """``|G|^2`` with the values at G's rounding level set to the exact 0 they stand for.

    A regularizer's zeros (the Laplacian's and the gradient's at frequency 0)
    come out of a transform as rounding noise, about ``eps * sum|g|`` in G.
    Multiplied by a large lam that noise would dominate the denominator
    ``|H|^2 + lam |G|^2`` there (lam = 1e300 turned the answer's mean into
    1e-270); as 0 it leaves the data term in charge, as the exact system does.
    """
    floor = 16 * np.finfo(dtype).eps * float(bk.xp.abs(g).sum())
    floor *= floor
    if floor > 0:
        P = bk.xp.where(P <= floor, 0, P).astype(P.dtype, copy=False)
    return P


def _axis_transform(v, G, shift, last):
    e = _embed_1d(v, G, shift)
    return np.fft.rfft(e) if last else np.fft.fft(e)


def _outer(xp, vecs, dtype):
    nd = len(vecs)
    out = None
    for ax, f in enumerate(vecs):
        shape = [1] * nd
        shape[ax] = f.size
        a = xp.asarray(np.asarray(f, dtype=dtype).reshape(shape))
        out = a if out is None else out * a
    return out
