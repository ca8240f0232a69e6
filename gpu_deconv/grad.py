"""Gradients of ``f = 1/2 ||h * x - y||^2`` in the image and in the kernel, for every mode and boundary.

For complex data (any of x, h, y complex) f is still real and the gradients
are the conjugate (Wirtinger) gradients ``2 df/d conj(x) = H^H (H x - y)``:
the direction of steepest ascent, with ``df = Re <g, dx>`` (Brandwood, "A complex
gradient operator and its application in adaptive array theory", IEE Proceedings F 130(1), 1983).

Both are derived from the operator ``H = E C P`` rather than from a formula
per mode: ``grad_x = H^T (H x - y)``, and ``grad_h = X^T (H x - y)`` where X
is the same bilinear map read as a function of the kernel. (The textbook
MATLAB expression for the ``same``-mode image gradient, ``conv2(r,
rot180(h), 'same')``, is wrong for even kernels; the adjoint is not.)
"""

from __future__ import annotations

import numpy as np

from ._backend import get_backend
from ._typing import Array, ArrayLike, Boundary, Convention, DTypeLike, Mode
from ._validation import as_float_array, broadcast_batch, finite_result, quiet_fp, work_dtype
from .operators import ConvolutionOperator

__all__ = ["grad_x", "grad_h"]


def _residual(op, x, y, batch):
    """Spectrum of C P x, that of P x, and the residual H x - y."""
    bk, xp = op.backend, op.backend.xp
    if tuple(y.shape) != tuple(batch) + op.spatial_out_shape:
        raise ValueError(
            f"y must have shape {tuple(batch) + op.spatial_out_shape} (the output of mode="
            f"{op.mode!r} for x of shape {tuple(x.shape)}); got {tuple(y.shape)}"
        )
    if op._empty:
        return None, None, y * 0
    HX, XE = op.forward_spectrum(x, keep_input=True)
    hx = bk.ifft_any(HX, op.grid_shape, x.dtype.kind == "c")
    hx = hx[(Ellipsis,) + tuple(slice(0, m) for m in op.spatial_out_shape)]
    return HX, XE, xp.ascontiguousarray(hx - y)


def _inputs(op, x, y, allow_empty):
    """y checked (real or complex), and x and y in the common working dtype."""
    get_backend(x=x, y=y)
    y = as_float_array(op.backend, "y", y, x.dtype, allow_empty=allow_empty, allow_complex=True)
    wdt = op._wdt(work_dtype(x.dtype, y.dtype))
    return x.astype(wdt, copy=False), y.astype(wdt, copy=False)


def grad_x(x: ArrayLike, h: ArrayLike, y: ArrayLike, mode: Mode = "full", *, boundary: Boundary = "zero",
           convention: Convention = "scipy", ndim: int | None = None,
           dtype: DTypeLike | None = None) -> Array:
    """Gradient of ``1/2 ||h * x - y||^2`` with respect to the image `x`.

    ``H^H (H x - y)`` with H the convolution of :func:`convolve` in the given
    mode, boundary and convention; batched over the leading axes of `x`. For
    complex data (any of `x`, `h`, `y` complex) this is the conjugate
    (Wirtinger) gradient ``2 df/d conj(x)``, complex; take its real part for
    a real-constrained `x`.

    Parameters
    ----------
    x : array_like
        Images ``(..., *n)``.
    h : array_like
        Kernel ``(*k)`` (or per-image kernels with `ndim`).
    y : array_like
        Data, shape ``(..., *m)`` = the shape of ``convolve(x, h, mode, ...)``.
    mode, boundary, convention, ndim, dtype
        As in :func:`convolve`.

    Returns
    -------
    array
        Same shape as `x`.

    Examples
    --------
    >>> import numpy as np
    >>> import gpu_deconv
    >>> x = np.array([1.0, 2.0, 3.0]); h = np.array([1.0, -1.0])
    >>> y = gpu_deconv.convolve(x, h, "valid")
    >>> gpu_deconv.grad_x(x, h, y, "valid")
    array([0., 0., 0.])
    """
    op, x = ConvolutionOperator.prepare(x, h, mode, boundary, convention, ndim, dtype)
    x, y = _inputs(op, x, y, op._empty)
    batch = broadcast_batch("x", x.shape[:x.ndim - op.ndim], "h", op.kernel_batch)
    with quiet_fp():
        HX, _, r = _residual(op, x, y, batch)
        if HX is None:
            return op.backend.xp.zeros(batch + op.spatial_in_shape, dtype=x.dtype)
        g = op.adjoint_unchecked(r, batch)
    return finite_result(op.backend, g, "grad_x", ("x", "h", "y"))


