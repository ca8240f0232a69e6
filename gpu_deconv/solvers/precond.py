"""Preconditioners for the normal equations ``M = A^T A + lam sum w_i G_i^T G_i + alpha I``.

Away from the edges of the unknown, M is shift-invariant: its circulant
approximation on a grid padded by 2(k-1), inverted by FFT, is accurate there
(Fourier division used as a preconditioner, never as an answer). What it gets
wrong is the boundary strip: in ``valid`` mode the outermost pixels are seen by
only a corner tap of the kernel and are governed by the regularizer, so the
circulant model overestimates them by orders of magnitude, and plain circulant
PCG spends most of its iterations there (measured: ~2.5x fewer iterations than
plain CG, where 5x was the aim).

The *band* correction fixes that. Near one face (and away from the others) M
is still shift-invariant along the face, but arbitrary across it. For each
face, the band of the w = k-1+2 layers next to it gets a block-circulant model:
per tangential frequency a dense w x w Hermitian matrix, computed exactly
from the kernels' index arithmetic (no probing, no FFT over the image). The
preconditioner is the sum (additive Schwarz)

``P r = E C^-1 E^T r + sum_faces E_f B_f^-1 E_f^T r``,

SPD as a sum of SPD terms. Measured on the 512^2 valid problem of the
benchmarks: see README (PCG vs CG iterations).

Kernels with spectral near-zeros (camera shake: a motion line's sinc) need
two more things: the circulant part's gain is limited (:data:`GAIN_LIMIT`),
since near the faces the operator does not share those near-zeros; and in
``same`` + ``symmetric`` the faces get a DCT model (the kernel's power
averaged over the axis reflections, exact for the mirrored kernel) instead
of the bands (:func:`_circulant_dct`); measured iterations in the docstrings
and in the README (PCG section).
"""

from __future__ import annotations

import numpy as np

from .. import _cache
from .._padding import source_index
from .._spectra import kernel_power, weighted_power
from .border import border_eligible, border_part, border_pays, border_taper
from .closed_form import image_scalars

__all__ = ["make_preconditioner", "band_stencil", "singular_images", "image_params"]


def _cached(bk, prob, dtype, part, build):
    """A preconditioner part, cached by the problem's operators, weights and dtype."""
    return _cache.cached(bk, prob.key("precond", part, dtype=dtype), build)


# ------------------------------------------------------------ circulant part
def circulant_part(bk, prob, dtype):
    """``(r, T) -> T E F^-1 diag(1/D) F E^T (T r)`` on a grid padded by 2(k-1) per axis.

    T is an optional diagonal weight (the taper; None for 1). At most two
    grid-sized arrays are alive at a time: the weighted copy of r is dropped
    once transformed, and the inverse transform may overwrite the spectrum.
    """
    nd = prob.ndim
    grid = tuple(_fast(prob, a) for a in range(nd))
    Dinv = _cached(bk, prob, dtype, "circulant", lambda: _circulant_inverse(bk, prob, dtype, grid))
    ops = bk.ops

    def apply(r, T=None):
        return ops.circulant_apply(r, T, Dinv, grid, prob.n)

    return apply


def image_params(prob):
    """(lam, alpha) per image, or a single pair when the batch shares them and its kernel.

    A shared pair makes every part of the preconditioner one array for the
    whole batch (broadcast), instead of one copy per image.
    """
    lam = np.asarray(prob.lam, dtype=np.float64)
    alpha = np.asarray(prob.alpha, dtype=np.float64)
    if not prob.A.kernel_batch and np.all(lam == lam[0]) and np.all(alpha == alpha[0]):
        return lam[:1], alpha[:1]
    return lam, alpha


