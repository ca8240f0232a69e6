"""Launchers of ``kernels/cg.cu``: the fused vector passes and per-image dot products of the batched CG."""

from __future__ import annotations

import math

import numpy as np

from . import launch as launch_mod
from .launch import (
    BLOCK,
    grid_1d,
    launch,
    reduction_layout,
)
from .modules import cupy_module, dtype_suffix


class CGKernels:
    """The fused passes of :func:`gpu_deconv.solvers.cg.batched_cg` on the GPU.

    Works on arrays of shape ``batch + n`` (C-contiguous), one system per
    image; per-image scalars are float64 arrays of shape `batch`. The
    partial sums of the reductions live in one buffer allocated here, once
    per solve, so the iteration loop allocates nothing for them.

    Parameters
    ----------
    batch : tuple of int
        Batch shape of the systems.
    n : tuple of int
        Shape of one system.
    dtype : float32 or float64
        Working precision of the vectors.
    """

    #: ``update_xr`` leaves an image whose step ``a`` is 0 untouched (x, r), so
    #: :func:`~gpu_deconv.solvers.cg.batched_cg_fused` may zero a broken image's
    #: vectors after the iteration's one host read instead of before its update.
    skips_zero_steps = True

    def __init__(self, batch, n, dtype):
        cp = cupy_module()
        self._cp = cp
        self.batch = tuple(int(b) for b in batch)
        self.B = math.prod(self.batch)
        self.N = math.prod(int(s) for s in n)
        self.dtype = np.dtype(dtype)
        dtype_suffix(self.dtype)
        self.nblk, self.grid = reduction_layout(self.N, self.B)
        self.partial = cp.empty(max(self.B, 1) * self.nblk, dtype=np.float64)
        self._finish_grid = (max(1, min(self.B, launch_mod.MAX_BLOCKS)),)

    def _flat(self, name, a):
        if tuple(a.shape[:len(self.batch)]) != self.batch or a.size != self.B * self.N:
            raise ValueError(f"{name} must have shape {self.batch} + the system's shape "
                             f"({self.N} values per image); got {tuple(a.shape)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        return a.reshape(self.B, self.N)

    def _scalars(self, name, v):
        a = self._cp.ascontiguousarray(v, dtype=np.float64).reshape(-1)
        if a.size != self.B:
            raise ValueError(f"{name} must hold one value per image ({self.B}); got {a.size}")
        return a

    def _out(self, out):
        if out is None:
            out = self._cp.empty(self.batch, dtype=np.float64)
        elif tuple(out.shape) != self.batch or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float64 array of shape {self.batch}")
        return out

    def _state(self, name, v, dtype):
        """A per-image array the kernels read and write in place: its flat (B,) view."""
        if (tuple(v.shape) != self.batch or np.dtype(v.dtype) != np.dtype(dtype) or not v.flags.c_contiguous
                or not isinstance(v, self._cp.ndarray)):
            got = f"{type(v).__name__} {getattr(v, 'dtype', None)} {tuple(v.shape)}"
            raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype)} device array of shape "
                             f"{self.batch}; got {got}")
        return v.reshape(self.B)

    def _finish(self, out):
        if self.B:
            launch("sum_partials", self.dtype, self._finish_grid, (BLOCK,),
                    (self.partial, out.reshape(self.B), self.nblk, self.B))
        return out

    def dot(self, u, v, out=None):
        """Per-image ``sum(u * v)`` over the system axes, accumulated in float64."""
        uf, vf = self._flat("u", u), self._flat("v", v)
        out = self._out(out)
        if self.B:
            launch("dot_partial", self.dtype, self.grid, (BLOCK,),
                    (uf, vf, self.partial, self.N, self.B, self.nblk))
        return self._finish(out)

    def update_xr(self, x, r, p, q, a, out=None):
        """``x += a p``, ``r -= a q`` (a per image) in one pass; returns the new ``r . r`` per image."""
        xf, rf, pf, qf = (self._flat(k, v) for k, v in (("x", x), ("r", r), ("p", p), ("q", q)))
        af = self._scalars("a", a)
        out = self._out(out)
        if self.B:
            launch("cg_update_xr", self.dtype, self.grid, (BLOCK,),
                    (xf, rf, pf, qf, af, self.partial, self.N, self.B, self.nblk))
        return self._finish(out)

    def update_p(self, p, z, beta):
        """``p = z + beta p`` in place (beta per image); z may be r."""
        pf, zf = self._flat("p", p), self._flat("z", z)
        bf = self._scalars("beta", beta)
        total = self.B * self.N
        if total:
            launch("cg_update_p", self.dtype, grid_1d(total), (BLOCK,), (pf, zf, bf, total, self.N))
        return p

    # Per-image scalars of one iteration of batched_cg_fused, one launch each (see kernels/cg.cuh);
    # float64 values and bool flags of the batch's shape, updated in place.
    def step(self, rz, pq, active, breakdown, broken, out):
        """``step = rz / pq``, its curvature check and ``a = where(active, step, 0)`` in one launch.

        An active image whose ``pq`` is not positive or whose step is not finite
        breaks down: ``breakdown`` is set, ``active`` cleared, ``broken`` says
        which images did so here (it is overwritten). Returns `out` (``a``).
        """
        f64, flag = np.float64, np.bool_
        args = (self._state("rz", rz, f64), self._state("pq", pq, f64), self._state("active", active, flag),
                self._state("breakdown", breakdown, flag), self._state("broken", broken, flag),
                self._state("out", out, f64), self.B)
        if self.B:
            launch("cg_step", self.dtype, grid_1d(self.B), (BLOCK,), args)
        return out

    def check(self, rr, bnorm, rtol, active, breakdown, broken, iters, res, done, flags):
        """After the update: ``iters += active``, ``res = sqrt(rr) / bnorm``, its check, ``done``, the flags.

        An active image whose ``res`` is not finite breaks down (``breakdown``
        set, ``active`` cleared, ``broken`` ORed); ``done = active & (res <=
        rtol)``. ``flags`` (3 bools) gets ``any(broken), any(done), any(active)``:
        what the iteration's one host read fetches. One launch of one block.
        """
        f64, flag = np.float64, np.bool_
        if tuple(flags.shape) != (3,) or flags.dtype != np.bool_ or not flags.flags.c_contiguous:
            raise ValueError(f"flags must be a C-contiguous bool array of 3 values; got {flags.dtype} "
                             f"{tuple(flags.shape)}")
        args = (self._state("rr", rr, f64), self._state("bnorm", bnorm, f64), float(rtol),
                self._state("active", active, flag), self._state("breakdown", breakdown, flag),
                self._state("broken", broken, flag), self._state("iters", iters, np.int64),
                self._state("res", res, f64), self._state("done", done, flag), flags, self.B)
        if self.B:
            launch("cg_check", self.dtype, (1,), (BLOCK,), args)
        else:
            flags[...] = False
        return flags

    def beta(self, rz_new, rz, keep, out):
        """``where(keep, rz_new / where(rz != 0, rz, 1), 0)`` into `out` in one launch; returns `out`."""
        f64 = np.float64
        args = (self._state("rz_new", rz_new, f64), self._state("rz", rz, f64),
                self._state("keep", keep, np.bool_), self._state("out", out, f64), self.B)
        if self.B:
            launch("cg_beta", self.dtype, grid_1d(self.B), (BLOCK,), args)
        return out
