"""The geometry of the padding matrix P: index arithmetic only.

Every convolution mode is ``H = E C P``: P extends x beyond its support
(zero / periodic / symmetric / reflect / replicate), C is a circular
convolution on an FFT grid, E extracts the mode's window. This module holds
the index arithmetic (which sample the extension reads, the per-axis plan,
the output and input lengths of each mode); applying P and its adjoint is
the device seam's (:meth:`gpu_deconv._ops.ArrayOps.pad` / ``fold``).

The same arithmetic lives, element by element, in ``kernels/pad_extract.cuh``
for the GPU; ``tests/test_kernels_harness.py`` checks that both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def source_index(boundary: str, n: int, m):
    """Index into ``x[0:n]`` that position `m` (any integer) of the extended signal reads.

    Returns -1 where the extension is zero. Vectorised over `m` (NumPy ints).

    * periodic: ``m mod n``
    * symmetric (half-sample mirror, ``a b c | c b a``): period ``2n``
    * reflect (whole-sample mirror, ``a b c | b a``): period ``2n - 2``
      (``n == 1`` repeats the single sample, as ``numpy.pad`` does)
    * replicate (``numpy.pad`` 'edge'): clip to ``[0, n-1]``
    """
    m = np.asarray(m, dtype=np.int64)
    if boundary == "zero":
        return np.where((m >= 0) & (m < n), m, -1)
    if boundary == "periodic":
        return np.mod(m, n)
    if boundary == "replicate":
        return np.clip(m, 0, n - 1)
    if boundary == "symmetric":
        t = np.mod(m, 2 * n)
        return np.where(t < n, t, 2 * n - 1 - t)
    if boundary == "reflect":
        if n == 1:
            return np.zeros_like(m)
        t = np.mod(m, 2 * n - 2)
        return np.where(t < n, t, 2 * n - 2 - t)
    raise ValueError(f"unknown boundary {boundary!r}")


@dataclass(frozen=True)
class AxisPlan:
    """How one spatial axis is convolved.

    The input (length n) is extended by L samples before and R after
    (boundary rule; nothing for 'zero'), placed at the start of a grid of
    length G, circularly convolved with the kernel whose tap i sits at
    ``(i - shift) mod G``, and the output is the first m samples of the grid.
    """

    n: int
    k: int
    m: int
    L: int
    R: int
    G: int
    shift: int

    @property
    def n_ext(self) -> int:
        return self.n + self.L + self.R


def same_offset(k: int, convention: str) -> int:
    """Where 'same' starts in the full result: SciPy (k-1)//2, MATLAB k//2."""
    return (k - 1) // 2 if convention == "scipy" else k // 2


def output_length(n: int, k: int, mode: str) -> int:
    """Length of the `mode` convolution of n samples with k taps (MATLAB: empty valid when k > n)."""
    if mode == "full":
        return n + k - 1
    if mode in ("same", "circular"):
        return n
    return max(n - k + 1, 0)  # valid; MATLAB gives empty when k > n


def input_shape(mode: str, m, k) -> tuple:
    """Spatial shape of the unknown x whose `mode` convolution with a kernel of shape `k` has shape `m`.

    The inverse of :func:`output_length` per axis: ``m`` (same, circular),
    ``m + k - 1`` (valid), ``m - k + 1`` (full, which needs ``m >= k``).
    """
    if mode in ("same", "circular"):
        return tuple(m)
    if mode == "valid":
        return tuple(a + b - 1 for a, b in zip(m, k))
    n = tuple(a - b + 1 for a, b in zip(m, k))
    if any(v < 1 for v in n):
        raise ValueError(f"mode='full' needs y at least as large as the kernel in every axis "
                         f"(x has y.shape - k + 1 samples); y spatial shape {tuple(m)}, kernel {tuple(k)}")
    return n


def output_shape(in_shape, kernel_shape, mode: str) -> tuple:
    """Spatial output shape of `mode` for an input of `in_shape` and a kernel of `kernel_shape`."""
    return tuple(output_length(n, k, mode) for n, k in zip(in_shape, kernel_shape))


def plan_axis(n, k, mode, boundary, convention, next_fast_len, *, exact_grid=False) -> AxisPlan:
    """Geometry of one axis. `next_fast_len` chooses a fast grid at least as long as needed.

    With ``exact_grid`` the grid is not enlarged (used where the grid length
    itself is part of the model, e.g. the Fourier-division approximation).
    """
    if mode == "circular":
        # Period n exactly; the kernel wraps mod n if it is longer than n.
        return AxisPlan(n, k, n, 0, 0, n, same_offset(k, convention))
    m = output_length(n, k, mode)
    j0 = {"full": 0, "same": same_offset(k, convention), "valid": k - 1}[mode]
    if boundary == "zero":
        need = max(n + k - 1 - j0, j0 + m, 1)
        L = R = 0
        shift = j0
    else:
        L = max(0, k - 1 - j0)
        R = max(0, j0 + m - n)
        need = n + L + R
        shift = j0 + L
    G = need if exact_grid else next_fast_len(need)
    return AxisPlan(n, k, m, L, R, G, shift)
