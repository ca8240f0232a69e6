"""Device memory: what a deconvolution needs per image, and solving a batch in chunks that fit.

``deconvolve(..., batch_size=...)``:

* ``None`` (default): the whole batch at once on the CPU, ``"auto"`` on the GPU;
* ``"auto"``: the measured memory model of the chosen method
  (:func:`gpu_deconv._memory_model.from_problem`, fitted on the simulated
  device) against the free device memory (``cupy.cuda.Device().mem_info``
  plus what CuPy's pool holds unused), with the safety factor :data:`SAFETY`;
* an int: chunks of that many images.

On the GPU a chunk that runs out of memory (``cupy.cuda.memory.OutOfMemoryError``,
or cuFFT's ``CUFFT_ALLOC_FAILED`` when a plan cannot get its memory) is retried
in halves, down to one image, before the error is let through
(:func:`run_chunks`); before each retry the cuFFT plan cache (one plan per
batch size, each holding its work area) and the pool's free blocks are
released. The images of a batch are independent systems, so the chunks give
the same answers as one call on the whole batch.
"""

from __future__ import annotations

import math
import numbers
import traceback

import numpy as np

__all__ = ["SAFETY", "check_batch_size", "per_image_bytes", "auto_chunk", "run_chunks"]

#: Fraction of the free device memory that "auto" plans to use (the estimate
#: leaves out cuFFT plans, CuPy's pool fragmentation and the caches).
SAFETY = 0.5


def check_batch_size(batch_size):
    """Validate ``batch_size``: None, "auto" or a positive integer.

    Examples
    --------
    >>> check_batch_size(4), check_batch_size("auto"), check_batch_size(None)
    (4, 'auto', None)
    """
    if batch_size is None:
        return None
    if isinstance(batch_size, str):
        if batch_size == "auto":
            return batch_size
    elif isinstance(batch_size, (numbers.Integral, np.integer)) and not isinstance(batch_size, bool) \
            and batch_size >= 1:
        return int(batch_size)
    raise ValueError(f"batch_size must be a positive integer, None or 'auto'; got {batch_size!r}")


