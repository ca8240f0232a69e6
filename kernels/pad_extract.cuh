// pad_extract.cuh -- the padding matrix P, its adjoint, and the window E, per element.
//
// The index arithmetic of gpu_deconv/_padding.py (source_index, pad, fold),
// one output element at a time. Geometry of one spatial axis a (an AxisPlan):
//   n[a]  samples of x,
//   L[a]  samples of extension before x (R after; nothing for 'zero'),
//   e[a]  = n + L + R, the extended signal P x, stored at grid positions [0, e),
//   G[a]  the FFT grid length (G >= e), the rest of the grid is zero.
// Arrays are C-ordered (batch, axis 0, ..., axis ND-1), the batch flattened.
#ifndef GD_PAD_EXTRACT_CUH
#define GD_PAD_EXTRACT_CUH

#include "gd_common.cuh"

// Index into x[0:n] that position m (any integer) of the extended signal
// reads; -1 where the extension is zero. _padding.source_index, exactly.
template <int BC>
GD_HD gd_i64 gd_source_index(gd_i64 n, gd_i64 m) {
    if (BC == GD_BC_ZERO) return (m >= 0 && m < n) ? m : -1;
    if (BC == GD_BC_PERIODIC) return gd_mod(m, n);
    if (BC == GD_BC_REPLICATE) return m < 0 ? 0 : (m > n - 1 ? n - 1 : m);
    if (BC == GD_BC_SYMMETRIC) {
        const gd_i64 t = gd_mod(m, 2 * n);
        return t < n ? t : 2 * n - 1 - t;
    }
    // reflect: period 2n - 2; a single sample repeats (numpy.pad does so).
    if (n == 1) return 0;
    const gd_i64 t = gd_mod(m, 2 * n - 2);
    return t < n ? t : 2 * n - 2 - t;
}

// Coordinates c[0..ND-1] of flat index idx of a C-ordered (B, shape[0], ...,
// shape[ND-1]) array; returns its image b.
template <int ND>
GD_HD gd_i64 gd_unravel(gd_i64 idx, const gd_i64* shape, gd_i64* c) {
    for (int a = ND - 1; a >= 0; --a) {
        c[a] = idx % shape[a];
        idx /= shape[a];
    }
    return idx;
}

// Value at flat index idx of the (B, G[0], ..., G[ND-1]) grid array:
// (P x)[j - L] inside the extended window j < e on every axis, zero elsewhere.
template <typename T, int ND, int BC>
GD_HD T gd_pad_value(const T* x, gd_i64 idx, const gd_i64* n, const gd_i64* L,
                     const gd_i64* e, const gd_i64* G) {
    gd_i64 j[ND];
    gd_i64 off = gd_unravel<ND>(idx, G, j);  // the image; becomes the flat index into x
    for (int a = 0; a < ND; ++a) {
        if (j[a] >= e[a]) return T(0);
        const gd_i64 s = gd_source_index<BC>(n[a], j[a] - L[a]);
        if (s < 0) return T(0);
        off = off * n[a] + s;
    }
    return x[off];
}

// Grid positions start, start + step, ... (count of them).
struct gd_run {
    gd_i64 start;
    gd_i64 step;
    gd_i64 count;
};

GD_HD gd_run gd_make_run(gd_i64 start, gd_i64 step, gd_i64 count) {
    gd_run r;
    r.start = start;
    r.step = step;
    r.count = count < 0 ? 0 : count;
    return r;
}

// Grid positions j in [0, e) whose extended position m = j - L is
// congruent to r modulo p.
GD_HD gd_run gd_residue_run(gd_i64 r, gd_i64 p, gd_i64 L, gd_i64 e) {
    const gd_i64 start = gd_mod(r + L, p);
    return gd_make_run(start, p, start < e ? (e - 1 - start) / p + 1 : 0);
}

// Preimages of sample s under one axis of the extension: every grid position
// j in [0, e) with source_index(j - L) == s, as at most two runs. Returns how
// many runs were written. This is what makes the adjoint a gather: each
// output sample enumerates what folds onto it, so no two threads write the
// same place and no atomics are needed.
template <int BC>
GD_HD int gd_preimages(gd_i64 n, gd_i64 L, gd_i64 e, gd_i64 s, gd_run* runs) {
    if (BC == GD_BC_ZERO) {
        const gd_i64 j = s + L;
        runs[0] = gd_make_run(j, 1, (j >= 0 && j < e) ? 1 : 0);
        return 1;
    }
    if (BC == GD_BC_PERIODIC) {
        runs[0] = gd_residue_run(s, n, L, e);
        return 1;
    }
    if (BC == GD_BC_SYMMETRIC) {
        // m mod 2n is s or its mirror 2n - 1 - s (never equal: different parity).
        runs[0] = gd_residue_run(s, 2 * n, L, e);
        runs[1] = gd_residue_run(2 * n - 1 - s, 2 * n, L, e);
        return 2;
    }
    if (BC == GD_BC_REFLECT) {
        if (n == 1) {
            runs[0] = gd_make_run(0, 1, e);
            return 1;
        }
        const gd_i64 p = 2 * n - 2;
        runs[0] = gd_residue_run(s, p, L, e);
        const gd_i64 mirror = gd_mod(p - s, p);
        if (mirror == s) return 1;  // the end samples are their own mirror
        runs[1] = gd_residue_run(mirror, p, L, e);
        return 2;
    }
    // replicate: the end samples own everything beyond them.
    if (n == 1) {
        runs[0] = gd_make_run(0, 1, e);
        return 1;
    }
    if (s == 0) {
        runs[0] = gd_make_run(0, 1, gd_min_i64(L + 1, e));
        return 1;
    }
    if (s == n - 1) {
        const gd_i64 j0 = n - 1 + L;
        runs[0] = gd_make_run(j0, 1, e - j0);
        return 1;
    }
    const gd_i64 j = s + L;
    runs[0] = gd_make_run(j, 1, j < e ? 1 : 0);
    return 1;
}

