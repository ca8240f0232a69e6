"""Choosing ``lam`` from the data: generalized cross-validation and the discrepancy principle.

For the regularized problem ``argmin_x 1/2||Hx - y||^2 + lam/2 x^T R x + alpha/2||x - z||^2``
the fitted data are ``H x_lam = A(lam) y + c`` with the influence matrix

``A(lam) = H (H^T H + lam R + alpha I)^-1 H^T``

(``R = sum_i w_i G_i^T G_i``). With ``m`` data samples:

* GCV (Golub, Heath & Wahba, *Technometrics* 21, 1979) minimises
  ``G(lam) = m ||(I - A) y - c||^2 / tr(I - A)^2``;
* the discrepancy principle (Morozov, 1966) picks the ``lam`` whose residual
  ``||H x_lam - y||^2`` equals ``m sigma^2``.

Closed forms (DFT, DCT) diagonalize ``A``: with ``f_k = (lam R_k + alpha) /
(|H_k|^2 + lam R_k + alpha)`` both the residual and ``tr(I - A) = sum_k f_k``
are exact sums over the spectrum, evaluated here for many ``lam`` on the
spectrum of the data (Hansen, Nagy & O'Leary, *Deblurring Images*, SIAM 2006,
ch. 7). The other models (``same`` with a zero, reflect or replicate
boundary, ``valid``, ``full``) are searched first on a circular surrogate of
the tapered data, then refined on the exact model: each refinement point is a
batched CG solve of the data and of Rademacher probes ``v`` for
``tr(A) ~ v^T A v`` (Hutchinson, 1989), with the surrogate's own influence
matrix as a control variate, so that only ``v^T (A - A_s) v`` is estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._spectra import abs2, kernel_power, weighted_power
from .closed_form import dct_spectra

__all__ = ["LamCurve", "CRITERIA", "criterion_of", "estimate_noise_flat", "spectral_model",
           "search_spectral", "surrogate_model", "refine_exact"]

CRITERIA = ("gcv", "discrepancy")


def criterion_of(lam):
    """The criterion named by a ``lam`` argument, or None for a number (checked where it is used).

    Numeric strings are never parsed: ``"1e-3"`` is a TypeError, as for ``alpha``.
    """
    if not isinstance(lam, str):
        return None
    if lam not in CRITERIA:
        raise TypeError(f"lam must be a non-negative number, one per image, 'gcv' or 'discrepancy'; "
                        f"got {lam!r:.60}")
    return lam

#: Decades searched below and above the reference ``lam_ref = max|H|^2 / max R``.
DECADES_BELOW = {4: 5.0, 8: 10.0}
DECADES_ABOVE = 3.0
#: In ``valid`` the unknown has more samples than the data and ``A -> I`` as
#: lam -> 0: GCV becomes 0/0. The search keeps ``tr(I - A) >= MIN_DOF * m``.
MIN_DOF = 0.02


@dataclass
class LamCurve:
    """The values of the criterion at the ``lam`` tried, per image (for plotting).

    Attributes
    ----------
    criterion : {"gcv", "discrepancy"}
    lam : ndarray
        ``(*batch, L)``: the ``lam`` evaluated, sorted, NaN-padded where an image
        was evaluated at fewer points.
    value : ndarray
        ``(*batch, L)``: GCV, or for the discrepancy principle the mean
        squared residual ``||H x - y||^2 / m`` (to compare with ``target``).
    exact : ndarray of bool
        ``(*batch, L)``: True where the value is that of the exact model, False
        where it is that of the circular surrogate used to seed the search (models
        without a closed form).
    target : ndarray or None
        Discrepancy only: ``sigma^2`` per image (batch shape).
    """

    criterion: str
    lam: np.ndarray
    value: np.ndarray
    exact: np.ndarray
    target: np.ndarray | None = None


# ------------------------------------------------------------------ noise
def _highpass_1d(n):
    """A high-pass filter of unit energy that annihilates linear trends, for an axis of length n."""
    if n >= 3:
        return np.array([1.0, -2.0, 1.0]) / np.sqrt(6.0)
    if n == 2:
        return np.array([1.0, -1.0]) / np.sqrt(2.0)
    return None


def estimate_noise_flat(bk, y, nd):
    """Per-image sigma of additive noise in ``y`` of shape ``(B, *m)`` (float64 host array, (B,)).

    Each axis is filtered by the unit-energy second difference ``[1, -2, 1] /
    sqrt(6)`` (valid part): white noise passes with its variance unchanged,
    while smooth content (blurred data) is annihilated up to its curvature.
    A robust scale ``s = 1.4826 median |d|`` (the Gaussian-consistent median
    absolute deviation; Donoho & Johnstone, *Biometrika* 81, 1994) sets a
    cut at ``4 s``, which discards edges; sigma is the root mean square of
    the rest (divided by 0.99893, the variance kept by a Gaussian cut at 4
    sigma). For noise whose variance varies over the image (Poisson) this is
    the root mean square noise, which is what the residual of the discrepancy
    principle measures; the median alone would read low there.
    """
    xp = bk.xp
    d = y
    for ax in range(nd):
        f = _highpass_1d(y.shape[1 + ax])
        if f is None:
            continue
        L = d.shape[1 + ax]
        acc = None
        for j, c in enumerate(f):
            sl = [slice(None)] * d.ndim
            sl[1 + ax] = slice(j, L - len(f) + 1 + j)
            term = c * d[tuple(sl)]
            acc = term if acc is None else acc + term
        d = acc
    d = d.reshape(d.shape[0], -1).astype(np.float64)
    s = 1.482602218505602 * xp.median(xp.abs(d), axis=1, keepdims=True)
    d2 = d * d
    keep = d2 < 16.0 * s * s
    kept = keep.sum(axis=1)
    trimmed = xp.where(kept > 0, (d2 * keep).sum(axis=1) / xp.maximum(kept, 1) / 0.99893, d2.mean(axis=1))
    return np.sqrt(bk.asnumpy(trimmed).astype(np.float64))


# ---------------------------------------------------------- spectral model
class SpectralModel:
    """Per-frequency terms of a problem that a unitary transform diagonalizes.

    In that basis ``(H^T H + lam R + alpha)`` is ``diag(Hp + lam R + alpha)``,
    and, with ``D = Hp + lam R + alpha``, ``f = (lam R + alpha) / D`` and
    ``g = alpha / D``, the data residual is ``r_k = f_k Y_k - g_k (H Z)_k``.
    Arrays are flattened to ``(B, K)`` (or ``(K,)`` when shared by the batch);
    ``w`` are the multiplicities of the frequencies (rfft half spectra) and
    ``scale`` turns ``sum_k w_k |r_k|^2`` into ``||r||^2``.
    """

    def __init__(self, bk, Hp, R, wa, w, scale, m, alpha, wb=None, wc=None):
        self.bk, self.xp = bk, bk.xp
        xp = bk.xp
        self.Hp, self.R, self.wa, self.w = Hp, R, wa, w
        self.wb, self.wc = wb, wc
        self.scale, self.m = float(scale), int(m)
        self.alpha = np.asarray(alpha, np.float64)
        self.B = wa.shape[0]
        self.use_alpha = bool(np.any(self.alpha > 0))
        hmax = float(xp.max(Hp))
        rmax = float(xp.max(R))
        self.lam_ref = hmax / rmax if rmax > 0 and hmax > 0 else 1.0

    def evaluate(self, lam):
        """``(||r||^2, tr(I - A))`` per image at the per-image ``lam`` (host arrays)."""
        xp = self.xp
        lam_b = xp.asarray(np.asarray(lam, np.float64).reshape(-1, 1))
        N = lam_b * self.R
        if self.use_alpha:
            N = N + xp.asarray(self.alpha.reshape(-1, 1))
        D = N + self.Hp
        f = N / D
        # einsum, not matmul: these are dot products, and BLAS threads only add overhead here
        trace = xp.einsum("bk,k->b", f, self.w)
        if self.use_alpha:
            g = xp.asarray(self.alpha.reshape(-1, 1)) / D
            res = (xp.einsum("bk,bk->b", f * f, self.wa) - 2 * xp.einsum("bk,bk->b", f * g, self.wb)
                   + xp.einsum("bk,bk->b", g * g, self.wc))
        else:
            f *= f
            res = xp.einsum("bk,bk->b", f, self.wa)
        return (np.asarray(self.bk.asnumpy(res), np.float64) * self.scale,
                np.asarray(self.bk.asnumpy(trace), np.float64))


def _rfft_weights(xp, grid):
    """Multiplicity of each rfftn half-spectrum bin in the full spectrum (flattened)."""
    last = grid[-1] // 2 + 1
    wl = np.full(last, 2.0)
    wl[0] = 1.0
    if grid[-1] % 2 == 0:
        wl[-1] = 1.0
    w = np.broadcast_to(wl, tuple(grid[:-1]) + (last,)).reshape(-1)
    return xp.asarray(np.ascontiguousarray(w))


def _as_rows(a, B, shared_ndim):
    """Flatten a spectrum; (K,) if shared by every image, else (B, K)."""
    if a.ndim > shared_ndim:
        return a.reshape(a.shape[0], -1)
    return a.reshape(-1)


def spectral_model(prob, method, Hs=None):
    """The exact :class:`SpectralModel` of a closed-form problem (``method`` "fft" or "dct").

    ``prob`` is a flat-batch problem of :mod:`gpu_deconv.solvers.deconvolve`.
    """
    bk, nd, B = prob.bk, prob.ndim, prob.B
    xp = bk.xp
    f64 = np.float64
    reg_terms = [(t.weight, None if t.is_identity else t.op.kernel) for t in prob.terms]
    if method == "fft":
        grid = tuple(prob.A.grid_shape)
        Hs = prob.A.spectrum(f64) if Hs is None else Hs
        Hp = _as_rows(abs2(Hs), B, nd)
        R = _as_rows(weighted_power(bk, reg_terms, grid, f64), B, nd)
        Y = bk.rfftn(prob.y.astype(f64), grid)
        w = _rfft_weights(xp, grid)
        scale = 1.0 / float(np.prod(grid))
        HZ = None
        if prob.use_alpha:
            HZ = (Hs * bk.rfftn(prob.z.astype(f64), grid)).reshape(B, -1)
    else:
        lam_A, lam_R = dct_spectra(bk, prob.A, prob.terms, prob.n, nd)
        Hp = _as_rows(lam_A * lam_A, B, nd)
        R = _as_rows(lam_R, B, nd)
        Y = bk.dctn(prob.y.astype(f64), nd)
        w = xp.ones(Hp.shape[-1], f64)
        scale = 1.0
        HZ = (lam_A * bk.dctn(prob.z.astype(f64), nd)).reshape(B, -1) if prob.use_alpha else None
    Y = Y.reshape(B, -1)
    wa = abs2(Y) * w if xp.iscomplexobj(Y) else Y * Y * w
    wb = wc = None
    if HZ is not None:
        wb = (Y.conj() * HZ).real * w if xp.iscomplexobj(Y) else Y * HZ * w
        wc = (abs2(HZ) if xp.iscomplexobj(HZ) else HZ * HZ) * w
    return SpectralModel(bk, Hp, R, wa, w, scale, int(np.prod(prob.m)), prob.alpha, wb, wc)


# ----------------------------------------------------------- surrogate model
def _mirror_power(xp, P, nd):
    """Average a full-grid power spectrum over the sign flips of its frequencies (all but the last axis)."""
    out = P
    for ax in range(P.ndim - nd, P.ndim - 1):
        flipped = xp.roll(xp.flip(out, axis=ax), 1, axis=ax)
        out = 0.5 * (out + flipped)
    return out


def _taper(xp, n, width):
    """A length-n window: raised-cosine ramps of `width` samples at both ends, 1 between."""
    w = np.ones(n)
    width = min(width, n // 2)
    if width > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)
        w[:width] = r
        w[n - width:] = r[::-1]
    return xp.asarray(w)


def surrogate_model(prob):
    """A circular stand-in for a model without closed form, on the data grid, for seeding the search.

    The data are tapered to zero over one kernel width at every face
    (raised-cosine ramps), so that their periodic extension has no jump, and
    the model is circular on the data grid. Whatever the boundary model,
    this keeps the edges of the data from looking like detail that only a
    tiny ``lam`` could fit (a mirror or zero extension of data blurred with
    a zero boundary does exactly that). The proximal term enters through
    ``alpha`` in the denominator only.
    """
    bk, nd, B = prob.bk, prob.ndim, prob.B
    xp = bk.xp
    f64 = np.float64
    m = tuple(prob.m)
    y = prob.y.astype(f64)
    for ax in range(nd):
        shape = [1] * (nd + 1)
        shape[ax + 1] = m[ax]
        y = y * _taper(xp, m[ax], prob.kshape[ax]).reshape(shape)
    reg_terms = [(t.weight, None if t.is_identity else t.op.kernel) for t in prob.terms]
    Hp = _as_rows(kernel_power(bk, prob.A.kernel, m, f64), B, nd)
    R = _as_rows(weighted_power(bk, reg_terms, m, f64), B, nd)
    Y = bk.rfftn(y, m).reshape(B, -1)
    w = _rfft_weights(xp, m)
    wa = abs2(Y) * w
    wb = wc = None
    if prob.use_alpha:
        wb = xp.zeros_like(wa)
        wc = wb
    return SpectralModel(bk, Hp, R, wa, w, 1.0 / float(np.prod(m)), int(np.prod(m)), prob.alpha, wb, wc)


def dct_powers(prob):
    """``(|H|^2, R)`` at the DCT frequencies of the data grid, sign-averaged, flattened ((K,) or (B, K)).

    The filter ``|H|^2 / (|H|^2 + lam R + alpha)`` in the orthonormal DCT
    basis is a symmetric matrix close to the influence matrix away from the
    edges: the control variate of the trace estimate.
    """
    bk, nd, B = prob.bk, prob.ndim, prob.B
    xp = bk.xp
    m = tuple(prob.m)
    grid = tuple(2 * a for a in m)
    crop = (Ellipsis,) + tuple(slice(0, a) for a in m)

    def power(h):
        return _mirror_power(xp, kernel_power(bk, h, grid, np.float64), nd)[crop]

    R = None
    for t in prob.terms:
        P = xp.ones(m, np.float64) if t.is_identity else power(t.op.kernel)
        R = t.weight * P if R is None else R + t.weight * P
    return _as_rows(power(prob.A.kernel), B, nd), _as_rows(R, B, nd)


# ------------------------------------------------------------------ search
def _criterion(criterion, res, tr, m, min_dof):
    if criterion == "gcv":
        ok = tr > min_dof * m
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ok, m * res / np.where(ok, tr, 1.0) ** 2, np.inf)
    return res / m


class _Curve:
    """Accumulates (lam, value, exact) per image."""

    def __init__(self, B):
        self.items = [[] for _ in range(B)]

    def add(self, lam, value, exact, rows=None):
        rows = range(len(self.items)) if rows is None else rows
        for i, b in enumerate(rows):
            self.items[b].append((float(lam[i]), float(value[i]), bool(exact)))

    def finish(self, criterion, batch, target=None):
        L = max(len(it) for it in self.items)
        B = len(self.items)
        lam = np.full((B, L), np.nan)
        val = np.full((B, L), np.nan)
        ex = np.zeros((B, L), bool)
        for b, it in enumerate(self.items):
            it.sort(key=lambda t: (t[0], t[2]))
            for j, (a, v, e) in enumerate(it):
                lam[b, j], val[b, j], ex[b, j] = a, v, e
        shape = tuple(batch) + (L,)
        return LamCurve(criterion, lam.reshape(shape), val.reshape(shape), ex.reshape(shape),
                        None if target is None else np.asarray(target).reshape(tuple(batch)))


def lam_bounds(model, dtype):
    """log10 bounds of the search per image, around ``lam_ref = max|H|^2 / max R``."""
    below = DECADES_BELOW[np.dtype(dtype).itemsize]
    c = np.log10(model.lam_ref)
    return c - below, c + DECADES_ABOVE


def search_spectral(model, criterion, *, target=None, dtype=np.float64, min_dof=0.0, curve=None,
                    exact=True, per_decade=1, rounds=(8, 4), flags=None, points=None):
    """Per-image ``lam`` minimising GCV (or solving the discrepancy equation) on a spectral model.

    A grid of `per_decade` points per decade over :func:`lam_bounds`; then, for
    each entry of `rounds`, that many points evenly spread across the two
    intervals around the current estimate (each round narrows the spacing);
    the estimate is the vertex of the parabola through the best point and its
    neighbours in ``(log lam, log G)`` for GCV, and for the discrepancy
    principle the interpolated crossing of the log mean squared residual
    (increasing in ``lam``) with ``log target``. Returns ``lam`` (B,).

    A dict passed as `points` receives ``"T"``, ``"V"``: every ``log10 lam``
    evaluated and the criterion there, (B, L) arrays sorted by ``lam``.
    A dict passed as `flags` receives, for the discrepancy principle, the
    boolean arrays ``"low"`` (the target lies below the residual at the
    smallest ``lam`` searched: no ``lam`` fits the data that closely) and
    ``"high"`` (above the residual at the largest).
    """
    B, m = model.B, model.m
    lo, hi = lam_bounds(model, dtype)
    L = int(np.ceil((hi - lo) * per_decade)) + 1
    grid = np.linspace(lo, hi, L)
    T = np.repeat(grid[None], B, 0)
    V = np.empty((B, L))
    for j in range(L):
        res, tr = model.evaluate(np.full(B, 10.0 ** grid[j]))
        V[:, j] = _criterion(criterion, res, tr, m, min_dof)
    if curve is not None:
        for j in range(L):
            curve.add(10.0 ** T[:, j], V[:, j], exact)
    if flags is not None and criterion == "discrepancy":
        flags["low"] = np.asarray(target) < V[:, 0]
        flags["high"] = np.asarray(target) > V[:, -1]
    step = grid[1] - grid[0]
    est = _estimate(criterion, T, V, target)
    for npts in rounds:
        offs = np.linspace(-step, step, npts + 2)[1:-1]
        offs = offs[np.abs(offs) > 1e-9 * step]
        for o in offs:
            t = np.clip(est + o, lo, hi)
            res, tr = model.evaluate(10.0 ** t)
            v = _criterion(criterion, res, tr, m, min_dof)
            T = np.concatenate([T, t[:, None]], 1)
            V = np.concatenate([V, v[:, None]], 1)
            if curve is not None:
                curve.add(10.0 ** t, v, exact)
        step = offs[offs > 0].min() if (offs > 0).any() else step / 2
        est = _estimate(criterion, T, V, target)
    if points is not None:
        order = np.argsort(T, axis=1)
        points["T"], points["V"] = np.take_along_axis(T, order, 1), np.take_along_axis(V, order, 1)
    return 10.0 ** np.clip(est, lo, hi)


def _estimate(criterion, T, V, target):
    """Per image: the current best log10 lam from the evaluated points (T, V)."""
    order = np.argsort(T, axis=1)
    T = np.take_along_axis(T, order, 1)
    V = np.take_along_axis(V, order, 1)
    if criterion == "gcv":
        return np.array([_parabola_min(t, v) for t, v in zip(T, V)])
    return np.array([_crossing(t, v, float(g)) for t, v, g in zip(T, V, np.asarray(target))])


def _parabola_min(T, V):
    """Vertex of the parabola through the smallest of V and its neighbours (log V against T)."""
    fin = np.isfinite(V) & (V > 0)
    if not fin.any():
        return float(T[len(T) // 2])
    Vv = np.where(fin, V, np.inf)
    i = int(np.argmin(Vv))
    if i == 0 or i == len(T) - 1 or not (fin[i - 1] and fin[i + 1]):
        return float(T[i])
    x0, x1, x2 = T[i - 1:i + 2]
    y0, y1, y2 = np.log(V[i - 1:i + 2])
    if not (x0 < x1 < x2):
        return float(x1)
    d0, d1 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    a = (d1 - d0) / (x2 - x0)  # half the second derivative
    if not a > 0:
        return float(x1)
    b = d0 + a * (x1 - x0)  # slope at x1
    return float(np.clip(x1 - b / (2 * a), x0, x2))


def _crossing(T, V, target):
    """Where the (increasing) V crosses target, by linear interpolation of log V against T."""
    fin = np.isfinite(V) & (V > 0)
    T, V = T[fin], V[fin]
    if T.size == 0:
        return 0.0
    if target <= V[0]:
        return float(T[0])
    if target >= V[-1]:
        return float(T[-1])
    k = int(np.searchsorted(V, target))
    k = min(max(k, 1), T.size - 1)
    v0, v1 = np.log(V[k - 1]), np.log(V[k])
    if v1 <= v0:
        return float(T[k])
    return float(T[k - 1] + (np.log(target) - v0) / (v1 - v0) * (T[k] - T[k - 1]))


# ------------------------------------------------------- exact refinement (CG)
def _corrected(t0, step, evaluate, sur, mask, xp):
    """GCV: the surrogate's curve times a log-linear correction fitted to two exact evaluations.

    ``log G(t) ~ log S(t) + a + b t`` with ``a, b`` from the exact GCV at
    ``t0 -+ step / 2``; the answer minimises that corrected curve over the
    surrogate's points within one decade of ``t0`` (parabola through the
    best, or the best point itself where the curve is not convex there); the
    better exact point where an exact value is not finite.
    """
    h = step / 2
    v1, s1, ratio = evaluate(t0 - h, None)
    # tr(A) / tr(A_dct) changes little over half a decade (measured, motion blur: the carried ratio
    # is within 0.1 % of tr(I - A), a carried difference 2 % off): the probes run at the first
    # point only, and the ratio they measure is carried to the second.
    v2, s2, _ = evaluate(t0 + h, s1[:, :1], ratio)
    T, V = sur["T"], sur["V"]
    out = np.empty(t0.size)
    for b in range(t0.size):
        ok = np.isfinite(V[b]) & (V[b] > 0) & (np.abs(T[b] - t0[b]) <= 1.0)
        tt, vv = T[b][ok], V[b][ok]
        if not (np.isfinite(v1[b]) and np.isfinite(v2[b])) or tt.size < 3:
            out[b] = t0[b] - h if v1[b] <= v2[b] else t0[b] + h
            continue
        ls1 = np.interp(t0[b] - h, tt, np.log(vv))
        ls2 = np.interp(t0[b] + h, tt, np.log(vv))
        slope = ((np.log(v2[b]) - ls2) - (np.log(v1[b]) - ls1)) / (2 * h)
        corr = np.log(vv) + slope * (tt - t0[b])
        out[b] = _parabola_min(tt, np.exp(corr - corr.min()))
    near = np.abs(out - (t0 - h)) <= np.abs(out - (t0 + h))
    warm = xp.where(mask(near, s2[:, 0]), s1[:, 0], s2[:, 0])
    return 10.0 ** out, warm


def probes(m, count, seed=0):
    """``count`` Rademacher vectors of spatial shape ``m`` (float64 host), fixed seed."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, size=(count,) + tuple(m)).astype(np.float64) * 2 - 1


