"""The CUDA sources of ``kernels/``: where they are, their compiled modules, and the per-device memo.

Nothing is compiled at import, and cupy is not imported here at all until a
kernel is first asked for (through :mod:`gpu_deconv._backend`, the only module
that imports cupy). A module is compiled by NVRTC (``cupy.RawModule``) the
first time one of its kernels is needed, once per (device, source file,
precision), and kept for the life of the process; cupy's own on-disk cache
makes the next process's first call cheap.

The sources are package data of ``gpu_deconv.kernels`` (the top-level
``kernels/`` folder, mapped by pyproject.toml, editable installs included);
in a plain ``PYTHONPATH=.`` checkout they are found next to the package.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

import numpy as np

__all__ = ["MODULES", "source_dir", "compile_options", "get_module", "get_function", "dtype_suffix",
           "per_device", "clear"]

#: The .cu files of kernels/ (without extension), one RawModule each.
MODULES = ("pad_extract", "spectral", "multichannel", "cg", "stencil")

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

_SOURCE_DIR: Path | None = None
_SOURCE_HASH: str | None = None


def _has_sources(p: Path) -> bool:
    return (p / "gd_common.cuh").is_file() and all((p / f"{m}.cu").is_file() for m in MODULES)


def source_dir() -> Path:
    """Folder holding the ``.cu`` / ``.cuh`` sources.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        If neither the package data ``gpu_deconv.kernels`` nor ``<repo>/kernels``
        holds the sources (a broken installation).
    """
    global _SOURCE_DIR
    if _SOURCE_DIR is not None:
        return _SOURCE_DIR
    tried = []
    try:
        from importlib.resources import files

        cand = Path(str(files("gpu_deconv.kernels")))
        tried.append(str(cand))
        if _has_sources(cand):
            _SOURCE_DIR = cand
            return cand
    except (ImportError, TypeError, ValueError, AttributeError, NotImplementedError):
        # Not installed as a package (plain checkout on PYTHONPATH): look beside it.
        pass
    cand = Path(__file__).resolve().parents[2] / "kernels"
    tried.append(str(cand))
    if _has_sources(cand):
        _SOURCE_DIR = cand
        return cand
    raise FileNotFoundError(
        "the CUDA sources of gpu_deconv (gd_common.cuh and "
        f"{', '.join(m + '.cu' for m in MODULES)}) were not found; looked in {tried}"
    )


def source_hash() -> str:
    """Digest of every ``.cu``/``.cuh`` source (part of the compile options, see below)."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        h = hashlib.sha256()
        d = source_dir()
        for p in sorted(list(d.glob("*.cuh")) + list(d.glob("*.cu"))):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        _SOURCE_HASH = h.hexdigest()[:16]
    return _SOURCE_HASH


def dtype_suffix(dtype) -> str:
    """``"f32"`` or ``"f64"``: the suffix of the kernels of a working precision."""
    dt = np.dtype(dtype)
    try:
        return _SUFFIX[dt]
    except KeyError:
        raise TypeError(f"the CUDA kernels work in float32 or float64; got dtype {dt}") from None


def compile_options(dtype) -> tuple:
    """NVRTC options for the module of one precision.

    ``-I`` makes the sibling headers includable. The source digest is passed
    as a macro because cupy's on-disk cache keys on the main source and the
    options only: without it an edited header would be served stale.
    """
    sfx = dtype_suffix(dtype)
    return (
        f"-I{source_dir()}",
        f"-DGD_ONLY_{sfx.upper()}",
        f"-DGD_SOURCE_HASH=0x{source_hash()}ULL",
    )


def cupy_module():
    """cupy, imported lazily through :mod:`gpu_deconv._backend`."""
    from .._backend import _backend

    return _backend("cupy").xp


_MEMOS: list = []


def _static(a):
    return np.dtype(a).str if isinstance(a, (np.dtype, type)) else a


def per_device(build):
    """Memoize ``build(*static)`` per CUDA device: built once per (current device id, arguments).

    The one memo of the CUDA layer (compiled modules, kernel handles, stand-in
    operands). Thread-safe: two threads never build the same entry twice (the
    build runs under the memo's lock, so a compile error surfaces in the
    caller and nobody repeats the work). Dtype arguments are keyed by their
    ``str``. The table is ``wrapper.cache``; :func:`clear` empties every memo.
    """
    cache: dict = {}
    lock = threading.Lock()

    @functools.wraps(build)
    def wrapper(*args):
        key = (int(cupy_module().cuda.Device().id),) + tuple(_static(a) for a in args)
        v = cache.get(key)
        if v is None:
            with lock:
                v = cache.get(key)
                if v is None:
                    v = cache[key] = build(*args)
        return v

    wrapper.cache = cache
    _MEMOS.append(cache)
    return wrapper


@per_device
def get_module(module: str, dtype):
    """The ``cupy.RawModule`` of ``kernels/<module>.cu`` for one precision on the current device.

    Compiled on first use and memoized per (device id, module, precision).
    """
    if module not in MODULES:
        raise ValueError(f"module must be one of {', '.join(MODULES)}; got {module!r}")
    dt = np.dtype(dtype)
    dtype_suffix(dt)
    code = (source_dir() / f"{module}.cu").read_text()
    mod = cupy_module().RawModule(code=code, options=compile_options(dt))
    # RawModule compiles lazily; compile now (under the memo's lock), so that a
    # compile error surfaces here and no other thread repeats the work.
    mod.compile()
    return mod


@per_device
def get_function(module: str, name: str, dtype):
    """Kernel `name` of `module` (compiled for `dtype`), as a ``cupy.RawKernel``.

    Memoized like the modules: ``RawModule.get_function`` builds a new
    ``RawKernel`` object on every call, too slow for a loop of launches.
    """
    return get_module(module, dtype).get_function(name)


#: The compiled modules, keyed (device id, module, dtype str).
_MODULES = get_module.cache


def clear():
    """Forget the compiled modules and kernel handles (rebuilt, from cupy's cache, on next use)."""
    for memo in _MEMOS:
        memo.clear()
