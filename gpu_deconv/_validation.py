"""Argument checks shared by every public entry.

Each check names the argument and echoes the offending value, so a bad call
fails at the door with a ValueError/TypeError instead of deep in FFT code.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

from ._backend import is_cupy_array
from ._typing import BOUNDARIES, CONVENTIONS, MODES


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed; its type if empty), <= `limit` chars."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


def check_choice(name, value, choices):
    """Return `value` if it is one of `choices`, else raise ValueError."""
    if not isinstance(value, str) or value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {opts}; got {value!r}")
    return value


def check_mode_boundary_convention(mode, boundary, convention):
    check_choice("mode", mode, MODES)
    check_choice("boundary", boundary, BOUNDARIES)
    check_choice("convention", convention, CONVENTIONS)
    if mode == "circular" and boundary not in ("zero", "periodic"):
        # circular is same + periodic by definition; a second boundary model
        # would silently be ignored, so refuse it.
        raise ValueError(
            f"mode='circular' is periodic by definition; boundary must be 'zero' (the default) "
            f"or 'periodic', got {boundary!r}"
        )


def check_dtype_arg(dtype):
    """Validate the ``dtype=`` keyword: None, float32 or float64."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32, float64 or None; got {dtype!r}") from exc
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32, float64 or None; got {dt}")
    return dt


def float_dtype(name, dt, dtype=None, *, allow_complex=False):
    """Working floating dtype for an array of dtype `dt`.

    float32 (and float16) compute in float32, float64 in float64; bool and
    integers are promoted to float64 unless `dtype` says otherwise. With
    `allow_complex`, complex64 stays complex64 and complex128 (and longer)
    becomes complex128; `dtype` then only sets the precision (float32 ->
    complex64, float64 -> complex128).
    """
    dt = np.dtype(dt)
    if dt.kind == "c" and not allow_complex:
        raise TypeError(f"{name} must be real; complex input ({dt}) is not supported here")
    if dt.kind not in "biufc":
        raise TypeError(f"{name} must hold real numbers; got dtype {dt}")
    if dtype is not None:
        dtype = np.dtype(dtype)
        return complex_dtype(dtype) if dt.kind == "c" else real_dtype(dtype)
    if dt.kind == "c":
        return np.dtype(np.complex64 if dt.itemsize <= 8 else np.complex128)
    if dt.kind == "f" and dt.itemsize <= 4:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def real_dtype(dt):
    """The real precision of a floating or complex dtype (complex64 -> float32)."""
    dt = np.dtype(dt)
    return np.dtype(np.float32) if dt in (np.float32, np.complex64) else np.dtype(np.float64)


def complex_dtype(dt):
    """The complex dtype of a precision (float32 -> complex64, float64 -> complex128)."""
    return np.dtype(np.complex64) if real_dtype(dt) == np.float32 else np.dtype(np.complex128)


def work_dtype(*dts):
    """Common working dtype: complex if any is complex, in the precision of the first."""
    cplx = any(np.dtype(d).kind == "c" for d in dts)
    return complex_dtype(dts[0]) if cplx else real_dtype(dts[0])


def as_array(bk, name, a):
    """`a` as an array of `bk`'s module without changing its dtype.

    Array-likes (lists of numbers) are accepted like NumPy does; anything else
    (None, strings, mappings, objects) is a TypeError.
    """
    xp = bk.xp
    if isinstance(a, np.ndarray) and type(a) is not np.ndarray:
        a = plain_ndarray(name, a)
    if isinstance(a, np.ndarray) or is_cupy_array(a):
        return a if bk.name != "cupy" or is_cupy_array(a) else xp.asarray(a)
    if isinstance(a, (str, bytes, dict, set)) or a is None:
        raise TypeError(f"{name} must be an array of real numbers; got {type(a).__name__}")
    if isinstance(a, (numbers.Number, np.generic, list, tuple)):
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} could not be read as an array: {exc}") from exc
        if arr.dtype.kind not in "biufc":
            raise TypeError(f"{name} must be an array of real numbers; got {type(a).__name__} "
                            f"of dtype {arr.dtype}")
        return xp.asarray(arr) if bk.name == "cupy" else arr
    raise TypeError(f"{name} must be an array of real numbers; got {type(a).__name__}")


