// stencil.cuh -- sum_t w_t G_t^T G_t x for small kernels, one output element at a time.
//
// G_t is the convolution of a small kernel g_t (a few nonzero taps: the
// Laplacian, the forward differences, the identity) in one of the package's
// modes and boundary models, G_t = E C P (gpu_deconv/_direct.py). Its normal
// operator is evaluated as a gather, with no intermediate array:
//
//   (G^T G x)[s] = sum_{p : src(p - L) = s} sum_i g_i u[p - L - j0 + i],
//   u[t]         = [0 <= t < m] sum_i' g_i' x[src(t + j0 - i')],
//
// per axis, where src is the boundary's index map (gd_source_index, -1 for a
// zero outside x), the p are the extended positions that fold onto s
// (gd_preimages), j0 the start of the mode's window in the full convolution
// and m the output length. Away from the faces the only preimage is s + L and
// every read is inside x: there the operator is the autocorrelation stencil
// of g (host-made, summed over the terms), read at fixed offsets.
//
// The description of the terms is a small int64 table and a value table
// (gpu_deconv._direct.StencilSum builds both):
//   tab[0..8]   nterms, ncomb, ntaps, then (ilo, ihi) per axis: the interior box
//   tab[9 ..]   ncomb linear offsets of the interior stencil
//   then        per term: tap_start, ntaps_t, then (L, e, j0, m) per axis (3 axes)
//   then        per tap: its index on each of the 3 axes
//   vals        ncomb interior coefficients (weights included), the taps' values,
//               then one weight per term.
// Unused axes (ND < 3) are never read.
#ifndef GD_STENCIL_CUH
#define GD_STENCIL_CUH

#include "gd_common.cuh"
#include "pad_extract.cuh"

#define GD_ST_HEADER 9
#define GD_ST_TERM 14

// u[t] of one term: the forward convolution at output position t (all axes in range).
template <typename T, int ND, int BC>
GD_HD T gd_stencil_forward(const T* x, const gd_i64* n, const gd_i64* t, const gd_i64* j0,
                           const gd_i64* taps, const T* g, gd_i64 ntaps) {
    T u = T(0);
    for (gd_i64 k = 0; k < ntaps; ++k) {
        gd_i64 off = 0;
        bool inside = true;
        for (int a = 0; a < ND; ++a) {
            const gd_i64 q = gd_source_index<BC>(n[a], t[a] + j0[a] - taps[3 * k + a]);
            if (q < 0) {
                inside = false;
                break;
            }
            off = off * n[a] + q;
        }
        if (inside) u += g[k] * x[off];
    }
    return u;
}

// The taps' contribution at one preimage p (per axis) of the output sample.
template <typename T, int ND, int BC>
GD_HD T gd_stencil_at(const T* x, const gd_i64* n, const gd_i64* p, const gd_i64* L, const gd_i64* j0,
                      const gd_i64* m, const gd_i64* taps, const T* g, gd_i64 ntaps) {
    T acc = T(0);
    for (gd_i64 k = 0; k < ntaps; ++k) {
        gd_i64 t[3];
        bool inside = true;
        for (int a = 0; a < ND; ++a) {
            t[a] = p[a] - L[a] - j0[a] + taps[3 * k + a];
            if (t[a] < 0 || t[a] >= m[a]) {
                inside = false;
                break;
            }
        }
        if (inside) acc += g[k] * gd_stencil_forward<T, ND, BC>(x, n, t, j0, taps, g, ntaps);
    }
    return acc;
}

// One term's (G^T G x)[s] near a face: the sum over the preimages of s, which
// are the product of the per-axis runs (axes in front of the ND real ones are
// unit axes with one preimage), as in gd_fold_value.
template <typename T, int ND, int BC>
GD_HD T gd_stencil_term(const T* x, const gd_i64* n, const gd_i64* s, const gd_i64* geo,
                        const gd_i64* taps, const T* g, gd_i64 ntaps) {
    const int lead = 3 - ND;
    gd_i64 L[3], j0[3], m[3];
    gd_run runs[3][2];
    int nruns[3];
    for (int a = 0; a < lead; ++a) {
        runs[a][0] = gd_make_run(0, 1, 1);
        nruns[a] = 1;
    }
    for (int a = 0; a < ND; ++a) {
        L[a] = geo[4 * a];
        j0[a] = geo[4 * a + 2];
        m[a] = geo[4 * a + 3];
        nruns[lead + a] = gd_preimages<BC>(n[a], L[a], geo[4 * a + 1], s[a], runs[lead + a]);
    }
    T acc = T(0);
    gd_i64 q[3];
    for (int i0 = 0; i0 < nruns[0]; ++i0)
        for (gd_i64 t0 = 0; t0 < runs[0][i0].count; ++t0) {
            q[0] = runs[0][i0].start + t0 * runs[0][i0].step;
            for (int i1 = 0; i1 < nruns[1]; ++i1)
                for (gd_i64 t1 = 0; t1 < runs[1][i1].count; ++t1) {
                    q[1] = runs[1][i1].start + t1 * runs[1][i1].step;
                    for (int i2 = 0; i2 < nruns[2]; ++i2)
                        for (gd_i64 t2 = 0; t2 < runs[2][i2].count; ++t2) {
                            q[2] = runs[2][i2].start + t2 * runs[2][i2].step;
                            acc += gd_stencil_at<T, ND, BC>(x, n, q + lead, L, j0, m, taps, g, ntaps);
                        }
                }
        }
    return acc;
}

// Element idx of scale[b] * sum_t w_t G_t^T G_t x over the (B, n...) batch.
template <typename T, int ND, int BC>
GD_HD T gd_stencil_value(const T* x, gd_i64 idx, const gd_i64* n, const gd_i64* tab, const T* vals) {
    gd_i64 s[ND];
    const gd_i64 img = gd_unravel<ND>(idx, n, s);
    gd_i64 size = 1;
    for (int a = 0; a < ND; ++a) size *= n[a];
    const T* xi = x + img * size;
    const gd_i64 nterms = tab[0], ncomb = tab[1], ntaps = tab[2];
    bool interior = true;
    for (int a = 0; a < ND; ++a)
        interior = interior && s[a] >= tab[3 + 2 * a] && s[a] <= tab[4 + 2 * a];
    const gd_i64 local = idx - img * size;
    if (interior) {
        T acc = T(0);
        for (gd_i64 c = 0; c < ncomb; ++c) acc += vals[c] * xi[local + tab[GD_ST_HEADER + c]];
        return acc;
    }
    const gd_i64* terms = tab + GD_ST_HEADER + ncomb;
    const gd_i64* taps = terms + GD_ST_TERM * nterms;
    const T* g = vals + ncomb;
    const T* w = g + ntaps;
    T acc = T(0);
    for (gd_i64 k = 0; k < nterms; ++k) {
        const gd_i64* term = terms + GD_ST_TERM * k;
        const gd_i64 start = term[0];
        acc += w[k] * gd_stencil_term<T, ND, BC>(xi, n, s, term + 2, taps + 3 * start, g + start, term[1]);
    }
    return acc;
}

#endif  // GD_STENCIL_CUH
