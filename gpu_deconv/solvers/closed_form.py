"""Closed forms: exact where a fast transform diagonalizes the normal equations.

* circular (and same + periodic): the DFT. ``X = (conj(H) Y + alpha Z) / (|H|^2 + lam R + alpha)``
  with ``R = sum_i w_i |G_i|^2``.
* same + symmetric boundary with centre-symmetric odd kernels: the DCT-II
  (Hansen, Nagy & O'Leary, "Deblurring Images", 2006, ch. 4).
* the multi-channel proximal problem of DCDicL / convolutional sparse coding:
  a rank-one system per frequency, solved by Sherman-Morrison.

:func:`fourier_division` (divide on the grid the data implies) is an
*approximation* for the non-circular modes: their normal matrix ``P^T C^H E^T E C P``
is not circulant (for full it is Toeplitz), so no DFT diagonalizes it. It is
never chosen automatically.
"""

from __future__ import annotations

import numpy as np

from .._padding import same_offset
from .._spectra import abs2, kernel_spectrum, weighted_power

__all__ = ["spectral_filter", "apply_spectral_filter", "dct_filter", "fourier_division"]


class SingularSystemError(ValueError):
    """The normal equations are singular to working precision."""


def _check_denominator(bk, den, ndim, lam, alpha, data=None):
    """Refuse a (numerically) singular diagonal, per image: ``min <= eps * scale``.

    `data` is the data term (``|H|^2``, or the squared DCT eigenvalues) of the
    denominator: its largest value is the scale to which the computed values
    are exact (a transform's rounding is relative to the largest coefficient),
    so a denominator below eps times it is zero to working precision where the
    regularizer does not lift it. Without `data` the scale is the largest
    denominator itself, which is stricter.
    """
    axes = tuple(range(-ndim, 0))
    dmin = bk.asnumpy(den.min(axis=axes)).ravel()
    dmax = bk.asnumpy(den.max(axis=axes)).ravel()
    nimg = np.asarray(lam).size
    if dmin.size == 1 and nimg > 1:  # a denominator shared by every image
        dmin, dmax = np.repeat(dmin, nimg), np.repeat(dmax, nimg)
    scale = dmax if data is None else singularity_scale(dmax, bk.asnumpy(data.max(axis=axes)).ravel())
    check_extrema(dmin, scale, np.finfo(den.dtype).eps, lam, alpha)
    return float(dmin.min())


def singularity_scale(dmax, data_max):
    """Per image, what the smallest denominator is judged against: ``max |H|^2``.

    The largest denominator where the data term is zero (a zero kernel), and
    wherever it is not finite (so that check_extrema reports the overflow).
    """
    dmax = np.asarray(dmax, dtype=np.float64).ravel()
    data_max = np.broadcast_to(np.asarray(data_max, dtype=np.float64).ravel(), dmax.shape)
    return np.where((data_max > 0) & np.isfinite(dmax), data_max, dmax)


def check_extrema(dmin, dmax, eps, lam, alpha):
    """SingularSystemError unless ``min > eps * max`` for every image (host arrays of per-image extrema).

    Shared by the NumPy path above and the GPU path, which reduces the
    denominator on the device and brings back only these two numbers per image.
    `dmax` is the scale the smallest denominator is judged against: the
    largest data term ``max |H|^2`` (the NumPy and GPU solvers), or the largest
    denominator (stricter). A non-finite `dmax` is an overflow of the
    working precision (lam or the kernel too large), not a singular system:
    ValueError saying so.
    """
    dmin, dmax = np.asarray(dmin).ravel(), np.asarray(dmax).ravel()
    over = np.flatnonzero(~np.isfinite(dmax) | ~np.isfinite(dmin))
    if over.size:
        which = "" if dmin.size == 1 else f" (images {over[:8].tolist()}{'...' if over.size > 8 else ''})"
        raise ValueError(
            "the closed form's denominator |H|^2 + lam R + alpha overflows the working precision" + which
            + f" (lam={_fmt(lam)}, alpha={_fmt(alpha)}): the magnitudes of h, lam or alpha are too large "
            "for it; rescale them (or pass dtype=float64)")
    bad = np.flatnonzero(~(dmin > eps * dmax))
    if bad.size:
        which = "" if dmin.size == 1 else f" (images {bad[:8].tolist()}{'...' if bad.size > 8 else ''})"
        raise SingularSystemError(
            "the normal equations are singular to working precision" + which + ": the kernel's transfer "
            "function vanishes where the regularizer does not help "
            f"(lam={_fmt(lam)}, alpha={_fmt(alpha)}); use lam > 0 with a regularizer that is nonzero "
            "there (e.g. reg=None), or alpha > 0"
        )


