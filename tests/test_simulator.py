"""The simulated device (gpu_deconv/_simulator): the real launchers and the OOM retry, on the CPU.

The tests marked ``gpu`` here run only where the simulator stands in for
CuPy (``GPU_DECONV_SIMULATOR=1 python -m pytest -m gpu``); the default run
starts one such session in a child process (the last test), so they are
exercised by every run. They check what the simulator alone can set up: a
device memory limit (so the out-of-memory retry really runs, with cuFFT's
plan cache), a cuFFT allocation failure, the peak memory against the
estimate, launch grids smaller than the work, and the stand-in's own
strictness. They prove logic, not GPU behaviour.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv import _cuda, _memory
from gpu_deconv._padding import input_shape
from gpu_deconv._simulator import executor
from gpu_deconv.solvers import deconvolve as dv

from conftest import SIMULATOR, assert_close

ROOT = Path(__file__).resolve().parent.parent
SIM_ONLY = pytest.mark.skipif(not SIMULATOR,
                              reason="needs the simulator: GPU_DECONV_SIMULATOR=1 python -m pytest -m gpu")


@pytest.fixture
def sim():
    """(cupy stand-in, its internals), with the device's limit and counters restored afterwards."""
    import cupy as cp

    from gpu_deconv._simulator import cupy_stub as st

    old = st.MEMORY.limit
    cp.fft.config.get_plan_cache().clear()
    cp.get_default_memory_pool().free_all_blocks()
    yield cp, st
    st.set_memory_limit(old)
    st.CONFIG.update(reverse_blocks=False, threads=None)
    cp.fft.config.get_plan_cache().set_size(16)


def _closed_form_problem(rng, B, shape=(64, 48)):
    h = np.outer([1.0, 2.0, 1.0], [1.0, 3.0, 3.0, 1.0])
    y = rng.standard_normal((B,) + shape)
    return y, h / h.sum(), dict(mode="circular", method="fft", lam=0.1, reg="laplacian")


