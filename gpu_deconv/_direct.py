"""Direct (shift-and-add) convolution for small kernels, same model as the FFT path.

For a stencil such as the 5-point Laplacian, a few shifted multiply-adds over
the image cost far less than the FFT pairs of the general path (two per
operator application, four for its normal operator). The geometry is the
operator's AxisPlan: the extended input ``P x`` (zero-extended where the
boundary is zero) is read at ``t + shift - i`` for output t and tap i; the
adjoint scatters the same way and folds the extension back with ``P^T``.
Zero taps are skipped.
"""

from __future__ import annotations

import numpy as np

from ._padding import source_index

__all__ = ["DirectPlan", "direct_forward", "direct_adjoint", "StencilSum", "scaled_sum"]


class DirectPlan:
    """Precomputed slices for one kernel and geometry (host arrays; kernel values stay on their device)."""

    def __init__(self, h_host, plans, boundary):
        nd = len(plans)
        self.plans = plans
        self.boundary = boundary
        # Zero-boundary inputs are not extended by pad(); extend them here by
        # the reach of the window so every read is in range.
        self.zpad = []
        for p in plans:
            if boundary == "zero":
                lo = max(0, p.k - 1 - p.shift)
                hi = max(0, p.shift + p.m - p.n)
            else:
                lo = hi = 0
            self.zpad.append((lo, hi))
        k = h_host if h_host.ndim == nd else None
        if k is not None:
            nz = k != 0
        else:  # per-image kernels: a tap is skipped only if zero for every image
            nz = np.any(h_host.reshape((-1,) + h_host.shape[h_host.ndim - nd:]) != 0, axis=0)
        taps = np.argwhere(nz)
        self.taps = [tuple(int(v) for v in t) for t in taps]
        self.values = [float(k[t]) for t in self.taps] if k is not None else None
        self.slices = []
        for t in self.taps:
            sl = []
            for p, (lo, _), i in zip(plans, self.zpad, t):
                start = p.shift - i + lo
                sl.append(slice(start, start + p.m))
            self.slices.append(tuple(sl))

    @property
    def n_taps(self):
        return len(self.taps)


def _extended(ops, x, dp):
    xp = ops.xp
    xe = ops.pad(x, dp.plans, dp.boundary)
    if any(lo or hi for lo, hi in dp.zpad):
        widths = [(0, 0)] * (x.ndim - len(dp.plans)) + list(dp.zpad)
        xe = xp.pad(xe, widths)
    return xe


def _accumulate(xp, out, src, coef, first):
    """out (+)= coef * src, with unit coefficients as a plain add/subtract (one pass)."""
    if first:
        if coef is None:
            out[...] = src
        else:
            xp.multiply(src, coef, out=out)
    elif coef is None:
        out += src
    elif isinstance(coef, float) and coef == -1.0:
        out -= src
    else:
        out += coef * src


def _coefs(h, dp, kb, nd):
    """Per tap: None for +1, a float for a scalar kernel, an array for per-image kernels."""
    if kb:
        return [h[(Ellipsis,) + tap].reshape(h.shape[:kb] + (1,) * nd) for tap in dp.taps]
    vals = dp.values
    return [None if v == 1.0 else v for v in vals]


def direct_forward(ops, x, h, dp, batch):
    """``E C P x`` by shifted multiply-adds (`ops`: the device seam); `h` may have kernel-batch axes."""
    xp, nd = ops.xp, len(dp.plans)
    xe = _extended(ops, x, dp)
    out_shape = tuple(batch) + tuple(p.m for p in dp.plans)
    out = xp.empty(out_shape, dtype=x.dtype)
    kb = h.ndim - nd
    for j, (coef, sl) in enumerate(zip(_coefs(h, dp, kb, nd), dp.slices)):
        _accumulate(xp, out, xe[(Ellipsis,) + sl], coef, j == 0)
    if not dp.taps:
        out[...] = 0
    return out


def direct_adjoint(ops, y, h, dp, batch):
    """``P^T C^T E^T y``: scatter each tap's shifted copy, then fold the extension back."""
    xp, nd = ops.xp, len(dp.plans)
    ext = []
    for p, (lo, hi) in zip(dp.plans, dp.zpad):
        ext.append(p.n + p.L + p.R + lo + hi)
    ze = xp.zeros(tuple(batch) + tuple(ext), dtype=y.dtype)
    kb = h.ndim - nd
    for coef, sl in zip(_coefs(h, dp, kb, nd), dp.slices):
        _accumulate(xp, ze[(Ellipsis,) + sl], y, coef, False)
    crop = tuple(slice(lo, lo + p.n + p.L + p.R) for p, (lo, _) in zip(dp.plans, dp.zpad))
    v = ze[(Ellipsis,) + crop]
    return ops.fold(xp.ascontiguousarray(v), dp.plans, dp.boundary)


