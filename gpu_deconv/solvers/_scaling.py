"""Exact power-of-two rescaling of a deconvolution problem whose kernel or data is far from 1.

A kernel near 1e-170 has ``|H|^2`` near 1e-340, which underflows to zero in
float64; one near 1e160 has ``|H|^2`` near 1e320, which overflows. Neither is
a property of the problem: with ``h = c h'``, ``y = d y'`` and ``x = (d / c) x'``,

``1/2 ||h x - y||^2 + lam/2 R(x) + alpha/2 ||x - z||^2``

is ``d^2`` times the same objective in the primed variables with
``lam' = lam / c^2``, ``alpha' = alpha / c^2``, ``z' = (c / d) z`` (and the
starting guess ``x0' = (c / d) x0``). With c and d exact powers of two the
primed data are exact, so are the FFT products of them (up to underflow),
and the answer is the primed one times ``d / c``, computed by ``ldexp``.
The relative residual of the normal equations is the same in both.

Problems whose kernel and data are within a wide band around 1 are left
untouched (bit for bit): the rescaling only applies where it is needed.
"""

from __future__ import annotations

import numpy as np

from .._backend import ldexp
from .._validation import sq_norm

__all__ = ["balance_scales", "scale_exponents", "unscale"]


def _band(dtype):
    """Exponent e such that magnitudes in [2^-e, 2^e] need no rescaling (|h|^2 and FFT sums stay in range)."""
    return np.finfo(dtype).maxexp // 4


def _exponent(v):
    """The power of two e with v / 2^e in [0.5, 1)."""
    return int(np.frexp(v)[1])


def _exponents(xp, a, nd, band):
    """Per leading index of `a` (or one for all if `nd` == a.ndim): the power of two to divide by.

    0 where the largest magnitude is within [2^-band, 2^band] (or zero);
    otherwise the e that brings it into [0.5, 1). Host int64 array.
    """
    m = xp.abs(a).max(axis=tuple(range(a.ndim - nd, a.ndim)))
    amax = np.asarray(m.get() if hasattr(m, "get") else m, dtype=np.float64)  # CuPy: to the host
    out = np.frexp(amax)[1].astype(np.int64)
    return np.where((amax > 0) & ((amax < 2.0 ** -band) | (amax > 2.0 ** band)), out, 0)


def scale_exponents(xp, h, y, nd, dtype, *, weights=(), y_sq=None, h_host=None):
    """``(ec, ed)``: per image (shape (B,)), the powers of two to divide the kernel and the data by.

    `h` is one kernel ``(*k)`` or one per image ``(B, *k)``; `y` is ``(B, *m)``.
    Each exponent is nonzero only where the largest magnitude is outside the
    band. The weights (lam, alpha: per-image arrays) become ``w / 4^ec``; `ec`
    is moved towards 0 as far as needed to keep them finite (with room for
    ``lam' R``); a shared kernel gets one `ec` for all. `y_sq` (``||y||^2``,
    when known) spares the pass over `y` when it shows every image within the band;
    `h_host` (`h` on the host, when known) spares the transfer of its maxima.
    """
    wdt = np.dtype(dtype)
    band = _band(wdt)
    B = y.shape[0]
    ec = _exponents(xp, h, nd, band) if h_host is None else _exponents(np, h_host, nd, band)
    if np.any(ec != 0):
        top = np.zeros(B)
        for w in weights:
            top = np.maximum(top, np.broadcast_to(np.asarray(w, dtype=np.float64), (B,)))
        with np.errstate(divide="ignore"):
            lo = np.ceil((np.log2(top) - (np.finfo(wdt).maxexp - 16)) / 2)
        lo = np.where(top > 0, lo, -np.inf)
        lo = lo if ec.ndim else lo.max(initial=-np.inf)
        ec = np.where(ec != 0, np.maximum(ec, lo), 0).astype(np.int64)
    ec = np.broadcast_to(ec, (B,))
    known = y_sq is not None and np.isfinite(y_sq) and 2.0 ** (-2 * band) <= y_sq <= 2.0 ** (2 * band)
    ed = np.zeros(B, np.int64) if known else _exponents(xp, y, nd, band)
    return ec, ed


def _ldexp(xp, a, e, dtype):
    """``a * 2**e`` with e per leading index (host ints), in `dtype`."""
    e = np.asarray(e, dtype=np.int32)
    if e.ndim:
        e = e.reshape(e.shape + (1,) * (a.ndim - e.ndim))
        e = xp.asarray(e) if xp is not np else e
    else:
        e = np.int32(e)
    return ldexp(xp, a, e).astype(dtype, copy=False)


def balance_scales(prob):
    """`prob` (a validated deconvolution problem) rescaled, with its ``x_exp`` and ``lam_exp`` set.

    The answer of the rescaled problem, image b, times ``2 ** x_exp[b]`` is
    the answer of the original one (:func:`unscale`); ``lam`` and ``alpha``
    are then in the rescaled units, ``2 ** lam_exp`` times them in the
    caller's. `prob` itself is returned (both exponents 0) when every
    kernel's and image's magnitude is within the band.
    """
    xp, wdt, nd = prob.bk.xp, np.dtype(prob.dtype), prob.ndim
    shared = prob.h.ndim == nd  # one kernel for the batch
    ec, ed = scale_exponents(xp, prob.h, prob.y, nd, wdt, weights=(prob.lam, prob.alpha), y_sq=prob.y_sq,
                             h_host=prob.A.host_kernel())
    if not (ec.any() or ed.any()):
        return prob
    new = {}
    if ec.any():
        new["h"] = _ldexp(xp, prob.h, -ec[0] if shared else -ec, wdt)
        with np.errstate(under="ignore"):  # a lam' below the smallest float is 0 next to |H'|^2
            new["lam"] = np.ldexp(prob.lam, -2 * ec)
            new["alpha"] = np.ldexp(prob.alpha, -2 * ec)
    if ed.any():
        new["y"] = _ldexp(xp, prob.y, -ed, wdt)
        new["y_sq"] = sq_norm(xp, xp.ascontiguousarray(new["y"]))
    shift = ec - ed  # z' = (c / d) z, x0' = (c / d) x0
    if shift.any():
        if prob.z is not None:
            new["z"] = _ldexp(xp, prob.z, shift, wdt)
            new["z_sq"] = sq_norm(xp, xp.ascontiguousarray(new["z"]))
        if prob.x0 is not None:
            new["x0"] = _ldexp(xp, prob.x0, shift, wdt)
    return prob.replace(x_exp=ed - ec, lam_exp=2 * ec, **new)


def unscale(prob, x):
    """The original problem's answer (shape (B, ...)) from the rescaled one's (inf where it overflows)."""
    e = prob.x_exp
    if not np.any(e):
        return x
    with np.errstate(over="ignore", under="ignore"):
        return _ldexp(prob.bk.xp, x, e, x.dtype)