def refine_exact(prob, criterion, lam_s, solve_at, sur_points, *, target=None, nprobes=1, curve=None,
                 factor=10.0 ** 0.5, max_steps=3, min_dof=0.0):
    """Refine a surrogate's ``lam_s`` on the exact model (CG modes).

    ``solve_at(lam, x0, with_probes) -> state`` solves, at per-image ``lam``
    and warm started from a previous state (or None), the data and, with
    `with_probes`, the `nprobes` probes as extra batch entries: ``state`` has
    shape ``(B, 1 + nprobes, *n)`` (or ``(B, 1, *n)``), the data's solution
    first.

    GCV: the exact model's GCV at ``lam_s * factor^(-+1/4)`` (the residual
    exactly; ``tr(A)`` by Hutchinson probes with the DCT filter of
    :func:`dct_powers` as control variate at the first point, and at the
    second the DCT filter's trace times the ratio measured at the first)
    fixes a log-linear correction of the surrogate's curve (`sur_points`,
    from :func:`search_spectral`), whose minimum is the answer
    (:func:`_corrected`). Discrepancy: secant steps on
    the exact log residual against ``log lam`` (at most `max_steps` after
    the first two). `min_dof`: GCV is +inf where ``tr(I - A) < min_dof m``.

    Returns ``(lam, x_warm)``: the chosen ``lam`` per image and the data
    solution of the evaluated point nearest to it (a warm start).
    """
    bk, nd, B = prob.bk, prob.ndim, prob.B
    xp = bk.xp
    m = int(np.prod(prob.m))
    f64 = np.float64
    axes = tuple(range(-nd, 0))
    n = tuple(prob.n)
    gcv = criterion == "gcv"
    if gcv:
        V = xp.asarray(probes(prob.m, nprobes))
        # surrogate control variate: v^T A_s v = sum_k fs_k (C v)_k^2, C the orthonormal DCT
        CV2 = bk.dctn(V, nd).reshape(nprobes, -1) ** 2
        cv_Hp, cv_R = dct_powers(prob)
        alpha_b = xp.asarray(prob.alpha.reshape(-1, 1))

    def mask(sel, like):
        return xp.asarray(sel).reshape((B,) + (1,) * (like.ndim - 1))

    def evaluate(t, x0, ratio=None):
        """Criterion at log10 lam = t. GCV: ``ratio`` None solves the probes too and returns the
        ratio ``tr(A) / tr(A_dct)`` measured there; given, it carries that ratio over."""
        lam = 10.0 ** np.asarray(t, f64)
        with_probes = gcv and ratio is None
        state = solve_at(lam, x0, with_probes)
        r = prob.A.forward_unchecked(state[:, 0], (B,)) - prob.y
        res = bk.asnumpy((r.astype(f64) ** 2).sum(axis=axes)).astype(f64)
        if gcv:
            Ns = xp.asarray(lam.reshape(-1, 1)) * cv_R + alpha_b
            fs = xp.broadcast_to(cv_Hp / (Ns + cv_Hp), (B, CV2.shape[1]))
            trAs = bk.asnumpy(fs.sum(axis=1))
            if with_probes:
                u = state[:, 1:].reshape((B * nprobes,) + n)
                Hu = prob.A.forward_unchecked(u, (B * nprobes,))
                Hu = Hu.reshape((B, nprobes) + tuple(prob.m)).astype(f64)
                vAv = bk.asnumpy((Hu * V[None]).sum(axis=axes))  # (B, P)
                vAsv = bk.asnumpy(xp.einsum("bk,pk->bp", fs, CV2))
                trA = trAs + (vAv - vAsv).mean(axis=1)
                ratio = np.where(trAs > 0, trA / np.where(trAs > 0, trAs, 1.0), 1.0)
            val = _criterion("gcv", res, m - trAs * ratio, m, min_dof)
        else:
            val = res / m
        if curve is not None:
            curve.add(lam, val, True)
        return (val, state, ratio) if gcv else (val, state)

    t0 = np.log10(np.asarray(lam_s, f64))
    step = np.log10(factor)
    if gcv:
        return _corrected(t0, step, evaluate, sur_points, mask, xp)
    # discrepancy: secant on the log residual, which increases with lam
    tgt = np.asarray(target, f64)
    va, sa = evaluate(t0, None)
    ta = t0
    direction = np.where(va < tgt, 1.0, -1.0)
    tb = ta + direction * step
    vb, sb = evaluate(tb, sa)
    for _ in range(max_steps):
        if np.all(np.abs(vb / tgt - 1) < 0.01):
            break
        la, lb = np.log(np.maximum(va, 1e-300)), np.log(np.maximum(vb, 1e-300))
        dt = np.where(tb != ta, tb - ta, 1.0)
        slope = (lb - la) / dt
        ok = slope > 1e-6
        tn = np.where(ok, tb + (np.log(tgt) - lb) / np.where(ok, slope, 1.0), tb + direction * step)
        tn = np.clip(tn, tb - 2.0, tb + 2.0)  # a flat residual must not throw lam far away
        tn = np.where(np.abs(vb / tgt - 1) < 0.01, tb, tn)
        vn, sn = evaluate(tn, sb)
        ta, va, sa = tb, vb, sb
        tb, vb, sb = tn, vn, sn
    return 10.0 ** tb, sb[:, 0]
