"""The built-in example: a synthetic scene blurred, noised and deconvolved, exactly and approximately."""

from __future__ import annotations

import os
import struct
import time
import zlib

import numpy as np

from . import data, io
from ._backend import get_backend
from .conv import convolve
from .solvers.deconvolve import deconvolve

__all__ = ["run_demo", "write_png"]


def write_png(path, img, lo=None, hi=None):
    """Write a 2-D array as an 8-bit grayscale PNG (no dependency; values clipped to [lo, hi])."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"write_png needs a 2-D image; got shape {a.shape}")
    lo = float(a.min()) if lo is None else lo
    hi = float(a.max()) if hi is None else hi
    u8 = np.clip(np.round(255 * (a - lo) / max(hi - lo, 1e-12)), 0, 255).astype(np.uint8)
    raw = b"".join(b"\x00" + row.tobytes() for row in u8)

    def chunk(tag, payload):
        c = struct.pack(">I", len(payload)) + tag + payload
        return c + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", u8.shape[1], u8.shape[0], 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    io.atomic_write(path, lambda fh: fh.write(png), force=True)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def run_demo(out_dir="gpu_deconv_demo", *, size=256, noise=0.01, lam="gcv", device="auto",
             seed=0, figure=True, echo=print):
    """Blur a synthetic scene (15x15 Gaussian, sigma 2.5, ``valid`` mode), add noise, deconvolve.

    ``lam`` is chosen from the data by GCV (default) unless a number is
    given. The exact solution (``deconvolve``, preconditioned CG) is compared
    with Fourier division on y's own grid (``method="fft_approx"``, same
    lam), both against the true scene; since the demo knows the truth, it
    also solves at lam values around the chosen one and reports the error
    there. Writes PNG panels, the arrays (``.npy``) and, with matplotlib
    installed, a figure with the criterion and error curves and the
    PCG-vs-CG convergence.

    Returns
    -------
    dict
        Errors, iterations, timings and the paths written.
    """
    xp = np
    if device in ("auto", "gpu"):
        from ._backend import cupy_status

        cp, why = cupy_status()
        if cp is not None:
            xp = cp
        elif device == "gpu":
            raise RuntimeError(f"device='gpu' asked for, but cupy/CUDA is not usable: {why}")
    os.makedirs(out_dir, exist_ok=True)
    x_true = data.scene((size, size), seed=seed)
    h = data.gaussian_kernel(15, 2.5)
    rng = np.random.default_rng(seed)
    y = convolve(x_true, h, "valid")
    y = y + noise * rng.standard_normal(y.shape)
    echo(f"gpu_deconv demo: {size}x{size} synthetic scene, 15x15 Gaussian blur (sigma 2.5), "
         f"'valid' model (y is {y.shape[0]}x{y.shape[1]}), noise sigma {noise}")
    echo(f"  device: {'GPU (CuPy)' if xp is not np else 'CPU (NumPy/SciPy)'}")
    yd, hd = xp.asarray(y), xp.asarray(h)
    model = dict(mode="valid", reg="laplacian")
    t0 = time.perf_counter()
    x, info = deconvolve(yd, hd, lam=lam, return_info=True, **model)
    t_exact = time.perf_counter() - t0
    chosen = isinstance(lam, str)
    lam = float(info.lam)
    curve = info.lam_curve
    model["lam"] = lam
    if chosen:
        # The final solve above starts from the selection's solutions; the iteration
        # counts compared below are those of cold starts at the chosen lam.
        _, info = deconvolve(yd, hd, return_info=True, **model)
    _, info_cg = deconvolve(yd, hd, precondition=False, return_info=True, **model)
    t0 = time.perf_counter()
    x_fd = deconvolve(yd, hd, method="fft_approx", **model)
    t_fd = time.perf_counter() - t0
    bk = get_backend(y=yd)
    x, x_fd = bk.asnumpy(x), bk.asnumpy(x_fd)
    c = slice(7, size - 7)
    res = {
        "err_blurred": _rel(y, x_true[c, c]),
        "err_fourier": _rel(x_fd, x_true), "err_exact": _rel(x, x_true),
        "err_fourier_interior": _rel(x_fd[c, c], x_true[c, c]),
        "err_exact_interior": _rel(x[c, c], x_true[c, c]),
        "iterations": int(info.iterations), "iterations_plain_cg": int(info_cg.iterations),
        "converged": bool(info.converged), "residual": float(info.residual),
        "seconds_exact": t_exact, "seconds_fourier": t_fd, "lam": lam,
    }
    errors = None
    if chosen:
        # The truth is known here: the error of the exact solution at lam values around the chosen one.
        lams = lam * 10.0 ** np.linspace(-2, 2, 9)
        errors = np.array([_rel(bk.asnumpy(deconvolve(yd, hd, lam=t, x0=xp.asarray(x), **{
            k: v for k, v in model.items() if k != "lam"})), x_true) for t in lams])
        res["lam_best_of_grid"] = float(lams[int(np.argmin(errors))])
        echo(f"  lam chosen by GCV: {lam:.3g} (of lam/100 ... 100 lam, 2 per decade, the true error is "
             f"smallest at {res['lam_best_of_grid']:.3g})")
        errors = (lams, errors)
    echo(f"  exact least squares (lam={lam:.3g}, Laplacian): preconditioned CG, {res['iterations']} "
         f"iterations (plain CG: {res['iterations_plain_cg']}), residual {res['residual']:.1e}, "
         f"{'converged' if res['converged'] else 'NOT converged'}, "
         f"{t_exact:.2f} s{' with the choice of lam' if chosen else ''}")
    echo("  relative error against the true scene (whole image / interior):")
    echo(f"    blurred + noisy data (interior): {res['err_blurred']:.4f}")
    echo(f"    Fourier division (fft_approx):   {res['err_fourier']:.4f} / {res['err_fourier_interior']:.4f}")
    echo(f"    exact solution:                  {res['err_exact']:.4f} / {res['err_exact_interior']:.4f}")
    paths = []
    pad = np.pad(y, 7, mode="edge")
    for name, img in (("sharp", x_true), ("blurred", pad), ("fourier_division", x_fd), ("exact", x)):
        p = os.path.join(out_dir, f"{name}.png")
        write_png(p, img, 0.0, 1.0)
        paths.append(p)
    for name, arr in (("y", y), ("x_exact", x), ("x_fourier", x_fd), ("x_true", x_true)):
        p = os.path.join(out_dir, f"{name}.npy")
        np.save(p, arr)
        paths.append(p)
    if figure:
        fig = _figure(out_dir, x_true, pad, x_fd, x, info, info_cg, res, errors, curve)
        if fig:
            paths.append(fig)
    res["paths"] = paths
    echo(f"  wrote {len(paths)} files to {os.path.abspath(out_dir)}")
    return res


def _figure(out_dir, x_true, y_pad, x_fd, x, info, info_cg, res, errors=None, curve=None):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ncol = 6 if errors is not None else 5
    fig = plt.figure(figsize=(2.7 * ncol, 3.2), layout="constrained")
    panels = [("sharp scene", x_true), ("blurred + noise\n('valid', edges padded)", y_pad),
              (f"Fourier division\nerror {res['err_fourier']:.3f}", x_fd),
              (f"exact least squares, lam {res['lam']:.2g}\nerror {res['err_exact']:.3f}", x)]
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, ncol, i + 1)
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    if errors is not None:
        _lam_panel(fig.add_subplot(1, ncol, 5), curve, res["lam"], errors)
    ax = fig.add_subplot(1, ncol, ncol)
    for inf, label in ((info_cg, "plain CG"), (info, "PCG (band)")):
        hist = np.array([np.ravel(v)[0] for v in inf.history])
        ax.semilogy(hist, label=f"{label}: {len(hist) - 1} it.")
    if info.rtol:
        ax.axhline(info.rtol, color="0.5", lw=0.8, ls="--", label=f"rtol {info.rtol:g}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative residual")
    ax.legend(fontsize=8)
    ax.set_title("convergence", fontsize=9)
    p = os.path.join(out_dir, "demo.png")
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def _lam_panel(ax, curve, lam, errors):
    """GCV (surrogate grid and exact-model points) against lam, and the true error beside it."""
    lv, vv, ex = (np.ravel(a) for a in (curve.lam, curve.value, curve.exact))
    ok = np.isfinite(lv) & np.isfinite(vv)
    sur = ok & ~ex
    if sur.any():
        ax.loglog(lv[sur], vv[sur], ".", color="0.6", ms=3, label="GCV, circular surrogate")
    ax.loglog(lv[ok & ex], vv[ok & ex], "o", color="C0", ms=4, label="GCV, exact model")
    ax.axvline(lam, color="C0", lw=0.8, ls="--", label=f"chosen {lam:.2g}")
    ax.set_xlabel("lam")
    ax.set_ylabel("GCV", color="C0")
    lo, hi = lam / 1e3, lam * 1e3
    ax.set_xlim(lo, hi)
    shown = vv[ok & (lv >= lo) & (lv <= hi)]
    if shown.size:
        ax.set_ylim(shown.min() / 1.1, shown.max() * 1.1)
    ax2 = ax.twinx()
    ax2.semilogx(errors[0], errors[1], "s-", color="C3", ms=3, label="true error")
    ax2.set_ylabel("relative error vs truth", color="C3")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=6, loc="upper right")
    ax.set_title("choosing lam", fontsize=9)
