"""Which array module and which FFT for a set of arrays.

This is the only module of gpu_deconv that imports cupy, and it does so lazily,
the first time a cupy array is actually seen. A cupy array is recognised from
its type's module name, so ``import gpu_deconv`` never pays for (or needs) cupy.

NumPy arrays are served by NumPy and :mod:`scipy.fft` (pocketfft: real
transforms, ``workers=``, float32 kept float32). CuPy arrays are served by
CuPy and :mod:`cupyx.scipy.fft` (cuFFT with CuPy's plan cache).
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import numpy as np

__all__ = [
    "Backend",
    "get_backend",
    "is_cupy_array",
    "set_workers",
    "get_workers",
]


def is_cupy_array(a) -> bool:
    """True if `a` is a ``cupy.ndarray``; never imports cupy."""
    for cls in type(a).__mro__:
        mod = getattr(cls, "__module__", None) or ""
        if mod == "cupy" or mod.startswith("cupy."):
            return True
    return False


# FFT worker threads for the NumPy path (process-wide). None means "all cores".
#
# Every set_workers() call is a numbered setting; the one in force is the newest of
# the plain calls (folded into _WORKERS) and of the settings still alive (a `with`
# block still open, or a call whose return value has not been dropped yet). A `with`
# block that ends removes only its own setting, so blocks from several threads may
# end in any order without leaving a stale value behind (a "restore the previous
# value" scheme restores the other thread's value when the blocks interleave).
_WORKERS = None
_WORKERS_SEQ = 0
_LIVE: dict = {}  # seq -> value
_EFFECTIVE = None
_SEQ = itertools.count(1)
_WORKERS_LOCK = threading.RLock()  # re-entrant: __del__ may run inside a locked region
_GONE = object()


def _update_effective():
    global _EFFECTIVE
    top = max(_LIVE) if _LIVE else 0
    _EFFECTIVE = _LIVE[top] if top > _WORKERS_SEQ else _WORKERS


def get_workers() -> int:
    """Number of threads scipy.fft uses for gpu_deconv's CPU transforms."""
    w = _EFFECTIVE
    if w is None:
        return os.cpu_count() or 1
    return w


class _WorkersSetting:
    """What set_workers returns: a context manager; dropped without `with`, the setting stays."""

    __slots__ = ("seq", "value", "entered")

    def __init__(self, value):
        self.value = value
        self.entered = False
        with _WORKERS_LOCK:
            self.seq = next(_SEQ)
            _LIVE[self.seq] = value
            _update_effective()

    def __enter__(self):
        self.entered = True

    def __exit__(self, *exc):
        with _WORKERS_LOCK:
            _LIVE.pop(self.seq, None)
            _update_effective()
        return False

    def __del__(self):
        if self.entered:
            return
        global _WORKERS, _WORKERS_SEQ
        with _WORKERS_LOCK:
            if _LIVE.pop(self.seq, _GONE) is not _GONE and self.seq > _WORKERS_SEQ:
                _WORKERS, _WORKERS_SEQ = self.value, self.seq
            _update_effective()


def set_workers(workers: int | None):
    """Set the number of FFT threads of the CPU path (process-wide).

    Parameters
    ----------
    workers : int or None
        A positive number of threads, or None for all cores (the default).

    Returns
    -------
    context manager
        Used in a ``with`` statement the setting holds until the block ends;
        called plainly, the setting stays. Blocks in several threads may end in
        any order: each removes only its own setting (the newest setting still
        in force wins, process-wide).

    Notes
    -----
    The threads split independent 1-D transforms between them, so results do
    not depend on the number of workers.

    Examples
    --------
    >>> import gpu_deconv
    >>> with gpu_deconv.set_workers(1):
    ...     gpu_deconv.get_workers()
    1
    """
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
        workers = int(workers)
    return _WorkersSetting(workers)


