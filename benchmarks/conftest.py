"""pytest-benchmark set-up for the suites in this folder (not part of the default test run).

Run (from the repository root)::

    python -m pytest benchmarks --benchmark-only                       # full sizes, numpy (+ cupy if usable)
    python -m pytest benchmarks --benchmark-only --quick               # smoke check, ~1 minute
    python -m pytest benchmarks --benchmark-only --backend cupy        # GPU only
    python -m pytest benchmarks/bench_solvers.py --benchmark-only --benchmark-json out.json

The default test run (``python -m pytest``) only looks at ``tests/`` (``testpaths``),
and the suites are named ``bench_*.py``, which pytest's default ``python_files``
does not match; the hook below collects them when this folder is given.

Options
-------
``--backend {numpy,cupy,all}``
    Array module(s) to benchmark. Default: numpy, plus cupy when it is
    importable and a CUDA device is present. ``cupy``/``all`` without a usable
    GPU skip the cupy cases with the reason.
``--quick``
    Shrink every size (also ``GPU_DECONV_BENCH_QUICK=1``); numbers are then
    only a smoke check.
``--workers N``
    FFT threads of the CPU path, ours (``gpu_deconv.set_workers``) and the
    peers' (``scipy.fft.set_workers``). Default 2.

Every timed callable synchronizes the GPU stream before returning (CuPy), and a
first call (the warm-up: plans, caches, kernels' compilation) is never timed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import scipy.fft
from _bench_common import (
    DEFAULT_WORKERS,
    cupy_status,
    quick_from_env,
    rounds_for,
    sizes,
    synced,
    synchronizer,
)

import gpu_deconv as gd

CUPY, CUPY_REASON = cupy_status()


def pytest_addoption(parser):
    group = parser.getgroup("gpu_deconv benchmarks")
    group.addoption("--backend", action="store", default=None, choices=("numpy", "cupy", "all"),
                    help="array module(s) to benchmark (default: numpy, plus cupy when usable)")
    group.addoption("--quick", action="store_true", default=False,
                    help="shrink every size for a smoke check (or GPU_DECONV_BENCH_QUICK=1)")
    group.addoption("--workers", action="store", type=int, default=DEFAULT_WORKERS,
                    help="CPU FFT threads, ours and the peers' (default 2)")


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` in this folder (explicitly named files are collected by pytest itself)."""
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if parent.session.isinitpath(file_path):
            return None
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _selected_backends(config):
    choice = config.getoption("--backend")
    if choice is None:
        return ["numpy"] + (["cupy"] if CUPY is not None else [])
    if choice == "all":
        return ["numpy", "cupy"]
    return [choice]


def _is_quick(config):
    return bool(config.getoption("--quick")) or quick_from_env()


def pytest_generate_tests(metafunc):
    if "op_case" in metafunc.fixturenames:
        cases = sizes(_is_quick(metafunc.config)).op_cases
        metafunc.parametrize("op_case", cases, ids=[f"{c[0]}-{c[3]}" for c in cases])
    if "backend" in metafunc.fixturenames:
        params = []
        for name in _selected_backends(metafunc.config):
            if name == "numpy":
                params.append(pytest.param("numpy", id="numpy"))
            else:
                params.append(pytest.param("cupy", id="cupy", marks=[
                    pytest.mark.gpu,
                    pytest.mark.skipif(CUPY is None, reason=CUPY_REASON or "no cupy")]))
        metafunc.parametrize("backend", params)


@pytest.fixture(scope="session")
def quick(pytestconfig):
    return _is_quick(pytestconfig)


@pytest.fixture(scope="session")
def sz(quick):
    """The size table (full = the issue's sizes; quick = shrunk)."""
    return sizes(quick)


@pytest.fixture(scope="session", autouse=True)
def _workers(pytestconfig):
    """Fix the CPU FFT threads for us and the peers for the whole session."""
    w = pytestconfig.getoption("--workers")
    with gd.set_workers(w), scipy.fft.set_workers(w):
        yield w


@pytest.fixture
def xp(backend):
    return np if backend == "numpy" else CUPY


@pytest.fixture
def sync(xp):
    """Waits for the GPU (no-op on NumPy); called inside every timed callable."""
    return synchronizer(xp)


@pytest.fixture
def to_xp(xp):
    """Move a NumPy array to the benchmark's array module."""
    return (lambda a: a) if xp is np else xp.asarray


@pytest.fixture
def run(benchmark, sync, quick):
    """``run(fn, setup=None, budget=None)``: time ``fn`` with the warm-up excluded.

    One untimed call first (plans, caches, compilation), then
    ``benchmark.pedantic`` with as many rounds as fit in `budget` seconds
    (at least 3; quick mode: 1). `setup` (untimed) runs before every round,
    e.g. ``gpu_deconv.clear_cache`` for an uncached measurement. The timed
    callable synchronizes the GPU before returning. Returns fn's last result.
    """

    def _run(fn, *, setup=None, budget=None):
        call = synced(fn, sync)
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        call()
        t = time.perf_counter() - t0
        if quick:
            rounds = 1
        else:
            rounds = rounds_for(t, 1.0 if budget is None else budget)
        benchmark.extra_info["warmup_s"] = t
        return benchmark.pedantic(call, setup=setup, rounds=rounds, iterations=1)

    return _run
