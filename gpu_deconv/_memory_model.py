"""Measured memory of ``deconvolve`` per image: the peaks, how they are measured, a model that bounds them.

Two measurements (:func:`host_peak_bytes`, :func:`device_peak_bytes`) and a
model fitted to them (:func:`model_bytes`, :func:`from_problem`).

* Host: ``tracemalloc``'s peak of one call with the transfer-function cache
  empty (a first call runs before, untraced, so that imports and compiled
  plans a warm process already holds are not counted).
* Device: the high-water mark of the simulated device's memory
  (``gpu_deconv._simulator``, ``GPU_DECONV_SIMULATOR=1``): live arrays and
  cuFFT plan work areas, with CuPy's pool modelled as reusing every freed block
  (no fragmentation). A *cold* call starts with the transfer-function cache,
  the cuFFT plan cache and the pool emptied, so the kernel's spectra, the
  preconditioner and the plans are built inside it; a *warm* call finds them.

The model: for a batch of ``B`` images of one shared kernel,
``bytes(B) = MARGIN * ((fixed + B * per_image) * s * W + band)`` where ``s`` is
the dtype size, ``W`` the number of values of the method's work grid
(:func:`work_values`: the unknown for the DCT, the data term's FFT grid for the
closed form, the larger of that and the preconditioner's padded grid for CG),
``band`` the dense blocks of the band preconditioner (CG outside ``same`` +
``symmetric``; ``gpu_deconv._memory.band_bytes``, built once per batch), and
``fixed`` / ``per_image`` the coefficients of :data:`COEFFS`: measured on the
simulator (cold calls, B = 1 and 8 at 128^2, 256^2 and 512^2, float32 and float64;
B = 1 and 2 at 1024^2, float32; ``benchmarks/memory_device.py``), the largest
over the sizes (and, where the two agree at every size, over the precisions),
rounded up. A peak is not always additive (the DCT's table is built before the
images are solved, so its peak is that of the larger phase); ``fixed + B *
per_image`` bounds both phases. The measurement counts what a call allocates
beyond its inputs and its output; so does the model. The simulator gives each
cuFFT plan a work area of the batch's whole output (about 3.4 units of the
unknown per image for a real FFT and its inverse); what a GPU's cuFFT takes
is not confirmed. Not measured, so taken from the nearest measured case: 1-D and
3-D problems, other modes and boundaries of CG (the largest CG coefficients),
complex data (twice the real dtype's size), a kernel per image (nothing shared:
the fixed part moves into each image), ``alpha``/``z``.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np

__all__ = ["MARGIN", "COEFFS", "host_peak_bytes", "device_peak_bytes", "work_values", "model_bytes",
           "from_problem", "method_key"]

#: Safety factor on the measured coefficients (the simulator's pool reuses every
#: freed block; CuPy's rounds blocks to 512 bytes and can fragment).
MARGIN = 1.25

#: (method key, dtype size) -> (fixed, per_image), in units of the work grid
#: (see the module docstring). Method keys: :func:`method_key`. Measured per
#: image at 8 x 512^2 (units of the unknown, cold / warm): fft 4.57 / 1.00,
#: dct 5.50 / 1.00 (float32; 4.12 in float64), valid 16.3 / 8.26, same+symmetric
#: 15.1 / 8.73, full 12.3 / 7.56 (CG with 3 iterations; 6 give the same peaks).
COEFFS: dict = {
    ("fft", 4): (1.55, 4.40),
    ("fft", 8): (1.55, 4.40),
    ("dct", 4): (29.20, 2.15),
    ("dct", 8): (9.70, 3.00),
    ("cg-valid", 4): (3.25, 13.85),
    ("cg-valid", 8): (3.25, 13.85),
    ("cg-full", 4): (3.95, 13.10),
    ("cg-full", 8): (3.95, 13.10),
    ("cg-same-symmetric", 4): (5.25, 15.95),
    ("cg-same-symmetric", 8): (5.25, 15.95),
}


def host_peak_bytes(fn):
    """Peak traced host memory (bytes) of ``fn()`` with the transfer-function cache empty.

    ``fn`` runs once untraced first (imports, FFT plans), then the cache is
    cleared and ``fn`` runs again under ``tracemalloc``. Returns
    ``(peak_bytes, result of the traced call)``.
    """
    from ._cache import clear_cache

    fn()
    clear_cache()
    tracemalloc.start()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def device_peak_bytes(fn, *, cold=True):
    """High-water mark (bytes) of the simulated device's memory during ``fn()``, above what was live before.

    Needs the simulator installed (``GPU_DECONV_SIMULATOR=1`` and
    :func:`gpu_deconv._simulator.install`). ``cold``: empty the
    transfer-function cache, the cuFFT plan cache and the pool's free blocks
    first. Returns ``(peak_bytes, result)``; the peak includes the result's own
    memory (subtract it to compare with :func:`model_bytes`).
    """
    from . import _simulator
    from ._cache import clear_cache

    if not _simulator.installed():
        raise RuntimeError("device_peak_bytes needs the simulator: set GPU_DECONV_SIMULATOR=1 and call "
                           "gpu_deconv._simulator.install() before cupy is imported")
    from ._backend import _backend
    from ._simulator import cupy_stub as st

    cp = _backend("cupy").xp  # the simulator's stand-in (only the backend imports cupy)

    if cold:
        clear_cache()
        cp.fft.config.get_plan_cache().clear()
        cp.get_default_memory_pool().free_all_blocks()
    st.MEMORY.reset_peak()
    base = st.MEMORY.live
    out = fn()
    return st.MEMORY.peak - base, out


def method_key(prob, method):
    """The :data:`COEFFS` key of a solve: "fft", "dct", "cg-valid", "cg-full", "cg-same-symmetric" or "cg".

    "fft_approx" counts as "fft"; "cg" (any other mode/boundary) takes the
    largest coefficients of the measured CG cases.
    """
    if method in ("fft", "fft_approx", "dct"):
        return "fft" if method != "dct" else "dct"
    if method != "cg":
        raise ValueError(f"method must be one of 'fft', 'fft_approx', 'dct', 'cg'; got {method!r}")
    if prob.mode in ("valid", "full"):
        return f"cg-{prob.mode}"
    if prob.mode == "same" and prob.boundary == "symmetric":
        return "cg-same-symmetric"
    return "cg"


def _uses_band_blocks(prob, method, precondition):
    """Whether the solve builds the band preconditioner's dense blocks (not in same + symmetric)."""
    return (method == "cg" and precondition in (True, "band")
            and not (prob.mode == "same" and prob.boundary == "symmetric"))