// Value at flat index idx of the (B, n[0], ..., n[ND-1]) result of P^T v,
// reading the (B, G[0], ..., G[ND-1]) grid array v directly. The extension is
// separable, so the preimages of a sample are the product of the per-axis
// runs; axes in front of the ND real ones are unit axes (one preimage).
template <typename T, int ND, int BC>
GD_HD T gd_fold_value(const T* v, gd_i64 idx, const gd_i64* n, const gd_i64* L,
                      const gd_i64* e, const gd_i64* G) {
    gd_i64 s[ND];
    const gd_i64 img = gd_unravel<ND>(idx, n, s);
    const int lead = 3 - ND;
    gd_run runs[3][2];
    int nruns[3];
    gd_i64 g[3];
    for (int a = 0; a < lead; ++a) {
        runs[a][0] = gd_make_run(0, 1, 1);
        nruns[a] = 1;
        g[a] = 1;
    }
    for (int a = 0; a < ND; ++a) {
        nruns[lead + a] = gd_preimages<BC>(n[a], L[a], e[a], s[a], runs[lead + a]);
        g[lead + a] = G[a];
    }
    const gd_i64 base = img * g[0] * g[1] * g[2];
    T acc = T(0);
    for (int i0 = 0; i0 < nruns[0]; ++i0) {
        const gd_run r0 = runs[0][i0];
        for (gd_i64 t0 = 0; t0 < r0.count; ++t0) {
            const gd_i64 o0 = (r0.start + t0 * r0.step) * g[1];
            for (int i1 = 0; i1 < nruns[1]; ++i1) {
                const gd_run r1 = runs[1][i1];
                for (gd_i64 t1 = 0; t1 < r1.count; ++t1) {
                    const gd_i64 o1 = (o0 + r1.start + t1 * r1.step) * g[2];
                    for (int i2 = 0; i2 < nruns[2]; ++i2) {
                        const gd_run r2 = runs[2][i2];
                        for (gd_i64 t2 = 0; t2 < r2.count; ++t2)
                            acc += v[base + o1 + r2.start + t2 * r2.step];
                    }
                }
            }
        }
    }
    return acc;
}

// Flat index into the (B, G...) grid of element idx of the (B, m...) window
// made of the first m[a] samples of every axis (E, and the crop to n of the
// zero-boundary adjoint).
template <int ND>
GD_HD gd_i64 gd_crop_source(gd_i64 idx, const gd_i64* m, const gd_i64* G) {
    gd_i64 t[ND];
    gd_i64 off = gd_unravel<ND>(idx, m, t);
    for (int a = 0; a < ND; ++a) off = off * G[a] + t[a];
    return off;
}

// Whether element idx of the (B, G...) grid lies in the window of the first
// m[a] samples of every axis (E^T E keeps it; everything else becomes zero).
template <int ND>
GD_HD bool gd_in_window(gd_i64 idx, const gd_i64* m, const gd_i64* G) {
    gd_i64 rest = idx;
    for (int a = ND - 1; a >= 0; --a) {
        if (rest % G[a] >= m[a]) return false;
        rest /= G[a];
    }
    return true;
}

// Flat index of element idx of a C-ordered (B, shape...) array within one
// image (its spatial part): where a weight of the spatial shape, shared by
// the batch, is read.
template <int ND>
GD_HD gd_i64 gd_spatial_index(gd_i64 idx, const gd_i64* shape) {
    gd_i64 size = 1;
    for (int a = 0; a < ND; ++a) size *= shape[a];
    return idx % size;
}

// Value at flat index idx of the (B, G...) grid of E (x * s): x (B, m...)
// times the weight s (m...) in the window of the first m[a] samples of every
// axis, zero elsewhere (the zero-fill into an FFT grid with a diagonal weight).
template <typename T, int ND>
GD_HD T gd_embed_scaled_value(const T* x, const T* s, gd_i64 idx, const gd_i64* m, const gd_i64* G) {
    gd_i64 j[ND];
    const gd_i64 img = gd_unravel<ND>(idx, G, j);
    gd_i64 off = 0;  // the position in one image of the window, where s is read
    gd_i64 size = 1;
    for (int a = 0; a < ND; ++a) {
        if (j[a] >= m[a]) return T(0);
        off = off * m[a] + j[a];
        size *= m[a];
    }
    return x[img * size + off] * s[off];
}

// Element idx of the (B, m...) window of the first m[a] samples of every axis
// of the (B, G...) grid v, times the weight s (m...) shared by the images.
template <typename T, int ND>
GD_HD T gd_crop_scaled_value(const T* v, const T* s, gd_i64 idx, const gd_i64* m, const gd_i64* G) {
    return v[gd_crop_source<ND>(idx, m, G)] * s[gd_spatial_index<ND>(idx, m)];
}

#endif  // GD_PAD_EXTRACT_CUH
