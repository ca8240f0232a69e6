"""The custom CUDA kernels (``kernels/*.cu``): their launchers, and the switch that enables them.

The generic code of gpu_deconv runs on CuPy arrays as it stands (``bk.xp`` is
cupy, the FFTs are cuFFT); these kernels replace its multi-pass steps by
one-pass ones: padding into the FFT grid and the exact adjoint fold (a gather,
no atomics), the window crop/mask, the closed-form spectral division, the
preconditioner product, the multi-channel Sherman-Morrison solve, the sum
of small-kernel normal operators (the Laplacian and gradient regularizers)
as one gather, and the fused updates and per-image dot products of the
batched CG.

Layout: :mod:`.modules` finds and compiles the sources (one memo per device,
:func:`.modules.per_device`); :mod:`.launch` owns the launch contract (names,
signatures, grids, argument conversion); one module per ``.cu`` file holds its
launchers (:mod:`.pad_extract`, :mod:`.spectral`, :mod:`.multichannel`,
:mod:`.cg`, :mod:`.stencil`); :mod:`.ops` is the CUDA side of the device seam
(:class:`gpu_deconv._ops.ArrayOps`), the only caller of the launchers.

Every launcher takes CuPy arrays, checks dtypes, shapes and contiguity
(TypeError / ValueError naming the argument), and calls the kernel with
arguments converted to the exact C types of its signature. Nothing here
imports cupy at import time.

Set the environment variable ``GPU_DECONV_DISABLE_KERNELS=1`` to turn the
custom kernels off: CuPy inputs then take the generic CuPy path (still on
the GPU), which the GPU tests use as the twin to compare against.
"""

from __future__ import annotations

import os

from .cg import CGKernels
from .launch import (
    BLOCK,
    BOUNDARY_CODES,
    MAX_NDIM,
    MODULE_OF,
    SIGNATURES,
    grid_1d,
    kernel_name,
    pad_geometry,
    reduction_layout,
    window_geometry,
)
from .multichannel import sherman_morrison, sherman_morrison_supported
from .pad_extract import crop, embed, fold_from_grid, mask_window, pad_to_grid
from .spectral import precondition_apply, spectral_extrema, spectral_solve
from .stencil import stencil_normal

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
    "stencil_normal",
    "sherman_morrison",
    "sherman_morrison_supported",
    "CGKernels",
    "BLOCK",
    "BOUNDARY_CODES",
    "MAX_NDIM",
    "MODULE_OF",
    "SIGNATURES",
    "grid_1d",
    "kernel_name",
    "pad_geometry",
    "reduction_layout",
    "window_geometry",
]

#: Environment variable that turns the custom kernels off (any value but "", "0", "false", "no", "off").
ENV_DISABLE = "GPU_DECONV_DISABLE_KERNELS"


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
