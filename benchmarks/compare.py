"""Side-by-side comparison of gpu_deconv with peer tools: same problem, same run, same FFT workers.

ratio = peer time / our time (> 1: we are faster). Every time is a best-of-N
with a warm-up call excluded, the callables interleaved round by round (so a
load change on a shared machine hits all of them alike), ``time.perf_counter``.

Problems (full sizes; ``--quick`` shrinks them for a smoke check)

``closed``  circular Tikhonov, 1024^2, 15 x 15 Gaussian sigma 2.5, lam 1e-2, Laplacian:
            scikit-image ``restoration.wiener(..., is_real=True, clip=False)`` against one
            uncached call of ours (``clear_cache()`` before each), and the FFT floor (one
            ``rfft2`` + one ``irfft2`` with the filter precomputed) against our cached call.
``valid``   exact valid-mode Tikhonov, 512^2 unknown, 15 x 15 kernel, lam 1e-3, Laplacian:
            PyLops ``Pad(...).H @ Convolve2D(offset=centre)`` stacked with
            ``sqrt(lam) * Convolve2D(laplacian)``, solved by ``cgls``, and plain CG on the
            normal equations (a bare scipy.fft prototype through ``scipy.sparse.linalg.cg``),
            each run for exactly the number of iterations that reaches *our* error against a
            tight reference (found in an untimed pass; tolerances are not trusted).
``motion``  the ``valid`` comparison (float64) with a 13-px 30-degree motion line at lam 1e-3
            and 1e-4, in ``valid`` and in ``same`` + ``symmetric`` (no DCT closed form for this
            kernel; the PyLops operator mirrors the unknown with a sparse matrix first), 192^2
            and 512^2: the kernel whose spectral near-zeros make PCG work hardest. Timed without
            a warm-up call (a peer call takes seconds to minutes); our cache is warm from the
            untimed runs.
``conv``    convolution modes, 2048^2 float32 with 31 x 31, and a batch 64 x 256^2:
            ``scipy.signal.fftconvolve`` and ``oaconvolve``.
``micro``   overheads: ``convolve`` / ``ConvolutionOperator.forward`` against the bare FFT
            pair on the operator's own grid, per mode; one PCG iteration against the FFT
            pairs it must do.
``gpu``     (only with cupy and a device) our CuPy path against our CPU path, the closed
            form against the cuFFT floor, one PCG iteration against its FFT pairs.

Peers are optional (the ``[bench]`` extra: scikit-image, pylops); a missing one is
skipped with a note.

Usage::

    python benchmarks/compare.py                              # everything, full sizes, workers=2, best of 3
    python benchmarks/compare.py --quick                      # smoke check
    python benchmarks/compare.py --only valid --repeat 5 --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import (  # noqa: E402
    DEFAULT_WORKERS,
    LAPLACIAN,
    best_of,
    blurred,
    closed_form_filter,
    cupy_status,
    fft_kw,
    kernel,
    load_average,
    machine_info,
    pcg_pairs_floor,
    quick_from_env,
    random_images,
    rel_err,
    sizes,
    synced,
    synchronizer,
)

import gpu_deconv as gd  # noqa: E402
from gpu_deconv import ConvolutionOperator  # noqa: E402
from gpu_deconv.data import scene  # noqa: E402

SECTIONS = ("closed", "valid", "motion", "conv", "micro", "gpu")

#: Findings printed under the table (conventions, checks).
NOTES: list = []


# ------------------------------------------------------------------ rows
def row(problem, dtype, peer, peer_s, ours, ours_s, *, target=None, target_ratio=None, strict=False,
        accuracy="", unit="s", **extra):
    """One table row; ratio = peer / ours; met when ratio >= target_ratio (> if strict)."""
    ratio = peer_s / ours_s if (peer_s is not None and ours_s) else None
    met = None
    if target_ratio is not None and ratio is not None:
        met = bool(ratio > target_ratio) if strict else bool(ratio >= target_ratio)
    return dict(problem=problem, dtype=dtype, peer=peer, peer_value=peer_s, ours=ours, ours_value=ours_s,
                unit=unit, ratio=ratio, target=target, target_ratio=target_ratio, met=met,
                accuracy=accuracy, **extra)


def skipped(problem, peer, why):
    return dict(problem=problem, dtype="", peer=peer, peer_value=None, ours="", ours_value=None, unit="s",
                ratio=None, target=None, target_ratio=None, met=None, accuracy="", note=f"skipped: {why}")


def _fmt_value(v, unit):
    if v is None:
        return "-"
    if unit == "it":
        return f"{v:.0f} it."
    if v >= 10:
        return f"{v:.1f} s"
    if v >= 1:
        return f"{v:.2f} s"
    return f"{v * 1e3:.3g} ms"


def print_table(rows, file=sys.stdout):
    head = ["problem", "dtype", "peer", "peer time", "ours", "our time", "ratio", "target", "met?",
            "accuracy"]
    print("| " + " | ".join(head) + " |", file=file)
    print("|" + "---|" * len(head), file=file)
    for r in rows:
        if r.get("note", "").startswith("skipped"):
            print(f"| {r['problem']} | | {r['peer']} | | | | | | | {r['note']} |", file=file)
            continue
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        cells = [r["problem"], r["dtype"], r["peer"], _fmt_value(r["peer_value"], r["unit"]), r["ours"],
                 _fmt_value(r["ours_value"], r["unit"]), ratio, r["target"] or "", met, r["accuracy"]]
        print("| " + " | ".join(str(c) for c in cells) + " |", file=file)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ closed form
def section_closed(sz, repeat):
    """Circular Tikhonov: skimage wiener (single call) and the FFT floor (cached)."""
    rows = []
    n, lam = sz.closed_n, 1e-2
    prob = f"circular Tikhonov {n}^2, 15x15, lam={lam:g}, Laplacian"
    try:
        from skimage.restoration import wiener
    except ImportError as exc:
        wiener = None
        rows.append(skipped(prob, "skimage wiener", f"scikit-image not installed ({exc})"))
    else:
        NOTES.extend(skimage_conventions(wiener))
    for dtype in ("float32", "float64"):
        rows += _closed_one(prob, n, lam, dtype, wiener, repeat)
    return rows


def skimage_conventions(wiener):
    """What skimage's wiener agrees with, and where it cannot (printed under the table)."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal((64, 64))
    notes = []
    he = rng.random((4, 4))
    he /= he.sum()
    sk = wiener(y, he, 1e-2, reg=LAPLACIAN, is_real=True, clip=False)
    e = {c: rel_err(gd.deconvolve(y, he, mode="circular", lam=1e-2, reg="laplacian", convention=c), sk)
         for c in ("scipy", "matlab")}
    notes.append(f"skimage wiener origin: centre k//2 (psf2otf); even 4x4 kernel: vs convention='matlab' "
                 f"{e['matlab']:.1e}, vs 'scipy' {e['scipy']:.1e} (odd kernels: both agree)")
    h5 = rng.random((5, 5))
    h5 /= h5.sum()
    d = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, -1.0], [0.0, 0.0, 0.0]])
    sk = wiener(y, h5, 1e-1, reg=d, is_real=True, clip=False)
    ours = gd.deconvolve(y, h5, mode="circular", lam=1e-1, reg=d)
    notes.append("skimage wiener with an asymmetric regularizer (forward difference): "
                 f"{rel_err(sk, ours):.2f} relative difference from the exact minimiser "
                 "(it keeps only Re of the regularizer's transfer function)")
    notes.append("skimage wiener clips to [-1, 1] unless clip=False (used here); its unitary FFT scaling "
                 "(1/sqrt(N)) is exact for power-of-two sizes, where it can agree with ours to the last bit")
    return notes