# ------------------------------------------------- sum of normal operators as one gather
class StencilSum:
    """``sum_t w_t G_t^T G_t`` of small-kernel operators on one spatial shape.

    The terms are ``(weight, DirectPlan, h)`` of operators that take the
    shift-and-add path (one kernel, real, few taps), or ``(weight, None,
    None)`` for the identity. :meth:`gpu_deconv._ops.ArrayOps.stencil_normal`
    applies it term by term (shift-and-add forward, then adjoint); the CUDA
    seam evaluates the whole sum in one gather pass (``kernels/stencil.cu``)
    from the host tables built here (:meth:`tables`).

    Parameters
    ----------
    items : list of (float, DirectPlan or None, array or None)
    n : tuple of int
        Spatial shape of x.
    """

    def __init__(self, items, n):
        self.items = list(items)
        self.n = tuple(int(v) for v in n)
        bnds = {dp.boundary for _, dp, _ in self.items if dp is not None}
        #: The common boundary of the terms (None when they differ: no single kernel serves them).
        self.boundary = bnds.pop() if len(bnds) == 1 else ("zero" if not bnds else None)
        self._tables = None
        self._device: dict = {}

    # Per term: (taps (k, nd) ints, values, per-axis (L, e, j0, m)).
    def _terms(self):
        nd = len(self.n)
        out = []
        for w, dp, _ in self.items:
            if dp is None:
                out.append((float(w), np.zeros((1, nd), dtype=np.int64), np.ones(1),
                            [(0, n, 0, n) for n in self.n]))
            else:
                geo = [(p.L, p.n + p.L + p.R, p.shift - p.L, p.m) for p in dp.plans]
                out.append((float(w), np.asarray(dp.taps, dtype=np.int64).reshape(-1, nd),
                            np.asarray(dp.values, dtype=np.float64), geo))
        return out

    def _interior(self, n, taps_a, geo_a):
        """Samples s of one axis where a term's only preimage is s + L and every read lies in x."""
        L, e, j0, m = geo_a
        s = np.arange(n)
        ok = np.ones(n, dtype=bool)
        if taps_a.size:
            lo, hi = int(taps_a.min()), int(taps_a.max())
            ok &= (s - j0 + lo >= 0) & (s - j0 + hi <= m - 1)  # u read inside the window
            ok &= (s - (hi - lo) >= 0) & (s + (hi - lo) <= n - 1)  # x read inside x
        src = source_index(self.boundary or "zero", n, np.arange(e) - L)
        counts = np.bincount(src[src >= 0], minlength=n)
        ok &= counts == 1
        return ok

    def tables(self):
        """Host tables ``(tab int64, vals float64)`` of ``kernels/stencil.cuh`` (layout there)."""
        if self._tables is not None:
            return self._tables
        nd, n = len(self.n), self.n
        terms = self._terms()
        ok = [np.ones(v, dtype=bool) for v in n]
        comb: dict = {}
        strides = [int(np.prod(n[a + 1:], dtype=np.int64)) for a in range(nd)]
        for w, taps, vals, geo in terms:
            for a in range(nd):
                ok[a] &= self._interior(n[a], taps[:, a], geo[a])
            for i, gi in zip(taps, vals):  # autocorrelation: x[s + i - i'] with weight w g_i g_i'
                for j, gj in zip(taps, vals):
                    off = int(sum((int(i[a]) - int(j[a])) * strides[a] for a in range(nd)))
                    comb[off] = comb.get(off, 0.0) + w * gi * gj
        box = []
        for a in range(3):
            if a < nd and ok[a].any():
                idx = np.flatnonzero(ok[a])
                lo, hi = int(idx[0]), int(idx[-1])
                if not ok[a][lo:hi + 1].all():  # keep it a box: the longest run of interior samples
                    runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1)
                    best = max(runs, key=len)
                    lo, hi = int(best[0]), int(best[-1])
                box += [lo, hi]
            else:
                box += [0, -1] if a < nd else [0, 0]
        offsets = [o for o, c in comb.items() if c != 0]
        head = [len(terms), len(offsets), sum(len(t[2]) for t in terms)] + box
        rows, taps_all, vals_all, weights = [], [], [], []
        start = 0
        for w, taps, vals, geo in terms:
            row = [start, len(vals)]
            for a in range(3):
                row += list(geo[a]) if a < nd else [0, 1, 0, 1]
            rows += row
            for t in taps:
                taps_all += [int(v) for v in t] + [0] * (3 - nd)
            vals_all += list(vals)
            weights.append(w)
            start += len(vals)
        tab = np.asarray(head + offsets + rows + taps_all, dtype=np.int64)
        vals = np.asarray([comb[o] for o in offsets] + vals_all + weights, dtype=np.float64)
        self._tables = (tab, vals)
        return self._tables

    def device_tables(self, xp, dtype):
        """:meth:`tables` on the current device of `xp`, the values in `dtype` (made once per both)."""
        cuda = getattr(xp, "cuda", None)
        key = (np.dtype(dtype).str, int(cuda.Device().id) if cuda is not None else -1)
        if key not in self._device:
            tab, vals = self.tables()
            self._device[key] = (xp.asarray(tab), xp.asarray(vals.astype(dtype)))
        return self._device[key]

    def apply(self, ops, x, batch, scale=None):
        """The sum term by term with array expressions (the reference of the one-pass kernel).

        `scale` (broadcastable per image, or None) multiplies the result.
        """
        def direct_normal(dp, h):
            def normal(v):
                hx = h if h.dtype == v.real.dtype else h.astype(v.real.dtype)
                return direct_adjoint(ops, direct_forward(ops, v, hx, dp, batch), hx, dp, batch)
            return normal

        return scaled_sum(x, [(w, None if dp is None else direct_normal(dp, h)) for w, dp, h in self.items],
                          scale)


def scaled_sum(x, terms, scale=None):
    """``scale * sum_t w_t N_t(x)`` over ``(w_t, N_t)`` pairs, ``N_t`` None for the identity.

    The order of the operations is the one every array path of the normal
    operator uses (a weight of 1 costs no pass; `x` itself is never written).
    """
    out = None
    for w, normal in terms:
        v = x if normal is None else normal(x)
        v = v * w if w != 1 else v
        out = v if out is None else out + v
    if scale is not None:
        if out is x:
            out = scale * out
        else:
            out *= scale
    return out
