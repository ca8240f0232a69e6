"""Launchers of ``kernels/spectral.cu``: the circular closed form, its extrema, the preconditioner product."""

from __future__ import annotations

import math

import numpy as np

from .launch import (
    BLOCK,
    REAL_OF,
    check_cupy,
    complex_real_dtype_of,
    grid_1d,
    launch,
    operand,
    per_image_array,
    reduction_layout,
)
from .modules import cupy_module


def _spectral_operands(Y_shape, H, R, ndim, cdt, cp):
    """(B, nf, H, stride of H, R, stride of R) against a (*batch, *F) spectrum."""
    F = tuple(int(s) for s in Y_shape[len(Y_shape) - ndim:])
    nf = math.prod(F)
    B = math.prod(Y_shape[:len(Y_shape) - ndim])
    H, h_stride = operand(cp, "H", H, B, F, cdt)
    r_stride = 0
    if R is not None:
        R, r_stride = operand(cp, "R", R.astype(REAL_OF[cdt], copy=False), B, F, REAL_OF[cdt])
    return B, nf, H, h_stride, R, r_stride


def spectral_solve(Y, H, R, lam, alpha, Z=None, *, ndim):
    """The circular closed form, in place: ``Y <- (conj(H) Y + alpha Z) / (|H|^2 + lam R + alpha)``.

    Parameters
    ----------
    Y : cupy.ndarray
        complex64/complex128, shape ``(*batch, *F)`` (F the half spectrum of
        ``rfftn``), C-contiguous; overwritten with the solution's spectrum.
    H : cupy.ndarray
        Transfer function, shape ``F`` (one for the batch) or ``(*batch, *F)``.
    R : cupy.ndarray or None
        Regularizer power ``sum_i w_i |G_i|^2`` (real), shape ``F`` or
        ``(*batch, *F)``; None when there is no regularizer (lam R = 0).
    lam, alpha : float or array
        Per image (scalar or one per image).
    Z : cupy.ndarray, optional
        Spectrum of the proximal centre, shape of Y; None when alpha is all zero.
    ndim : int
        Number of spectral axes (F's length).

    Returns
    -------
    cupy.ndarray
        Y.
    """
    cp = cupy_module()
    check_cupy(cp, "Y", Y)
    dt = complex_real_dtype_of("Y", Y)
    cdt = np.dtype(Y.dtype)
    if not Y.flags.c_contiguous:
        raise ValueError("Y must be C-contiguous (it is overwritten in place)")
    with Y.device:
        B, nf, H, hs, R, rs = _spectral_operands(Y.shape, H, R, ndim, cdt, cp)
        lam_d = per_image_array(cp, "lam", lam, B, dt)
        alpha_d = per_image_array(cp, "alpha", alpha, B, dt)
        if Z is not None:
            if tuple(Z.shape) != tuple(Y.shape) or np.dtype(Z.dtype) != cdt:
                raise ValueError(f"Z must have Y's shape {tuple(Y.shape)} and dtype {cdt}; got "
                                 f"{tuple(Z.shape)} {Z.dtype}")
            Z = cp.ascontiguousarray(Z)
        total = Y.size
        if total:
            launch("spectral_solve", dt, grid_1d(total), (BLOCK,),
                    (Y, H, R, lam_d, alpha_d, Z, total, nf, hs, rs, int(R is not None), int(Z is not None)))
    return Y


def spectral_extrema(H, R, lam, alpha, batch, *, ndim):
    """Per-image min and max of ``D = |H|^2 + lam R + alpha`` over the spectrum, on the device.

    Returns
    -------
    (dmin, dmax) : cupy.ndarray
        float32/float64 arrays of shape `batch`.
    """
    cp = cupy_module()
    check_cupy(cp, "H", H)
    dt = complex_real_dtype_of("H", H)
    batch = tuple(int(b) for b in batch)
    F = tuple(H.shape[H.ndim - ndim:])
    with H.device:
        B, nf, H, hs, R, rs = _spectral_operands(batch + F, H, R, ndim, np.dtype(H.dtype), cp)
        lam_d = per_image_array(cp, "lam", lam, B, dt)
        alpha_d = per_image_array(cp, "alpha", alpha, B, dt)
        nblk, grid = reduction_layout(nf, B)
        pmin = cp.empty((B, nblk), dtype=dt)
        pmax = cp.empty((B, nblk), dtype=dt)
        if B:
            launch("spectral_extrema", dt, grid, (BLOCK,),
                    (H, R, lam_d, alpha_d, pmin, pmax, nf, B, nblk, hs, rs, int(R is not None)))
        return pmin.min(axis=1).reshape(batch), pmax.max(axis=1).reshape(batch)


def precondition_apply(Y, *, ndim, Dinv=None, D=None, floor=None):
    """In place on the spectrum Y (C-contiguous): ``Y *= Dinv``, or ``Y /= max(D, floor)``.

    `Dinv` / `D` are real, shape ``F`` or ``(*batch, *F)``; `floor` is per image.
    Returns Y.
    """
    cp = cupy_module()
    check_cupy(cp, "Y", Y)
    dt = complex_real_dtype_of("Y", Y)
    if not Y.flags.c_contiguous:
        raise ValueError("Y must be C-contiguous (it is overwritten in place)")
    if (Dinv is None) == (D is None):
        raise ValueError("precondition_apply needs exactly one of Dinv and D")
    if D is not None and floor is None:
        raise ValueError("precondition_apply with D needs floor (one per image or a scalar)")
    F = tuple(int(s) for s in Y.shape[Y.ndim - ndim:])
    B = math.prod(Y.shape[:Y.ndim - ndim])
    nf = math.prod(F)
    with Y.device:
        Dd, ds = operand(cp, "Dinv" if D is None else "D", Dinv if D is None else D, B, F, dt)
        total = Y.size
        if not total:
            return Y
        if D is None:
            launch("precond_mul", dt, grid_1d(total), (BLOCK,), (Y, Dd, total, nf, ds))
        else:
            fl = per_image_array(cp, "floor", floor, B, dt)
            launch("precond_div", dt, grid_1d(total), (BLOCK,), (Y, Dd, fl, total, nf, ds))
    return Y