def _circulant_inverse(bk, prob, dtype, grid):
    """1 / D on the padded grid, D = |H|^2 + lam R + alpha, floored (per image, or shared)."""
    xp, nd = bk.xp, prob.ndim
    axes = tuple(range(-nd, 0))
    lam, alpha = image_params(prob)
    D = kernel_power(bk, prob.h, grid, dtype)
    gain = GAIN_LIMIT * D.max(axis=axes, keepdims=True)
    if prob.use_reg:
        R = weighted_power(bk, prob.reg_terms(), grid, dtype)
        lam_b = image_scalars(bk, lam, dtype, nd)
        gain = xp.minimum(gain, (GAIN_LIMIT_REG * lam_b) * R.max(axis=axes, keepdims=True))
        D = D + lam_b * R
        del R
    else:
        gain = gain * 0
    D = D + image_scalars(bk, alpha, dtype, nd)
    # An approximation may vanish where the exact operator does not: floor it,
    # and limit its gain where |H| has near-zeros (see GAIN_LIMIT).
    floor = xp.maximum(D.max(axis=axes, keepdims=True) * (1e3 * np.finfo(dtype).eps),
                       np.finfo(dtype).tiny)
    return 1 / xp.maximum(D, xp.maximum(floor, gain))


#: Gain limit of the circulant part: ``D >= min(GAIN_LIMIT max|H|^2, GAIN_LIMIT_REG lam max R)``.
#: Near the faces the normal operator does not have the near-zeros of ``|H|^2`` (a motion
#: line's sinc zeros): the boundary strip couples every frequency to its neighbours. Inverting
#: ``D`` exactly there makes the preconditioner hundreds of times too large on those modes
#: (dense eigen-analysis at 64^2, 13-px 30 degree motion, lam 1e-4: preconditioned
#: eigenvalues up to 214, on low-frequency modes with a third of their energy in the corners).
#: Limiting the gain cut PCG iterations 1.5-2.8x for that kernel (192^2: valid 457 -> 205 at
#: lam 1e-4); the second bound keeps smooth kernels, whose ``D`` is small only where
#: ``lam R`` is large, where they were (measured: 12-14 valid, unchanged).
GAIN_LIMIT = 1e-3
GAIN_LIMIT_REG = 0.05


# ------------------------------------------------------------ band part
def _tangential_xcorr(g, axis):
    """X[i, i', d] = sum_b g[i, b] g[i', b - d] over the tangential axes (d shifted by kt-1)."""
    gt = np.moveaxis(np.asarray(g, dtype=np.float64), axis, 0)
    kt = gt.shape[1:]
    if not kt:
        return gt[:, None] * gt[None, :]
    s = tuple(2 * k - 1 for k in kt)
    taxes = tuple(range(1, gt.ndim))
    F = np.fft.rfftn(gt, s=s, axes=taxes)
    R = np.fft.rfftn(np.flip(gt, axis=taxes), s=s, axes=taxes)
    taxes2 = tuple(range(2, gt.ndim + 1))
    return np.fft.irfftn(F[:, None] * R[None, :], s=s, axes=taxes2)


def band_rows(n, w):
    """Rows of the band of one axis: the w layers at each end (all rows if they meet)."""
    if 2 * w >= n:
        return np.arange(n)
    return np.concatenate([np.arange(w), np.arange(n - w, n)])


def band_stencil(g, plan, boundary, axis, rows):
    """Band stencil ``S[r, r', d]`` of ``G^T G`` on a set of rows of one axis.

    ``(G^T G)[(rows[r], j), (rows[r'], j + d)] = S[r, r', d]`` for tangential
    positions j away from the faces of the other axes. Both ends of the axis
    form one band, so the coupling of opposite faces (periodic extensions,
    short axes) is part of the model. `plan` is G's AxisPlan along `axis`;
    `g` the kernel (host, float64). The tangential offset d is stored shifted
    by kt-1.
    """
    rows = np.asarray(rows)
    where = np.full(plan.n, -1)
    where[rows] = np.arange(rows.size)
    t = np.arange(plan.m)[:, None]
    i = np.arange(plan.k)[None, :]
    src = source_index(boundary, plan.n, t + plan.shift - i - plan.L)
    r = np.where(src >= 0, where[np.maximum(src, 0)], -1)
    ok = r >= 0
    X = _tangential_xcorr(g, axis)
    S = np.zeros((rows.size, rows.size) + X.shape[2:])
    ii = np.broadcast_to(i, ok.shape)
    for row in np.flatnonzero(ok.any(axis=1)):
        sel = ok[row]
        rs, taps = r[row, sel], ii[row, sel]
        np.add.at(S, (rs[:, None], rs[None, :]), X[taps[:, None], taps[None, :]])
    return S


