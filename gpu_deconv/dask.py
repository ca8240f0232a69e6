"""Lazy, chunked convolution and deconvolution of :mod:`dask.array` image stacks (extra ``[dask]``).

The in-memory functions are already batched: leading axes are a batch of
images solved together. Here they are mapped over the *batch chunks* of a
dask array, one task per chunk, so a stack larger than one machine's memory
(or than one GPU's) is processed chunk by chunk, by as many workers as a
``dask.distributed`` cluster has. Nothing is computed until you ask.

* Every image must lie in one chunk: the spatial axes (the last ``h.ndim``)
  may not be split (a ValueError says how to rechunk). Batch axes may be
  chunked freely.
* NumPy chunks compute with NumPy/SciPy; CuPy chunks (a dask array whose
  ``_meta`` is a CuPy array, e.g. on dask-cuda workers) compute on the GPU
  and stay on it. The kernel `h` must live where the chunks do.
* Per-image ``lam``/``alpha`` (one value per image) may be NumPy, CuPy or dask
  arrays of the batch shape; they are rechunked to the batch chunks of `y`.
  ``z`` and ``x0`` likewise, with the unknown's shape.

``dask`` is imported inside the functions: ``import gpu_deconv`` never
imports it, and this module imports without it.

Examples
--------
>>> import numpy as np, dask.array as da
>>> import gpu_deconv, gpu_deconv.dask as gdd
>>> rng = np.random.default_rng(0)
>>> h = np.ones((3, 3)) / 9
>>> y = da.from_array(rng.random((8, 32, 32)), chunks=(2, 32, 32))
>>> x = gdd.deconvolve(y, h, mode="same", boundary="symmetric", lam=1e-3, reg="laplacian")
>>> x.chunks[0], x.shape
((2, 2, 2, 2), (8, 32, 32))
>>> bool(np.allclose(x.compute(), gpu_deconv.deconvolve(y.compute(), h, mode="same",
...      boundary="symmetric", lam=1e-3, reg="laplacian")))
True
"""

from __future__ import annotations

import numbers
import string
from typing import TYPE_CHECKING, Any

import numpy as np

from ._backend import is_cupy_array
from ._padding import input_shape
from ._validation import (
    check_dtype_arg,
    check_mode_boundary_convention,
    check_ndim,
    float_dtype,
    plain_ndarray,
)
from .solvers.lam import criterion_of

if TYPE_CHECKING:
    import dask.array

__all__ = ["INFO_DTYPE", "convolve", "correlate", "deconvolve"]

#: dtype of the per-image info array returned by ``deconvolve(..., return_info=True)``.
INFO_DTYPE = np.dtype([("method", "U10"), ("iterations", np.int64), ("residual", np.float64),
                       ("converged", np.bool_), ("breakdown", np.bool_), ("stagnated", np.bool_),
                       ("lam", np.float64)])


def _da():
    try:
        import dask.array as da
    except ImportError:
        raise ImportError("gpu_deconv.dask needs dask: pip install 'gpu_deconv[dask]'") from None
    return da


def _as_dask(da, name: str, a: Any) -> dask.array.Array:
    if isinstance(a, da.Array):
        return a
    if isinstance(a, np.ndarray) and type(a) is not np.ndarray:
        a = plain_ndarray(name, a)  # np.matrix -> ndarray; a masked array is refused
    if isinstance(a, np.ndarray) or is_cupy_array(a):
        return da.from_array(a, chunks=a.shape, asarray=False)
    raise TypeError(f"{name} must be a dask, NumPy or CuPy array; got {type(a).__name__}")


def _meta(a, dtype):
    """An empty array of `a`'s chunk type (NumPy or CuPy) and ndim, of `dtype`."""
    from dask.array.utils import meta_from_array

    return meta_from_array(a._meta, ndim=a.ndim, dtype=dtype)


def _check_kernel(da, y, h: Any, ndim: int | None) -> int:
    if isinstance(h, da.Array):
        raise TypeError("h must be an in-memory NumPy or CuPy array, not a dask array: a kernel is "
                        "small, pass h.compute()")
    if not (isinstance(h, np.ndarray) or is_cupy_array(h)):
        raise TypeError(f"h must be a NumPy or CuPy array; got {type(h).__name__}")
    if is_cupy_array(h) != is_cupy_array(y._meta):
        where = "CuPy" if is_cupy_array(y._meta) else "NumPy"
        raise TypeError(f"h is a {'CuPy' if is_cupy_array(h) else 'NumPy'} array but the chunks of the "
                        f"data are {where} arrays; put the kernel where the chunks are")
    nd = check_ndim(ndim, h.ndim)
    if nd != h.ndim:
        raise ValueError(f"per-image kernels (ndim={nd} < h.ndim={h.ndim}) are not supported lazily; "
                         "pass one kernel, or call gpu_deconv.deconvolve/convolve per chunk yourself")
    if y.ndim < nd:
        raise ValueError(f"the data have {y.ndim} axes but the kernel has {nd} spatial axes; "
                         f"shapes: data {tuple(y.shape)}, h {tuple(h.shape)}")
    return nd


