"""Fuzzing every public entry: a call returns a documented result or fails at the door.

Random spatial rank (1-3) and batch axes, odd/even/degenerate kernel sizes (1, larger than
the image), dtypes (float32/64, float16, integers, bool, nested lists, complex, object,
strings), modes, boundaries and conventions including invalid ones, weights of 0, tiny,
huge, negative, NaN, per-image lists of the wrong length, values from 1e-300 to 1e300,
NaN/Inf anywhere; every array is read-only.

Each call must either

* return arrays of the documented shape and dtype with finite values (solvers: a SolveInfo
  whose ``converged`` is True only when the normal-equation residual is within ``rtol``;
  closed forms report the residual of the exact solve and converged=True), or
* raise ValueError/TypeError whose message names an argument of the call.

Anything else fails: another exception type, a RuntimeWarning (pytest turns warnings into
errors), NaN/Inf in a result, a modified input, a call not back within CALL_LIMIT_S.

Two families per entry: *free* fuzz (every argument may be invalid or extreme, with a
probability drawn per example) and *single-fault* fuzz (a valid call with exactly one
argument replaced by a value that is invalid everywhere: the error must name it).

The examples are derandomized, so a commit never fails by chance; set
GPU_DECONV_FUZZ_EXAMPLES=2000 (say) to search longer with fresh randomness.
Not covered here: the Dask and CLI entries (tested with their own modules).
"""

import contextlib
import os
import re
import signal
import threading
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import gpu_deconv as gd

MODES = ("full", "same", "valid", "circular")
BOUNDARIES = ("zero", "periodic", "symmetric", "reflect", "replicate")
CONVENTIONS = ("scipy", "matlab")
BAD_STRINGS = ("", "Full", "nope", None, 3, b"same")

# A call on arrays of at most a few thousand samples takes milliseconds; 30 s means a hang.
CALL_LIMIT_S = 30
MAXITER = 60  # solvers: keeps every CG call short whatever the conditioning

_EXTRA = int(os.environ.get("GPU_DECONV_FUZZ_EXAMPLES", "0"))


def fuzz_settings(n):
    return settings(max_examples=_EXTRA or n, deadline=None, derandomize=not _EXTRA, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


class CallHung(Exception):
    """A public call ran past CALL_LIMIT_S."""


@contextlib.contextmanager
def time_guard():
    # SIGALRM interrupts a Python-level loop; only the main thread may install the handler.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise CallHung(f"a call took more than {CALL_LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CALL_LIMIT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def names_one_of(msg, names):
    """True if `msg` mentions one of the argument names as a word (``h[0]``, ``reg[1]`` count)."""
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg) for n in names)


def unchanged(a, a0):
    if a.dtype == object:
        return a.shape == a0.shape and all(p is q for p, q in zip(a.flat, a0.flat))
    return a.shape == a0.shape and a.tobytes() == a0.tobytes()


def _arrays_in(values):
    for v in values:
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (a for a in v if isinstance(a, np.ndarray))


def outcome(fn, args, kwargs, names):
    """Run a public call: its result, or None after an accepted ValueError/TypeError."""
    frozen = [(a, a.copy()) for a in _arrays_in(list(args) + list(kwargs.values()))]
    label = getattr(fn, "__name__", str(fn))
    try:
        with time_guard():
            out = fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        assert names_one_of(msg, names), f"{type(exc).__name__} does not name an argument {names}: {msg}"
        event(f"{label}: refused")
        out = None
    else:
        event(f"{label}: returned")
    for a, a0 in frozen:
        assert unchanged(a, a0), "an input was modified"
    return out


def refused_naming(fn, args, kwargs, name):
    """The call must raise ValueError/TypeError whose message names `name`."""
    frozen = [(a, a.copy()) for a in _arrays_in(list(args) + list(kwargs.values()))]
    with pytest.raises((ValueError, TypeError)) as info, time_guard():
        fn(*args, **kwargs)
    assert names_one_of(str(info.value), (name,)), f"message does not name {name!r}: {info.value}"
    for a, a0 in frozen:
        assert unchanged(a, a0), "an input was modified"


def assert_finite_array(out, shape, dtype):
    assert isinstance(out, np.ndarray), type(out)
    assert out.shape == tuple(shape), (out.shape, tuple(shape))
    assert out.dtype == dtype, (out.dtype, dtype)
    assert np.isfinite(out).all(), "non-finite values in a result"


# ------------------------------------------------------------------ strategies
GOOD_KINDS = ("float64",) * 6 + ("float32",) * 3 + ("float16", "int64", "int32", "uint8", "bool", "list")
BAD_KINDS = ("complex128", "object", "str")
EXTREME_SCALES = (1e-300, 1e-30, 1e-20, 1e20, 1e30, 1e150, 1e300)
SPECIALS = (np.nan, np.inf, -np.inf)
GOOD_WEIGHTS = (0.0, 0, 1e-3, 0.1, 0.5, 1, np.float32(0.25), np.int64(2), "list", "array",
                1e-300, 1e-12, 1e12, 1e300)
