"""The measured memory model (gpu_deconv/_memory_model.py) bounds the simulated device's peak.

The model's coefficients were measured on the simulator (8 x 512^2 and
smaller, one 15 x 15 Gaussian); here it must bound the peak of shapes,
kernels and batches it was not fitted on, in every measured method, cold
(spectra, preconditioner and cuFFT plans built inside the call). The
simulator cases are marked ``gpu`` and run in a child session
(``GPU_DECONV_SIMULATOR=1``, the last test), as tests/test_simulator.py does.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv import _memory_model as mm
from gpu_deconv._padding import input_shape
from gpu_deconv._simulator import executor
from gpu_deconv.solvers import deconvolve as dv

from conftest import SIMULATOR

ROOT = Path(__file__).resolve().parent.parent
SIM_ONLY = pytest.mark.skipif(not SIMULATOR,
                              reason="needs the simulator: GPU_DECONV_SIMULATOR=1 python -m pytest -m gpu")

#: (case, unknown shape, kernel shape, batch, dtype): none of them is a shape or kernel of the fit.
CASES = [
    ("circular", (96, 64), (5, 4), 5, np.float64),
    ("dct", (64, 48), (7, 5), 3, np.float32),
    ("valid", (64, 64), (9, 9), 3, np.float32),
    ("valid", (100, 72), (5, 7), 1, np.float64),
    ("same+sym", (64, 56), (9, 7), 3, np.float32),
    ("full", (48, 40), (7, 7), 2, np.float64),
]

KWARGS = {
    "circular": dict(mode="circular", method="fft"),
    "dct": dict(mode="same", boundary="symmetric", method="dct"),
    "valid": dict(mode="valid", method="cg", maxiter=3),
    "same+sym": dict(mode="same", boundary="symmetric", method="cg", maxiter=3),
    "full": dict(mode="full", method="cg", maxiter=3),
}


def _kernel(kshape, symmetric):
    """A positive kernel of `kshape`, symmetric in each axis when asked (the DCT needs that)."""
    axes = []
    for k in kshape:
        t = np.arange(k) - (k - 1) / 2
        axes.append(np.exp(-(t / (0.4 * k)) ** 2) * (1.0 if symmetric else 1.0 + 0.2 * np.sign(t)))
    h = np.outer(*axes)
    return h / h.sum()


def _problem(rng, case, n, kshape, B, dtype):
    kw = dict(KWARGS[case], lam=1e-2, reg="laplacian")
    h = _kernel(kshape, symmetric=case == "dct").astype(dtype)
    m = input_shape(kw["mode"], n, kshape)
    y = rng.random((B,) + tuple(m)).astype(dtype)
    prob = dv.build_problem(y, h, lam=1e-2, reg="laplacian", mode=kw["mode"],
                            boundary=kw.get("boundary", "zero"))
    return y, h, kw, prob


# ------------------------------------------------------------------ the model alone
def test_every_measured_method_and_precision_has_coefficients():
    keys = {k for k, _ in mm.COEFFS}
    assert keys == {"fft", "dct", "cg-valid", "cg-full", "cg-same-symmetric"}
    assert {s for _, s in mm.COEFFS} == {4, 8}
    assert all(f >= 0 and p > 0 for f, p in mm.COEFFS.values())
    assert mm.MARGIN >= 1.2


@pytest.mark.parametrize("case", sorted(KWARGS))
def test_model_is_affine_in_the_batch_and_counts_the_margin(rng, case):
    y, h, kw, prob = _problem(rng, case, (64, 64), (5, 5), 4, np.float64)
    fixed, per = mm.from_problem(prob, kw["method"])
    assert per > 0 and fixed >= 0
    assert [mm.model_bytes(prob, kw["method"], b) for b in (1, 2, 5)] == [fixed + b * per for b in (1, 2, 5)]
    # at least the margin times the measured per-image coefficient of the work grid
    s = np.dtype(prob.dtype).itemsize
    _, per_w = mm.COEFFS[(mm.method_key(prob, kw["method"]), s)]
    assert per >= mm.MARGIN * per_w * mm.work_values(prob, kw["method"]) * s


def test_method_keys_and_unmeasured_cases(rng):
    y = rng.random((2, 40, 40))
    h = _kernel((5, 5), True)
    same_zero = dv.build_problem(y, h, lam=1e-2, reg="laplacian", mode="same")
    assert mm.method_key(same_zero, "cg") == "cg"
    fixed, per = mm.from_problem(same_zero, "cg")
    # unmeasured CG modes take the largest CG coefficients
    worst = max(p for (k, s), (_, p) in mm.COEFFS.items() if k.startswith("cg-") and s == 8)
    assert per >= mm.MARGIN * worst * mm.work_values(same_zero, "cg") * 8 - 1
    circ = dv.build_problem(y, h, lam=1e-2, mode="circular")
    assert mm.method_key(circ, "fft_approx") == mm.method_key(circ, "fft") == "fft"
    with pytest.raises(ValueError, match="method must be one of .*'nope'"):
        mm.from_problem(circ, "nope")


def test_a_kernel_per_image_shares_nothing(rng):
    y = rng.random((3, 40, 40))
    hs = rng.random((3, 5, 5))
    shared = dv.build_problem(y, hs[0], lam=1e-2, mode="circular")
    own = dv.build_problem(y, hs, lam=1e-2, mode="circular", ndim=2)
    f1, p1 = mm.from_problem(shared, "fft")
    f2, p2 = mm.from_problem(own, "fft")
    assert f2 == 0 and p2 >= f1 + p1 - 1


def test_band_blocks_count_only_where_built(rng):
    y, h, kw, prob = _problem(rng, "valid", (64, 64), (9, 9), 2, np.float64)
    band, _ = mm.from_problem(prob, "cg", "band")
    circ, _ = mm.from_problem(prob, "cg", "circulant")
    assert band > circ


# ------------------------------------------------------------------ against the simulated device
@pytest.mark.gpu
@SIM_ONLY
@pytest.mark.filterwarnings("ignore::gpu_deconv.ConvergenceWarning")
@pytest.mark.parametrize("case,n,kshape,B,dtype", CASES)
def test_model_bounds_the_simulated_peak(rng, case, n, kshape, B, dtype):
    import cupy as cp

    y, h, kw, prob = _problem(rng, case, n, kshape, B, dtype)
    yd, hd = cp.asarray(y), cp.asarray(h)
    call = dict(kw, return_info=True) if kw["method"] == "cg" else kw

    def run():
        out = gd.deconvolve(yd, hd, batch_size=B, **call)
        return out[0] if isinstance(out, tuple) else out

    for cold in (True, False):
        peak, x = mm.device_peak_bytes(run, cold=cold)
        used = peak - x.nbytes
        model = mm.model_bytes(prob, kw["method"], B)
        assert used <= model, (cold, used, model)
    # ... and it is a model, not a blanket: within 3x of the cold peak
    peak, x = mm.device_peak_bytes(run, cold=True)
    assert model <= 3 * (peak - x.nbytes), (model, peak - x.nbytes)


@pytest.mark.gpu
@SIM_ONLY
def test_device_peak_needs_and_reads_the_simulator(rng):
    import cupy as cp

    a = cp.zeros((1000,), dtype=cp.float64)
    peak, out = mm.device_peak_bytes(lambda: cp.ones((3000,), dtype=cp.float32) + a[0], cold=False)
    assert out.shape == (3000,) and peak >= 3000 * 4


def test_device_peak_refuses_without_the_simulator():
    if SIMULATOR:
        pytest.skip("the simulator is installed in this session")
    with pytest.raises(RuntimeError, match="simulator"):
        mm.device_peak_bytes(lambda: None)


def test_host_peak_counts_what_the_call_allocates():
    peak, out = mm.host_peak_bytes(lambda: np.ones(100_000))
    assert out.shape == (100_000,) and 800_000 <= peak < 2 * 800_000


@pytest.mark.skipif(SIMULATOR, reason="this starts the simulated session; inside it, nothing to do")
@pytest.mark.skipif(executor.compiler() is None, reason="no C++ compiler: the simulator cannot build kernels")
def test_model_cases_pass_on_the_simulator_in_a_child_session():
    env = dict(os.environ, GPU_DECONV_SIMULATOR="1", PYTHONPATH=str(ROOT))
    env.pop("GPU_DECONV_DISABLE_KERNELS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(Path(__file__))]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    tail = res.stdout[-3000:] + res.stderr[-2000:]
    assert res.returncode == 0, tail
    last = res.stdout.strip().splitlines()[-1]
    want = len(CASES) + 1
    assert f"{want} passed" in last and "skipped" not in last, tail
