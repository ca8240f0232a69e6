"""estimate_kernel: least squares in the kernel for known images (``X h = h * x``; gradient ``X^T (Xh - y)``).

``argmin_h 1/2 sum_b ||h * x_b - y_b||^2 + lam/2 ||h||^2`` over kernels of a
given shape. The unknown has only K = prod(kernel_shape) entries, so the
K x K normal matrix is built exactly and solved directly:

* column i of ``X^T X`` is ``X^T (X e_i)``; ``X e_i`` is the boundary-extended
  image shifted by tap i and cut to the output window, and ``X^T`` of it is an
  FFT correlation with the extended image read at the K taps;
* circular, and full with a zero boundary, need no window: ``X^T X`` is then
  the Toeplitz matrix of the image's (circular / linear) autocorrelation,
  from a single FFT.
"""

from __future__ import annotations

import numpy as np

from .._backend import get_backend, ldexp
from .._spectra import abs2
from .._typing import Array, ArrayLike, Boundary, Convention, DTypeLike, Mode
from .._validation import (
    as_float_array,
    broadcast_batch,
    check_shape,
    finite_result,
    per_image,
    quiet_fp,
    work_dtype,
)
from ..operators import ConvolutionOperator

__all__ = ["estimate_kernel"]

#: Bytes of work arrays one chunk of normal-matrix columns may take.
_CHUNK_BYTES = 64 * 2**20
#: Most kernel taps (prod(kernel_shape)) estimate_kernel accepts: the K x K float64
#: normal matrix is then at most 128 MiB (64 x 64 kernels, 16 x 16 x 16 in 3-D).
MAX_KERNEL_TAPS = 4096


def _tap_offsets(op):
    """Per axis: the grid index (shift - i) mod G that tap i reads."""
    return [(p.shift - np.arange(p.k)) % p.G for p in op.plans]


def _read_taps(xp, corr, offsets, nd):
    for ax, idx in enumerate(offsets):
        corr = xp.take(corr, xp.asarray(idx), axis=ax - nd)
    return corr


def _extended_for_windows(xp, x, xe, op):
    """The image extended by k-1-j0 before and j0+m-n after each axis (zeros for 'zero').

    Output t of tap i then reads position ``t + k - 1 - i`` of it, for every mode.
    """
    if op.boundary != "zero":
        return xe  # pad() already used exactly these widths
    widths = [(0, 0)] * (x.ndim - op.ndim)
    for p in op.plans:
        j0 = p.shift
        widths.append((p.k - 1 - j0, max(0, j0 + p.m - p.n)))
    return xp.pad(x, widths)


def _window_of_shift(xp, xw, op, tap):
    """(X e_tap): the extended image shifted by `tap`, cut to the output window."""
    nd = len(tap)
    if op.mode == "circular":
        v = xw
        for ax, (p, i) in enumerate(zip(op.plans, tap)):
            v = xp.roll(v, -(p.shift - i), axis=ax - nd)
        return v
    return xw[(Ellipsis,) + tuple(slice(p.k - 1 - i, p.k - 1 - i + p.m) for p, i in zip(op.plans, tap))]


