"""A NumPy-backed stand-in for the part of CuPy that gpu_deconv uses: the simulated device.

Built by :func:`gpu_deconv._simulator.install` as the modules ``cupy``,
``cupy.cuda`` (``runtime``, ``memory``, ``cufft``), ``cupy.fft`` (``config``),
``cupyx``, ``cupyx.scipy.fft`` and ``cupyx.scipy.sparse``. It is a
simulator: it runs the package's real GPU code path (the launchers of
``gpu_deconv._cuda`` and the CUDA kernels, through the grid executor) on the CPU to
prove the logic; it measures nothing about a GPU.

What it keeps of CuPy's behaviour, so that bugs show up as they would on a device:

* :class:`ndarray` wraps a NumPy array but is not one: implicit conversion to
  NumPy (``numpy.asarray(a)``) is a TypeError, NumPy arrays are refused as
  operands (host/device mixing), reductions return 0-d arrays, and every
  host synchronisation (``get``, ``float``, ``bool``, ``item``, boolean
  indexing, ``synchronize``) is counted and refused inside
  ``cupyx.allow_synchronize(False)`` (which warns as CuPy 13.0--14.2 do).
* Device memory is accounted (live arrays, the pool's cached blocks, cuFFT
  plan work areas) against a limit (``GPU_DECONV_SIMULATOR_MEMORY`` bytes,
  default 1 GiB): an allocation beyond it raises
  ``cupy.cuda.memory.OutOfMemoryError``, a plan that does not fit raises
  ``CuFFTError`` (``CUFFT_ALLOC_FAILED``); ``mem_info``, the pool's
  statistics and ``free_all_blocks`` behave accordingly; the peak is recorded.
* ``irfftn`` copies its input unless ``overwrite_x=True``, and then clobbers
  it (as cuFFT's C2R does); plans are cached per transform in an LRU of 16.
* ``RawModule`` compiles the real source with g++ (the executor) and
  ``RawKernel.__call__`` checks the launch strictly: grid and block tuples of
  ints within CUDA's limits, arguments that are device arrays of the exact
  dtype of the kernel's parameter or exactly ``numpy.int64`` / ``numpy.int32``
  for ``long long`` / ``int``.

:data:`STATS` counts launches (per kernel), FFTs, allocations and host syncs.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import operator
import os
import sys
import threading
import time
import types
import warnings
import weakref

import numpy as np
import scipy.fft as _sfft
from numpy.lib.mixins import NDArrayOperatorsMixin

from . import executor

VERSION = "13.6.0+simulator"
DEFAULT_MEMORY = 1 << 30
MEMORY_ENV = "GPU_DECONV_SIMULATOR_MEMORY"


# ------------------------------------------------------------------ errors
class OutOfMemoryError(MemoryError):
    """``cupy.cuda.memory.OutOfMemoryError`` of the simulated device."""

    def __init__(self, size, total, limit=0):
        self.size, self.total, self.limit = size, total, limit
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes, "
                         f"simulated device limit {limit:,} bytes).")


CUFFT_ALLOC_FAILED = 2
_CUFFT_NAMES = {0: "CUFFT_SUCCESS", 1: "CUFFT_INVALID_PLAN", 2: "CUFFT_ALLOC_FAILED"}


class CuFFTError(RuntimeError):
    """``cupy.cuda.cufft.CuFFTError``: `result` is cuFFT's status code."""

    def __init__(self, result):
        self.result = result
        super().__init__(_CUFFT_NAMES.get(result, f"CUFFT_ERROR_{result}"))


class CUDARuntimeError(RuntimeError):
    """``cupy.cuda.runtime.CUDARuntimeError``."""


class DeviceSynchronized(RuntimeError):
    """Raised on a host synchronisation inside ``cupyx.allow_synchronize(False)``."""


# ------------------------------------------------------------- statistics
#: Passes whose result has at most this many elements are counted as small (latency-bound).
SMALL_PASS = 1024


