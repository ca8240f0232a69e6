"""ConvolutionOperator: a convolution mode as a linear operator with its exact adjoint.

Every mode is ``H = E C P``: P extends the input by the boundary
model, C is a circular convolution on an FFT grid long enough that nothing
wraps into the output window, E extracts the window. The adjoint is
``P^T C^H E^T``: zero-fill the output into the grid, correlate (multiply by
the conjugate transfer function), keep the extended support, fold the
extension back (P^T).
"""

from __future__ import annotations

import math

import numpy as np

from . import _cache
from ._axes import check_axes, from_last, natural_shape, to_last
from ._backend import get_backend, is_cupy_array
from ._direct import DirectPlan, StencilSum, direct_adjoint, direct_forward
from ._padding import plan_axis, source_index
from ._spectra import abs2, kernel_spectrum
from ._typing import Array, ArrayLike, Boundary, Convention, DTypeLike, Mode
from ._validation import (
    as_array,
    as_float_array,
    broadcast_batch,
    check_dtype_arg,
    check_mode_boundary_convention,
    check_ndim,
    check_shape,
    finite_result,
    quiet_fp,
    work_dtype,
)

__all__ = ["ConvolutionOperator"]

#: Kernels with at most this many nonzero taps are applied by shift-and-add, not FFT.
DIRECT_MAX_TAPS = 7
#: Largest dense matrix (entries) that :meth:`ConvolutionOperator.to_matrix` builds.
MAX_DENSE_ENTRIES = 2**24
#: Largest number of stored entries (output samples x kernel taps) of the sparse matrix.
#: Building the pattern takes about 80-100 bytes per entry at its peak (measured: 1.3 GiB
#: and 5 s at this limit; 2**26, the limit before, took 6 GiB and 20 s).
MAX_SPARSE_ENTRIES = 2**24


def _times_fresh(S, F):
    """``S * F`` for a spectrum S made by the caller: in place unless F's batch widens it."""
    if S.ndim >= F.ndim and all(a == b or b == 1 for a, b in zip(S.shape[S.ndim - F.ndim:], F.shape)):
        S *= F
        return S
    return S * F