def estimate_kernel(x: ArrayLike, y: ArrayLike, kernel_shape: tuple[int, ...], *, lam: float = 0.0,
                    mode: Mode = "valid", boundary: Boundary = "zero", convention: Convention = "scipy",
                    dtype: DTypeLike | None = None) -> Array:
    """Exact least-squares kernel from sharp/blurred image pairs.

    Minimises ``1/2 sum_b ||h * x_b - y_b||^2 + lam/2 ||h||^2`` over kernels
    `h` of shape `kernel_shape`, where ``*`` is :func:`gpu_deconv.convolve` in
    the given mode, boundary and convention, summed over the batch.

    Parameters
    ----------
    x : array
        Sharp images, shape ``(..., *n)``.
    y : array
        Blurred images, shape ``(..., *m)`` with m the output shape of `mode`
        for n and `kernel_shape`; batch axes broadcast with x's.
    kernel_shape : tuple of int
        Shape of the kernel (its length is the number of spatial axes).
    lam : float, optional
        Ridge weight (>= 0). Default 0.
    mode, boundary, convention : str, optional
        The forward model, as in :func:`gpu_deconv.convolve`. Default
        ``mode="valid"`` (no boundary assumption at all).
    dtype : {None, float32, float64}, optional
        Working precision (default: that of x). The K x K system is always
        solved in float64.

    Returns
    -------
    h : array
        Shape `kernel_shape`, module and dtype of `x`; complex if `x` or `y`
        is (then ``X^H X h = X^H y``, solved in complex128).

    Raises
    ------
    ValueError
        If the normal matrix is singular (e.g. ``lam=0`` with a constant
        image, or fewer data than taps).

    Examples
    --------
    >>> import numpy as np
    >>> import gpu_deconv
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((40, 40)); h = rng.standard_normal((5, 4))
    >>> y = gpu_deconv.convolve(x, h, "valid")
    >>> np.allclose(gpu_deconv.estimate_kernel(x, y, (5, 4)), h)
    True
    """
    kernel_shape = check_shape("kernel_shape", kernel_shape)
    K = int(np.prod(kernel_shape, dtype=object))  # exact even for absurd shapes
    if K > MAX_KERNEL_TAPS:
        raise ValueError(f"kernel_shape {kernel_shape} has {K} taps; estimate_kernel builds a K x K normal "
                         f"matrix and accepts at most MAX_KERNEL_TAPS={MAX_KERNEL_TAPS} taps")
    bk = get_backend(x=x, y=y)
    xp = bk.xp
    probe = xp.zeros(kernel_shape, dtype=np.float64)
    op, x = ConvolutionOperator.prepare(x, probe, mode, boundary, convention, None, dtype)
    nd = op.ndim
    y = as_float_array(bk, "y", y, x.dtype, allow_empty=op._empty, allow_complex=True)
    # Complex x or y: the complex problem (X^H X Hermitian), in the precision of x.
    wdt = work_dtype(x.dtype, y.dtype)
    x, y = x.astype(wdt, copy=False), y.astype(wdt, copy=False)
    xb = x.shape[:x.ndim - nd]
    if y.ndim < nd or tuple(y.shape[y.ndim - nd:]) != op.spatial_out_shape:
        raise ValueError(f"y must have spatial shape {op.spatial_out_shape} (mode={op.mode!r} output for x "
                         f"{op.spatial_in_shape} and kernel {kernel_shape}); got {tuple(y.shape)}")
    batch = broadcast_batch("x", xb, "y", y.shape[:y.ndim - nd])
    lam = float(per_image("lam", lam, ()))
    if op._empty:
        raise ValueError("the output window is empty (mode='valid' with a kernel larger than x): "
                         "there is no data to estimate the kernel from")
    # Exact powers of two bring x and y near 1 before any product is formed: the
    # normal matrix of x ~ 1e-160 underflows into subnormals (digits lost) and of
    # x ~ 1e160 overflows. h = 2^(ey - ex) h' with lam' = lam / 4^ex.
    ex, ey = _exponent(xp, x), _exponent(xp, y)
    top = np.finfo(np.float64).maxexp - 16
    if lam > 0:
        ex = max(ex, int(np.ceil((np.log2(lam) - top) / 2)))  # keep lam' finite
    with quiet_fp():
        xs = ldexp(xp, x, np.int32(-ex)).astype(x.dtype)
        ys = ldexp(xp, y, np.int32(-ey)).astype(y.dtype)
        h = _solve_kernel(bk, xs, ys, op, kernel_shape, float(np.ldexp(lam, -2 * ex)), batch, lam)
        h = ldexp(xp, h, np.int32(ey - ex)).astype(h.dtype)
    return finite_result(bk, h, "the kernel", ("x", "y", "lam"))


def _exponent(xp, a):
    """e with max|a| / 2^e in [0.5, 1) (0 for an all-zero or empty array)."""
    m = float(xp.abs(a).max()) if a.size else 0.0
    return int(np.frexp(m)[1]) if m > 0 else 0


