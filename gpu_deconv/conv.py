"""convolve and correlate: every mode, boundary model and origin convention, on NumPy or CuPy."""

from __future__ import annotations

import numbers
import operator

import numpy as np

from ._backend import get_backend
from ._typing import Array, ArrayLike, Boundary, Convention, DTypeLike, Mode
from ._validation import (
    as_array,
    as_float_array,
    broadcast_batch,
    check_mode_boundary_convention,
    check_ndim,
    finite_result,
    float_dtype,
    quiet_fp,
    real_dtype,
)
from .operators import ConvolutionOperator

__all__ = ["convolve", "correlate"]


def _check_axes(axes, x, h):
    """Normalised, sorted convolution axes for ``axes=`` (SciPy's fftconvolve rules)."""
    if x.ndim != h.ndim:
        raise ValueError(f"with axes=, x and h must have the same number of dimensions; "
                         f"got shapes x {tuple(x.shape)}, h {tuple(h.shape)}")
    # The messages follow scipy.signal.fftconvolve's.
    if isinstance(axes, (numbers.Integral, np.integer)) and not isinstance(axes, bool):
        axes = (axes,)
    try:
        ax = [operator.index(a) for a in axes]
    except TypeError:
        raise ValueError(f"axes must be a scalar or iterable of integers; got {axes!r}") from None
    if not ax:
        raise ValueError("when provided, axes cannot be empty")
    if any(a < -x.ndim or a >= x.ndim for a in ax):
        raise ValueError(f"axes exceeds dimensionality of input: axes={axes!r}, x and h have {x.ndim} "
                         "dimensions")
    ax = [a % x.ndim for a in ax]
    if len(set(ax)) != len(ax):
        raise ValueError(f"all axes must be unique; got axes={axes!r}")
    for a in range(x.ndim):
        if a not in ax and x.shape[a] != h.shape[a] and 1 not in (x.shape[a], h.shape[a]):
            raise ValueError(f"incompatible shapes for in1 and in2: {tuple(x.shape)} and {tuple(h.shape)} "
                             f"(x and h must broadcast along axis {a}, which is not convolved)")
    return sorted(ax)


def _swap_needed(mode, convention, xs, hs, axes):
    """SciPy's rule for ``valid``: swap when the kernel is at least as large as the image in
    every convolved axis (and larger in one); raise when each is larger somewhere."""
    if mode != "valid" or convention != "scipy":
        return False
    ok1 = all(xs[a] >= hs[a] for a in axes)
    ok2 = all(hs[a] >= xs[a] for a in axes)
    if not (ok1 or ok2):
        raise ValueError(
            "For 'valid' mode, one must be at least as large as the other in every dimension "
            f"(convolved axes); got shapes x {tuple(xs)}, h {tuple(hs)}"
        )
    return not ok1


