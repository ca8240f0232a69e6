"""Python launchers of the custom CUDA kernels (``kernels/*.cu``) and the switch that enables them.

The generic code of gpu_deconv runs on CuPy arrays as it stands (``bk.xp`` is
cupy, the FFTs are cuFFT); these kernels replace its multi-pass steps by
one-pass ones: padding into the FFT grid and the exact adjoint fold (a gather,
no atomics), the window crop/mask, the closed-form spectral division, the
preconditioner product, the multi-channel Sherman-Morrison solve, and the
fused updates and per-image dot products of the batched CG.

Every launcher takes CuPy arrays, checks dtypes, shapes and contiguity
(TypeError / ValueError naming the argument), and calls the kernel with
arguments converted to the exact C types of its signature
(:data:`SIGNATURES`, which ``tests/test_kernels_compile.py`` checks against
the CUDA sources). Nothing here imports cupy at import time.

Set the environment variable ``GPU_DECONV_DISABLE_KERNELS=1`` to turn the
custom kernels off: CuPy inputs then take the generic CuPy path (still on
the GPU), which the GPU tests use as the twin to compare against.
"""

from __future__ import annotations

import math
import os
from collections import namedtuple

import numpy as np

from . import _kernels

__all__ = [
    "ENV_DISABLE",
    "enabled",
    "kernels_disabled",
    "supports_ndim",
    "pad_to_grid",
    "fold_from_grid",
    "crop",
    "mask_window",
    "embed",
    "spectral_solve",
    "spectral_extrema",
    "precondition_apply",
    "sherman_morrison",
    "sherman_morrison_supported",
    "CGKernels",
]

#: Environment variable that turns the custom kernels off (any value but "", "0", "false", "no", "off").
ENV_DISABLE = "GPU_DECONV_DISABLE_KERNELS"

#: Boundary name -> the GD_BC_* code of kernels/gd_common.cuh.
BOUNDARY_CODES = {"zero": 0, "periodic": 1, "symmetric": 2, "reflect": 3, "replicate": 4}

#: Spatial axes the pad/fold/crop kernels handle (more falls back to the generic path).
MAX_NDIM = 3

#: Threads per block (GD_BLOCK of gd_common.cuh; the reductions need exactly this).
BLOCK = 256
#: Cap of a 1-D grid; the kernels loop (grid-stride) over what lies beyond.
MAX_BLOCKS = 1 << 20
#: CUDA's limit on gridDim.y; the reduction kernels loop over the images beyond.
MAX_GRID_Y = 65535
#: A reduction aims at about this many blocks in all, and at most MAX_PARTIALS per image.
REDUCE_BLOCKS = 2048
MAX_PARTIALS = 1024

# Parameter kinds of every kernel, in order: "T*" / "C*" a C-contiguous
# array of the real / complex working dtype, "f64*" a float64 array, a
# leading "?" allows None (the kernel gets a stand-in it does not read, see
# _stand_in); "i64" / "i32" scalars (long long / int).
_GEOM = ("i64",) * 12
_WIN = ("i64",) * 6
SIGNATURES = {
    "pad": ("T*", "T*", "i64") + _GEOM,
    "fold": ("T*", "T*", "i64") + _GEOM,
    "crop": ("T*", "T*", "i64") + _WIN,
    "mask": ("T*", "i64") + _WIN,
    "spectral_solve": ("C*", "C*", "?T*", "T*", "T*", "?C*", "i64", "i64", "i64", "i64", "i32", "i32"),
    "spectral_extrema": ("C*", "?T*", "T*", "T*", "T*", "T*", "i64", "i64", "i64", "i64", "i64", "i32"),
    "precond_mul": ("C*", "T*", "i64", "i64", "i64"),
    "precond_div": ("C*", "T*", "T*", "i64", "i64", "i64"),
    "sherman_morrison": ("C*", "C*", "C*", "T*", "C*", "i64", "i64", "i64"),
    "dot_partial": ("T*", "T*", "f64*", "i64", "i64", "i64"),
    "cg_update_xr": ("T*", "T*", "T*", "T*", "f64*", "f64*", "i64", "i64", "i64"),
    "cg_update_p": ("T*", "T*", "f64*", "i64", "i64"),
    "sum_partials": ("f64*", "f64*", "i64", "i64"),
}

