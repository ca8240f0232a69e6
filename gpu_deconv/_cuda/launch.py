"""The launch contract of the custom CUDA kernels: signatures, names, grid layouts, argument checks.

One function, :func:`launch`, calls a kernel: it names it (kind, precision,
boundary, ndim), converts every argument to the exact C type of the kernel's
signature (:data:`SIGNATURES`, which ``tests/test_kernels_compile.py`` checks
against the CUDA sources), and runs it on the module compiled for the current
device (:mod:`.modules`). The launchers of each ``kernels/<module>.cu`` live
in the sibling module of that name.
"""

from __future__ import annotations

import math

import numpy as np

from . import modules
from .modules import cupy_module, per_device

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
# array of the real / complex working dtype, "f64*" / "i64*" / "b*" a float64 /
# int64 / bool array, a
# leading "?" allows None (the kernel gets a stand-in it does not read, see
# stand_in); "i64" / "i32" / "f64" scalars (long long / int / double).
_GEOM = ("i64",) * 12
_WIN = ("i64",) * 6
SIGNATURES = {
    "pad": ("T*", "T*", "i64") + _GEOM,
    "fold": ("T*", "T*", "i64") + _GEOM,
    "crop": ("T*", "T*", "i64") + _WIN,
    "mask": ("T*", "i64") + _WIN,
    "embed_scaled": ("T*", "T*", "T*", "i64") + _WIN,
    "crop_scaled": ("T*", "T*", "T*", "i64") + _WIN,
    "spectral_solve": ("C*", "C*", "?T*", "T*", "T*", "?C*", "i64", "i64", "i64", "i64", "i32", "i32"),
    "spectral_extrema": ("C*", "?T*", "T*", "T*", "T*", "T*", "i64", "i64", "i64", "i64", "i64", "i32"),
    "precond_mul": ("C*", "T*", "i64", "i64", "i64"),
    "precond_div": ("C*", "T*", "T*", "i64", "i64", "i64"),
    "sherman_morrison": ("C*", "C*", "C*", "T*", "C*", "i64", "i64", "i64"),
    "dot_partial": ("T*", "T*", "f64*", "i64", "i64", "i64"),
    "cg_update_xr": ("T*", "T*", "T*", "T*", "f64*", "f64*", "i64", "i64", "i64"),
    "cg_update_p": ("T*", "T*", "f64*", "i64", "i64"),
    "sum_partials": ("f64*", "f64*", "i64", "i64"),
    "cg_step": ("f64*", "f64*", "b*", "b*", "b*", "f64*", "i64"),
    "cg_check": ("f64*", "f64*", "f64", "b*", "b*", "b*", "i64*", "f64*", "b*", "b*", "i64"),
    "cg_beta": ("f64*", "f64*", "b*", "f64*", "i64"),
    "stencil_normal": ("T*", "T*", "T*", "i64*", "T*", "i64", "i64", "i64", "i64", "i64", "i64"),
}

#: Which kernels/<module>.cu defines each kind of kernel.
MODULE_OF = {
    "pad": "pad_extract", "fold": "pad_extract", "crop": "pad_extract", "mask": "pad_extract",
    "embed_scaled": "pad_extract", "crop_scaled": "pad_extract",
    "spectral_solve": "spectral", "spectral_extrema": "spectral",
    "precond_mul": "spectral", "precond_div": "spectral",
    "sherman_morrison": "multichannel",
    "dot_partial": "cg", "cg_update_xr": "cg", "cg_update_p": "cg", "sum_partials": "cg",
    "cg_step": "cg", "cg_check": "cg", "cg_beta": "cg",
    "stencil_normal": "stencil",
}

#: Kinds with one kernel per (boundary, ndim), and with one per ndim; the others have one.
PER_BOUNDARY = ("pad", "fold", "stencil_normal")
PER_NDIM = ("crop", "mask", "embed_scaled", "crop_scaled")
#: Kinds with one kernel for both precisions (they touch only float64 / int64 / bool arrays).
ANY_PRECISION = ("sum_partials", "cg_step", "cg_check", "cg_beta")

COMPLEX_OF = {np.dtype(np.float32): np.dtype(np.complex64), np.dtype(np.float64): np.dtype(np.complex128)}
REAL_OF = {c: r for r, c in COMPLEX_OF.items()}


