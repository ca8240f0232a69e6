"""One command for a lent GPU: compile, check every launcher, run the GPU suite, write one report.

    PYTHONPATH=. python benchmarks/gpu_check.py [--out REPORT.md] [--no-suite] [--no-bench]

Meant to fit in about five minutes on an H100/H200 with nothing installed
beyond the package's dependencies and CuPy. It

1. compiles every module of ``kernels/`` for float32 and float64 with CuPy's
   NVRTC (``gpu_deconv._cuda.modules``) and looks up every kernel the launchers use;
2. runs each launcher of ``gpu_deconv._cuda`` against the generic CuPy path
   (the same operation with the custom kernels turned off), every boundary,
   1 to 3 axes, both precisions;
3. runs the GPU test suite (``pytest -m gpu``; its last test runs the kernels
   under compute-sanitizer when that is on PATH);
4. times, on 16 x 2048^2 float32, the closed form against its cuFFT floor
   (rfftn + irfftn of the same batch), one PCG iteration against one FFT
   pair on its grid, and the NumPy path on all CPU cores against the GPU;

and writes everything to one markdown report: ``--out``, else
``$GPU_CHECK_OUT``, else ``$OUT/gpu_check.md`` when ``$OUT`` is set, else
``./gpu_check.md``. The exit status is 0 when every check passed.

With ``GPU_DECONV_SIMULATOR=1`` the same script runs on the CPU simulator
(gpu_deconv/_simulator), which is how its own logic is tested; the report
then says so, and the timings run on tiny sizes only to exercise the code
(the simulator measures nothing about a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpu_deconv import _simulator  # noqa: E402  (before anything imports cupy)

SIMULATED = _simulator.install()

import numpy as np  # noqa: E402

from gpu_deconv import _cuda  # noqa: E402
from gpu_deconv._backend import _backend, cupy_status  # noqa: E402
from gpu_deconv._cuda import modules as _kernels  # noqa: E402

BOUNDARIES = tuple(_cuda.BOUNDARY_CODES)
DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def report_path(arg):
    if arg:
        return Path(arg)
    if os.environ.get("GPU_CHECK_OUT"):
        return Path(os.environ["GPU_CHECK_OUT"])
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.md"
    return Path("gpu_check.md")


@contextlib.contextmanager
def generic_path():
    """The custom kernels off: what the launchers are checked against."""
    old = os.environ.get(_cuda.ENV_DISABLE)
    os.environ[_cuda.ENV_DISABLE] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ[_cuda.ENV_DISABLE]
        else:
            os.environ[_cuda.ENV_DISABLE] = old


class Report:
    def __init__(self):
        self.lines: list[str] = []
        self.failures: list[str] = []

    def add(self, *lines):
        self.lines.extend(lines)

    def fail(self, what):
        self.failures.append(what)


# ------------------------------------------------------------------ checks
def environment(cp, rep):
    rt = cp.cuda.runtime
    dev = cp.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    free, total = dev.mem_info
    rep.add("## Environment", "",
            f"- device: {name}{' -- SIMULATED on the CPU, not a GPU' if SIMULATED else ''}",
            f"- memory: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB",
            f"- cupy {cp.__version__}, CUDA runtime {rt.runtimeGetVersion()}, driver {rt.driverGetVersion()}",
            f"- numpy {np.__version__}, python {platform.python_version()}, {platform.platform()}",
            f"- compute-sanitizer: {shutil.which('compute-sanitizer') or 'not on PATH'}", "")


def compile_all(cp, rep):
    rep.add("## Compile (NVRTC through cupy.RawModule)", "",
            "| module | dtype | kernels | seconds | result |", "|---|---|---|---|---|")
    names = {}
    for kind in _cuda.SIGNATURES:
        for dt in DTYPES:
            if kind in _cuda.launch.PER_BOUNDARY:
                for b in BOUNDARIES:
                    for nd in (1, 2, 3):
                        names.setdefault((_cuda.MODULE_OF[kind], np.dtype(dt).str), []).append(
                            _cuda.kernel_name(kind, dt, boundary=b, ndim=nd))
            elif kind in _cuda.launch.PER_NDIM:
                for nd in (1, 2, 3):
                    names.setdefault((_cuda.MODULE_OF[kind], np.dtype(dt).str), []).append(
                        _cuda.kernel_name(kind, dt, ndim=nd))
            else:
                names.setdefault((_cuda.MODULE_OF[kind], np.dtype(dt).str), []).append(
                    _cuda.kernel_name(kind, dt))
    _kernels.clear()
    for module in _kernels.MODULES:
        for dt in DTYPES:
            t = time.perf_counter()
            try:
                _kernels.get_module(module, dt)
                want = names.get((module, np.dtype(dt).str), [])
                for n in want:
                    _kernels.get_function(module, n, dt)
                res = "ok"
            except Exception as exc:  # report every failure, keep going
                want = []
                res = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                rep.fail(f"compile {module} {np.dtype(dt).name}")
            secs = time.perf_counter() - t
            rep.add(f"| {module} | {np.dtype(dt).name} | {len(want)} | {secs:.1f} | {res} |")
    rep.add("")


def _err(got, want):
    got, want = _backend("cupy").asnumpy(got), _backend("cupy").asnumpy(want)
    if got.shape != want.shape:
        return math.inf
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-300)
    return float(np.abs(got.astype(np.complex128) - want.astype(np.complex128)).max(initial=0.0)) / scale


def _cg_scalar_mismatch(cp, dt, rng):
    """Share of values where CGKernels.step / check / beta differ from CuPy's array expressions.

    Bit for bit (NaN payloads apart), over 600 images (more than a block's
    threads) with zero, negative, inf and NaN curvatures and residuals and some
    images already stopped: what batched_cg_fused's array path computes.
    """
    B, rtol = 600, 1e-3

    def vals(special):
        v = rng.standard_normal(B) * 10.0 ** rng.integers(-5, 6, B)
        m = rng.random(B) < 0.3
        v[m] = rng.choice(special, m.sum())
        return cp.asarray(v)

    rz, pq = vals([0.0, np.inf, np.nan, -1.0]), vals([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, 5e-324])
    rr, rz_new = cp.abs(vals([0.0, np.inf, np.nan, (0.9e-3) ** 2])), vals([0.0, np.inf, np.nan])
    bnorm = cp.asarray(np.where(rng.random(B) < 0.2, 1.0, rng.uniform(0.5, 2.0, B)))
    active0 = cp.asarray(rng.random(B) < 0.8)
    keep = active0 & cp.asarray(rng.random(B) < 0.9)
    # the array path (batched_cg_fused without the kernels), quiet on the simulator
    with np.errstate(all="ignore"):
        step = rz / cp.where(pq > 0, pq, 1)
        bad = active0 & ~((pq > 0) & cp.isfinite(step))
        active, breakdown, broken = active0 & ~bad, bad.copy(), bad
        a = cp.where(active, step, 0)
        iters = cp.zeros(B, dtype=np.int64) + active
        res = cp.sqrt(rr) / bnorm
        bad = active & ~cp.isfinite(res)
        breakdown, active, broken = breakdown | bad, active & ~bad, broken | bad
        done = active & (res <= rtol)
        flags = cp.stack([broken.any(), done.any(), active.any()])
        beta = cp.where(keep, rz_new / cp.where(rz != 0, rz, 1), 0)
    want = [a, active, breakdown, broken, iters, res, done, flags, beta]
    ops = _cuda.CGKernels((B,), (1,), dt)
    flag = [cp.zeros(B, dtype=bool) for _ in range(3)]
    got = [cp.empty(B), active0.copy(), flag[0], flag[1], cp.zeros(B, dtype=np.int64), cp.empty(B), flag[2],
           cp.zeros(3, dtype=bool), cp.empty(B)]
    ops.step(rz, pq, got[1], got[2], got[3], out=got[0])
    ops.check(rr, bnorm, rtol, got[1], got[2], got[3], got[4], got[5], got[6], got[7])
    ops.beta(rz_new, rz, keep, out=got[8])
    bad_values = total = 0
    for g, w in zip(got, want):
        g, w = _backend("cupy").asnumpy(g), _backend("cupy").asnumpy(w)
        if w.dtype.kind == "f":
            nan = np.isnan(w)
            same = np.where(nan, np.isnan(g), g.view(np.uint64) == w.view(np.uint64))
        else:
            same = g == w
        bad_values += int((~same).sum())
        total += same.size
    return bad_values / total


def launcher_checks(cp):
    """(name, dtype, relative error) of each launcher against the generic CuPy path."""
    from gpu_deconv._backend import get_backend
    from gpu_deconv._direct import StencilSum
    from gpu_deconv._ops import ArrayOps
    from gpu_deconv._padding import plan_axis
    from gpu_deconv.operators import ConvolutionOperator
    from gpu_deconv.solvers import closed_form as cf
    from gpu_deconv.solvers.regularizers import difference_kernel, laplacian_kernel

    bk = _backend("cupy")
    rng = np.random.default_rng(0)
    cases = {1: ((7, 4),), 2: ((6, 9), (5, 3)), 3: ((3, 6), (4, 4), (5, 2))}
    for dt in DTYPES:
        cdt = np.complex64 if dt == np.float32 else np.complex128

        def crandn(shape, cdt=cdt):
            return cp.asarray((rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(cdt))

        for boundary in BOUNDARIES:
            for nd, case in cases.items():
                plans = tuple(plan_axis(n, k, "full", boundary, "scipy", bk.next_fast_len) for n, k in case)
                n, G = tuple(p.n for p in plans), tuple(p.G for p in plans)
                win = (Ellipsis,) + tuple(slice(0, p.n_ext) for p in plans)
                x = cp.asarray(rng.standard_normal((3,) + n).astype(dt))
                v = cp.asarray(rng.standard_normal((3,) + G).astype(dt))
                got_p = _cuda.pad_to_grid(x, plans, boundary)
                got_f = _cuda.fold_from_grid(v, plans, boundary)
                with generic_path():
                    want_p = cp.zeros((3,) + G, dtype=dt)
                    want_p[win] = ArrayOps(get_backend(x=x)).pad(x, plans, boundary)
                    want_f = ArrayOps(get_backend(x=x)).fold(cp.ascontiguousarray(v[win]), plans, boundary)
                yield f"pad_to_grid {boundary} {nd}-D", dt, _err(got_p, want_p)
                yield f"fold_from_grid {boundary} {nd}-D", dt, _err(got_f, want_f)
        for nd in (1, 2, 3):
            G = (9, 8, 7)[:nd]
            m = (5, 8, 2)[:nd]
            v = cp.asarray(rng.standard_normal((2,) + G).astype(dt))
            win = (Ellipsis,) + tuple(slice(0, a) for a in m)
            yield f"crop {nd}-D", dt, _err(_cuda.crop(v, m), v[win])
            want = cp.zeros_like(v)
            want[win] = v[win]
            yield f"mask_window {nd}-D", dt, _err(_cuda.mask_window(v.copy(), m), want)
            small = cp.ascontiguousarray(v[win])
            want = cp.zeros_like(v)
            want[win] = small
            yield f"embed {nd}-D", dt, _err(_cuda.embed(small, G), want)
            s = cp.asarray(rng.uniform(-1.0, 1.0, m).astype(dt))
            yield f"crop scaled {nd}-D", dt, _err(_cuda.crop(v, m, scale=s), v[win] * s)
            want[win] = small * s
            yield f"embed scaled {nd}-D", dt, _err(_cuda.embed(small, G, scale=s), want)
        for boundary in BOUNDARIES:
            for nd, n in ((1, (11,)), (2, (9, 8)), (3, (5, 6, 7))):
                lap = ConvolutionOperator(cp.asarray(laplacian_kernel(nd).astype(dt)), n, "same",
                                          boundary=boundary)
                grads = [ConvolutionOperator(cp.asarray(difference_kernel(nd, a).astype(dt)), n, "same",
                                             boundary=boundary) for a in range(nd)]
                S = StencilSum([(0.5,) + lap.direct_term()] + [(2.0,) + g.direct_term() for g in grads]
                               + [(0.25, None, None)], n)
                x = cp.asarray(rng.standard_normal((3,) + n).astype(dt))
                sc = cp.asarray(rng.uniform(0.5, 2, 3).astype(dt))
                with generic_path():
                    want = S.apply(ArrayOps(get_backend(x=x)), x, (3,), sc.reshape((3,) + (1,) * nd))
                yield f"stencil_normal {boundary} {nd}-D", dt, _err(_cuda.stencil_normal(x, S, sc), want)
        B, F = 3, (9, 5)
        H, Y, Z = crandn((B,) + F), crandn((B,) + F), crandn((B,) + F)
        R = cp.asarray(rng.uniform(0.5, 2.0, F).astype(dt))
        lam, alpha = rng.uniform(0.1, 1, B).astype(dt), rng.uniform(0.1, 1, B).astype(dt)
        with generic_path():
            W, V = cf.spectral_filter(bk, H, R, lam, alpha, 2, np.dtype(dt))
            want = W * Y + V * Z
        yield "spectral_solve", dt, _err(_cuda.spectral_solve(Y.copy(), H, R, lam, alpha, Z, ndim=2), want)
        den = cp.abs(H) ** 2 + cp.asarray(lam)[:, None, None] * R + cp.asarray(alpha)[:, None, None]
        dmin, dmax = _cuda.spectral_extrema(H, R, lam, alpha, (B,), ndim=2)
        yield "spectral_extrema min", dt, _err(dmin, den.min(axis=(1, 2)))
        yield "spectral_extrema max", dt, _err(dmax, den.max(axis=(1, 2)))
        D = cp.asarray(rng.uniform(-0.5, 2.0, F).astype(dt))
        floor = rng.uniform(0.1, 0.3, B).astype(dt)
        yield "precondition_apply D, floor", dt, _err(
            _cuda.precondition_apply(Y.copy(), D=D, floor=floor, ndim=2),
            Y / cp.maximum(D, cp.asarray(floor)[:, None, None]))
        Dinv = 1 / cp.maximum(D, 0.2)
        yield "precondition_apply Dinv", dt, _err(_cuda.precondition_apply(Y.copy(), Dinv=Dinv, ndim=2),
                                                  Y * Dinv)
        Dm, Zm = crandn((3,) + F), crandn((2, 3) + F)
        am = cp.asarray(np.array([0.5, 2.0]).reshape(2, 1, 1))
        with generic_path():
            want = ArrayOps(get_backend(x=Dm)).sherman_morrison(Dm, cp.broadcast_to(Y[0], (2,) + F), Zm,
                                                                am.astype(dt))
        yield "sherman_morrison", dt, _err(_cuda.sherman_morrison(Dm, Y[0], Zm, am), want)
        for N in (1, 700, 5000):
            ops = _cuda.CGKernels((4,), (N,), dt)
            u, w, p, q = (cp.asarray(rng.standard_normal((4, N)).astype(dt)) for _ in range(4))
            a, beta = cp.asarray(rng.standard_normal(4)), cp.asarray(rng.standard_normal(4))
            yield f"CGKernels.dot N={N}", np.float64 if dt == np.float64 else dt, _err(
                ops.dot(u, w), (u.astype(np.float64) * w).sum(axis=1))
            x, r = u.copy(), w.copy()
            rr = ops.update_xr(x, r, p, q, a)
            ad = a.astype(dt)[:, None]
            yield f"CGKernels.update_xr N={N}", dt, max(_err(x, u + ad * p), _err(r, w - ad * q))
            yield f"CGKernels.update_xr r.r N={N}", dt, _err(rr, (r.astype(np.float64) ** 2).sum(axis=1))
            pp = p.copy()
            ops.update_p(pp, w, beta)
            yield f"CGKernels.update_p N={N}", dt, _err(pp, w + beta.astype(dt)[:, None] * p)
        yield "CGKernels.step/check/beta (bits differing)", dt, _cg_scalar_mismatch(cp, dt, rng)


def check_launchers(cp, rep):
    rep.add("## Launchers against the generic CuPy path", "",
            "Relative error (max |difference| / max |generic|); limit 1e-4 in float32, 1e-10 in float64.",
            "", "| launcher | dtype | error | result |", "|---|---|---|---|")
    try:
        for name, dt, err in launcher_checks(cp):
            ok = err <= TOL[np.dtype(dt)] * 10
            if not ok:
                rep.fail(f"launcher {name} {np.dtype(dt).name}")
            rep.add(f"| {name} | {np.dtype(dt).name} | {err:.1e} | {'ok' if ok else 'FAILED'} |")
    except Exception:
        rep.fail("launcher checks raised")
        rep.add("", "```", traceback.format_exc()[-4000:], "```")
    rep.add("")


def run_suite(rep, timeout):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs",
           str(ROOT / "tests")]
    rep.add("## GPU test suite", "", f"`{' '.join(cmd[1:])}`", "")
    t = time.perf_counter()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as exc:
        rep.fail("GPU suite timed out")
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rep.add(f"TIMED OUT after {timeout} s", "", "```", out[-3000:], "```", "")
        return
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    summary = lines[-1] if lines else "(no output)"
    rep.add(f"- {summary} ({time.perf_counter() - t:.0f} s, exit {res.returncode})", "")
    if res.returncode != 0:
        rep.fail("GPU suite")
        rep.add("```", res.stdout[-6000:], res.stderr[-2000:], "```", "")


def benchmark(cp, rep, size=2048, batch=16):
    """Timings against the issue's targets: the closed form and one PCG iteration against their FFT
    floors, and the closed form against the NumPy path on all CPU cores of this host."""
    import warnings

    import cupyx.scipy.fft as cfft

    import gpu_deconv as gd

    if SIMULATED:  # exercise the code on tiny sizes; the times mean nothing
        size, batch = 64, 2
    rep.add(f"## Timings ({batch} x {size}^2 float32, best of 5, CUDA events)", "")
    if SIMULATED:
        rep.add("SIMULATOR: sizes reduced and every time below is meaningless (CPU, not a GPU).", "")
    rng = np.random.default_rng(0)
    y_host = rng.standard_normal((batch, size, size), dtype=np.float32)
    h_host = np.outer([1.0, 4.0, 6.0, 4.0, 1.0], [1.0, 4.0, 6.0, 4.0, 1.0]).astype(np.float32) / 256
    y, h = cp.asarray(y_host), cp.asarray(h_host)

    def timed(fn, reps=5):
        fn()
        cp.cuda.Device().synchronize()
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        best = math.inf
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return best

    def fft_pair(shape):
        x = cp.zeros((batch,) + tuple(shape), dtype=np.float32)
        axes = (-2, -1)
        return timed(lambda: cfft.irfftn(cfft.rfftn(x, axes=axes), s=tuple(shape), axes=axes))

    rows = []
    floor = fft_pair((size, size))
    closed = timed(lambda: gd.deconvolve(y, h, mode="circular", lam=1e-3, reg="laplacian"))
    rows.append(("rfftn + irfftn, the closed form's floor", floor, 1.0, "1.00"))
    rows.append(("deconvolve, circular closed form", closed, closed / floor, "<= 1.5"))
    A = gd.ConvolutionOperator(h, (size, size), "valid")
    y_valid = cp.ascontiguousarray(y[:, : size - 4, : size - 4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # maxiter reached, on purpose

        def cg(iters):
            return timed(lambda: gd.deconvolve(y_valid, h, mode="valid", lam=1e-3, reg="laplacian",
                                               method="cg", maxiter=iters, rtol=1e-30), reps=3)

        per_iter = max(cg(6) - cg(3), 0.0) / 3
    pair = fft_pair(A.grid_shape)
    rows.append((f"one FFT pair on the CG grid {A.grid_shape}", pair, 1.0, ""))
    lap = gd.ConvolutionOperator(cp.asarray(np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)),
                                 (size, size), "same")
    x = cp.ascontiguousarray(y)
    stencil = timed(lambda: lap.normal_unchecked(x, (batch,)))
    with generic_path():
        shift_add = timed(lambda: lap.normal_unchecked(x, (batch,)))
    rows.append(("Laplacian normal operator, one stencil kernel (ratio: to one FFT pair)", stencil,
                 stencil / pair, "well under 1"))
    rows.append(("the same, shift-and-add array expressions (ratio: to the kernel)", shift_add,
                 shift_add / stencil, ""))
    rows.append(("one PCG iteration, valid, laplacian (6 minus 3 iterations, / 3)", per_iter, per_iter / pair,
                 "<= 1.5 x its FFT pairs (ratio here: to ONE pair)"))
    t = time.perf_counter()
    with gd.set_workers(None):
        gd.deconvolve(y_host, h_host, mode="circular", lam=1e-3, reg="laplacian")
    cpu = time.perf_counter() - t
    rows.append((f"NumPy path, same closed form, {os.cpu_count()} CPU cores (one run)", cpu, cpu / closed,
                 ">= 50 (ratio here: CPU / GPU)"))
    rep.add("| what | seconds | ratio | target |", "|---|---|---|---|")
    rep.add(*(f"| {w} | {sec:.4g} | {r:.2f} | {tgt} |" for w, sec, r, tgt in rows))
    rep.add("")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="report path (default $GPU_CHECK_OUT, $OUT/gpu_check.md or ./gpu_check.md)")
    ap.add_argument("--no-suite", action="store_true", help="skip the GPU test suite")
    ap.add_argument("--no-bench", action="store_true", help="skip the timing")
    ap.add_argument("--suite-timeout", type=int, default=240, help="seconds for the GPU suite (default 240)")
    args = ap.parse_args(argv)
    out = report_path(args.out)
    rep = Report()
    t0 = time.perf_counter()
    rep.add("# gpu_deconv GPU check", "",
            f"Started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
            f"`{' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}`", "")
    if SIMULATED:
        rep.add("**SIMULATOR RUN** (`GPU_DECONV_SIMULATOR=1`): the GPU code path executed on the CPU. "
                "It checks logic only; nothing here is a GPU result.", "")
    cp, why = cupy_status()
    if cp is None:
        rep.fail("no usable GPU")
        rep.add(f"No usable GPU: {why}", "")
    else:
        environment(cp, rep)
        compile_all(cp, rep)
        check_launchers(cp, rep)
        if not args.no_suite:
            cp.get_default_memory_pool().free_all_blocks()  # the suite runs in a child process
            run_suite(rep, args.suite_timeout)
        if not args.no_bench:
            try:
                benchmark(cp, rep)
            except Exception:
                rep.fail("benchmark raised")
                rep.add("```", traceback.format_exc()[-3000:], "```", "")
    verdict = "ALL CHECKS PASSED" if not rep.failures else "FAILED: " + "; ".join(rep.failures)
    rep.lines[2:2] = [f"**{verdict}** ({time.perf_counter() - t0:.0f} s)", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rep.lines) + "\n")
    print(f"{verdict}; report: {out}")
    return 0 if not rep.failures else 1


if __name__ == "__main__":
    sys.exit(main())
