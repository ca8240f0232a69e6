"""Chunked solves (deconvolve(batch_size=...)) and the out-of-memory retry, on the CPU."""

import math

import numpy as np
import pytest

import gpu_deconv as gd
from gpu_deconv import _memory
from gpu_deconv.solvers import deconvolve as dv
from gpu_deconv.solvers.problem import solve_in_chunks

from conftest import assert_close


# ------------------------------------------------------------- validation
@pytest.mark.parametrize("good", [None, "auto", 1, 7, np.int64(3)])
def test_batch_size_accepts(good):
    assert _memory.check_batch_size(good) == good


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "big", "AUTO", [2], np.float64(2.0)])
def test_batch_size_rejects_with_its_name(bad):
    with pytest.raises(ValueError, match="batch_size") as err:
        _memory.check_batch_size(bad)
    assert repr(bad) in str(err.value)
    with pytest.raises(ValueError, match="batch_size"):
        gd.deconvolve(np.ones((2, 8)), np.array([1.0, 0.5]), lam=0.1, batch_size=bad)


# ------------------------------------------------------- chunks == whole
def _compare(whole, chunked, dtype=np.float64):
    (x1, i1), (x2, i2) = whole, chunked
    assert_close(x2, x1, dtype, factor=10)
    assert i1.method == i2.method and i1.rtol == i2.rtol and i1.preconditioned == i2.preconditioned
    np.testing.assert_array_equal(i2.iterations, i1.iterations)
    for key in ("converged", "breakdown", "stagnated"):
        np.testing.assert_array_equal(getattr(i2, key), getattr(i1, key), err_msg=key)
    np.testing.assert_allclose(i2.residual, i1.residual, rtol=1e-6, atol=1e-14)
    assert len(i2.history) == len(i1.history)
    for h1, h2 in zip(i1.history, i2.history):
        np.testing.assert_allclose(h2, h1, rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_chunks_match_whole_batch_cg(rng, batch_size):
    y = rng.standard_normal((5, 14, 13))
    h = rng.uniform(0, 1, (4, 3))
    lam = [1e-3, 1e-2, 3e-2, 1e-1, 5e-3]
    kw = dict(mode="valid", lam=lam, reg="laplacian", return_info=True, rtol=1e-8)
    _compare(gd.deconvolve(y, h, **kw), gd.deconvolve(y, h, batch_size=batch_size, **kw))


@pytest.mark.parametrize("batch_size", [1, 2])
def test_chunks_match_whole_batch_per_image_kernels_prox_x0(rng, batch_size):
    # Per-image kernels (the operator is rebuilt per chunk), a proximal term, a start, a batch of 2x2.
    y = rng.standard_normal((2, 2, 12, 11))
    hs = rng.uniform(0, 1, (2, 2, 3, 3))
    z = rng.standard_normal((2, 2, 12, 11))
    x0 = rng.standard_normal((12, 11))
    kw = dict(mode="same", boundary="reflect", lam=1e-2, alpha=[[0.1, 0.0], [0.3, 0.2]], z=z, x0=x0,
              ndim=2, return_info=True, rtol=1e-8)
    _compare(gd.deconvolve(y, hs, **kw), gd.deconvolve(y, hs, batch_size=batch_size, **kw))


@pytest.mark.parametrize("mode,boundary,method", [("circular", "periodic", "fft"),
                                                  ("same", "symmetric", "dct"),
                                                  ("full", "zero", "fft_approx")])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_chunks_match_whole_batch_closed_forms(rng, mode, boundary, method, batch_size):
    y = rng.standard_normal((3, 16, 15)).astype(np.float32)
    h = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16
    kw = dict(mode=mode, boundary=boundary, method=method, lam=[1e-2, 1e-1, 1.0], reg="laplacian",
              return_info=True)
    whole = gd.deconvolve(y, h, **kw)
    chunked = gd.deconvolve(y, h, batch_size=batch_size, **kw)
    assert chunked[0].dtype == np.float32
    _compare(whole, chunked, np.float32)
    x_plain = gd.deconvolve(y, h, batch_size=batch_size, **{**kw, "return_info": False})
    assert_close(x_plain, whole[0], np.float32, factor=10)


def test_auto_on_the_cpu_is_the_whole_batch(rng):
    y = rng.standard_normal((3, 10, 10))
    h = np.ones((3, 3)) / 9
    x1 = gd.deconvolve(y, h, lam=0.1, mode="circular")
    x2 = gd.deconvolve(y, h, lam=0.1, mode="circular", batch_size="auto")
    np.testing.assert_array_equal(x1, x2)


# ------------------------------------------------------------ estimates
def _problem(shape, k, mode="valid", dtype=np.float32, B=4):
    y = np.zeros((B,) + shape, dtype=dtype)
    return dv.build_problem(y, np.ones(k), lam=1e-3, reg="laplacian", mode=mode, dtype=dtype)


def test_per_image_estimates_scale_with_the_image():
    small = _problem((64, 64), (5, 5))
    big = _problem((256, 256), (5, 5))
    for method in ("cg", "fft", "dct", "fft_approx"):
        a, b = _memory.per_image_bytes(small, method), _memory.per_image_bytes(big, method)
        assert 0 < a < b
        assert 8 < b / a < 24, (method, b / a)  # ~16x the pixels
    cg = _memory.per_image_bytes(big, "cg")
    assert cg > _memory.per_image_bytes(big, "fft")
    assert _memory.per_image_bytes(big, "cg", precondition=False) < cg
    f64 = _problem((256, 256), (5, 5), dtype=np.float64)
    assert _memory.per_image_bytes(f64, "cg") > 1.9 * _memory.per_image_bytes(big, "cg") * 0.99


def test_auto_chunk_against_a_memory_budget():
    from gpu_deconv._memory_model import from_problem

    prob = _problem((128, 128), (7, 7), B=10)
    fixed, per = from_problem(prob, "cg")  # the measured model (tests/test_memory_model.py)
    assert _memory.auto_chunk(prob, "cg", free_bytes=10**15) == 10
    assert _memory.auto_chunk(prob, "cg", free_bytes=0) == 1
    out = 10 * math.prod(prob.n) * 4
    free = (fixed + 3 * per + out) / _memory.SAFETY + 1
    assert _memory.auto_chunk(prob, "cg", free_bytes=free) == 3
    assert _memory.auto_chunk(prob, "cg", free_bytes=free - 2 * per / _memory.SAFETY) == 1


# ----------------------------------------------------------------- retry
class TooBig(Exception):
    """Stands for cupy's OutOfMemoryError in these CPU tests."""


def _limited(limit, exc=MemoryError):
    """A real worker that fails whenever it is handed more than `limit` items."""
    seen = []

    def work(start, stop):
        seen.append((start, stop))
        if stop - start > limit:
            raise exc(f"{stop - start} items do not fit")
        return list(range(start, stop))

    return work, seen


@pytest.mark.parametrize("limit,chunk", [(1, 8), (3, 8), (3, 2), (8, 8), (5, 100)])
def test_retry_halves_until_it_fits(limit, chunk):
    work, seen = _limited(limit)
    retries = []
    parts = _memory.run_chunks(work, 11, chunk, retry_on=(MemoryError,),
                               on_retry=lambda exc, size: retries.append((str(exc), size)))
    assert [s for s, _, _ in parts] == sorted(s for s, _, _ in parts)
    assert sum((r for _, _, r in parts), []) == list(range(11))
    assert all(stop - start <= limit for start, stop, _ in parts)
    assert all(size >= 1 for _, size in retries)
    assert len(retries) == sum(1 for a, b in seen if b - a > limit)


def test_retry_takes_the_exception_types_it_is_given():
    work, _ = _limited(2, TooBig)
    parts = _memory.run_chunks(work, 6, 6, retry_on=(TooBig,))
    assert [r for _, _, r in parts] == [[0, 1], [2, 3], [4, 5]]
    work, seen = _limited(2, TooBig)
    with pytest.raises(TooBig):  # not in retry_on: no retry
        _memory.run_chunks(work, 6, 6, retry_on=(MemoryError,))
    assert seen == [(0, 6)]
    work, seen = _limited(2, TooBig)
    with pytest.raises(TooBig):
        _memory.run_chunks(work, 6, 6)
    assert seen == [(0, 6)]


def test_retry_gives_up_at_one_item():
    work, seen = _limited(0)
    with pytest.raises(MemoryError, match="1 items"):
        _memory.run_chunks(work, 4, 4, retry_on=(MemoryError,))
    assert seen == [(0, 4), (0, 2), (0, 1)]


def test_solve_in_chunks_retries_a_real_solve(rng):
    # The chunk driver of deconvolve with a solve that runs out of "memory" above 2 images.
    y = rng.standard_normal((5, 12, 12))
    h = np.ones((3, 3)) / 9
    prob = dv.build_problem(y, h, lam=0.05, mode="circular")
    calls = []

    def solve(p):
        calls.append(p.B)
        if p.B > 2:
            raise MemoryError("out of memory")
        return dv._solve_closed(p, "fft")[0], None

    x, info = solve_in_chunks(prob, "fft", 5, solve, retry_on=(MemoryError,))
    assert calls == [5, 3, 2, 2, 1] and info is None
    want = gd.deconvolve(y, h, lam=0.05, mode="circular")
    assert_close(x, want, np.float64)


def _traced_peak_per_image(f, unknown_bytes):
    # after a first, untraced call (imports and caches that a warm process already holds)
    from gpu_deconv._memory_model import host_peak_bytes
    return host_peak_bytes(f)[0] / unknown_bytes


@pytest.mark.filterwarnings("ignore::gpu_deconv.ConvergenceWarning")
@pytest.mark.parametrize("method,budget", [("cg", 8.5), ("fft", 3.0), ("dct", 3.0)])
def test_host_peak_per_image_of_a_shared_kernel_batch(rng, method, budget):
    # 8 images, one kernel, one lam: kernel-only parts (filters, preconditioner
    # blocks) are built once for the batch, CG keeps 5 image-sized vectors and
    # each operator apply at most 3 more. Measured 7.99 (cg), 2.26, 2.27 at
    # 8 x 512^2; before sharing and in-place work: 16.2, 3.1, 3.5.
    from gpu_deconv.data import gaussian_kernel
    h = gaussian_kernel(15, 2.5)
    B, n = 8, 512
    kw = {"cg": dict(mode="valid", maxiter=3), "fft": dict(mode="circular"),
          "dct": dict(mode="same", boundary="symmetric")}[method]
    m = n - 14 if method == "cg" else n
    y = rng.random((B, m, m))
    peak = _traced_peak_per_image(lambda: gd.deconvolve(y, h, lam=1e-2, reg="laplacian", method=method, **kw),
                                  B * n * n * 8)
    assert peak <= budget, peak