def _closed_one(prob, n, lam, dtype, wiener, repeat):
    rows = []
    log(f"closed form {dtype}")
    _, h, y = blurred((n, n), 15, "circular", dtype)
    lap = LAPLACIAN.astype(dtype)
    kw = dict(mode="circular", lam=lam, reg="laplacian")
    # The floor: the filter built independently of gpu_deconv (psf2otf-style: the
    # kernel centre k//2 moved to index 0), one rfft2 and one irfft2.
    Hs = _otf(h, (n, n))
    Ls = _otf(lap, (n, n))
    W = (np.conj(Hs) / (np.abs(Hs) ** 2 + lam * np.abs(Ls) ** 2)).astype(Hs.dtype)

    def floor():
        return scipy.fft.irfft2(W * scipy.fft.rfft2(y), s=(n, n))

    fns = {
        "ours_single": (lambda: gd.deconvolve(y, h, **kw), gd.clear_cache),
        "ours_cached": lambda: gd.deconvolve(y, h, **kw),
        "floor": floor,
    }
    if wiener is not None:
        fns["skimage"] = lambda: wiener(y, h, lam, reg=lap, is_real=True, clip=False)
    t = best_of(fns, repeat=repeat)
    ours = gd.deconvolve(y, h, **kw)
    ref = floor()
    acc_floor = f"ours vs floor {rel_err(ours, ref):.1e}"
    if wiener is not None:
        sk = wiener(y, h, lam, reg=lap, is_real=True, clip=False)
        acc = f"skimage vs ours {rel_err(sk, ours):.1e}; {acc_floor}; skimage dtype {sk.dtype}"
        rows.append(row(prob, dtype, "skimage wiener", t["skimage"], "deconvolve, uncached",
                        t["ours_single"], target=">= 2x", target_ratio=2.0, accuracy=acc))
        rows.append(row(prob, dtype, "skimage wiener", t["skimage"], "deconvolve, cached",
                        t["ours_cached"], accuracy="(no target)"))
    rows.append(row(prob, dtype, "FFT floor (rfft2+irfft2)", t["floor"], "deconvolve, cached",
                    t["ours_cached"], target="ours <= 1.2x floor", target_ratio=1 / 1.2,
                    accuracy=acc_floor))
    rows.append(row(prob, dtype, "FFT floor (rfft2+irfft2)", t["floor"], "deconvolve, uncached",
                    t["ours_single"], accuracy="(no target)"))
    return rows