class Stats:
    """Counters of the simulated device (reset with :meth:`reset`).

    ``launches`` are the package's own kernels (RawKernel launches, by name);
    ``array_passes`` estimates the kernels CuPy itself would launch for the
    array expressions: every ufunc call (in place or not), every slice
    assignment, and every other array function or method whose result owns
    fresh memory (a copy, a reduction, a cast); views (reshape, moveaxis,
    slicing) count nothing. An estimate, since CuPy fuses nothing here either.
    Passes over at most :data:`SMALL_PASS` elements (per-image scalars: the
    CG's steps and flags) count as ``small_passes`` instead: on a device they
    cost a launch's latency, not memory bandwidth. ``array_pass_bytes`` sums
    the bytes each image-sized pass produces (a pass over the face rows of
    an image moves far less than one over the image).
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.launches = collections.Counter()
        self.ffts = collections.Counter()
        self.allocations = 0
        self.syncs = 0
        self.plans_created = 0
        self.irfft_input_copies = 0
        self.array_passes = 0
        self.array_pass_bytes = 0
        self.small_passes = 0

    def count_pass(self, a):
        """One pass producing (or writing) the NumPy array `a`."""
        if a.size > SMALL_PASS:
            self.array_passes += 1
            self.array_pass_bytes += a.nbytes
        else:
            self.small_passes += 1

    def snapshot(self):
        return {"launches": sum(self.launches.values()), "ffts": sum(self.ffts.values()),
                "allocations": self.allocations, "syncs": self.syncs, "array_passes": self.array_passes,
                "array_pass_bytes": self.array_pass_bytes, "small_passes": self.small_passes}


STATS = Stats()


# ------------------------------------------------------------------ memory
class _Memory:
    """Device memory of the simulated GPU: live bytes, the pool's cached bytes, the limit."""

    def __init__(self):
        self.lock = threading.RLock()
        self.limit = int(os.environ.get(MEMORY_ENV, DEFAULT_MEMORY))
        self.live = 0
        self.cached = 0
        self.peak = 0
        self.tracked: dict = {}

    def allocate(self, n):
        n = int(n)
        with self.lock:
            if self.live + n > self.limit:
                raise OutOfMemoryError(n, self.live, self.limit)
            self.live += n
            # The pool hands out its cached blocks first (CuPy frees them and
            # retries when the driver refuses); what it keeps shrinks to what is left.
            self.cached = max(0, min(self.cached, self.limit - self.live))
            self.peak = max(self.peak, self.live)
            STATS.allocations += 1

    def release(self, n):
        with self.lock:
            self.live -= int(n)
            self.cached += int(n)

    def track(self, arr):
        """Account for the memory of a NumPy array (its root owner), once."""
        root = arr
        while isinstance(root.base, np.ndarray):
            root = root.base
        key = id(root)
        with self.lock:
            if key in self.tracked:
                return
            n = root.nbytes
            self.allocate(n)
            self.tracked[key] = n
        weakref.finalize(root, self._untrack, key, n)

    def _untrack(self, key, n):
        with self.lock:
            if self.tracked.pop(key, None) is not None:
                self.release(n)

    def reset_peak(self):
        with self.lock:
            self.peak = self.live


MEMORY = _Memory()


def set_memory_limit(nbytes):
    """Set the simulated device's memory (bytes); returns the previous limit."""
    with MEMORY.lock:
        old, MEMORY.limit = MEMORY.limit, int(nbytes)
    return old


# ------------------------------------------------------------ host syncs
_SYNC = threading.local()


def _sync(what):
    STATS.syncs += 1
    if getattr(_SYNC, "disallowed", False):
        raise DeviceSynchronized(f"host synchronisation ({what}) inside cupyx.allow_synchronize(False)")


@contextlib.contextmanager
def allow_synchronize(allow):
    """``cupyx.allow_synchronize``: warns as CuPy 13.0--14.2 do, then refuses syncs when `allow` is False."""
    warnings.warn("cupyx.allow_synchronize will be removed in future releases as it is not possible to "
                  "reliably detect synchronizations.", UserWarning, stacklevel=3)
    old = getattr(_SYNC, "disallowed", False)
    _SYNC.disallowed = not allow
    try:
        yield
    finally:
        _SYNC.disallowed = old


# ----------------------------------------------------------------- arrays
def _unsupported(x):
    raise TypeError(f"Unsupported type {type(x)} (the simulated device refuses host arrays; "
                    "use cupy.asarray)")


def _unwrap(x, ids=None):
    """The NumPy payload of device arrays in `x` (recursively); host arrays are refused."""
    if isinstance(x, ndarray):
        if ids is not None:
            ids[id(x._a)] = x
        return x._a
    if isinstance(x, np.ndarray):
        if x.ndim:
            _unsupported(x)
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, ids) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v, ids) for k, v in x.items()}
    return x