class ConvolutionOperator:
    """A convolution ``x -> h * x`` in a given mode and boundary model, with its adjoint.

    Parameters
    ----------
    h : array_like
        Kernel (NumPy or CuPy array, real or complex). Its trailing `ndim`
        axes are the kernel; leading axes, if ``ndim < h.ndim``, hold one
        kernel per image and broadcast against the batch axes of the input.
    in_shape : tuple of int
        Shape of the input. Its last `ndim` entries are the spatial shape; any
        leading entries fix a batch shape (otherwise any batch is accepted).
    mode : {"full", "same", "valid", "circular"}, optional
        Output window, as in :func:`gpu_deconv.convolve`. Default "full".
    boundary : {"zero", "periodic", "symmetric", "reflect", "replicate"}, optional
        How the input is extended beyond its support (the padding matrix P).
    convention : {"scipy", "matlab"}, optional
        Origin of "same" (and "circular") for even kernel sizes.
    ndim : int, optional
        Number of spatial axes (default ``h.ndim``).
    dtype : {None, float32, float64}, optional
        Working precision for integer inputs (default float64). Floating inputs
        are computed in their own precision (float32 stays float32).
    axes : int or sequence of int, optional
        The axes of `in_shape` (the full shape, batch included) that the
        kernel's axes act along, in the kernel's order: channels-last images
        ``(H, W, C)`` with a 2-D kernel take ``axes=(0, 1)``. Inputs and
        outputs keep that layout (`in_shape`/`out_shape` too); the other axes
        are a fixed batch. Mutually exclusive with `ndim`. :meth:`to_matrix`
        and :meth:`aslinearoperator` act on one image with its spatial axes in
        the order of `axes`.

    Attributes
    ----------
    in_shape, out_shape : tuple of int
        Input and output shapes (spatial, or batch + spatial if a batch was given).
    grid_shape : tuple of int
        FFT grid on which the circular convolution C runs.

    Notes
    -----
    Real data with a real kernel run on real FFTs (half spectra). Complex data
    (or a complex kernel) run on full complex FFTs in the data's precision
    (complex64 / complex128); the adjoint is then the conjugate transpose and
    :meth:`to_matrix` is complex for a complex kernel. Real input to an
    operator with a complex kernel is promoted to complex.

    The transfer functions are computed once per operator and dtype, and are
    shared through a bounded cache with other operators of the same kernel
    and geometry. :meth:`normal` uses a single FFT pair where ``E^T E`` is the
    identity (circular, and full with a zero boundary), two pairs otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from gpu_deconv import ConvolutionOperator
    >>> A = ConvolutionOperator(np.array([1.0, 2.0, 3.0]), (5,), mode="valid")
    >>> A.out_shape
    (3,)
    >>> A.to_matrix()
    array([[3., 2., 1., 0., 0.],
           [0., 3., 2., 1., 0.],
           [0., 0., 3., 2., 1.]])
    """

    def __init__(self, h: ArrayLike, in_shape: int | tuple[int, ...], mode: Mode = "full", *,
                 boundary: Boundary = "zero", convention: Convention = "scipy", ndim: int | None = None,
                 dtype: DTypeLike | None = None, axes=None) -> None:
        check_mode_boundary_convention(mode, boundary, convention)
        dtype = check_dtype_arg(dtype)
        bk = get_backend(h=h)
        h = as_float_array(bk, "h", h, dtype, allow_complex=True)
        self._setup(bk, h, in_shape, mode, boundary, convention, ndim, dtype, axes)

    @classmethod
    def from_validated(cls, h, in_shape, mode, *, boundary, convention, ndim, host=None):
        """The operator of a kernel its caller has validated already (floating, finite, one array module).

        Nothing about `h` is checked again (the geometry still is). `host`, when
        given, is ``h`` on the host: the operator's cache key and its choice of
        the shift-and-add path read it instead of copying `h` from the device.
        """
        op = cls.__new__(cls)
        op._setup(get_backend(h=h), h, in_shape, mode, boundary, convention, ndim, None, None)
        op._h_host = host
        return op

    def _setup(self, bk, h, in_shape, mode, boundary, convention, ndim, dtype, axes):
        in_shape = check_shape("in_shape", in_shape)
        self._axes = None
        if axes is not None:
            if ndim is not None:
                raise ValueError(f"axes= and ndim= are mutually exclusive (per-image kernels use ndim=); "
                                 f"got axes={axes!r}, ndim={ndim!r}")
            self._axes = check_axes(axes, len(in_shape), h.ndim)
            in_shape = tuple(in_shape[a] for a in range(len(in_shape)) if a not in self._axes) + tuple(
                in_shape[a] for a in self._axes)
        ndim = check_ndim(ndim, h.ndim)
        if len(in_shape) < ndim:
            raise ValueError(
                f"in_shape {in_shape} has fewer axes than the kernel's {ndim} spatial axes "
                f"(h.shape={tuple(h.shape)})"
            )
        if mode == "circular":
            boundary = "periodic"
        self._bk = bk
        self._h = h
        self._int_dtype = dtype
        self.ndim = ndim
        self.mode = mode
        self.boundary = boundary
        self.convention = convention
        self.dtype = h.dtype
        self.kernel_shape = tuple(h.shape[h.ndim - ndim:])
        self.kernel_batch = tuple(h.shape[:h.ndim - ndim])
        spatial = in_shape[len(in_shape) - ndim:]
        self._fixed_batch = in_shape[:len(in_shape) - ndim] if len(in_shape) > ndim else None
        if self._fixed_batch is not None:
            broadcast_batch("in_shape", self._fixed_batch, "h", self.kernel_batch)
        if mode == "valid":
            too_big = [i for i, (n, k) in enumerate(zip(spatial, self.kernel_shape)) if k > n]
            if too_big and convention == "scipy":
                raise ValueError(
                    f"mode='valid' needs the kernel no larger than the input in every axis; "
                    f"kernel shape {self.kernel_shape} vs input shape {spatial} "
                    "(convention='matlab' returns an empty result instead)"
                )
        self.spatial_in_shape = spatial
        self.plans = tuple(
            plan_axis(n, k, mode, boundary, convention, bk.next_fast_len)
            for n, k in zip(spatial, self.kernel_shape)
        )
        self.spatial_out_shape = tuple(p.m for p in self.plans)
        self.grid_shape = tuple(p.G for p in self.plans)
        self._empty = any(m == 0 for m in self.spatial_out_shape)
        # E^T E is the identity on everything the circular product can reach
        # (so normal() needs one FFT pair) for circular, and for full + zero.
        self._one_pass_normal = mode == "circular" or (mode == "full" and boundary == "zero")
        self._spectra = {}  # by dtype, or (what, dtype) for |H|^2 and conj(H)
        self._key = None
        self._h_host = None  # the kernel on the host, fetched once when first needed
        self._direct = None  # resolved lazily: a DirectPlan, or False for the FFT path
        self._stencil = None  # the StencilSum of the normal operator on the shift-and-add path

    # ------------------------------------------------------------------ shapes
    @property
    def in_shape(self) -> tuple[int, ...]:
        b = self._fixed_batch or ()
        if self._axes is not None:
            return natural_shape(b, self.spatial_in_shape, self._axes)
        return b + self.spatial_in_shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self._fixed_batch is None:
            return self.spatial_out_shape
        b = broadcast_batch("in_shape", self._fixed_batch, "h", self.kernel_batch)
        if self._axes is not None:
            return natural_shape(tuple(b), self.spatial_out_shape, self._axes)
        return tuple(b) + self.spatial_out_shape

    def _along(self, fn, a):
        """Apply ``fn`` (trailing spatial axes) to `a` laid out with spatial axes at `axes=`."""
        if self._axes is None:
            return fn(a)
        xp = self._bk.xp
        a = self._check_layout(a)
        return xp.ascontiguousarray(from_last(xp, fn(to_last(xp, a, self._axes)), self._axes))

    def _check_layout(self, a):
        if not hasattr(a, "ndim") or a.ndim != len(self._fixed_batch) + self.ndim:
            a = as_array(self._bk, "x", a)
            if a.ndim != len(self._fixed_batch) + self.ndim:
                raise ValueError(f"with axes={self._axes}, the input must have {len(self.in_shape)} "
                                 f"dimensions; got shape {tuple(a.shape)}")
        return a

    @property
    def shape(self) -> tuple[int, int]:
        """(number of outputs, number of inputs) of one image's matrix."""
        # math.prod: Python ints, where np.prod would wrap around int64 for an untrusted
        # in_shape (and let to_matrix's size limit pass a negative count).
        return (math.prod(self.spatial_out_shape), math.prod(self.spatial_in_shape))

    @property
    def kernel(self) -> Array:
        return self._h

    @property
    def backend(self):
        return self._bk

    @property
    def H(self) -> _AdjointView:
        """The adjoint as an operator (forward and adjoint swapped)."""
        return _AdjointView(self)

    def __repr__(self):
        return (
            f"ConvolutionOperator(kernel_shape={self.kernel_shape}, in_shape={self.in_shape}, "
            f"out_shape={self.out_shape}, mode={self.mode!r}, boundary={self.boundary!r}, "
            f"convention={self.convention!r}, backend={self._bk.name!r})"
        )

    # ------------------------------------------------------------ transforms
    def _shifts(self):
        return tuple(p.shift for p in self.plans)

    def cache_key(self):
        """Hashable identity: kernel contents, geometry, mode, boundary and convention."""
        if self._key is None:
            self._key = _cache.content_key(self._bk, self._h, host=self.host_kernel())
        return (self._key, self.ndim, self.spatial_in_shape, self.mode, self.boundary, self.convention,
                self.grid_shape, self._shifts())

    def host_kernel(self) -> np.ndarray:
        """The kernel as a NumPy array (copied from the device once, then kept)."""
        host = self._h_host
        if host is None:
            host = self._h_host = self._bk.asnumpy(self._h)
        return host

    def spectrum(self, dtype: DTypeLike | None = None) -> Array:
        """Transfer function on :attr:`grid_shape` for data of `dtype` (default: the kernel's).

        For real data (float32/float64, real kernel) the half spectrum of
        ``rfftn``, shape ``kernel_batch + rfft grid``; for complex data
        (complex64/complex128, or any data with a complex kernel) the full
        spectrum of ``fftn``, shape ``kernel_batch + grid_shape``. Complex64
        for single precision, complex128 for double.
        """
        dtype = self._wdt(self.dtype if dtype is None else dtype)
        s = self._spectra.get(dtype)
        if s is None:
            s = kernel_spectrum(self._bk, self._h, self.grid_shape, self._shifts(), dtype,
                                key=self.cache_key()[0])
            self._spectra[dtype] = s
        return s

    def _wdt(self, dtype):
        """Working dtype for data of `dtype`: its precision; complex if the data or kernel are."""
        return work_dtype(dtype, self.dtype)

    def _power(self, dtype):
        key = ("power", dtype)
        s = self._spectra.get(key)
        if s is None:
            s = self._spectra[key] = abs2(self.spectrum(dtype))
        return s

    def _conj_spectrum(self, dtype):
        """conj(H), kept with the operator: the adjoint would otherwise rebuild it every call."""
        key = ("conj", dtype)
        s = self._spectra.get(key)
        if s is None:
            s = self._spectra[key] = self._bk.xp.conj(self.spectrum(dtype))
        return s

    # ---------------------------------------------------------------- checks
    def _check_input(self, name, a, spatial):
        bk = self._bk
        if is_cupy_array(a) != bk.is_gpu and (isinstance(a, np.ndarray) or is_cupy_array(a)):
            where = "CuPy (GPU)" if is_cupy_array(a) else "NumPy (host)"
            own = "CuPy (GPU)" if bk.is_gpu else "NumPy (host)"
            raise TypeError(f"{name} is a {where} array but the operator's kernel is a {own} array")
        # Floating inputs keep their precision; integers take the operator's dtype= (float64).
        # Complex inputs (or a complex kernel) make the data complex (full FFTs).
        kind = getattr(a, "dtype", np.dtype(float)).kind if hasattr(a, "dtype") else "f"
        a = as_float_array(bk, name, a, None if kind in "fc" else self._int_dtype,
                           allow_empty=0 in tuple(spatial), allow_complex=True)
        wdt = self._wdt(a.dtype)
        if a.dtype != wdt:
            a = a.astype(wdt)
        nd = self.ndim
        if a.ndim < nd or tuple(a.shape[a.ndim - nd:]) != tuple(spatial):
            raise ValueError(
                f"{name} must have trailing shape {tuple(spatial)}; got shape {tuple(a.shape)}"
            )
        batch = tuple(a.shape[:a.ndim - nd])
        if self._fixed_batch is not None and batch != self._fixed_batch:
            raise ValueError(
                f"{name} must have batch shape {self._fixed_batch} (from in_shape); got {batch}"
            )
        out_batch = broadcast_batch(name, batch, "h", self.kernel_batch)
        return a, out_batch

    @classmethod
    def prepare(cls, x, h, mode, boundary, convention, ndim, dtype, bound=None):
        """Validate an image and a kernel together, once: ``(operator, checked image)``.

        The shared input path of :func:`~gpu_deconv.convolve`, the gradients and
        :func:`~gpu_deconv.estimate_kernel`.

        A dict passed as `bound` receives ``"norm"``: ``||h|| ||x||``, which bounds
        every output sample (Cauchy-Schwarz), from the same passes that validate.
        Complex `x` or `h` are kept complex (the operator promotes the other one).
        """
        check_mode_boundary_convention(mode, boundary, convention)
        dtype = check_dtype_arg(dtype)
        bk = get_backend(x=x, h=h)
        x, x_sq = as_float_array(bk, "x", x, dtype, norm=True, allow_complex=True)
        h, h_sq = as_float_array(bk, "h", h, x.dtype, norm=True, allow_complex=True)
        if bound is not None:
            bound["norm"] = float(np.sqrt(x_sq) * np.sqrt(h_sq))
        ndim = check_ndim(ndim, h.ndim)
        if x.ndim < ndim:
            raise ValueError(
                f"h has more spatial dimensions ({ndim}) than x has dimensions ({x.ndim}); "
                f"shapes: x {tuple(x.shape)}, h {tuple(h.shape)}"
            )
        op = cls(h, x.shape[x.ndim - ndim:], mode, boundary=boundary, convention=convention, ndim=ndim)
        return op, x

    # ------------------------------------------------------------- apply
    def forward(self, x: ArrayLike) -> Array:
        """Apply the operator: ``h * x`` in this mode and boundary.

        Parameters
        ----------
        x : array
            Shape ``(..., *spatial_in_shape)``; leading axes are a batch.

        Returns
        -------
        array
            Shape ``(..., *spatial_out_shape)``, same array module and
            floating dtype as `x`.
        """
        return self._along(self._forward_checked, x)

    def _forward_checked(self, x):
        x, batch = self._check_input("x", x, self.spatial_in_shape)
        with quiet_fp():
            out = self.forward_unchecked(x, batch)
        return finite_result(self._bk, out, "h * x", ("x", "h"))

    __call__ = forward

    def _direct_plan(self):
        """A DirectPlan when shift-and-add beats the FFT pairs (few nonzero taps), else None.

        Measured on 2 cores (float64, 512^2): one tap pass costs about a tenth
        of an FFT pair, so up to ~7 taps the direct path is cheaper; stencils
        such as the 5-point Laplacian (the usual regularizer) qualify.
        """
        if self._direct is None:
            self._direct = False
            hh = self.host_kernel()
            if hh.dtype.kind == "c":  # complex kernels: the FFT path (the taps would need conj)
                return None
            taps = np.count_nonzero(np.any(hh.reshape((-1,) + self.kernel_shape) != 0, axis=0))
            if taps <= DIRECT_MAX_TAPS:
                plans = self.plans
                if self.mode == "circular":  # same + periodic, read without a grid
                    plans = tuple(plan_axis(n, k, "same", "periodic", self.convention, lambda v: v)
                                  for n, k in zip(self.spatial_in_shape, self.kernel_shape))
                self._direct = DirectPlan(hh, plans, self.boundary)
        return self._direct or None

    def direct_term(self):
        """``(DirectPlan, h)`` when the operator takes the shift-and-add path, else None.

        That path serves one real kernel with at most ``DIRECT_MAX_TAPS``
        nonzero taps (per-image kernels too, though :class:`StencilSum` takes
        only a single kernel). Part of the trusted core: the solvers sum such
        normal operators in one pass (:meth:`gpu_deconv._ops.ArrayOps.stencil_normal`).
        """
        dp = self._direct_plan()
        return None if dp is None else (dp, self._h)

    def _promote(self, a):
        """`a` in the working dtype (complex when the kernel is complex)."""
        wdt = self._wdt(a.dtype)
        return a if a.dtype == wdt else a.astype(wdt)

    # ------------------------------------------------------- trusted core
    # forward_unchecked / adjoint_unchecked / normal_unchecked / forward_spectrum are the
    # operator's core for callers that validated their input already (the public methods
    # above, the solvers, the gradients): `x` in the working dtype with the operator's
    # trailing spatial shape, `batch` the broadcast of its batch and the kernel batch.
    # Nothing is checked again and the output is not scanned for overflow.
    def forward_unchecked(self, x, batch):
        """``E C P x`` for a validated `x`, batch shape `batch`: no check, no overflow scan."""
        xp = self._bk.xp
        x = self._promote(x)
        if self._empty:
            return xp.zeros(batch + self.spatial_out_shape, dtype=x.dtype)
        dp = self._direct_plan()
        if dp is not None:
            return direct_forward(self._bk.ops, x, self._h_as(x.real.dtype), dp, batch)
        return self._bk.ops.inverse_window(self.forward_spectrum(x), self.grid_shape, self.spatial_out_shape,
                                           x.dtype.kind == "c")

    def _h_as(self, dtype):
        return self._h if self._h.dtype == dtype else self._h.astype(dtype)

    def forward_spectrum(self, x, keep_input=False):
        """Spectrum of C P x (before extraction); optionally also that of P x.

        `x` is in the working dtype (complex when the kernel is): real data
        take the half spectrum, complex data the full one.
        """
        XE = self._bk.ops.padded_spectrum(x, self.plans, self.boundary, self.grid_shape)
        H = self.spectrum(x.dtype)
        if keep_input:
            return XE * H, XE
        return _times_fresh(XE, H)

    def adjoint(self, y: ArrayLike) -> Array:
        """Apply the exact adjoint ``P^T C^H E^T`` to `y`.

        Parameters
        ----------
        y : array
            Shape ``(..., *spatial_out_shape)``.

        Returns
        -------
        array
            Shape ``(..., *spatial_in_shape)``.
        """
        return self._along(self._adjoint_checked, y)

    def _adjoint_checked(self, y):
        y, batch = self._check_input("y", y, self.spatial_out_shape)
        with quiet_fp():
            out = self.adjoint_unchecked(y, batch)
        return finite_result(self._bk, out, "the adjoint", ("y", "h"))

    def adjoint_unchecked(self, y, batch):
        """``P^T C^H E^T y`` for a validated `y`."""
        bk, xp = self._bk, self._bk.xp
        y = self._promote(y)
        if self._empty:
            return xp.zeros(batch + self.spatial_in_shape, dtype=y.dtype)
        dp = self._direct_plan()
        if dp is not None:
            return direct_adjoint(bk.ops, y, self._h_as(y.real.dtype), dp, batch)
        return self._adjoint_spec(bk.ops.embedded_spectrum(y, self.grid_shape), y.dtype.kind == "c")

    def _adjoint_spec(self, Y, cplx=False, conj_done=False):
        """``P^T E_ext`` of the inverse transform of ``conj(H) Y`` (Y full spectrum if `cplx`)."""
        ops = self._bk.ops
        wdt = Y.dtype if cplx else Y.real.dtype
        if not conj_done:
            Y = _times_fresh(Y, self._conj_spectrum(wdt))
        # Y is always a spectrum made for this call: the inverse transform may destroy it.
        v = ops.inverse_to_grid(Y, self.grid_shape, self.plans, cplx)
        del Y  # before the fold's copies: two grid-sized arrays at a time, not three
        return ops.fold_grid(v, self.plans, self.boundary)

    def normal(self, x: ArrayLike) -> Array:
        """``adjoint(forward(x))`` with as few FFTs as possible.

        One FFT pair for circular and for full + zero boundary (where
        ``E^T E`` acts as the identity), two pairs otherwise.
        """
        return self._along(self._normal_checked, x)

    def _normal_checked(self, x):
        x, batch = self._check_input("x", x, self.spatial_in_shape)
        with quiet_fp():
            out = self.normal_unchecked(x, batch)
        return finite_result(self._bk, out, "the normal operator", ("x", "h"))

    def normal_unchecked(self, x, batch):
        """``H^H H x`` for a validated `x`."""
        bk, xp = self._bk, self._bk.xp
        x = self._promote(x)
        if self._empty:
            return xp.zeros(batch + self.spatial_in_shape, dtype=x.dtype)
        dp = self._direct_plan()
        if dp is not None:
            if not self.kernel_batch:  # one gather pass on the GPU (ops.stencil_normal)
                if self._stencil is None:  # its device tables are made once per operator
                    self._stencil = StencilSum([(1.0, dp, self._h)], self.spatial_in_shape)
                return bk.ops.stencil_normal(x, self._stencil, batch)
            h = self._h_as(x.real.dtype)
            return direct_adjoint(bk.ops, direct_forward(bk.ops, x, h, dp, batch), h, dp, batch)
        cplx = x.dtype.kind == "c"
        if self._one_pass_normal:
            XE = bk.ops.padded_spectrum(x, self.plans, self.boundary, self.grid_shape)
            return self._adjoint_spec(_times_fresh(XE, self._power(x.dtype)), cplx, conj_done=True)
        # E^T E C P x: the window zeroed in place, not cropped and zero-filled again.
        return self._adjoint_spec(bk.ops.masked_spectrum(self.forward_spectrum(x), self.grid_shape,
                                                         self.spatial_out_shape, cplx), cplx)

    # -------------------------------------------------------------- matrix
    def to_matrix(self, sparse: bool = False):
        """The explicit matrix of one image's operator, built from the model's definition.

        Entry ``[t, j]`` (flat output index t, flat input index j) adds the
        kernel taps that carry ``x[j]`` to ``y[t]`` through the boundary
        extension; no FFT is involved.

        Parameters
        ----------
        sparse : bool, optional
            Return a ``scipy.sparse.csr_array`` (``cupyx.scipy.sparse.csr_matrix``
            for CuPy) instead of a dense array.

        Returns
        -------
        array or sparse matrix
            Shape :attr:`shape`; with per-image kernels (dense only), shape
            ``kernel_batch + shape``.

        Raises
        ------
        ValueError
            Above :data:`MAX_DENSE_ENTRIES` dense entries (or
            :data:`MAX_SPARSE_ENTRIES` stored entries), before allocating.
        """
        if not isinstance(sparse, (bool, np.bool_)):
            raise TypeError(f"sparse must be True or False; got {sparse!r}")
        M, N = self.shape
        K = int(np.prod(self.kernel_shape))
        nb = int(np.prod(self.kernel_batch)) if self.kernel_batch else 1
        if sparse and self.kernel_batch:
            raise ValueError("to_matrix(sparse=True) needs a single kernel; this operator has "
                             f"kernel batch {self.kernel_batch}")
        if not sparse and M * N * nb > MAX_DENSE_ENTRIES:
            raise ValueError(f"to_matrix would build a dense {M}x{N} matrix ({M * N * nb} entries); "
                             f"the limit is {MAX_DENSE_ENTRIES}: use sparse=True or a smaller in_shape")
        if M * K * nb > MAX_SPARSE_ENTRIES:
            raise ValueError(f"to_matrix would store {M * K * nb} entries (outputs x taps); "
                             f"the limit is {MAX_SPARSE_ENTRIES}: use a smaller in_shape")
        rows, cols, tap = self._coo_pattern()
        h = self._bk.asnumpy(self._h)
        hflat = h.reshape(self.kernel_batch + (K,))
        if sparse:
            import scipy.sparse as sp

            mat = sp.coo_array((hflat[tap], (rows, cols)), shape=(M, N)).tocsr()
            return self._bk.csr_matrix(mat)
        dense = np.zeros(self.kernel_batch + (M * N,), dtype=h.dtype)
        flat = rows * N + cols
        for b in np.ndindex(*self.kernel_batch):
            np.add.at(dense[b], flat, hflat[b][tap])
        dense = dense.reshape(self.kernel_batch + (M, N))
        return self._bk.xp.asarray(dense) if self._bk.is_gpu else dense

    def _coo_pattern(self):
        """(row, col, tap) triples of the matrix, from source_index alone."""
        per_axis = []
        for p in self.plans:
            t = np.arange(p.m)[:, None]
            i = np.arange(p.k)[None, :]
            pos = t + p.shift - i - p.L  # position relative to x[0]
            per_axis.append(source_index(self.boundary, p.n, pos))
        nd = self.ndim
        shape = self.spatial_out_shape + self.kernel_shape
        srcs = []
        for ax, s in enumerate(per_axis):
            view = [1] * (2 * nd)
            view[ax] = s.shape[0]
            view[nd + ax] = s.shape[1]
            srcs.append(np.broadcast_to(s.reshape(view), shape))
        ok = np.ones(shape, dtype=bool)
        for s in srcs:
            ok &= s >= 0
        grids = np.indices(shape)
        rows = np.ravel_multi_index(tuple(grids[:nd]), self.spatial_out_shape)
        taps = np.ravel_multi_index(tuple(grids[nd:]), self.kernel_shape)
        cols = np.ravel_multi_index(tuple(np.where(ok, s, 0) for s in srcs), self.spatial_in_shape)
        return rows[ok], cols[ok], taps[ok]

    def aslinearoperator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` on flattened single images (NumPy only)."""
        if self._bk.is_gpu:
            raise TypeError("aslinearoperator() is for NumPy operators; use cupyx.scipy.sparse.linalg "
                            "with forward/adjoint for CuPy")
        if self.kernel_batch:
            raise ValueError("aslinearoperator() needs a single kernel")
        from scipy.sparse.linalg import LinearOperator

        sin, sout = self.spatial_in_shape, self.spatial_out_shape
        return LinearOperator(
            self.shape, dtype=self.dtype,
            matvec=lambda v: self._forward_checked(np.asarray(v).reshape(sin)).ravel(),
            rmatvec=lambda v: self._adjoint_checked(np.asarray(v).reshape(sout)).ravel(),
        )


class _AdjointView:
    """``A.H``: the adjoint of a ConvolutionOperator as an operator."""

    def __init__(self, op):
        self._op = op

    @property
    def H(self):
        return self._op

    @property
    def in_shape(self):
        return self._op.out_shape

    @property
    def out_shape(self):
        return self._op.in_shape

    def forward(self, y):
        return self._op.adjoint(y)

    __call__ = forward

    def adjoint(self, x):
        return self._op.forward(x)

    def to_matrix(self, sparse: bool = False):
        """The conjugate transpose of the operator's matrix."""
        m = self._op.to_matrix(sparse=sparse)
        if sparse:
            return m.T.conj() if m.dtype.kind == "c" else m.T
        return self._op.backend.xp.swapaxes(m, -1, -2).conj()

    def __repr__(self):
        return f"{self._op!r}.H"
