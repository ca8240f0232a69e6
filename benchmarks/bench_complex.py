"""Complex data vs real data of the same shape, on the FFT-bound paths (issue 15).

Kinds: ``real`` (real x, h: the rfft path), ``cdata`` (complex x, real h: full FFTs in convolve,
the real/imaginary split in deconvolve), ``ckernel`` (complex x and h: full FFTs everywhere).
Paths: ``convolve`` (same), the circular closed form (``deconvolve(method="fft")``, its filter
cached), and one CG iteration of the valid problem (``deconvolve(method="cg", maxiter=1)``,
unpreconditioned, so that the preconditioner's set-up is not timed). Target: complex at most
2.2x the real time. 512^2 float64 (quick: 128^2).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _bench_common import kernel, random_images

import gpu_deconv as gd

KINDS = ("real", "cdata", "ckernel")


def _case(kind, n, to_xp):
    rng = np.random.default_rng(0)
    x = random_images((n, n), np.float64)
    h = kernel(15, np.float64)
    if kind != "real":
        x = x + 1j * random_images((n, n), np.float64, seed=1)
    if kind == "ckernel":
        h = h * np.exp(1j * rng.uniform(0, 2 * np.pi, h.shape))
    return to_xp(x), to_xp(h)


@pytest.fixture
def n(quick):
    return 128 if quick else 512


@pytest.mark.parametrize("kind", KINDS)
def test_convolve(benchmark, run, to_xp, n, kind):
    x, h = _case(kind, n, to_xp)
    benchmark.group = f"complex convolve same {n}^2"
    benchmark.extra_info.update(kind=kind, path="convolve")
    run(lambda: gd.convolve(x, h, "same"))


@pytest.mark.parametrize("kind", KINDS)
def test_closed_form(benchmark, run, to_xp, n, kind):
    y, h = _case(kind, n, to_xp)
    benchmark.group = f"complex closed form circular {n}^2"
    benchmark.extra_info.update(kind=kind, path="fft")
    run(lambda: gd.deconvolve(y, h, mode="circular", lam=1e-3, reg="laplacian", method="fft"))


@pytest.mark.parametrize("kind", KINDS)
def test_cg_iteration(benchmark, run, to_xp, n, kind):
    y, h = _case(kind, n, to_xp)
    benchmark.group = f"complex one CG iteration valid {n}^2"
    benchmark.extra_info.update(kind=kind, path="cg1")

    def one():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gd.ConvergenceWarning)
            return gd.deconvolve(y, h, mode="valid", lam=1e-3, reg="laplacian", method="cg", maxiter=1,
                                 precondition=False)

    run(one)