def _wrap(x, ids=None):
    """Device arrays around the NumPy results in `x`; 0-d for NumPy scalars."""
    if isinstance(x, np.ndarray):
        if ids is not None and id(x) in ids:
            return ids[id(x)]
        return ndarray._from(x)
    if isinstance(x, np.generic) and not isinstance(x, (np.str_, np.bytes_)):
        return ndarray._from(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v, ids) for v in x)
    if isinstance(x, list):
        return [_wrap(v, ids) for v in x]
    return x


def _arrays(result):
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [r for r in items if isinstance(r, np.ndarray)]


def _call(fn, args, kwargs, *, passes=None, owner=None):
    """`fn` on the payloads; counts a pass when it computed (see :class:`Stats`).

    `owner` is the device array whose method `fn` is (its payload is an input too).
    """
    ids: dict = {} if owner is None else {id(owner._a): owner}
    a = _unwrap(args, ids)
    k = _unwrap(kwargs, ids)
    out = fn(*a, **k)
    arrays = _arrays(out)
    if arrays and (passes or isinstance(fn, np.ufunc)
                   or any(r.flags.owndata and id(r) not in ids for r in arrays)):
        STATS.count_pass(max(arrays, key=lambda r: r.size))
    return _wrap(out, ids)


class _Data:
    __slots__ = ("ptr", "mem")

    def __init__(self, ptr):
        self.ptr = ptr
        self.mem = None


class Device:
    """``cupy.cuda.Device``: the one simulated device (id 0)."""

    def __init__(self, device=None):
        dev = 0 if device is None else int(device.id if isinstance(device, Device) else device)
        if dev != 0:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal (the simulator has one "
                                   "device)")
        self.id = dev

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id} (simulated)>"

    def use(self):
        pass

    def synchronize(self):
        _sync("Device.synchronize")

    @property
    def mem_info(self):
        with MEMORY.lock:
            return max(0, MEMORY.limit - MEMORY.live - MEMORY.cached), MEMORY.limit

    @property
    def compute_capability(self):
        return "90"


def _synced(conv):
    """A conversion to a host scalar: a host synchronisation."""
    def method(self):
        _sync(f"{conv.__name__}(ndarray)")
        return conv(self._a)
    method.__name__ = f"__{conv.__name__}__"
    return method


class ndarray(NDArrayOperatorsMixin):
    """``cupy.ndarray`` of the simulated device (a NumPy array it does not let out implicitly)."""

    __slots__ = ("_a", "__weakref__")

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise NotImplementedError("the simulator's ndarray takes no memptr or strides")
        _check_alloc(shape, dtype)
        a = np.empty(shape, dtype=dtype, order=order)
        MEMORY.track(a)
        self._a = a

    @classmethod
    def _from(cls, a):
        MEMORY.track(a)
        obj = cls.__new__(cls)
        obj._a = a
        return obj

    # --- what CuPy refuses or treats as a host synchronisation
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                        "construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        _sync("ndarray.get")
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray) or arr.shape != self._a.shape:
            raise ValueError("set() needs a numpy.ndarray of the same shape")
        self._a[...] = arr

    def item(self, *args):
        _sync("ndarray.item")
        return self._a.item(*args)

    def tolist(self):
        _sync("ndarray.tolist")
        return self._a.tolist()

    __float__ = _synced(float)
    __int__ = _synced(int)
    __complex__ = _synced(complex)
    __bool__ = _synced(bool)
    __index__ = _synced(operator.index)

    def __repr__(self):
        return repr(self._a)

    __str__ = __repr__

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    # --- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _wrap(self._a.T))
    device = property(lambda self: Device(0))
    data = property(lambda self: _Data(self._a.ctypes.data))

    @property
    def real(self):
        return _wrap(self._a.real)

    @real.setter
    def real(self, v):
        self._a.real = _unwrap(v)

    @property
    def imag(self):
        return _wrap(self._a.imag)

    @imag.setter
    def imag(self, v):
        self._a.imag = _unwrap(v)

    def __getattr__(self, name):
        if name.startswith("__"):  # __array_interface__ & co. would hand NumPy the payload
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            @functools.wraps(attr)
            def method(*args, **kwargs):
                return _call(attr, args, kwargs, owner=self)
            return method
        return _wrap(attr)

    # --- indexing
    def __getitem__(self, idx):
        idx = _unwrap(idx)
        if _has_bool_mask(idx):
            _sync("boolean-mask indexing")
        out = self._a[idx]
        if out.ndim and not np.may_share_memory(out, self._a):  # integer-array indexing: a gather kernel
            STATS.count_pass(out)
        return _wrap(out)

    def __setitem__(self, idx, value):
        # A host array assigned into a device array is copied over (CuPy does so too).
        idx = _unwrap(idx)
        self._a[idx] = value if isinstance(value, np.ndarray) else _unwrap(value)
        # The written part (the whole array for a boolean mask: the kernel scans it all).
        STATS.count_pass(self._a if _has_bool_mask(idx) else np.asarray(self._a[idx]))

    # --- NumPy protocols: ufuncs and functions run on the payload, results stay on the device
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _call(getattr(ufunc, method), inputs, kwargs, passes=True)

    def __array_function__(self, func, types_, args, kwargs):
        return _call(func, args, kwargs)

    def __copy__(self):
        return _wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return _wrap(self._a.copy())

    def __reduce__(self):
        raise TypeError("the simulator's arrays do not pickle")


