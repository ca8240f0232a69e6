// cg.cuh -- the fused steps of the batched conjugate gradient, per element and per thread.
//
// Vectors are (B, n) C-ordered, one system per row; the per-image step sizes
// come in float64 and are rounded to the working precision once, as the
// NumPy loop does (`a.astype(b.dtype)`). Dot products accumulate in float64.
#ifndef GD_CG_CUH
#define GD_CG_CUH

#include "gd_common.cuh"
#include "gd_reduce.cuh"

// What thread `first` of a reduction sweep adds up of u . v over one image.
template <typename T>
GD_HD double gd_dot_thread(const T* u, const T* v, gd_i64 n, gd_i64 first, gd_i64 stride) {
    double acc = 0.0;
    for (gd_i64 i = first; i < n; i += stride) acc += (double)u[i] * (double)v[i];
    return acc;
}

// x += a p; r -= a q at element i of one image; returns the new r_i^2.
template <typename T>
GD_HD double gd_cg_update_xr_at(T* x, T* r, const T* p, const T* q, T a, gd_i64 i) {
    // A step of 0 (a stopped image) leaves x and r as they are, even where p or q
    // hold inf or NaN (an image that broke down): 0 * inf would be NaN.
    if (a == (T)0) {
        const T ri = r[i];
        return (double)ri * (double)ri;
    }
    x[i] += a * p[i];
    const T ri = r[i] - a * q[i];
    r[i] = ri;
    return (double)ri * (double)ri;
}

// The update above over the elements one thread of a reduction sweep owns,
// and the part of ||r||^2 it sees (the fused "update, then r . r" pass).
template <typename T>
GD_HD double gd_cg_update_xr_thread(T* x, T* r, const T* p, const T* q, T a, gd_i64 n,
                                    gd_i64 first, gd_i64 stride) {
    double acc = 0.0;
    for (gd_i64 i = first; i < n; i += stride) acc += gd_cg_update_xr_at<T>(x, r, p, q, a, i);
    return acc;
}

// p = z + beta p at flat element idx of the (B, n) batch (z may be r).
template <typename T>
GD_HD void gd_cg_update_p_at(T* p, const T* z, const double* beta, gd_i64 idx, gd_i64 n) {
    const gd_i64 b = idx / n;
    p[idx] = z[idx] + (T)beta[b] * p[idx];
}

#endif  // GD_CG_CUH
