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

// ------------------------------------------------ per-image scalars of one iteration
// The bookkeeping between the vector passes, image b of the batch, in the order and with
// the operations of the array expressions of batched_cg_fused (float64 throughout, IEEE
// division and square root: the same values bit for bit). Flags are bool arrays.

// Not inf nor NaN (inf - inf and NaN - NaN are NaN; without <cmath>, which NVRTC lacks).
GD_HD bool gd_isfinite(double v) { return v - v == 0.0; }

GD_HD double gd_sqrt(double v) {
#if defined(__CUDA_ARCH__)
    return sqrt(v);
#else
    return __builtin_sqrt(v);
#endif
}

// After pq = p . A p: step = rz / pq (rz / 1 where pq is not > 0); an active image whose
// pq is not > 0 or whose step is not finite breaks down and stops (broken = that);
// a = the step where the image is still active, else 0.
GD_HD void gd_cg_step_at(const double* rz, const double* pq, bool* active, bool* breakdown,
                         bool* broken, double* a, gd_i64 b) {
    const bool pos = pq[b] > 0.0;
    const double step = rz[b] / (pos ? pq[b] : 1.0);
    const bool bad = active[b] && !(pos && gd_isfinite(step));
    const bool act = active[b] && !bad;
    breakdown[b] = breakdown[b] || bad;
    active[b] = act;
    broken[b] = bad;
    a[b] = act ? step : 0.0;
}

// After the update of x and r (rr = r . r): iters += active; res = sqrt(rr) / bnorm; an
// active image whose res is not finite breaks down (broken |= that); done = active and
// res <= rtol. Returns the image's flags broken | done << 1 | active << 2.
GD_HD int gd_cg_check_at(const double* rr, const double* bnorm, double rtol, bool* active,
                         bool* breakdown, bool* broken, long long* iters, double* res, bool* done,
                         gd_i64 b) {
    iters[b] += active[b] ? 1 : 0;
    const double rs = gd_sqrt(rr[b]) / bnorm[b];
    res[b] = rs;
    const bool bad = active[b] && !gd_isfinite(rs);
    const bool act = active[b] && !bad;
    const bool brk = broken[b] || bad;
    const bool dn = act && rs <= rtol;
    breakdown[b] = breakdown[b] || bad;
    active[b] = act;
    broken[b] = brk;
    done[b] = dn;
    return (brk ? 1 : 0) | (dn ? 2 : 0) | (act ? 4 : 0);
}

// beta = rz_new / rz (rz_new / 1 where rz is 0) where keep, else 0.
GD_HD void gd_cg_beta_at(const double* rz_new, const double* rz, const bool* keep, double* beta,
                         gd_i64 b) {
    beta[b] = keep[b] ? rz_new[b] / (rz[b] != 0.0 ? rz[b] : 1.0) : 0.0;
}

#endif  // GD_CG_CUH