def _convolve(x, h, mode, boundary, convention, ndim, dtype, axes):
    """convolve with ``axes=`` (moved to the end, other axes as broadcast batches) and SciPy's
    ``valid`` swap; arrays already in one module."""
    if axes is not None:
        if ndim is not None:
            raise ValueError(f"axes= and ndim= are mutually exclusive (per-image kernels use ndim=, "
                             f"SciPy-style broadcasting uses axes=); got axes={axes!r}, ndim={ndim!r}")
        bk = get_backend(x=x, h=h)
        xa, ha = as_array(bk, "x", x), as_array(bk, "h", h)
        ax = _check_axes(axes, xa, ha)
        if mode == "valid" and convention == "scipy" and _swap_needed(mode, convention, xa.shape,
                                                                      ha.shape, ax):
            xa, ha = ha, xa
        nd = len(ax)
        last = list(range(xa.ndim - nd, xa.ndim))
        out = bk.xp.moveaxis(_convolve(bk.xp.moveaxis(xa, ax, last), bk.xp.moveaxis(ha, ax, last), mode,
                                       boundary, convention, nd, dtype, None), last, ax)
        if mode in ("same", "circular") and out.shape != xa.shape:
            # As fftconvolve: "same" has the shape of x in every axis, so a broadcast axis where
            # x has length 1 keeps its centre element.
            out = out[tuple(slice((o - n) // 2, (o - n) // 2 + n) for o, n in zip(out.shape, xa.shape))]
        return bk.xp.ascontiguousarray(out)
    if mode == "valid" and convention == "scipy":
        bk = get_backend(x=x, h=h)
        xa, ha = as_array(bk, "x", x), as_array(bk, "h", h)
        if xa.ndim == ha.ndim and xa.ndim and _swap_needed(
                mode, convention, xa.shape, ha.shape, range(xa.ndim - check_ndim(ndim, ha.ndim), xa.ndim)):
            # Convolution commutes: SciPy swaps the inputs so that the larger one slides
            # (the working precision stays that of x).
            if dtype is None:
                dtype = real_dtype(float_dtype("x", xa.dtype, allow_complex=True))
            x, h = ha, xa
    bound = {}
    op, x = ConvolutionOperator.prepare(x, h, mode, boundary, convention, ndim, dtype, bound)
    # x was validated by prepare(): apply the operator without checking it again.
    batch = broadcast_batch("x", x.shape[:x.ndim - op.ndim], "h", op.kernel_batch)
    with quiet_fp():
        out = op.forward_unchecked(x, batch)
    if bound["norm"] < np.finfo(out.dtype).max / 8:
        return out  # |h * x| <= ||h|| ||x||: no sample can have overflowed
    return finite_result(op.backend, out, "h * x", ("x", "h"))


def convolve(x: ArrayLike, h: ArrayLike, mode: Mode = "full", *, boundary: Boundary = "zero",
             convention: Convention = "scipy", ndim: int | None = None, dtype: DTypeLike | None = None,
             axes=None) -> Array:
    """N-D convolution of a batch of images with a kernel, in any mode and boundary model.

    Parameters
    ----------
    x : array_like
        Images, NumPy or CuPy, real or complex. The convolution acts on the
        last ``h.ndim`` axes (or `ndim` axes, or `axes`); leading axes are a batch.
    h : array_like
        Kernel, real or complex, in the same array module as `x`.
    mode : {"full", "same", "valid", "circular"}, optional
        ``"full"`` (default): every overlap, shape ``n + k - 1``.
        ``"same"``: shape ``n``, the centre of ``"full"``, starting at
        ``(k-1)//2`` (``convention="scipy"``) or ``k//2`` (``"matlab"``).
        ``"valid"``: only complete overlaps, shape ``n - k + 1``. Under
        ``convention="scipy"``, a kernel at least as large as the image in
        every axis swaps the two inputs as SciPy does (convolution commutes).
        ``"circular"``: exactly ``"same"`` with ``boundary="periodic"``.
    boundary : {"zero", "periodic", "symmetric", "reflect", "replicate"}, optional
        How `x` is extended beyond its support before the kernel slides (names
        as in :func:`numpy.pad`: ``"symmetric"`` repeats the edge sample,
        ``"reflect"`` does not, ``"replicate"`` is ``"edge"``). Default ``"zero"``.
    convention : {"scipy", "matlab"}, optional
        ``"scipy"``: :func:`scipy.signal.convolve` semantics. ``"matlab"``:
        MATLAB/Octave ``conv2`` semantics (``same`` crops from ``k//2``;
        ``valid`` with a kernel larger than the image returns an empty array;
        inputs are never swapped). ``"scipy"`` swaps them in ``valid`` when the
        kernel is the larger in every convolved axis and raises ValueError
        when each input is larger in some axis.
    ndim : int, optional
        Number of trailing spatial axes (default ``h.ndim``). With ``ndim <
        h.ndim`` the leading axes of `h` hold one kernel per image,
        broadcast against the batch axes of `x`.
    dtype : {None, float32, float64}, optional
        Working precision. Default: the precision of `x` (float32 stays
        float32, integers become float64). Complex data keep their kind in
        this precision (float32 -> complex64, float64 -> complex128).
    axes : int or sequence of int, optional
        Axes to convolve over, as in :func:`scipy.signal.fftconvolve`: `x` and
        `h` have the same number of dimensions and the other axes broadcast
        (equal sizes or one of them 1). Mutually exclusive with `ndim`.

    Returns
    -------
    array
        Same array module as `x`; floating dtype in the precision of `x`,
        complex if `x` or `h` is (real inputs take real FFTs).

    Raises
    ------
    ValueError
        Unknown mode/boundary/convention, empty or non-finite input, kernel
        with more dimensions than `x`, ``valid`` with each input larger in
        some axis (scipy convention), `axes` with `ndim` or with inputs that
        do not broadcast.
    TypeError
        Non-numeric input, NumPy and CuPy arrays mixed.

    See Also
    --------
    correlate, ConvolutionOperator, scipy.signal.convolve

    Examples
    --------
    >>> import numpy as np
    >>> import gpu_deconv
    >>> x = np.array([1.0, 2.0, 3.0, 4.0])
    >>> gpu_deconv.convolve(x, np.array([1.0, 1.0]), mode="same")
    array([1., 3., 5., 7.])
    >>> gpu_deconv.convolve(x, np.array([1.0, 1.0]), mode="same", convention="matlab")
    array([3., 5., 7., 4.])
    >>> gpu_deconv.convolve(x, np.array([1.0, 1.0]), mode="same", boundary="symmetric")
    array([2., 3., 5., 7.])
    """
    return _convolve(x, h, mode, boundary, convention, ndim, dtype, axes)


def correlate(x: ArrayLike, h: ArrayLike, mode: Mode = "full", *, boundary: Boundary = "zero",
              convention: Convention = "scipy", ndim: int | None = None, dtype: DTypeLike | None = None,
              axes=None) -> Array:
    """N-D correlation: :func:`convolve` with the conjugated kernel reversed in every spatial axis.

    With ``boundary="zero"`` this equals :func:`scipy.signal.correlate`
    (``convention="scipy"``; ``correlate(x, h)`` conjugates `h`, as SciPy
    does) and MATLAB's ``filter2(h, x, shape)`` for real data
    (``convention="matlab"``, i.e. ``conv2`` with ``h`` rotated 180 degrees).
    Parameters are those of :func:`convolve`.

    Examples
    --------
    >>> import numpy as np
    >>> import gpu_deconv
    >>> gpu_deconv.correlate(np.array([0.0, 1.0, 0.0]), np.array([1.0, 2.0, 3.0]), mode="same")
    array([3., 2., 1.])
    """
    check_mode_boundary_convention(mode, boundary, convention)
    bk = get_backend(x=x, h=h)
    hh = as_float_array(bk, "h", h, allow_complex=True)
    if axes is None:
        nd = check_ndim(ndim, hh.ndim)
        flip = (Ellipsis,) + (slice(None, None, -1),) * nd
    else:
        nd = ndim  # _convolve reports axes= with ndim=
        ax = _check_axes(axes, as_array(bk, "x", x), hh) if ndim is None else []
        flip = tuple(slice(None, None, -1) if a in ax else slice(None) for a in range(hh.ndim))
    flipped = hh[flip]
    if flipped.dtype.kind == "c":
        flipped = flipped.conj()
    return _convolve(x, bk.xp.ascontiguousarray(flipped), mode, boundary, convention, nd, dtype, axes)
