"""deconvolve: the exact regularized least-squares solution in every mode and boundary."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from .. import _cache, _cuda, _memory
from .._backend import get_backend, is_cupy_array
from .._spectra import kernel_power, weighted_power
from .._typing import Array, ArrayLike, Boundary, Convention, DTypeLike, Method, Mode, PerImage, Reg
from .._validation import (
    as_float_array,
    broadcast_batch,
    check_choice,
    check_dtype_arg,
    check_mode_boundary_convention,
    check_ndim,
    check_positive,
    finite_result,
    quiet_fp,
)
from ..operators import ConvolutionOperator
from . import closed_form as cf
from .cg import DEFAULT_MAXITER, ConvergenceWarning, SolveInfo, batched_cg, pow2_scale
from .precond import image_params, make_preconditioner
from .regularizers import build_operators, is_centre_symmetric, parse_reg

__all__ = ["deconvolve"]

METHODS = ("auto", "fft", "dct", "cg", "fft_approx")


# ----------------------------------------------------------------- inputs
def _kernels(bk, h, dtype, ndim):
    """h as one array; a list/tuple of arrays is one kernel per image (stacked)."""
    if isinstance(h, (list, tuple)) and h and all(
            isinstance(k, np.ndarray) or is_cupy_array(k) for k in h):
        ks = [as_float_array(bk, f"h[{i}]", k, dtype) for i, k in enumerate(h)]
        shapes = {tuple(k.shape) for k in ks}
        if len(shapes) != 1:
            raise ValueError(f"per-image kernels in h must share one shape; got {sorted(shapes)}")
        arr = bk.xp.stack(ks)
        return arr, check_ndim(arr.ndim - 1 if ndim is None else ndim, arr.ndim)
    arr = as_float_array(bk, "h", h, dtype)
    return arr, check_ndim(ndim, arr.ndim)


def per_image(name, v, batch, *, allow_zero=True, dtype=None):
    """A scalar or one value per image -> float64 array of shape `batch` (host).

    With `dtype`, values beyond that floating type's range are refused: they
    would turn into inf in the first product of the working precision.
    """
    if isinstance(v, bool) or v is None:
        raise TypeError(f"{name} must be a non-negative number or one per image; got {v!r}")
    if is_cupy_array(v):
        v = v.get()
    try:
        # Only real numbers: np.asarray(v, float) would parse "1e-3" and drop 1j's imaginary part.
        if np.asarray(v).dtype.kind not in "biuf":
            raise TypeError
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a non-negative number or one per image; got {v!r:.60}") from None
    if a.ndim and not isinstance(v, (numbers.Number, np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a number or an array of numbers; got {type(v).__name__}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite; got {v!r:.60}")
    if np.any(a < 0):
        raise ValueError(f"{name} must be non-negative; got {v!r:.60}")
    if dtype is not None and a.size and float(a.max()) > float(np.finfo(dtype).max):
        raise ValueError(f"{name} is beyond the range of the working dtype {np.dtype(dtype)}; "
                         f"got {float(a.max()):.3g}")
    try:
        return np.broadcast_to(a, batch).copy()
    except ValueError:
        raise ValueError(f"{name} must be a scalar or one value per image (batch shape {tuple(batch)}); "
                         f"got shape {a.shape}") from None


def _refuse_zero_kernel(bk, h, nd, batch, lam, alpha):
    """An all-zero kernel with lam = alpha = 0 leaves every x a minimiser: refuse, never return 0."""
    nonzero = bk.asnumpy(bk.xp.any(h != 0, axis=tuple(range(-nd, 0))))
    dead = ~np.broadcast_to(nonzero, batch) & (lam == 0) & (alpha == 0)
    if dead.any():
        which = "" if not batch else f" (images {np.argwhere(dead)[:8].tolist()})"
        raise ValueError(f"h is all zeros and lam = alpha = 0{which}: every x minimises the objective, "
                         "the problem is singular; give lam > 0 or alpha > 0")


def _spatial_in(mode, m, k):
    if mode in ("same", "circular"):
        return tuple(m)
    if mode == "valid":
        return tuple(a + b - 1 for a, b in zip(m, k))
    n = tuple(a - b + 1 for a, b in zip(m, k))
    if any(v < 1 for v in n):
        raise ValueError(f"mode='full' needs y at least as large as the kernel in every axis "
                         f"(x has y.shape - k + 1 samples); y spatial shape {tuple(m)}, kernel {tuple(k)}")
    return n


def _image_array(bk, name, a, batch, n, dtype, norm=False):
    """An image-shaped argument (z, x0): spatial shape n, batch broadcast to `batch`."""
    if norm:
        a, sq = as_float_array(bk, name, a, dtype, norm=True)
        return _image_array(bk, name, a, batch, n, dtype), sq
    a = as_float_array(bk, name, a, dtype)
    nd = len(n)
    if a.ndim < nd or tuple(a.shape[a.ndim - nd:]) != tuple(n):
        raise ValueError(f"{name} must have the unknown's shape {tuple(batch) + tuple(n)} "
                         f"(or spatial shape {tuple(n)}); got {tuple(a.shape)}")
    try:
        return bk.xp.broadcast_to(a, tuple(batch) + tuple(n))
    except ValueError:
        raise ValueError(f"{name} batch axes {tuple(a.shape[:a.ndim - nd])} do not match "
                         f"y's {tuple(batch)}") from None


# ------------------------------------------------------------------ solve
class _Problem:
    """Validated problem in flat-batch form: y (B, *m), per-image lam/alpha (B,)."""

    def key(self, *tag, dtype=None):
        """Cache identity of what is built from the operators alone (filters, preconditioners).

        Kernels, regularizers and their weights, geometry, lam and alpha, dtype; `tag` says what.
        """
        regs = ()
        if self.use_reg:
            regs = tuple((t.weight, "I" if t.is_identity else t.op.cache_key()) for t in self.terms)
        return tag + (self.A.cache_key(), regs, self.lam.tobytes() if self.use_reg else b"",
                      self.alpha.tobytes(), np.dtype(self.dtype if dtype is None else dtype).str)

    def reg_terms(self):
        """``(w_i, kernel or None for the identity)`` of the regularizers in use (none without lam > 0)."""
        if not self.use_reg:
            return []
        return [(t.weight, None if t.is_identity else t.op.kernel) for t in self.terms]


def _dct_eligible(bk, prob):
    if prob.mode != "same" or prob.boundary != "symmetric":
        return "dct needs mode='same' with boundary='symmetric'"
    if not is_centre_symmetric(bk, prob.h, prob.ndim):
        return "dct needs a kernel of odd size, symmetric about its centre in every axis"
    if prob.use_reg:
        for t in prob.terms:
            if t.is_identity:
                continue
            op = t.op
            if op.mode != "same" or op.boundary != "symmetric":
                return "dct needs every regularizer in mode='same' with boundary='symmetric'"
            if not (t.neumann or is_centre_symmetric(bk, op.kernel, op.ndim)):
                return "dct needs regularizer kernels of odd size, symmetric about their centre"
    return None


def _fft_eligible(prob):
    if prob.mode != "circular":
        return ("fft is exact only for mode='circular' (or same + periodic); "
                "method='fft_approx' gives the Fourier-division approximation")
    if prob.use_reg:
        for t in prob.terms:
            if not t.is_identity and t.op.mode != "circular":
                return f"fft needs circular regularizers (got an operator with mode={t.op.mode!r})"
    return None


def _reg_power(bk, prob, dtype):
    """R = sum_i w_i |G_i|^2 on the data grid (circular), or None without regularizer."""
    return weighted_power(bk, prob.reg_terms(), prob.A.grid_shape, dtype)


def _normal_reg(prob, x):
    """sum_i w_i G_i^T G_i x (without lam)."""
    out = None
    for t in prob.terms:
        v = x if t.is_identity else t.op._normal(x, x.shape[:1])
        v = v * t.weight if t.weight != 1 else v
        out = v if out is None else out + v
    return out


def _make_normal(bk, prob, dtype):
    A, nd = prob.A, prob.ndim
    lam = cf.image_scalars(bk, prob.lam, dtype, nd)
    alpha = cf.image_scalars(bk, prob.alpha, dtype, nd)
    use_alpha = prob.use_alpha

    def apply(x):
        # The regularizer first, scaled in place: at most one extra array alive during A's normal.
        if prob.use_reg:
            out = _normal_reg(prob, x)
            if out is x:
                out = lam * out
            else:
                out *= lam
            out += A._normal(x, x.shape[:1])
        else:
            out = A._normal(x, x.shape[:1])
        if use_alpha:
            out += alpha * x
        return out

    return apply


def deconvolve(y: ArrayLike, h: ArrayLike, *, lam: PerImage = 0.0, reg: Reg = None, mode: Mode = "same",
               boundary: Boundary = "zero", convention: Convention = "scipy", alpha: PerImage = 0.0,
               z: ArrayLike | None = None, method: Method = "auto", rtol: float = 1e-6,
               maxiter: int | None = None, x0: ArrayLike | None = None, return_info: bool = False,
               precondition: bool | str = True, ndim: int | None = None, dtype: DTypeLike = None,
               batch_size: int | str | None = None) -> Array | tuple[Array, SolveInfo]:
    """Exact regularized least-squares deconvolution, batched, on NumPy or CuPy.

    Solves, for each image of the batch,

    ``argmin_x 1/2 ||h * x - y||^2 + lam/2 sum_i w_i ||G_i x||^2 + alpha/2 ||x - z||^2``

    where ``h * x`` is :func:`gpu_deconv.convolve` in the given mode, boundary
    and convention.

    Parameters
    ----------
    y : array
        Data, shape ``(..., *m)``; leading axes are a batch of images.
    h : array or list of arrays
        One kernel for the whole batch, or one per image: a list of
        arrays, or an array whose leading axes are kernel batch axes when
        `ndim` < ``h.ndim``.
    lam : float or array, optional
        Regularization weight, scalar or one per image (>= 0). Default 0.
    reg : None, "laplacian", "gradient", array, ConvolutionOperator or list of (w, G)
        The regularizers G_i. ``None``: identity (plain Tikhonov).
        ``"laplacian"``: the (2N+1)-point Laplacian. ``"gradient"``: forward
        differences along every axis, summed. A bare kernel (and the two
        built-ins) gets ``mode="same"`` with this call's boundary and
        convention (``"circular"`` when the data term is circular); a
        :class:`~gpu_deconv.ConvolutionOperator` keeps its own.
    mode : {"same", "valid", "full", "circular"}, optional
        The data model. The unknown x has shape ``y.shape`` (same,
        circular), ``y.shape + k - 1`` (valid) or ``y.shape - k + 1`` (full).
    boundary, convention : str, optional
        As in :func:`gpu_deconv.convolve`.
    alpha : float or array, optional
        Proximal weight (>= 0); needs `z` when positive.
    z : array, optional
        Proximal centre, the unknown's shape (batch axes may broadcast).
    method : {"auto", "fft", "dct", "cg", "fft_approx"}, optional
        ``"auto"`` uses an exact closed form where one exists -- ``"fft"``
        for circular (and same + periodic) with circular regularizers,
        ``"dct"`` for same + symmetric with centre-symmetric odd kernels --
        and preconditioned CG otherwise. ``"fft_approx"`` is Fourier division
        on the grid the data implies: an *approximation* outside circular
        (for full, seed 000's recipe), never chosen by ``"auto"``.
    rtol : float, optional
        CG stops an image when the normal-equation residual
        ``||b - M x|| <= rtol ||b||``. Default 1e-6.
    maxiter : int, optional
        CG iteration limit per image (default 1000).
    x0 : array, optional
        CG starting guess (default zeros).
    return_info : bool, optional
        Also return a :class:`~gpu_deconv.SolveInfo`.
    precondition : bool or {"band", "circulant"}, optional
        CG preconditioner. True (default) is ``"band"``: the circulant
        (Fourier-division) approximation on a padded grid plus an exact-stencil
        block model of the layers next to each face, where the circulant
        model is worst (in ``same`` + ``symmetric``: a DCT model of the
        mirrored kernel instead). ``"circulant"`` uses the first part alone;
        False runs plain CG. Images whose system may be singular (``lam`` and
        ``alpha`` ~ 0 outside ``full``) run unpreconditioned, so that CG
        converges to the minimiser nearest `x0`.
    ndim : int, optional
        Number of spatial axes (default ``h.ndim``, or the kernels' ndim for a list).
    dtype : {None, float32, float64}, optional
        Working precision (default: that of y; integers become float64).
    batch_size : None, "auto" or int, optional
        Images solved at a time. None (default): the whole batch on the CPU,
        ``"auto"`` on the GPU. ``"auto"``: as many as fit in half the free
        device memory by the method's per-image estimate; on the GPU a chunk
        that runs out of memory is retried in halves. An int: chunks of that
        many images. The images are independent, so chunks change nothing
        in the answer.

    Returns
    -------
    x : array
        Same module and floating dtype as `y`.
    info : SolveInfo
        Only with ``return_info=True``: method, and per image iterations,
        relative residual of the normal equations, converged, breakdown.

    Raises
    ------
    ValueError
        Bad shapes or values, a method that is not exact for this problem, a
        singular closed-form system (``lam = alpha = 0`` with a vanishing
        transfer function).

    Notes
    -----
    ``full`` has no closed form: ``P^T C^H C P`` is Toeplitz, not circulant,
    so Fourier division is only an approximation there (see README).

    Examples
    --------
    >>> import numpy as np
    >>> import gpu_deconv
    >>> rng = np.random.default_rng(0)
    >>> x_true = rng.standard_normal((32, 32))
    >>> h = np.ones((5, 5)) / 25
    >>> y = gpu_deconv.convolve(x_true, h, "valid")
    >>> x, info = gpu_deconv.deconvolve(y, h, mode="valid", lam=1e-4, return_info=True)
    >>> x.shape, info.method, bool(info.converged.all())
    ((32, 32), 'cg', True)
    """
    check_mode_boundary_convention(mode, boundary, convention)
    check_choice("method", method, METHODS)
    rtol = check_positive("rtol", rtol)
    if precondition is True:
        precondition = "band"
    elif precondition is not False:
        check_choice("precondition", precondition, ("band", "circulant"))
    maxiter = DEFAULT_MAXITER if maxiter is None else check_positive("maxiter", maxiter, integer=True)
    batch_size = _memory.check_batch_size(batch_size)
    prob = build_problem(y, h, lam=lam, reg=reg, mode=mode, boundary=boundary, convention=convention,
                         alpha=alpha, z=z, x0=x0, ndim=ndim, dtype=dtype)
    method = choose_method(prob, method)

    unsafe = []

    def solve(p):
        if method == "cg":
            unsafe.append(p)
            return _solve_cg(p, rtol, maxiter, precondition, return_info)
        xs = _solve_closed(p, method)
        if not getattr(p, "output_safe", False):
            unsafe.append(p)
        return xs, (_closed_info(p, method, xs, rtol) if return_info else None)

    with quiet_fp():
        x, info = _memory.solve_in_chunks(prob, method, batch_size, solve, precondition=precondition)
    if unsafe:  # a closed form whose output is bounded below overflow skips this pass
        finite_result(prob.bk, x, "the solution", ("y", "h", "z", "lam", "alpha"))
    x = x.reshape(tuple(prob.batch) + tuple(prob.n))
    if not return_info and method == "cg":
        _warn_unconverged(info, rtol, maxiter)
    return (x, info) if return_info else x


def _warn_unconverged(info, rtol, maxiter):
    """Non-convergence is never silent: without return_info it becomes a ConvergenceWarning."""
    if info is None or bool(np.all(info.converged)):
        return
    bad = np.flatnonzero(~np.ravel(info.converged))
    res = np.ravel(info.residual)[bad]
    why = []
    if np.any(np.ravel(info.stagnated)[bad]):
        why.append("rounding holds the residual above rtol (float32? try float64 or a larger rtol)")
    if np.any(np.ravel(info.breakdown)[bad]):
        why.append("breakdown (non-positive curvature: a singular or overflowing system)")
    if np.any(np.ravel(info.iterations)[bad] >= maxiter):
        why.append(f"maxiter={maxiter} reached")
    warnings.warn(ConvergenceWarning(
        f"{bad.size} of {np.size(info.converged)} images did not converge to rtol={rtol:g} "
        f"(images {bad[:8].tolist()}{'...' if bad.size > 8 else ''}, residual up to {res.max():.2e})"
        + (": " + "; ".join(why) if why else "") + ". Pass return_info=True for per-image details."),
        stacklevel=3)


def build_problem(y, h, *, lam=0.0, reg=None, mode="same", boundary="zero", convention="scipy",
                  alpha=0.0, z=None, x0=None, ndim=None, dtype=None):
    """Validate a deconvolution problem and put it in flat-batch form (leading axis B)."""
    check_mode_boundary_convention(mode, boundary, convention)
    dtype = check_dtype_arg(dtype)
    bk = get_backend(y=y, h=h, z=z, x0=x0)
    y, y_sq = as_float_array(bk, "y", y, dtype, norm=True)
    wdt = y.dtype
    h, nd = _kernels(bk, h, wdt, ndim)
    if y.ndim < nd:
        raise ValueError(f"y has {y.ndim} dimensions but the kernel has {nd} spatial axes; "
                         f"shapes: y {tuple(y.shape)}, h {tuple(h.shape)}")
    if mode == "same" and boundary == "periodic":
        mode = "circular"  # identical models; the closed form applies
    if mode == "circular":
        boundary = "periodic"
    m = tuple(y.shape[y.ndim - nd:])
    kshape = tuple(h.shape[h.ndim - nd:])
    n = _spatial_in(mode, m, kshape)
    batch = broadcast_batch("y", y.shape[:y.ndim - nd], "h", h.shape[:h.ndim - nd])
    lam_a = per_image("lam", lam, batch, dtype=wdt)
    alpha_a = per_image("alpha", alpha, batch, dtype=wdt)
    if bool(np.any(alpha_a > 0)) and z is None:
        raise ValueError("alpha > 0 needs z (the proximal centre, with the unknown's shape)")
    _refuse_zero_kernel(bk, h, nd, batch, lam_a, alpha_a)
    terms = parse_reg(bk, reg, nd)
    zf, z_sq = _image_array(bk, "z", z, batch, n, wdt, norm=True) if z is not None else (None, 0.0)
    x0f = _image_array(bk, "x0", x0, batch, n, wdt) if x0 is not None else None

    B = int(np.prod(batch)) if batch else 1
    kb = h.shape[:h.ndim - nd]
    prob = _Problem()
    prob.bk, prob.dtype, prob.batch, prob.B = bk, wdt, tuple(batch), B
    prob.mode, prob.boundary, prob.convention, prob.ndim = mode, boundary, convention, nd
    prob.kshape, prob.n, prob.m = kshape, n, m
    prob.y = bk.xp.broadcast_to(y, tuple(batch) + m).reshape((B,) + m)
    prob.h = bk.xp.broadcast_to(h, tuple(batch) + kshape).reshape((B,) + kshape) if kb else h
    prob.z = zf.reshape((B,) + n) if zf is not None else None
    prob.x0 = x0f.reshape((B,) + n) if x0f is not None else None
    prob.lam, prob.alpha = lam_a.reshape(B), alpha_a.reshape(B)
    # Norms of the data (from the validation pass) bound a closed form's output.
    prob.y_sq, prob.z_sq = y_sq, z_sq
    prob.use_reg = bool(np.any(lam_a > 0))
    prob.use_alpha = bool(np.any(alpha_a > 0))
    prob.A = ConvolutionOperator(prob.h, n, mode, boundary=boundary, convention=convention, ndim=nd)
    prob.terms = build_operators(terms, n, circular=mode == "circular", boundary=boundary,
                                 convention=convention, dtype=wdt)
    return prob


def choose_method(prob, method):
    """Resolve "auto"; refuse a closed form that is not exact for this problem."""
    if method == "auto":
        if _fft_eligible(prob) is None:
            return "fft"
        if _dct_eligible(prob.bk, prob) is None:
            return "dct"
        return "cg"
    if method in ("fft", "dct"):
        why = _fft_eligible(prob) if method == "fft" else _dct_eligible(prob.bk, prob)
        if why:
            raise ValueError(f"method={method!r} is not exact here: {why}")
    return method


def _solve_closed(prob, method):
    bk, nd, wdt = prob.bk, prob.ndim, prob.dtype
    if method == "fft_approx":
        return cf.fourier_division(bk, prob.y, prob.h, prob.reg_terms(), prob.lam, prob.alpha, prob.z,
                                   prob.mode, prob.convention, prob.n, nd, wdt)
    if method == "fft" and _cuda.enabled(bk):
        return _solve_fft_fused(prob)

    def build():
        stats = {}
        lam, alpha = image_params(prob)  # one filter for a batch that shares them, not one per image
        if method == "fft":
            Hs = prob.A.spectrum(wdt)
            # |H|^2 from the kernel's 1-D factors when separable (one real pass).
            Hp = None if prob.A.kernel_batch else kernel_power(bk, prob.A.kernel, prob.A.grid_shape, wdt)
            W, V = cf.spectral_filter(bk, Hs, _reg_power(bk, prob, wdt), lam, alpha, nd, wdt,
                                      Hp=Hp, stats=stats)
        else:
            W, V = _dct_filters(prob, stats, lam, alpha)
        # |H| <= sum|h| at every frequency (and so is every DCT eigenvalue of a
        # symmetric kernel): bounds on max|W| and max|V| without a pass over them.
        inv = 1.0 / stats["dmin"]
        hl1 = float(bk.xp.abs(prob.h).sum(axis=tuple(range(-nd, 0))).max())
        return W, V, hl1 * inv, float(prob.alpha.max()) * inv

    W, V, wmax, vmax = _cache.cached(bk, prob.key(method), build)
    # Parseval (unitary transforms): |x| <= max|W| ||y|| + max|V| ||z||; when that
    # is far below the largest float the result needs no finiteness pass.
    bound = wmax * np.sqrt(prob.y_sq) + vmax * np.sqrt(prob.z_sq)
    prob.output_safe = bool(bound < np.finfo(wdt).max / 8)
    if method == "fft":
        return cf.apply_spectral_filter(bk, W, V, prob.y, prob.z, prob.n)
    return cf.apply_dct_filter(bk, W, V, prob.y, prob.z, nd)


def _solve_fft_fused(prob):
    """The circular closed form with the custom CUDA kernels (CuPy only).

    ``(conj(H) Y + alpha Z) / (|H|^2 + lam R + alpha)`` in one pass over the
    spectrum, from the operator's spectrum H and the regularizer power R
    (both cached) instead of the filters W, V of the
    NumPy path, which would cost two more spectra of device memory per image.
    The singularity test reduces the denominator on the device and brings
    back two numbers per image.
    """
    bk, nd, wdt, n = prob.bk, prob.ndim, prob.dtype, tuple(prob.n)
    H = prob.A.spectrum(wdt)
    R = _cache.cached(bk, prob.key("reg_power"), lambda: _reg_power(bk, prob, wdt)) if prob.use_reg else None
    lam = bk.xp.asarray(prob.lam.astype(wdt))
    alpha = bk.xp.asarray(prob.alpha.astype(wdt))
    dmin, dmax = _cuda.spectral_extrema(H, R, lam, alpha, (prob.B,), ndim=nd)
    cf.check_extrema(bk.asnumpy(dmin), bk.asnumpy(dmax), np.finfo(wdt).eps, prob.lam, prob.alpha)
    Y = bk.xp.ascontiguousarray(bk.rfftn(prob.y, n))
    Z = bk.xp.ascontiguousarray(bk.rfftn(prob.z, n)) if prob.use_alpha else None
    Y = _cuda.spectral_solve(Y, H, R, lam, alpha, Z, ndim=nd)
    return bk.irfftn(Y, n)


def _dct_filters(prob, stats=None, lam=None, alpha=None):
    bk, n, nd = prob.bk, prob.n, prob.ndim
    lam_A = cf.dct_eigenvalues(bk, lambda d: prob.A._forward(d, (1,)), n, nd)
    lam_R = None
    if prob.use_reg:
        for t in prob.terms:
            if t.is_identity:
                L = bk.xp.ones(n)
            else:
                L = cf.dct_eigenvalues(bk, lambda d, op=t.op: op._normal(d, (1,)), n, nd)
            lam_R = t.weight * L if lam_R is None else lam_R + t.weight * L
    return cf.dct_filter(bk, lam_A, lam_R, prob.lam if lam is None else lam,
                         prob.alpha if alpha is None else alpha, nd, prob.dtype, stats=stats)


def _closed_info(prob, method, x, rtol):
    res = _residual(prob, x)
    conv = np.ones(prob.B, bool) if method != "fft_approx" else res <= rtol
    shape = prob.batch
    return SolveInfo(method, np.zeros(shape, np.int64), res.reshape(shape), conv.reshape(shape),
                     np.zeros(shape, bool), np.zeros(shape, bool))


def _rhs(prob):
    b = prob.A._adjoint(prob.y, (prob.B,))
    if prob.use_alpha:
        b = b + cf.image_scalars(prob.bk, prob.alpha, prob.dtype, prob.ndim) * prob.z
    return b


def _solve_cg(prob, rtol, maxiter, precondition, return_info):
    bk = prob.bk
    normal = _make_normal(bk, prob, prob.dtype)
    M = make_preconditioner(bk, prob, prob.dtype, precondition) if precondition else None
    x, d = batched_cg(bk, normal, _rhs(prob), prob.ndim, x0=prob.x0, rtol=rtol, maxiter=maxiter, M=M,
                      keep_history=return_info, overwrite_b=True)
    shape = prob.batch
    info = SolveInfo("cg", d["iterations"].reshape(shape), d["residual"].reshape(shape),
                     d["converged"].reshape(shape), d["breakdown"].reshape(shape),
                     d["stagnated"].reshape(shape), rtol=rtol, preconditioned=M is not None,
                     history=d["history"])
    return x, info


def _residual(prob, x):
    """||b - M x|| / ||b|| per image (float64 host array)."""
    bk, nd = prob.bk, prob.ndim
    b = _rhs(prob)
    r = b - _make_normal(bk, prob, prob.dtype)(x)
    # One exact power-of-two factor per image, so that the squares below cannot
    # overflow (or underflow to 0) for data far from 1 in magnitude.
    s = pow2_scale(bk.xp, b, nd)[(Ellipsis,) + (None,) * nd]
    b, r = b * s, r * s
    axes = tuple(range(-nd, 0))
    num = bk.asnumpy(bk.xp.sqrt((r * r).sum(axis=axes))).astype(np.float64)
    den = bk.asnumpy(bk.xp.sqrt((b * b).sum(axis=axes))).astype(np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
