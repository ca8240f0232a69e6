"""Solvers suite: closed forms (FFT, DCT), PCG vs plain CG, kernel estimation, multi-channel.

Full sizes: closed forms on 1024^2; the exact valid-mode solve on a 512^2 unknown
(15 x 15 Gaussian, sigma 2.5, lam 1e-3, Laplacian); motion blur (13 px, 30 degrees) on
512^2 in valid and same + symmetric; kernel estimation from a 512^2
pair (15 x 15 taps); multi-channel 4 images x 32 channels of 256^2, 9 x 9 filters.
``extra_info`` carries iterations, residual and convergence of the CG solves.
"""

from __future__ import annotations

import numpy as np
import pytest
from _bench_common import blurred, kernel, random_images, to_numpy

import gpu_deconv as gd
from gpu_deconv.data import scene

DTYPES = ("float32", "float64")


# ------------------------------------------------------------ closed forms
@pytest.mark.parametrize("cached", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("method", ["fft", "dct"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_closed_form(benchmark, run, to_xp, sz, dtype, method, cached):
    n = sz.closed_n
    if method == "fft":
        _, h, y = blurred((n, n), 15, "circular", dtype)
        kw = dict(mode="circular", lam=1e-2, reg="laplacian")
    else:
        x = scene((n, n)).astype(dtype)
        h = kernel(15, dtype)
        y = gd.convolve(x, h, "same", boundary="symmetric")
        kw = dict(mode="same", boundary="symmetric", lam=1e-2, reg="laplacian")
    y, h = to_xp(y), to_xp(h)
    _, info = gd.deconvolve(y, h, return_info=True, **kw)
    assert info.method == method
    benchmark.group = f"closed form {method} {n}^2 {dtype}"
    benchmark.extra_info.update(method=method, n=n, dtype=dtype, cached=cached)
    run(lambda: gd.deconvolve(y, h, **kw), setup=None if cached else gd.clear_cache)


# ------------------------------------------------------------ PCG vs CG
PRECONDITIONERS = {"band": "band", "circulant": "circulant", "plain": False}


@pytest.mark.parametrize("pc", list(PRECONDITIONERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_valid_solve(benchmark, run, to_xp, sz, dtype, pc):
    """Exact valid-mode Tikhonov solve to rtol=1e-6: band PCG, circulant PCG, plain CG."""
    n, k = sz.valid_n, sz.valid_k
    _, h, y = blurred((n, n), k, "valid", dtype)
    y, h = to_xp(y), to_xp(h)
    kw = dict(mode="valid", lam=1e-3, reg="laplacian", precondition=PRECONDITIONERS[pc])
    benchmark.group = f"valid solve {n}^2 {dtype}"
    _, info = run(lambda: gd.deconvolve(y, h, return_info=True, **kw), budget=2.0)
    it = int(info.iterations)
    benchmark.extra_info.update(
        n=n, k=k, dtype=dtype, precondition=pc, iterations=it, residual=float(info.residual),
        converged=bool(info.converged), stagnated=bool(info.stagnated),
    )
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["time_per_iteration_s"] = benchmark.stats.stats.min / max(it, 1)


# ------------------------------------------------------------ motion blur (PCG's hard case)
@pytest.mark.parametrize("pc", ["band", "border", "plain"])
@pytest.mark.parametrize("lam", [1e-3, 1e-4])
@pytest.mark.parametrize("mode", ["valid", "same+symmetric"])
def test_motion_solve(benchmark, run, to_xp, sz, mode, lam, pc):
    """13-px 30-degree motion line (no axis symmetry, sinc near-zeros), Laplacian, rtol 1e-6, float64.

    ``same`` + ``symmetric`` has no DCT closed form for this kernel, so both
    modes are PCG problems; the issue's targets are <= 40 / <= 100 iterations
    at lam 1e-3 / 1e-4. ``border`` (exact solves on blocks along the faces) is
    timed with its blocks cached (built once per kernel, lam and shape; the
    build is timed by ``benchmarks/motion_precond.py``); it exists for
    ``same`` + ``symmetric`` only.
    """
    from gpu_deconv.data import motion_kernel
    if pc == "border" and mode == "valid":
        pytest.skip("border blocks are built for same + symmetric only (valid: the band model)")
    n = sz.valid_n
    h = motion_kernel(13, 30)
    m, bd = ("valid", "zero") if mode == "valid" else ("same", "symmetric")
    shape = (n + 12, n + 12) if m == "valid" else (n, n)
    y = gd.convolve(scene(shape), h, m, boundary=bd)
    y = y + 0.01 * np.random.default_rng(1).standard_normal(y.shape)
    y, h = to_xp(y), to_xp(h)
    kw = dict(mode=m, boundary=bd, lam=lam, reg="laplacian", method="cg", maxiter=5000,
              precondition=PRECONDITIONERS.get(pc, pc))
    benchmark.group = f"motion solve {mode} {n}^2 lam {lam:g}"
    _, info = run(lambda: gd.deconvolve(y, h, return_info=True, **kw), budget=2.0)
    benchmark.extra_info.update(n=n, mode=mode, lam=lam, precondition=pc, iterations=int(info.iterations),
                                residual=float(info.residual), converged=bool(info.converged))


# ------------------------------------------------------------ kernel estimation
@pytest.mark.parametrize("mode", ["valid", "circular"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_estimate_kernel(benchmark, run, to_xp, sz, dtype, mode):
    n, k = sz.kest_n, sz.kest_k
    x, h, y = blurred((n, n), k, mode, dtype, noise=0.0)
    x, y = to_xp(x), to_xp(y)
    benchmark.group = f"kernel estimation {n}^2 {k}x{k} {dtype}"
    benchmark.extra_info.update(n=n, k=k, dtype=dtype, mode=mode)
    hk = run(lambda: gd.estimate_kernel(x, y, (k, k), mode=mode, lam=1e-8))
    benchmark.extra_info["kernel_rel_err"] = float(
        np.linalg.norm(to_numpy(hk) - h) / np.linalg.norm(h))


# ------------------------------------------------------------ multi-channel
@pytest.mark.parametrize("dtype", DTYPES)
def test_multichannel(benchmark, run, to_xp, sz, dtype):
    B, C, n, k = sz.mc_batch, sz.mc_channels, sz.mc_n, sz.mc_k
    y = to_xp(random_images((B, n, n), dtype, seed=1))
    d = to_xp(random_images((C, k, k), dtype, seed=2))
    z = to_xp(random_images((B, C, n, n), dtype, seed=3))
    benchmark.group = f"multichannel {B}x{C}x{n}^2 {dtype}"
    benchmark.extra_info.update(batch=B, channels=C, n=n, k=k, dtype=dtype)
    out = run(lambda: gd.solve_multichannel(y, d, 0.5, z))
    assert out.shape == (B, C, n, n)


# ------------------------------------------------------------ solver geometries (issue 3)
#: (label, batch, spatial shape, kernel edge); quick mode shrinks them.
GEOMETRIES = {
    "512^2": ((), (512, 512), 15),
    "2048^2": ((), (2048, 2048), 15),
    "16x512^2": ((16,), (512, 512), 15),
    "128^3": ((), (128, 128, 128), 7),
}
QUICK_GEOMETRIES = {
    "512^2": ((), (64, 64), 7),
    "2048^2": ((), (128, 128), 7),
    "16x512^2": ((4,), (64, 64), 7),
    "128^3": ((), (24, 24, 24), 5),
}


def _problem(batch, shape, k, mode, dtype):
    x = scene(shape)
    h = kernel(k, ndim=len(shape), sigma=k / 6.0)
    y = gd.convolve(x, h, mode, boundary="symmetric" if mode == "same" else "zero")
    y = y + 0.01 * np.random.default_rng(0).standard_normal(y.shape)
    if batch:
        y = np.broadcast_to(y, batch + y.shape) + 0.001 * np.random.default_rng(1).standard_normal(
            batch + y.shape)
    return h.astype(dtype), np.ascontiguousarray(y, dtype=dtype)


@pytest.mark.parametrize("solver", ["fft", "dct", "pcg-band", "pcg-circulant", "cg-plain"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_solver_geometry(benchmark, run, to_xp, quick, dtype, geometry, solver):
    """Closed forms and (P)CG at 512^2, 2048^2, a batch of 16 x 512^2 and a 128^3 volume.

    The (P)CG rows solve the valid-mode problem (lam 1e-3, Laplacian) to rtol 1e-6 and
    report iterations; plain CG runs only where a round takes seconds (512^2 and the batch).
    """
    batch, shape, k = (QUICK_GEOMETRIES if quick else GEOMETRIES)[geometry]
    if solver == "cg-plain" and (np.prod(shape) >= 2048**2 or len(shape) == 3):
        # About 250 iterations of a 2048^2 / 128^3 operator: minutes per round.
        pytest.skip("plain CG is timed at 512^2 and on the batch only (minutes per round here)")
    mode = {"fft": "circular", "dct": "same"}.get(solver, "valid")
    h, y = _problem(batch, shape, k, mode, dtype)
    y, h = to_xp(y), to_xp(h)
    kw = dict(mode=mode, lam=1e-3, reg="laplacian")
    if solver == "dct":
        kw["boundary"] = "symmetric"
    if solver.startswith(("pcg", "cg")):
        kw["precondition"] = {"pcg-band": "band", "pcg-circulant": "circulant", "cg-plain": False}[solver]
    benchmark.group = f"solver {geometry} {dtype}"
    benchmark.extra_info.update(geometry=geometry, dtype=dtype, solver=solver, kernel=k)
    _, info = run(lambda: gd.deconvolve(y, h, return_info=True, **kw), budget=2.0)
    benchmark.extra_info.update(method=info.method, iterations=int(np.max(info.iterations)),
                                converged=bool(np.all(info.converged)))
