"""The multi-channel proximal step of convolutional sparse coding and dictionary learning.

The data step of deep convolutional dictionary learning (Zheng, Yong & Zhang,
"Deep Convolutional Dictionary Learning for Image Denoising", CVPR 2021:
DCDicL) and of ADMM convolutional sparse coding (Wohlberg, "Efficient
Algorithms for Convolutional Sparse Representations", IEEE Trans. Image
Process. 25(1), 2016):

``argmin_x 1/2 ||sum_c d_c * x_c - y||^2 + alpha/2 ||x - z||^2`` with circular
convolution. Per frequency the normal matrix is ``conj(d) d^T + alpha I``: a
rank-one update of a scaled identity, inverted by Sherman-Morrison,

``x = (b - conj(d) (d^T b) / (alpha + d^T conj(d))) / alpha``, ``b = conj(d) y + alpha z``,

for all frequencies, channels and images at once (no Python loop over frequencies).
"""

from __future__ import annotations

import numpy as np

from .._backend import get_backend
from .._padding import same_offset
from .._spectra import kernel_spectrum
from .._typing import CONVENTIONS, Array, ArrayLike, Convention, DTypeLike, PerImage
from .._validation import (
    as_float_array,
    broadcast_batch,
    check_choice,
    check_dtype_arg,
    check_ndim,
    finite_result,
    per_image,
    quiet_fp,
    real_dtype,
    work_dtype,
)

__all__ = ["solve_multichannel"]


def solve_multichannel(y: ArrayLike, d: ArrayLike, alpha: PerImage, z: ArrayLike, *,
                       convention: Convention = "scipy", dtype: DTypeLike | None = None) -> Array:
    """Closed-form multi-channel proximal solve (DCDicL / convolutional sparse coding).

    Minimises ``1/2 ||sum_c d_c * x_c - y||^2 + alpha/2 ||x - z||^2`` over the
    C coefficient maps x_c, with circular convolution (the origin convention of
    ``mode="circular"``).

    Parameters
    ----------
    y : array
        Images, shape ``(..., *S)``.
    d : array
        C filters, shape ``(C, *K)``; the spatial rank is ``d.ndim - 1``.
    alpha : float or array
        Proximal weight, > 0 (scalar or one per image).
    z : array
        Proximal centre, shape ``(..., C, *S)``.
    convention : {"scipy", "matlab"}, optional
        Origin of the circular convolution for even filter sizes.
    dtype : {None, float32, float64}, optional
        Working precision (default: that of y).

    Returns
    -------
    x : array
        Shape ``(..., C, *S)``, module and dtype of `y`; complex (full FFTs)
        if `y`, `d` or `z` is.

    Notes
    -----
    With C = 1 this is the single-channel proximal step in the Fourier domain,
    ``X = (conj(D) Y + alpha Z) / (|D|^2 + alpha)`` (DCDicL's formula for one channel), identical to
    ``deconvolve(y, d[0], mode="circular", alpha=alpha, z=z[..., 0, :, :])``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpu_deconv import solve_multichannel, convolve
    >>> rng = np.random.default_rng(0)
    >>> d = rng.standard_normal((3, 5, 5)); z = rng.standard_normal((3, 16, 16))
    >>> y = rng.standard_normal((16, 16))
    >>> x = solve_multichannel(y, d, 0.5, z)
    >>> x.shape
    (3, 16, 16)
    """
    check_choice("convention", convention, CONVENTIONS)
    dtype = check_dtype_arg(dtype)
    bk = get_backend(y=y, d=d, z=z)
    xp = bk.xp
    y = as_float_array(bk, "y", y, dtype, allow_complex=True)
    d = as_float_array(bk, "d", d, y.dtype, allow_complex=True)
    if d.ndim < 2:
        raise ValueError(f"d must have shape (C, *K) with at least one spatial axis; got {tuple(d.shape)}")
    nd = check_ndim(d.ndim - 1, d.ndim, "d.ndim - 1")
    C = d.shape[0]
    if y.ndim < nd:
        raise ValueError(f"y must have at least {nd} axes (the filters' spatial rank); got {tuple(y.shape)}")
    S = tuple(y.shape[y.ndim - nd:])
    z = as_float_array(bk, "z", z, y.dtype, allow_complex=True)
    # Complex y, d or z: the complex problem on full FFTs, in the precision of y.
    wdt = work_dtype(y.dtype, d.dtype, z.dtype)
    rdt = real_dtype(wdt)
    cplx = wdt.kind == "c"
    y, z = y.astype(wdt, copy=False), z.astype(wdt, copy=False)
    if z.ndim < nd + 1 or tuple(z.shape[z.ndim - nd - 1:]) != (C,) + S:
        raise ValueError(f"z must have shape (..., C, *S) = (..., {C}, {', '.join(map(str, S))}); "
                         f"got {tuple(z.shape)}")
    batch = broadcast_batch("y", y.shape[:y.ndim - nd], "z", z.shape[:z.ndim - nd - 1])
    a = per_image("alpha", alpha, batch, dtype=rdt)
    if np.any(a.astype(rdt) <= 0):  # below the dtype's range (1e-300 in float32) is 0 too
        raise ValueError("alpha must be positive: with alpha = 0 the multi-channel system is singular "
                         f"(C={C} unknowns per frequency, one equation); got {alpha!r:.60}")
    shifts = tuple(same_offset(k, convention) for k in d.shape[1:])
    with quiet_fp():
        D = kernel_spectrum(bk, d, S, shifts, wdt)
        Y = bk.fft_any(y, S)
        # z may carry batch axes that y lacks (one y, several centres): the in-place
        # updates of sherman_morrison need y's spectrum at the full batch shape.
        Y = xp.broadcast_to(Y, tuple(batch) + Y.shape[Y.ndim - nd:])
        Z = bk.fft_any(z, S)
        a_b = xp.asarray(a.astype(rdt)).reshape(a.shape + (1,) * nd)
        X = bk.ops.sherman_morrison(D, Y, Z, a_b)
        x = bk.ifft_any(X, S, cplx).astype(wdt, copy=False)
    return finite_result(bk, x, "the solution", ("y", "d", "z", "alpha"))