def _otf(k, shape):
    """Transfer function of kernel `k` with its centre k//2 at the origin (rfft2 half spectrum)."""
    pad = np.zeros(shape, dtype=k.dtype)
    pad[: k.shape[0], : k.shape[1]] = k
    pad = np.roll(pad, (-(k.shape[0] // 2), -(k.shape[1] // 2)), axis=(0, 1))
    return scipy.fft.rfft2(pad)


# ------------------------------------------------------------------ valid mode
#: The exact least-squares problems the peer comparisons solve: ``valid`` (zero-boundary
#: Laplacian on the unknown) and ``same`` + half-sample ``symmetric`` (data term and
#: Laplacian both on the mirrored unknown), as in ``deconvolve(mode=..., boundary=...)``.
PEER_MODES = {"valid": dict(mode="valid"), "symmetric": dict(mode="same", boundary="symmetric")}


def _lap(v):
    """5-point Laplacian with zeros outside `v` (same size)."""
    out = -4 * v
    out[1:] += v[:-1]
    out[:-1] += v[1:]
    out[:, 1:] += v[:, :-1]
    out[:, :-1] += v[:, 1:]
    return out


def _sym_fold(z, c):
    """Adjoint of ``np.pad(x, c, mode="symmetric")`` (2-D): the mirrored borders added back onto x."""
    if c == 0:
        return z
    for axis in (0, 1):
        z = np.moveaxis(z, axis, 0)
        core = z[c:-c].copy()
        core[:c] += z[:c][::-1]
        core[-c:] += z[-c:][::-1]
        z = np.moveaxis(core, 0, axis)
    return z


def _prototype(h, n, lam, dtype, mode="valid"):
    """Adjoint and normal operator of the `mode` problem in bare scipy.fft (2 FFT pairs + a stencil).

    The FFTs run on the next fast length of the signal (exact: the valid window sees no wrap-around).

    ``valid``: the valid convolution of the unknown, zero-boundary Laplacian.
    ``symmetric``: ``same`` with the half-sample mirror = the valid convolution of the
    unknown mirrored by k//2 (np.pad "symmetric"); the Laplacian likewise by 1.
    """
    k = h.shape[0]
    c = (k - 1) // 2 if mode == "symmetric" else 0
    g = n + 2 * c  # the (mirrored) signal the valid convolution runs over
    G = scipy.fft.next_fast_len(g, real=True)  # any grid >= g is exact for the valid window
    Hs = scipy.fft.rfft2(h.astype(dtype), s=(G, G))  # tap i at index i
    Hc = np.conj(Hs)
    lo, hi = k - 1, g

    def forward(x):
        if c:
            x = np.pad(x, c, mode="symmetric")
        return scipy.fft.irfft2(scipy.fft.rfft2(x, s=(G, G)) * Hs, s=(G, G))[lo:hi, lo:hi]

    def adjoint(r):
        z = np.zeros((G, G), dtype=dtype)
        z[lo:hi, lo:hi] = r
        return _sym_fold(scipy.fft.irfft2(scipy.fft.rfft2(z) * Hc, s=(G, G))[:g, :g], c)

    if mode == "symmetric":
        def reg(x):
            return _lap(np.pad(x, 1, mode="symmetric"))[1:-1, 1:-1]

        def reg_adjoint(r):
            return _sym_fold(_lap(np.pad(r, 1)), 1)
    else:
        reg = reg_adjoint = _lap

    def normal(v):
        x = v.reshape(n, n)
        return (adjoint(forward(x)) + dtype(lam) * reg_adjoint(reg(x))).ravel()

    return adjoint, normal


def _sym_pad_op(n, c, dtype):
    """PyLops operator of ``np.pad(x, c, mode="symmetric")`` on an n x n image (a sparse 0/1 matrix)."""
    import pylops
    import scipy.sparse as sp

    idx = np.pad(np.arange(n), c, mode="symmetric")
    S = sp.csr_matrix((np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, n))
    return pylops.MatrixMult(sp.kron(S, S, format="csr").astype(dtype), dtype=dtype)


def _pylops_ops(h, n, lam, dtype, mode="valid"):
    """PyLops operator: crop(Pad.H) of a centred same-mode Convolve2D, plus the regularizer.

    ``symmetric``: the unknown mirrored first (a sparse :func:`_sym_pad_op`), the
    convolution run on the mirrored grid and cropped back to n x n; the same for the
    Laplacian with a 1-pixel mirror.
    """
    import pylops
    from pylops.signalprocessing import Convolve2D

    k = h.shape[0]
    if k % 2 == 0 or h.shape[0] != h.shape[1]:
        raise ValueError("the PyLops set-up assumes an odd square kernel")
    c = (k - 1) // 2
    if mode == "symmetric":
        g = n + 2 * c
        conv = Convolve2D((g, g), h.astype(dtype), offset=(c, c), dtype=dtype)
        A = pylops.Pad((n, n), ((c, c), (c, c)), dtype=dtype).H @ conv @ _sym_pad_op(n, c, dtype)
        lap = Convolve2D((n + 2, n + 2), LAPLACIAN.astype(dtype), offset=(1, 1), dtype=dtype)
        L = pylops.Pad((n, n), ((1, 1), (1, 1)), dtype=dtype).H @ lap @ _sym_pad_op(n, 1, dtype)
    else:
        m = n - k + 1
        conv = Convolve2D((n, n), h.astype(dtype), offset=(c, c), dtype=dtype)
        A = pylops.Pad((m, m), ((c, c), (c, c)), dtype=dtype).H @ conv
        L = Convolve2D((n, n), LAPLACIAN.astype(dtype), offset=(1, 1), dtype=dtype)
    Op = pylops.VStack([A, float(np.sqrt(lam)) * L], dtype=dtype)
    return A, L, Op


def check_pylops_setup(mode="valid"):
    """On a small case, the PyLops composite and the bare prototype must equal our operators."""
    rng = np.random.default_rng(3)
    n, k, lam = 40, 7, 1e-3
    h = rng.standard_normal((k, k))
    x = rng.standard_normal((n, n))
    kw = PEER_MODES[mode]
    A, L, Op = _pylops_ops(h, n, lam, np.float64, mode)
    b = gd.convolve(x, h, **kw)
    a = (A @ x.ravel()).reshape(b.shape)
    assert np.allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max()), \
        f"PyLops Pad.H @ Convolve2D(offset=centre) is not our {mode} convolution"
    R = ConvolutionOperator(LAPLACIAN, (n, n), "same", boundary=kw.get("boundary", "zero"))
    la = (L @ x.ravel()).reshape(n, n)
    lb = R.forward(x)
    assert np.allclose(la, lb, rtol=0, atol=1e-12 * np.abs(lb).max()), "PyLops Laplacian differs from ours"
    # Normal operators of the whole least-squares problem agree too (PyLops, prototype, ours).
    ours = ConvolutionOperator(h, (n, n), **kw).normal(x) + lam * R.normal(x)
    theirs = (Op.H @ (Op @ x.ravel())).reshape(n, n)
    assert np.allclose(theirs, ours, rtol=0, atol=1e-11 * np.abs(ours).max()), "normal operators differ"
    proto = _prototype(h, n, lam, np.float64, mode)[1](x.ravel()).reshape(n, n)
    assert np.allclose(proto, ours, rtol=0, atol=1e-11 * np.abs(ours).max()), "prototype differs from ours"


class _Reached(Exception):
    """Raised from a solver's callback once the target error is reached."""


def _iterations_to_reach(step_iter, target_err, cap):
    """Run an iterator of iterates until the error <= target; returns (iterations, error, seconds)."""
    t0 = time.perf_counter()
    it, err = 0, np.inf
    for it, err in step_iter:
        if err <= target_err or it >= cap:
            break
    return it, err, time.perf_counter() - t0


def _have_pylops(rows, prob):
    try:
        import pylops  # noqa: F401
    except ImportError as exc:
        rows.append(skipped(prob, "PyLops cgls", f"pylops not installed ({exc})"))
        return False
    for mode in PEER_MODES:
        check_pylops_setup(mode)
    return True


def section_valid(sz, repeat):
    rows = []
    n, k, lam = sz.valid_n, sz.valid_k, 1e-3
    prob = f"valid Tikhonov {n}^2 unknown, {k}x{k}, lam={lam:g}, Laplacian"
    have_pylops = _have_pylops(rows, prob)
    for dtype in ("float64", "float32"):
        rows += _valid_one(prob, sz, n, k, lam, dtype, have_pylops, repeat)
    return rows


def section_motion(sz, repeat):
    """PCG's hard kernel, a 13-px 30-degree motion line (float64, Laplacian, lam 1e-3 and 1e-4).

    ``valid`` and ``same`` + ``symmetric`` (no DCT closed form: the line is not
    symmetric in each axis), on every edge of ``sz.motion_ns``. Only ours (band PCG),
    plain CG and PyLops are timed, without a warm-up call (the untimed runs before
    have warmed our caches; the peers have none), since a peer call takes seconds
    to minutes here.
    """
    from gpu_deconv.data import motion_kernel

    rows = []
    h = motion_kernel(13, 30)
    have_pylops = _have_pylops(rows, "motion 13 px 30 deg")
    for mode, label in (("valid", "valid"), ("symmetric", "same+symmetric")):
        for n in sz.motion_ns:
            for lam in (1e-3, 1e-4):
                prob = f"{label} Tikhonov {n}^2 unknown, motion 13 px 30 deg, lam={lam:g}, Laplacian"
                rows += _valid_one(prob, sz, n, 13, lam, "float64", have_pylops, repeat, kernel=h,
                                   mode=mode, variants=False)
    return rows


def _valid_one(prob, sz, n, k, lam, dtype, have_pylops, repeat, kernel=None, mode="valid", variants=True):
    """Rows of one exact solve against PyLops and plain CG at equal error.

    `mode`: a key of :data:`PEER_MODES`. `variants`: also time our first call and
    ``precondition="circulant"`` / ``False`` (with a warm-up call); without, only
    ours, plain CG and PyLops are timed, with no warm-up call.
    """
    import scipy.sparse.linalg as sla

    if have_pylops:
        from pylops.optimization.basic import cgls
        from pylops.optimization.cls_basic import CGLS
    rows = []
    kw = dict(lam=lam, reg="laplacian", **PEER_MODES[mode])
    dt = np.dtype(dtype).type
    if kernel is None:
        _, h, y = blurred((n, n), k, "valid", dtype)
    else:  # the scene blurred by `kernel` (in `mode`), noised as blurred() does
        h = kernel.astype(dtype)
        y = gd.convolve(scene((n, n)), kernel, **PEER_MODES[mode])
        y = (y + 0.01 * np.random.default_rng(1).standard_normal(y.shape)).astype(dtype)
    log(f"{mode} {n}^2 lam {lam:g} {dtype}: reference")
    # Tight reference in float64 on exactly these (rounded) data.
    ref, rinfo = gd.deconvolve(y.astype(np.float64), h.astype(np.float64), rtol=1e-12, maxiter=5000,
                               return_info=True, **kw)
    # Independent check of the reference: residual of the normal equations of the bare prototype.
    adj64, nrm64 = _prototype(h.astype(np.float64), n, lam, np.float64, mode)
    b64 = adj64(y.astype(np.float64)).ravel()
    ref_res = float(np.linalg.norm(b64 - nrm64(ref.ravel())) / np.linalg.norm(b64))

    runs = {}
    for pc in ("band", "circulant", False):
        x, info = gd.deconvolve(y, h, return_info=True, precondition=pc, **kw)
        runs[pc] = (int(info.iterations), rel_err(x, ref), float(info.residual), bool(info.converged))
    it_ours, err_ours, res_ours, conv_ours = runs["band"]
    acc_ours = (f"ours err {err_ours:.1e} ({it_ours} it., residual {res_ours:.1e}, "
                f"converged {conv_ours}); reference residual {ref_res:.1e} (prototype), "
                f"{int(rinfo.iterations)} it.")

    # Plain CG on the normal equations: bare scipy.fft prototype, iterations to reach our error.
    log(f"{mode} {n}^2 lam {lam:g} {dtype}: plain CG search")
    adj, nrm = _prototype(h, n, lam, dt, mode)
    Aop = sla.LinearOperator((n * n, n * n), matvec=nrm, dtype=dt)
    b = adj(y).ravel().astype(dt)

    def cg_iterates(cap):
        """(iterations, error) of plain CG, stopped once at our error or at `cap`."""
        errs = []

        def cb(xk):
            errs.append(rel_err(xk.reshape(n, n), ref))
            if errs[-1] <= err_ours:
                raise _Reached

        try:
            sla.cg(Aop, b, rtol=0.0, maxiter=cap, callback=cb)
        except _Reached:
            pass
        return len(errs), errs[-1]

    it_cg, err_cg = cg_iterates(sz.max_peer_iters)
    reached_cg = err_cg <= err_ours

    # PyLops: iterations of cgls to reach our error (untimed pass, error every iteration).
    if have_pylops:
        log(f"{mode} {n}^2 lam {lam:g} {dtype}: PyLops search")
        _, _, Op = _pylops_ops(h, n, lam, dt, mode)
        data = np.concatenate([y.ravel(), np.zeros(n * n, dtype=dt)])

        def pylops_iterates():
            solver = CGLS(Op)
            xk = solver.setup(y=data, niter=sz.max_peer_iters, damp=0.0, tol=0.0)
            i = 0
            while True:
                xk = solver.step(xk)
                i += 1
                yield i, rel_err(xk.reshape(n, n), ref)

        it_pl, err_pl, search_s = _iterations_to_reach(pylops_iterates(), err_ours, sz.max_peer_iters)
        reached_pl = err_pl <= err_ours
        log(f"{mode} {n}^2 lam {lam:g} {dtype}: PyLops {it_pl} it. to err {err_pl:.2e} "
            f"(search {search_s:.1f} s)")

    # Timing (interleaved): ours (band, default), ours circulant, ours plain CG, the peers.
    log(f"{mode} {n}^2 lam {lam:g} {dtype}: timing")
    fns = {
        "ours": lambda: gd.deconvolve(y, h, **kw),
        "scipy_cg": (lambda: sla.cg(Aop, b, rtol=0.0, maxiter=it_cg), None),
    }
    if variants:
        # First call: transfer functions and preconditioner built inside the timed call.
        fns["ours_cold"] = (lambda: gd.deconvolve(y, h, **kw), gd.clear_cache)
        fns["ours_circ"] = lambda: gd.deconvolve(y, h, precondition="circulant", **kw)
        fns["ours_plain"] = lambda: gd.deconvolve(y, h, precondition=False, **kw)
    if have_pylops:
        fns["pylops"] = (lambda: cgls(Op, data, niter=it_pl, tol=0.0), None)
    t = best_of(fns, repeat=repeat, warmup=1 if variants else 0)
    if have_pylops:
        tgt = 10.0 if dtype == "float64" else 25.0
        note = "" if reached_pl else f" (NOT reached in {it_pl} it.: ratio is a lower bound)"
        rows.append(row(prob, dtype, "PyLops Convolve2D+cgls", t["pylops"], "deconvolve (band PCG)",
                        t["ours"], target=f">= {tgt:g}x", target_ratio=tgt,
                        accuracy=f"PyLops {it_pl} it. to err {err_pl:.1e}{note}; {acc_ours}",
                        pylops_iterations=it_pl, pylops_err=err_pl, ours_err=err_ours,
                        ours_iterations=it_ours))
        if variants:
            rows.append(row(prob, dtype, "PyLops Convolve2D+cgls", t["pylops"],
                            "deconvolve, first call (uncached)", t["ours_cold"],
                            accuracy="same solve; spectra and preconditioner built inside the timed call"))
    note = "" if reached_cg else f" (NOT reached in {it_cg} it.)"
    rows.append(row(prob, dtype, "plain CG, bare scipy.fft", t["scipy_cg"], "deconvolve (band PCG)",
                    t["ours"], accuracy=f"{it_cg} it. to err {err_cg:.1e}{note}",
                    cg_iterations=it_cg, cg_err=err_cg))
    rows.append(row(prob, dtype, "plain CG iterations (equal error)", it_cg, "band PCG iterations",
                    it_ours, unit="it", target="PCG >= 5x fewer", target_ratio=5.0,
                    accuracy=f"plain CG err {err_cg:.1e}, PCG err {err_ours:.1e}"))
    for key, label in (("ours_circ", "circulant"), ("ours_plain", False)):
        it_, err_, res_, _ = runs[label]
        rows.append(row(prob, dtype, f"gpu_deconv precondition={label!r}", t.get(key),
                        "deconvolve (band PCG)", t["ours"], ours_iterations=it_, ours_err=err_,
                        accuracy=f"{it_} it. (rtol 1e-6) to err {err_:.1e}"
                        + ("" if variants else " (untimed)")))
    return rows


# ------------------------------------------------------------------ convolution modes
def section_conv(sz, repeat):
    rows = []
    cases = [
        (f"convolve {sz.conv_n}^2, {sz.conv_k}x{sz.conv_k}", (sz.conv_n, sz.conv_n)),
        (f"convolve batch {sz.conv_batch}x{sz.conv_batch_n}^2, {sz.conv_k}x{sz.conv_k}",
         (sz.conv_batch, sz.conv_batch_n, sz.conv_batch_n)),
    ]
    dtype = "float32"
    h = kernel(sz.conv_k, dtype, sigma=5.0)
    h3 = h[None]
    for prob, shape in cases:
        x = random_images(shape, dtype)
        batched = len(shape) == 3
        hk = h3 if batched else h
        for mode in ("full", "same", "valid"):
            rows += _conv_one(prob, x, h, hk, mode, dtype, repeat)
    return rows


def _conv_one(prob, x, h, hk, mode, dtype, repeat):
    rows = []
    ax = (-2, -1)
    log(f"{prob} {mode}")
    fns = {
        "ours": lambda: gd.convolve(x, h, mode),
        "fftconvolve": lambda: scipy.signal.fftconvolve(x, hk, mode, axes=ax),
        "oaconvolve": lambda: scipy.signal.oaconvolve(x, hk, mode, axes=ax),
    }
    t = best_of(fns, repeat=repeat)
    ours = gd.convolve(x, h, mode)
    peer = scipy.signal.fftconvolve(x, hk, mode, axes=ax)
    acc = f"max diff / max {np.abs(ours - peer).max() / np.abs(peer).max():.1e}"
    strict = mode == "valid"
    rows.append(row(f"{prob} {mode}", dtype, "scipy fftconvolve", t["fftconvolve"], "convolve",
                    t["ours"], target="faster" if strict else ">= 1x", target_ratio=1.0,
                    strict=strict, accuracy=acc))
    rows.append(row(f"{prob} {mode}", dtype, "scipy oaconvolve", t["oaconvolve"], "convolve",
                    t["ours"], accuracy="(no target)"))
    return rows


# ------------------------------------------------------------------ micro-benchmarks
def pcg_iteration_rows(xp, sz, repeat, label):
    """Per-iteration time (t_N - t_1)/(N-1) of the valid solve against the FFT pairs it must do."""
    rows = []
    sync = synchronizer(xp)
    n, k, N = sz.valid_n, sz.valid_k, sz.pcg_iters
    for dtype in ("float32", "float64"):
        _, h, y = blurred((n, n), k, "valid", dtype)
        h, y = xp.asarray(h), xp.asarray(y)
        for pc in ("band", "circulant", False):
            log(f"{label} PCG iteration {dtype} precondition={pc!r}")
            pkw = dict(mode="valid", lam=1e-3, reg="laplacian", precondition=pc, rtol=1e-30)

            def solve(iters, pkw=pkw, h=h, y=y):
                # return_info: runs capped on purpose; info instead of a ConvergenceWarning
                return synced(lambda: gd.deconvolve(y, h, maxiter=iters, return_info=True, **pkw), sync)

            pairs, G, Gp = pcg_pairs_floor(xp, h, n, bool(pc))
            t = best_of({"one": solve(1), "many": solve(N), "floor": synced(pairs, sync)}, repeat=repeat)
            per_it = (t["many"] - t["one"]) / (N - 1)
            npairs = f"2 pairs on {tuple(G)}" + (f" + 1 on {tuple(Gp)}" if pc else "")
            gpu = xp is not np
            rows.append(row(f"{label}: one iteration, valid {n}^2", dtype, f"FFT floor ({npairs})",
                            t["floor"], f"PCG iteration, precondition={pc!r}", per_it,
                            target="iteration <= 1.5x pairs" if gpu else None,
                            target_ratio=1 / 1.5 if gpu else None,
                            accuracy=f"setup + 1 it. {t['one'] * 1e3:.3g} ms"))
    return rows


def section_micro(sz, repeat):
    rows = []
    n = sz.micro_n
    kw = fft_kw(np)
    modes = {"full": ("full", "zero"), "same": ("same", "zero"), "valid": ("valid", "zero"),
             "circular": ("circular", "zero"), "same/symmetric": ("same", "symmetric")}
    for dtype in ("float32", "float64"):
        x = random_images((n, n), dtype)
        h = kernel(15, dtype)
        for name, (m, bnd) in modes.items():
            rows += _micro_conv_one(x, h, n, name, m, bnd, dtype, kw, repeat)
    rows += pcg_iteration_rows(np, sz, repeat, "micro")
    return rows


def _micro_conv_one(x, h, n, name, m, bnd, dtype, kw, repeat):
    rows = []
    log(f"micro convolve {dtype} {name}")
    A = ConvolutionOperator(h, (n, n), m, boundary=bnd)
    G, H = A.grid_shape, A.spectrum()

    def floor():
        return scipy.fft.irfftn(scipy.fft.rfftn(x, s=G, **kw) * H, s=G, **kw)

    t = best_of({"convolve": lambda: gd.convolve(x, h, m, boundary=bnd),
                 "operator": lambda: A.forward(x), "floor": floor}, repeat=repeat)
    prob = f"micro: convolve {n}^2 15x15 {name}"
    rows.append(row(prob, dtype, f"FFT pair on grid {G[0]}^2", t["floor"], "convolve()",
                    t["convolve"], accuracy="ratio < 1: our overhead"))
    rows.append(row(prob, dtype, f"FFT pair on grid {G[0]}^2", t["floor"], "op.forward()",
                    t["operator"], accuracy=""))
    return rows


# ------------------------------------------------------------------ GPU
def section_gpu(sz, repeat):
    cp, why = cupy_status()
    if cp is None:
        return [skipped("GPU targets", "cupy", why)]
    import cupyx.scipy.fft as cfft

    sync = synchronizer(cp)
    rows = []

    def timed(f):
        return synced(f, sync)

    # >= 50x the CPU path (float32): closed form, valid solve, convolve.
    n = sz.closed_n
    _, h, y = blurred((n, n), 15, "circular", "float32")
    kwc = dict(mode="circular", lam=1e-2, reg="laplacian")
    hg, yg = cp.asarray(h), cp.asarray(y)
    t = best_of({"cpu": (lambda: gd.deconvolve(y, h, **kwc), gd.clear_cache),
                 "gpu": (timed(lambda: gd.deconvolve(yg, hg, **kwc)), gd.clear_cache)}, repeat=repeat)
    rows.append(row(f"gpu: circular Tikhonov {n}^2, uncached", "float32", "ours on CPU", t["cpu"],
                    "ours on GPU", t["gpu"], target=">= 50x", target_ratio=50.0))
    nv, k = sz.valid_n, sz.valid_k
    _, hv, yv = blurred((nv, nv), k, "valid", "float32")
    kwv = dict(mode="valid", lam=1e-3, reg="laplacian")
    hvg, yvg = cp.asarray(hv), cp.asarray(yv)
    t = best_of({"cpu": lambda: gd.deconvolve(yv, hv, **kwv),
                 "gpu": timed(lambda: gd.deconvolve(yvg, hvg, **kwv))}, repeat=repeat)
    rows.append(row(f"gpu: valid Tikhonov {nv}^2", "float32", "ours on CPU", t["cpu"], "ours on GPU",
                    t["gpu"], target=">= 50x", target_ratio=50.0))
    x = random_images((sz.conv_n, sz.conv_n), "float32")
    hc = kernel(sz.conv_k, "float32", sigma=5.0)
    xg, hcg = cp.asarray(x), cp.asarray(hc)
    for mode in ("full", "same", "valid"):
        t = best_of({"cpu": lambda mode=mode: gd.convolve(x, hc, mode),
                     "gpu": timed(lambda mode=mode: gd.convolve(xg, hcg, mode))}, repeat=repeat)
        rows.append(row(f"gpu: convolve {sz.conv_n}^2 {mode}", "float32", "ours on CPU", t["cpu"],
                        "ours on GPU", t["gpu"], target=">= 50x", target_ratio=50.0))

    # Closed form <= 1.5x the cuFFT floor on the same batch (cached filter).
    B = 16 if n >= 512 else 4
    yb = cp.asarray(np.stack([y] * B))
    W = closed_form_filter(cp, hg, n, kwc["lam"])
    t = best_of({"ours": timed(lambda: gd.deconvolve(yb, hg, **kwc)),
                 "floor": timed(lambda: cfft.irfftn(W * cfft.rfftn(yb, s=(n, n), axes=(-2, -1)), s=(n, n),
                                                    axes=(-2, -1)))}, repeat=repeat)
    rows.append(row(f"gpu: circular Tikhonov {B}x{n}^2, cached", "float32", "cuFFT floor (rfftn+irfftn)",
                    t["floor"], "deconvolve, cached", t["ours"], target="ours <= 1.5x floor",
                    target_ratio=1 / 1.5))
    rows += pcg_iteration_rows(cp, sz, repeat, "gpu")
    return rows


# ------------------------------------------------------------------ main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shrink every size (smoke check)")
    p.add_argument("--json", metavar="PATH", help="write the rows and the machine header as JSON")
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="CPU FFT threads, ours and peers'")
    p.add_argument("--repeat", type=int, default=3, help="best of N timed calls (after one warm-up)")
    p.add_argument("--only", action="append", choices=SECTIONS, metavar="NAME",
                   help=f"run only these sections (repeatable): {', '.join(SECTIONS)}")
    args = p.parse_args(argv)
    quick = args.quick or quick_from_env()
    sz = sizes(quick)
    chosen = args.only or list(SECTIONS)
    meta = machine_info(args.workers)
    meta.update(command=" ".join(["python"] + sys.argv), quick=quick, repeat=args.repeat, sections=chosen)
    rows = []
    funcs = {"closed": section_closed, "valid": section_valid, "motion": section_motion,
             "conv": section_conv, "micro": section_micro,
             "gpu": section_gpu}
    t0 = time.perf_counter()
    with gd.set_workers(args.workers), scipy.fft.set_workers(args.workers):
        for name in SECTIONS:
            if name in chosen:
                rows += funcs[name](sz, args.repeat)
    meta["elapsed_s"] = time.perf_counter() - t0
    meta["load_average_end"] = load_average()
    print(f"# gpu_deconv vs peers ({meta['date']}, {meta['cpu']}, {meta['cores']} cores, "
          f"workers={args.workers}, best of {args.repeat}{', QUICK sizes' if quick else ''}; "
          f"commit {meta['commit']})")
    print(f"# load average at start {_load(meta['load_average'])}, at end {_load(meta['load_average_end'])}")
    print(f"# versions: {meta['versions']}")
    print()
    print_table(rows)
    missed = [r for r in rows if r["met"] is False]
    print()
    for note in NOTES:
        print(f"# note: {note}")
    print(f"# {sum(r['met'] is True for r in rows)} targets met, {len(missed)} missed; "
          f"{meta['elapsed_s']:.0f} s")
    if args.json:
        doc = {"meta": meta, "rows": rows, "notes": NOTES}
        Path(args.json).write_text(json.dumps(doc, indent=1, default=_json_default))
        print(f"# wrote {args.json}")
    return 0


def _load(la):
    return "n/a" if la is None else "/".join(f"{v:.2f}" for v in la)


def _json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
