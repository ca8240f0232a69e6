"""Shared fixtures: the available array backends, seeded generators, tolerances."""

import numpy as np
import pytest

from gpu_deconv import _simulator
from gpu_deconv._backend import cupy_status

# GPU_DECONV_SIMULATOR=1: the NumPy-backed CuPy stand-in (kernels on the CPU grid
# executor) serves as "cupy", so `-m gpu` runs the GPU suite on the CPU. Never otherwise.
SIMULATOR = _simulator.install()

CUPY, CUPY_REASON = cupy_status()

BACKENDS = [
    "numpy",
    pytest.param("cupy", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(CUPY is None, reason=CUPY_REASON or "no cupy")]),
]


@pytest.fixture(params=BACKENDS)
def xp(request):
    """The array module under test: numpy always, cupy when a GPU is usable."""
    return np if request.param == "numpy" else CUPY


def to_numpy(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


# Relative tolerances by working dtype (errors of FFT-based products relative
# to the largest entry of the result).
RTOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def assert_close(actual, desired, dtype, scale=None, factor=1.0):
    actual, desired = to_numpy(actual), to_numpy(desired)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    if scale is None:
        scale = max(np.abs(desired).max(initial=0.0), 1e-300)
    err = np.abs(actual.astype(np.float64) - desired.astype(np.float64)).max(initial=0.0)
    assert err <= RTOL[np.dtype(dtype)] * factor * scale, f"max error {err:.3e} vs scale {scale:.3e}"


@pytest.fixture
def rng(request):
    # One seed per test, derived from its name, so tests are independent and reproducible.
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def pytest_collection_modifyitems(config, items):
    """Skip the exhaustive ``simulator`` variants unless the -m expression names them.

    A marker expression in addopts would be replaced by any -m the user gives;
    this keeps them out of every run that does not ask for them
    (``python -m pytest -m simulator``).
    """
    if "simulator" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="exhaustive simulator variant: run with  python -m pytest -m simulator")
    for item in items:
        if "simulator" in item.keywords:
            item.add_marker(skip)