def _fmt(v):
    v = np.asarray(v)
    return repr(float(v.ravel()[0])) if v.size == 1 else f"one per image, {v.size} values"


def image_scalars(bk, v, dtype, ndim):
    """Per-image scalars (shape (B,) or ()) -> broadcastable against (B, *spectrum)."""
    a = bk.xp.asarray(np.asarray(v, dtype=dtype))
    return a.reshape(a.shape + (1,) * ndim)


def spectral_filter(bk, Hs, Rs, lam, alpha, ndim, dtype, Hp=None, stats=None):
    """The two filters of the circular closed form.

    Returns ``W = conj(H) / D`` and ``V = alpha / D`` (or None when alpha is
    all zero), ``D = |H|^2 + lam R + alpha``; `lam`, `alpha` are per image.
    `Hp` is ``|H|^2`` if already known (it is cheap for separable kernels).
    A dict passed as `stats` receives ``dmin``, the smallest denominator.
    """
    xp = bk.xp
    dtype = np.finfo(dtype).dtype  # the real precision: D is real also for complex data
    lam_b = image_scalars(bk, lam, dtype, ndim)
    alpha_b = image_scalars(bk, alpha, dtype, ndim)
    if Hp is None:
        Hp = abs2(Hs)
    if Rs is not None:
        den = lam_b * Rs
        den = _iadd(den, Hp)
    else:
        den = Hp.astype(Hp.dtype, copy=True)
    use_alpha = bool(np.any(np.asarray(alpha) != 0))
    if use_alpha:
        den = den + alpha_b
    dmin = _check_denominator(bk, den, ndim, lam, alpha, data=Hp)
    if stats is not None:
        stats["dmin"] = dmin
    inv = 1 / den  # complex *= real runs without a complex temporary; complex / real does not
    W = xp.conj(Hs)
    if W.shape == tuple(np.broadcast_shapes(W.shape, inv.shape)):
        W *= inv
    else:
        W = W * inv
    V = (alpha_b * inv) if use_alpha else None
    return W, V


def _iadd(a, b):
    """a + b, in place when the result has a's shape."""
    if tuple(np.broadcast_shapes(a.shape, b.shape)) == tuple(a.shape):
        a += b
        return a
    return a + b


def _apply_filter(forward, inverse, W, V, y, z):
    """``inverse(W forward(y) + V forward(z))``, the filter product in place on the spectrum."""
    Y = forward(y)
    Y *= W
    if V is not None:
        Y += V * forward(z)
    return inverse(Y)


def apply_spectral_filter(bk, W, V, y, z, grid):
    """``irfftn(W rfftn(y) + V rfftn(z))`` on `grid`, in one pass over the spectrum.

    Complex `y` takes the full transforms (`W`, `V` then on the full grid).
    """
    cplx = y.dtype.kind == "c"
    return _apply_filter(lambda a: bk.fft_any(a, grid), lambda A: bk.ifft_any(A, grid, cplx), W, V, y, z)


def _delta(bk, n, dtype):
    d = bk.xp.zeros((1,) + tuple(n), dtype=dtype)
    d[(0,) * (len(n) + 1)] = 1
    return d


def dct_eigenvalues(bk, apply, n, ndim):
    """Eigenvalues in the orthonormal DCT-II basis of an operator known to be DCT-diagonal.

    ``Lambda = DCT(A delta) / DCT(delta)`` with delta at the corner; every
    entry of ``DCT(delta)`` is a product of ``cos(pi k / 2n)`` factors, never zero.
    """
    d = _delta(bk, n, np.float64)
    num = bk.dctn(apply(d), ndim)
    den = bk.dctn(d, ndim)
    return num / den


