"""The device seam: the operations whose implementation depends on where the arrays live.

``get_backend(...).ops`` answers every "how is this done here" question of
the numerical code: the padding matrix P and its adjoint fold, the passes
between an image and its FFT grid (pad into the grid, crop or fold out of
it, the window mask of the normal operator), the circulant preconditioner's
product, the multi-channel Sherman-Morrison solve, the vector passes of the
batched CG, and device memory (free bytes, out-of-memory errors, releasing
the pool). Callers never branch on the device.

:class:`ArrayOps` does all of it with array expressions: the NumPy path, and
the CuPy path when the custom kernels are off (``GPU_DECONV_DISABLE_KERNELS``)
or cannot serve (complex data, more than three spatial axes).
:class:`gpu_deconv._cuda.ops.CudaOps` overrides it with the one-pass CUDA
kernels of ``kernels/`` where they serve, and falls back to these methods
elsewhere. Both give the same values (the kernels do the same arithmetic);
what differs is the number of passes over memory.

Some steps come in pairs that share an intermediate whose layout belongs to
the ops object (e.g. :meth:`ArrayOps.inverse_to_grid` then
:meth:`ArrayOps.fold_grid`): the caller drops the spectrum between the two,
so that no more than two grid-sized arrays are alive at a time.
"""

from __future__ import annotations

import numpy as np

from ._padding import source_index
from ._spectra import abs2

__all__ = ["ArrayOps", "ArrayCGOps"]


def _window(shape):
    return (Ellipsis,) + tuple(slice(0, int(s)) for s in shape)


def _re_vdot(xp, u, v, axes):
    """``Re sum conj(u) v`` over `axes` (the trailing ones), per system."""
    if u.dtype == v.dtype and u.flags.c_contiguous and v.flags.c_contiguous:
        rdt = u.real.dtype
        # A C-contiguous complex array viewed as real pairs: its last axis doubles.
        return (u.view(rdt) * v.view(rdt)).sum(axis=axes)
    return (u.real * v.real + u.imag * v.imag).sum(axis=axes)


class ArrayCGOps:
    """The vector passes of the batched CG as array expressions (NumPy; CuPy without kernels).

    Per-image scalars stay in the working precision (``astype(dtype)`` of the
    step sizes), so float32 data is iterated in float32 throughout. Complex
    data (Hermitian positive-definite systems) take ``Re <u, v>`` (real step
    sizes: ``r^H z`` and ``p^H A p`` are real for Hermitian A and M), from the
    arrays viewed as interleaved real pairs.
    """

    def __init__(self, xp, nd):
        self.xp = xp
        self.axes = tuple(range(-nd, 0))
        self.expand = (Ellipsis,) + (None,) * nd

    def dot(self, u, v, out=None):
        if u.dtype.kind == "c" or v.dtype.kind == "c":
            d = _re_vdot(self.xp, u, v, self.axes)
            if out is None:
                return self.xp.asarray(d)
            out[...] = d
            return out
        d = (u * v).sum(axis=self.axes)
        if out is None:
            return self.xp.asarray(d)  # a single system sums to a NumPy scalar; the loop writes into it
        out[...] = d
        return out

    def update_xr(self, x, r, p, q, a, out=None):
        a = a.astype(x.real.dtype)[self.expand]
        x += a * p
        r -= a * q
        return self.dot(r, r, out)

    def update_p(self, p, z, beta):
        p *= beta.astype(p.real.dtype)[self.expand]
        p += z
        return p


#: cuFFT's status code for "could not allocate" (cufftResult CUFFT_ALLOC_FAILED).
CUFFT_ALLOC_FAILED = 2


