"""``axes=`` for operators and solvers: which axes of the data are the kernel's (channels-last data).

Kernel axis i acts along data axis ``axes[i]``; every other axis of the data is a batch axis.
The computation itself always runs on trailing spatial axes: the data are moved there
(:func:`to_last`, a view) and the result moved back (:func:`from_last`).
"""

from __future__ import annotations

import numbers
import operator

import numpy as np


def check_axes(axes, data_ndim, kernel_ndim, name="axes"):
    """`axes` as a tuple of non-negative ints: one per kernel axis, unique, within the data's rank."""
    if isinstance(axes, (numbers.Integral, np.integer)) and not isinstance(axes, bool):
        axes = (axes,)
    try:
        ax = tuple(operator.index(a) for a in axes)
    except TypeError:
        raise TypeError(f"{name} must be an integer or a sequence of integers; got {axes!r}") from None
    if len(ax) != kernel_ndim:
        raise ValueError(f"{name} must name one data axis per kernel axis ({kernel_ndim}); got {axes!r}")
    if any(a < -data_ndim or a >= data_ndim for a in ax):
        raise ValueError(f"{name} {axes!r} out of range for data of {data_ndim} dimensions")
    ax = tuple(a % data_ndim for a in ax)
    if len(set(ax)) != len(ax):
        raise ValueError(f"{name} must be unique; got {axes!r}")
    return ax


def _last(ndim, k):
    return tuple(range(ndim - k, ndim))


def to_last(xp, a, axes):
    """`a` with its axes `axes` moved to the end, in that order (a view)."""
    return xp.moveaxis(a, axes, _last(a.ndim, len(axes)))


def from_last(xp, a, axes):
    """Inverse of :func:`to_last`."""
    return xp.moveaxis(a, _last(a.ndim, len(axes)), axes)


def natural_shape(batch, spatial, axes):
    """The shape whose axes `axes` hold `spatial` and whose other axes hold `batch`, in order."""
    full = [None] * (len(batch) + len(spatial))
    for a, s in zip(axes, spatial):
        full[a] = s
    rest = iter(batch)
    return tuple(next(rest) if v is None else v for v in full)
