"""Border-block preconditioner: exact local solves on overlapping blocks along the faces.

For kernels with spectral near-zeros and no axis symmetry (camera shake: a
motion line at an angle), ``same`` + ``symmetric`` keeps a continuum of small
preconditioned eigenvalues under the default model (:func:`.precond._circulant_dct`):
modes that the normal operator nearly annihilates, with most of their energy
within ~8 px of a face (dense analysis, 64^2, 13-px 30-degree motion, lam 1e-3:
51 eigenvalues below 0.1, 212 below 0.3). They are too many to deflate
(40 harvested Ritz vectors: 69 -> 58-66 iterations at 192^2), and the face-band
model (block-circulant along the face) misses them: its tangential Fourier
model is what is wrong, not its width (64^2: band model 24 px wide 100
iterations, exact solves on the same strips 33).

This preconditioner is the additive Schwarz form

``P r = T C^-1 (T r) + sum_b E_b (E_b^T M E_b)^-1 E_b^T r``

with C the gain-limited circulant model (:func:`.precond.circulant_part`), T
falling from 1 to 0 over the ``w = 2 (k - 1)`` pixels next to each face, and
blocks of ``w x 2w`` pixels against each face, ``w`` apart along it (so every
border pixel lies in two blocks), each solved exactly by a dense inverse. SPD:
every pixel where T < 1 lies in a block.

The blocks are cheap to build because M is local: away from the perpendicular
faces, every block of a face is the same matrix, so only the blocks at the
corners and one per face differ. Their entries are read off a small problem of
``(2w + 2 r)^2`` pixels with the same operators (r: M's stencil reach), whose
columns are probed all at once with ``(2r + 1)^2`` comb images (columns of M
more than 2r apart do not overlap).

Measured (13-px 30-degree motion, Laplacian, rtol 1e-6, same + symmetric;
iterations band -> border): 512^2 43/62/117 -> 19/40/87 at lam 1e-2/1e-3/1e-4,
192^2 39/71/148 -> 21/40/91; 13 x 13 Gaussian 8-9 -> 10-12. The price is the
apply: one dense product per kind of block, bound by reading its matrix (CPU
time, one BLAS thread: 512^2 10 ms for the blocks + 4 ms for the circulant
part, against 11 ms for the band model and 12 ms for the normal operator;
192^2 7.3 + 0.5 ms against 1.2 and 1.8), and the build (1-2.5 s on the host,
once per kernel, lam and shape; 32 MB, :data:`BLOCK_DTYPE`). So it pays where
the blocks are reused (512^2, CPU time: a batch of 8 images 0.62x the band
model's, build included; a cached single solve 0.47-0.77x; a first single solve
1.24-1.46x): the default preconditioner uses it for batches of large images
sharing kernel and lam (:func:`border_pays`), ``precondition="border"``
everywhere it applies. GPUs, where dense products are cheap next to FFTs, were
not measured.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .._backend import get_backend

__all__ = ["border_part", "border_eligible", "border_geometry", "border_pays"]

#: Largest block (pixels, ``2 w^2``) for which border blocks are built: 1152 for a
#: 13 x 13 kernel (w = 24), 2048 up to 17 x 17. Above it the dense inverses
#: (and the probes) cost more than the iterations they save; the band model is used.
BORDER_MAX_BLOCK = 2048

#: Precision of the stored block inverses and of their products, whatever the
#: solve's: a preconditioner need only be a fixed SPD approximation, and float32
#: halves the memory (32 MB for a 13 x 13 kernel) and the time of the dense
#: products (512^2, one BLAS thread: 12.4 -> 7.4 ms). Measured, 192^2 float64
#: solves: 40 / 90 / 99 iterations (lam 1e-3, 1e-4; lam 1e-3 to rtol 1e-11) with
#: float64 blocks, 40 / 91 / 101 with float32 blocks.
BLOCK_DTYPE = np.float32


def border_geometry(prob):
    """(w, r): block depth ``w = 2 (k - 1)`` (at least 4) and the stencil reach r of M."""
    reach = max(k - 1 for k in prob.kshape)
    if prob.use_reg:
        for t in prob.terms:
            if not t.is_identity:
                reach = max(reach, max(k - 1 for k in t.op.kernel_shape))
    w = max(4, 2 * max(k - 1 for k in prob.kshape))
    return w, max(reach, 1)


def border_eligible(prob):
    """Whether the border blocks apply: 2-D, one kernel for the batch, real, image large enough."""
    if prob.ndim != 2 or prob.A.kernel_batch or prob.dtype.kind == "c":
        return False
    w, r = border_geometry(prob)
    return 2 * w * w <= BORDER_MAX_BLOCK and all(v >= 2 * w + 2 * r for v in prob.n)


#: The default preconditioner ("band", ``precondition=True``) switches to the border blocks
#: for batches of at least this many images sharing kernel, lam and alpha, each at least
#: :data:`BORDER_AUTO_SIDE` ``x w`` pixels per axis. Measured (CPU time, one BLAS thread,
#: 13-px 30-degree motion, 512^2, lam 1e-3): 8 images 25.7 s band, 15.8 s border (0.62x,
#: build included); 1 image 1.92 vs 2.67 s (1.39x: the build, 1-1.5 s, is not repaid).
#: Cost model behind the bounds: the build is repaid by 0.5-1 s saved per 512^2 image
#: (so from 2-3 images; 4 for a margin), and the blocks' apply, fixed by the six matrices'
#: size, exceeds what it saves on images much smaller than 16 w (192^2: 7.8 ms per apply
#: against 1.2 ms for the band model).
BORDER_AUTO_IMAGES = 4
BORDER_AUTO_SIDE = 16


def border_pays(prob):
    """Whether the default preconditioner should use the border blocks (see :data:`BORDER_AUTO_IMAGES`)."""
    from .precond import image_params

    if not border_eligible(prob) or prob.B < BORDER_AUTO_IMAGES or len(image_params(prob)[0]) != 1:
        return False
    w, _ = border_geometry(prob)
    return min(prob.n) >= BORDER_AUTO_SIDE * w


def _small_problem(prob, S, lam, alpha):
    """`prob` on one S x S unknown (host, float64), same operators, the given lam and alpha."""
    h = np.asarray(prob.bk.asnumpy(prob.A.kernel), dtype=np.float64)
    A = prob.A
    n = (S, S)
    terms = []
    for t in prob.terms:
        if not t.is_identity:
            op = t.op
            g = np.asarray(prob.bk.asnumpy(op.kernel), dtype=np.float64)
            t = replace(t, op=type(op)(g, n, op.mode, boundary=op.boundary, convention=op.convention, ndim=2))
        terms.append(t)
    return prob.replace(bk=get_backend(h=h), dtype=np.dtype(np.float64), n=n, batch=(1,),
                        A=type(A)(h, n, A.mode, boundary=A.boundary, convention=A.convention, ndim=2),
                        terms=terms, lam=np.asarray([lam], dtype=np.float64),
                        alpha=np.asarray([alpha], dtype=np.float64), use_alpha=bool(alpha > 0),
                        use_reg=bool(lam > 0) and prob.use_reg)


def _probe(prob, S, r, lam, alpha):
    """M of the small problem applied to the (2r+1)^2 comb images: shape (p*p, S, S), p = 2r + 1."""
    small = _small_problem(prob, S, lam, alpha)
    p = 2 * r + 1
    combs = np.zeros((p * p, S, S))
    for a in range(p):
        for c in range(p):
            combs[a * p + c, a::p, c::p] = 1.0
    return np.asarray(small.normal_operator(np.float64)(combs)), p


def _local_matrix(outs, p, r, c0, c1):
    """M restricted to the pixels (c0[i], c1[i]), from the comb responses."""
    cls = (c0 % p) * p + (c1 % p)
    Mloc = outs[cls[None, :], c0[:, None], c1[:, None]]
    near = (np.abs(c0[:, None] - c0[None, :]) <= r) & (np.abs(c1[:, None] - c1[None, :]) <= r)
    Mloc = np.where(near, Mloc, 0.0)
    return 0.5 * (Mloc + Mloc.T)


def _starts(n, w):
    """Block starts along a face (blocks 2w long): w apart from each end towards the middle.

    Every pixel lies in a block and, away from the middle, in two; the blocks at
    the ends are the only ones that see the perpendicular faces, so a face has
    three kinds of block (start, middle, end) whatever its length.
    """
    last = n - 2 * w
    fwd = list(range(0, last // 2 + 1, w))
    bwd = [last - v for v in range(0, last - fwd[-1], w)]
    return sorted(set(fwd) | set(bwd))


def _block_coords(face, n, w, start):
    """Pixels (rows, cols) of the block of `face` (0: top, 1: left, 2: bottom, 3: right) at `start`."""
    axis = face % 2
    across = np.arange(w) if face < 2 else np.arange(n[axis] - w, n[axis])
    along = np.arange(start, start + 2 * w)
    if axis == 0:
        a, c = np.meshgrid(across, along, indexing="ij")
    else:
        a, c = np.meshgrid(along, across, indexing="ij")
    return a.ravel(), c.ravel()


def _centro_symmetric(prob):
    """Kernel and regularizers odd-sized and equal to themselves turned by 180 degrees (to rounding)."""
    def ok(k):
        k = np.asarray(prob.bk.asnumpy(k))
        tol = 8 * np.finfo(k.dtype).eps * float(np.abs(k).max())
        return all(v % 2 == 1 for v in k.shape) and float(np.abs(k - k[::-1, ::-1]).max()) <= tol

    return ok(prob.A.kernel) and all(t.is_identity or ok(t.op.kernel) for t in prob.terms)


def _spd_inverse(M, dtype):
    """Inverse of a symmetric positive-definite matrix by Cholesky (LAPACK potrf/potri)."""
    from scipy.linalg import lapack

    from .precond import _hermitian_inverse
    c, info = lapack.dpotrf(M, lower=True)
    if info == 0:
        inv, info = lapack.dpotri(c, lower=True)
        if info == 0:
            inv = np.tril(inv) + np.tril(inv, -1).T
            return inv.astype(dtype)
    return _hermitian_inverse(M, dtype).real.astype(dtype)


def _build(bk, prob, dtype):
    """Per kind of block: ``(pixel indices (nb, m), inverse (L, m, m), [(indices, slice of nb), ...])``.

    The last item splits the blocks into groups of which no two share a pixel
    (for the scatter-add); the product is one per kind (one read of its matrix).

    One matrix per kind of block (a face's start, middle and end blocks). With a
    kernel (and regularizers) symmetric under a 180-degree rotation, the blocks of
    the bottom and right faces are those of the top and left faces, pixel order
    reversed: half the matrices to build and hold (6 for a square image).
    """
    from .precond import image_params

    w, r = border_geometry(prob)
    S = 2 * w + 2 * r
    lam, alpha = image_params(prob)
    n = prob.n
    rotate = _centro_symmetric(prob)
    keys, groups = {}, {}
    for face in range(4):
        t = 1 - face % 2  # the tangential axis
        for st in _starts(n[t], w):
            sig = (min(st, r), min(n[t] - 2 * w - st, r))
            b0, b1 = _block_coords(face, n, w, st)
            ix = b0 * n[1] + b1
            f = face
            if rotate and face >= 2:
                f, sig, ix = face - 2, sig[::-1], ix[::-1]
            key = (f, sig)
            if key not in keys:
                sst = sig[0] if sig[0] < r else (S - 2 * w - sig[1] if sig[1] < r else r)
                keys[key] = _block_coords(f, (S, S), w, sst)
            _add_disjoint(groups.setdefault(key, []), ix, n[0] * n[1])
    inverses = {key: [] for key in keys}
    for li, ai in zip(lam, alpha):
        outs, p = _probe(prob, S, r, float(li), float(ai))
        for key, (s0, s1) in keys.items():
            inverses[key].append(_spd_inverse(_local_matrix(outs, p, r, s0, s1), BLOCK_DTYPE))
        del outs
    out = []
    for key, gs in groups.items():
        blocks = [ix for g in gs for ix in g[1:]]
        ends = np.cumsum([len(g) - 1 for g in gs])
        parts = [(bk.xp.asarray(np.stack(g[1:])), slice(e - len(g) + 1, e)) for g, e in zip(gs, ends)]
        out.append((bk.xp.asarray(np.stack(blocks)), bk.xp.asarray(np.stack(inverses[key])), parts))
    return out


def _add_disjoint(groups, ix, npix):
    """Put a block into the first group of same-kind blocks that it does not overlap (a new one if none).

    A group is applied with one gather, one product and one scatter-add, which
    adds once per index: its blocks must not share a pixel. Blocks of opposite
    faces never do; blocks of one face do when their starts are under 2w apart.
    A group is ``[taken pixels (bool mask), block, block, ...]``.
    """
    for g in groups:
        if not g[0][ix].any():
            g[0][ix] = True
            g.append(ix)
            return
    taken = np.zeros(npix, dtype=bool)
    taken[ix] = True
    groups.append([taken, ix])


def border_taper(prob, dtype):
    """``T = t_0 t_1``: 1 from ``w`` pixels inside, falling linearly to 0 at each face."""
    w, _ = border_geometry(prob)
    t = None
    for axis in range(2):
        v = prob.n[axis]
        d = np.minimum(np.arange(v), np.arange(v)[::-1])
        ta = np.clip(d / w, 0.0, 1.0).reshape((v, 1) if axis == 0 else (1, v))
        t = ta if t is None else t * ta
    return prob.bk.xp.asarray(t.astype(dtype))


def border_part(bk, prob, dtype, cached):
    """``(r, out) -> out + sum_b E_b B_b^-1 E_b^T r`` (built once per kernel, lam, shape; see module doc)."""
    groups = cached(bk, prob, dtype, "border", lambda: _build(bk, prob, dtype))
    xp = bk.xp

    def apply(r, out):
        B = r.shape[0]
        rf = xp.ascontiguousarray(r).reshape(B, -1)
        of = xp.ascontiguousarray(out).reshape(B, -1)
        for ix, Binv, parts in groups:
            z = xp.matmul(rf[:, ix].astype(Binv.dtype, copy=False), Binv)  # Binv symmetric
            for ixg, sl in parts:
                of[:, ixg] += z[:, sl]  # no repeated index within a group
        return of.reshape(out.shape)

    return apply