BAD_WEIGHTS = (-1.0, np.nan, np.inf, True, "1", None, "wrong", 1j)


def readonly(a):
    if isinstance(a, np.ndarray):
        a.setflags(write=False)
    return a


class Fuzz:
    """Draws the arguments of one call; each is invalid (or extreme) with probability p.

    p is drawn per example from 0, 4 % and 25 %, so a run mixes clean calls (which must
    return), calls that carry one fault, and calls that carry several.
    """

    def __init__(self, draw, p=None):
        self.draw = draw
        self.p = draw(st.sampled_from((0, 4, 25))) if p is None else p

    def odd(self):
        return self.p > 0 and self.draw(st.integers(0, 99)) < self.p

    def pick(self, good, bad):
        return self.draw(st.sampled_from(bad if self.odd() else good))

    def array(self, shape, positive=False):
        """A read-only array of `shape` (or a nested list): maybe integer, extreme, NaN/Inf, complex."""
        rng = np.random.default_rng(self.draw(st.integers(0, 2**32 - 1)))
        kind = self.pick(GOOD_KINDS, BAD_KINDS)
        scale = self.pick((1.0,), EXTREME_SCALES)
        special = self.pick((None,), SPECIALS)
        a = rng.standard_normal(shape) * scale
        if positive:
            a = np.abs(a) + 0.5 * scale
        if special is not None and a.size:
            a.flat[rng.integers(a.size)] = special
        with np.errstate(over="ignore", invalid="ignore"):
            if kind in ("float64", "float32", "float16"):
                a = a.astype(kind)
            elif kind in ("int64", "int32"):
                a = np.clip(np.nan_to_num(a), -1e6, 1e6).round().astype(kind)
            elif kind == "uint8":
                a = rng.integers(0, 256, shape).astype(np.uint8)
            elif kind == "bool":
                a = rng.integers(0, 2, shape).astype(bool)
            elif kind == "complex128":
                a = a + 1j
            elif kind == "object":
                a = a.astype(object)
            elif kind == "str":
                a = a.astype(str)
            elif kind == "list":
                return a.tolist()
        return readonly(a)

    def string(self, valid):
        return self.pick(valid, BAD_STRINGS)

    def weight(self, batch):
        """lam/alpha: a scalar (0, tiny, huge, NumPy scalars), per image (list/array), or invalid."""
        w = self.pick(GOOD_WEIGHTS, BAD_WEIGHTS)
        nb = int(np.prod(batch)) if batch else 1
        if isinstance(w, str) and w == "list":
            return [float(v) for v in np.linspace(0.1, 1, nb)] if batch else [0.5]
        if isinstance(w, str) and w == "wrong":
            return [0.5] * (nb + 1)
        if isinstance(w, str) and w == "array":
            return readonly(np.full(batch, 0.25))
        return w

    def geometry(self):
        """Spatial rank 1-3, sizes <= 12 (<= 6 in 3-D), kernel sizes 1, 2, 3, 4, n, n+1, n+3."""
        draw = self.draw
        nd = draw(st.integers(1, 3))
        top = (12, 12, 6)[nd - 1]
        n = tuple(draw(st.lists(st.integers(1, top), min_size=nd, max_size=nd)))
        k = tuple(draw(st.sampled_from((1, 2, 3, 4, nn, nn + 1, nn + 3))) for nn in n)
        batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
        return nd, n, k, batch


def work_dtype(a, dtype=None):
    """The documented working dtype: float32 stays float32 (float16 too), the rest float64."""
    if dtype is not None:
        return np.dtype(dtype)
    a = np.asarray(a)
    if (a.dtype.kind == "f" and a.dtype.itemsize <= 4) or (a.dtype.kind == "c" and a.dtype.itemsize <= 8):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def out_len(n, k, mode):
    if mode == "full":
        return n + k - 1
    if mode in ("same", "circular"):
        return n
    return max(n - k + 1, 0)


def unknown_shape(mode, m, k):
    if mode in ("same", "circular"):
        return tuple(m)
    if mode == "valid":
        return tuple(a + b - 1 for a, b in zip(m, k))
    return tuple(a - b + 1 for a, b in zip(m, k))


# ---------------------------------------------------------------- convolve, correlate
CONV_NAMES = ("x", "h", "y", "mode", "boundary", "convention", "ndim", "dtype")


