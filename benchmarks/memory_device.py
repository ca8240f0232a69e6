"""Peak memory of ``deconvolve`` per image, host and simulated device, against the estimate and the model.

For a batch of B images (default 8 x 512^2) of one shared 15 x 15 Gaussian
kernel, lam 1e-2, Laplacian, per method:

* ``circular``  closed form, ``method="fft"``;
* ``dct``       closed form, ``same`` + ``symmetric``, ``method="dct"``;
* ``valid``     PCG (band preconditioner), ``method="cg"``;
* ``same+sym``  PCG in ``same`` + ``symmetric`` (its band model is the DCT one);
* ``full``      PCG in ``full``.

CG runs 3 iterations (``maxiter=3``): the buffers are all allocated by then
(6 give the same peaks). Columns, each per image and in units of the unknown
(``prod(n) * itemsize``):

* ``host``        tracemalloc peak of the NumPy path, transfer-function cache empty
                  (:func:`gpu_deconv._memory_model.host_peak_bytes`);
* ``dev cold``    high-water mark of the simulated device's memory above the
                  inputs, less the output, with the transfer-function cache, the
                  cuFFT plans and the pool emptied first;
* ``dev warm``    the same call again (spectra, preconditioner and plans cached);
* ``estimate``    ``gpu_deconv._memory.per_image_bytes`` (the counted estimate that
                  ``batch_size="auto"`` used before the measured model);
* ``model``       :func:`gpu_deconv._memory_model.model_bytes` / B (margin included).

The device is the simulator (``GPU_DECONV_SIMULATOR=1``, set by this script):
its pool reuses every freed block, so a GPU's pool can only hold more.

Usage::

    python benchmarks/memory_device.py                      # 8 x 512^2, float32 and float64
    python benchmarks/memory_device.py --n 128 --batch 1 --json mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ["GPU_DECONV_SIMULATOR"] = "1"
os.environ.setdefault("GPU_DECONV_SIMULATOR_MEMORY", str(16 << 30))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_deconv import _simulator  # noqa: E402

_simulator.install()

import numpy as np  # noqa: E402

import gpu_deconv as gd  # noqa: E402
from gpu_deconv import _memory, _memory_model  # noqa: E402
from gpu_deconv.data import gaussian_kernel  # noqa: E402
from gpu_deconv.solvers import deconvolve as dv  # noqa: E402

#: name -> (deconvolve keywords, data shape from the unknown's edge n and the kernel's k)
CASES = {
    "circular": (dict(mode="circular", method="fft"), lambda n, k: n),
    "dct": (dict(mode="same", boundary="symmetric", method="dct"), lambda n, k: n),
    "valid": (dict(mode="valid", method="cg", maxiter=3), lambda n, k: n - k + 1),
    "same+sym": (dict(mode="same", boundary="symmetric", method="cg", maxiter=3), lambda n, k: n),
    "full": (dict(mode="full", method="cg", maxiter=3), lambda n, k: n + k - 1),
}

LAM = 1e-2
K = 15


def problem(name, n, B, dtype, seed=0):
    """(y, h, keywords, prob) of one case."""
    kw, data_edge = CASES[name]
    h = gaussian_kernel(K, 2.5).astype(dtype)
    m = data_edge(n, K)
    y = np.random.default_rng(seed).random((B, m, m)).astype(dtype)
    kw = dict(kw, lam=LAM, reg="laplacian")
    prob = dv.build_problem(y, h, lam=LAM, reg="laplacian", mode=kw["mode"],
                            boundary=kw.get("boundary", "zero"))
    return y, h, kw, prob


def measure(name, n, B, dtype, host=True):
    """One row: peaks per image in units of the unknown, and the estimate and the model."""
    import cupy as cp

    y, h, kw, prob = problem(name, n, B, dtype)
    unit = n * n * np.dtype(dtype).itemsize
    call = dict(kw, return_info=True) if kw["method"] == "cg" else kw
    row = dict(case=name, n=n, batch=B, dtype=np.dtype(dtype).name)
    if host:
        peak, _ = _memory_model.host_peak_bytes(lambda: gd.deconvolve(y, h, **call))
        row["host"] = peak / (B * unit)
    yd, hd = cp.asarray(y), cp.asarray(h)

    def run():
        out = gd.deconvolve(yd, hd, batch_size=B, **call)
        return out[0] if isinstance(out, tuple) else out

    t0 = time.perf_counter()
    for label, cold in (("dev_cold", True), ("dev_warm", False)):
        peak, x = _memory_model.device_peak_bytes(run, cold=cold)
        row[label] = (peak - x.nbytes) / (B * unit)
        del x
    row["seconds"] = time.perf_counter() - t0
    method = kw["method"]
    row["estimate"] = _memory.per_image_bytes(prob, method) / unit
    row["model"] = _memory_model.model_bytes(prob, method, B) / (B * unit)
    return row


def print_table(rows, file=sys.stdout):
    cols = ["case", "dtype", "n", "batch", "host", "dev_cold", "dev_warm", "estimate", "model"]
    print("| " + " | ".join(cols) + " |", file=file)
    print("|" + "---|" * len(cols), file=file)
    for r in rows:
        cells = [f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols]
        print("| " + " | ".join(cells) + " |", file=file)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, action="append", help="unknown edge (repeatable; default 512)")
    p.add_argument("--batch", type=int, action="append", help="images per call (repeatable; default 8)")
    p.add_argument("--dtype", action="append", choices=("float32", "float64"),
                   help="precision (repeatable; default both)")
    p.add_argument("--only", action="append", choices=tuple(CASES), help="cases (repeatable; default all)")
    p.add_argument("--no-host", action="store_true", help="skip the tracemalloc (NumPy) column")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    args = p.parse_args(argv)
    rows = []
    for n in args.n or [512]:
        for B in args.batch or [8]:
            for dtype in args.dtype or ["float32", "float64"]:
                for name in args.only or CASES:
                    rows.append(measure(name, n, B, dtype, host=not args.no_host))
                    print(f"# {rows[-1]}", file=sys.stderr, flush=True)
    print(f"# peak memory of deconvolve per image, in units of the unknown (simulated device; "
          f"{K}x{K} kernel shared, lam {LAM:g}, Laplacian; CG maxiter 3; margin {_memory_model.MARGIN})")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
