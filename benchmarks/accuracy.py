"""Is Fourier division the least-squares solution? Exact least squares vs Fourier division, per model.

For each model (mode x boundary) the synthetic scene is blurred with that
model, noised, and solved twice with the same regularizer: exactly
(``deconvolve``, method "auto": FFT/DCT closed form or PCG to rtol 1e-10) and
by Fourier division on the grid the data implies (``method="fft_approx"``).
The table gives the relative difference between the two, how much of that
difference lives in the border strip (width k), and each one's error against
the true scene.

Run: ``python benchmarks/accuracy.py [--size 256] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import gpu_deconv as gd
from gpu_deconv.data import gaussian_kernel, scene

MODES = ("full", "same", "valid")
BOUNDARIES = ("zero", "periodic", "symmetric", "reflect", "replicate")


def one_d_full_case():
    """A small 1-D full-mode case: how far is Fourier division on the n + k - 1 grid from least squares?"""
    rows = []
    rng = np.random.default_rng(0)
    h = np.array([1.0, 2.0, 1.5, 0.5])
    for offset in (0.0, 1.0, 3.0):
        x = rng.standard_normal(20) + offset
        y = np.convolve(x, h)
        exact = gd.deconvolve(y, h, lam=1e-2, mode="full", rtol=1e-13)
        approx = gd.deconvolve(y, h, lam=1e-2, mode="full", method="fft_approx")
        rows.append({"signal_mean": offset,
                     "rel_diff": float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))})
    return rows


def run(size=256, k=15, sigma=2.5, lam=1e-3, noise=0.01, seed=0):
    x_true = scene((size, size), seed=seed)
    h = gaussian_kernel(k, sigma)
    rng = np.random.default_rng(seed)
    rows = []
    for mode in MODES:
        for boundary in BOUNDARIES:
            y = gd.convolve(x_true, h, mode, boundary=boundary)
            y = y + noise * rng.standard_normal(y.shape)
            kw = dict(mode=mode, boundary=boundary, lam=lam, reg="laplacian")
            exact, info = gd.deconvolve(y, h, rtol=1e-10, return_info=True, **kw)
            approx = gd.deconvolve(y, h, method="fft_approx", **kw)
            d = approx - exact
            n = exact.shape
            border = np.ones(n, dtype=bool)
            border[tuple(slice(k, s - k) for s in n)] = False
            # The data were made from the scene on the unknown's own grid, in every mode,
            # so x_true is the truth for both solutions.
            tot = float(np.sum(d * d))
            rows.append({
                "mode": mode, "boundary": boundary, "method": info.method,
                "iterations": int(info.iterations),
                "rel_diff": float(np.linalg.norm(d) / np.linalg.norm(exact)),
                "rel_diff_interior": float(np.linalg.norm(d[~border]) / np.linalg.norm(exact[~border])),
                "share_in_border": float(np.sum(d[border] ** 2) / tot) if tot > 0 else 0.0,
                "border_fraction_of_pixels": float(border.mean()),
                "err_exact": float(np.linalg.norm(exact - x_true) / np.linalg.norm(x_true)),
                "err_fourier": float(np.linalg.norm(approx - x_true) / np.linalg.norm(x_true)),
            })
    return rows


def table(rows):
    head = ("| mode | boundary | exact via | Fourier division vs exact (whole / interior) | share of the "
            "difference in the border strip | error vs true scene: exact / Fourier |")
    out = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        e = f"{r['err_exact']:.3f} / {r['err_fourier']:.3f}"
        via = r["method"] + (f" ({r['iterations']} it.)" if r["method"] == "cg" else "")
        out.append(f"| {r['mode']} | {r['boundary']} | {via} | {100 * r['rel_diff']:.2f}% / "
                   f"{100 * r['rel_diff_interior']:.2f}% | {100 * r['share_in_border']:.0f}% "
                   f"(strip = {100 * r['border_fraction_of_pixels']:.0f}% of pixels) | {e} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rows = run(a.size)
    one_d = one_d_full_case()
    print(f"scene {a.size}x{a.size}, 15x15 Gaussian sigma 2.5, noise 0.01, lam 1e-3, Laplacian\n")
    print(table(rows))
    print("\n1-D full mode, h = [1, 2, 1.5, 0.5], n = 20, lam = 1e-2 (Fourier division vs exact):")
    for r in one_d:
        print(f"  signal mean {r['signal_mean']:.0f}: {100 * r['rel_diff']:.2f}% off")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "one_d_full": one_d}, f, indent=2)


if __name__ == "__main__":
    main()