def _check_spatial_chunks(name: str, a, nd: int) -> None:
    split = [ax for ax in range(a.ndim - nd, a.ndim) if a.numblocks[ax] > 1]
    if split:
        fix = ", ".join(f"{ax}: -1" for ax in range(a.ndim - nd, a.ndim))
        raise ValueError(f"{name} is split along its spatial axes {split} (chunks "
                         f"{[a.chunks[ax] for ax in split]}); every image must lie in one chunk, "
                         f"only the batch axes may be chunked: {name} = {name}.rechunk({{{fix}}})")


def _per_image(da, name: str, v: Any, y, nb: int):
    """A scalar stays a scalar; an array becomes a dask array with y's batch shape and chunks."""
    batch = tuple(y.shape[:nb])
    if not isinstance(v, da.Array) and np.ndim(v) == 0:
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.ndarray)):
            raise TypeError(f"{name} must be a non-negative number or one per image; got {v!r}")
        if not (float(v) >= 0 and np.isfinite(float(v))):
            raise ValueError(f"{name} must be finite and non-negative; got {v!r}")
        return float(v)
    if isinstance(v, da.Array):
        if tuple(v.shape) != batch:
            raise ValueError(f"{name} must be a scalar or have the batch shape {batch} of the data "
                             f"(one value per image); got a dask array of shape {tuple(v.shape)}")
        return v.rechunk(y.chunks[:nb])
    if isinstance(v, np.ma.MaskedArray):
        plain_ndarray(name, v)  # raises: the mask would be dropped
    a = v.get() if is_cupy_array(v) else np.asarray(v, dtype=np.float64)
    try:
        a = np.broadcast_to(a, batch)
    except ValueError:
        raise ValueError(f"{name} must be a scalar or one value per image (batch shape {batch}); "
                         f"got shape {a.shape}") from None
    return da.from_array(np.ascontiguousarray(a), chunks=y.chunks[:nb])


def _image_arg(da, name: str, v: Any, y, nb: int, n: tuple[int, ...]):
    """z/x0: the unknown's shape (batch axes may broadcast), chunked like y's batch, images whole."""
    v = _as_dask(da, name, v)
    batch = tuple(y.shape[:nb])
    nd = len(n)
    if v.ndim < nd or tuple(v.shape[v.ndim - nd:]) != tuple(n):
        raise ValueError(f"{name} must have the unknown's shape {batch + tuple(n)} (or spatial shape "
                         f"{tuple(n)}); got {tuple(v.shape)}")
    try:
        v = da.broadcast_to(v, batch + tuple(n))
    except ValueError:
        raise ValueError(f"{name} batch axes {tuple(v.shape[:v.ndim - nd])} do not match the data's "
                         f"{batch}") from None
    return v.rechunk(y.chunks[:nb] + tuple((s,) for s in n))


def _in_block(fn, where):
    """Run ``fn()``; an error names the chunk it came from (block index and batch images).

    Without this a NaN in one chunk of a large stack reads "y contains NaN or
    Inf", with nothing to say which images to look at.
    """
    try:
        return fn()
    except (ValueError, TypeError, ArithmeticError) as exc:
        if where is None:
            raise
        try:
            new = type(exc)(f"{where()}: {exc}")
        except Exception:  # an exception type that does not take one message
            raise exc from None
        raise new from exc


def _block_where(name, chunks, batch, first, last):
    """'y block (0, 3) (images (6, 0)..(7, 1) of the batch)': a chunk by block index and its images."""
    first = tuple(int(v) for v in np.unravel_index(int(first), batch))
    last = tuple(int(v) for v in np.unravel_index(int(last), batch))
    loc = tuple(int(np.searchsorted(np.cumsum(c), s, side="right")) for s, c in zip(first, chunks))
    span = f"image {first}" if first == last else f"images {first}..{last}"
    return f"{name} block {loc} ({span} of the batch)"


def _image_index(da, y, nb):
    """Flat batch index of every image, chunked like y's batch axes (for error messages)."""
    batch = tuple(y.shape[:nb])
    return da.arange(int(np.prod(batch)), chunks=-1).reshape(batch).rechunk(y.chunks[:nb])


