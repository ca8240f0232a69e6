"""Command-line tool ``gpu-deconv`` (also ``python -m gpu_deconv``).

Subcommands: ``deconvolve``, ``convolve``, ``estimate-kernel``, ``demo``, ``info``
and ``bench``; ``gpu-deconv SUBCOMMAND --help`` documents each.

Exit status: 0 when everything was written and every solve converged; 1 when
some file failed or a solve did not converge (each is named on stderr); 2 for
bad arguments (argparse's convention), including ``--device gpu`` without a
usable GPU. Errors are one line on stderr; ``--debug`` shows the traceback of
an unexpected one.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import io
from ._backend import _backend, cupy_status, get_backend, get_workers
from ._typing import BOUNDARIES, CONVENTIONS, METHODS, MODES
from ._validation import all_finite, check_dtype_arg, float_dtype, one_line

PROG = "gpu-deconv"
REGS = ("laplacian", "gradient", "identity")
FORMAT_CHOICES = ("keep", "tiff", "png", "jpeg", "npy")
OUT_DTYPES = ("auto", "float32", "float64", "uint8", "uint16")


class UsageError(Exception):
    """A bad argument or an impossible request: one line, exit status 2."""


class RunError(Exception):
    """The work could not start (a missing library, ...): one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line instead of argparse's usage block: the usage is one --help away.
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ----------------------------------------------------------- argument types
def _float_ge0(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _float_gt0(text: str) -> float:
    v = _float_ge0(text)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def _lam_arg(text: str) -> float | str:
    """--lam: a number >= 0, or the name of a criterion that chooses it per image."""
    if text in ("gcv", "discrepancy"):
        return text
    try:
        return _float_ge0(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, 'gcv' or 'discrepancy', got {text!r}") \
            from None


def _int_ge(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return v

    return parse


# ------------------------------------------------------------------ devices
def _cupy_for(choice: str) -> tuple[Any, str]:
    """(cupy or None for NumPy, why not) for ``--device``; ``gpu`` without a GPU is a UsageError."""
    if choice == "cpu":
        return None, "--device cpu"
    cp, why = cupy_status()
    if cp is None and choice == "gpu":
        raise UsageError(f"--device gpu: no usable GPU: {why}")
    return cp, why


def _select_device(choice: str) -> tuple[Any, str]:
    """(cupy or None for NumPy, label). ``gpu`` without a GPU is a UsageError; ``auto`` falls back."""
    cp, _ = _cupy_for(choice)
    return cp, "CPU" if cp is None else f"GPU ({_gpu_name(cp)})"


def _gpu_name(cp: Any) -> str:
    try:
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "CUDA device"


def _to_host(a: Any) -> np.ndarray:
    return get_backend(a=a).asnumpy(a)


# ------------------------------------------------------------------- output
class _Reporter:
    """Errors and warnings on stderr, a tqdm bar on a terminal (unless --quiet), the summary on stdout."""

    def __init__(self, prog: str, total: int, quiet: bool, unit: str = "file"):
        self.prog = prog
        self.quiet = quiet
        self.bar = None
        if not quiet and total > 1 and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:  # the bar is a nicety: no tqdm, no bar
                tqdm = None
            if tqdm is not None:
                try:
                    cols = os.get_terminal_size(sys.stderr.fileno()).columns
                except (OSError, ValueError):
                    cols = 0
                # A terminal reporting 0 columns (a bare pty) would get an empty bar.
                self.bar = tqdm(total=total, unit=unit, file=sys.stderr, leave=False,
                                dynamic_ncols=cols > 0, ncols=None if cols > 0 else 80,
                                nrows=None if cols > 0 else 24,
                                desc=prog.split()[-1])

    def _err(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def error(self, msg: str) -> None:
        self._err(f"{self.prog}: error: {msg}")

    def warning(self, msg: str) -> None:
        self._err(f"{self.prog}: warning: {msg}")

    def info(self, msg: str) -> None:
        if not self.quiet:
            if self.bar is not None:
                self.bar.write(msg, file=sys.stdout)
            else:
                print(msg, flush=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------- file plans
@dataclass
class _Job:
    src: Path
    dst: Path
    fmt: str
    image: io.ImageFile | None = None
    batch_shape: tuple[int, ...] = ()
    out_dtype: np.dtype | None = None
    flat: np.ndarray | None = None  # the images as (B, *spatial), until written


def _plan_outputs(args: argparse.Namespace, files: list[Path], batch: bool, suffix: str,
                  rep: _Reporter) -> list[_Job]:
    """Where each input goes; problems (exists, would overwrite the input, collisions) are reported."""
    fmt_opt = None if args.format == "keep" else args.format
    out = args.output
    jobs: list[_Job] = []
    to_file = (out is not None and not batch and not Path(out).is_dir()
               and not out.endswith(("/", os.sep)))
    if to_file:
        try:
            fmt = io.format_of(out)
        except io.ImageFileError as exc:
            raise UsageError(f"-o/--output: {exc}") from None
        if fmt_opt and fmt_opt != fmt:
            raise UsageError(f"-o/--output {out!r} is a {fmt.upper()} file name but --format is {fmt_opt!r}")
        if files:
            jobs.append(_Job(files[0], Path(out), fmt))
    else:
        outdir = Path(out) if out is not None else None
        if outdir is not None:
            if outdir.exists() and not outdir.is_dir():
                raise UsageError(f"-o/--output {out!r} is a file; with several inputs it must be a directory")
            try:
                outdir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"-o/--output {out!r}: cannot create the directory "
                                 f"({one_line(exc)})") from None
        for f in files:
            try:
                in_fmt = io.format_of(f)
            except io.ImageFileError as exc:
                rep.error(str(exc))
                continue
            fmt = fmt_opt or in_fmt
            ext = f.suffix if fmt == in_fmt else io.EXTENSION[fmt]
            name = f.stem + ("" if outdir is not None else suffix) + ext
            jobs.append(_Job(f, (outdir if outdir is not None else f.parent) / name, fmt))
    kept: list[_Job] = []
    taken: dict[str, Path] = {}
    for j in jobs:
        key = os.path.normcase(os.path.abspath(j.dst))
        if key == os.path.normcase(os.path.abspath(j.src)) or (
                j.dst.exists() and j.src.exists() and os.path.samefile(j.dst, j.src)):
            rep.error(f"{j.src}: the output {j.dst} would overwrite the input; choose another -o")
        elif key in taken:
            rep.error(f"{j.src}: its output {j.dst} is also the output of {taken[key]}; "
                      "use -o with distinct names or --format")
        elif j.dst.exists() and not args.force:
            rep.error(f"{j.src}: output {j.dst} exists (use --force to overwrite)")
        else:
            taken[key] = j.src
            kept.append(j)
    return kept


def _expand(args: argparse.Namespace, rep: _Reporter, skip: Sequence[str]) -> tuple[list[Path], bool, int]:
    files, problems, batch = io.expand_inputs(args.inputs, skip=skip)
    for p in problems:
        rep.error(p)
    return files, batch, len(problems)


def _check_libraries(fmts: set[str]) -> None:
    for fmt in sorted(fmts):
        if fmt in io._EXTRA:  # the formats that need an optional library
            try:
                io._require(fmt, "reading or writing")
            except io.MissingDependencyError as exc:
                raise RunError(str(exc)) from None


def _load_psf(path: str, normalize: bool) -> np.ndarray:
    try:
        img = io.load(path, gray=True)
    except io.MissingDependencyError as exc:
        raise RunError(f"--psf: {exc}") from None
    except io.ImageFileError as exc:
        raise UsageError(f"--psf: {exc}") from None
    h = img.data.astype(np.float64)
    if img.colour:
        h = h.mean(axis=-1)
    if h.ndim == 0:
        raise UsageError(f"--psf {path}: is a single number (a 0-d array); a PSF needs at least one axis")
    if not all_finite(np, h):
        raise UsageError(f"--psf {path}: contains NaN or infinite values")
    if normalize:
        s = float(h.sum())
        if not s > 0:
            raise UsageError(f"--psf {path}: sums to {s:g}, cannot be normalised to sum 1 "
                             "(pass --no-normalize-psf to use it as it is)")
        h = h / s
    return h


def _channels_first(img: io.ImageFile) -> np.ndarray:
    """The pixels, a colour axis moved first: each colour channel is one more image of the batch."""
    return np.moveaxis(img.data, -1, 0) if img.colour else img.data


def _working_dtype(args: argparse.Namespace, stored: np.dtype) -> np.dtype:
    # The library's rule: float32 (and float16) work in float32, everything else in float64.
    return float_dtype("input", stored, check_dtype_arg(args.dtype))


def _output_dtype(choice: str, fmt: str, stored: np.dtype, result: np.dtype) -> np.dtype:
    """auto: PNG/JPEG keep the stored integer type, TIFF float32, .npy the result's float type."""
    if choice != "auto":
        return np.dtype(choice)
    if fmt in ("png", "jpeg"):
        if stored.kind in "ub" and stored.itemsize <= 2:
            return np.dtype(np.uint8) if stored.kind == "b" else stored
        raise io.ImageFileError(f"{fmt.upper()} output needs integer pixels and the input is {stored}: "
                                "give --output-dtype uint8 or uint16 (values are rounded and clipped), "
                                "or --format tiff/npy")
    if fmt == "tiff":
        return np.dtype(np.float32)
    return result


# ----------------------------------------------------------- batch runner
@dataclass
class _Stats:
    files: int = 0
    images: int = 0
    failed: list[str] = field(default_factory=list)
    not_converged: list[str] = field(default_factory=list)
    methods: set[str] = field(default_factory=set)
    iterations: list[int] = field(default_factory=list)
    preconditioned: bool = False
    lams: list[float] = field(default_factory=list)
    lam_rule: str = ""  # "gcv" / "discrepancy" when chosen from the data


@dataclass
class _Transform:
    """What is done to a flat stack (B, *spatial) -> (B, *out_spatial), and the info per image."""

    name: str
    ndim: int
    out_spatial: Callable[[tuple[int, ...]], tuple[int, ...]]
    apply: Callable[[Any], tuple[Any, Any]]
    psf: str
    device: str  # where `apply` runs, for the summary line


def _run_files(args: argparse.Namespace, prog: str, suffix: str, transform: _Transform) -> int:
    t_start = time.perf_counter()
    rep0 = _Reporter(prog, 0, True)
    files, batch, n_missing = _expand(args, rep0, skip=(suffix,))
    if batch and transform.psf:
        # A PSF kept beside the images is not one of them.
        psf = os.path.normcase(os.path.abspath(transform.psf))
        files = [f for f in files if os.path.normcase(os.path.abspath(f)) != psf]
    jobs = _plan_outputs(args, files, batch, suffix, rep0)
    planned_failures = n_missing + (len(files) - len(jobs))
    if not jobs:
        if planned_failures == 0:
            rep0.error("no input files")
        return 1
    fmts = {j.fmt for j in jobs}
    for j in jobs:
        try:
            fmts.add(io.format_of(j.src))
        except io.ImageFileError:
            pass
    _check_libraries(fmts)
    stats = _Stats()
    rule = getattr(args, "lam", None)
    stats.lam_rule = rule if isinstance(rule, str) else ""
    rep = _Reporter(prog, len(jobs), args.quiet)
    bs = args.batch_size or None
    pending: list[_Job] = []
    key: Any = None
    try:
        for job in jobs:
            flat = _read_job(args, job, transform, rep, stats)
            if flat is None:
                continue
            k = (flat.shape[1:], flat.dtype)
            n_pending = sum(int(np.prod(j.batch_shape)) for j in pending)
            if pending and (k != key or (bs is not None and n_pending >= bs)):
                _flush(args, pending, transform, rep, stats, bs)
                pending = []
            key = k
            job.flat = flat
            pending.append(job)
        _flush(args, pending, transform, rep, stats, bs)
    finally:
        rep.close()
    elapsed = time.perf_counter() - t_start
    n_failed = planned_failures + len(stats.failed)
    if not args.quiet:
        print(_summary(prog, stats, n_failed, elapsed, transform.device), flush=True)
    return 1 if n_failed or stats.not_converged else 0


def _read_job(args, job: _Job, transform: _Transform, rep: _Reporter, stats: _Stats) -> np.ndarray | None:
    try:
        img = io.load(job.src)
        data = _channels_first(img)
        nd = transform.ndim
        if data.ndim < nd:
            raise io.ImageFileError(f"{job.src}: has {data.ndim} axes (shape {img.data.shape}) but the "
                                    f"PSF has {nd}")
        wdt = _working_dtype(args, img.dtype)
        data = data.astype(wdt, copy=False)
        if not all_finite(np, data):
            raise io.ImageFileError(f"{job.src}: contains NaN or infinite values")
        spatial = tuple(data.shape[data.ndim - nd:])
        job.batch_shape = tuple(data.shape[:data.ndim - nd])
        job.out_dtype = _output_dtype(args.output_dtype, job.fmt, img.dtype, wdt)
        out_shape = job.batch_shape + transform.out_spatial(spatial)
        if img.colour:
            out_shape = out_shape[1:] + out_shape[:1]
        if job.fmt in ("png", "jpeg"):
            io._check_pil_shape(job.dst, job.fmt, _Shape(out_shape, job.out_dtype), img.colour)
    except (io.ImageFileError, ValueError) as exc:
        _fail(rep, stats, job, str(exc) if str(exc).startswith(str(job.src)) else f"{job.src}: {exc}")
        return None
    except MemoryError:
        # One file too large for this machine must not stop the batch (nor go unnamed).
        _fail(rep, stats, job, f"{job.src}: too large to read into memory (MemoryError); skipped")
        return None
    job.image = img
    return data.reshape((-1,) + spatial)


class _Shape:
    """Shape and dtype of an array not computed yet (enough for the PNG/JPEG checks)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)


def _fail(rep: _Reporter, stats: _Stats, job: _Job, msg: str) -> None:
    rep.error(msg)
    stats.failed.append(str(job.src))
    rep.advance()


def _solve_stack(transform: _Transform, flat: np.ndarray, bs: int | None) -> tuple[np.ndarray, list]:
    n = flat.shape[0]
    step = bs or n
    outs, infos = [], []
    for start in range(0, n, step):
        out, info = transform.apply(flat[start:start + step])
        outs.append(_to_host(out))
        infos.append((start, min(start + step, n), info))
    return np.concatenate(outs), infos


def _flush(args, pending: list[_Job], transform: _Transform, rep: _Reporter, stats: _Stats,
           bs: int | None) -> None:
    if not pending:
        return
    flat = np.concatenate([j.flat for j in pending])
    try:
        out, infos = _solve_stack(transform, flat, bs)
    except Exception as exc:
        if len(pending) > 1:
            # Isolate the culprit: solve file by file so that one bad file fails alone.
            for j in pending:
                _flush(args, [j], transform, rep, stats, bs)
            return
        j = pending[0]
        _fail(rep, stats, j, f"{j.src}: {transform.name} failed ({type(exc).__name__}: {one_line(exc)})")
        return
    conv = np.ones(len(flat), bool)
    resid = np.zeros(len(flat))
    iters = np.zeros(len(flat), np.int64)
    approximate = False
    for start, stop, info in infos:
        if info is None:
            continue
        stats.methods.add(info.method)
        stats.preconditioned |= bool(info.preconditioned)
        if getattr(info, "lam", None) is not None:
            stats.lams.extend(float(v) for v in np.ravel(info.lam))
        approximate |= info.method == "fft_approx"
        conv[start:stop] = np.ravel(info.converged)
        resid[start:stop] = np.ravel(info.residual)
        iters[start:stop] = np.ravel(info.iterations)
    if approximate:
        conv[:] = True  # Fourier division is an approximation by choice, not a solve that failed
    i = 0
    for j in pending:
        n = int(np.prod(j.batch_shape))
        res = out[i:i + n].reshape(j.batch_shape + out.shape[1:])
        c, r, it = conv[i:i + n], resid[i:i + n], iters[i:i + n]
        i += n
        if j.image is not None and j.image.colour:
            res = np.moveaxis(res, 0, -1)
        try:
            j.dst.parent.mkdir(parents=True, exist_ok=True)
            # out_dtype is set by _read_job before a job joins `pending`.
            io.write_image(j.dst, io.to_dtype(res, j.out_dtype), force=args.force, format=j.fmt,  # type: ignore[arg-type]
                           colour=bool(j.image is not None and j.image.colour))
        except Exception as exc:  # one file that cannot be written must not stop the batch
            _fail(rep, stats, j, f"{j.src}: cannot write {j.dst} ({one_line(exc)})")
            continue
        stats.files += 1
        stats.images += n
        stats.iterations.extend(int(v) for v in it)
        if not c.all():
            stats.not_converged.append(str(j.src))
            rep.warning(f"{j.src}: did not converge ({int((~c).sum())} of {n} images; residual up to "
                        f"{float(r.max()):.2e} > rtol {args.rtol:g} after {int(it.max())} iterations); "
                        f"written anyway to {j.dst}")
        rep.advance()
        j.image = None
        j.flat = None


def _summary(prog: str, s: _Stats, n_failed: int, elapsed: float, device: str) -> str:
    total = s.files + n_failed
    parts = [f"{prog}: {s.files} of {total} file{'s' if total != 1 else ''} written "
             f"({s.images} image{'s' if s.images != 1 else ''}) in {elapsed:.2f} s on {device}"]
    if s.methods:
        m = "/".join(sorted(s.methods))
        if "cg" in s.methods:
            m += " (preconditioned)" if s.preconditioned else " (plain)"
        its = s.iterations
        it = f"{min(its)}-{max(its)}" if its and min(its) != max(its) else (str(its[0]) if its else "0")
        conv = ("all converged" if not s.not_converged
                else f"{len(s.not_converged)} file{'s' if len(s.not_converged) != 1 else ''} NOT converged")
        parts.append(f"method {m}, iterations {it}, {conv}")
    if s.lams:
        lo, hi = min(s.lams), max(s.lams)
        how = f" ({s.lam_rule})" if s.lam_rule else ""
        parts.append(f"lam {lo:.3g}{how}" if lo == hi else f"lam {lo:.3g} to {hi:.3g}{how}")
    parts.append(f"{n_failed} failed" if n_failed else "none failed")
    return "; ".join(parts)


# ----------------------------------------------------------------- commands
def _device_backend(cp: Any):
    """The backend that moves arrays to the device --device chose (cp: cupy, or None for the CPU)."""
    return _backend("numpy" if cp is None else "cupy")


def _psf_on_device(args: argparse.Namespace) -> tuple[np.ndarray, Any, Any, str]:
    """The --psf (host), the backend of --device, the PSF on that device, and the device's label."""
    h = _load_psf(args.psf, not args.no_normalize_psf)
    cp, label = _select_device(args.device)
    bk = _device_backend(cp)
    return h, bk, bk.asarray(h), label


def _cmd_deconvolve(args: argparse.Namespace) -> int:
    from ._padding import input_shape
    from .solvers.closed_form import SingularSystemError
    from .solvers.deconvolve import deconvolve

    if args.noise_sigma is not None and args.lam != "discrepancy":
        raise UsageError(f"--noise-sigma is used only with --lam discrepancy (got --lam {args.lam})")
    if args.lam == "gcv" and args.method == "fft_approx":
        raise UsageError("--lam gcv needs an exact model; --method fft_approx is an approximation "
                         "(use --method auto or a numeric --lam)")
    h, bk, hd, label = _psf_on_device(args)
    nd = h.ndim
    reg = None if args.reg == "identity" else args.reg

    def apply(stack):
        try:
            return deconvolve(bk.asarray(stack), hd, lam=args.lam, reg=reg, mode=args.mode,
                              boundary=args.boundary, convention=args.convention, method=args.method,
                              rtol=args.rtol, maxiter=args.maxiter, return_info=True, ndim=nd,
                              noise_sigma=args.noise_sigma)
        except SingularSystemError:
            # The library's message speaks of lam/reg/alpha; say it in this command's options.
            raise SingularSystemError(
                f"the PSF's transfer function vanishes at some frequencies and --lam {args.lam} with "
                f"--reg {args.reg} leaves the problem singular there: give a positive --lam (e.g. "
                "--lam gcv) with a regularizer that is nonzero where the PSF vanishes (--reg identity "
                "is nonzero everywhere)") from None

    t = _Transform("deconvolution", nd, lambda m: tuple(input_shape(args.mode, m, h.shape)), apply,
                   args.psf, label)
    return _run_files(args, f"{PROG} deconvolve", "_deconv", t)


def _cmd_convolve(args: argparse.Namespace) -> int:
    from ._padding import output_shape
    from .conv import convolve

    h, bk, hd, label = _psf_on_device(args)
    nd = h.ndim
    rng = np.random.default_rng(args.seed)

    def apply(stack):
        y = convolve(bk.asarray(stack), hd, args.mode, boundary=args.boundary, convention=args.convention,
                     ndim=nd)
        if args.noise > 0:
            # Drawn on the host: the same seed gives the same noise on the CPU and the GPU.
            noise = rng.standard_normal(y.shape).astype(y.dtype) * args.noise
            y = y + bk.asarray(noise)
        return y, None

    t = _Transform("convolution", nd,
                   lambda m: tuple(output_shape(m, h.shape, args.mode)), apply,
                   args.psf, label)
    return _run_files(args, f"{PROG} convolve", "_conv", t)


def _cmd_estimate_kernel(args: argparse.Namespace) -> int:
    from .solvers.kernel import estimate_kernel

    prog = f"{PROG} estimate-kernel"
    imgs = []
    for name, path in (("SHARP", args.sharp), ("BLURRED", args.blurred)):
        try:
            img = io.load(path)
        except io.MissingDependencyError as exc:
            raise RunError(str(exc)) from None
        except io.ImageFileError as exc:
            print(f"{prog}: error: {name} {exc}", file=sys.stderr)
            return 1
        imgs.append(img)
    sharp, blurred = imgs
    ks = tuple(args.size) if len(args.size) > 1 else (args.size[0],) * 2
    if args.output is not None:
        dst = Path(args.output)
        try:
            fmt = io.format_of(dst)
        except io.ImageFileError as exc:
            raise UsageError(f"-o/--output: {exc}") from None
    else:
        fmt = "npy" if blurred.format in ("npy", "png", "jpeg") else "tiff"
        dst = blurred.path.with_name(blurred.path.stem + "_kernel" + io.EXTENSION[fmt])
    if fmt in ("png", "jpeg"):
        raise UsageError(f"-o/--output {str(dst)!r}: a kernel needs floating point: write .tif or .npy")
    if dst.exists() and not args.force:
        print(f"{prog}: error: output {dst} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    _check_libraries({fmt})
    cp, label = _select_device(args.device)
    x, y = _channels_first(sharp), _channels_first(blurred)
    dtype = np.dtype(args.dtype) if args.dtype else np.float64
    x, y = x.astype(dtype), y.astype(dtype)
    if cp is not None:
        x, y = _device_backend(cp).asarray(x), _device_backend(cp).asarray(y)
    t0 = time.perf_counter()
    try:
        h = estimate_kernel(x, y, ks, lam=args.lam, mode=args.mode, boundary=args.boundary,
                            convention=args.convention)
    except (ValueError, TypeError) as exc:
        print(f"{prog}: error: {sharp.path} / {blurred.path}: {one_line(exc)}", file=sys.stderr)
        return 1
    h = _to_host(h)
    elapsed = time.perf_counter() - t0
    if args.normalize:
        s = float(h.sum())
        if s != 0:
            h = h / s
    out = h.astype(np.float32) if fmt == "tiff" else h
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        io.write_image(dst, out, force=args.force, format=fmt)
    except (OSError, io.ImageFileError) as exc:
        print(f"{prog}: error: cannot write {dst} ({one_line(exc)})", file=sys.stderr)
        return 1
    if not args.quiet:
        peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(h)), h.shape))
        pairs = int(np.prod(np.broadcast_shapes(x.shape[:x.ndim - len(ks)], y.shape[:y.ndim - len(ks)])))
        print(f"{prog}: estimated a {'x'.join(map(str, ks))} kernel from {pairs} image pair"
              f"{'s' if pairs != 1 else ''} (mode {args.mode}, boundary {args.boundary}) in {elapsed:.2f} s "
              f"on {label}: sum {float(h.sum()):.6g}, peak at {peak}; wrote {dst}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.device == "gpu":
        _cupy_for("gpu")  # no GPU: a UsageError (exit 2) here rather than run_demo's RuntimeError
    res = run_demo(args.output, size=args.size, device=args.device, figure=not args.no_figure)
    return 0 if res["converged"] else 1


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cmd_info(args: argparse.Namespace) -> int:
    import importlib.resources

    import scipy

    from . import __version__

    pkg = Path(__file__).resolve().parent
    print(f"gpu_deconv {__version__} ({pkg})")
    print(f"python {platform.python_version()} ({platform.system()} {platform.machine()})")
    print(f"numpy {np.__version__}, scipy {scipy.__version__}; CPU FFT threads: {get_workers()}")
    extras = [("tifffile", "tifffile", "tiff"), ("Pillow", "Pillow", "image"), ("dask", "dask", "dask"),
              ("distributed", "distributed", "dask"), ("tqdm", "tqdm", "progress"),
              ("matplotlib", "matplotlib", "plot")]
    for label, dist, extra in extras:
        v = _version(dist)
        print(f"{label}: {v}" if v else f"{label}: not installed (pip install 'gpu_deconv[{extra}]')")
    cp, why = cupy_status()
    if cp is None:
        print(f"cupy: not usable: {why}")
        print("GPU: not usable; --device auto runs on the CPU")
    else:
        rt = cp.cuda.runtime
        try:
            r, d = rt.runtimeGetVersion(), rt.driverGetVersion()
            cuda = f"CUDA runtime {r // 1000}.{r % 1000 // 10}, driver {d // 1000}.{d % 1000 // 10}"
        except Exception as exc:
            cuda = f"CUDA versions unknown ({one_line(exc)})"
        print(f"cupy: {cp.__version__}, {cuda}")
        for i in range(rt.getDeviceCount()):
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            print(f"GPU {i}: {name}, {p['totalGlobalMem'] / 2**30:.1f} GiB, "
                  f"compute capability {p['major']}.{p['minor']}")
    try:
        root = importlib.resources.files("gpu_deconv.kernels")
        srcs = sorted(e.name for e in root.iterdir() if e.name.endswith((".cu", ".cuh")))
        where = str(root)
    except (ModuleNotFoundError, OSError) as exc:
        srcs, where = [], f"not found ({one_line(exc)})"
    if srcs:
        print(f"CUDA kernel sources: {len(srcs)} in {where} ({', '.join(srcs)})")
    else:
        print(f"CUDA kernel sources: none in {where} (the CuPy path uses library FFTs only)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import deconvolve
    from .conv import convolve
    from .data import gaussian_kernel, scene

    cp, why = _cupy_for(args.device)
    n, b, dt = args.size, args.batch, np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    x = np.stack([scene((n, n), seed=i) for i in range(b)]).astype(dt)
    h = gaussian_kernel(9, 1.5).astype(dt)
    y_same = convolve(x, h, "same", boundary="symmetric")
    y_same += (0.01 * rng.standard_normal(y_same.shape)).astype(dt)
    y_valid = convolve(x, h, "valid")
    y_valid += (0.01 * rng.standard_normal(y_valid.shape)).astype(dt)
    kw: dict[str, Any] = dict(lam=1e-3, reg="laplacian")
    cases = [
        ("convolve same (zero boundary)", lambda X, Yc, Yv, H: convolve(X, H, "same")),
        ("convolve valid", lambda X, Yc, Yv, H: convolve(X, H, "valid")),
        ("deconvolve circular (fft)", lambda X, Yc, Yv, H: deconvolve(Yc, H, mode="circular", **kw)),
        ("deconvolve same+symmetric (dct)",
         lambda X, Yc, Yv, H: deconvolve(Yc, H, mode="same", boundary="symmetric", **kw)),
        ("deconvolve valid (PCG)", lambda X, Yc, Yv, H: deconvolve(Yv, H, mode="valid", rtol=1e-6, **kw)),
    ]

    def timeit(fn, arrays, sync):
        fn(*arrays)  # warm-up: plans, caches, kernel compilation
        sync()
        ts = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn(*arrays)
            sync()
            ts.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(ts))

    host = (x, y_same, y_valid, h)
    if cp is not None:
        gbk = _device_backend(cp)
        dev = tuple(gbk.asarray(a) for a in host)

        def gsync():
            gbk.synchronize()

    rows = []
    for name, fn in cases:
        c = timeit(fn, host, lambda: None)
        if cp is not None:
            g = timeit(fn, dev, gsync)
            rows.append((name, f"{c:.1f}", f"{g:.1f}", f"{c / g:.1f}x"))
        else:
            short = "--device cpu" if args.device == "cpu" else (
                "no cupy" if "not installed" in why else "no usable GPU")
            rows.append((name, f"{c:.1f}", f"n/a: {short}", "-"))
    head = ("operation", "CPU ms", "GPU ms", "CPU/GPU")
    w = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    print(f"gpu-deconv bench: batch of {b} images {n}x{n} {dt.name}, 9x9 Gaussian kernel, "
          f"lam 1e-3 Laplacian; median of {args.repeat} runs after a warm-up")
    print("  ".join([head[0].ljust(w[0])] + [head[i].rjust(w[i]) for i in (1, 2, 3)]))
    for r in rows:
        print("  ".join([r[0].ljust(w[0])] + [r[i].rjust(w[i]) for i in (1, 2, 3)]))
    gpu = f"GPU: {_gpu_name(cp)}" if cp is not None else f"GPU: n/a: {why}"
    print(f"CPU: {_cpu_name()}, {os.cpu_count()} cores, {get_workers()} FFT threads; {gpu}; "
          f"{time.strftime('%Y-%m-%d')}")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------- parser
def _add_model_args(p: argparse.ArgumentParser, *, mode_default: str = "same") -> None:
    p.add_argument("--mode", choices=MODES, default=mode_default,
                   help="data model / output window (default: %(default)s)")
    p.add_argument("--boundary", choices=BOUNDARIES, default=None,
                   help="how the image is extended beyond its edges (default: symmetric, which suits "
                        "camera images, or periodic with --mode circular; the library's default is zero)")
    p.add_argument("--convention", choices=CONVENTIONS, default="scipy",
                   help="origin of 'same' for even kernels: SciPy or MATLAB conv2 (default: %(default)s)")


def _add_files_args(p: argparse.ArgumentParser, suffix: str) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image file(s) (.tif/.tiff, .png, .jpg/.jpeg, .npy), directories or quoted globs; "
                        "all of them are one batch. Directories and globs skip files named "
                        f"*{suffix}.* (this command's own outputs)")
    p.add_argument("--psf", required=True, metavar="PSF",
                   help="point-spread function (kernel) file, any supported format; its number of axes is "
                        "the number of spatial axes (a 2-D PSF on a TIFF stack treats each page as an image)")
    p.add_argument("--no-normalize-psf", action="store_true",
                   help="use the PSF as it is (default: scaled to sum 1)")
    p.add_argument("-o", "--output", metavar="OUTPUT",
                   help=f"output file (one input), or directory (created if needed). Default: next to each "
                        f"input, named NAME{suffix}.EXT; into a directory the names are kept")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="keep",
                   help="output format (default: that of each input, or of -o's extension)")
    p.add_argument("--output-dtype", choices=OUT_DTYPES, default="auto",
                   help="pixel type written (default auto: PNG/JPEG keep the input's integer type, "
                        "rounded and clipped; TIFF float32; .npy the working float type)")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="working precision (default: float32 input stays float32, otherwise float64)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the GPU when cupy and a CUDA device are usable, else the CPU (default)")
    p.add_argument("--batch-size", type=_int_ge(0), default=32, metavar="N",
                   help="images solved together, at most (default: %(default)s; 0: every image of one "
                        "shape at once). Pages of a stack count as images")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar and no summary line (errors and warnings are still printed)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gpu-deconv`` (one subparser per subcommand)."""
    p = _Parser(prog=PROG, description="Exact convolution least squares (deconvolution) on the CPU or GPU.",
                epilog="Exit status: 0 all good, 1 a file failed or a solve did not converge, "
                       "2 bad arguments. See 'gpu-deconv COMMAND --help'.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"gpu_deconv {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("deconvolve", help="deconvolve image files with a PSF (exact least squares)",
                       description="Solve argmin_x 1/2||h*x - y||^2 + lam/2 ||G x||^2 for every image: the "
                                   "exact regularized least-squares deconvolution. A directory or glob is "
                                   "one batch, solved together. Exit 1 if a file fails or a solve does "
                                   "not converge (the result is still written).")
    _add_files_args(d, "_deconv")
    d.add_argument("--lam", type=_lam_arg, default="gcv",
                   help="regularization weight: a number >= 0, or chosen per image from the data by "
                        "'gcv' (generalized cross-validation of the exact model) or 'discrepancy' "
                        "(residual = noise level; see --noise-sigma). Default: %(default)s")
    d.add_argument("--noise-sigma", type=_float_gt0, default=None, metavar="SIGMA",
                   help="standard deviation of the noise, in the image's units, for --lam discrepancy "
                        "(default: estimated from each image)")
    d.add_argument("--reg", choices=REGS, default="laplacian",
                   help="regularizer G: laplacian, gradient (forward differences) or identity "
                        "(Tikhonov) (default: %(default)s)")
    _add_model_args(d)
    d.add_argument("--method", choices=METHODS, default="auto",
                   help="auto: exact closed form (fft/dct) where one exists, preconditioned CG otherwise; "
                        "fft_approx: Fourier division, an approximation (default: %(default)s)")
    d.add_argument("--rtol", type=_float_gt0, default=1e-6,
                   help="CG relative residual tolerance (default: %(default)s)")
    d.add_argument("--maxiter", type=_int_ge(1), default=1000,
                   help="CG iteration limit per image (default: %(default)s)")
    d.set_defaults(func=_cmd_deconvolve)

    c = sub.add_parser("convolve", help="blur image files with a PSF (optionally add noise)",
                       description="Convolve every image with the PSF in the given mode and boundary "
                                   "(the forward model of 'deconvolve'), optionally adding Gaussian noise.")
    _add_files_args(c, "_conv")
    _add_model_args(c)
    c.add_argument("--noise", type=_float_ge0, default=0.0,
                   help="standard deviation of Gaussian noise added, in the image's units (default: 0)")
    c.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    c.set_defaults(func=_cmd_convolve)

    k = sub.add_parser("estimate-kernel", help="least-squares kernel from a sharp/blurred pair",
                       description="Estimate the kernel h minimising ||h*x - y||^2 + lam||h||^2 from a sharp "
                                   "image x and its blurred version y (stacks: summed over all pairs).")
    k.add_argument("sharp", metavar="SHARP", help="sharp image file")
    k.add_argument("blurred", metavar="BLURRED",
                   help="blurred image file; its shape must be the mode's output shape for SHARP")
    k.add_argument("--size", type=_int_ge(1), nargs="+", required=True, metavar="K",
                   help="kernel shape: one number (square) or one per spatial axis")
    k.add_argument("-o", "--output", metavar="OUTPUT",
                   help="kernel file, .npy or .tif (default: BLURRED's name + _kernel, .npy for "
                        ".npy/PNG/JPEG inputs, float32 .tif for TIFF)")
    k.add_argument("--lam", type=_float_ge0, default=0.0, help="ridge weight (default: %(default)s)")
    _add_model_args(k)
    k.add_argument("--normalize", action="store_true", help="scale the estimated kernel to sum 1")
    k.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="working precision (default: float64)")
    k.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the GPU when usable, else the CPU (default)")
    k.add_argument("-f", "--force", action="store_true", help="overwrite an existing output")
    k.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    k.set_defaults(func=_cmd_estimate_kernel)

    m = sub.add_parser("demo", help="deconvolve the built-in synthetic scene and report the errors",
                       description="Blur the built-in scene (15x15 Gaussian, 'valid' model), add noise, and "
                                   "compare Fourier division with the exact solution. Writes PNG panels, "
                                   ".npy arrays and, with matplotlib, the figure demo.png.")
    m.add_argument("-o", "--output", default="gpu_deconv_demo", help="output folder (default: %(default)s)")
    m.add_argument("--size", type=_int_ge(32), default=256,
                   help="scene size in pixels (default: %(default)s)")
    m.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="auto: the GPU when usable, else the CPU (default)")
    m.add_argument("--no-figure", action="store_true", help="skip the matplotlib figure")
    m.set_defaults(func=_cmd_demo)

    i = sub.add_parser("info", help="versions, and whether cupy and a GPU are usable (and why not)",
                       description="Print the versions of gpu_deconv and its dependencies, whether cupy and "
                                   "a CUDA device are usable (and why not), and where the CUDA kernel "
                                   "sources are.")
    i.set_defaults(func=_cmd_info)

    b = sub.add_parser("bench", help="a quick CPU-vs-GPU timing table on synthetic data",
                       description="Time convolution and the three solvers (fft, dct, PCG) on a small "
                                   "synthetic batch, on the CPU and, when usable, the GPU.")
    b.add_argument("--size", type=_int_ge(16), default=128, help="image size (default: %(default)s)")
    b.add_argument("--batch", type=_int_ge(1), default=4, help="images per batch (default: %(default)s)")
    b.add_argument("--repeat", type=_int_ge(1), default=3, help="timed runs per case (default: %(default)s)")
    b.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="precision (default: %(default)s)")
    b.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: time the GPU when usable; cpu: CPU only; gpu: fail without a GPU")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"{PROG} {args.command}"
    if getattr(args, "boundary", "") is None:
        # Not chosen: circular is periodic by definition, every other mode gets the camera default.
        args.boundary = "periodic" if args.mode == "circular" else "symmetric"
    elif getattr(args, "mode", None) == "circular" and args.boundary not in ("zero", "periodic"):
        print(f"{prog}: error: --mode circular is periodic by definition; --boundary {args.boundary} "
              "contradicts it (omit --boundary, or give periodic)", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (RunError, io.MissingDependencyError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
