"""convolve and correlate: every mode, boundary model and origin convention, on NumPy or CuPy."""

from __future__ import annotations

import numpy as np

from ._backend import get_backend
from ._typing import Array, ArrayLike, Boundary, Convention, DTypeLike, Mode
from ._validation import (
    as_float_array,
    broadcast_batch,
    check_dtype_arg,
    check_mode_boundary_convention,
    check_ndim,
    finite_result,
    quiet_fp,
)
from .operators import ConvolutionOperator

__all__ = ["convolve", "correlate"]


def _prepare(x, h, mode, boundary, convention, ndim, dtype, bound=None):
    """Validate once; returns the operator and the checked image.

    A dict passed as `bound` receives ``"norm"``: ``||h|| ||x||``, which bounds
    every output sample (Cauchy-Schwarz), from the same passes that validate.
    """
    check_mode_boundary_convention(mode, boundary, convention)
    dtype = check_dtype_arg(dtype)
    bk = get_backend(x=x, h=h)
    x, x_sq = as_float_array(bk, "x", x, dtype, norm=True)
    h, h_sq = as_float_array(bk, "h", h, x.dtype, norm=True)
    if bound is not None:
        bound["norm"] = float(np.sqrt(x_sq) * np.sqrt(h_sq))
    ndim = check_ndim(ndim, h.ndim)
    if x.ndim < ndim:
        raise ValueError(
            f"h has more spatial dimensions ({ndim}) than x has dimensions ({x.ndim}); "
            f"shapes: x {tuple(x.shape)}, h {tuple(h.shape)}"
        )
    op = ConvolutionOperator(h, x.shape[x.ndim - ndim:], mode, boundary=boundary,
                             convention=convention, ndim=ndim)
    return op, x


def convolve(x: ArrayLike, h: ArrayLike, mode: Mode = "full", *, boundary: Boundary = "zero",
             convention: Convention = "scipy", ndim: int | None = None, dtype: DTypeLike = None) -> Array:
    """N-D convolution of a batch of images with a kernel, in any mode and boundary model.

    Parameters
    ----------
    x : array_like
        Images, NumPy or CuPy. The convolution acts on the last ``h.ndim`` axes
        (or `ndim` axes); leading axes are a batch.
    h : array_like
        Kernel, in the same array module as `x`.
    mode : {"full", "same", "valid", "circular"}, optional
        ``"full"`` (default): every overlap, shape ``n + k - 1``.
        ``"same"``: shape ``n``, the centre of ``"full"``, starting at
        ``(k-1)//2`` (``convention="scipy"``) or ``k//2`` (``"matlab"``).
        ``"valid"``: only complete overlaps, shape ``n - k + 1``.
        ``"circular"``: exactly ``"same"`` with ``boundary="periodic"``.
    boundary : {"zero", "periodic", "symmetric", "reflect", "replicate"}, optional
        How `x` is extended beyond its support before the kernel slides (names
        as in :func:`numpy.pad`: ``"symmetric"`` repeats the edge sample,
        ``"reflect"`` does not, ``"replicate"`` is ``"edge"``). Default ``"zero"``.
    convention : {"scipy", "matlab"}, optional
        ``"scipy"``: :func:`scipy.signal.convolve` semantics. ``"matlab"``:
        MATLAB/Octave ``conv2`` semantics (``same`` crops from ``k//2``;
        ``valid`` with a kernel larger than the image returns an empty array,
        where ``"scipy"`` raises ValueError; inputs are never swapped).
    ndim : int, optional
        Number of trailing spatial axes (default ``h.ndim``). With ``ndim <
        h.ndim`` the leading axes of `h` hold one kernel per image,
        broadcast against the batch axes of `x`.
    dtype : {None, float32, float64}, optional
        Working precision. Default: the precision of `x` (float32 stays
        float32, integers become float64).

    Returns
    -------
    array
        Same array module as `x`, floating dtype of `x`.

    Raises
    ------
    ValueError
        Unknown mode/boundary/convention, empty or non-finite input, kernel
        with more dimensions than `x`, ``valid`` with a too-large kernel
        (scipy convention).
    TypeError
        Complex or non-numeric input, NumPy and CuPy arrays mixed.

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
    bound = {}
    op, x = _prepare(x, h, mode, boundary, convention, ndim, dtype, bound)
    # x was validated by _prepare: apply the operator without checking it again.
    batch = broadcast_batch("x", x.shape[:x.ndim - op.ndim], "h", op.kernel_batch)
    with quiet_fp():
        out = op._forward(x, batch)
    if bound["norm"] < np.finfo(out.dtype).max / 8:
        return out  # |h * x| <= ||h|| ||x||: no sample can have overflowed
    return finite_result(op.backend, out, "h * x", ("x", "h"))


def correlate(x: ArrayLike, h: ArrayLike, mode: Mode = "full", *, boundary: Boundary = "zero",
              convention: Convention = "scipy", ndim: int | None = None, dtype: DTypeLike = None) -> Array:
    """N-D correlation: :func:`convolve` with the kernel reversed in every spatial axis.

    With ``boundary="zero"`` this equals :func:`scipy.signal.correlate` for
    real inputs (``convention="scipy"``) and MATLAB's ``filter2(h, x, shape)``
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
    hh = as_float_array(bk, "h", h)
    nd = check_ndim(ndim, hh.ndim)
    flipped = hh[(Ellipsis,) + (slice(None, None, -1),) * nd]
    return convolve(x, bk.xp.ascontiguousarray(flipped), mode, boundary=boundary,
                    convention=convention, ndim=nd, dtype=dtype)
