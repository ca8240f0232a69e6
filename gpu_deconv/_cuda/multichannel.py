"""Launcher of ``kernels/multichannel.cu``: the multi-channel Sherman-Morrison solve."""

from __future__ import annotations

import math

import numpy as np

from .launch import (
    BLOCK,
    REAL_OF,
    batch_of,
    check_cupy,
    complex_real_dtype_of,
    grid_1d,
    launch,
)
from .modules import cupy_module


def _alpha_batch(alpha, nd):
    """Batch shape of a per-image alpha (trailing nd axes all 1), or None if it varies in space."""
    shape = tuple(getattr(alpha, "shape", ()))
    if len(shape) < nd:
        return shape if all(s == 1 for s in shape) else None
    if any(s != 1 for s in shape[len(shape) - nd:]):
        return None
    return shape[:len(shape) - nd]


def sherman_morrison_supported(D, Y, Z, alpha) -> bool:
    """Whether :func:`sherman_morrison` takes these operands (alpha constant per image)."""
    nd = D.ndim - 1
    if nd < 1 or np.dtype(D.dtype) not in REAL_OF:
        return False
    return _alpha_batch(alpha, nd) is not None


def sherman_morrison(D, Y, Z, alpha):
    """Multi-channel closed form per frequency (see solvers/multichannel.py), one pass.

    Parameters
    ----------
    D : cupy.ndarray
        Filter spectra, complex, shape ``(C, *F)``.
    Y : cupy.ndarray
        Data spectra, shape ``(..., *F)``.
    Z : cupy.ndarray
        Proximal centres' spectra, shape ``(..., C, *F)``.
    alpha : float or cupy.ndarray
        Positive, one per image: a scalar or shape ``(..., 1, ..., 1)``.

    Returns
    -------
    cupy.ndarray
        X of shape ``(*batch, C, *F)``, batch the broadcast of Y's, Z's and alpha's.
    """
    cp = cupy_module()
    for name, a in (("D", D), ("Y", Y), ("Z", Z)):
        check_cupy(cp, name, a)
    dt = complex_real_dtype_of("D", D)
    cdt = np.dtype(D.dtype)
    nd = D.ndim - 1
    C = int(D.shape[0])
    F = tuple(D.shape[1:])
    if nd < 1:
        raise ValueError(f"D must have shape (C, *F) with at least one spectral axis; got {tuple(D.shape)}")
    ab = _alpha_batch(alpha, nd)
    if ab is None:
        raise ValueError(f"alpha must be constant over the spectrum (one value per image); got shape "
                         f"{tuple(alpha.shape)}")
    ybatch = batch_of("Y", Y, nd, F)
    zbatch = batch_of("Z", Z, nd + 1, (C,) + F)
    try:
        batch = tuple(np.broadcast_shapes(ybatch, zbatch, ab))
    except ValueError:
        raise ValueError(f"batch axes of Y {ybatch}, Z {zbatch} and alpha {ab} do not broadcast") from None
    B = math.prod(batch)
    nf = math.prod(F)
    with D.device:
        Dc = cp.ascontiguousarray(D)
        Yc = cp.ascontiguousarray(cp.broadcast_to(Y.astype(cdt, copy=False), batch + F))
        Zc = cp.ascontiguousarray(cp.broadcast_to(Z.astype(cdt, copy=False), batch + (C,) + F))
        if isinstance(alpha, cp.ndarray):
            a = alpha.astype(dt, copy=False).reshape(ab)
        else:
            a = cp.asarray(np.asarray(alpha, dtype=dt).reshape(ab))
        a = cp.ascontiguousarray(cp.broadcast_to(a, batch)).reshape(B)
        X = cp.empty(batch + (C,) + F, dtype=cdt)
        total = B * nf
        if total:
            launch("sherman_morrison", dt, grid_1d(total), (BLOCK,), (Dc, Yc, Zc, a, X, total, C, nf))
    return X