@pytest.mark.gpu
@SIM_ONLY
@pytest.mark.parametrize("clear_plans", [True, False])
def test_out_of_memory_retry_frees_the_plan_cache(rng, monkeypatch, sim, clear_plans):
    cp, st = sim
    B = 8
    y, h, kw = _closed_form_problem(rng, B)
    want = gd.deconvolve(y, h, **kw)
    yd, hd = cp.asarray(y), cp.asarray(h)
    gd.deconvolve(yd[:1], hd, **kw)  # the kernel's spectra cached, kernels compiled
    cp.fft.config.get_plan_cache().clear()
    spectrum = 64 * (48 // 2 + 1) * 16
    # room for about two images at a time, cuFFT plans included
    st.set_memory_limit(st.MEMORY.live + y[0].nbytes * B + 9 * spectrum)
    clears = []
    real_clear = st.PlanCache.clear
    if clear_plans:
        monkeypatch.setattr(st.PlanCache, "clear", lambda self: (clears.append(1), real_clear(self)))
    else:  # what the retry did before: the pool only
        monkeypatch.setattr(st.PlanCache, "clear", lambda self: None)
    sizes = []
    real_run = _memory.run_chunks

    def spy(fn, n, chunk, **k):
        parts = real_run(fn, n, chunk, **k)
        sizes.extend(b - a for a, b, _ in parts)
        return parts

    monkeypatch.setattr(_memory, "run_chunks", spy)
    if not clear_plans:
        # every batch size tried leaves its plans, each with its work area: down to one image, no room
        with pytest.raises(st.OutOfMemoryError):
            gd.deconvolve(yd, hd, batch_size=B, **kw)
        return
    got = gd.deconvolve(yd, hd, batch_size=B, **kw)
    assert clears and max(sizes) < B and sum(sizes) == B
    assert_close(got, want, np.float64)



@pytest.mark.gpu
@SIM_ONLY
@pytest.mark.parametrize("result,retried", [(2, True), (1, False)])
def test_cufft_alloc_failed_is_retried_and_other_cufft_errors_are_not(rng, monkeypatch, sim, result, retried):
    cp, st = sim
    import cupyx.scipy.fft as cfft

    y, h, kw = _closed_form_problem(rng, 4)
    want = gd.deconvolve(y, h, **kw)
    calls = []
    real = cfft.rfftn

    def rfftn(x, *a, **k):
        calls.append(x.shape[0])
        if x.ndim == 3 and x.shape[0] > 1:
            raise st.CuFFTError(result)
        return real(x, *a, **k)

    monkeypatch.setattr(cfft, "rfftn", rfftn)
    if retried:
        got = gd.deconvolve(cp.asarray(y), cp.asarray(h), batch_size=4, **kw)
        assert_close(got, want, np.float64)
        assert calls[:3] == [4, 2, 1]
    else:
        with pytest.raises(st.CuFFTError, match="CUFFT_INVALID_PLAN"):
            gd.deconvolve(cp.asarray(y), cp.asarray(h), batch_size=4, **kw)
        assert calls.count(4) == 1 and 2 not in calls


@pytest.mark.gpu
@SIM_ONLY
@pytest.mark.parametrize("method,mode,alpha", [("fft", "circular", 0.0), ("fft", "same", 0.3),
                                               ("fft_approx", "valid", 0.0)])
def test_closed_form_peak_memory_within_the_estimate(rng, sim, method, mode, alpha):
    # Plans left out (a cache of size 0 keeps none in the simulator): the estimate
    # counts one work area, added here; the arrays must fit in the rest.
    cp, st = sim
    cp.fft.config.get_plan_cache().set_size(0)
    B, shape = 4, (128, 96)
    h = np.outer([1.0, 2.0, 1.0], [1.0, 3.0, 3.0, 1.0]).astype(np.float32)
    y = rng.standard_normal((B,) + shape).astype(np.float32)
    kw = dict(mode=mode, boundary="periodic" if mode != "valid" else "zero", method=method, lam=0.1,
              reg="laplacian", alpha=alpha)
    z = rng.standard_normal((B,) + input_shape(mode, shape, h.shape)).astype(np.float32) if alpha else None
    yd, hd, zd = cp.asarray(y), cp.asarray(h), None if z is None else cp.asarray(z)
    gd.deconvolve(yd, hd, z=zd, batch_size=B, **kw)  # spectra cached, kernels compiled
    st.MEMORY.reset_peak()
    base = st.MEMORY.live
    x = gd.deconvolve(yd, hd, z=zd, batch_size=B, **kw)
    prob = dv.build_problem(y, h, lam=0.1, reg="laplacian", mode=mode, boundary=kw["boundary"], alpha=alpha,
                            z=z)
    work_area = 8 * _memory._half(prob.A.grid_shape)  # one complex64 spectrum
    extra = st.MEMORY.peak - base - x.nbytes
    assert extra + work_area <= 1.01 * B * _memory.per_image_bytes(prob, method), \
        (extra, work_area, _memory.per_image_bytes(prob, method))


@pytest.mark.gpu
@SIM_ONLY
@pytest.mark.parametrize("reverse", [False, True])
def test_launchers_with_grids_smaller_than_the_work(rng, monkeypatch, sim, reverse):
    # Caps far below the work: every grid-stride loop, image loop and partial fold runs.
    cp, st = sim
    st.CONFIG["reverse_blocks"] = reverse
    monkeypatch.setattr(_cuda.launch, "MAX_BLOCKS", 3)
    monkeypatch.setattr(_cuda.launch, "MAX_GRID_Y", 2)
    monkeypatch.setattr(_cuda.launch, "REDUCE_BLOCKS", 4)
    monkeypatch.setattr(_cuda.launch, "MAX_PARTIALS", 2)
    before = st.STATS.launches.copy()
    x = rng.standard_normal((5, 23, 18))
    h = rng.uniform(0.2, 1.0, (4, 5))
    for mode, boundary in (("full", "reflect"), ("same", "symmetric"), ("valid", "zero")):
        assert_close(gd.convolve(cp.asarray(x), cp.asarray(h), mode, boundary=boundary),
                     gd.convolve(x, h, mode, boundary=boundary), np.float64)
    kw = dict(mode="valid", lam=[0.1, 0.2, 0.3, 0.4, 0.5], reg="laplacian", method="cg", rtol=1e-10,
              return_info=True)
    y = gd.convolve(x, h, "valid")
    (xh, ih), (xd, idv) = gd.deconvolve(y, h, **kw), gd.deconvolve(cp.asarray(y), cp.asarray(h), **kw)
    assert idv.converged.all()
    assert np.abs(idv.iterations - ih.iterations).max() <= 2
    assert_close(xd, xh, np.float64, factor=1e3)
    launched = st.STATS.launches - before
    for kind in ("dot_partial", "cg_update_xr", "sum_partials", "crop"):
        assert any(kind in name for name in launched), (kind, launched)


@pytest.mark.gpu
@SIM_ONLY
def test_the_stand_in_is_strict(sim):
    cp, st = sim
    import cupyx

    a = cp.arange(6.0)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(6)
    assert isinstance(a.sum(), cp.ndarray) and a.sum().ndim == 0  # reductions stay on the device
    st.set_memory_limit(st.MEMORY.live + 1000)
    with pytest.raises(st.OutOfMemoryError):
        cp.empty(2000, dtype=cp.uint8)
    free, total = cp.cuda.Device().mem_info
    assert 0 <= free <= total == st.MEMORY.limit
    with pytest.warns(UserWarning, match="allow_synchronize will be removed"):
        with cupyx.allow_synchronize(False), pytest.raises(cupyx.DeviceSynchronized):
            float(a[0])
    mod = cp.RawModule(code="extern \"C\" __global__ void k(double* x, long long n, int f) "
                            "{ for (long long i = threadIdx.x; i < n; i += blockDim.x) x[i] += f; }")
    k = mod.get_function("k")
    k((1,), (32,), (a, np.int64(6), np.int32(2)))
    assert a.get().tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    bad_args = ((a, 6, np.int32(2)), (a, np.int32(6), np.int32(2)),
                (a.astype(cp.float32), np.int64(6), np.int32(2)), (None, np.int64(6), np.int32(1)))
    for bad in bad_args:
        with pytest.raises(executor.LaunchError):
            k((1,), (32,), bad)
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        k((1,), (32,), (np.zeros(6), np.int64(6), np.int32(1)))
    with pytest.raises(executor.LaunchError, match="grid dimension y"):
        k((1, 70000), (32,), (a, np.int64(6), np.int32(1)))


@pytest.mark.gpu
@SIM_ONLY
def test_the_stand_in_counts_the_passes_cupy_would_launch(sim):
    cp, st = sim
    big = st.SMALL_PASS + 1
    a = cp.ones((2, big))
    cases = [
        (lambda: a * 2, 1, 0),  # a ufunc: one elementwise kernel
        (lambda: cp.multiply(a, 2, out=a), 1, 0),  # in place too
        (lambda: a.reshape(-1), 0, 0),  # views launch nothing
        (lambda: cp.moveaxis(a, 0, 1), 0, 0),
        (lambda: a.astype(a.dtype, copy=False), 0, 0),
        (lambda: a.astype(cp.float32), 1, 0),  # a cast is a copy
        (lambda: a.sum(axis=1), 0, 1),  # a reduction to per-image values: small
        (lambda: a[:, :3] + 1, 0, 1),
        (lambda: a.__setitem__((0, slice(None)), 0.0), 1, 0),  # a slice assignment: a copy kernel
        (lambda: a[:, cp.asarray(np.arange(big))], 1, 0),  # integer-array indexing: a gather
    ]
    for i, (fn, passes, small) in enumerate(cases):
        st.STATS.reset()
        fn()
        assert (st.STATS.array_passes, st.STATS.small_passes) == (passes, small), f"case {i}"


NEEDS_CXX = pytest.mark.skipif(executor.compiler() is None,
                               reason="no C++ compiler: the simulator cannot build kernels")


def _simulated(cmd, **env):
    env = dict(os.environ, GPU_DECONV_SIMULATOR="1", PYTHONPATH=str(ROOT), **env)
    env.pop(_cuda.ENV_DISABLE, None)
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=900)


