"""The gpu_deconv simulator: the GPU code path executed on the CPU, to prove its logic without a GPU.

Two parts:

* :mod:`.executor` -- a grid executor: the real ``kernels/*.cu`` compiled by
  g++ with ``cuda_host.h`` (``__global__``, ``__shared__``, ``threadIdx``,
  ``__syncthreads()`` mapped onto host threads and a barrier) and launched
  through ctypes over the grids the launchers compute;
* :mod:`.cupy_stub` -- a NumPy-backed stand-in for the part of CuPy the
  package uses (arrays, cuFFT, ``RawModule``, memory pool and limit,
  ``OutOfMemoryError``), whose ``RawModule`` runs on the executor.

It is never active unless asked for: :func:`install` puts the stand-in in
``sys.modules`` as ``cupy`` / ``cupyx`` only when the environment variable
``GPU_DECONV_SIMULATOR=1`` is set (the test suite's conftest and
``benchmarks/gpu_check.py`` call it), and refuses when a real ``cupy`` is
already imported. Results on the simulator prove the logic, not the device:
no timing, no memory model beyond the barrier, no device limits except those
it checks.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ENV", "requested", "install", "installed"]

#: The environment variable that turns the simulator on ("1").
ENV = "GPU_DECONV_SIMULATOR"


def requested() -> bool:
    """Whether ``GPU_DECONV_SIMULATOR=1`` asks for the simulator."""
    return os.environ.get(ENV, "").strip() == "1"


def installed() -> bool:
    """Whether the ``cupy`` in ``sys.modules`` is the simulator's."""
    return bool(getattr(sys.modules.get("cupy"), "__simulator__", False))


def install() -> bool:
    """Install the simulated ``cupy``/``cupyx`` when ``GPU_DECONV_SIMULATOR=1``; returns whether it is in.

    Does nothing (returns False) without the variable. With it, raises
    RuntimeError if a real cupy is already imported (the two cannot coexist
    in one process).
    """
    if not requested():
        return False
    if installed():
        return True
    if any(n == "cupy" or n.startswith(("cupy.", "cupyx")) for n in sys.modules):
        raise RuntimeError(f"{ENV}=1 but a real cupy is already imported; set the variable before anything "
                           "imports cupy")
    from . import cupy_stub

    sys.modules.update(cupy_stub.build_modules())
    return True
