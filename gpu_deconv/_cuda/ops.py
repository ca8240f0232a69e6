"""The CUDA side of the device seam: :class:`gpu_deconv._ops.ArrayOps` with the custom kernels.

Each method takes the one-pass kernel where it serves (real float32/float64
data, one to three spatial axes) and the array expressions of
:class:`~gpu_deconv._ops.ArrayOps` elsewhere (complex data, more axes), so
callers never ask which.
"""

from __future__ import annotations

import numpy as np

from .._ops import ArrayOps
from . import supports_ndim
from .cg import CGKernels
from .multichannel import sherman_morrison, sherman_morrison_supported
from .pad_extract import crop, embed, fold_from_grid, mask_window, pad_to_grid
from .spectral import precondition_apply, spectral_extrema, spectral_solve
from .stencil import stencil_normal

__all__ = ["CudaOps"]


def _real(a) -> bool:
    return np.dtype(a.dtype).kind != "c"


class CudaOps(ArrayOps):
    """The custom CUDA kernels behind the device seam (CuPy arrays, kernels enabled)."""

    fused_spectral_solve = True

    def _serves(self, a, nd) -> bool:
        return _real(a) and supports_ndim(nd)

    # ------------------------------------------------------------ P and P^T
    def pad(self, x, plans, boundary):
        if boundary != "zero" and self._serves(x, len(plans)) and any(p.L or p.R for p in plans) \
                and x.flags.c_contiguous:
            return pad_to_grid(x, plans, boundary, tuple(p.n_ext for p in plans))
        return super().pad(x, plans, boundary)

    def fold(self, v, plans, boundary):
        if boundary != "zero" and self._serves(v, len(plans)) and any(p.L or p.R for p in plans) \
                and v.flags.c_contiguous:
            return fold_from_grid(v, plans, boundary)
        return super().fold(v, plans, boundary)

    # ------------------------------------------------- image <-> FFT grid
    def padded_spectrum(self, x, plans, boundary, grid):
        if self._serves(x, len(plans)):  # P written straight into the grid: no s= zero-fill
            return self.bk.rfftn(pad_to_grid(x, plans, boundary, grid), grid)
        return super().padded_spectrum(x, plans, boundary, grid)

    def embedded_spectrum(self, y, grid):
        if self._serves(y, len(grid)):
            return self.bk.rfftn(embed(y, grid), grid)
        return super().embedded_spectrum(y, grid)

    def inverse_window(self, X, grid, shape, cplx):
        if not cplx and supports_ndim(len(grid)):
            return crop(self.bk.irfftn(X, grid, overwrite_x=True), shape)
        return super().inverse_window(X, grid, shape, cplx)

    def inverse_to_grid(self, Y, grid, plans, cplx):
        if not cplx and supports_ndim(len(grid)):  # the whole grid: fold_grid reads it in one pass
            return self.bk.irfftn(Y, grid, overwrite_x=True)
        return super().inverse_to_grid(Y, grid, plans, cplx)

    def fold_grid(self, v, plans, boundary):
        if not self._serves(v, len(plans)):  # then inverse_to_grid gave the generic window
            return super().fold_grid(v, plans, boundary)
        if all(p.L == 0 and p.R == 0 for p in plans):  # P^T is E^T: a crop
            return crop(v, tuple(p.n for p in plans))
        return fold_from_grid(v, plans, boundary)

    def masked_spectrum(self, X, grid, shape, cplx):
        if cplx or not supports_ndim(len(grid)):
            return super().masked_spectrum(X, grid, shape, cplx)
        # E^T E on the grid as an in-place mask: no crop, no zero-filled copy.
        v = self.xp.ascontiguousarray(self.bk.irfftn(X, grid, overwrite_x=True))
        del X
        return self.bk.rfftn(mask_window(v, shape), grid)

    # -------------------------------------------------------------- spectra
    def circulant_apply(self, r, T, Dinv, grid, shape):
        if not self._serves(r, len(grid)):
            return super().circulant_apply(r, T, Dinv, grid, shape)
        bk, xp = self.bk, self.xp
        if T is not None and (tuple(T.shape) != tuple(shape) or T.dtype != r.dtype):
            T = xp.ascontiguousarray(xp.broadcast_to(T.astype(r.dtype, copy=False), tuple(shape)))
        # The weight rides in the zero-fill into the grid and in the crop: one pass
        # each, no product array and no pass of its own.
        R_ = xp.ascontiguousarray(bk.rfftn(embed(r, grid, scale=T), grid))
        precondition_apply(R_, Dinv=Dinv, ndim=len(grid))
        return crop(bk.irfftn(R_, grid, overwrite_x=True), shape, scale=T)

    def spectral_extrema(self, H, R, lam, alpha, batch, *, ndim):
        return spectral_extrema(H, R, lam, alpha, batch, ndim=ndim)

    def spectral_solve(self, Y, H, R, lam, alpha, Z=None, *, ndim):
        return spectral_solve(Y, H, R, lam, alpha, Z, ndim=ndim)

    def sherman_morrison(self, D, Y, Z, alpha):
        if sherman_morrison_supported(D, Y, Z, alpha):
            # One pass per frequency on the GPU, with no (..., C, *f) temporaries.
            return sherman_morrison(D, Y, Z, alpha)
        return super().sherman_morrison(D, Y, Z, alpha)

    # ----------------------------------------------- small-kernel normal operators
    def stencil_normal(self, x, stencil, batch, scale=None, plus=None):
        if stencil.boundary is not None and self._serves(x, len(stencil.n)) \
                and (scale is None or _real(scale)):
            # One gather pass for the whole sum (a dozen shift-and-add passes otherwise),
            # added into the rest of the normal operator in the same pass.
            out = None
            if plus is not None:
                out = plus()
                if out is x or not out.flags.c_contiguous or out.dtype != x.dtype:
                    out = self.xp.array(out, dtype=x.dtype, order="C", copy=True)
            return stencil_normal(x, stencil, scale, out)
        return super().stencil_normal(x, stencil, batch, scale, plus)

    # ---------------------------------------------------------------- CG
    def cg_ops(self, batch, n, dtype):
        if np.dtype(dtype).kind == "c":  # the fused CG kernels are real-only
            return super().cg_ops(batch, n, dtype)
        return CGKernels(batch, n, dtype)