@pytest.mark.skipif(SIMULATOR, reason="this starts the simulated session; inside it, nothing to do")
@NEEDS_CXX
def test_gpu_suite_passes_on_the_simulator_in_a_child_session():
    # tests/test_gpu.py through the real launchers and kernels, the pass budget, and the tests above.
    res = _simulated(["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                      str(ROOT / "tests" / "test_gpu.py"), str(ROOT / "tests" / "test_gpu_budget.py"),
                      str(Path(__file__))])
    tail = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    last = res.stdout.strip().splitlines()[-1]
    assert " passed" in last and not re.search(r"\d+ (failed|error)", last), tail
    # the only skips: a second GPU and compute-sanitizer
    skips = [ln for ln in res.stdout.splitlines() if ln.startswith("SKIPPED")]
    assert all("two GPUs" in s or "compute-sanitizer" in s for s in skips), skips


@pytest.mark.simulator
@pytest.mark.skipif(SIMULATOR, reason="this starts the simulated session; inside it, nothing to do")
@NEEDS_CXX
def test_gpu_suite_with_reversed_blocks_and_os_thread_blocks():
    # Blocks (and threads) in reverse order: a kernel that relies on an order fails.
    res = _simulated(["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-x",
                      str(ROOT / "tests" / "test_gpu.py")], GPU_DECONV_SIMULATOR_REVERSE="1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # Every block on blockDim OS threads meeting at a real barrier.
    res = _simulated(["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-x",
                      f"{Path(__file__)}::test_launchers_with_grids_smaller_than_the_work"],
                     GPU_DECONV_SIMULATOR_THREADS="pool")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


@NEEDS_CXX
def test_gpu_check_script_runs_on_the_simulator(tmp_path):
    script = str(ROOT / "benchmarks" / "gpu_check.py")
    res = _simulated([script, "--no-suite"], OUT=str(tmp_path))
    report = (tmp_path / "gpu_check.md").read_text()  # $OUT/gpu_check.md without --out
    assert res.returncode == 0, res.stdout + res.stderr + report[-3000:]
    assert "ALL CHECKS PASSED" in report and "SIMULATOR RUN" in report
    rows = [ln for ln in report.splitlines() if ln.endswith("| ok |")]
    # modules x precisions, then per precision: pad/fold, crop/mask/embed (plain and scaled),
    # spectral & multichannel, the CG kernels (and their per-image scalars), stencil_normal
    # (every boundary, 1-3 axes)
    per_dtype = 2 * 5 * 3 + 5 * 3 + 6 + 4 * 3 + 1 + 5 * 3
    assert len(rows) == 2 * len(_cuda.modules.MODULES) + 2 * per_dtype, len(rows)
    assert "FAILED" not in report
    assert "one PCG iteration" in report and "NumPy path" in report  # the timing code ran (tiny sizes)
