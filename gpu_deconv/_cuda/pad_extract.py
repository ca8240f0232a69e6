"""Launchers of ``kernels/pad_extract.cu``: P into the FFT grid, its adjoint fold, window crop and mask."""

from __future__ import annotations

import numpy as np

from .._padding import AxisPlan
from .launch import (
    BLOCK,
    batch_of,
    check_cupy,
    check_nd,
    check_out,
    grid_1d,
    launch,
    pad_geometry,
    real_dtype_of,
    window_geometry,
)
from .modules import cupy_module


def _grid_out(cp, out, shape, dtype):
    """`out` checked as a destination of `shape` and `dtype`, or a new array."""
    if out is None:
        return cp.empty(shape, dtype=dtype)
    check_out("out", out, shape, dtype)
    return out


def pad_to_grid(x, plans, boundary, grid=None, out=None):
    """P x written straight into the FFT grid: ``(..., *n) -> (..., *G)``.

    Position j of an axis holds the extended signal at ``j - L`` for
    ``j < n + L + R`` and zero beyond, so ``rfftn`` of the result needs no
    ``s=`` padding. One pass, every grid element written once.

    Parameters
    ----------
    x : cupy.ndarray
        float32/float64, shape ``(..., *n)`` (made C-contiguous if it is not).
    plans : sequence of AxisPlan
        One per spatial axis (1 to 3 axes).
    boundary : {"zero", "periodic", "symmetric", "reflect", "replicate"}
    grid : tuple of int, optional
        Grid shape (default each plan's G).
    out : cupy.ndarray, optional
        C-contiguous destination of shape ``(..., *grid)``.
    """
    cp = cupy_module()
    check_cupy(cp, "x", x)
    dt = real_dtype_of("x", x)
    nd = len(plans)
    geom = pad_geometry(plans, grid)
    batch = batch_of("x", x, nd, tuple(int(p.n) for p in plans))
    G = geom[9:9 + nd]
    with x.device:
        x = cp.ascontiguousarray(x)
        out = _grid_out(cp, out, batch + G, dt)
        total = out.size
        if total:
            launch("pad", dt, grid_1d(total), (BLOCK,), (x, out, total) + geom,
                    boundary=boundary, ndim=nd)
    return out


def fold_from_grid(v, plans, boundary):
    """P^T read from the FFT grid: ``(..., *G) -> (..., *n)``.

    Sums, for each sample of x, every grid position ``j < n + L + R`` whose
    extended position ``j - L`` reads it (the exact adjoint of
    :func:`pad_to_grid`); each output sample gathers its own preimages.
    """
    cp = cupy_module()
    check_cupy(cp, "v", v)
    dt = real_dtype_of("v", v)
    nd = len(plans)
    G = tuple(v.shape[v.ndim - nd:]) if v.ndim >= nd else ()
    geom = pad_geometry(plans, G if len(G) == nd else None)
    batch = batch_of("v", v, nd, geom[9:9 + nd])
    e = geom[6:6 + nd]
    if any(a > g for a, g in zip(e, G)):
        raise ValueError(f"v's grid {G} is shorter than the extended signal {e} (n + L + R per axis)")
    n = geom[0:nd]
    with v.device:
        v = cp.ascontiguousarray(v)
        out = cp.empty(batch + n, dtype=dt)
        total = out.size
        if total:
            launch("fold", dt, grid_1d(total), (BLOCK,), (v, out, total) + geom,
                    boundary=boundary, ndim=nd)
    return out


def _window_args(cp, v, shape, *, in_place=False):
    """Checks of crop / mask_window: (dtype, nd, batch shape, the 6 window arguments)."""
    check_cupy(cp, "v", v)
    dt = real_dtype_of("v", v)
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    check_nd(nd)
    if v.ndim < nd:
        raise ValueError(f"v must have at least {nd} axes; got shape {tuple(v.shape)}")
    if in_place and not v.flags.c_contiguous:
        raise ValueError("v must be C-contiguous (it is masked in place)")
    geom = window_geometry(shape, tuple(v.shape[v.ndim - nd:]))
    return dt, nd, tuple(v.shape[:v.ndim - nd]), geom