def conv_case(fz):
    """(x, h, mode, kwargs) for convolve & co; maybe per-image kernels (ndim < h.ndim)."""
    draw = fz.draw
    nd, n, k, batch = fz.geometry()
    h_shape, ndim = k, None
    if batch and draw(st.booleans()):
        h_shape, ndim = batch[-1:] + k, nd  # one kernel per image of the last batch axis
    if fz.odd():
        ndim = draw(st.sampled_from((0, nd + 2, 1.5, "2", True)))
    if fz.odd():
        h_shape = (2,) * (nd + len(batch) + 1)  # more kernel axes than x has
    x = fz.array(batch + n)
    h = fz.array(h_shape)
    mode = fz.string(MODES)
    boundary = "periodic" if mode == "circular" and not fz.odd() else fz.string(BOUNDARIES)
    convention = fz.string(CONVENTIONS)
    dtype = fz.pick((None, None, np.float32, np.float64), (np.int32, "complex", "nope"))
    kw = {"boundary": boundary, "convention": convention, "dtype": dtype}
    if ndim is not None:
        kw["ndim"] = ndim
    return x, h, mode, kw


def expected_conv_shape(x, h, mode, ndim=None, convention="matlab"):
    ndim = ndim or np.ndim(h)
    xs, hs = np.shape(x), np.shape(h)
    n, k = xs[len(xs) - ndim:], hs[len(hs) - ndim:]
    batch = np.broadcast_shapes(xs[:len(xs) - ndim], hs[:len(hs) - ndim])
    if mode == "valid" and convention == "scipy" and len(xs) == len(hs) and all(b >= a for a, b in zip(n, k)):
        n, k = k, n  # SciPy's rule: the larger input slides
    return tuple(batch) + tuple(out_len(a, b, mode) for a, b in zip(n, k))


def conv_dtype(x, *others, dtype=None):
    """The documented working dtype: x's precision, complex when x or any of `others` is complex."""
    wdt = work_dtype(x, dtype)
    if any(isinstance(a, (np.ndarray, list)) and np.asarray(a).dtype.kind == "c" for a in (x,) + others):
        return np.dtype(np.complex64 if wdt == np.float32 else np.complex128)
    return wdt


@fuzz_settings(800)
@given(st.data())
def test_fuzz_convolve_correlate(data):
    x, h, mode, kw = conv_case(Fuzz(data.draw))
    fn = data.draw(st.sampled_from((gd.convolve, gd.correlate)))
    out = outcome(fn, (x, h, mode), kw, CONV_NAMES)
    if out is not None:
        assert_finite_array(out, expected_conv_shape(x, h, mode, kw.get("ndim"), kw["convention"]),
                            conv_dtype(x, h, dtype=kw["dtype"]))


@fuzz_settings(200)
@given(st.data())
def test_fuzz_convolve_values_match_scipy(data):
    # Clean inputs: the value is right too, not only the shape (direct sums as reference).
    from scipy import signal as ss

    fz = Fuzz(data.draw, p=0)
    nd, n, k, batch = fz.geometry()
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x, h = readonly(rng.standard_normal(batch + n)), readonly(rng.standard_normal(k))
    mode = data.draw(st.sampled_from(("full", "same")))
    out = gd.convolve(x, h, mode)
    want = ss.convolve(x, h.reshape((1,) * len(batch) + k), mode, method="direct")
    assert out.shape == want.shape
    assert np.abs(out - want).max() <= 1e-12 * (np.abs(x).max() * np.abs(h).sum())


# ---------------------------------------------------------------- ConvolutionOperator
OP_NAMES = CONV_NAMES + ("in_shape", "sparse")


