"""Launcher of ``kernels/stencil.cu``: ``scale * sum_t w_t G_t^T G_t x`` of small kernels in one pass."""

from __future__ import annotations

import numpy as np

from .launch import BLOCK, batch_of, check_cupy, check_nd, check_out, grid_1d, launch, real_dtype_of
from .modules import cupy_module, per_device

__all__ = ["stencil_normal"]


@per_device
def _one(dtype):
    """The scale 1 (one value shared by every image)."""
    return cupy_module().ones(1, dtype=dtype)


def stencil_normal(x, stencil, scale=None, out=None):
    """``scale[b] * sum_t w_t G_t^T G_t x`` for a :class:`gpu_deconv._direct.StencilSum`, one pass.

    Each output sample gathers what its terms read (their preimages under the
    boundary's fold, the taps twice): no intermediate ``G x``, no atomics.

    Parameters
    ----------
    x : cupy.ndarray
        float32/float64, shape ``(..., *stencil.n)`` (made C-contiguous if it is not).
    stencil : StencilSum
        Terms sharing one boundary model (``stencil.boundary`` not None), 1 to 3 axes.
    scale : cupy.ndarray, optional
        One value per image (as many as x has images) or one for all, any shape
        of that size (e.g. ``(B, 1, 1)``); None for 1.
    out : cupy.ndarray, optional
        C-contiguous, x's shape and dtype, not x itself: the result is added to it
        in the same pass (the normal operator's other terms), and it is returned.

    Returns
    -------
    cupy.ndarray
        `out`, or a new C-contiguous array of x's shape and dtype.
    """
    cp = cupy_module()
    check_cupy(cp, "x", x)
    dt = real_dtype_of("x", x)
    n = stencil.n
    nd = len(n)
    check_nd(nd)
    if stencil.boundary is None:
        raise ValueError("the stencil's terms must share one boundary model to be applied in one pass")
    batch = batch_of("x", x, nd, n)
    nimg = int(np.prod(batch, dtype=np.int64))
    with x.device:
        x = cp.ascontiguousarray(x)
        if scale is None:
            scale = _one(dt)
        else:
            check_cupy(cp, "scale", scale)
            if scale.size not in (1, nimg):
                raise ValueError(f"scale must hold one value per image ({nimg}) or one for all; got shape "
                                 f"{tuple(scale.shape)}")
            scale = cp.ascontiguousarray(scale.astype(dt, copy=False).reshape(-1))
        stride = 1 if scale.size == nimg and nimg != 1 else 0
        tab, vals = stencil.device_tables(cp, dt)
        accumulate = out is not None
        if accumulate:
            check_out("out", out, x.shape, dt)
            if out is x:
                raise ValueError("out must not be x (each sample reads its neighbours in x)")
        else:
            out = cp.empty(x.shape, dtype=dt)
        total = out.size
        if total:
            dims = tuple(n) + (1,) * (3 - nd)
            launch("stencil_normal", dt, grid_1d(total), (BLOCK,),
                   (x, out, scale, tab, vals, total, stride) + dims + (int(accumulate),),
                   boundary=stencil.boundary, ndim=nd)
    return out
