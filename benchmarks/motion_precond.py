"""PCG iterations and wall time, band vs border preconditioner, same + symmetric.

13-px 30-degree motion line (and a 13 x 13 Gaussian, sigma 2, for reference),
Laplacian, rtol 1e-6, float64, data ``scene`` blurred in the mode + 0.01
Gaussian noise (seed 0). Per (kernel, lam, preconditioner): iterations, the
first call's wall time (with the preconditioner's build; cache cleared) and a
second call's (preconditioner cached).

Usage: ``python benchmarks/motion_precond.py [N ...] [--lam 1e-2,1e-3,1e-4] [--kinds band,border]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gpu_deconv as gd
from gpu_deconv.data import gaussian_kernel, motion_kernel, scene


def run(n, lams, kinds, kernels):
    rows = []
    for kname, h in kernels:
        y = gd.convolve(scene((n, n)), h, "same", boundary="symmetric")
        y = y + 0.01 * np.random.default_rng(0).standard_normal(y.shape)
        for lam in lams:
            kw = dict(mode="same", boundary="symmetric", lam=lam, reg="laplacian", method="cg", maxiter=5000,
                      return_info=True)
            for kind in kinds:
                gd.clear_cache()
                t = time.perf_counter()
                _, info = gd.deconvolve(y, h, precondition=kind, **kw)
                first = time.perf_counter() - t
                t = time.perf_counter()
                _, info = gd.deconvolve(y, h, precondition=kind, **kw)
                again = time.perf_counter() - t
                row = (n, kname, lam, kind, int(info.iterations), first, again)
                rows.append(row)
                print(f"{n:4d} {kname:<8s} lam {lam:<6g} {kind:<7s} it {row[4]:4d}  first {first:6.2f} s  "
                      f"cached {again:6.2f} s", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="*", type=int, default=[192, 512])
    ap.add_argument("--lam", default="1e-2,1e-3,1e-4")
    ap.add_argument("--kinds", default="band,border")
    ap.add_argument("--gaussian", action="store_true", help="also the 13 x 13 Gaussian")
    a = ap.parse_args(argv)
    kernels = [("motion", motion_kernel(13, 30))]
    if a.gaussian:
        kernels.append(("gauss", gaussian_kernel(13, 2.0)))
    for n in a.n:
        run(n, [float(v) for v in a.lam.split(",")], a.kinds.split(","), kernels)


if __name__ == "__main__":
    main()