def plain_ndarray(name, a):
    """A NumPy subclass as a plain ndarray: np.matrix is converted, a masked array refused.

    np.matrix makes ``*`` a matrix product and keeps two axes after reductions,
    so code written for arrays fails deep inside; its data is an ordinary 2-D
    array. A masked array's mask would be dropped silently (masked pixels read
    as their fill values), which is a wrong answer, not a conversion.
    """
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array (numpy.ma); masks are not supported (masked "
                        f"values would silently count as the values stored under them): pass "
                        f"{name}.filled(value) or a plain array")
    if isinstance(a, np.matrix):
        return np.asarray(a)
    return a


def as_float_array(bk, name, a, dtype=None, *, allow_empty=False, check_finite=True, norm=False,
                   allow_complex=False, host=False):
    """Validated floating array for the computation: right module, dtype, finite.

    With ``norm=True`` returns ``(array, ||array||^2)``: the same pass that
    checks finiteness yields the norm (inf if the squares overflow). With
    `allow_complex`, complex input stays complex (`dtype` sets its precision).
    With ``host=True`` returns ``(array, host copy)`` and judges finiteness on
    the copy: one transfer from the device instead of a reduction and a
    transfer, for small arrays the caller needs on the host anyway (kernels).
    """
    arr = as_array(bk, name, a)
    wdt = float_dtype(name, arr.dtype, dtype, allow_complex=allow_complex)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension; got a scalar")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty; got shape {tuple(arr.shape)}")
    src = arr
    if arr.dtype != wdt:
        # A float64 value beyond float32's range becomes inf here; it is reported
        # below as too large rather than warned about in the middle of the cast.
        with np.errstate(over="ignore", invalid="ignore"):
            arr = arr.astype(wdt)
    if host:
        copy = bk.asnumpy(arr)
        if check_finite and arr.size and not bool(np.isfinite(copy).all()):
            _not_finite(bk, name, src, arr, wdt)
        return arr, copy
    sq = None
    if norm and arr.size:
        sq = sq_norm(bk.xp, arr)
        if np.isfinite(sq):
            return arr, sq
    if check_finite and arr.size and not all_finite(bk.xp, arr):
        _not_finite(bk, name, src, arr, wdt)
    if norm:
        # Here the squares overflowed although every value is finite (or a is empty).
        return arr, (np.inf if arr.size else 0.0)
    return arr


def _not_finite(bk, name, src, arr, wdt):
    """Raise for a non-finite `arr` (`src`: before the cast to `wdt`): too large for `wdt`, or NaN/Inf."""
    if src is not arr and bool(bk.xp.isfinite(src).all()):
        big = float(bk.xp.abs(src).max())
        raise ValueError(f"{name} has values too large for {wdt} (|value| up to {big:.3g}); "
                         "pass dtype=float64 or rescale")
    raise ValueError(f"{name} contains NaN or Inf")


def sq_norm(xp, a) -> float:
    """``sum(|a|**2)`` in one pass (a BLAS dot for contiguous arrays); inf/NaN if not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        if a.flags.c_contiguous:
            f = a.reshape(-1)
            if f.dtype.kind == "c":  # as interleaved real pairs: a real BLAS dot (vdot is slower)
                f = f.view(f.real.dtype)
            return float(xp.dot(f, f))
        if a.dtype.kind == "c":
            return float((a.real * a.real + a.imag * a.imag).sum())
        return float((a * a).sum())


def all_finite(xp, a) -> bool:
    """Whether every value of `a` is finite, in one pass without a temporary when it is.

    NaN and Inf propagate into the sum; a sum that overflows although every
    value is finite falls back to the elementwise test.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if bool(xp.isfinite(a.sum())):
            return True
    return bool(xp.isfinite(a).all())