ndarray.__module__ = "cupy"


def _has_bool_mask(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, np.ndarray) and i.dtype == np.bool_ and i.ndim for i in items)


def _check_alloc(shape, dtype):
    """Refuse, before NumPy allocates, an array that cannot fit on the simulated device."""
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    n = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
    with MEMORY.lock:
        if MEMORY.live + n > MEMORY.limit:
            raise OutOfMemoryError(n, MEMORY.live, MEMORY.limit)


# ------------------------------------------------------------ the modules
def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    return _wrap(np.array(a, dtype=dtype, order=order or "K", copy=True))


def array(a, dtype=None, copy=True, order="K", ndmin=0, **kw):
    if isinstance(a, ndarray):
        return _wrap(np.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    return _wrap(np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def _creator(name):
    fn = getattr(np, name)

    def create(shape, *args, **kwargs):
        dtype = kwargs.get("dtype", args[0] if args and name != "full" else (
            args[1] if name == "full" and len(args) > 1 else None))
        if name == "full" and dtype is None:
            dtype = np.result_type(args[0]) if args else float
        _check_alloc(shape, float if dtype is None else dtype)
        return _wrap(fn(shape, *args, **kwargs))
    create.__name__ = name
    return create


def _like(name):
    fn = getattr(np, name)

    def create(a, *args, **kwargs):
        shape = kwargs.get("shape") or a.shape
        dtype = kwargs.get("dtype") or a.dtype
        _check_alloc(shape, dtype)
        return _call(fn, (a,) + args, kwargs)
    create.__name__ = name
    return create


def get_array_module(*args):
    return sys.modules["cupy"] if any(isinstance(a, ndarray) for a in args) else np


def _np_attr(np_mod, name):
    attr = getattr(np_mod, name)
    if isinstance(attr, type) or not callable(attr):
        if isinstance(attr, types.ModuleType):
            return _proxy_module(attr, f"cupy.{name}")
        return attr

    @functools.wraps(attr)
    def fn(*args, **kwargs):
        return _call(attr, args, kwargs)
    return fn


def _proxy_module(np_mod, name):
    mod = types.ModuleType(name)
    mod.__getattr__ = lambda attr: _np_attr(np_mod, attr)
    return mod


class MemoryPool:
    """``cupy.cuda.MemoryPool`` of the simulated device."""

    def used_bytes(self):
        return MEMORY.live

    def free_bytes(self):
        return MEMORY.cached

    def total_bytes(self):
        return MEMORY.live + MEMORY.cached

    def free_all_blocks(self, stream=None):
        with MEMORY.lock:
            MEMORY.cached = 0

    def n_free_blocks(self):
        return 1 if MEMORY.cached else 0

    def set_limit(self, size=None, fraction=None):
        if size is not None:
            set_memory_limit(size)

    def get_limit(self):
        return MEMORY.limit


class PinnedMemoryPool:
    def free_all_blocks(self):
        pass

    def n_free_blocks(self):
        return 0


_POOL = MemoryPool()
_PINNED = PinnedMemoryPool()


class Stream:
    """``cupy.cuda.Stream``: the simulator runs everything at once, synchronisation is bookkeeping."""

    #: The default stream, ``cupy.cuda.Stream.null`` (set once the class exists).
    null: Stream | None = None

    def __init__(self, null=False, non_blocking=False, ptr=None):
        self.ptr = 0

    def synchronize(self):
        _sync("Stream.synchronize")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def use(self):
        return self


_STREAM = Stream()
Stream.null = _STREAM


class Event:
    """``cupy.cuda.Event``: host clock readings (the simulator's times mean nothing)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        _sync("Event.synchronize")


def get_elapsed_time(start, stop):
    """Milliseconds between two recorded events."""
    return (stop.t - start.t) * 1e3


def get_current_stream(device_id=None):
    return _STREAM


# -------------------------------------------------------------- kernels
class RawKernel:
    """A kernel of a :class:`RawModule`, launched by the executor with CuPy's calling convention."""

    def __init__(self, module, name):
        self._module = module
        self.name = name
        self.info = module.info(name)

    def __call__(self, grid, block, args, shared_mem=0, stream=None, enable_cooperative_groups=False):
        if not isinstance(grid, tuple) or not isinstance(block, tuple):
            raise TypeError(f"kernel {self.name}: grid and block must be tuples; got {grid!r}, {block!r}")
        if not isinstance(args, tuple):
            raise TypeError(f"kernel {self.name}: args must be a tuple; got {type(args).__name__}")
        if shared_mem:
            raise executor.LaunchError(f"kernel {self.name}: dynamic shared memory is not simulated")
        host = []
        for i, a in enumerate(args):
            if isinstance(a, ndarray):
                host.append(a._a)
            elif isinstance(a, np.ndarray):
                raise TypeError(f"kernel {self.name}: argument {i} is a host numpy.ndarray; kernels take "
                                "device arrays")
            else:
                host.append(a)
        STATS.launches[self.name] += 1
        self._module.launch(self.name, grid, block, tuple(host), reverse=CONFIG["reverse_blocks"],
                            threads=CONFIG["threads"])


class RawModule:
    """``cupy.RawModule(code=..., options=...)``: the source compiled by g++ for the grid executor."""

    def __init__(self, code=None, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=False):
        if code is None:
            if path is None:
                raise TypeError("RawModule needs code or path")
            with open(path) as f:
                code = f.read()
        self.code = code
        self.options = tuple(options)
        self._module = None

    def compile(self, log_stream=None):
        if self._module is None:
            self._module = executor.Module(self.code, self.options)
            self._module.library()
        return self

    def get_function(self, name):
        self.compile()
        return RawKernel(self._module, name)


#: Run-time switches: blocks (and threads) in reverse order; how the threads of a
#: block run (None: the executor's default; "pool": every kernel on OS threads).
CONFIG = {"reverse_blocks": os.environ.get("GPU_DECONV_SIMULATOR_REVERSE", "") == "1",
          "threads": os.environ.get("GPU_DECONV_SIMULATOR_THREADS") or None}


# ---------------------------------------------------------------- cuFFT
class PlanCache:
    """``cupy.fft.config.get_plan_cache()``: an LRU of plans, each holding its work area."""

    def __init__(self, size=16):
        self._plans: collections.OrderedDict = collections.OrderedDict()
        self._size = size

    def get(self, key, work_bytes):
        if self._size == 0:
            return
        if key in self._plans:
            self._plans.move_to_end(key)
            return
        # cuFFT's own allocation (plan data) fails with CUFFT_ALLOC_FAILED; the work
        # area comes from CuPy's pool (OutOfMemoryError).
        meta = max(256, work_bytes // 8)
        try:
            MEMORY.allocate(meta)
        except OutOfMemoryError:
            raise CuFFTError(CUFFT_ALLOC_FAILED) from None
        try:
            MEMORY.allocate(work_bytes)
        except OutOfMemoryError:
            MEMORY.release(meta)
            raise
        STATS.plans_created += 1
        self._plans[key] = meta + work_bytes
        while len(self._plans) > self._size:
            self._evict()

    def _evict(self):
        _, n = self._plans.popitem(last=False)
        MEMORY.release(n)

    def clear(self):
        while self._plans:
            self._evict()

    def set_size(self, size):
        self._size = int(size)
        while len(self._plans) > max(self._size, 0):
            self._evict()

    def get_size(self):
        return self._size

    def get_curr_size(self):
        return len(self._plans)

    def get_curr_memsize(self):
        return sum(self._plans.values())

    def get_memsize(self):
        return -1

    def set_memsize(self, size):
        pass

    def show_info(self):
        print(f"simulated cuFFT plan cache: {len(self._plans)} / {self._size} plans, "
              f"{self.get_curr_memsize()} bytes")


_PLAN_CACHE = PlanCache()


def get_plan_cache():
    return _PLAN_CACHE


def _fft_axes(a, s, axes):
    nd = a.ndim
    if axes is None:
        axes = tuple(range(nd - len(s), nd)) if s is not None else tuple(range(nd))
    axes = tuple(int(ax) % nd for ax in np.atleast_1d(axes))
    return axes


def _real_for(dt):
    return np.dtype(np.float32) if np.dtype(dt) in (np.float32, np.complex64) else np.dtype(np.float64)


def _complex_for(dt):
    return np.dtype(np.complex64) if _real_for(dt) == np.float32 else np.dtype(np.complex128)


def _fft(kind, real_out):
    def transform(x, s=None, axes=None, norm=None, overwrite_x=False, *, plan=None, **kw):
        if not isinstance(x, ndarray):
            _unsupported(x)
        if plan is not None:
            raise NotImplementedError("explicit plans are not simulated")
        if x.dtype.kind not in "fc":
            x = x.astype(np.float64)
        axes_ = _fft_axes(x, s, axes)
        a = x._a
        if kind == "irfftn":
            a = a.astype(_complex_for(a.dtype), copy=False)
            # cuFFT's C2R overwrites its input: CuPy works on a copy unless allowed to clobber.
            work = a if overwrite_x else ndarray._from(a.copy())._a
            STATS.irfft_input_copies += not overwrite_x
        elif kind in ("rfftn",):
            work = a.astype(_real_for(a.dtype), copy=False)
        else:
            work = a
        out_dt = _complex_for(work.dtype) if not real_out else _real_for(work.dtype)
        shape = list(work.shape)
        if s is not None:
            for ax, n in zip(axes_, s):
                shape[ax] = int(n)
            if kind in ("rfftn", "fftn") and tuple(shape) != work.shape:
                # CuPy zero-fills (or crops) the input into a new array of the grid's shape first
                grid = ndarray._from(np.zeros(shape, dtype=work.dtype))._a
                grid[tuple(slice(0, min(a, b)) for a, b in zip(shape, work.shape))] = \
                    work[tuple(slice(0, min(a, b)) for a, b in zip(shape, work.shape))]
                work, s = grid, None
        nbatch = math.prod(work.shape) // max(1, math.prod(work.shape[ax] for ax in axes_))
        _PLAN_CACHE.get((kind, tuple(work.shape), axes_, tuple(s) if s is not None else None, work.dtype.str),
                        max(1, nbatch * math.prod(shape[ax] for ax in axes_) * np.dtype(out_dt).itemsize))
        STATS.ffts[kind] += 1
        fn = getattr(_sfft, kind)
        if kind in ("dctn", "idctn"):
            res = fn(work, type=kw.pop("type", 2), s=s, axes=axes_, norm=norm)
        else:
            res = fn(work, s=s, axes=axes_, norm=norm)
        res = np.ascontiguousarray(res, dtype=out_dt) if kind not in ("dctn", "idctn") else \
            np.ascontiguousarray(res, dtype=_real_for(work.dtype) if work.dtype.kind == "f" else work.dtype)
        if kind == "irfftn" and overwrite_x:
            a[...] = np.nan  # what cuFFT leaves there is unspecified
        return _wrap(res)
    transform.__name__ = kind
    return transform


rfftn = _fft("rfftn", False)
irfftn = _fft("irfftn", True)
fftn = _fft("fftn", False)
ifftn = _fft("ifftn", False)
dctn = _fft("dctn", True)
idctn = _fft("idctn", True)


def _one_axis(fn):
    def transform(x, n=None, axis=-1, norm=None, overwrite_x=False, **kw):
        return fn(x, s=None if n is None else (n,), axes=(axis,), norm=norm, overwrite_x=overwrite_x)
    return transform


def next_fast_len(target, real=None):
    """Smallest 7-smooth number >= target (cuFFT's fast sizes)."""
    n = max(1, int(target))
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def scatter_add(a, slices, value):
    """``cupyx.scatter_add``: ``a[slices] += value`` with repeated indices accumulated."""
    np.add.at(a._a, _unwrap(slices), _unwrap(value))


def _csr_matrix(mat, *args, **kwargs):
    import scipy.sparse as sp

    return sp.csr_matrix(mat, *args, **kwargs)


# ------------------------------------------------------------- assembly
def build_modules() -> dict:
    """The modules (``cupy``, ``cupyx`` and their submodules) of the simulated CuPy."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = VERSION
    cupy.__file__ = __file__
    cupy.__simulator__ = True
    cupy.__getattr__ = lambda name: _np_attr(np, name)
    for name in ("ndarray", "asarray", "array", "asnumpy", "get_array_module", "RawModule", "RawKernel"):
        setattr(cupy, name, globals()[name])
    for name in ("empty", "zeros", "ones", "full"):
        setattr(cupy, name, _creator(name))
    for name in ("empty_like", "zeros_like", "ones_like", "full_like"):
        setattr(cupy, name, _like(name))
    cupy.ascontiguousarray = lambda a, dtype=None: _call(np.ascontiguousarray, (a,), {"dtype": dtype})
    cupy.get_default_memory_pool = lambda: _POOL
    cupy.get_default_pinned_memory_pool = lambda: _PINNED

    cuda = types.ModuleType("cupy.cuda")
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDeviceCount = lambda: 1
    runtime.getDeviceProperties = lambda dev: {"name": b"gpu_deconv simulator (CPU)", "major": 9,
                                               "minor": 0, "totalGlobalMem": MEMORY.limit,
                                               "multiProcessorCount": 1}
    runtime.runtimeGetVersion = lambda: 12080
    runtime.driverGetVersion = lambda: 12080
    runtime.CUDARuntimeError = CUDARuntimeError
    runtime.is_hip = False
    memory = types.ModuleType("cupy.cuda.memory")
    memory.OutOfMemoryError = OutOfMemoryError
    memory.MemoryPool = MemoryPool
    cufft = types.ModuleType("cupy.cuda.cufft")
    cufft.CuFFTError = CuFFTError
    cufft.CUFFT_ALLOC_FAILED = CUFFT_ALLOC_FAILED
    cuda.runtime, cuda.memory, cuda.cufft = runtime, memory, cufft
    cuda.Device, cuda.Stream, cuda.MemoryPool, cuda.Event = Device, Stream, MemoryPool, Event
    cuda.get_elapsed_time = get_elapsed_time
    cuda.get_current_stream = get_current_stream
    cuda.is_available = lambda: True
    cupy.cuda = cuda
    cupy.cuda.OutOfMemoryError = OutOfMemoryError

    fft = types.ModuleType("cupy.fft")
    config = types.ModuleType("cupy.fft.config")
    config.get_plan_cache = get_plan_cache
    config.clear_plan_cache = lambda: _PLAN_CACHE.clear()
    fft.config = config
    for name, fn in (("rfftn", rfftn), ("irfftn", irfftn), ("fftn", fftn), ("ifftn", ifftn)):
        setattr(fft, name, fn)
    fft.rfft, fft.irfft = _one_axis(rfftn), _one_axis(irfftn)
    fft.fft, fft.ifft = _one_axis(fftn), _one_axis(ifftn)
    cupy.fft = fft

    cupyx = types.ModuleType("cupyx")
    cupyx.__simulator__ = True
    cupyx.scatter_add = scatter_add
    cupyx.allow_synchronize = allow_synchronize
    cupyx.DeviceSynchronized = DeviceSynchronized
    scipy_ = types.ModuleType("cupyx.scipy")
    sfft = types.ModuleType("cupyx.scipy.fft")
    for name in ("rfftn", "irfftn", "fftn", "ifftn", "dctn", "idctn", "next_fast_len"):
        setattr(sfft, name, globals()[name])
    sfft.rfft, sfft.irfft = fft.rfft, fft.irfft
    sfft.fft, sfft.ifft = fft.fft, fft.ifft
    sparse = types.ModuleType("cupyx.scipy.sparse")
    sparse.csr_matrix = _csr_matrix
    scipy_.fft, scipy_.sparse = sfft, sparse
    cupyx.scipy = scipy_
    return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime, "cupy.cuda.memory": memory,
            "cupy.cuda.cufft": cufft, "cupy.fft": fft, "cupy.fft.config": config, "cupyx": cupyx,
            "cupyx.scipy": scipy_, "cupyx.scipy.fft": sfft, "cupyx.scipy.sparse": sparse}