def work_values(prob, method):
    """Values of the method's work grid: the unknown (dct), the FFT grid (fft), the larger of the
    data term's grid and the preconditioner's padded grid (cg)."""
    if method == "dct":
        return math.prod(prob.n)
    g = math.prod(prob.A.grid_shape)
    if method == "cg":
        pg = math.prod(prob.bk.next_fast_len(n + 2 * (k - 1)) for n, k in zip(prob.n, prob.kshape))
        g = max(g, pg)
    return g


def _coeffs(key, itemsize):
    """(fixed, per_image) of `key`; "cg" and unmeasured sizes take the largest measured."""
    if key == "cg":
        cands = [v for (k, _), v in COEFFS.items() if k.startswith("cg-")]
    else:
        cands = [v for (k, s), v in COEFFS.items() if k == key and s == itemsize] or \
            [v for (k, _), v in COEFFS.items() if k == key]
    if not cands:
        raise ValueError(f"no measured coefficients for {key!r}")
    return max(c[0] for c in cands), max(c[1] for c in cands)


def from_problem(prob, method, precondition="band"):
    """``(fixed_bytes, per_image_bytes)`` of the model, margin included.

    ``fixed_bytes`` is what the call needs once whatever the batch (the
    kernel's spectra, the preconditioner, the cuFFT plans' fixed part; with
    one kernel per image it moves into the per-image part), ``per_image_bytes``
    what each image adds. Both count what the call allocates beyond its
    inputs and its output.
    """
    from ._memory import band_bytes

    s = np.dtype(prob.dtype).itemsize
    if np.dtype(prob.dtype).kind == "c":  # complex: full spectra; measured only for real data
        s *= 2
    fixed_w, per_w = _coeffs(method_key(prob, method), np.dtype(prob.dtype).itemsize)
    w = work_values(prob, method) * s
    fixed = fixed_w * w
    if _uses_band_blocks(prob, method, precondition):
        fixed += band_bytes(prob, np.dtype(prob.dtype).itemsize)
    per = per_w * w
    if prob.A.kernel_batch:  # one kernel per image: nothing is shared
        per, fixed = per + fixed, 0.0
    return int(math.ceil(MARGIN * fixed)), int(math.ceil(MARGIN * per))


def model_bytes(prob, method, batch, precondition="band"):
    """Modelled peak bytes of one call on `batch` images of `prob` (beyond inputs and output).

    Examples
    --------
    >>> import numpy as np
    >>> from gpu_deconv.solvers import deconvolve as dv
    >>> prob = dv.build_problem(np.zeros((8, 64, 64)), np.ones((5, 5)) / 25, lam=1e-2, mode="circular")
    >>> model_bytes(prob, "fft", 8) > model_bytes(prob, "fft", 1) > 0
    True
    """
    fixed, per = from_problem(prob, method, precondition)
    return fixed + int(batch) * per