def dct_spectra(bk, A, terms, n, ndim):
    """``(Lambda_A, Lambda_R)``: DCT eigenvalues of the data operator `A` and of ``sum_i w_i G_i^T G_i``.

    `terms` are regularizer terms (weight, identity or operator); ``Lambda_R``
    is None without any. The operators must be DCT-diagonal (checked by the caller).
    """
    lam_A = dct_eigenvalues(bk, lambda d: A.forward_unchecked(d, (1,)), n, ndim)
    lam_R = None
    for t in terms:
        L = bk.xp.ones(n) if t.is_identity else dct_eigenvalues(
            bk, lambda d, op=t.op: op.normal_unchecked(d, (1,)), n, ndim)
        lam_R = t.weight * L if lam_R is None else lam_R + t.weight * L
    return lam_A, lam_R


def dct_filter(bk, lam_A, lam_R, lam, alpha, ndim, dtype, stats=None):
    """Filters of the DCT closed form: ``W = Lambda_A / D``, ``V = alpha / D``."""
    lam_b = image_scalars(bk, lam, np.float64, ndim)
    alpha_b = image_scalars(bk, alpha, np.float64, ndim)
    data = lam_A * lam_A
    den = data
    if lam_R is not None:
        # Eigenvalues at the rounding level of the regularizer (its zeros, computed
        # as noise) are the exact zeros they stand for: see _spectra._clean_power.
        # Measured for the Laplacian: the zero comes out as 3e-16 (0.02 eps max);
        # the smallest true eigenvalue, ~97/n^4, stays above 8 eps max up to n ~ 5800.
        top = float(bk.xp.abs(lam_R).max())
        lam_R = bk.xp.where(bk.xp.abs(lam_R) <= 8 * np.finfo(np.float64).eps * top, 0, lam_R)
        den = den + lam_b * lam_R
    den = den + alpha_b
    dmin = _check_denominator(bk, den, ndim, lam, alpha, data=data)
    if stats is not None:
        stats["dmin"] = dmin
    W = (lam_A / den).astype(dtype)
    V = (alpha_b / den).astype(dtype) if np.any(np.asarray(alpha) != 0) else None
    return W, V


def apply_dct_filter(bk, W, V, y, z, ndim):
    """``idctn(W dctn(y) + V dctn(z))`` over the trailing `ndim` axes."""
    return _apply_filter(lambda a: bk.dctn(a, ndim), lambda A: bk.idctn(A, ndim), W, V, y, z)


def fourier_division(bk, y, h, terms_kernels, lam, alpha, z, mode, convention, n, ndim, dtype):
    """Fourier division on the grid the data implies -- an approximation outside circular.

    * full: grid = y's size n + k - 1, kernel at the origin, divide, keep
      the first n samples per axis (the exact answer for a periodic signal of
      length n + k - 1, not for the full model).
    * same: grid n, kernel centred as for ``same`` (identical to circular).
    * valid: grid n (= y's size + k - 1), y zero-filled to it, kernel shifted
      by k - 1 so that the first samples line up with the valid window.

    The boundary model is ignored: this is the circular model on that grid.
    """
    k = h.shape[h.ndim - ndim:]
    m = y.shape[y.ndim - ndim:]
    if mode == "full":
        grid, shifts = tuple(m), (0,) * ndim
    elif mode in ("same", "circular"):
        grid, shifts = tuple(n), tuple(same_offset(kk, convention) for kk in k)
    else:
        grid, shifts = tuple(n), tuple(kk - 1 for kk in k)
    Hs = kernel_spectrum(bk, h, grid, shifts, dtype)
    Rs = weighted_power(bk, terms_kernels, grid, dtype)
    W, V = spectral_filter(bk, Hs, Rs, lam, alpha, ndim, dtype)
    x = apply_spectral_filter(bk, W, V, y, z, grid)
    return bk.xp.ascontiguousarray(x[(Ellipsis,) + tuple(slice(0, a) for a in n)])

