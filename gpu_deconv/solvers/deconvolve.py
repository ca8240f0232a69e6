"""deconvolve: the exact regularized least-squares solution in every mode and boundary."""

from __future__ import annotations

import warnings

import numpy as np

from .. import _cache, _memory
from .._backend import get_backend, is_cupy_array
from .._padding import input_shape
from .._spectra import kernel_power, weighted_power
from .._typing import METHODS, Array, ArrayLike, Boundary, Convention, DTypeLike, Method, Mode, PerImage, Reg
from .._validation import (
    as_array,
    as_float_array,
    broadcast_batch,
    check_choice,
    check_dtype_arg,
    check_mode_boundary_convention,
    check_ndim,
    check_positive,
    finite_result,
    per_image,
    quiet_fp,
    real_dtype,
    work_dtype,
)
from ..operators import ConvolutionOperator
from . import closed_form as cf
from . import lam as lamsel
from ._scaling import balance_scales, unscale
from .cg import DEFAULT_MAXITER, ConvergenceWarning, SolveInfo, batched_cg
from .precond import image_params, make_preconditioner
from .problem import Problem, solve_in_chunks
from .regularizers import build_operators, is_centre_symmetric, parse_reg

__all__ = ["deconvolve", "choose_lam", "estimate_noise", "LamSelectionWarning"]



# ----------------------------------------------------------------- inputs
def _kernels(bk, h, dtype, ndim):
    """``(h as one array, ndim, h on the host)``; a list/tuple of arrays is one kernel per image (stacked).

    The kernel is small: one copy to the host serves its finiteness check, the
    zero-kernel check, its scale and the operator's cache key (one transfer
    from the device instead of four).
    """
    if isinstance(h, (list, tuple)) and h and all(
            isinstance(k, np.ndarray) or is_cupy_array(k) for k in h):
        ks = [as_float_array(bk, f"h[{i}]", k, dtype, allow_complex=True) for i, k in enumerate(h)]
        shapes = {tuple(k.shape) for k in ks}
        if len(shapes) != 1:
            raise ValueError(f"per-image kernels in h must share one shape; got {sorted(shapes)}")
        arr = bk.xp.stack(ks)
        return arr, check_ndim(arr.ndim - 1 if ndim is None else ndim, arr.ndim), bk.asnumpy(arr)
    arr, host = as_float_array(bk, "h", h, dtype, allow_complex=True, host=True)
    return arr, check_ndim(ndim, arr.ndim), host


def _refuse_zero_kernel(h_host, nd, batch, lam, alpha):
    """An all-zero kernel with lam = alpha = 0 leaves every x a minimiser: refuse, never return 0."""
    nonzero = np.any(h_host != 0, axis=tuple(range(-nd, 0)))
    dead = ~np.broadcast_to(nonzero, batch) & (lam == 0) & (alpha == 0)
    if dead.any():
        which = "" if not batch else f" (images {np.argwhere(dead)[:8].tolist()})"
        raise ValueError(f"h is all zeros and lam = alpha = 0{which}: every x minimises the objective, "
                         "the problem is singular; give lam > 0 or alpha > 0")


def _kind_of(a):
    """dtype of an optional array argument for type promotion (float64 for anything else)."""
    dt = getattr(a, "dtype", None)
    if dt is None and isinstance(a, (list, tuple)):
        try:
            dt = np.asarray(a).dtype
        except (TypeError, ValueError):  # reported by the argument's own check
            dt = None
    return np.dtype(dt) if dt is not None and np.dtype(dt).kind in "biufc" else np.dtype(np.float64)


def _image_array(bk, name, a, batch, n, dtype, norm=False):
    """An image-shaped argument (z, x0): spatial shape n, batch broadcast to `batch`."""
    if norm:
        a, sq = as_float_array(bk, name, a, dtype, norm=True, allow_complex=True)
        return _image_array(bk, name, a, batch, n, dtype), sq
    a = as_float_array(bk, name, a, dtype, allow_complex=True)
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
def _dct_eligible(bk, prob):
    if not prob.real_ops:
        return "dct needs real kernels (complex kernels: method='cg')"
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