def _scale_arg(cp, scale, dtype, spatial):
    """`scale` checked as a weight of the spatial shape `spatial` in `dtype`, made C-contiguous."""
    check_cupy(cp, "scale", scale)
    if np.dtype(scale.dtype) != np.dtype(dtype):
        raise TypeError(f"scale must have the dtype of the data ({np.dtype(dtype)}); got {scale.dtype}")
    if tuple(scale.shape) != tuple(spatial):
        raise ValueError(f"scale must have exactly the spatial shape {tuple(spatial)}; got shape "
                         f"{tuple(scale.shape)}")
    return cp.ascontiguousarray(scale)


def crop(v, shape, scale=None):
    """The first ``shape[a]`` samples of each trailing axis, as a new C-contiguous array.

    With `scale` (a cupy array of exactly the window's shape and the dtype of
    `v`, shared by the batch) the window times `scale`, in the same one pass.
    """
    cp = cupy_module()
    dt, nd, batch, geom = _window_args(cp, v, shape)
    shape = geom[:nd]  # the window as ints
    with v.device:
        if scale is not None:
            scale = _scale_arg(cp, scale, dt, shape)
        v = cp.ascontiguousarray(v)
        out = cp.empty(batch + shape, dtype=dt)
        total = out.size
        if total and scale is None:
            launch("crop", dt, grid_1d(total), (BLOCK,), (v, out, total) + geom, ndim=nd)
        elif total:
            launch("crop_scaled", dt, grid_1d(total), (BLOCK,), (v, scale, out, total) + geom, ndim=nd)
    return out


def mask_window(v, shape):
    """Zero `v` (C-contiguous, in place) outside the first ``shape[a]`` samples per axis; returns v.

    ``E^T E`` on the grid: what a crop followed by a zero-fill back into the
    grid does, in one pass and without the intermediate array.
    """
    cp = cupy_module()
    dt, nd, _, geom = _window_args(cp, v, shape, in_place=True)
    with v.device:
        total = v.size
        if total:
            launch("mask", dt, grid_1d(total), (BLOCK,), (v, total) + geom, ndim=nd)
    return v


def embed(x, grid, out=None, scale=None):
    """x zero-filled into the grid (``rfftn(x, s=grid)``'s input), in one pass.

    Parameters
    ----------
    x : cupy.ndarray
        float32/float64, shape ``(..., *n)`` with ``n[a] <= grid[a]``.
    grid : tuple of int
        The grid (1 to 3 axes).
    out : cupy.ndarray, optional
        C-contiguous destination of shape ``(..., *grid)``.
    scale : cupy.ndarray, optional
        A weight of shape `n` and the dtype of `x`, shared by the batch: the
        grid receives ``x * scale``, in the same single pass (no product array).
    """
    nd = len(grid)
    check_nd(nd)
    if x.ndim < nd:
        raise ValueError(f"x must have at least {nd} axes; got shape {tuple(x.shape)}")
    n = tuple(int(s) for s in x.shape[x.ndim - nd:])
    if any(a > g for a, g in zip(n, grid)):
        raise ValueError(f"x's trailing shape {n} does not fit in grid {tuple(grid)}")
    if scale is None:
        plans = tuple(AxisPlan(a, 1, a, 0, 0, int(g), 0) for a, g in zip(n, grid))
        return pad_to_grid(x, plans, "zero", grid, out=out)
    cp = cupy_module()
    check_cupy(cp, "x", x)
    dt = real_dtype_of("x", x)
    geom = window_geometry(n, grid)
    G = geom[3:3 + nd]
    batch = tuple(x.shape[:x.ndim - nd])
    with x.device:
        scale = _scale_arg(cp, scale, dt, n)
        x = cp.ascontiguousarray(x)
        out = _grid_out(cp, out, batch + G, dt)
        total = out.size
        if total:
            launch("embed_scaled", dt, grid_1d(total), (BLOCK,), (x, scale, out, total) + geom, ndim=nd)
    return out