#: Which kernels/<module>.cu defines each kind of kernel.
MODULE_OF = {
    "pad": "pad_extract", "fold": "pad_extract", "crop": "pad_extract", "mask": "pad_extract",
    "spectral_solve": "spectral", "spectral_extrema": "spectral",
    "precond_mul": "spectral", "precond_div": "spectral",
    "sherman_morrison": "multichannel",
    "dot_partial": "cg", "cg_update_xr": "cg", "cg_update_p": "cg", "sum_partials": "cg",
}

_COMPLEX = {np.dtype(np.float32): np.dtype(np.complex64), np.dtype(np.float64): np.dtype(np.complex128)}
_REAL = {c: r for r, c in _COMPLEX.items()}


# ------------------------------------------------------------------ switch
def kernels_disabled() -> bool:
    """True when ``GPU_DECONV_DISABLE_KERNELS`` asks for the generic CuPy path."""
    v = os.environ.get(ENV_DISABLE, "").strip().lower()
    return v not in ("", "0", "false", "no", "off")


def enabled(bk) -> bool:
    """Whether the custom kernels serve `bk` (a Backend or an array module).

    True for CuPy unless ``GPU_DECONV_DISABLE_KERNELS`` is set; always False
    for NumPy, whose path never changes. Read at every call, so a test can
    flip it between two solves.
    """
    is_gpu = getattr(bk, "is_gpu", None)
    if is_gpu is None:
        is_gpu = getattr(bk, "__name__", "") == "cupy"
    return bool(is_gpu) and not kernels_disabled()


def supports_ndim(nd) -> bool:
    """Whether the pad/fold/crop kernels exist for `nd` spatial axes."""
    return 1 <= int(nd) <= MAX_NDIM


# ----------------------------------------------------------- names, layout
def kernel_name(kind, dtype, *, boundary=None, ndim=None) -> str:
    """Name of the ``extern "C"`` kernel of a kind, precision, boundary and ndim."""
    if kind not in SIGNATURES:
        raise ValueError(f"kind must be one of {', '.join(SIGNATURES)}; got {kind!r}")
    sfx = _kernels.dtype_suffix(dtype)
    if kind in ("pad", "fold"):
        if boundary not in BOUNDARY_CODES:
            raise ValueError(f"boundary must be one of {', '.join(BOUNDARY_CODES)}; got {boundary!r}")
        _check_nd(ndim)
        return f"gd_{kind}_{boundary}_{int(ndim)}d_{sfx}"
    if kind in ("crop", "mask"):
        _check_nd(ndim)
        return f"gd_{kind}_{int(ndim)}d_{sfx}"
    if kind == "sum_partials":
        return "gd_sum_partials"
    return f"gd_{kind}_{sfx}"


def _check_nd(nd):
    if nd is None or not supports_ndim(nd):
        raise ValueError(f"the CUDA pad/fold/crop kernels take 1 to {MAX_NDIM} spatial axes; got ndim={nd!r}")