def _half(grid):
    """Number of complex values of the rfftn half spectrum of a real grid."""
    grid = tuple(int(g) for g in grid)
    return math.prod(grid[:-1]) * (grid[-1] // 2 + 1)


def _circulant_grid(prob):
    bk = prob.bk
    return tuple(bk.next_fast_len(n + 2 * (k - 1)) for n, k in zip(prob.n, prob.kshape))


def band_bytes(prob, itemsize):
    """Per image: the inverted band blocks of the band preconditioner (dense, per tangential frequency)."""
    total = 0
    nd = prob.ndim
    grid = _circulant_grid(prob)
    for axis in range(nd):
        widths = [prob.kshape[axis] - 1]
        if prob.use_reg:
            widths += [t.op.kernel_shape[axis] - 1 for t in prob.terms if not t.is_identity]
        w = min(max(widths) + 2, prob.n[axis])
        rows = min(2 * w, prob.n[axis])
        tang = [grid[a] for a in range(nd) if a != axis]
        freqs = _half(tang) if tang else 1
        total += rows * rows * freqs * (2 * itemsize if tang else itemsize)
    return total


def per_image_bytes(prob, method, precondition="band"):
    """Counted (not measured) peak device memory of one image of `prob` solved by `method`, in bytes.

    ``batch_size="auto"`` plans with the measured model of :mod:`gpu_deconv._memory_model`
    instead; this count stays as the baseline that model is compared with
    (``benchmarks/memory_device.py``).

    Counts the work arrays a solve allocates beyond its inputs and its output
    (grid sizes x dtype size x number of arrays alive at the peak; a cuFFT work
    area is counted as one more spectrum), rounded up. With ``s`` the dtype
    size, ``n`` the unknown's size, ``G`` the data term's FFT grid and ``Gh``
    its half spectrum (about ``G / 2`` complex values):

    * ``fft``: spectra of y, z, the work area and the copy of its input that
      the inverse real FFT makes (cuFFT's C2R overwrites its input),
      ``2 s Gh (3 + [alpha > 0])``;
    * ``fft_approx``: the same plus the two filters;
    * ``dct``: ``s n (4 + [alpha > 0])`` plus the complex work of the transforms;
    * ``cg``: eight vectors of size n, the normal operator on its grid
      (two real grids, three spectra), the circulant preconditioner on its
      padded grid, and the band preconditioner's dense blocks.

    Parameters
    ----------
    prob : gpu_deconv.solvers.problem.Problem
    method : {"fft", "fft_approx", "dct", "cg"}
    precondition : {"band", "circulant", False}
    """
    s = np.dtype(prob.dtype).itemsize
    c = 2 * s
    nn = math.prod(prob.n)
    grid = prob.A.grid_shape
    g, gh = math.prod(grid), _half(grid)
    zt = 1 if prob.use_alpha else 0
    own_h = c * gh if prob.A.kernel_batch else 0  # a per-image kernel has a per-image spectrum
    if method == "fft":
        est = c * gh * (3 + zt) + own_h
    elif method == "fft_approx":
        est = c * gh * (4 + zt) + s * gh + own_h
    elif method == "dct":
        est = s * nn * (4 + zt) + 2 * c * nn
    else:
        vectors = 8 * s * nn
        normal = 2 * s * g + 3 * c * gh
        if prob.use_reg:
            for t in prob.terms:
                if not t.is_identity:
                    rg = t.op.grid_shape
                    normal = max(normal, 2 * s * math.prod(rg) + 3 * c * _half(rg) + s * nn)
        pre = 0
        if precondition:
            pg = _circulant_grid(prob)
            pre = s * _half(pg) + 2 * s * math.prod(pg) + 2 * c * _half(pg)
            if precondition == "band":
                pre += band_bytes(prob, s)
        est = vectors + normal + pre + own_h
    return int(est) + 1


def device_free_bytes(bk) -> int:
    """Free device memory plus what the pool holds unused (bytes)."""
    return bk.ops.free_bytes()


def auto_chunk(prob, method, precondition="band", free_bytes=None) -> int:
    """Images per chunk that fit `free_bytes` (default: the device's) with the SAFETY factor.

    Uses the measured model of :mod:`gpu_deconv._memory_model` (a fixed part
    per call plus a part per image, fitted to the device memory pool's
    high-water mark on the simulated device, with a margin), not the counted
    estimate :func:`per_image_bytes`. On the CPU (and with nothing to split)
    the whole batch.
    """
    from ._memory_model import from_problem

    B = prob.B
    if not prob.bk.is_gpu and free_bytes is None:
        return B
    if free_bytes is None:
        free_bytes = device_free_bytes(prob.bk)
    out_bytes = B * math.prod(prob.n) * np.dtype(prob.dtype).itemsize  # the assembled result
    fixed, per = from_problem(prob, method, precondition)
    budget = SAFETY * free_bytes - out_bytes - fixed
    return int(max(1, min(B, budget // max(per, 1))))


def run_chunks(fn, n, chunk, *, retry_on=(), on_retry=None, retry_if=None):
    """Call ``fn(start, stop)`` over ``[0, n)`` in chunks of at most `chunk` items.

    When a call raises one of the exception types `retry_on`, the same range
    is tried again in halves (and the smaller size is kept for the rest),
    down to one item; at one item the exception is raised.

    Parameters
    ----------
    fn : callable
        ``fn(start, stop) -> result`` for the items ``start:stop``.
    n : int
        Number of items.
    chunk : int
        First chunk size (>= 1).
    retry_on : tuple of exception types, optional
        What means "too big" (e.g. ``cupy.cuda.memory.OutOfMemoryError``).
        Empty: nothing is retried.
    on_retry : callable, optional
        ``on_retry(exc, new_size)`` before each retry (e.g. to free pooled memory).
    retry_if : callable, optional
        ``retry_if(exc) -> bool``: whether an exception of `retry_on` is
        retried (default: every one); the others are raised at once.

    Returns
    -------
    list of (start, stop, result)
        In order, covering ``[0, n)``.

    Examples
    --------
    >>> def f(a, b):
    ...     if b - a > 2:
    ...         raise MemoryError
    ...     return b - a
    >>> [r for _, _, r in run_chunks(f, 5, 5, retry_on=(MemoryError,))]
    [2, 2, 1]
    """
    retry_on = tuple(retry_on)
    out = []
    start = 0
    size = max(1, min(int(chunk), int(n)))
    while start < n:
        stop = min(n, start + size)
        try:
            res = fn(start, stop)
        except retry_on as exc:
            if stop - start <= 1 or (retry_if is not None and not retry_if(exc)):
                raise
            # The traceback holds the failed call's frames, and so its device
            # arrays: let them go before the pool is asked to release memory.
            traceback.clear_frames(exc.__traceback__)
            size = max(1, (stop - start + 1) // 2)
            if on_retry is not None:
                on_retry(exc, size)
            continue
        out.append((start, stop, res))
        start = stop
    return out