def quiet_fp():
    """Silence NumPy's floating-point warnings for a computation whose result is checked.

    An overflow inside an FFT product is not worth a RuntimeWarning when
    :func:`finite_result` turns it into a ValueError naming the inputs; the
    state is per thread (per context), so other threads keep their own.
    """
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def finite_result(bk, out, what, culprits):
    """`out` if every value is finite; else a ValueError that names the arguments to rescale.

    The inputs were finite (checked at the door), so a non-finite result means
    the working precision overflowed: returning it would be a wrong answer.
    """
    if out.size and not all_finite(bk.xp, out):
        raise ValueError(
            f"{what} overflows {out.dtype}: the magnitudes of {', '.join(culprits)} are too large for "
            "the working precision; rescale them (or pass dtype=float64)"
        )
    return out


def check_shape(name: str, shape) -> tuple[int, ...]:
    """A shape: a tuple of positive integers."""
    if isinstance(shape, (numbers.Integral, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        out = tuple(operator.index(s) for s in shape)
    except TypeError as exc:
        raise TypeError(f"{name} must be a tuple of positive integers; got {shape!r}") from exc
    if not out or any(s < 1 for s in out):
        raise ValueError(f"{name} must be a non-empty tuple of positive integers; got {shape!r}")
    return out


def check_ndim(ndim, h_ndim, name="ndim"):
    """Number of spatial axes: defaults to the kernel's ndim."""
    if ndim is None:
        return h_ndim
    if isinstance(ndim, bool) or not isinstance(ndim, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be a positive integer or None; got {ndim!r}")
    ndim = int(ndim)
    if not 1 <= ndim <= h_ndim:
        raise ValueError(f"{name} must be between 1 and h.ndim={h_ndim}; got {ndim}")
    return ndim


def check_positive(name, value, *, integer=False, allow_none=False):
    if value is None and allow_none:
        return None
    if integer:
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a positive number; got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return value


def broadcast_batch(name_a, shape_a, name_b, shape_b):
    """Broadcast two batch shapes with NumPy's rules; ValueError names both."""
    try:
        return tuple(np.broadcast_shapes(tuple(shape_a), tuple(shape_b)))
    except ValueError:
        raise ValueError(
            f"batch axes of {name_a} {tuple(shape_a)} and {name_b} {tuple(shape_b)} do not broadcast"
        ) from None


def per_image(name, v, batch, *, dtype=None):
    """A scalar or one value per image -> float64 array of shape `batch` (host).

    With `dtype`, values beyond that floating type's range are refused: they
    would turn into inf in the first product of the working precision.
    """
    if isinstance(v, bool) or v is None:
        raise TypeError(f"{name} must be a non-negative number or one per image; got {v!r}")
    if is_cupy_array(v):
        v = v.get()
    if isinstance(v, np.ma.MaskedArray):
        plain_ndarray(name, v)  # raises: the mask would be dropped
    try:
        # Only real numbers: np.asarray(v, float) would parse "1e-3" and drop 1j's imaginary part.
        # Any numbers.Real (fractions.Fraction, ...) is a real number too, alone or in a list.
        if isinstance(v, numbers.Real):
            v = float(v)
        elif isinstance(v, (list, tuple)) and v and all(
                isinstance(e, numbers.Real) and not isinstance(e, bool) for e in v):
            v = [float(e) for e in v]
        if np.asarray(v).dtype.kind not in "biuf":
            raise TypeError
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a non-negative number or one per image; got {v!r:.60}") from None
    if a.ndim and not isinstance(v, (numbers.Number, np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a number or an array of numbers; got {type(v).__name__}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite; got {v!r:.60}")
    if np.any(a < 0):
        raise ValueError(f"{name} must be non-negative; got {v!r:.60}")
    if dtype is not None and a.size and float(a.max()) > float(np.finfo(dtype).max):
        raise ValueError(f"{name} is beyond the range of the working dtype {np.dtype(dtype)}; "
                         f"got {float(a.max()):.3g}")
    try:
        return np.broadcast_to(a, batch).copy()
    except ValueError:
        raise ValueError(f"{name} must be a scalar or one value per image (batch shape {tuple(batch)}); "
                         f"got shape {a.shape}") from None