def grid_1d(total: int) -> tuple:
    """Blocks of an elementwise launch over `total` elements (grid-stride beyond MAX_BLOCKS)."""
    return (max(1, min(-(-int(total) // BLOCK), MAX_BLOCKS)),)


def reduction_layout(n: int, nimg: int):
    """(blocks per image, grid) of a per-image reduction over `nimg` rows of `n` elements."""
    n, nimg = int(n), int(nimg)
    per_img = max(1, -(-REDUCE_BLOCKS // max(nimg, 1)))
    nblk = max(1, min(-(-n // BLOCK), per_img, MAX_PARTIALS))
    return nblk, (nblk, max(1, min(nimg, MAX_GRID_Y)))


AxisGeometry = namedtuple("AxisGeometry", "n L R G")
AxisGeometry.__doc__ = "One axis of a pad/fold: n samples, L before, R after, grid length G."


def pad_geometry(plans, grid=None) -> tuple:
    """The 12 geometry arguments (n, L, e = n + L + R, G; 3 each) of the pad/fold kernels.

    `plans` are :class:`gpu_deconv._padding.AxisPlan` (or anything with n, L,
    R, G); `grid` overrides their G. Unused trailing axes are unit axes.
    """
    nd = len(plans)
    _check_nd(nd)
    grid = tuple(int(p.G) for p in plans) if grid is None else tuple(int(g) for g in grid)
    if len(grid) != nd:
        raise ValueError(f"grid must have one length per axis ({nd}); got {grid}")
    n, L, e = [], [], []
    for ax, p in enumerate(plans):
        pn, pl, pr = int(p.n), int(p.L), int(p.R)
        if pn < 1 or pl < 0 or pr < 0 or grid[ax] < 1:
            raise ValueError(f"axis {ax}: need n >= 1, L >= 0, R >= 0, G >= 1; got n={pn}, L={pl}, "
                             f"R={pr}, G={grid[ax]}")
        n.append(pn)
        L.append(pl)
        e.append(pn + pl + pr)
    fill = 3 - nd
    return (tuple(n) + (1,) * fill + tuple(L) + (0,) * fill + tuple(e) + (1,) * fill
            + tuple(grid) + (1,) * fill)


def window_geometry(m, grid) -> tuple:
    """The 6 geometry arguments (m, G; 3 each) of the crop/mask kernels."""
    m, grid = tuple(int(v) for v in m), tuple(int(v) for v in grid)
    _check_nd(len(m))
    if len(grid) != len(m) or any(a < 0 or a > g for a, g in zip(m, grid)):
        raise ValueError(f"window {m} must fit in grid {grid} (0 <= m <= G per axis)")
    fill = 3 - len(m)
    return m + (1,) * fill + grid + (1,) * fill


# ------------------------------------------------------------------ launch
_cupy = _kernels._cupy  # cupy, imported lazily through _backend


def _real_dtype(name, a):
    dt = np.dtype(a.dtype)
    if dt in _COMPLEX:
        return dt
    raise TypeError(f"{name} must be float32 or float64 for the CUDA kernels; got dtype {dt}")


def _complex_real_dtype(name, a):
    dt = np.dtype(a.dtype)
    if dt in _REAL:
        return _REAL[dt]
    raise TypeError(f"{name} must be complex64 or complex128 for the CUDA kernels; got dtype {dt}")


def _check_cupy(cp, name, a):
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray; got {type(a).__name__}")


_STAND_INS: dict = {}


def _stand_in(dtype, device_id):
    """A one-element device array passed where a kernel's optional array is absent.

    The kernel never reads it (a flag says the operand is absent). Passing None
    would mean NULL only in recent cupy; older versions pass a NULL *argument*
    pointer, which the launch dereferences.
    """
    key = (device_id, np.dtype(dtype).str)
    a = _STAND_INS.get(key)
    if a is None:
        a = _STAND_INS.setdefault(key, _cupy().zeros(1, dtype=dtype))
    return a


def _convert_args(kind, dtype, args, device_id):
    """Arguments checked against SIGNATURES[kind] and converted to their C types."""
    spec = SIGNATURES[kind]
    if len(args) != len(spec):
        raise TypeError(f"kernel {kind} takes {len(spec)} arguments; got {len(args)}")
    real = np.dtype(dtype)
    want = {"T": real, "C": _COMPLEX[real], "f64": np.dtype(np.float64)}
    out = []
    for i, (s, a) in enumerate(zip(spec, args)):
        if s in ("i64", "i32"):
            v = int(a)
            out.append(np.int64(v) if s == "i64" else np.int32(v))
            continue
        nullable = s.startswith("?")
        base = s.lstrip("?").rstrip("*")
        if a is None:
            if not nullable:
                raise ValueError(f"kernel {kind}: argument {i} must be an array, got None")
            out.append(_stand_in(want[base], device_id))
            continue
        if np.dtype(a.dtype) != want[base]:
            raise TypeError(f"kernel {kind}: argument {i} must have dtype {want[base]}; got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"kernel {kind}: argument {i} must be C-contiguous")
        if int(a.device.id) != device_id:
            raise ValueError(f"kernel {kind}: argument {i} lives on device {a.device.id}, the launch on "
                             f"device {device_id}; move the arrays to one device")
        out.append(a)
    return tuple(out)


def _launch(kind, dtype, grid, block, args, *, boundary=None, ndim=None):
    cp = _cupy()
    dev = int(cp.cuda.Device().id)
    name = kernel_name(kind, dtype, boundary=boundary, ndim=ndim)
    cargs = _convert_args(kind, dtype, args, dev)
    fn = _kernels.get_function(MODULE_OF[kind], name, dtype)
    fn(tuple(int(g) for g in grid), tuple(int(b) for b in block), cargs)


def _spatial(name, a, nd, expect):
    """Batch shape of `a`, whose trailing `nd` axes must be `expect`."""
    if a.ndim < nd or tuple(a.shape[a.ndim - nd:]) != tuple(expect):
        raise ValueError(f"{name} must have trailing shape {tuple(expect)}; got shape {tuple(a.shape)}")
    return tuple(a.shape[:a.ndim - nd])


def _check_out(name, out, shape, dtype):
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        raise ValueError(f"{name} must have shape {tuple(shape)} and dtype {np.dtype(dtype)}; got "
                         f"{tuple(out.shape)} {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


# ------------------------------------------------------------ pad / extract
def pad_to_grid(x, plans, boundary, grid=None, out=None):
    """P x written straight into the FFT grid: ``(..., *n) -> (..., *G)``.

    Position j of an axis holds the extended signal at ``j - L`` for
    ``j < n + L + R`` and zero beyond, so ``rfftn`` of the result needs no
    ``s=`` padding. One pass, every grid element written once.

    Parameters
    ----------
    x : cupy.ndarray
        float32/float64, shape ``(..., *n)`` (made C-contiguous if it is not).
    plans : sequence of AxisPlan
        One per spatial axis (1 to 3 axes).
    boundary : {"zero", "periodic", "symmetric", "reflect", "replicate"}
    grid : tuple of int, optional
        Grid shape (default each plan's G).
    out : cupy.ndarray, optional
        C-contiguous destination of shape ``(..., *grid)``.
    """
    cp = _cupy()
    _check_cupy(cp, "x", x)
    dt = _real_dtype("x", x)
    nd = len(plans)
    geom = pad_geometry(plans, grid)
    batch = _spatial("x", x, nd, tuple(int(p.n) for p in plans))
    G = geom[9:9 + nd]
    with x.device:
        x = cp.ascontiguousarray(x)
        if out is None:
            out = cp.empty(batch + G, dtype=dt)
        else:
            _check_out("out", out, batch + G, dt)
        total = out.size
        if total:
            _launch("pad", dt, grid_1d(total), (BLOCK,), (x, out, total) + geom,
                    boundary=boundary, ndim=nd)
    return out


def fold_from_grid(v, plans, boundary):
    """P^T read from the FFT grid: ``(..., *G) -> (..., *n)``.

    Sums, for each sample of x, every grid position ``j < n + L + R`` whose
    extended position ``j - L`` reads it (the exact adjoint of
    :func:`pad_to_grid`); each output sample gathers its own preimages.
    """
    cp = _cupy()
    _check_cupy(cp, "v", v)
    dt = _real_dtype("v", v)
    nd = len(plans)
    G = tuple(v.shape[v.ndim - nd:]) if v.ndim >= nd else ()
    geom = pad_geometry(plans, G if len(G) == nd else None)
    batch = _spatial("v", v, nd, geom[9:9 + nd])
    e = geom[6:6 + nd]
    if any(a > g for a, g in zip(e, G)):
        raise ValueError(f"v's grid {G} is shorter than the extended signal {e} (n + L + R per axis)")
    n = geom[0:nd]
    with v.device:
        v = cp.ascontiguousarray(v)
        out = cp.empty(batch + n, dtype=dt)
        total = out.size
        if total:
            _launch("fold", dt, grid_1d(total), (BLOCK,), (v, out, total) + geom,
                    boundary=boundary, ndim=nd)
    return out


def _window_args(cp, v, shape, *, in_place=False):
    """Checks of crop / mask_window: (dtype, nd, batch shape, the 6 window arguments)."""
    _check_cupy(cp, "v", v)
    dt = _real_dtype("v", v)
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    _check_nd(nd)
    if v.ndim < nd:
        raise ValueError(f"v must have at least {nd} axes; got shape {tuple(v.shape)}")
    if in_place and not v.flags.c_contiguous:
        raise ValueError("v must be C-contiguous (it is masked in place)")
    geom = window_geometry(shape, tuple(v.shape[v.ndim - nd:]))
    return dt, nd, tuple(v.shape[:v.ndim - nd]), geom


def crop(v, shape):
    """The first ``shape[a]`` samples of each trailing axis, as a new C-contiguous array."""
    cp = _cupy()
    dt, nd, batch, geom = _window_args(cp, v, shape)
    shape = geom[:nd]  # the window as ints
    with v.device:
        v = cp.ascontiguousarray(v)
        out = cp.empty(batch + shape, dtype=dt)
        total = out.size
        if total:
            _launch("crop", dt, grid_1d(total), (BLOCK,), (v, out, total) + geom, ndim=nd)
    return out


def mask_window(v, shape):
    """Zero `v` (C-contiguous, in place) outside the first ``shape[a]`` samples per axis; returns v.

    ``E^T E`` on the grid: what a crop followed by a zero-fill back into the
    grid does, in one pass and without the intermediate array.
    """
    cp = _cupy()
    dt, nd, _, geom = _window_args(cp, v, shape, in_place=True)
    with v.device:
        total = v.size
        if total:
            _launch("mask", dt, grid_1d(total), (BLOCK,), (v, total) + geom, ndim=nd)
    return v


def embed(x, grid, out=None):
    """x zero-filled into the grid (``rfftn(x, s=grid)``'s input), in one pass."""
    nd = len(grid)
    _check_nd(nd)
    if x.ndim < nd:
        raise ValueError(f"x must have at least {nd} axes; got shape {tuple(x.shape)}")
    n = tuple(int(s) for s in x.shape[x.ndim - nd:])
    if any(a > g for a, g in zip(n, grid)):
        raise ValueError(f"x's trailing shape {n} does not fit in grid {tuple(grid)}")
    plans = tuple(AxisGeometry(a, 0, 0, int(g)) for a, g in zip(n, grid))
    return pad_to_grid(x, plans, "zero", grid, out=out)


# ----------------------------------------------------------------- spectra
def _per_image(cp, name, v, B, dtype):
    """A scalar or one value per image -> contiguous device array (B,) of `dtype`."""
    if isinstance(v, cp.ndarray):
        a = v.astype(dtype, copy=False).ravel()
    else:
        a = cp.asarray(np.asarray(v, dtype=dtype).ravel())
    if a.size == 1 and B != 1:
        a = cp.broadcast_to(a, (B,))
    if a.size != B:
        raise ValueError(f"{name} must be a scalar or one value per image ({B}); got {a.size} values")
    return cp.ascontiguousarray(a)


def _operand(cp, name, A, B, F, dtype):
    """A spectrum-shaped operand shared by the batch (stride 0) or one per image (stride nf).

    Returns the C-contiguous array and its stride between images.
    """
    nf = math.prod(F)
    nd = len(F)
    _check_cupy(cp, name, A)
    if A.ndim < nd or tuple(A.shape[A.ndim - nd:]) != F:
        raise ValueError(f"{name} must have trailing shape {F} (the spectrum's); got {tuple(A.shape)}")
    if np.dtype(A.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}; got {A.dtype}")
    if A.size == nf:
        stride = 0
    elif A.size == B * nf:
        stride = nf
    else:
        raise ValueError(f"{name} must hold one array for the batch or one per image ({B}); got shape "
                         f"{tuple(A.shape)}")
    return cp.ascontiguousarray(A), stride


def _spectral_operands(Y_shape, H, R, ndim, cdt, cp):
    """(B, nf, H, stride of H, R, stride of R) against a (*batch, *F) spectrum."""
    F = tuple(int(s) for s in Y_shape[len(Y_shape) - ndim:])
    nf = math.prod(F)
    B = math.prod(Y_shape[:len(Y_shape) - ndim])
    H, h_stride = _operand(cp, "H", H, B, F, cdt)
    r_stride = 0
    if R is not None:
        R, r_stride = _operand(cp, "R", R.astype(_REAL[cdt], copy=False), B, F, _REAL[cdt])
    return B, nf, H, h_stride, R, r_stride


def spectral_solve(Y, H, R, lam, alpha, Z=None, *, ndim):
    """The circular closed form, in place: ``Y <- (conj(H) Y + alpha Z) / (|H|^2 + lam R + alpha)``.

    Parameters
    ----------
    Y : cupy.ndarray
        complex64/complex128, shape ``(*batch, *F)`` (F the half spectrum of
        ``rfftn``), C-contiguous; overwritten with the solution's spectrum.
    H : cupy.ndarray
        Transfer function, shape ``F`` (one for the batch) or ``(*batch, *F)``.
    R : cupy.ndarray or None
        Regularizer power ``sum_i w_i |G_i|^2`` (real), shape ``F`` or
        ``(*batch, *F)``; None when there is no regularizer (lam R = 0).
    lam, alpha : float or array
        Per image (scalar or one per image).
    Z : cupy.ndarray, optional
        Spectrum of the proximal centre, shape of Y; None when alpha is all zero.
    ndim : int
        Number of spectral axes (F's length).

    Returns
    -------
    cupy.ndarray
        Y.
    """
    cp = _cupy()
    _check_cupy(cp, "Y", Y)
    dt = _complex_real_dtype("Y", Y)
    cdt = np.dtype(Y.dtype)
    if not Y.flags.c_contiguous:
        raise ValueError("Y must be C-contiguous (it is overwritten in place)")
    with Y.device:
        B, nf, H, hs, R, rs = _spectral_operands(Y.shape, H, R, ndim, cdt, cp)
        lam_d = _per_image(cp, "lam", lam, B, dt)
        alpha_d = _per_image(cp, "alpha", alpha, B, dt)
        if Z is not None:
            if tuple(Z.shape) != tuple(Y.shape) or np.dtype(Z.dtype) != cdt:
                raise ValueError(f"Z must have Y's shape {tuple(Y.shape)} and dtype {cdt}; got "
                                 f"{tuple(Z.shape)} {Z.dtype}")
            Z = cp.ascontiguousarray(Z)
        total = Y.size
        if total:
            _launch("spectral_solve", dt, grid_1d(total), (BLOCK,),
                    (Y, H, R, lam_d, alpha_d, Z, total, nf, hs, rs, int(R is not None), int(Z is not None)))
    return Y


def spectral_extrema(H, R, lam, alpha, batch, *, ndim):
    """Per-image min and max of ``D = |H|^2 + lam R + alpha`` over the spectrum, on the device.

    Returns
    -------
    (dmin, dmax) : cupy.ndarray
        float32/float64 arrays of shape `batch`.
    """
    cp = _cupy()
    _check_cupy(cp, "H", H)
    dt = _complex_real_dtype("H", H)
    batch = tuple(int(b) for b in batch)
    F = tuple(H.shape[H.ndim - ndim:])
    with H.device:
        B, nf, H, hs, R, rs = _spectral_operands(batch + F, H, R, ndim, np.dtype(H.dtype), cp)
        lam_d = _per_image(cp, "lam", lam, B, dt)
        alpha_d = _per_image(cp, "alpha", alpha, B, dt)
        nblk, grid = reduction_layout(nf, B)
        pmin = cp.empty((B, nblk), dtype=dt)
        pmax = cp.empty((B, nblk), dtype=dt)
        if B:
            _launch("spectral_extrema", dt, grid, (BLOCK,),
                    (H, R, lam_d, alpha_d, pmin, pmax, nf, B, nblk, hs, rs, int(R is not None)))
        return pmin.min(axis=1).reshape(batch), pmax.max(axis=1).reshape(batch)


def precondition_apply(Y, *, ndim, Dinv=None, D=None, floor=None):
    """In place on the spectrum Y (C-contiguous): ``Y *= Dinv``, or ``Y /= max(D, floor)``.

    `Dinv` / `D` are real, shape ``F`` or ``(*batch, *F)``; `floor` is per image.
    Returns Y.
    """
    cp = _cupy()
    _check_cupy(cp, "Y", Y)
    dt = _complex_real_dtype("Y", Y)
    if not Y.flags.c_contiguous:
        raise ValueError("Y must be C-contiguous (it is overwritten in place)")
    if (Dinv is None) == (D is None):
        raise ValueError("precondition_apply needs exactly one of Dinv and D")
    if D is not None and floor is None:
        raise ValueError("precondition_apply with D needs floor (one per image or a scalar)")
    F = tuple(int(s) for s in Y.shape[Y.ndim - ndim:])
    B = math.prod(Y.shape[:Y.ndim - ndim])
    nf = math.prod(F)
    with Y.device:
        Dd, ds = _operand(cp, "Dinv" if D is None else "D", Dinv if D is None else D, B, F, dt)
        total = Y.size
        if not total:
            return Y
        if D is None:
            _launch("precond_mul", dt, grid_1d(total), (BLOCK,), (Y, Dd, total, nf, ds))
        else:
            fl = _per_image(cp, "floor", floor, B, dt)
            _launch("precond_div", dt, grid_1d(total), (BLOCK,), (Y, Dd, fl, total, nf, ds))
    return Y


# ----------------------------------------------------------- multichannel
def _alpha_batch(alpha, nd):
    """Batch shape of a per-image alpha (trailing nd axes all 1), or None if it varies in space."""
    shape = tuple(getattr(alpha, "shape", ()))
    if len(shape) < nd:
        return shape if all(s == 1 for s in shape) else None
    if any(s != 1 for s in shape[len(shape) - nd:]):
        return None
    return shape[:len(shape) - nd]


def sherman_morrison_supported(D, Y, Z, alpha) -> bool:
    """Whether :func:`sherman_morrison` takes these operands (alpha constant per image)."""
    nd = D.ndim - 1
    if nd < 1 or np.dtype(D.dtype) not in _REAL:
        return False
    return _alpha_batch(alpha, nd) is not None


def sherman_morrison(D, Y, Z, alpha):
    """Multi-channel closed form per frequency (see solvers/multichannel.py), one pass.

    Parameters
    ----------
    D : cupy.ndarray
        Filter spectra, complex, shape ``(C, *F)``.
    Y : cupy.ndarray
        Data spectra, shape ``(..., *F)``.
    Z : cupy.ndarray
        Proximal centres' spectra, shape ``(..., C, *F)``.
    alpha : float or cupy.ndarray
        Positive, one per image: a scalar or shape ``(..., 1, ..., 1)``.

    Returns
    -------
    cupy.ndarray
        X of shape ``(*batch, C, *F)``, batch the broadcast of Y's, Z's and alpha's.
    """
    cp = _cupy()
    for name, a in (("D", D), ("Y", Y), ("Z", Z)):
        _check_cupy(cp, name, a)
    dt = _complex_real_dtype("D", D)
    cdt = np.dtype(D.dtype)
    nd = D.ndim - 1
    C = int(D.shape[0])
    F = tuple(D.shape[1:])
    if nd < 1:
        raise ValueError(f"D must have shape (C, *F) with at least one spectral axis; got {tuple(D.shape)}")
    ab = _alpha_batch(alpha, nd)
    if ab is None:
        raise ValueError(f"alpha must be constant over the spectrum (one value per image); got shape "
                         f"{tuple(alpha.shape)}")
    ybatch = _spatial("Y", Y, nd, F)
    zbatch = _spatial("Z", Z, nd + 1, (C,) + F)
    try:
        batch = tuple(np.broadcast_shapes(ybatch, zbatch, ab))
    except ValueError:
        raise ValueError(f"batch axes of Y {ybatch}, Z {zbatch} and alpha {ab} do not broadcast") from None
    B = math.prod(batch)
    nf = math.prod(F)
    with D.device:
        Dc = cp.ascontiguousarray(D)
        Yc = cp.ascontiguousarray(cp.broadcast_to(Y.astype(cdt, copy=False), batch + F))
        Zc = cp.ascontiguousarray(cp.broadcast_to(Z.astype(cdt, copy=False), batch + (C,) + F))
        if isinstance(alpha, cp.ndarray):
            a = alpha.astype(dt, copy=False).reshape(ab)
        else:
            a = cp.asarray(np.asarray(alpha, dtype=dt).reshape(ab))
        a = cp.ascontiguousarray(cp.broadcast_to(a, batch)).reshape(B)
        X = cp.empty(batch + (C,) + F, dtype=cdt)
        total = B * nf
        if total:
            _launch("sherman_morrison", dt, grid_1d(total), (BLOCK,), (Dc, Yc, Zc, a, X, total, C, nf))
    return X


# ---------------------------------------------------------------------- CG
class CGKernels:
    """The fused passes of :func:`gpu_deconv.solvers.cg.batched_cg` on the GPU.

    Works on arrays of shape ``batch + n`` (C-contiguous), one system per
    image; per-image scalars are float64 arrays of shape `batch`. The
    partial sums of the reductions live in one buffer allocated here, once
    per solve, so the iteration loop allocates nothing for them.

    Parameters
    ----------
    batch : tuple of int
        Batch shape of the systems.
    n : tuple of int
        Shape of one system.
    dtype : float32 or float64
        Working precision of the vectors.
    """

    def __init__(self, batch, n, dtype):
        cp = _cupy()
        self._cp = cp
        self.batch = tuple(int(b) for b in batch)
        self.B = math.prod(self.batch)
        self.N = math.prod(int(s) for s in n)
        self.dtype = np.dtype(dtype)
        _kernels.dtype_suffix(self.dtype)
        self.nblk, self.grid = reduction_layout(self.N, self.B)
        self.partial = cp.empty(max(self.B, 1) * self.nblk, dtype=np.float64)
        self._finish_grid = (max(1, min(self.B, MAX_BLOCKS)),)

    def _flat(self, name, a):
        if tuple(a.shape[:len(self.batch)]) != self.batch or a.size != self.B * self.N:
            raise ValueError(f"{name} must have shape {self.batch} + the system's shape "
                             f"({self.N} values per image); got {tuple(a.shape)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        return a.reshape(self.B, self.N)

    def _scalars(self, name, v):
        a = self._cp.ascontiguousarray(v, dtype=np.float64).reshape(-1)
        if a.size != self.B:
            raise ValueError(f"{name} must hold one value per image ({self.B}); got {a.size}")
        return a

    def _out(self, out):
        if out is None:
            out = self._cp.empty(self.batch, dtype=np.float64)
        elif tuple(out.shape) != self.batch or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float64 array of shape {self.batch}")
        return out

    def _finish(self, out):
        if self.B:
            _launch("sum_partials", self.dtype, self._finish_grid, (BLOCK,),
                    (self.partial, out.reshape(self.B), self.nblk, self.B))
        return out

    def dot(self, u, v, out=None):
        """Per-image ``sum(u * v)`` over the system axes, accumulated in float64."""
        uf, vf = self._flat("u", u), self._flat("v", v)
        out = self._out(out)
        if self.B:
            _launch("dot_partial", self.dtype, self.grid, (BLOCK,),
                    (uf, vf, self.partial, self.N, self.B, self.nblk))
        return self._finish(out)

    def update_xr(self, x, r, p, q, a, out=None):
        """``x += a p``, ``r -= a q`` (a per image) in one pass; returns the new ``r . r`` per image."""
        xf, rf, pf, qf = (self._flat(k, v) for k, v in (("x", x), ("r", r), ("p", p), ("q", q)))
        af = self._scalars("a", a)
        out = self._out(out)
        if self.B:
            _launch("cg_update_xr", self.dtype, self.grid, (BLOCK,),
                    (xf, rf, pf, qf, af, self.partial, self.N, self.B, self.nblk))
        return self._finish(out)

    def update_p(self, p, z, beta):
        """``p = z + beta p`` in place (beta per image); z may be r."""
        pf, zf = self._flat("p", p), self._flat("z", z)
        bf = self._scalars("beta", beta)
        total = self.B * self.N
        if total:
            _launch("cg_update_p", self.dtype, grid_1d(total), (BLOCK,), (pf, zf, bf, total, self.N))
        return p