# Block functions: module-level so that distributed workers unpickle them by reference.
def _deconvolve_block(yb, *blocks, h, names, kwargs, with_info, chunks=None):
    from .solvers.deconvolve import deconvolve

    kw = dict(kwargs, **dict(zip(names, blocks[:len(names)])))
    where = None
    if chunks is not None:  # one more block: the flat batch index of each image of the chunk
        idx = np.ravel(blocks[len(names)])
        batch = tuple(int(sum(c)) for c in chunks)

        def where():
            return _block_where("y", chunks, batch, idx[0], idx[-1])

    if not with_info:
        return _in_block(lambda: deconvolve(yb, h, **kw), where)
    x, info = _in_block(lambda: deconvolve(yb, h, return_info=True, **kw), where)
    rec = np.zeros(np.shape(info.converged), INFO_DTYPE)
    rec["method"] = info.method
    for f in ("iterations", "residual", "converged", "breakdown", "stagnated", "lam"):
        v = getattr(info, f)
        if v is not None:
            rec[f] = v
    out = np.empty((1,) * yb.ndim, dtype=object)
    out[(0,) * yb.ndim] = (x, rec)
    return out


def _pick(o, i):
    return o.reshape(-1)[0][i]


def deconvolve(y: Any, h: Any, *, lam: Any = 0.0, alpha: Any = 0.0, z: Any = None, x0: Any = None,
               return_info: bool = False, ndim: int | None = None, dtype: Any = None,
               noise_sigma: Any = None, **kwargs: Any) -> Any:
    """Lazy :func:`gpu_deconv.deconvolve` of a dask array of images, one task per batch chunk.

    Parameters
    ----------
    y : dask.array.Array (or NumPy/CuPy array)
        Data ``(*batch, *m)``; the spatial axes (the last ``h.ndim``) must
        each be one chunk, the batch axes may be chunked freely.
    h : NumPy or CuPy array
        One kernel, in the array module of y's chunks.
    lam, alpha : float or array of the batch shape, optional
        One value for all, or one per image (NumPy, CuPy or dask; rechunked
        to y's batch chunks). ``lam="gcv"`` or ``"discrepancy"`` chooses it
        per image, in each task; the images are independent, so the result
        equals the in-memory call.
    noise_sigma : float or array of the batch shape, optional
        For ``lam="discrepancy"``, as in :func:`gpu_deconv.deconvolve`.
    z, x0 : array, optional
        As in :func:`gpu_deconv.deconvolve`, with the unknown's shape.
    return_info : bool, optional
        Also return the per-image solve report as a lazy structured array of
        the batch shape with fields ``method``, ``iterations``, ``residual``,
        ``converged``, ``breakdown``, ``stagnated``, ``lam`` (:data:`INFO_DTYPE`,
        NumPy chunks even for CuPy data). Compute both together,
        ``dask.compute(x, info)``, to solve each chunk once.
    ndim : int, optional
        Number of spatial axes; must equal ``h.ndim`` (per-image kernels are
        not supported lazily).
    dtype : {None, float32, float64}, optional
        Working precision (default: that of y; integers become float64).
    **kwargs
        ``reg``, ``mode``, ``boundary``, ``convention``, ``method``, ``rtol``,
        ``maxiter``, ``precondition``: passed to :func:`gpu_deconv.deconvolve`.

    Returns
    -------
    x : dask.array.Array
        Chunked like y along the batch axes, one chunk of the unknown's
        spatial shape per image (``y.shape`` for same/circular, ``+ k - 1``
        for valid, ``- k + 1`` for full); chunks of y's array module.
    info : dask.array.Array
        Only with ``return_info=True``.

    Raises
    ------
    ValueError
        Spatial axes split across chunks (the message gives the rechunk),
        per-image arrays of the wrong shape, bad mode/boundary/convention.
    TypeError
        `h` a dask array, or in another array module than y's chunks.
    """
    da = _da()

    y = _as_dask(da, "y", y)
    mode = kwargs.get("mode", "same")
    check_mode_boundary_convention(mode, kwargs.get("boundary", "zero"), kwargs.get("convention", "scipy"))
    nd = _check_kernel(da, y, h, ndim)
    _check_spatial_chunks("y", y, nd)
    nb = y.ndim - nd
    m, k = tuple(y.shape[nb:]), tuple(h.shape)
    n = tuple(input_shape(mode, m, k))
    wdt = float_dtype("y", y.dtype, check_dtype_arg(dtype))

    letters = string.ascii_letters
    bidx, sidx = letters[:nb], letters[nb:nb + nd]
    zidx = letters[nb + nd:nb + 2 * nd]  # z/x0 have their own spatial size: contracted, not aligned
    args: list[Any] = [y, bidx + sidx]
    names: list[str] = []
    kw = dict(kwargs, ndim=nd, dtype=dtype)
    per_image = [("lam", lam), ("alpha", alpha)]
    if criterion_of(lam):
        kw["lam"] = lam
        per_image = per_image[1:]
    if noise_sigma is not None:
        per_image.append(("noise_sigma", noise_sigma))
    for name, v in per_image:
        v = _per_image(da, name, v, y, nb)
        if isinstance(v, float):
            kw[name] = v
        else:
            args += [v, bidx]
            names.append(name)
    for name, v in (("z", z), ("x0", x0)):
        if v is not None:
            args += [_image_arg(da, name, v, y, nb, n), bidx + zidx]
            names.append(name)
    chunks = None
    if nb:  # errors inside a chunk name it: its block index and images
        args += [_image_index(da, y, nb), bidx]
        chunks = tuple(y.chunks[:nb])
    if not return_info:
        return da.blockwise(_deconvolve_block, bidx + sidx, *args, h=h, names=tuple(names), kwargs=kw,
                            with_info=False, chunks=chunks,
                            adjust_chunks={c: (s,) for c, s in zip(sidx, n)}, concatenate=True,
                            dtype=wdt, meta=_meta(y, wdt))
    both = da.blockwise(_deconvolve_block, bidx + sidx, *args, h=h, names=tuple(names), kwargs=kw,
                        with_info=True, chunks=chunks, adjust_chunks={c: 1 for c in bidx + sidx},
                        concatenate=True, dtype=object, meta=np.empty((0,) * y.ndim, dtype=object))
    x = both.map_blocks(_pick, 0, chunks=y.chunks[:nb] + tuple((s,) for s in n), dtype=wdt,
                        meta=_meta(y, wdt))
    info = both.map_blocks(_pick, 1, drop_axis=list(range(nb, y.ndim)), chunks=y.chunks[:nb],
                           dtype=INFO_DTYPE, meta=np.empty((0,) * nb, dtype=INFO_DTYPE))
    return x, info


