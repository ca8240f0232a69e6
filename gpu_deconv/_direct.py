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

__all__ = ["DirectPlan", "direct_forward", "direct_adjoint"]


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