@fuzz_settings(700)
@given(st.data())
def test_fuzz_operator_and_methods(data):
    draw = data.draw
    fz = Fuzz(draw)
    x, h, mode, kw = conv_case(fz)
    ndim = kw.get("ndim") if isinstance(kw.get("ndim"), int) and not isinstance(kw.get("ndim"), bool) \
        else np.ndim(h)
    xs = np.shape(x)
    in_shape = fz.pick(("spatial", "spatial", "batched"),
                       ((), (0,), (-1, 3), "abc", (2.5,), (10**7,) * 3, (2**40,) * 3))
    if in_shape == "spatial":
        in_shape = xs[len(xs) - ndim:] if ndim <= len(xs) else xs
    elif in_shape == "batched":
        in_shape = xs
    op = outcome(gd.ConvolutionOperator, (h, in_shape, mode), kw, OP_NAMES)
    if op is None:
        return
    # A float input keeps its precision; integers (and bool) take the operator's dtype=, else float64.
    wdt = work_dtype(x) if np.asarray(x).dtype.kind in "fc" else work_dtype(x, kw["dtype"])
    wdt = conv_dtype(x if np.asarray(x).dtype.kind == "c" else np.zeros(1, wdt), op.kernel, dtype=wdt)
    try:
        batch = tuple(np.broadcast_shapes(xs[:len(xs) - op.ndim], op.kernel_batch))
    except ValueError:
        batch = None  # x does not fit: forward must refuse it
    fwd = outcome(op.forward, (x,), {}, OP_NAMES)
    if fwd is not None:
        assert_finite_array(fwd, batch + op.spatial_out_shape, wdt)
        back = outcome(op.adjoint, (readonly(fwd),), {}, OP_NAMES)
        if back is not None:
            assert_finite_array(back, batch + op.spatial_in_shape, wdt)
        nrm = outcome(op.normal, (x,), {}, OP_NAMES)
        if nrm is not None:
            assert_finite_array(nrm, batch + op.spatial_in_shape, wdt)
        via_h = outcome(op.H.adjoint, (x,), {}, OP_NAMES)
        assert via_h is None or np.array_equal(via_h, fwd)
    shape = draw(st.sampled_from((op.spatial_out_shape, op.spatial_out_shape, op.spatial_in_shape, (3,))))
    y = fz.array(shape if np.prod(shape, dtype=object) <= 10**5 else (3,))
    back = outcome(op.adjoint, (y,), {}, OP_NAMES)
    if back is not None:
        assert back.shape[back.ndim - op.ndim:] == op.spatial_in_shape and np.isfinite(back).all()
    sparse = fz.pick((False, True), ("yes", None, 1))
    mat = outcome(op.to_matrix, (), {"sparse": sparse}, OP_NAMES)
    if mat is not None:
        mat = mat.toarray() if hasattr(mat, "toarray") else mat
        assert mat.shape[-2:] == op.shape and np.isfinite(mat).all()
        if fwd is not None and not op.kernel_batch and np.asarray(x).dtype.kind in "biuf" \
                and op.dtype.kind == "f":
            # The matrix is the operator (moderate values only: extremes under/overflow differently).
            xv = np.asarray(x, dtype=np.float64)
            if 1e-10 < np.abs(xv).max() < 1e10 and 1e-10 < np.abs(op.kernel).max() < 1e10:
                flat = xv.reshape(-1, op.shape[1]) @ mat.T.astype(np.float64)
                scale = np.abs(xv).max() * np.abs(np.asarray(op.kernel, np.float64)).sum()
                tol = 1e-4 if wdt == np.float32 or op.dtype == np.float32 else 1e-10
                assert np.abs(flat.reshape(fwd.shape) - fwd).max(initial=0.0) <= tol * scale


# ---------------------------------------------------------------- gradients
@fuzz_settings(600)
@given(st.data())
def test_fuzz_gradients(data):
    draw = data.draw
    fz = Fuzz(draw)
    x, h, mode, kw = conv_case(fz)
    fn = draw(st.sampled_from((gd.grad_x, gd.grad_h)))
    ndim = kw.get("ndim") if type(kw.get("ndim")) is int else None
    try:
        shape = expected_conv_shape(x, h, mode if mode in MODES else "same", ndim)
    except (ValueError, TypeError):
        shape = np.shape(x)
    y = fz.array(fz.pick((shape,), (shape[1:] or (1,), tuple(s + 1 for s in shape))))
    out = outcome(fn, (x, h, y, mode), kw, CONV_NAMES)
    if out is not None:
        nd = ndim or np.ndim(h)
        xs, hs = np.shape(x), np.shape(h)
        batch = tuple(np.broadcast_shapes(xs[:len(xs) - nd], hs[:len(hs) - nd]))
        want = batch + xs[len(xs) - nd:] if fn is gd.grad_x else hs
        assert_finite_array(out, want, conv_dtype(x, h, y, dtype=kw["dtype"]))


# ---------------------------------------------------------------- deconvolve
SOLVER_NAMES = ("y", "h", "lam", "reg", "mode", "boundary", "convention", "alpha", "z", "method",
                "rtol", "maxiter", "x0", "precondition", "ndim", "dtype")


def check_info(info, batch, rtol):
    assert info.method in ("fft", "dct", "cg", "fft_approx")
    for a in (info.iterations, info.residual, info.converged):
        assert np.shape(a) == tuple(batch), (np.shape(a), batch)
    res = np.asarray(info.residual)
    conv = np.asarray(info.converged)
    assert conv.dtype == bool
    # A reported success is a real one; a NaN residual is never reported as converged.
    if info.method in ("cg", "fft_approx"):
        assert np.all(res[conv] <= rtol), (info.method, res, conv, rtol)
    else:
        assert conv.all() and np.isfinite(res).all()