class ArrayOps:
    """Array-expression implementations of the device seam (see the module docstring).

    Parameters
    ----------
    bk : gpu_deconv._backend.Backend
        The array module and transforms these operations run on.
    """

    #: Whether :meth:`spectral_solve` is a one-pass kernel, which the circular
    #: closed form then prefers to cached filters (two more spectra per image).
    fused_spectral_solve = False

    def __init__(self, bk):
        self.bk = bk
        self.xp = bk.xp

    def __repr__(self):
        return f"{type(self).__name__}({self.bk.name!r})"

    # ------------------------------------------------------------ P and P^T
    def pad(self, x, plans, boundary):
        """Apply P: extend the trailing axes of `x` by each plan's (L, R) (`x` itself for 'zero')."""
        if boundary == "zero":
            return x
        xp, nd = self.xp, len(plans)
        for ax, p in enumerate(plans):
            if p.L == 0 and p.R == 0:
                continue
            idx = source_index(boundary, p.n, np.arange(-p.L, p.n + p.R))
            x = xp.take(x, xp.asarray(idx), axis=ax - nd)
        return x

    def fold(self, v, plans, boundary):
        """Apply P^T: add each border value of the extension back onto the sample it was copied from."""
        if boundary == "zero":
            return v
        xp, nd = self.xp, len(plans)
        for ax, p in enumerate(plans):
            if p.L == 0 and p.R == 0:
                continue
            axis = ax - nd
            vm = xp.moveaxis(v, axis, 0)
            # Written through an axis-0 view of a C-ordered result, so that what the
            # FFTs and the CG passes receive next is contiguous (no copy there).
            folded = xp.empty(v.shape[:axis] + (p.n,) + v.shape[v.ndim + axis + 1:], dtype=v.dtype)
            out = xp.moveaxis(folded, axis, 0)
            out[...] = vm[p.L:p.L + p.n]
            if p.L:
                idx = source_index(boundary, p.n, np.arange(-p.L, 0))
                self.bk.scatter_add(out, idx, vm[:p.L])
            if p.R:
                idx = source_index(boundary, p.n, np.arange(p.n, p.n + p.R))
                self.bk.scatter_add(out, idx, vm[p.L + p.n:])
            v = folded
        return v

    # ------------------------------------------------- image <-> FFT grid
    def padded_spectrum(self, x, plans, boundary, grid):
        """Transform of ``P x`` zero-filled into `grid` (rfftn of real data, fftn of complex)."""
        return self.bk.fft_any(self.pad(x, plans, boundary), grid)

    def embedded_spectrum(self, y, grid):
        """Transform of `y` zero-filled into `grid`."""
        return self.bk.fft_any(y, grid)

    def inverse_window(self, X, grid, shape, cplx):
        """The first `shape` samples of the inverse transform of the temporary spectrum `X` (contiguous)."""
        y = self.bk.ifft_any(X, grid, cplx, overwrite_x=True)[_window(shape)]
        return self.xp.ascontiguousarray(y)

    def inverse_to_grid(self, Y, grid, plans, cplx):
        """First half of ``P^T E_ext F^-1``: the inverse transform of the temporary spectrum `Y`.

        Returns the extended support (``n + L + R`` per axis) in this ops
        object's layout, for :meth:`fold_grid`; the caller drops `Y` between the two.
        """
        return self.bk.ifft_any(Y, grid, cplx, overwrite_x=True)[_window(p.n_ext for p in plans)]

    def fold_grid(self, v, plans, boundary):
        """Second half: ``P^T`` of what :meth:`inverse_to_grid` returned, a new contiguous array."""
        if boundary == "zero":
            return self.xp.ascontiguousarray(v)
        return self.fold(v, plans, boundary)

    def masked_spectrum(self, X, grid, shape, cplx):
        """Transform of ``E^T E F^-1 X``: the inverse of the temporary spectrum `X`, zeroed beyond `shape`.

        The window is zeroed in place, not cropped and zero-filled again: two
        grid-sized arrays at a time (the grid and its spectrum).
        """
        v = self.bk.ifft_any(X, grid, cplx, overwrite_x=True)
        del X
        nd = len(shape)
        for a, m in enumerate(shape):
            if m < v.shape[v.ndim - nd + a]:
                v[(Ellipsis, slice(m, None)) + (slice(None),) * (nd - 1 - a)] = 0
        return self.bk.fft_any(v, grid)

    # -------------------------------------------------------------- spectra
    def circulant_apply(self, r, T, Dinv, grid, shape):
        """``T E F^-1 diag(Dinv) F E^T (T r)`` on `grid` (real data; T None for 1).

        At most two grid-sized arrays are alive at a time: the weighted copy
        of r is dropped once transformed, and the inverse may overwrite the spectrum.
        """
        xp, bk = self.xp, self.bk
        window = _window(shape)
        # Zero-filled into the grid here: rfftn's own zero-fill would be one more copy.
        rg = xp.zeros(r.shape[:r.ndim - len(grid)] + tuple(grid), dtype=r.dtype)
        if T is None:
            rg[window] = r
        else:
            xp.multiply(r, T, out=rg[window])
        R_ = bk.rfftn(rg, grid)
        del rg
        R_ *= Dinv
        v = bk.irfftn(R_, grid, overwrite_x=True)
        del R_
        if T is not None:
            return xp.multiply(v[window], T)  # the crop and the weight in one pass
        return xp.ascontiguousarray(v[window])

    def spectral_extrema(self, H, R, lam, alpha, batch, *, ndim):
        """Per-image min and max of ``D = |H|^2 + lam R + alpha`` over the spectrum (device arrays)."""
        raise NotImplementedError("the one-pass spectral solve is the CUDA ops' (fused_spectral_solve)")

    def spectral_solve(self, Y, H, R, lam, alpha, Z=None, *, ndim):
        """In place: ``Y <- (conj(H) Y + alpha Z) / (|H|^2 + lam R + alpha)``."""
        raise NotImplementedError("the one-pass spectral solve is the CUDA ops' (fused_spectral_solve)")

    def sherman_morrison(self, D, Y, Z, alpha):
        """Multi-channel closed form per frequency; D (C, *f), Y (..., *f), Z (..., C, *f).

        ``vtb = sum_c D_c b_c`` and ``den = alpha + sum_c |D_c|^2`` are the only
        reductions over channels; everything else is elementwise.
        """
        xp = self.xp
        ax = -D.ndim  # the channel axis of b and Z

        def chan(a):
            return xp.expand_dims(a, ax)

        b = xp.conj(D) * chan(Y)
        b += chan(alpha) * Z
        vtb = (D * b).sum(axis=ax)
        den = alpha + abs2(D).sum(axis=0)
        b -= xp.conj(D) * chan(vtb / den)
        b /= chan(alpha)
        return b

    # ----------------------------------------------- small-kernel normal operators
    def stencil_normal(self, x, stencil, batch, scale=None, plus=None):
        """``scale * sum_t w_t G_t^T G_t x (+ plus())`` of a :class:`gpu_deconv._direct.StencilSum`.

        `x` has shape ``(*batch, *stencil.n)`` in the working dtype; `scale` is
        None or broadcastable against x with one value per image (or one for
        all). `plus`, optional, returns the rest of a normal operator (an array
        of x's shape, made for this call) to add. Which of the two is formed
        first is the seam's choice: here the stencil sum, term by term with
        shift-and-add, then `plus` into it (the lower host peak: the
        stencil's temporaries are gone before `plus` runs); on the GPU `plus`
        first, and one gather pass adds the whole sum into its result.
        """
        v = stencil.apply(self, x, batch, scale)
        if plus is None:
            return v
        if v is x:
            v = v.copy()
        v += plus()
        return v

    # ---------------------------------------------------------------- CG
    def cg_ops(self, batch, n, dtype):
        """The vector passes of the batched CG for systems of shape `n`, `batch` of them."""
        return ArrayCGOps(self.xp, len(n))

    # -------------------------------------------------------------- memory
    def free_bytes(self):
        """Free device memory plus what the pool holds unused (bytes); None on the host."""
        if not self.bk.is_gpu:
            return None
        cp = self.xp
        free, _total = cp.cuda.Device().mem_info
        try:
            free += cp.get_default_memory_pool().free_bytes()
        except AttributeError:  # a pool without the statistic (e.g. an allocator set by the user)
            pass
        return int(free)

    def oom_errors(self) -> tuple:
        """The exception types that may mean "out of device memory" (none on the host).

        CuPy's OutOfMemoryError, and cuFFT's CuFFTError (a plan that cannot
        allocate fails with ``CUFFT_ALLOC_FAILED``; :meth:`is_out_of_memory`
        tells it from cuFFT's other errors).
        """
        if not self.bk.is_gpu:
            return ()
        errs = (self.xp.cuda.memory.OutOfMemoryError,)
        try:
            import importlib

            cufft = importlib.import_module(f"{self.xp.__name__}.cuda.cufft").CuFFTError
        except (ImportError, AttributeError):
            return errs
        return errs + (cufft,)

    @staticmethod
    def is_out_of_memory(exc) -> bool:
        """Whether an exception of :meth:`oom_errors` is a lack of memory.

        Every OutOfMemoryError; a CuFFTError only when it is ``CUFFT_ALLOC_FAILED``.
        """
        if type(exc).__name__ == "CuFFTError":
            return getattr(exc, "result", None) == CUFFT_ALLOC_FAILED or "CUFFT_ALLOC_FAILED" in str(exc)
        return True

    def release_memory(self):
        """Let go of cached device memory: the cuFFT plans (their work areas), then the pool's free blocks."""
        if not self.bk.is_gpu:
            return
        try:
            self.xp.fft.config.get_plan_cache().clear()
        except AttributeError:  # a cupy without the plan cache
            pass
        self.xp.get_default_memory_pool().free_all_blocks()

