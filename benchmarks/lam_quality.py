"""Quality and cost of the automatic lam (GCV, discrepancy) against the best lam on a dense grid.

For natural photographs (scikit-image's bundled images, grey, 256^2), blurred by a
Gaussian and by a motion line, with white Gaussian noise or Poisson noise
(about 1000 photons at the peak), in the ``circular``, ``same`` + ``symmetric``
and ``valid`` models, it prints one markdown table: the PSNR of the data, of
the oracle (the best lam on a grid of 4 per decade from 10^-4.5 to 1, refined to 16 per decade,
same model and solver), of ``lam="gcv"`` and of ``lam="discrepancy"`` (sigma
estimated from the data), with the lam each chose. PSNR is over the data's own
domain: the whole image for circular and same; for valid, the central crop
that y covers.

The cost section times ``deconvolve(lam="gcv")`` against ``deconvolve(lam=<that
lam>)`` in the same run, alternating, caches cleared before every call (best of
`--repeat`).

Run: ``python benchmarks/lam_quality.py [--images camera astronaut ...] [--out FILE]``
(needs scikit-image: ``pip install ".[bench]"``). ``camera`` was used while the
method was developed; the other images were not looked at before this table.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import gpu_deconv as gd
from gpu_deconv.data import gaussian_kernel

DEV = ("camera",)
HELD_OUT = ("astronaut", "coffee")


def motion_kernel(length=13, angle_deg=30.0, size=None):
    """A motion-blur line of `length` pixels at `angle_deg`, anti-aliased, sum 1 (odd square support)."""
    size = size or (length | 1)
    k = np.zeros((size, size))
    c = (size - 1) / 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 8 * length)
    a = np.deg2rad(angle_deg)
    for r, s in zip(c - t * np.sin(a), c + t * np.cos(a)):
        i, j = int(np.floor(r)), int(np.floor(s))
        fr, fs = r - i, s - j
        for di, dj, w in ((0, 0, (1 - fr) * (1 - fs)), (1, 0, fr * (1 - fs)), (0, 1, (1 - fr) * fs),
                          (1, 1, fr * fs)):
            if 0 <= i + di < size and 0 <= j + dj < size:
                k[i + di, j + dj] += w
    return k / k.sum()


def load(name, size=256):
    import skimage.data
    from scipy.ndimage import zoom

    a = getattr(skimage.data, name)().astype(np.float64)
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
    a /= 255.0
    s = min(a.shape)
    r0, c0 = (a.shape[0] - s) // 2, (a.shape[1] - s) // 2
    a = a[r0:r0 + s, c0:c0 + s]
    return np.clip(zoom(a, size / s, order=1), 0, 1)


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def make_data(x, h, mode, noise, rng):
    if mode == "circular":
        y = gd.convolve(x, h, "circular")
    elif mode == "same":
        y = gd.convolve(x, h, "same", boundary="symmetric")
    else:
        y = gd.convolve(x, h, "valid")
    if noise == "poisson":
        y = rng.poisson(1000.0 * np.clip(y, 0, None)) / 1000.0
    else:
        y = y + float(noise) * rng.standard_normal(y.shape)
    return y


def truth_on_data_domain(x, h, mode):
    if mode != "valid":
        return x
    o = [(k - 1) // 2 for k in h.shape]
    m = [n - k + 1 for n, k in zip(x.shape, h.shape)]
    return x[o[0]:o[0] + m[0], o[1]:o[1] + m[1]]


def estimate_on_data_domain(xe, h, mode):
    return truth_on_data_domain(xe, h, mode)


def kw(mode):
    return dict(mode=mode, boundary="symmetric" if mode == "same" else "zero", reg="laplacian",
                maxiter=2000)


def oracle(y, h, mode, xt):
    state = {"x0": None}

    def score(lam):
        # from large lam down, each solve warm-started from the last (rtol 1e-5 is plenty for a PSNR)
        xe = gd.deconvolve(y, h, lam=lam, x0=state["x0"], **dict(kw(mode), rtol=1e-5))
        state["x0"] = xe
        return psnr(estimate_on_data_domain(xe, h, mode), xt)

    grid = 10.0 ** np.arange(0, -4.51, -0.25)
    s = [score(t) for t in grid]
    j = int(np.argmax(s))
    fine = grid[j] * 10.0 ** (np.arange(3, -4, -1) / 16)
    sf = [score(t) for t in fine]
    k = int(np.argmax(sf))
    return (fine[k], sf[k]) if sf[k] >= s[j] else (grid[j], s[j])


def quality(images, rows, rng):
    kernels = {"gauss13": gaussian_kernel(13, 2.0), "motion13": motion_kernel(13, 30.0)}
    for name in images:
        x = load(name)
        for kname, h in kernels.items():
            for noise in ("0.01", "0.03", "poisson"):
                for mode in ("circular", "same", "valid"):
                    y = make_data(x, h, mode, noise, rng)
                    xt = truth_on_data_domain(x, h, mode)
                    lo, po = oracle(y, h, mode, xt)
                    res = {}
                    for crit in ("gcv", "discrepancy"):
                        xe, info = gd.deconvolve(y, h, lam=crit, return_info=True, **kw(mode))
                        res[crit] = (float(info.lam), psnr(estimate_on_data_domain(xe, h, mode), xt),
                                     info.method)
                    row = (name, kname, noise, mode, res["gcv"][2], psnr(y, xt), po, lo, res["gcv"][1],
                           res["gcv"][0], res["discrepancy"][1], res["discrepancy"][0])
                    rows.append(row)
                    print("| " + " | ".join(_fmt(v) for v in row) + " |", flush=True)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}" if v < 1e-2 or v > 1e3 else f"{v:.2f}"
    return str(v)


def cost(rng, repeat):
    x = load("camera")
    h = gaussian_kernel(13, 2.0)
    hm = motion_kernel(13, 30.0)
    print("\n| model | method | fixed lam (s) | lam='gcv' (s) | ratio | lam='discrepancy' (s) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for mode, k in (("circular", h), ("same", h), ("same", hm), ("valid", h), ("valid", hm)):
        y = make_data(x, k, mode, "0.01", rng)
        lam = float(gd.choose_lam(y, k, **{a: b for a, b in kw(mode).items() if a != "maxiter"}))
        times = {"fixed": [], "gcv": [], "discrepancy": []}
        for _ in range(repeat):
            for what in times:
                gd.clear_cache()
                t = time.perf_counter()
                _, info = gd.deconvolve(y, k, lam=lam if what == "fixed" else what, return_info=True,
                                        **kw(mode))
                times[what].append(time.perf_counter() - t)
        f, g, d = (min(times[w]) for w in ("fixed", "gcv", "discrepancy"))
        label = f"{mode}{' + symmetric' if mode == 'same' else ''}, {'gauss13' if k is h else 'motion13'}"
        print(f"| {label} | {info.method} | {f:.3f} | {g:.3f} | {g / f:.1f}x | {d:.3f} | {d / f:.1f}x |",
              flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", nargs="+", default=list(DEV + HELD_OUT))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    a = p.parse_args(argv)
    rng = np.random.default_rng(2026)
    print(f"# lam selection, {time.strftime('%Y-%m-%d')}, numpy {np.__version__}, "
          f"{gd.get_workers()} FFT workers, python {sys.version.split()[0]}\n")
    if not a.skip_quality:
        print("| image | kernel | noise | model | method | PSNR data | PSNR oracle | lam oracle | PSNR gcv | "
              "lam gcv | PSNR discrepancy | lam discrepancy |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        quality(a.images, [], rng)
    if not a.skip_cost:
        cost(rng, a.repeat)


if __name__ == "__main__":
    main()