def deconvolve_case(fz):
    draw = fz.draw
    nd, m, k, batch = fz.geometry()
    mode = fz.string(MODES)
    boundary = "periodic" if mode == "circular" and not fz.odd() else fz.string(BOUNDARIES)
    if mode == "full" and not fz.odd():
        k = tuple(min(a, b) for a, b in zip(k, m))  # full needs y at least as large as h
    y = fz.array(batch + m)
    h = fz.array(k)
    n = unknown_shape(mode if mode in MODES else "same", m, k)
    kw = {"mode": mode, "boundary": boundary, "convention": fz.string(CONVENTIONS),
          "lam": fz.weight(batch), "alpha": fz.weight(batch)}
    reg = fz.pick((None, "laplacian", "gradient", "identity", "kernel", "pairs"),
                  ("bogus", "badpairs", "3d", 5))
    kw["reg"] = {"kernel": readonly(np.ones((3,) * nd) / 3**nd),
                 "pairs": [(0.5, "laplacian"), (1.0, None)],
                 "badpairs": [(-1.0, "laplacian")],
                 "3d": readonly(np.ones((3,) * (nd + 1)))}.get(reg, reg) if isinstance(reg, str) else reg
    good_n = all(v > 0 for v in n)
    if draw(st.booleans()) or not fz.odd():  # alpha > 0 needs z
        kw["z"] = fz.array(fz.pick((batch + n if good_n else (1,), n if good_n else (1,)), ((1,),)))
    if draw(st.booleans()):
        kw["x0"] = fz.array(fz.pick((batch + n if good_n else (1,),), ((1,), batch + m + (2,))))
    kw["method"] = fz.pick(("auto", "auto", "cg", "fft_approx"), ("fft", "dct", "nope", 1))
    kw["rtol"] = fz.pick((1e-6, 1e-3, 1e-10), (0.0, -1.0, np.nan, np.inf, "1e-6", 1e-300))
    kw["maxiter"] = fz.pick((MAXITER, 5), (0, -3, 2.5, "10"))
    kw["precondition"] = fz.pick((True, False, "circulant", "band"), ("nope", 2))
    kw["dtype"] = fz.pick((None, None, np.float32, np.float64), (np.int16, "nope"))
    return y, h, kw, batch, n


@fuzz_settings(1000)
@given(st.data())
def test_fuzz_deconvolve(data):
    y, h, kw, batch, n = deconvolve_case(Fuzz(data.draw))
    res = outcome(gd.deconvolve, (y, h), {**kw, "return_info": True}, SOLVER_NAMES)
    if res is not None:
        x, info = res
        assert_finite_array(x, tuple(batch) + tuple(n),
                            conv_dtype(y, h, kw.get("z"), kw.get("x0"), dtype=kw["dtype"]))
        check_info(info, batch, kw["rtol"])


@fuzz_settings(300)
@given(st.data())
def test_fuzz_deconvolve_clean_problems(data):
    # Clean inputs: the only refusals are the documented ones (singular, not exact,
    # valid+scipy with a kernel larger than y's unknown...), and x alone is finite too.
    y, h, kw, batch, n = deconvolve_case(Fuzz(data.draw, p=0))
    # Without return_info, an image that does not converge is reported as a
    # ConvergenceWarning (never silently); no other warning may appear.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gd.ConvergenceWarning)
        x = outcome(gd.deconvolve, (y, h), kw, SOLVER_NAMES)
    assert all(issubclass(w.category, gd.ConvergenceWarning) for w in caught)
    if x is not None:
        assert_finite_array(x, tuple(batch) + tuple(n),
                            conv_dtype(y, h, kw.get("z"), kw.get("x0"), dtype=kw["dtype"]))


# ---------------------------------------------------------------- estimate_kernel
KERNEL_NAMES = ("x", "y", "kernel_shape", "lam", "mode", "boundary", "convention", "dtype")


@fuzz_settings(600)
@given(st.data())
def test_fuzz_estimate_kernel(data):
    fz = Fuzz(data.draw)
    nd, n, k, batch = fz.geometry()
    mode = fz.string(MODES)
    boundary = "periodic" if mode == "circular" and not fz.odd() else fz.string(BOUNDARIES)
    convention = fz.string(CONVENTIONS)
    if mode == "valid" and not fz.odd():
        k = tuple(min(a, b) for a, b in zip(k, n))
    kernel_shape = fz.pick((k,), ((), (0,) * nd, (-1,) * nd, "ab", (1.5,) * nd, (10**5,) * nd,
                                   (10**4, 10**4), k + (2,)))
    x = fz.array(batch + n)
    m = tuple(out_len(a, b, mode if mode in MODES else "valid") for a, b in zip(n, k))
    other = (batch[0] + 1,) + batch[1:] if batch else (2,)  # a batch that does not broadcast
    y = fz.array(fz.pick((batch + m if all(v > 0 for v in m) else (2,),),
                         ((2,), batch + n + (1,), other + (m if all(v > 0 for v in m) else (2,)))))
    lam = fz.pick((0.0, 0.0, 1e-3, 1.0, 1e-300, 1e300), (-1.0, np.nan, [0.1, 0.2], "1"))
    dtype = fz.pick((None, None, np.float32), ("nope", np.int8))
    kw = {"lam": lam, "mode": mode, "boundary": boundary, "convention": convention, "dtype": dtype}
    out = outcome(gd.estimate_kernel, (x, y, kernel_shape), kw, KERNEL_NAMES)
    if out is not None:
        assert_finite_array(out, tuple(kernel_shape), conv_dtype(x, y, dtype=dtype))


# ---------------------------------------------------------------- solve_multichannel
MC_NAMES = ("y", "d", "alpha", "z", "convention", "dtype")


