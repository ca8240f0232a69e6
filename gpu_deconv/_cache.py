"""Bounded, thread-safe caches of transfer functions.

A service that sees hundreds of kernel/shape combinations must not grow
without limit, so every cache is an LRU bounded by bytes: host memory (NumPy
arrays) and device memory (CuPy arrays) are budgeted separately.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

DEFAULT_HOST_BYTES = 128 * 2**20
DEFAULT_DEVICE_BYTES = 512 * 2**20


class ByteLRU:
    """Least-recently-used mapping whose values' sizes add up to at most ``max_bytes``.

    A value larger than the whole budget is not stored (the caller simply
    recomputes it next time).
    """

    def __init__(self, max_bytes: int):
        self._lock = threading.Lock()
        self._data: OrderedDict = OrderedDict()
        self._bytes = 0
        self.max_bytes = int(max_bytes)
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key):
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key, value, nbytes: int | None = None):
        _freeze(value)
        if nbytes is None:
            nbytes = _nbytes(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.max_bytes:
                return value
            self._data[key] = (value, nbytes)
            self._bytes += nbytes
            self._evict()
        return value

    def _evict(self):
        while self._bytes > self.max_bytes and self._data:
            _, (_, nb) = self._data.popitem(last=False)
            self._bytes -= nb

    def resize(self, max_bytes: int):
        with self._lock:
            self.max_bytes = int(max_bytes)
            self._evict()

    def clear(self):
        with self._lock:
            self._data.clear()
            self._bytes = 0


def _freeze(value):
    """Make cached NumPy arrays read-only: one is shared by every caller (and thread), so an
    in-place change by any of them (``op.spectrum() *= 2``) would corrupt later results."""
    if isinstance(value, (tuple, list)):
        for v in value:
            _freeze(v)
    elif isinstance(value, np.ndarray):
        value.setflags(write=False)


def _nbytes(value) -> int:
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 64))


_host = ByteLRU(DEFAULT_HOST_BYTES)
_device = ByteLRU(DEFAULT_DEVICE_BYTES)


def cache_for(bk) -> ByteLRU:
    return _device if bk.is_gpu else _host


def cached(bk, key, build):
    """The value cached under `key` for `bk`'s memory, built by ``build()`` (and stored) on a miss."""
    cache = cache_for(bk)
    value = cache.get(key)
    if value is None:
        value = cache.put(key, build())
    return value


def set_cache_limits(host_bytes: int | None = None, device_bytes: int | None = None):
    """Bound the transfer-function caches (LRU, by bytes).

    Parameters
    ----------
    host_bytes : int, optional
        Budget for NumPy spectra (default 128 MiB). 0 disables the cache.
    device_bytes : int, optional
        Budget for CuPy spectra on the GPU (default 512 MiB).

    Examples
    --------
    >>> import gpu_deconv
    >>> gpu_deconv.set_cache_limits(host_bytes=64 * 2**20)
    >>> gpu_deconv.cache_info()["host"]["max_bytes"]
    67108864
    >>> gpu_deconv.set_cache_limits(host_bytes=128 * 2**20)
    """
    for name, val, cache in (("host_bytes", host_bytes, _host), ("device_bytes", device_bytes, _device)):
        if val is None:
            continue
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {val!r}")
        cache.resize(int(val))


def cache_info() -> dict:
    """Sizes and hit counts of the transfer-function caches."""
    return {
        name: {"entries": len(c), "bytes": c.nbytes, "max_bytes": c.max_bytes,
               "hits": c.hits, "misses": c.misses}
        for name, c in (("host", _host), ("device", _device))
    }


def clear_cache():
    """Drop every cached transfer function."""
    _host.clear()
    _device.clear()


def content_key(bk, a, host=None) -> tuple:
    """Hashable identity of an array's contents (for small arrays such as kernels).

    `host` is ``bk.asnumpy(a)`` when the caller has it already (no transfer here).
    """
    host = bk.asnumpy(a) if host is None else host
    digest = hashlib.blake2b(np.ascontiguousarray(host).tobytes(), digest_size=16).digest()
    return (bk.name, bk.device_id(a), str(host.dtype), tuple(host.shape), digest)