def grad_h(x: ArrayLike, h: ArrayLike, y: ArrayLike, mode: Mode = "full", *, boundary: Boundary = "zero",
           convention: Convention = "scipy", ndim: int | None = None,
           dtype: DTypeLike | None = None) -> Array:
    """Gradient of ``1/2 ||h * x - y||^2`` with respect to the kernel `h`.

    For a batch of images and one kernel the gradient sums over the batch;
    with per-image kernels (``ndim < h.ndim``) it is per kernel. Computed by
    FFT correlation of the residual with the boundary-extended image, on the
    same grid as the forward operator. For complex data, the conjugate
    (Wirtinger) gradient ``X^H (H x - y)``, X the map ``h -> h * x``.

    Parameters
    ----------
    x, h, y, mode, boundary, convention, ndim, dtype
        As in :func:`grad_x`.

    Returns
    -------
    array
        Same shape as `h`.

    Examples
    --------
    >>> import numpy as np
    >>> import gpu_deconv
    >>> x = np.array([0.0, 1.0, 0.0, 0.0]); h = np.array([0.0, 0.0])
    >>> y = np.array([1.0, 2.0, 0.0])
    >>> gpu_deconv.grad_h(x, h, y, "valid")   # X^T (0 - y)
    array([-1., -2.])
    """
    op, x = ConvolutionOperator.prepare(x, h, mode, boundary, convention, ndim, dtype)
    bk = op.backend
    x, y = _inputs(op, x, y, op._empty)
    batch = broadcast_batch("x", x.shape[:x.ndim - op.ndim], "h", op.kernel_batch)
    with quiet_fp():
        g = _grad_h(op, x, y, batch)
    return finite_result(bk, g, "grad_h", ("x", "h", "y"))


def _grad_h(op, x, y, batch):
    bk, xp = op.backend, op.backend.xp
    HX, XE, r = _residual(op, x, y, batch)
    hshape = op.kernel_batch + op.kernel_shape
    if HX is None:
        return xp.zeros(hshape, dtype=x.dtype)
    # g[i] = sum_t r[t] xe[t + shift - i]: a correlation of r with P x, read
    # at (shift - i) mod G. The grid is the forward's, so nothing aliases.
    # Complex data: g[i] = sum_t r[t] conj(xe[t + shift - i]), the conjugate of the real formula's sum.
    cplx = r.dtype.kind == "c"
    R = bk.fft_any(r, op.grid_shape)
    corr = bk.ifft_any(xp.conj(R) * XE, op.grid_shape, cplx)
    if cplx:
        corr = xp.conj(corr)
    nd = op.ndim
    for ax, p in enumerate(op.plans):
        idx = (p.shift - np.arange(p.k)) % p.G
        corr = xp.take(corr, xp.asarray(idx), axis=ax - nd)
    # Sum the batch axes that the kernel does not have.
    lead = corr.ndim - nd - len(op.kernel_batch)
    if lead:
        corr = corr.sum(axis=tuple(range(lead)))
    kb = op.kernel_batch
    axes = tuple(i for i, (a, b) in enumerate(zip(corr.shape[:len(kb)], kb)) if b == 1 and a != 1)
    if axes:
        corr = corr.sum(axis=axes, keepdims=True)
    return xp.ascontiguousarray(corr.reshape(hshape))
