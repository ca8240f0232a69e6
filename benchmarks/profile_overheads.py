"""Where the time goes beyond the FFTs: cProfile of the benchmark's key calls (CPU).

Cases: ``closed`` (circular Tikhonov 1024^2, uncached and cached), ``valid``
(exact valid-mode solve on a 512^2 unknown, band PCG), ``conv`` (convolve 2048^2
float32, 31 x 31, every mode). For each: the total time, the time inside
scipy.fft (pocketfft's C entry points), and the top functions by own time.

Usage::

    python benchmarks/profile_overheads.py                 # all cases, float64 and float32
    python benchmarks/profile_overheads.py --only valid --top 25
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import DEFAULT_WORKERS, blurred, kernel, random_images, sizes  # noqa: E402

import gpu_deconv as gd  # noqa: E402


def profile(label, fn, repeat, top, setup=None):
    if setup:
        setup()
    fn()  # warm-up
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    for _ in range(repeat):
        if setup:
            setup()
        pr.enable()
        fn()
        pr.disable()
    wall = (time.perf_counter() - t0) / repeat
    st = pstats.Stats(pr)
    total = sum(v[2] for v in st.stats.values()) / repeat  # own time of every function
    fft_own = sum(v[2] for k, v in st.stats.items()
                  if "pocketfft" in k[0] or "_pocketfft" in k[2] or k[2] in ("c2r", "r2c", "c2c", "r2r")
                  ) / repeat
    print(f"\n=== {label}: {wall * 1e3:.1f} ms per call (profiled); pocketfft C calls {fft_own * 1e3:.1f} ms "
          f"({100 * fft_own / total:.0f}% of own time)")
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    lines = s.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    for line in lines[start:start + top + 1]:
        print(line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", choices=("closed", "valid", "conv"))
    p.add_argument("--dtype", action="append", choices=("float32", "float64"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    sz = sizes(args.quick)
    only = args.only or ["closed", "valid", "conv"]
    dtypes = args.dtype or ["float64", "float32"]
    with gd.set_workers(args.workers), scipy.fft.set_workers(args.workers):
        for dtype in dtypes:
            run_cases(sz, only, dtype, args.repeat, args.top)
    return 0


def run_cases(sz, only, dtype, repeat, top):
    if "closed" in only:
        n = sz.closed_n
        _, h, y = blurred((n, n), 15, "circular", dtype)
        kw = dict(mode="circular", lam=1e-2, reg="laplacian")
        profile(f"closed form {n}^2 {dtype}, uncached", lambda: gd.deconvolve(y, h, **kw), repeat, top,
                setup=gd.clear_cache)
        profile(f"closed form {n}^2 {dtype}, cached", lambda: gd.deconvolve(y, h, **kw), repeat, top)
    if "valid" in only:
        n, k = sz.valid_n, sz.valid_k
        _, hv, yv = blurred((n, n), k, "valid", dtype)
        for pc in ("band", "circulant", False):
            kwv = dict(mode="valid", lam=1e-3, reg="laplacian", precondition=pc)
            profile(f"valid solve {n}^2 {dtype}, precondition={pc!r}",
                    lambda kwv=kwv: gd.deconvolve(yv, hv, **kwv), 1, top)
    if "conv" in only and dtype == "float32":
        x = random_images((sz.conv_n, sz.conv_n), np.float32)
        hc = kernel(sz.conv_k, np.float32, sigma=5.0)
        for mode in ("full", "same", "valid", "circular"):
            profile(f"convolve {sz.conv_n}^2 {dtype} {mode}", lambda mode=mode: gd.convolve(x, hc, mode),
                    repeat, top)


if __name__ == "__main__":
    sys.exit(main())
