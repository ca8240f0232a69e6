"""Shared pieces of the benchmark suites and of compare.py: sizes, problems, timing, backends.

Nothing here is part of the package; it is imported by ``benchmarks/conftest.py``,
the ``bench_*.py`` suites and ``benchmarks/compare.py`` (each adds this folder
to ``sys.path``, pytest by its ``rootdir``-less ``prepend`` import mode, the
script because it lives here).

Sizes: the full sizes are those of the issue; ``quick`` shrinks every one of
them so that the whole suite runs in about a minute (smoke check only: the
numbers are meaningless). Quick mode is chosen by ``--quick`` (pytest and
compare.py) or by the environment variable ``GPU_DECONV_BENCH_QUICK=1``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import gpu_deconv as gd
from gpu_deconv._backend import cupy_status  # noqa: F401  (re-exported: the package's own check)
from gpu_deconv.data import gaussian_kernel, scene

QUICK_ENV = "GPU_DECONV_BENCH_QUICK"

#: FFT threads of the CPU path, for us and for every peer (the issue's "same workers").
DEFAULT_WORKERS = 2


def quick_from_env() -> bool:
    return os.environ.get(QUICK_ENV, "").strip().lower() not in ("", "0", "false", "no")


# ----------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """Every problem size of the suites and the comparison (full = the issue's)."""

    # operators suite: (name, shape, kernel edge, dtype)
    op_cases: tuple
    # closed form (circular / DCT), 2-D edge
    closed_n: int
    # exact valid-mode solve: unknown edge, kernel edge
    valid_n: int
    valid_k: int
    # convolution modes: image edge, kernel edge; batch count and edge
    conv_n: int
    conv_k: int
    conv_batch: int
    conv_batch_n: int
    # kernel estimation: image edge, kernel edge
    kest_n: int
    kest_k: int
    # multichannel: batch, channels, image edge, filter edge
    mc_batch: int
    mc_channels: int
    mc_n: int
    mc_k: int
    # micro-benchmarks: image edge for convolve-vs-floor
    micro_n: int
    # PCG iteration micro-benchmark: number of iterations timed
    pcg_iters: int
    # PyLops / plain CG iteration caps in the accuracy search
    max_peer_iters: int
    # motion-blur comparison (compare.py --only motion): unknown edges
    motion_ns: tuple = (192, 512)


FULL = Sizes(
    op_cases=(
        ("512^2", (512, 512), 15, "float32"),
        ("512^2", (512, 512), 15, "float64"),
        ("2048^2", (2048, 2048), 15, "float32"),
        ("2048^2", (2048, 2048), 15, "float64"),
        ("16x512^2", (16, 512, 512), 15, "float32"),
        ("128^3", (128, 128, 128), 9, "float32"),
    ),
    closed_n=1024, valid_n=512, valid_k=15,
    conv_n=2048, conv_k=31, conv_batch=64, conv_batch_n=256,
    kest_n=512, kest_k=15,
    mc_batch=4, mc_channels=32, mc_n=256, mc_k=9,
    micro_n=1024, pcg_iters=20, max_peer_iters=3000,
)

QUICK = Sizes(
    op_cases=(
        ("128^2", (128, 128), 15, "float32"),
        ("128^2", (128, 128), 15, "float64"),
        ("256^2", (256, 256), 15, "float32"),
        ("256^2", (256, 256), 15, "float64"),
        ("4x128^2", (4, 128, 128), 15, "float32"),
        ("32^3", (32, 32, 32), 5, "float32"),
    ),
    closed_n=256, valid_n=96, valid_k=15,
    conv_n=256, conv_k=31, conv_batch=8, conv_batch_n=64,
    kest_n=96, kest_k=7,
    mc_batch=2, mc_channels=8, mc_n=64, mc_k=5,
    micro_n=256, pcg_iters=5, max_peer_iters=600, motion_ns=(64, 96),
)


def sizes(quick: bool) -> Sizes:
    return QUICK if quick else FULL


# ----------------------------------------------------------------- backends
def synchronizer(xp):
    """A no-argument callable that waits for the GPU (a no-op for NumPy)."""
    if xp is np:
        return lambda: None

    def sync():
        xp.cuda.get_current_stream().synchronize()

    return sync


def synced(f, sync):
    """``f`` followed by ``sync()`` (the GPU's work finishes inside the timed call); returns f's result."""

    def g():
        out = f()
        sync()
        return out

    return g


def fft_module(xp):
    """scipy.fft for NumPy, cupyx.scipy.fft for CuPy."""
    if xp is np:
        import scipy.fft as fft
    else:
        import cupyx.scipy.fft as fft
    return fft


def fft_kw(xp):
    """The FFT keywords of our CPU path (``workers``), none on the GPU."""
    return {"workers": gd.get_workers()} if xp is np else {}


def to_numpy(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


# ----------------------------------------------------------------- problems
SIGMA = 2.5

#: The 5-point Laplacian, spelled out for the floors and the peers (ours: ``reg="laplacian"``).
LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def kernel(k, dtype=np.float64, ndim=2, sigma=SIGMA):
    return gaussian_kernel(k, sigma, ndim=ndim).astype(dtype)


def random_images(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def blurred(shape, k, mode, dtype=np.float64, noise=0.01, seed=1):
    """(x_true, h, y): the built-in scene of spatial shape `shape`, blurred in `mode`, noised."""
    x_true = scene(shape)
    h = kernel(k)
    y = gd.convolve(x_true, h, mode)
    y = y + noise * np.random.default_rng(seed).standard_normal(y.shape)
    return x_true.astype(dtype), h.astype(dtype), y.astype(dtype)


def rel_err(a, ref):
    a = to_numpy(a).astype(np.float64)
    ref = to_numpy(ref).astype(np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


# ----------------------------------------------------------------- FFT floors
def pcg_pairs_floor(xp, h, n, preconditioned):
    """The FFT pairs one PCG iteration of the valid solve must do, multipliers precomputed.

    Two pairs on the operator's data grid (normal operator, the regularizer folded
    into the spectrum) plus, when preconditioned, one on the preconditioner's padded
    grid. `h` is the kernel in `xp`, `n` the unknown's edge. Returns
    ``(pairs, G, Gp)``: the untimed-set-up callable and the two grids.
    """
    fft, kw = fft_module(xp), fft_kw(xp)
    k = h.shape[-1]
    A = gd.ConvolutionOperator(h, (n, n), "valid")
    G = A.grid_shape
    H = A.spectrum()
    Hc = xp.conj(H)
    R = xp.abs(H)  # stands for lam * |G_laplacian|^2 on the same grid
    gp = int(fft.next_fast_len(n + 2 * (k - 1), real=True)) if xp is np else \
        int(fft.next_fast_len(n + 2 * (k - 1)))
    Gp = (gp, gp)
    Dinv = xp.abs(fft.rfftn(xp.ones((n, n), dtype=h.dtype), s=Gp, **kw)) + 1
    v = xp.asarray(random_images((n, n), h.dtype))
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


def closed_form_filter(xp, h, n, lam):
    """The circular Tikhonov filter ``conj(H) / (|H|^2 + lam |L|^2)`` on the n x n grid (Laplacian L)."""
    H = gd.ConvolutionOperator(h, (n, n), "circular").spectrum()
    S = gd.ConvolutionOperator(xp.asarray(LAPLACIAN.astype(h.dtype)), (n, n), "circular").spectrum()
    return xp.conj(H) / (xp.abs(H) ** 2 + lam * xp.abs(S) ** 2)


# ----------------------------------------------------------------- timing
def best_of(fns, repeat=3, warmup=1):
    """Interleaved best-of-`repeat` wall time (s) of several callables.

    ``fns`` maps a name to a callable (or to ``(callable, setup)``, the setup
    run untimed before each call, e.g. a cache clear). Every callable is
    called `warmup` times first (untimed); then the rounds interleave the
    callables, so that a load change on a shared machine hits them alike.
    Returns ``{name: best seconds}``.
    """
    items = {name: f if isinstance(f, tuple) else (f, None) for name, f in fns.items()}
    for f, s in items.values():
        for _ in range(warmup):
            if s is not None:
                s()
            f()
    best = {name: float("inf") for name in items}
    for _ in range(repeat):
        for name, (f, s) in items.items():
            if s is not None:
                s()
            t0 = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def rounds_for(seconds_per_call, budget=1.0, lo=3, hi=50):
    """How many timed rounds fit in `budget` seconds (at least `lo`, at most `hi`)."""
    if seconds_per_call <= 0:
        return hi
    return int(max(lo, min(hi, np.ceil(budget / seconds_per_call))))


# ----------------------------------------------------------------- machine
def _git_commit():
    """HEAD of the repository (with '+dirty' when the tree has changes), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info(workers):
    """Date, CPU model, core count, Python and library versions (for RESULTS.md and the JSON)."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": sys.version.split()[0], "gpu_deconv": gd.__version__}
    for mod in ("numpy", "scipy", "skimage", "pylops", "cupy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": _git_commit(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "workers": workers,
        "load_average": load_average(),
        "versions": versions,
    }