def deconvolve(y: ArrayLike, h: ArrayLike, *, lam: PerImage | str = 0.0, reg: Reg = None, mode: Mode = "same",
               boundary: Boundary = "zero", convention: Convention = "scipy", alpha: PerImage = 0.0,
               z: ArrayLike | None = None, method: Method = "auto", rtol: float = 1e-6,
               maxiter: int | None = None, x0: ArrayLike | None = None, return_info: bool = False,
               precondition: bool | str = True, ndim: int | None = None, dtype: DTypeLike | None = None,
               batch_size: int | str | None = None, noise_sigma: PerImage | None = None,
               axes=None) -> Array | tuple[Array, SolveInfo]:
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
    lam : float, array, "gcv" or "discrepancy", optional
        Regularization weight, scalar or one per image (>= 0). Default 0 (no
        regularization: an explicit choice, never a guess). ``"gcv"`` chooses
        it per image by generalized cross-validation of the exact model,
        ``"discrepancy"`` so that ``||h * x - y||^2 = m sigma^2`` (``m`` data
        samples, ``sigma`` from `noise_sigma` or :func:`estimate_noise`); see
        :func:`choose_lam`. ``info.lam`` holds the value used.
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
        (for full: divide on the ``n + k - 1`` grid, keep ``n`` samples), never chosen by ``"auto"``.
    rtol : float, optional
        CG stops an image when the normal-equation residual
        ``||b - M x|| <= rtol ||b||``. Default 1e-6.
    maxiter : int, optional
        CG iteration limit per image (default 1000).
    x0 : array, optional
        CG starting guess (default zeros).
    return_info : bool, optional
        Also return a :class:`~gpu_deconv.SolveInfo`.
    precondition : bool or {"band", "circulant", "border"}, optional
        CG preconditioner. True (default) is ``"band"``: the circulant
        (Fourier-division) approximation on a padded grid plus an exact-stencil
        block model of the layers next to each face, where the circulant
        model is worst (in ``same`` + ``symmetric``: a DCT model of the
        mirrored kernel instead). ``"circulant"`` uses the first part alone;
        ``"border"`` replaces the face model by exact solves on overlapping
        blocks along the faces (2-D, one kernel; built once per kernel, lam and
        shape; for kernels with spectral near-zeros such as motion blur;
        otherwise it is ``"band"``); ``"band"`` uses them itself for batches
        of 4 or more large images sharing kernel and lam. False runs plain
        CG. Images whose system may be singular (``lam`` and ``alpha`` ~ 0
        outside ``full``) run unpreconditioned, so that CG converges to the
        minimiser nearest `x0`.
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
        in the answer. Choosing ``lam`` solves extra systems (probes,
        neighbouring ``lam``); each counts as one image here.
    noise_sigma : float or array, optional
        Standard deviation of the noise in `y` (scalar or one per image), for
        ``lam="discrepancy"``. Default: estimated from `y`.
    axes : int or sequence of int, optional
        The axes of `y` that the kernel's axes act along, in the kernel's
        order (channels-last data ``(H, W, C)`` with a 2-D kernel:
        ``axes=(0, 1)``); the other axes are the batch, in their order (so
        per-image `lam`/`alpha` have their shape), and `z`/`x0` have y's
        rank. The answer has y's layout. Mutually exclusive with `ndim`.

    Returns
    -------
    x : array
        Same module and floating dtype as `y`; complex (in y's precision) if
        any of `y`, `h`, `z`, `x0` or a regularizer kernel is complex. With
        real kernels and regularizers a complex problem is solved as two real
        ones (real and imaginary parts, every method); a complex kernel takes
        full complex FFTs ("fft", "fft_approx", or CG with the circulant
        preconditioner; "dct" needs real kernels).
    info : SolveInfo
        Only with ``return_info=True``: method, and per image iterations,
        relative residual of the normal equations, converged, breakdown,
        ``lam`` used, and with a chosen ``lam`` the criterion curve
        ``lam_curve`` (:class:`~gpu_deconv.solvers.lam.LamCurve`).

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
    if axes is not None:
        return _deconvolve_along(axes, y, h, z, x0, ndim, return_info, dict(
            lam=lam, reg=reg, mode=mode, boundary=boundary, convention=convention, alpha=alpha,
            method=method, rtol=rtol, maxiter=maxiter, precondition=precondition, dtype=dtype,
            batch_size=batch_size, noise_sigma=noise_sigma))
    rtol, maxiter, precondition, batch_size = _solver_options(method, rtol, maxiter, precondition,
                                                              batch_size)
    criterion = lamsel.criterion_of(lam)
    prob = build_problem(y, h, lam=1.0 if criterion else lam, reg=reg, mode=mode, boundary=boundary,
                         convention=convention, alpha=alpha, z=z, x0=x0, ndim=ndim, dtype=dtype)
    method = choose_method(prob, method)
    curve = None
    if criterion:
        lam_b, curve, warm = _select_lam(prob, method, criterion, noise_sigma, rtol, maxiter, precondition,
                                         batch_size)
        prob = prob.replace(lam=lam_b, x0=warm if warm is not None and prob.x0 is None else prob.x0)
    elif noise_sigma is not None:
        raise ValueError("noise_sigma is used only with lam='discrepancy'; "
                         f"got lam={lam!r:.40} with noise_sigma={noise_sigma!r:.40}")
    if prob.dtype.kind == "c" and prob.real_ops and method in ("dct", "cg"):
        # Real kernels and regularizers: the solution map is real-linear, so the real and
        # imaginary parts are two real problems (the DCT, the band preconditioner and the GPU's
        # fused CG need real data). The DFT closed forms run on the full spectrum instead.
        from .complex_solve import solve_split

        x, info = solve_split(prob, method, _solve_problem, rtol=rtol, maxiter=maxiter,
                              precondition=precondition, return_info=return_info, batch_size=batch_size)
    else:
        x, info = _solve_problem(prob, method, rtol, maxiter, precondition, return_info, batch_size)
    if not return_info and method == "cg":
        _warn_unconverged(info, rtol, maxiter)
    if not return_info:
        return x
    info.lam = _caller_lam(prob, prob.lam).reshape(prob.batch)
    info.lam_curve = curve
    return x, info


def _caller_lam(prob, lam):
    """lam per image (B,) in the caller's units (a kernel far from 1 rescales the problem's lam)."""
    return np.ldexp(np.asarray(lam, np.float64), np.broadcast_to(prob.lam_exp, (prob.B,)))


def _solver_options(method, rtol, maxiter, precondition, batch_size):
    check_choice("method", method, METHODS)
    rtol = check_positive("rtol", rtol)
    if precondition is True:
        precondition = "band"
    elif precondition is not False:
        check_choice("precondition", precondition, ("band", "circulant", "border"))
    maxiter = DEFAULT_MAXITER if maxiter is None else check_positive("maxiter", maxiter, integer=True)
    return rtol, maxiter, precondition, _memory.check_batch_size(batch_size)


def _solve_problem(prob, method, rtol, maxiter, precondition, return_info, batch_size):
    """Solve a built problem in chunks; x of shape batch + n, and the info (or None)."""
    unsafe = []

    def solve(p):
        if method == "cg":
            unsafe.append(p)
            return _solve_cg(p, rtol, maxiter, precondition, return_info)
        xs, output_safe = _solve_closed(p, method)
        if not output_safe:
            unsafe.append(p)
        return xs, (_closed_info(p, method, xs, rtol) if return_info else None)

    with quiet_fp():
        x, info = solve_in_chunks(prob, method, batch_size, solve, precondition=precondition)
        x = unscale(prob, x)
    if unsafe or np.any(prob.x_exp):  # a closed form whose output is bounded below overflow skips this pass
        finite_result(prob.bk, x, "the solution", ("y", "h", "z", "lam", "alpha"))
    return x.reshape(tuple(prob.batch) + tuple(prob.n)), info


def _deconvolve_along(axes, y, h, z, x0, ndim, return_info, kw):
    """deconvolve with the kernel acting along `axes` of y (moved to the end and back)."""
    from .._axes import check_axes, from_last, to_last

    if ndim is not None:
        raise ValueError(f"axes= and ndim= are mutually exclusive (per-image kernels use ndim=); "
                         f"got axes={axes!r}, ndim={ndim!r}")
    bk = get_backend(y=y, h=h, z=z, x0=x0)
    ya, ha = as_array(bk, "y", y), as_array(bk, "h", h)
    ax = check_axes(axes, ya.ndim, ha.ndim)

    def moved(name, a):
        if a is None:
            return None
        a = as_array(bk, name, a)
        if a.ndim != ya.ndim:
            raise ValueError(f"with axes=, {name} must have y's number of dimensions ({ya.ndim}); "
                             f"got shape {tuple(a.shape)}")
        return to_last(bk.xp, a, ax)

    res = deconvolve(to_last(bk.xp, ya, ax), ha, z=moved("z", z), x0=moved("x0", x0),
                     return_info=return_info, **kw)
    x, info = res if return_info else (res, None)
    x = bk.xp.ascontiguousarray(from_last(bk.xp, x, ax))
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
    y, y_sq = as_float_array(bk, "y", y, dtype, norm=True, allow_complex=True)
    h, nd, h_host = _kernels(bk, h, y.dtype, ndim)
    # Complex y, h, z or x0 make the problem complex, in the precision of y.
    wdt = work_dtype(y.dtype, h.dtype, *(_kind_of(a) for a in (z, x0)))
    y = y.astype(wdt, copy=False)
    rdt = real_dtype(wdt)
    if y.ndim < nd:
        raise ValueError(f"y has {y.ndim} dimensions but the kernel has {nd} spatial axes; "
                         f"shapes: y {tuple(y.shape)}, h {tuple(h.shape)}")
    if mode == "same" and boundary == "periodic":
        mode = "circular"  # identical models; the closed form applies
    if mode == "circular":
        boundary = "periodic"
    m = tuple(y.shape[y.ndim - nd:])
    kshape = tuple(h.shape[h.ndim - nd:])
    n = input_shape(mode, m, kshape)
    batch = broadcast_batch("y", y.shape[:y.ndim - nd], "h", h.shape[:h.ndim - nd])
    lam_a = per_image("lam", lam, batch, dtype=rdt)
    alpha_a = per_image("alpha", alpha, batch, dtype=rdt)
    if bool(np.any(alpha_a > 0)) and z is None:
        raise ValueError("alpha > 0 needs z (the proximal centre, with the unknown's shape)")
    _refuse_zero_kernel(h_host, nd, batch, lam_a, alpha_a)
    terms = parse_reg(bk, reg, nd)
    zf, z_sq = _image_array(bk, "z", z, batch, n, wdt, norm=True) if z is not None else (None, 0.0)
    x0f = _image_array(bk, "x0", x0, batch, n, wdt) if x0 is not None else None

    B = int(np.prod(batch)) if batch else 1
    kb = h.shape[:h.ndim - nd]
    hb = bk.xp.broadcast_to(h, tuple(batch) + kshape).reshape((B,) + kshape) if kb else h
    hb_host = np.broadcast_to(h_host, tuple(batch) + kshape).reshape((B,) + kshape) if kb else h_host
    terms = build_operators(terms, n, circular=mode == "circular", boundary=boundary,
                            convention=convention, dtype=rdt)
    prob = Problem(
        bk=bk, dtype=wdt, batch=tuple(batch), mode=mode, boundary=boundary, convention=convention, ndim=nd,
        kshape=kshape, n=n, m=m, y=bk.xp.broadcast_to(y, tuple(batch) + m).reshape((B,) + m), h=hb,
        A=ConvolutionOperator.from_validated(hb, n, mode, boundary=boundary, convention=convention, ndim=nd,
                                             host=hb_host), terms=terms,
        lam=lam_a.reshape(B), alpha=alpha_a.reshape(B),
        z=zf.reshape((B,) + n).astype(wdt, copy=False) if zf is not None else None,
        x0=x0f.reshape((B,) + n).astype(wdt, copy=False) if x0f is not None else None,
        # Norms of the data (from the validation pass) bound a closed form's output.
        y_sq=y_sq, z_sq=z_sq, use_reg=bool(np.any(lam_a > 0)), use_alpha=bool(np.any(alpha_a > 0)),
        # Real kernels and regularizers: a complex problem splits into two real ones.
        real_ops=h.dtype.kind != "c" and all(t.is_identity or t.op.dtype.kind != "c" for t in terms))
    return balance_scales(prob)  # kernels or data far from 1: exact power-of-two rescaling (x_exp)


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
                                   prob.mode, prob.convention, prob.n, nd, wdt), False
    if method == "fft" and bk.ops.fused_spectral_solve and wdt.kind != "c":  # the CUDA solve is real-only
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
    output_safe = bool(bound < np.finfo(wdt).max / 8)
    if method == "fft":
        return cf.apply_spectral_filter(bk, W, V, prob.y, prob.z, prob.n), output_safe
    return cf.apply_dct_filter(bk, W, V, prob.y, prob.z, nd), output_safe