@fuzz_settings(600)
@given(st.data())
def test_fuzz_multichannel(data):
    fz = Fuzz(data.draw)
    nd, S, K, batch = fz.geometry()
    C = data.draw(st.integers(1, 3))
    y = fz.array(batch + S)
    d = fz.array(fz.pick(((C,) + K,), (K[:1], (C,) + K + (2,))))
    zb = fz.pick((batch, batch[1:]), (batch + (5,),))
    z = fz.array(fz.pick((zb + (C,) + S,), (batch + S, (C + 1,) + S)))
    alpha = fz.weight(batch)
    kw = {"convention": fz.string(CONVENTIONS), "dtype": fz.pick((None, None, np.float32), ("nope",))}
    out = outcome(gd.solve_multichannel, (y, d, alpha, z), kw, MC_NAMES)
    if out is not None:
        zs = np.shape(z)
        shape = tuple(np.broadcast_shapes(batch, zs[:len(zs) - nd - 1])) + (C,) + S
        assert_finite_array(out, shape, conv_dtype(y, d, z, dtype=kw["dtype"]))


# ---------------------------------------------------------------- cg
CG_NAMES = ("A", "b", "x0", "rtol", "maxiter", "M", "callback", "ndim")


@fuzz_settings(500)
@given(st.data())
def test_fuzz_cg(data):
    fz = Fuzz(data.draw)
    nd, n, _, batch = fz.geometry()
    b = fz.array(batch + n)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dd = rng.uniform(0.5, 2.0, n) * fz.pick((1.0,), EXTREME_SCALES)
    which = fz.pick(("spd",), ("indefinite", "nan", "zero", "shape", "complex", "list"))
    dd = {"indefinite": dd * np.where(np.arange(dd.size).reshape(n) % 2, -1, 1), "nan": dd + np.nan,
          "zero": dd * 0}.get(which, dd)

    def A(v):  # the user's operator: overflow in it is not the package's warning
        with np.errstate(all="ignore"):
            out = (dd * v).astype(v.dtype)
        return {"shape": out[..., :1] if out.shape[-1] > 1 else out[..., None], "complex": out * 1j,
                "list": out.tolist()}.get(which, out)

    kw = {"rtol": fz.pick((1e-6, 1e-10), (0.0, -1.0, 1e-300, np.nan)),
          "maxiter": fz.pick((MAXITER,), (0, 2.5)),
          "ndim": fz.pick((None, nd), (0, nd + len(batch) + 1, 1.5))}
    if data.draw(st.booleans()):
        kw["x0"] = fz.array(fz.pick((batch + n,), (n + (1,),)))
    res = outcome(gd.cg, (A, b), kw, CG_NAMES)
    if res is not None:
        x, info = res
        assert x.shape == np.shape(b) and np.isfinite(x).all()
        nd_ = kw["ndim"] or np.ndim(b)
        assert np.shape(info.converged) == np.shape(b)[:np.ndim(b) - nd_]
        conv = np.asarray(info.converged)
        assert np.all(np.asarray(info.residual)[conv] <= kw["rtol"])


# ---------------------------------------------------------------- single faults
#: Complex data are valid input everywhere (issue 15); the rest are refused.
BAD_ARRAYS = ("object", "str", "nan", "inf", "empty", "scalar", "dict", "none")


def bad_array(kind, like):
    like = np.asarray(like, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        a = {"complex": like + 1j, "object": like.astype(object), "str": like.astype(str),
             "nan": like + np.nan, "inf": like + np.inf, "empty": np.zeros((0,) + like.shape[1:]),
             "scalar": np.float64(1.0), "dict": {"a": 1}, "none": None}[kind]
    return readonly(a) if isinstance(a, np.ndarray) else a


def _base_conv(draw, rng):
    nd = draw(st.integers(1, 3))
    n = tuple(draw(st.lists(st.integers(3, 8), min_size=nd, max_size=nd)))
    k = tuple(draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd)))
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=1)))
    return readonly(rng.standard_normal(batch + n)), readonly(rng.standard_normal(k)), n, k, batch