class Backend:
    """Array module and transforms for one family of arrays.

    Attributes
    ----------
    name : {"numpy", "cupy"}
    xp : module
        ``numpy`` or ``cupy``.
    """

    __slots__ = ("name", "xp", "_fft", "_ops")
    #: numpy or cupy (the union of two modules, which mypy cannot spell without CuPy installed).
    xp: Any

    def __init__(self, name):
        self.name = name
        if name == "numpy":
            import scipy.fft as fft

            self.xp = np
        else:
            import cupy
            import cupyx.scipy.fft as fft

            self.xp = cupy
        self._fft = fft
        self._ops = {}

    def __repr__(self):
        return f"Backend({self.name!r})"

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    @property
    def ops(self):
        """The device seam: :class:`gpu_deconv._ops.ArrayOps`, or its CUDA-kernel subclass.

        CuPy gets :class:`gpu_deconv._cuda.ops.CudaOps` unless
        ``GPU_DECONV_DISABLE_KERNELS`` is set (read at every call, so a test can
        flip it between two solves); NumPy always gets the array expressions.
        """
        from ._cuda import enabled  # the one switch of the custom kernels

        kind = "cuda" if enabled(self) else "array"
        ops = self._ops.get(kind)
        if ops is None:
            if kind == "cuda":
                from ._cuda.ops import CudaOps as cls
            else:
                from ._ops import ArrayOps as cls
            ops = self._ops.setdefault(kind, cls(self))
        return ops

    def _kw(self):
        return {"workers": get_workers()} if self.name == "numpy" else {}

    # Real transforms over the trailing `ndim` axes. `s` is the grid: inputs
    # are zero-filled (or cropped) to it, which is exactly the embedding E^T.
    def _trailing(self, fn, a, s):
        return fn(a, s=s, axes=tuple(range(-len(s), 0)), **self._kw())

    def rfftn(self, a, s):
        return self._trailing(self._fft.rfftn, a, s)

    def irfftn(self, a, s, *, overwrite_x=False):
        """Inverse of :meth:`rfftn` on the grid `s`.

        ``overwrite_x=True`` lets the transform destroy `a` (pass it for a
        temporary): no work copy of it, on the CPU (scipy.fft) and the GPU
        (cuFFT's C2R would otherwise get a copy from CuPy).
        """
        return self._fft.irfftn(a, s=s, axes=tuple(range(-len(s), 0)), overwrite_x=bool(overwrite_x),
                                **self._kw())

    # Complex transforms over the trailing axes, for complex data (full spectrum).
    def fftn(self, a, s):
        return self._trailing(self._fft.fftn, a, s)

    def ifftn(self, a, s):
        return self._trailing(self._fft.ifftn, a, s)

    # Either pair, by the data: real arrays take the half spectrum (rfftn), complex ones the full.
    def fft_any(self, a, s):
        """``rfftn`` of a real array, ``fftn`` of a complex one (grid `s`, trailing axes)."""
        return self.fftn(a, s) if a.dtype.kind == "c" else self.rfftn(a, s)

    def ifft_any(self, A, s, complex_data, *, overwrite_x=False):
        """Inverse of :meth:`fft_any`: ``ifftn`` when the data are complex, else ``irfftn``.

        ``overwrite_x`` as in :meth:`irfftn` (the complex transform keeps its input).
        """
        return self.ifftn(A, s) if complex_data else self.irfftn(A, s, overwrite_x=overwrite_x)

    def dctn(self, a, ndim):
        axes = tuple(range(-ndim, 0))
        return self._fft.dctn(a, type=2, axes=axes, norm="ortho", **self._kw())

    def idctn(self, a, ndim):
        axes = tuple(range(-ndim, 0))
        return self._fft.idctn(a, type=2, axes=axes, norm="ortho", **self._kw())

    def next_fast_len(self, n: int) -> int:
        if self.name == "numpy":
            return int(self._fft.next_fast_len(int(n), real=True))
        return int(self._fft.next_fast_len(int(n)))

    def asarray(self, a):
        """`a` as an array of this backend (moved to the current device for CuPy; no copy if it is there)."""
        return self.xp.asarray(a)

    def asnumpy(self, a):
        if self.name == "numpy":
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def device_id(self, a=None) -> int:
        """Device of `a` (or the current device); -1 for the host."""
        if self.name == "numpy":
            return -1
        if a is not None and hasattr(a, "device"):
            return int(a.device.id)
        return int(self.xp.cuda.Device().id)

    def synchronize(self):
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()

    def scatter_add(self, out, idx, vals):
        """``out[idx] += vals`` along axis 0, repeated indices accumulated."""
        if self.name == "numpy":
            np.add.at(out, idx, vals)
        else:
            import cupyx

            cupyx.scatter_add(out, self.xp.asarray(idx), vals)

    def csr_matrix(self, mat):
        """A scipy.sparse matrix as this backend's CSR matrix (cupyx.scipy.sparse on the GPU)."""
        if self.name == "numpy":
            return mat
        import cupyx.scipy.sparse as csp

        return csp.csr_matrix(mat)