def _convolve_block(xb, *, h, kwargs, correlate, nb=0, block_info=None):
    from .conv import convolve as conv
    from .conv import correlate as corr

    where = None
    if nb and block_info is not None and 0 in block_info:
        info = block_info[0]

        def where():
            loc = tuple(info["chunk-location"][:nb])
            first = tuple(int(a) for a, _ in info["array-location"][:nb])
            last = tuple(int(b) - 1 for _, b in info["array-location"][:nb])
            span = f"image {first}" if first == last else f"images {first}..{last}"
            return f"x block {loc} ({span} of the batch)"

    return _in_block(lambda: (corr if correlate else conv)(xb, h, **kwargs), where)


def _map_conv(x, h, mode, boundary, convention, ndim, dtype, correlate):
    da = _da()
    from .operators import ConvolutionOperator

    x = _as_dask(da, "x", x)
    check_mode_boundary_convention(mode, boundary, convention)
    nd = _check_kernel(da, x, h, ndim)
    _check_spatial_chunks("x", x, nd)
    nb = x.ndim - nd
    # A host probe of the kernel's shape validates the geometry now, not at compute time.
    out = ConvolutionOperator(np.zeros(h.shape), x.shape[nb:], mode, boundary=boundary,
                              convention=convention).spatial_out_shape
    wdt = float_dtype("x", x.dtype, check_dtype_arg(dtype))
    return x.map_blocks(_convolve_block, h=h, correlate=correlate, nb=nb,
                        kwargs=dict(mode=mode, boundary=boundary, convention=convention, ndim=nd,
                                    dtype=dtype),
                        chunks=x.chunks[:nb] + tuple((s,) for s in out), dtype=wdt, meta=_meta(x, wdt))


def convolve(x: Any, h: Any, mode: str = "full", *, boundary: str = "zero", convention: str = "scipy",
             ndim: int | None = None, dtype: Any = None) -> Any:
    """Lazy :func:`gpu_deconv.convolve` of a dask array of images, one task per batch chunk.

    Parameters
    ----------
    x : dask.array.Array (or NumPy/CuPy array)
        Images ``(*batch, *n)``; spatial axes in one chunk each.
    h : NumPy or CuPy array
        One kernel, in the array module of x's chunks.
    mode, boundary, convention, dtype
        As in :func:`gpu_deconv.convolve`.
    ndim : int, optional
        Must equal ``h.ndim`` (per-image kernels are not supported lazily).

    Returns
    -------
    dask.array.Array
        Chunked like x along the batch axes; spatial shape of the mode.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import gpu_deconv.dask as gdd
    >>> x = da.ones((6, 16, 16), chunks=(3, 16, 16))
    >>> gdd.convolve(x, np.ones((3, 3)), "valid").chunks
    ((3, 3), (14,), (14,))
    """
    return _map_conv(x, h, mode, boundary, convention, ndim, dtype, False)


def correlate(x: Any, h: Any, mode: str = "full", *, boundary: str = "zero", convention: str = "scipy",
              ndim: int | None = None, dtype: Any = None) -> Any:
    """Lazy :func:`gpu_deconv.correlate` of a dask array of images (see :func:`convolve`)."""
    return _map_conv(x, h, mode, boundary, convention, ndim, dtype, True)
