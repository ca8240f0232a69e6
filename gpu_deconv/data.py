"""Built-in synthetic data: a test scene and standard kernels (used by the demo, tests and benchmarks)."""

from __future__ import annotations

import numpy as np

__all__ = ["scene", "gaussian_kernel", "motion_kernel"]


def gaussian_kernel(size, sigma, ndim=2, dtype=np.float64):
    """Normalised Gaussian kernel of odd `size` per axis (centre-symmetric).

    Examples
    --------
    >>> from gpu_deconv.data import gaussian_kernel
    >>> k = gaussian_kernel(15, 2.5)
    >>> k.shape, round(float(k.sum()), 12)
    ((15, 15), 1.0)
    """
    size = (size,) * ndim if np.isscalar(size) else tuple(size)
    grids = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in size], indexing="ij")
    r2 = sum(g * g for g in grids)
    k = np.exp(-r2 / (2.0 * sigma * sigma))
    return (k / k.sum()).astype(dtype)


def motion_kernel(length=9, angle=30.0, size=None, dtype=np.float64):
    """A 2-D linear motion-blur kernel: a line of `length` pixels at `angle` degrees, normalised.

    The line is sampled densely and rounded to the pixel grid (no
    anti-aliasing), so the kernel is centro-symmetric but, at angles other
    than multiples of 90 degrees, not symmetric in each axis: ``same`` +
    ``symmetric`` then has no DCT closed form and is solved by PCG. Its
    transfer function has near-zeros (a sinc along the motion direction),
    the hard case for the CG preconditioner (README: preconditioned CG).

    Parameters
    ----------
    length : int, optional
        Length of the line in pixels (default 9).
    angle : float, optional
        Direction in degrees, counter-clockwise from the second axis (default 30).
    size : int, optional
        Side of the square kernel (default `length`, rounded up to odd).
    dtype : dtype, optional
        Default float64.

    Examples
    --------
    >>> import numpy as np
    >>> from gpu_deconv.data import motion_kernel
    >>> k = motion_kernel(13, 30)
    >>> k.shape, round(float(k.sum()), 12), bool(np.allclose(k, k[::-1, ::-1]))
    ((13, 13), 1.0, True)
    """
    size = size or (length if length % 2 else length + 1)
    k = np.zeros((size, size))
    c = (size - 1) / 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length)
    a = np.deg2rad(angle)
    r = np.clip(np.round(c - t * np.sin(a)).astype(int), 0, size - 1)
    q = np.clip(np.round(c + t * np.cos(a)).astype(int), 0, size - 1)
    np.add.at(k, (r, q), 1.0)
    return (k / k.sum()).astype(dtype)


def scene(shape=(256, 256), seed=0, dtype=np.float64):
    """A deterministic synthetic scene in [0, 1]: smooth shading, discs, bars, a texture patch.

    Nonzero up to its edges (so boundary models matter), with sharp edges and
    fine detail (so deblurring shows). Any number of dimensions.

    Examples
    --------
    >>> from gpu_deconv.data import scene
    >>> s = scene((64, 64))
    >>> s.shape, bool(0.0 <= s.min() and s.max() <= 1.0)
    ((64, 64), True)
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    nd = len(shape)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in shape], indexing="ij")
    img = 0.25 + 0.2 * grids[0] + (0.1 * grids[1] if nd > 1 else 0)
    for _ in range(12):
        c = rng.uniform(0.1, 0.9, nd)
        r = rng.uniform(0.04, 0.15)
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        img = np.where(d2 < r * r, rng.uniform(0.0, 1.0), img)
    for _ in range(6):
        lo = rng.uniform(0.0, 0.8, nd)
        hi = lo + rng.uniform(0.03, 0.2, nd)
        mask = np.ones(shape, dtype=bool)
        for g, a, b in zip(grids, lo, hi):
            mask &= (g >= a) & (g <= b)
        img = np.where(mask, rng.uniform(0.0, 1.0), img)
    # A patch of fine stripes: detail that blur removes.
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * grids[-1] * max(shape[-1], 8) / 6.0)
    mask = np.ones(shape, dtype=bool)
    for g in grids:
        mask &= (g > 0.6) & (g < 0.85)
    img = np.where(mask, stripes, img)
    return np.clip(img, 0.0, 1.0).astype(dtype)
