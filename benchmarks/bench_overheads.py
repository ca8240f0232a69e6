"""Micro-benchmarks that isolate overheads beyond the FFTs (things the package can fix).

(a) ``convolve`` (public function), ``ConvolutionOperator.forward`` and the
    bare FFT floor -- one ``rfftn`` and one ``irfftn`` on the operator's own
    grid with the transfer function precomputed -- for every mode (and
    ``same`` with a symmetric boundary, which adds the padding P).
(b) One PCG iteration of the exact valid-mode solve: ``deconvolve`` with
    ``maxiter=N`` and an unreachable ``rtol`` runs exactly N iterations; the
    per-iteration time ``(t_N - t_1) / (N - 1)`` is compared (``extra_info``)
    with the FFT pairs an iteration must do: two on the data grid (normal
    operator, the regularizer folded into the spectrum) plus, when
    preconditioned, one on the preconditioner's padded grid.
(c) The cached closed form against its floor: ``irfftn(W * rfftn(y))`` with
    the filter W precomputed.

The ratios are in ``extra_info`` (``ratio_to_floor``); ``compare.py --only micro``
prints them as a table.
"""

from __future__ import annotations

import pytest
from _bench_common import (
    best_of,
    blurred,
    closed_form_filter,
    fft_kw,
    fft_module,
    kernel,
    pcg_pairs_floor,
    random_images,
    synced,
)

import gpu_deconv as gd
from gpu_deconv import ConvolutionOperator

DTYPES = ("float32", "float64")


# ------------------------------------------------------------ (a) convolve vs floor
CONV_MODES = {
    "full": ("full", "zero"),
    "same": ("same", "zero"),
    "valid": ("valid", "zero"),
    "circular": ("circular", "zero"),
    "same-symmetric": ("same", "symmetric"),
}


@pytest.mark.parametrize("variant", ["convolve", "operator", "floor"])
@pytest.mark.parametrize("mode", list(CONV_MODES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_convolve_vs_floor(benchmark, run, xp, to_xp, sz, dtype, mode, variant):
    n = sz.micro_n
    m, boundary = CONV_MODES[mode]
    x = to_xp(random_images((n, n), dtype))
    h = to_xp(kernel(15, dtype))
    A = ConvolutionOperator(h, (n, n), m, boundary=boundary)
    G = A.grid_shape
    benchmark.group = f"(a) convolve vs floor {n}^2 {dtype} {mode}"
    benchmark.extra_info.update(n=n, dtype=dtype, mode=mode, grid=list(G), variant=variant)
    if variant == "convolve":
        run(lambda: gd.convolve(x, h, m, boundary=boundary))
    elif variant == "operator":
        run(lambda: A.forward(x))
    else:
        fft, kw = fft_module(xp), fft_kw(xp)
        H = A.spectrum()
        run(lambda: fft.irfftn(fft.rfftn(x, s=G, **kw) * H, s=G, **kw))


# ------------------------------------------------------------ (b) one PCG iteration
PRECONDITIONERS = {"band": "band", "circulant": "circulant", "plain": False}


@pytest.mark.parametrize("pc", list(PRECONDITIONERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_pcg_iteration(benchmark, run, xp, to_xp, sync, sz, dtype, pc):
    n, k, N = sz.valid_n, sz.valid_k, sz.pcg_iters
    _, h, y = blurred((n, n), k, "valid", dtype)
    y, h = to_xp(y), to_xp(h)
    kw = dict(mode="valid", lam=1e-3, reg="laplacian", precondition=PRECONDITIONERS[pc], rtol=1e-30)

    def solve(iters):
        return lambda: gd.deconvolve(y, h, maxiter=iters, return_info=True, **kw)

    pairs, G, Gp = pcg_pairs_floor(xp, h, n, bool(PRECONDITIONERS[pc]))
    # run() synchronizes its timed call itself; best_of needs the sync spelled out.
    t = best_of({"one": synced(solve(1), sync), "floor": synced(pairs, sync)}, repeat=3)
    benchmark.group = f"(b) PCG iteration {n}^2 {dtype}"
    _, info = run(solve(N), budget=2.0)
    assert int(info.iterations) == N
    extra = dict(n=n, dtype=dtype, precondition=pc, iterations=N, data_grid=list(G),
                 precond_grid=list(Gp), setup_plus_one_iteration_s=t["one"], fft_pairs_floor_s=t["floor"])
    if benchmark.stats is not None:
        per_it = (benchmark.stats.stats.min - t["one"]) / (N - 1)
        extra.update(time_per_iteration_s=per_it, ratio_to_floor=per_it / t["floor"])
    benchmark.extra_info.update(extra)


# ------------------------------------------------------------ (c) cached closed form vs floor
@pytest.mark.parametrize("variant", ["deconvolve-cached", "floor"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_closed_form_vs_floor(benchmark, run, xp, to_xp, sz, dtype, variant):
    n = sz.closed_n
    _, h, y = blurred((n, n), 15, "circular", dtype)
    y, h = to_xp(y), to_xp(h)
    kw = dict(mode="circular", lam=1e-2, reg="laplacian")
    benchmark.group = f"(c) closed form vs floor {n}^2 {dtype}"
    benchmark.extra_info.update(n=n, dtype=dtype, variant=variant)
    if variant == "deconvolve-cached":
        run(lambda: gd.deconvolve(y, h, **kw))
    else:
        fft, fkw = fft_module(xp), fft_kw(xp)
        W = closed_form_filter(xp, h, n, kw["lam"])
        run(lambda: fft.irfftn(W * fft.rfftn(y, s=(n, n), **fkw), s=(n, n), **fkw))