def _identity_stencil(w, ntang):
    S = np.zeros((w, w) + (1,) * ntang)
    S[(np.arange(w), np.arange(w)) + (0,) * ntang] = 1.0
    return S


def _symbol(S, grid_t):
    """Band symbol B(omega)[r, r'] on the tangential grid, from a stencil (offset kt-1)."""
    w = S.shape[0]
    nt = len(grid_t)
    if nt == 0:
        return S.reshape(w, w)[None]  # a single "frequency"
    ext = S.shape[2:]
    emb = np.zeros((w, w) + tuple(grid_t))
    # offset d (array index d + e//2) goes to (-d) mod G.
    idx = np.ix_(*[(-(np.arange(e) - e // 2)) % G for e, G in zip(ext, grid_t)])
    emb[(slice(None), slice(None)) + idx] += S
    B = np.fft.rfftn(emb, s=grid_t, axes=tuple(range(2, 2 + nt)))
    B = np.moveaxis(B.reshape(w, w, -1), 2, 0)  # (frequencies, w, w)
    return B


def _band_geometry(prob, axis):
    nd = prob.ndim
    widths = [prob.kshape[axis] - 1]
    for t in prob.terms:
        if not t.is_identity and prob.use_reg:
            widths.append(t.op.kernel_shape[axis] - 1)
    w = min(max(widths) + 2, prob.n[axis])
    tang = [a for a in range(nd) if a != axis]
    grid_t = tuple(_fast(prob, a) for a in tang)
    return w, tang, grid_t


def _fast(prob, a):
    return prob.bk.next_fast_len(prob.n[a] + 2 * (prob.kshape[a] - 1))


def _host(bk, a):
    return np.asarray(bk.asnumpy(a), dtype=np.float64)


def band_part(bk, prob, dtype):
    """Additive band corrections, one per axis; returns ``(r, out) -> out + sum_a E_a B_a^-1 E_a^T r``."""
    xp = bk.xp
    corrections = _cached(bk, prob, dtype, "band", lambda: _band_inverses(bk, prob, dtype))
    n = prob.n

    def apply(r, out):
        for axis, rows, tang, grid_t, Binv in corrections:
            rb = xp.moveaxis(xp.take(r, rows, axis=axis + 1), axis + 1, -1)  # (B, *tangential, nr)
            if tang:
                Rb = bk.rfftn(xp.moveaxis(rb, -1, 1), grid_t)  # (B, nr, *spec)
                Rb = xp.moveaxis(Rb, 1, -1)[..., None]  # (B, *spec, nr, 1)
                Zb = xp.matmul(Binv, Rb)[..., 0]
                zb = bk.irfftn(xp.moveaxis(Zb, -1, 1), grid_t)
                zb = zb[(slice(None), slice(None)) + tuple(slice(0, n[a]) for a in tang)]
                zb = xp.moveaxis(zb, 1, axis + 1)
            else:
                zb = xp.matmul(Binv, rb[..., None])[..., 0]
                zb = xp.moveaxis(zb, -1, axis + 1)
            idx = (slice(None),) * (axis + 1) + (rows,)
            out[idx] += zb  # rows are distinct, so += adds once per row
        return out

    return apply


def _hermitian_inverse(B, dtype):
    """Inverse of a stack of Hermitian PSD matrices: Cholesky when PD, else eigh with a floor."""
    try:
        np.linalg.cholesky(B)
        return np.linalg.inv(B)
    except np.linalg.LinAlgError:
        pass
    ev, V = np.linalg.eigh(B)
    top = ev.max(axis=tuple(range(1, ev.ndim)), keepdims=True)
    ev = np.maximum(ev, np.maximum(top * 1e3 * np.finfo(dtype).eps, np.finfo(dtype).tiny))
    return (V / ev[..., None, :]) @ np.conj(np.swapaxes(V, -1, -2))


def _band_inverses(bk, prob, dtype):
    """Per axis: (axis, rows, tangential axes, tangential grid, B^-1 per image and frequency)."""
    xp, nd = bk.xp, prob.ndim
    lam, alpha = image_params(prob)
    Bimg = lam.shape[0]
    A = prob.A
    hs = _host(bk, A.kernel)
    kernels = hs if A.kernel_batch else hs[None]
    corrections = []
    for axis in range(nd):
        w, tang, grid_t = _band_geometry(prob, axis)
        rows = band_rows(prob.n[axis], w)
        nr = rows.size
        # Data term: one stencil per kernel.
        Bd = np.stack([_symbol(band_stencil(k, A.plans[axis], A.boundary, axis, rows), grid_t)
                       for k in kernels])  # (1 or B, F, nr, nr)
        Btot = np.broadcast_to(Bd, (Bimg,) + Bd.shape[1:]).copy()
        if prob.use_reg:
            Br = None
            for t in prob.terms:
                if t.is_identity:
                    S = _identity_stencil(nr, len(tang))
                else:
                    S = band_stencil(_host(bk, t.op.kernel), t.op.plans[axis], t.op.boundary, axis, rows)
                Bt = t.weight * _symbol(S, grid_t)
                Br = Bt if Br is None else Br + Bt
            for i, li in enumerate(lam):  # per image, in place: no (B, F, nr, nr) temporaries
                Btot[i] += li * Br
            del Br
        del Bd
        for i, ai in enumerate(alpha):
            if ai:
                Btot[i] += ai * np.eye(nr)
        Binv = _hermitian_inverse(Btot, dtype).reshape((Bimg,) + _spec_shape(grid_t) + (nr, nr))
        cdt = np.complex64 if np.dtype(dtype) == np.float32 else np.complex128
        Binv = Binv.real.astype(dtype) if not tang else Binv.astype(cdt)
        corrections.append((axis, xp.asarray(rows), tang, grid_t, xp.asarray(Binv)))
    return corrections


def _spec_shape(grid_t):
    if not grid_t:
        return ()
    return tuple(grid_t[:-1]) + (grid_t[-1] // 2 + 1,)


def taper(bk, prob, dtype):
    """Diagonal weights that fade the circulant part out towards the faces.

    1 in the interior, falling linearly to 0 at each face over ``tau``
    pixels (product over axes). Where the bands take over, the circulant
    model is switched off rather than added on top: near a face whose pixels
    M weights heavily (replicate, full mode) an added circulant term would
    make the preconditioner far too large there. ``tau`` is 3/4 of the band
    width, except in ``valid`` mode: there M is *small* at the faces (the
    outer pixels are seen by few taps), and keeping the circulant part on
    up to 2 pixels from the face pays (measured, 192^2, 13-px 30-degree
    motion, Laplacian: 75 -> 42 iterations at lam 1e-3, 205 -> 89 at 1e-4;
    Gaussians 13-14 -> 11). Other modes: 3/4 rather than 1/2 of the band
    width gave 0-20 % fewer iterations in same (all boundaries) and full.
    """
    t = None
    for axis in range(prob.ndim):
        w = _band_geometry(prob, axis)[0]
        tau = min(2, w) if prob.mode == "valid" else max(1, round(0.75 * w))
        n = prob.n[axis]
        d = np.minimum(np.arange(n), np.arange(n)[::-1])
        ta = np.clip(d / tau, 0.0, 1.0) if 2 * w < n else np.zeros(n)
        shape = [1] * prob.ndim
        shape[axis] = n
        ta = ta.reshape(shape)
        t = ta if t is None else t * ta
    return bk.xp.asarray(t.astype(dtype))


#: The band model is dense per tangential frequency (w x w, w ~ kernel size): with kernels
#: comparable to the image it grows like n^3 (a 256^2 image with a 101^2 kernel: 1 GiB and
#: 16 s of eigh). Above max(MAX_BAND_BYTES, 16 x the unknown's bytes) the circulant part is
#: used alone, which such kernels leave little to improve on anyway.
MAX_BAND_BYTES = 64 * 2**20


def band_bytes(prob):
    """Bytes of the band model's complex w x w blocks (all axes; one set per image unless shared)."""
    total = 0
    for axis in range(prob.ndim):
        w, _, grid_t = _band_geometry(prob, axis)
        nr = band_rows(prob.n[axis], w).size
        total += len(image_params(prob)[0]) * int(np.prod(_spec_shape(grid_t), dtype=np.int64)) * nr * nr * 16
    return total


def singular_images(bk, prob, dtype):
    """Per image (host bool array, shape (B,)): may the normal operator be singular?

    True where the data term alone may have a null space (every mode but
    ``full``, whose operator is injective) and ``lam`` and ``alpha`` are too
    small to be seen beside it in the working precision:
    ``lam sum_i w_i ||g_i||_1^2 + alpha <= eps ||h||_1^2`` (bounds on the
    largest eigenvalue of each term).

    On a singular system (P)CG converges to the minimiser nearest ``x0`` in
    the norm of ``M^-1``: plain CG (``M = I``) to the Euclidean-nearest one,
    which is the answer promised; an SPD preconditioner that does not map
    range(M) into itself adds an arbitrary (measured: 2e3 x the image)
    null-space component. Such images are therefore left unpreconditioned.
    """
    if prob.mode == "full":
        return np.zeros(prob.B, dtype=bool)
    nd = prob.ndim
    hl1 = np.asarray(bk.asnumpy(bk.xp.abs(prob.h).sum(axis=tuple(range(-nd, 0)))), dtype=np.float64)
    top = np.broadcast_to(hl1 * hl1, (prob.B,))
    reg = 0.0
    if prob.use_reg:
        for w, g in prob.reg_terms():
            gl1 = 1.0 if g is None else float(np.abs(_host(bk, g)).sum())
            reg += w * gl1 * gl1
    weight = prob.lam * reg + prob.alpha
    return weight <= np.finfo(dtype).eps * top


def make_preconditioner(bk, prob, dtype, kind="band"):
    """``kind``: "circulant" (padded-grid Fourier division), "band" (tapered circulant + bands) or "border".

    "band": ``P r = T C^-1 (T r) + sum_a E_a B_a^-1 E_a^T r`` with T from
    :func:`taper`; SPD, since the bands cover every row where T < 1.
    "border": in 2-D ``same`` + ``symmetric`` with one kernel, the tapered
    circulant part plus exact solves on overlapping blocks along the faces
    (:mod:`gpu_deconv.solvers.border`); elsewhere "band". "band" itself is
    "border" where the blocks pay for their build (:func:`.border.border_pays`:
    batches of 4 or more images sharing kernel and lam, 16 w pixels a side).

    Images whose system may be singular (:func:`singular_images`) get the
    identity instead, so that CG converges to the minimiser nearest ``x0``
    there; None when that is every image (plain CG).
    """
    if kind not in ("circulant", "band", "border"):
        raise ValueError(f"preconditioner kind must be 'circulant', 'band' or 'border'; got {kind!r}")
    singular = singular_images(bk, prob, dtype)
    if singular.all():
        return None
    M = _make(bk, prob, dtype, kind)
    if not singular.any():
        return M
    plain = bk.xp.asarray(np.flatnonzero(singular))

    def apply(r):
        out = M(r)
        out[plain] = r[plain]
        return out

    return apply


def _make(bk, prob, dtype, kind):
    circ = circulant_part(bk, prob, dtype)
    blocks = border_eligible(prob) if kind == "border" else kind == "band" and border_pays(prob)
    if blocks and _reflective(prob):
        return _circulant_border(bk, prob, dtype, circ)
    if kind == "border":
        kind = "band"
    if kind == "band" and _reflective(prob):
        return _circulant_dct(bk, prob, dtype, circ)
    unknown_bytes = prob.B * int(np.prod(prob.n)) * np.dtype(dtype).itemsize
    if kind == "circulant" or band_bytes(prob) > max(MAX_BAND_BYTES, 16 * unknown_bytes):
        return circ
    band = band_part(bk, prob, dtype)
    T = taper(bk, prob, dtype)

    def apply(r):
        return band(r, circ(r, T))

    return apply


# ------------------------------------------------------------ same + symmetric: DCT model at the faces
def _reflective(prob):
    """same + symmetric with every regularizer the identity or same + symmetric too."""
    if prob.mode != "same" or prob.boundary != "symmetric":
        return False
    if prob.use_reg:
        for t in prob.terms:
            if not t.is_identity and (t.op.mode != "same" or t.op.boundary != "symmetric"):
                return False
    return True


def _dct_inverse(bk, prob, dtype):
    """``1 / mean_s D(s w_k)`` at the DCT-II frequencies ``w_k = pi k / n``, s over the axis reflections.

    With P the full half-sample symmetric extension (period 2n), ``P^T F^H diag(D) F P``
    is exactly diagonal in the DCT-II basis with these means (the parts of D that are
    odd in some axis fold to zero). For kernels symmetric in every axis that is the exact
    operator of ``same`` + ``symmetric``; for the others (a motion line at an angle) the
    crop of ``same`` adds a coupling of the DCT to the DST coefficients, which this model
    leaves out. D = |H|^2 + lam R + alpha on the 2n grid; per image or shared.
    """
    xp, nd, n = bk.xp, prob.ndim, prob.n
    lam, alpha = image_params(prob)
    grid = tuple(2 * v for v in n)
    D = kernel_power(bk, prob.h, grid, dtype)
    if prob.use_reg:
        D = D + image_scalars(bk, lam, dtype, nd) * weighted_power(bk, prob.reg_terms(), grid, dtype)
    D = D + image_scalars(bk, alpha, dtype, nd)
    # D(-w) = D(w): the last axis keeps its sign (half spectrum), the others take both.
    mean = None
    for signs in np.ndindex(*(2,) * (nd - 1)):
        idx = [np.arange(v) if sg == 0 else (-np.arange(v)) % g for sg, v, g in zip(signs, n[:-1], grid[:-1])]
        idx.append(np.arange(n[-1]))
        part = D[(Ellipsis,) + tuple(xp.asarray(i) for i in np.ix_(*idx))]
        mean = part if mean is None else mean + part
    mean = mean / 2 ** (nd - 1)
    axes = tuple(range(-nd, 0))
    floor = xp.maximum(mean.max(axis=axes, keepdims=True) * (1e3 * np.finfo(dtype).eps), np.finfo(dtype).tiny)
    return 1 / xp.maximum(mean, floor)


#: Width of the hand-over from the circulant to the DCT model in same + symmetric, as a
#: fraction of the image per axis (measured, 13-px 30-degree motion, lam 1e-3 / 1e-4:
#: 192^2 with 40 px 70 / 140 it., 512^2 with 100 px 62 / 119; 14 px 90 / 214 at 192^2).
DCT_TAPER = 0.2


def _circulant_dct(bk, prob, dtype, circ):
    """same + symmetric: ``T C^-1 T + (1 - T) S^-1 (1 - T)``, S the DCT model of :func:`_dct_inverse`.

    The circulant model is exact in the interior and wrong at the faces, where the
    symmetric extension mirrors the kernel; the DCT model is right about the mirror but
    averages the kernel's power over the reflections, which is wrong in the interior
    for kernels without axis symmetry. T hands over between the two over a fifth of the
    image. SPD: both terms are PSD and T and 1 - T never vanish together. Replaces the
    face bands in this geometry (measured, 13-px 30-degree motion, 512^2, lam 1e-3 /
    1e-4: 92 / 260 iterations with the bands, 62 / 119 with this; 13x13 Gaussian at
    192^2, 21 -> 8).
    """
    xp, nd = bk.xp, prob.ndim
    W = _cached(bk, prob, dtype, "dct", lambda: _dct_inverse(bk, prob, dtype))
    t = None
    for axis in range(nd):
        n = prob.n[axis]
        d = np.minimum(np.arange(n), np.arange(n)[::-1])
        ta = np.clip(d / max(1.0, DCT_TAPER * n), 0.0, 1.0)
        shape = [1] * nd
        shape[axis] = n
        t = ta.reshape(shape) if t is None else t * ta.reshape(shape)
    T = xp.asarray(t.astype(dtype))
    U = xp.asarray((1 - t).astype(dtype))

    def apply(r):
        out = circ(r, T)
        v = bk.dctn(r * U, nd)
        v *= W
        v = bk.idctn(v, nd)
        v *= U
        out += v
        return out

    return apply


# ------------------------------------------------------------ border blocks (exact local solves)
def _circulant_border(bk, prob, dtype, circ):
    """``T C^-1 T + sum_b E_b B_b^-1 E_b^T``: see :mod:`gpu_deconv.solvers.border`."""
    border = border_part(bk, prob, dtype, _cached)
    T = border_taper(prob, dtype)

    def apply(r):
        return border(r, circ(r, T))

    return apply