_BACKENDS: dict = {}
_BACKENDS_LOCK = threading.Lock()


def ldexp(xp, a, e):
    """``a * 2**e`` exactly (e an integer or integer array broadcasting with `a`), real or complex `a`.

    ``xp.ldexp`` takes real arrays only; a complex array is scaled part by part.
    """
    if a.dtype.kind != "c":
        return xp.ldexp(a, e)
    out = xp.empty(a.shape, dtype=a.dtype)
    out.real = xp.ldexp(a.real, e)
    out.imag = xp.ldexp(a.imag, e)
    return out


def _backend(name) -> Backend:
    b = _BACKENDS.get(name)
    if b is None:
        with _BACKENDS_LOCK:
            b = _BACKENDS.get(name)
            if b is None:
                b = _BACKENDS[name] = Backend(name)
    return b


def numpy_backend() -> Backend:
    return _backend("numpy")


def cupy_status():
    """``(cupy module, "")`` when CuPy and a CUDA device are usable, else ``(None, why not)``.

    The one place outside :class:`Backend` that imports cupy (for the CLI's
    ``info``/``--device`` and the demo's device choice).
    """
    from ._validation import one_line
    try:
        import cupy
    except ImportError:
        return None, "cupy is not installed (pip install 'gpu_deconv[cuda12]' or 'gpu_deconv[cuda13]')"
    except Exception as exc:  # a broken CUDA install can fail at import with anything
        return None, f"cupy fails to import ({type(exc).__name__}: {one_line(exc)})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"cupy {cupy.__version__} is installed but CUDA is not usable ({one_line(exc)})"
    if n < 1:
        return None, f"cupy {cupy.__version__} is installed but no CUDA device is present"
    return cupy, ""


def get_backend(**arrays) -> Backend:
    """Backend for a set of named arguments.

    Arguments that are None or Python scalars are neutral. Any cupy array makes
    it the CuPy backend; a NumPy array beside a cupy array is a TypeError that
    names where each lives.

    Examples
    --------
    >>> import numpy as np
    >>> get_backend(x=np.zeros(3), h=[1, 2]).name
    'numpy'
    """
    on_gpu, on_cpu = [], []
    for name, a in arrays.items():
        if a is None or isinstance(a, (bool, int, float, complex, str, np.generic)):
            continue
        if isinstance(a, (list, tuple)):
            items = list(a)
            if any(is_cupy_array(i) for i in items):
                on_gpu.append(name)
                if any(isinstance(i, np.ndarray) for i in items):
                    on_cpu.append(name)
            elif any(isinstance(i, np.ndarray) for i in items):
                on_cpu.append(name)
            continue
        if is_cupy_array(a):
            on_gpu.append(name)
        elif isinstance(a, np.ndarray):
            on_cpu.append(name)
    if on_gpu and on_cpu:
        raise TypeError(
            "arguments mix NumPy and CuPy arrays: "
            f"{', '.join(on_cpu)} on the host (NumPy), {', '.join(on_gpu)} on the GPU (CuPy); "
            "move them to one place first (cupy.asarray or cupy.asnumpy)"
        )
    return _backend("cupy") if on_gpu else _backend("numpy")