def _solve_kernel(bk, x, y, op, kernel_shape, lam, batch, lam_user=None):
    xp, nd = bk.xp, op.ndim
    K = int(np.prod(kernel_shape))
    x = xp.broadcast_to(x, batch + op.spatial_in_shape)
    y = xp.broadcast_to(y, batch + op.spatial_out_shape)
    grid = op.grid_shape
    xe = bk.ops.pad(x, op.plans, op.boundary)
    cplx = x.dtype.kind == "c"
    XE = bk.fft_any(xe, grid)
    offsets = _tap_offsets(op)
    red = tuple(range(len(batch)))

    # Right-hand side X^T y: correlation of y with the extended image at the taps
    # (complex data: X^H y, the conjugate of that correlation).
    Yh = bk.fft_any(y, grid)
    rhs = _read_taps(xp, bk.ifft_any(xp.conj(Yh) * XE, grid, cplx), offsets, nd)
    rhs = rhs.sum(axis=red) if red else rhs
    if cplx:
        rhs = xp.conj(rhs)

    if op.mode == "circular" or (op.mode == "full" and op.boundary == "zero"):
        N = _toeplitz_normal(bk, x, op, kernel_shape)
    else:
        xw = _extended_for_windows(xp, x, xe, op)
        N = _windowed_normal(bk, xw, XE, op, offsets, batch, kernel_shape)
    hdt = np.complex128 if cplx else np.float64
    N = bk.asnumpy(N).reshape(K, K).astype(hdt)
    N = 0.5 * (N + N.conj().T)
    N[np.diag_indices(K)] += lam
    b = bk.asnumpy(rhs).reshape(K).astype(hdt)
    if not (np.isfinite(N).all() and np.isfinite(b).all()):
        raise ValueError(f"the kernel's normal equations overflow {x.dtype}: the magnitudes of x and y "
                         "are too large for the working precision; rescale them (or pass dtype=float64)")
    scale = max(np.abs(np.diag(N)).max(initial=0.0), np.finfo(float).tiny)
    try:
        c, low = _cho_factor(N)
        ok = np.all(np.isfinite(c)) and np.abs(np.diag(c)).min() ** 2 > 1e-13 * scale
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        raise ValueError(
            "the kernel's normal matrix is singular: the images do not determine every tap "
            f"(lam={lam if lam_user is None else lam_user!r}); give lam > 0, more or richer images, "
            "or a smaller kernel_shape"
        )
    from scipy.linalg import cho_solve

    h = cho_solve((c, low), b).reshape(kernel_shape)
    return xp.asarray(h.astype(x.dtype))


def _cho_factor(N):
    from scipy.linalg import cho_factor

    return cho_factor(N, lower=True, check_finite=True)


def _toeplitz_normal(bk, x, op, kernel_shape):
    """X^T X = T[i - i'] from one autocorrelation (circular, or linear for full + zero)."""
    xp = bk.xp
    nd = op.ndim
    if op.mode == "circular":
        grid = op.spatial_in_shape
    else:
        # Lags i - i' run over +-(k - 1) and the autocorrelation over +-(n - 1): a grid
        # of n + max(n, k) - 1 keeps every lag a kernel reads off the wrapped-around part
        # (2n alone let a kernel 2 or more taps longer than x read it: a wrong minimiser).
        grid = tuple(bk.next_fast_len(n + max(n, k) - 1) for n, k in zip(op.spatial_in_shape, kernel_shape))
    # R[d] = sum_u conj(x_u) x_(u+d), and N[i, i'] = R[i - i'] (complex x too).
    Xf = bk.fft_any(x, grid)
    R = bk.ifft_any(abs2(Xf), grid, x.dtype.kind == "c")
    lead = tuple(range(R.ndim - nd))
    if lead:
        R = R.sum(axis=lead)
    # N[i, i'] = R[(i' - i) mod G] (R is even: R[d] = R[-d]).
    idx = [np.subtract.outer(np.arange(k), np.arange(k)) % G for k, G in zip(kernel_shape, grid)]
    out = R
    for ax, d in enumerate(idx):
        # take along axis ax with a (k, k) index: axis ax becomes (i_ax, i'_ax)
        out = xp.take(out, xp.asarray(d), axis=2 * ax)
    # out axes: (i0, i0', i1, i1', ...) -> (i0, i1, ..., i0', i1', ...)
    perm = [2 * a for a in range(nd)] + [2 * a + 1 for a in range(nd)]
    return xp.transpose(out, perm)


def _windowed_normal(bk, xw, XE, op, offsets, batch, kernel_shape):
    """Columns X^T (X e_i) in chunks of taps, batched FFTs."""
    xp = bk.xp
    nd = op.ndim
    grid = op.grid_shape
    K = int(np.prod(kernel_shape))
    per_col = int(np.prod(batch or (1,))) * int(np.prod(grid)) * xw.dtype.itemsize * 4
    chunk = max(1, min(K, _CHUNK_BYTES // max(per_col, 1)))
    taps = list(np.ndindex(*kernel_shape))
    cols = []
    red = tuple(range(1, 1 + len(batch)))
    for s in range(0, K, chunk):
        vs = xp.stack([_window_of_shift(xp, xw, op, t) for t in taps[s:s + chunk]])
        V = bk.fft_any(vs, grid)
        corr = bk.ifft_any(xp.conj(V) * XE, grid, vs.dtype.kind == "c")  # row i: sum_t conj(X_ti) X_ti'
        c = _read_taps(xp, corr, offsets, nd)
        cols.append(c.sum(axis=red) if red else c)
    N = xp.concatenate(cols).reshape((K, K))
    return N