def _solve_fft_fused(prob):
    """The circular closed form as one fused pass (the CUDA ops' ``spectral_solve``).

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

    def extrema():
        dmin, dmax = bk.ops.spectral_extrema(H, R, lam, alpha, (prob.B,), ndim=nd)
        # Judged against the data term's scale max |H|^2 (as on the CPU), not the whole denominator's.
        _, hmax = bk.ops.spectral_extrema(H, None, 0 * lam, 0 * alpha, (prob.B,), ndim=nd)
        return bk.asnumpy(dmin), cf.singularity_scale(bk.asnumpy(dmax), bk.asnumpy(hmax))

    # Cached like the spectra (same kernel, regularizers, lam, alpha, dtype: same denominator), so
    # that a warm call neither reduces it again nor waits for the device; the check runs every call.
    dmin, scale = _cache.cached(bk, prob.key("fft_fused_extrema"), extrema)
    lam_c, alpha_c = image_params(prob)  # a batch sharing them is judged (and reported) as one, as on the CPU
    if lam_c.size == 1:
        dmin, scale = np.asarray(dmin).ravel()[:1], np.asarray(scale).ravel()[:1]
    cf.check_extrema(dmin, scale, np.finfo(wdt).eps, lam_c, alpha_c)
    # The bound of the CPU path (Parseval, |H| <= sum|h|), from host values: no pass over the output.
    inv = 1.0 / float(np.min(dmin))
    hl1 = float(np.abs(prob.A.host_kernel()).sum(axis=tuple(range(-nd, 0))).max())
    bound = hl1 * inv * np.sqrt(prob.y_sq) + float(prob.alpha.max()) * inv * np.sqrt(prob.z_sq)
    Y = bk.xp.ascontiguousarray(bk.rfftn(prob.y, n))
    Z = bk.xp.ascontiguousarray(bk.rfftn(prob.z, n)) if prob.use_alpha else None
    Y = bk.ops.spectral_solve(Y, H, R, lam, alpha, Z, ndim=nd)
    # Y is a temporary: no copy of it for cuFFT's C2R.
    return bk.irfftn(Y, n, overwrite_x=True), bool(bound < np.finfo(wdt).max / 8)


def _dct_filters(prob, stats=None, lam=None, alpha=None):
    bk, n, nd = prob.bk, prob.n, prob.ndim
    lam_A, lam_R = cf.dct_spectra(bk, prob.A, prob.terms if prob.use_reg else [], n, nd)
    return cf.dct_filter(bk, lam_A, lam_R, prob.lam if lam is None else lam,
                         prob.alpha if alpha is None else alpha, nd, prob.dtype, stats=stats)


def _closed_info(prob, method, x, rtol):
    res = prob.residual(x)
    conv = np.ones(prob.B, bool) if method != "fft_approx" else res <= rtol
    shape = prob.batch
    return SolveInfo(method, np.zeros(shape, np.int64), res.reshape(shape), conv.reshape(shape),
                     np.zeros(shape, bool), np.zeros(shape, bool))


def _solve_cg(prob, rtol, maxiter, precondition, return_info):
    bk = prob.bk
    normal = prob.normal_operator()
    pprob = prob if prob.lam_precond is None else prob.replace(lam=prob.lam_precond)
    if prob.dtype.kind == "c" and precondition:  # complex kernels: the circulant part, on full FFTs
        from .complex_solve import complex_circulant

        M = complex_circulant(bk, pprob)
    else:
        M = make_preconditioner(bk, pprob, prob.dtype, precondition) if precondition else None
    x, d = batched_cg(bk, normal, prob.rhs(), prob.ndim, x0=prob.x0, rtol=rtol, maxiter=maxiter, M=M,
                      keep_history=return_info, overwrite_b=True)
    shape = prob.batch
    info = SolveInfo("cg", d["iterations"].reshape(shape), d["residual"].reshape(shape),
                     d["converged"].reshape(shape), d["breakdown"].reshape(shape),
                     d["stagnated"].reshape(shape), rtol=rtol, preconditioned=M is not None,
                     history=d["history"])
    return x, info


# ------------------------------------------------------------ choosing lam
#: Relative tolerance of the CG solves that evaluate a criterion (the final
#: solve uses the caller's rtol): the criteria need the residual and the
#: trace to about 1e-3 (at small lam the probes need ~1e-5 for that), not the
#: solution to 1e-6.
SELECT_RTOL = 1e-5


def _noise_target(prob, noise_sigma):
    """sigma^2 per image (B,), from `noise_sigma` or estimated from y."""
    if noise_sigma is None:
        sigma = lamsel.estimate_noise_flat(prob.bk, prob.y, prob.ndim)
    else:
        sigma = per_image("noise_sigma", noise_sigma, prob.batch).reshape(prob.B)
        if np.any(sigma <= 0):
            raise ValueError(f"noise_sigma must be positive; got {noise_sigma!r:.60}")
        # y far from 1 was rescaled by a power of two: so is its noise
        sigma = np.ldexp(sigma.astype(np.float64), -_data_exp(prob))
    return sigma.astype(np.float64) ** 2


def _expanded(prob, E, y_e, lam, x0, lam_precond=None):
    """`prob` with every image repeated E times (entries b*E + e), data `y_e`, per-image lam.

    Entries e >= 1 are probes: right-hand side y_e, no proximal centre (z = 0).
    """
    bk, B, n = prob.bk, prob.B, tuple(prob.n)
    xp = bk.xp
    # The selection works in the (possibly rescaled) units of `prob`: x_exp = lam_exp = 0.
    changes = dict(batch=(B * E,), y=y_e, x_exp=0, lam_exp=0, lam=np.repeat(np.asarray(lam, np.float64), E),
                   alpha=np.repeat(prob.alpha, E), use_reg=True,
                   x0=None if x0 is None else x0.reshape((B * E,) + n), lam_precond=lam_precond)
    if prob.z is not None:
        z = xp.zeros((B, E) + n, dtype=prob.z.dtype)
        z[:, 0] = prob.z
        changes["z"] = z.reshape((B * E,) + n)
    if prob.A.kernel_batch:
        changes["h"] = xp.repeat(prob.h, E, axis=0)
    return prob.replace(**changes)


class LamSelectionWarning(UserWarning):
    """The criterion could not be met as asked, and another value of lam was used (see the message)."""


def _select_lam(prob, method, criterion, noise_sigma, rtol, maxiter, precondition, batch_size):
    """Per-image lam by `criterion`: (lam (B,), LamCurve, warm start (B, *n) or None)."""
    if method == "fft_approx":
        raise ValueError(f"lam={criterion!r} needs an exact model, and method='fft_approx' is an "
                         "approximation; use method='auto' (or give lam a number)")
    if np.dtype(prob.dtype).kind == "c":
        raise ValueError(f"lam={criterion!r} is not available for complex data yet; give lam a number "
                         "(or choose it on the real and imaginary parts separately)")
    target = _noise_target(prob, noise_sigma) if criterion == "discrepancy" else None
    curve = lamsel._Curve(prob.B)
    flags = {}
    with quiet_fp():
        if method in ("fft", "dct"):
            lam = _select_closed(prob, method, criterion, target, curve, batch_size, flags)
            warm = None
        else:
            lam, warm = _select_cg(prob, criterion, target, curve, rtol, maxiter, precondition, batch_size,
                                   flags)
    out = lam, _caller_curve(prob, curve.finish(criterion, prob.batch, target)), warm
    low, high = flags.get("low"), flags.get("high")
    if low is not None and low.any():
        # No lam fits the data as closely as sigma says (sigma too small for this
        # model): the principle's answer, the smallest lam, amplifies the noise
        # without bound. GCV needs no sigma; use it for those images.
        bad = np.flatnonzero(low)
        g_lam, _, g_warm = _select_lam(prob, method, "gcv", None, rtol, maxiter, precondition, batch_size)
        lam = np.where(low, g_lam, lam)
        if warm is not None:
            warm = bk_where(prob.bk, low, g_warm, warm)
        warnings.warn(LamSelectionWarning(
            f"discrepancy principle: no lam gives a residual as small as m * sigma^2 for images "
            f"{bad[:8].tolist()}{'...' if bad.size > 8 else ''} (sigma {np.sqrt(target[bad[0]]):.3g} "
            "is below what the model can fit; noise_sigma too small?); used lam='gcv' there"),
            stacklevel=3)
        out = lam, out[1], warm
    if high is not None and high.any():
        bad = np.flatnonzero(high)
        warnings.warn(LamSelectionWarning(
            f"discrepancy principle: even the largest lam searched leaves a residual below m * sigma^2 "
            f"for images {bad[:8].tolist()}{'...' if bad.size > 8 else ''} (noise_sigma too large?); "
            "used that largest lam"), stacklevel=3)
    return out


def _data_exp(prob):
    """Per image (B,), the power of two y was divided by (x_exp = ed - ec, lam_exp = 2 ec)."""
    return np.broadcast_to(np.asarray(prob.x_exp) + np.asarray(prob.lam_exp) // 2, (prob.B,))


def _caller_curve(prob, curve):
    """The curve with lam (and the discrepancy's sigma^2 and residuals) in the caller's units."""
    if not (np.any(prob.lam_exp) or np.any(prob.x_exp)):
        return curve
    shape = tuple(prob.batch) + (1,)
    curve.lam = np.ldexp(curve.lam, np.broadcast_to(prob.lam_exp, (prob.B,)).reshape(shape))
    if curve.criterion == "discrepancy":
        ed = _data_exp(prob)
        curve.value = np.ldexp(curve.value, (2 * ed).reshape(shape))
        curve.target = np.ldexp(curve.target, (2 * ed).reshape(prob.batch))
    return curve


def bk_where(bk, sel, a, b):
    """Per image (leading axis): a where sel, else b."""
    xp = bk.xp
    return xp.where(xp.asarray(sel).reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def _select_closed(prob, method, criterion, target, curve, batch_size, flags):
    """Closed forms: exact criteria summed over the spectrum, chunk by chunk of images."""
    B = prob.B
    chunk = B if batch_size is None and not prob.bk.is_gpu else (
        _memory.auto_chunk(prob, method) if batch_size in (None, "auto") else min(batch_size, B))
    lam = np.empty(B)
    for start in range(0, B, chunk):
        stop = min(B, start + chunk)
        sub = prob if (start, stop) == (0, B) else prob.slice(start, stop)
        model = lamsel.spectral_model(sub, method)
        sub_curve = lamsel._Curve(stop - start)
        f = {}
        lam[start:stop] = lamsel.search_spectral(
            model, criterion, target=None if target is None else target[start:stop], dtype=prob.dtype,
            curve=sub_curve, flags=f)
        curve.items[start:stop] = sub_curve.items
        for k, v in f.items():
            flags.setdefault(k, np.zeros(B, bool))[start:stop] = v
    return lam


def _select_cg(prob, criterion, target, curve, rtol, maxiter, precondition, batch_size, flags):
    """Models without closed form: a circular surrogate seeds, CG solves of the exact model refine."""
    bk, B = prob.bk, prob.B
    xp = bk.xp
    n, m = tuple(prob.n), tuple(prob.m)
    min_dof = lamsel.MIN_DOF if prob.mode == "valid" else 0.0
    sur = lamsel.surrogate_model(prob)
    pts = {}
    lam_s = lamsel.search_spectral(sur, criterion, target=target, dtype=prob.dtype, curve=curve,
                                   exact=False, min_dof=min_dof, flags=flags, points=pts)
    gcv = criterion == "gcv"
    P = int(np.clip(np.ceil(2.0 ** 15 / np.prod(m)), 1, 8)) if gcv else 0
    E = 1 + P
    if gcv:
        V = xp.asarray(lamsel.probes(m, P).astype(prob.dtype))
        y_e = xp.concatenate([prob.y[:, None], xp.broadcast_to(V[None], (B, P) + m)], axis=1)
        y_e = y_e.reshape((B * E,) + m)
    else:
        y_e = prob.y
    sel_rtol = max(rtol, SELECT_RTOL)

    def solve_at(lam, state, with_probes=True):
        e = E if with_probes else 1
        x0 = state
        if x0 is None and prob.x0 is not None:
            x0 = xp.zeros((B, e) + n, dtype=prob.dtype)
            x0[:, 0] = prob.x0
        # One preconditioner (built at the surrogate's lam, cached) serves every lam tried:
        # it stays SPD, and building one per lam would cost more than it saves.
        p = _expanded(prob, e, y_e if with_probes else prob.y, lam, x0, lam_precond=np.repeat(lam_s, e))
        x, _ = _solve_problem(p, "cg", sel_rtol, maxiter, precondition, False, batch_size)
        return x.reshape((B, e) + n)

    return lamsel.refine_exact(prob, criterion, lam_s, solve_at, pts, target=target, nprobes=P,
                               curve=curve, min_dof=min_dof)


def choose_lam(y: ArrayLike, h: ArrayLike, criterion: str = "gcv", *, noise_sigma: PerImage | None = None,
               reg: Reg = None, mode: Mode = "same", boundary: Boundary = "zero",
               convention: Convention = "scipy", alpha: PerImage = 0.0, z: ArrayLike | None = None,
               method: Method = "auto", rtol: float = 1e-6, maxiter: int | None = None,
               precondition: bool | str = True, ndim: int | None = None, dtype: DTypeLike | None = None,
               batch_size: int | str | None = None, return_curve: bool = False):
    """The regularization weight ``lam`` chosen from the data, per image.

    Parameters
    ----------
    y, h, reg, mode, boundary, convention, alpha, z, method, rtol, maxiter, precondition, ndim, dtype, \
batch_size
        As in :func:`deconvolve` (``method`` names the solver of the model, not the criterion).
    criterion : {"gcv", "discrepancy"}, optional
        ``"gcv"`` (default): minimise the generalized cross-validation function
        ``G(lam) = m ||(I - A(lam)) y||^2 / tr(I - A(lam))^2`` with ``A(lam) =
        H (H^T H + lam R + alpha I)^-1 H^T`` the influence matrix of the exact
        model (``m`` data samples). ``"discrepancy"``: the ``lam`` at which
        ``||h * x_lam - y||^2 = m sigma^2``.
    noise_sigma : float or array, optional
        Noise standard deviation, scalar or one per image, for
        ``"discrepancy"`` (default: :func:`estimate_noise` of `y`).
    return_curve : bool, optional
        Also return the :class:`~gpu_deconv.solvers.lam.LamCurve` (every
        ``lam`` tried and the criterion there, per image).

    Returns
    -------
    lam : ndarray
        float64 host array of the batch shape (0-d for a single image).
    curve : LamCurve
        Only with ``return_curve=True``.

    Notes
    -----
    Where a transform diagonalizes the problem (``circular``: DFT; ``same`` +
    ``symmetric`` with centre-symmetric kernels: DCT) both criteria are exact
    sums over the spectrum of `y`, evaluated on a grid of one ``lam`` per
    decade around ``max|H|^2 / max R``, then two rounds of finer points (8,
    then 4) around the best, and a parabola through the best ones.

    Elsewhere a circular surrogate (the data tapered to zero over one kernel
    width at the faces) is searched the same way, and batched CG solves of the
    exact model refine its answer ``lam_s``. GCV: the exact model's GCV at
    ``lam_s * 10^(-+1/4)`` (the residual exactly; ``tr(A)`` from Rademacher
    probes solved as extra batch entries at the first point, with a DCT model
    of the influence matrix as control variate, and at the second that
    model's trace times the ratio measured at the first) fits a log-linear
    correction of the surrogate's curve, whose minimum within a decade of
    ``lam_s`` is the answer.
    Discrepancy: secant steps on the exact residual. Those solves use ``rtol =
    max(rtol, 1e-5)`` and one preconditioner, built at ``lam_s``. In ``valid``
    mode ``A -> I`` as ``lam -> 0`` (the unknown has more samples than the
    data), so the GCV search keeps ``tr(I - A) >= 0.02 m``.

    Examples
    --------
    >>> import numpy as np
    >>> import gpu_deconv as gd
    >>> from gpu_deconv.data import scene, gaussian_kernel
    >>> rng = np.random.default_rng(0)
    >>> h = gaussian_kernel(9, 1.5)
    >>> y = gd.convolve(scene((64, 64)), h, "circular") + 0.02 * rng.standard_normal((64, 64))
    >>> lam = gd.choose_lam(y, h, mode="circular", reg="laplacian")
    >>> lam.shape, bool(1e-4 < lam < 1)
    ((), True)
    """
    criterion = check_choice("criterion", criterion, lamsel.CRITERIA)
    rtol, maxiter, precondition, batch_size = _solver_options(method, rtol, maxiter, precondition,
                                                              batch_size)
    if noise_sigma is not None and criterion != "discrepancy":
        raise ValueError("noise_sigma is used only with criterion='discrepancy'")
    prob = build_problem(y, h, lam=1.0, reg=reg, mode=mode, boundary=boundary, convention=convention,
                         alpha=alpha, z=z, ndim=ndim, dtype=dtype)
    method = choose_method(prob, method)
    lam, curve, _ = _select_lam(prob, method, criterion, noise_sigma, rtol, maxiter, precondition,
                                batch_size)
    lam = _caller_lam(prob, lam).reshape(prob.batch)
    return (lam, curve) if return_curve else lam


def estimate_noise(y: ArrayLike, ndim: int | None = None) -> np.ndarray:
    """Standard deviation of additive white noise in `y`, per image.

    Parameters
    ----------
    y : array
        Data, shape ``(..., *m)`` (NumPy or CuPy); leading axes are a batch.
    ndim : int, optional
        Number of spatial axes (default ``y.ndim``).

    Returns
    -------
    sigma : ndarray
        float64 host array of the batch shape (0-d for a single image).

    Notes
    -----
    Each spatial axis is filtered by the unit-energy second difference
    ``[1, -2, 1] / sqrt(6)``, which passes white noise with its variance and
    annihilates constant and linear content (blurred data has little
    curvature left; Immerkaer 1996 uses the same filter). Values beyond four
    robust standard deviations (``1.4826 median |d|``, Donoho & Johnstone
    1994) are discarded as edges, and sigma is the root mean square of the
    rest. Images with much fine texture and little blur read high.

    For Poisson (shot) noise the variance follows the signal; sigma is then
    the root mean square noise over the image (the variance averaged over
    the pixels), which is what the residual of the discrepancy principle
    measures.

    Examples
    --------
    >>> import numpy as np
    >>> from gpu_deconv import estimate_noise
    >>> rng = np.random.default_rng(0)
    >>> y = np.linspace(0, 1, 128)[:, None] * np.ones(128) + 0.05 * rng.standard_normal((128, 128))
    >>> round(float(estimate_noise(y)), 2)
    0.05
    """
    bk = get_backend(y=y)
    y = as_float_array(bk, "y", y)
    nd = y.ndim if ndim is None else check_ndim(ndim, y.ndim)
    spatial = tuple(y.shape[y.ndim - nd:])
    if nd == 0 or any(s < 2 for s in spatial) or (all(s < 3 for s in spatial) and np.prod(spatial) < 4):
        raise ValueError(f"estimate_noise needs at least 2 samples along every spatial axis and 4 in all; "
                         f"y spatial shape {spatial}")
    batch = tuple(y.shape[:y.ndim - nd])
    B = int(np.prod(batch)) if batch else 1
    sigma = lamsel.estimate_noise_flat(bk, y.reshape((B,) + spatial), nd)
    return sigma.reshape(batch)
