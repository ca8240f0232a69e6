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

import numpy as np
import pytest
from _bench_common import best_of, blurred, kernel, random_images, synchronizer

import gpu_deconv as gd
from gpu_deconv import ConvolutionOperator

DTYPES = ("float32", "float64")


def fft_module(xp):
    if xp is np:
        import scipy.fft as fft
    else:
        import cupyx.scipy.fft as fft
    return fft


def fft_kw(xp):
    return {"workers": gd.get_workers()} if xp is np else {}


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


def _pairs_floor(xp, fft, kw, n, k, dtype, preconditioned):
    """Callable doing the FFT pairs one iteration must do (multipliers precomputed)."""
    A = ConvolutionOperator(xp.asarray(kernel(k, dtype)), (n, n), "valid")
    G = A.grid_shape
    H = A.spectrum()
    Hc = xp.conj(H)
    R = xp.abs(H)  # stands for lam * sum_i w_i |G_i|^2 on the same grid
    Gp = tuple(int(fft.next_fast_len(n + 2 * (k - 1), real=True)) if xp is np
               else int(fft.next_fast_len(n + 2 * (k - 1))) for _ in range(2))
    Dinv = xp.abs(fft.rfftn(xp.zeros((n, n), dtype=dtype), s=Gp, **kw)) + 1
    v = xp.asarray(random_images((n, n), dtype))
    lo = k - 1

    def pairs():
        X = fft.rfftn(v, s=G, **kw)
        u = fft.irfftn(X * H, s=G, **kw)
        w = xp.zeros_like(u)
        w[lo:n, lo:n] = u[lo:n, lo:n]
        out = fft.irfftn(fft.rfftn(w, s=G, **kw) * Hc + X * R, s=G, **kw)
        if preconditioned:
            out = fft.irfftn(fft.rfftn(out[:n, :n], s=Gp, **kw) * Dinv, s=Gp, **kw)
        return out

    return pairs, G, Gp


@pytest.mark.parametrize("pc", list(PRECONDITIONERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_pcg_iteration(benchmark, run, xp, to_xp, sz, dtype, pc):
    n, k, N = sz.valid_n, sz.valid_k, sz.pcg_iters
    _, h, y = blurred((n, n), k, "valid", dtype)
    y, h = to_xp(y), to_xp(h)
    kw = dict(mode="valid", lam=1e-3, reg="laplacian", precondition=PRECONDITIONERS[pc], rtol=1e-30)
    sync = synchronizer(xp)

    def solve(iters):
        def f():
            out = gd.deconvolve(y, h, maxiter=iters, return_info=True, **kw)
            sync()
            return out
        return f

    pairs, G, Gp = _pairs_floor(xp, fft_module(xp), fft_kw(xp), n, k, dtype, bool(PRECONDITIONERS[pc]))

    def pairs_sync():
        pairs()
        sync()

    t = best_of({"one": solve(1), "floor": pairs_sync}, repeat=3)
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
        A = ConvolutionOperator(h, (n, n), "circular")
        L = ConvolutionOperator(xp.asarray(np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=dtype)),
                                (n, n), "circular")
        H, S = A.spectrum(), L.spectrum()
        W = xp.conj(H) / (xp.abs(H) ** 2 + 1e-2 * xp.abs(S) ** 2)
        run(lambda: fft.irfftn(W * fft.rfftn(y, s=(n, n), **fkw), s=(n, n), **fkw))