@fuzz_settings(500)
@given(st.data())
def test_single_fault_convolution_entries(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, h, n, k, batch = _base_conv(draw, rng)
    y = readonly(rng.standard_normal(batch + n))
    entry = draw(st.sampled_from(("convolve", "correlate", "grad_x", "grad_h", "operator", "forward",
                                  "adjoint", "normal", "to_matrix")))
    args = {"x": x, "h": h, "y": y}
    kw = {"mode": "same", "boundary": draw(st.sampled_from(BOUNDARIES[:1] + BOUNDARIES[2:])),
          "convention": "scipy"}
    if entry in ("convolve", "correlate", "grad_x", "grad_h"):
        names = ["x", "h", "mode", "boundary", "convention", "ndim", "dtype"]
        names += ["y"] if "grad" in entry else []
        bad = draw(st.sampled_from(names))
        if bad in ("x", "h", "y"):
            args[bad] = bad_array(draw(st.sampled_from(BAD_ARRAYS)), args[bad])
        elif bad in ("mode", "boundary", "convention"):
            kw[bad] = draw(st.sampled_from(BAD_STRINGS))
        elif bad == "ndim":
            kw["ndim"] = draw(st.sampled_from((0, len(k) + 1, 1.5, "2", True)))
        else:
            kw["dtype"] = draw(st.sampled_from((np.int32, "complex", "nope", np.float16)))
        fn = getattr(gd, entry)
        pos = (args["x"], args["h"]) + ((args["y"],) if "grad" in entry else ())
        refused_naming(fn, pos, kw, bad)
        return
    if entry == "operator":
        bad = draw(st.sampled_from(("h", "in_shape", "mode", "boundary", "convention", "ndim", "dtype")))
        in_shape = n
        if bad == "h":
            args["h"] = bad_array(draw(st.sampled_from(BAD_ARRAYS)), h)
        elif bad == "in_shape":
            in_shape = draw(st.sampled_from(((), (0,) * len(n), (-1,) * len(n), "abc", (2.5,) * len(n),
                                             n[:-1] if len(n) > 1 else None)))
        elif bad in ("mode", "boundary", "convention"):
            kw[bad] = draw(st.sampled_from(BAD_STRINGS))
        elif bad == "ndim":
            kw["ndim"] = draw(st.sampled_from((0, len(k) + 1, 1.5, "2", True)))
        else:
            kw["dtype"] = draw(st.sampled_from((np.int32, "complex", "nope")))
        refused_naming(gd.ConvolutionOperator, (args["h"], in_shape), kw, bad)
        return
    op = gd.ConvolutionOperator(h, n, **kw)
    if entry == "to_matrix":
        refused_naming(op.to_matrix, (), {"sparse": draw(st.sampled_from(("yes", None, 1, 0.0)))}, "sparse")
        return
    name = "y" if entry == "adjoint" else "x"
    like = y if name == "y" else x
    bad = draw(st.sampled_from(BAD_ARRAYS + ("shape",)))
    a = readonly(np.ones(like.shape[:-1] + (like.shape[-1] + 1,))) if bad == "shape" else bad_array(bad, like)
    refused_naming(getattr(op, entry), (a,), {}, name)


@fuzz_settings(500)
@given(st.data())
def test_single_fault_solvers(data):
    draw = data.draw
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, h, n, k, batch = _base_conv(draw, rng)
    entry = draw(st.sampled_from(("deconvolve", "estimate_kernel", "solve_multichannel", "cg")))
    if entry == "deconvolve":
        y = x
        kw = {"mode": "same", "boundary": "symmetric", "lam": 0.1, "alpha": 0.5, "z": readonly(np.zeros(n)),
              "maxiter": MAXITER}
        bad = draw(st.sampled_from(("y", "h", "z", "x0", "lam", "alpha", "reg", "mode", "boundary",
                                    "convention", "method", "rtol", "maxiter", "precondition", "ndim",
                                    "dtype")))
        pos = {"y": y, "h": h}
        if bad in ("y", "h"):
            pos[bad] = bad_array(draw(st.sampled_from(BAD_ARRAYS)), pos[bad])
        elif bad in ("z", "x0"):
            kind = draw(st.sampled_from(BAD_ARRAYS[:-1] + ("shape",)))  # None is a valid z / x0
            kw[bad] = readonly(np.zeros(n + (2,))) if kind == "shape" else bad_array(kind, np.zeros(n))
        elif bad in ("lam", "alpha"):
            kw[bad] = draw(st.sampled_from((-1.0, np.nan, np.inf, True, "1", None, 1j, [0.1] * 5)))
        elif bad == "reg":
            kw["reg"] = draw(st.sampled_from(("bogus", [(-1.0, "laplacian")], 5, [("a", None)],
                                              readonly(np.ones((3,) * (len(n) + 1))),
                                              [(1j, "laplacian")])))
        elif bad in ("mode", "boundary", "convention", "method"):
            kw[bad] = draw(st.sampled_from(BAD_STRINGS))
        elif bad == "rtol":
            kw["rtol"] = draw(st.sampled_from((0.0, -1.0, np.nan, np.inf, "1e-6", True)))
        elif bad == "maxiter":
            kw["maxiter"] = draw(st.sampled_from((0, -3, 2.5, "10", True)))
        elif bad == "precondition":
            kw["precondition"] = draw(st.sampled_from(("nope", 2, None)))
        elif bad == "ndim":
            kw["ndim"] = draw(st.sampled_from((0, len(k) + 1, 1.5, "2", True)))
        else:
            kw["dtype"] = draw(st.sampled_from((np.int32, "complex", "nope")))
        refused_naming(gd.deconvolve, (pos["y"], pos["h"]), kw, bad)
    elif entry == "estimate_kernel":
        y = gd.convolve(x, h, "valid")
        pos = {"x": x, "y": readonly(y)}
        kw = {"mode": "valid", "lam": 0.1}
        bad = draw(st.sampled_from(("x", "y", "kernel_shape", "lam", "mode", "boundary", "convention",
                                    "dtype")))
        ks = k
        if bad in ("x", "y"):
            pos[bad] = bad_array(draw(st.sampled_from(BAD_ARRAYS)), pos[bad])
        elif bad == "kernel_shape":
            ks = draw(st.sampled_from(((), (0,) * len(k), (-1,) * len(k), "ab", (1.5,) * len(k),
                                       (10**3,) * 3, (10**5, 10**5))))
        elif bad == "lam":
            kw["lam"] = draw(st.sampled_from((-1.0, np.nan, [0.1, 0.2], "1", None)))
        elif bad in ("mode", "boundary", "convention"):
            kw[bad] = draw(st.sampled_from(BAD_STRINGS))
        else:
            kw["dtype"] = draw(st.sampled_from((np.int32, "nope")))
        refused_naming(gd.estimate_kernel, (pos["x"], pos["y"], ks), kw, bad)
    elif entry == "solve_multichannel":
        C = 2
        d = readonly(rng.standard_normal((C,) + k))
        pos = {"y": readonly(rng.standard_normal(n)), "d": d, "alpha": 0.5,
               "z": readonly(rng.standard_normal((C,) + n))}
        kw = {}
        bad = draw(st.sampled_from(("y", "d", "z", "alpha", "convention", "dtype")))
        if bad in ("y", "d", "z"):
            pos[bad] = bad_array(draw(st.sampled_from(BAD_ARRAYS)), pos[bad])
        elif bad == "alpha":
            pos["alpha"] = draw(st.sampled_from((0.0, -1.0, np.nan, np.inf, "1", None, [0.1, 0.2])))
        elif bad == "convention":
            kw["convention"] = draw(st.sampled_from(BAD_STRINGS))
        else:
            kw["dtype"] = draw(st.sampled_from((np.int32, "nope")))
        refused_naming(gd.solve_multichannel, (pos["y"], pos["d"], pos["alpha"], pos["z"]), kw, bad)
    else:
        b = x
        kw = {}
        bad = draw(st.sampled_from(("b", "x0", "rtol", "maxiter", "ndim")))
        if bad == "b":
            b = bad_array(draw(st.sampled_from(BAD_ARRAYS)), b)
        elif bad == "x0":
            kind = draw(st.sampled_from(BAD_ARRAYS[:-1] + ("shape",)))
            kw["x0"] = readonly(np.zeros(x.shape + (2,))) if kind == "shape" else bad_array(kind, x)
        elif bad == "rtol":
            kw["rtol"] = draw(st.sampled_from((0.0, -1.0, np.nan, "1e-6")))
        elif bad == "maxiter":
            kw["maxiter"] = draw(st.sampled_from((0, -3, 2.5, "10")))
        else:
            kw["ndim"] = draw(st.sampled_from((0, x.ndim + 1, 1.5, "2")))
        refused_naming(gd.cg, (lambda v: 2 * v, b), kw, bad)


# ---------------------------------------------------------------- singular problems
@pytest.mark.parametrize("mode,boundary", [("circular", "periodic"), ("same", "periodic"),
                                           ("same", "symmetric"), ("same", "zero"),
                                           ("valid", "zero"), ("full", "zero")])
@pytest.mark.parametrize("kernel", ["zeros", "box2", "box3"])
def test_singular_problems_error_or_report_never_nan(rng, mode, boundary, kernel):
    # lam = alpha = 0 with a transfer function that vanishes (an even box on an even grid,
    # a 3-box on a grid divisible by 3), or an all-zero kernel.
    h = {"zeros": np.zeros((3, 3)), "box2": np.ones((2, 2)) / 4, "box3": np.ones((3, 3)) / 9}[kernel]
    y = rng.standard_normal((12, 12))
    for method in ("auto", "cg", "fft", "dct", "fft_approx"):
        try:
            x, info = gd.deconvolve(y, h, mode=mode, boundary=boundary, method=method, maxiter=MAXITER,
                                    return_info=True)
        except ValueError as exc:
            assert names_one_of(str(exc), SOLVER_NAMES), str(exc)
            continue
        # An all-zero kernel leaves every x a minimiser: always a clear error.
        assert kernel != "zeros", (method, info)
        # CG on a singular but consistent system converges to the minimiser nearest x0 (= 0):
        # a legitimate answer; what must never happen is NaN/Inf or a false "converged".
        assert np.isfinite(x).all(), (method, info)
        assert np.isfinite(info.residual).all()
        if info.method in ("cg", "fft_approx"):
            assert np.all(info.residual[info.converged] <= 1e-6)
