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

from .._validation import sq_norm

__all__ = ["balance_scales", "scale_exponents", "unscale"]


def _band(dtype):
    """Exponent e such that magnitudes in [2^-e, 2^e] need no rescaling (|h|^2 and FFT sums stay in range)."""
    return np.finfo(dtype).maxexp // 4


def _exponent(v):
    """The power of two e with v / 2^e in [0.5, 1)."""
    return int(np.frexp(v)[1])


def scale_exponents(xp, h, y, dtype, *, weights=(), y_sq=None):
    """``(ec, ed)``: the powers of two to divide kernel(s) `h` and data `y` by (0 for no change).

    Each is nonzero only when the largest magnitude is outside the band. The
    weights (lam, alpha: arrays or scalars) become ``w / 4^ec``; `ec` is moved
    towards 0 as far as needed to keep them finite (with room for ``lam' R``).
    `y_sq` (``||y||^2``, when known) spares the pass over `y` when it shows
    `y` within the band.
    """
    wdt = np.dtype(dtype)
    band = _band(wdt)
    hmax = float(xp.abs(h).max()) if h.size else 0.0
    ec = 0
    if hmax > 0 and not 2.0 ** -band <= hmax <= 2.0 ** band:
        ec = _exponent(hmax)
        ws = [float(np.max(w, initial=0.0)) for w in weights]
        top = max(ws, default=0.0)
        if top > 0:  # beyond, the data term is below rounding next to the regularizer anyway
            ec = max(ec, int(np.ceil((np.log2(top) - (np.finfo(wdt).maxexp - 16)) / 2)))
    ed = 0
    known = y_sq is not None and np.isfinite(y_sq) and 2.0 ** (-2 * band) <= y_sq <= 2.0 ** (2 * band)
    if y.size and not known:
        ymax = float(xp.abs(y).max())
        if ymax > 0 and not 2.0 ** -band <= ymax <= 2.0 ** band:
            ed = _exponent(ymax)
    return ec, ed


def balance_scales(prob):
    """Rescale `prob` (a validated deconvolution problem) in place; sets ``prob.x_exp``, ``prob.lam_exp``.

    The answer of the rescaled problem times ``2 ** prob.x_exp`` is the answer
    of the original one (:func:`unscale`); ``prob.lam`` and ``prob.alpha`` are
    then in the rescaled units, ``2 ** prob.lam_exp`` times them in the
    caller's. Both exponents are 0 (and nothing changed) when the kernel's and
    the data's magnitudes are within the band.
    """
    xp, wdt = prob.bk.xp, np.dtype(prob.dtype)
    prob.x_exp = prob.lam_exp = 0
    ec, ed = scale_exponents(xp, prob.h, prob.y, wdt, weights=(prob.lam, prob.alpha), y_sq=prob.y_sq)
    if ec == 0 and ed == 0:
        return prob
    if ec:
        prob.h = xp.ldexp(prob.h, np.int32(-ec)).astype(wdt, copy=False)
        with np.errstate(under="ignore"):  # a lam' below the smallest float is 0 next to |H'|^2
            prob.lam = np.ldexp(prob.lam, -2 * ec)
            prob.alpha = np.ldexp(prob.alpha, -2 * ec)
    if ed:
        prob.y = xp.ldexp(prob.y, np.int32(-ed)).astype(wdt, copy=False)
        prob.y_sq = sq_norm(xp, xp.ascontiguousarray(prob.y))
    shift = ec - ed  # z' = (c / d) z, x0' = (c / d) x0
    if shift:
        if prob.z is not None:
            prob.z = xp.ldexp(prob.z, np.int32(shift)).astype(wdt, copy=False)
            prob.z_sq = sq_norm(xp, xp.ascontiguousarray(prob.z))
        if prob.x0 is not None:
            prob.x0 = xp.ldexp(prob.x0, np.int32(shift)).astype(wdt, copy=False)
    prob.x_exp = ed - ec
    prob.lam_exp = 2 * ec
    return prob


def unscale(prob, x):
    """The original problem's answer from the rescaled one's (inf where it overflows)."""
    e = getattr(prob, "x_exp", 0)
    if not e:
        return x
    with np.errstate(over="ignore", under="ignore"):
        return prob.bk.xp.ldexp(x, np.int32(e)).astype(x.dtype, copy=False)