# ----------------------------------------------------------- names, layout
def kernel_name(kind, dtype, *, boundary=None, ndim=None) -> str:
    """Name of the ``extern "C"`` kernel of a kind, precision, boundary and ndim."""
    if kind not in SIGNATURES:
        raise ValueError(f"kind must be one of {', '.join(SIGNATURES)}; got {kind!r}")
    sfx = modules.dtype_suffix(dtype)
    if kind in PER_BOUNDARY:
        if boundary not in BOUNDARY_CODES:
            raise ValueError(f"boundary must be one of {', '.join(BOUNDARY_CODES)}; got {boundary!r}")
        check_nd(ndim)
        return f"gd_{kind}_{boundary}_{int(ndim)}d_{sfx}"
    if kind in PER_NDIM:
        check_nd(ndim)
        return f"gd_{kind}_{int(ndim)}d_{sfx}"
    if kind in ANY_PRECISION:
        return f"gd_{kind}"
    return f"gd_{kind}_{sfx}"


def check_nd(nd):
    if nd is None or not 1 <= int(nd) <= MAX_NDIM:
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


def pad_geometry(plans, grid=None) -> tuple:
    """The 12 geometry arguments (n, L, e = n + L + R, G; 3 each) of the pad/fold kernels.

    `plans` are :class:`gpu_deconv._padding.AxisPlan` (or anything with n, L,
    R, G); `grid` overrides their G. Unused trailing axes are unit axes.
    """
    nd = len(plans)
    check_nd(nd)
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
    check_nd(len(m))
    if len(grid) != len(m) or any(a < 0 or a > g for a, g in zip(m, grid)):
        raise ValueError(f"window {m} must fit in grid {grid} (0 <= m <= G per axis)")
    fill = 3 - len(m)
    return m + (1,) * fill + grid + (1,) * fill




def real_dtype_of(name, a):
    dt = np.dtype(a.dtype)
    if dt in COMPLEX_OF:
        return dt
    raise TypeError(f"{name} must be float32 or float64 for the CUDA kernels; got dtype {dt}")


def complex_real_dtype_of(name, a):
    dt = np.dtype(a.dtype)
    if dt in REAL_OF:
        return REAL_OF[dt]
    raise TypeError(f"{name} must be complex64 or complex128 for the CUDA kernels; got dtype {dt}")


def check_cupy(cp, name, a):
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name} must be a cupy.ndarray; got {type(a).__name__}")


@per_device
def stand_in(dtype):
    """A one-element device array passed where a kernel's optional array is absent.

    The kernel never reads it (a flag says the operand is absent). Passing None
    would mean NULL only in recent cupy; older versions pass a NULL *argument*
    pointer, which the launch dereferences.
    """
    return cupy_module().zeros(1, dtype=dtype)


def convert_args(kind, dtype, args, device_id):
    """Arguments checked against SIGNATURES[kind] and converted to their C types."""
    spec = SIGNATURES[kind]
    if len(args) != len(spec):
        raise TypeError(f"kernel {kind} takes {len(spec)} arguments; got {len(args)}")
    real = np.dtype(dtype)
    want = {"T": real, "C": COMPLEX_OF[real], "f64": np.dtype(np.float64), "i64": np.dtype(np.int64),
            "b": np.dtype(np.bool_)}
    out = []
    for i, (s, a) in enumerate(zip(spec, args)):
        if s in ("i64", "i32"):
            v = int(a)
            out.append(np.int64(v) if s == "i64" else np.int32(v))
            continue
        if s == "f64":
            out.append(np.float64(float(a)))
            continue
        nullable = s.startswith("?")
        base = s.lstrip("?").rstrip("*")
        if a is None:
            if not nullable:
                raise ValueError(f"kernel {kind}: argument {i} must be an array, got None")
            out.append(stand_in(want[base]))
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


def launch(kind, dtype, grid, block, args, *, boundary=None, ndim=None):
    cp = cupy_module()
    dev = int(cp.cuda.Device().id)
    name = kernel_name(kind, dtype, boundary=boundary, ndim=ndim)
    cargs = convert_args(kind, dtype, args, dev)
    fn = modules.get_function(MODULE_OF[kind], name, dtype)
    fn(tuple(int(g) for g in grid), tuple(int(b) for b in block), cargs)


def batch_of(name, a, nd, expect):
    """Batch shape of `a`, whose trailing `nd` axes must be `expect`."""
    if a.ndim < nd or tuple(a.shape[a.ndim - nd:]) != tuple(expect):
        raise ValueError(f"{name} must have trailing shape {tuple(expect)}; got shape {tuple(a.shape)}")
    return tuple(a.shape[:a.ndim - nd])


def check_out(name, out, shape, dtype):
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        raise ValueError(f"{name} must have shape {tuple(shape)} and dtype {np.dtype(dtype)}; got "
                         f"{tuple(out.shape)} {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")



def per_image_array(cp, name, v, B, dtype):
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


def operand(cp, name, A, B, F, dtype):
    """A spectrum-shaped operand shared by the batch (stride 0) or one per image (stride nf).

    Returns the C-contiguous array and its stride between images.
    """
    nf = math.prod(F)
    nd = len(F)
    check_cupy(cp, name, A)
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


