// cg.cu -- thin __global__ wrappers over cg.cuh: the passes of one batched PCG iteration.
//
// Reductions run on a grid (nblk, <= nimg) of GD_BLOCK threads: block k of
// image b writes partial[b * nblk + k]; gd_sum_partials (one block per image)
// folds a row into out[b]. Deterministic: no atomics, a fixed order.
//
// gd_dot_partial_<f32|f64>(u, v, partial, n, nimg, nblk)
// gd_cg_update_xr_<..>(x, r, p, q, a, partial, n, nimg, nblk)   x += a p, r -= a q, partial r . r
// gd_cg_update_p_<..>(p, z, beta, total, n)                      p = z + beta p
// gd_sum_partials(partial, out, nblk, nimg)
// The per-image scalars of an iteration (float64 arrays and bool flags of nimg values, one
// kernel for both precisions; see cg.cuh):
// gd_cg_step(rz, pq, active, breakdown, broken, a, nimg)                  any grid
// gd_cg_check(rr, bnorm, rtol, active, breakdown, broken, iters, res, done, flags, nimg)
//     one block of GD_BLOCK threads; flags[0..2] = any(broken), any(done), any(active)
// gd_cg_beta(rz_new, rz, keep, beta, nimg)                                 any grid
#include "cg.cuh"

extern "C" __global__ void gd_sum_partials(const double* __restrict__ partial,
                                           double* __restrict__ out, long long nblk,
                                           long long nimg) {
    __shared__ double sh[GD_BLOCK];
    for (gd_i64 b = blockIdx.x; b < nimg; b += gridDim.x) {
        const double acc = gd_sum_thread(partial + b * nblk, nblk, threadIdx.x, blockDim.x);
        const double s = gd_block_reduce<gd_sum<double>, double>(acc, sh);
        if (threadIdx.x == 0) out[b] = s;
    }
}

extern "C" __global__ void gd_cg_step(const double* __restrict__ rz, const double* __restrict__ pq,
                                      bool* __restrict__ active, bool* __restrict__ breakdown,
                                      bool* __restrict__ broken, double* __restrict__ a,
                                      long long nimg) {
    for (gd_i64 b = gd_thread_index(); b < nimg; b += gd_thread_stride())
        gd_cg_step_at(rz, pq, active, breakdown, broken, a, b);
}

// One block: its threads stride over the images, then the block counts the images of each
// flag (sums of 0 / 1 in double, exact; the reduction the kernels above use).
extern "C" __global__ void gd_cg_check(const double* __restrict__ rr, const double* __restrict__ bnorm,
                                       double rtol, bool* __restrict__ active,
                                       bool* __restrict__ breakdown, bool* __restrict__ broken,
                                       long long* __restrict__ iters, double* __restrict__ res,
                                       bool* __restrict__ done, bool* __restrict__ flags,
                                       long long nimg) {
    __shared__ double sh[GD_BLOCK];
    double count[3] = {0.0, 0.0, 0.0};
    for (gd_i64 b = threadIdx.x; b < nimg; b += blockDim.x) {
        const int f = gd_cg_check_at(rr, bnorm, rtol, active, breakdown, broken, iters, res, done, b);
        for (int k = 0; k < 3; ++k) count[k] += (double)((f >> k) & 1);
    }
    for (int k = 0; k < 3; ++k) {
        const double total = gd_block_reduce<gd_sum<double>, double>(count[k], sh);
        if (threadIdx.x == 0) flags[k] = total > 0.0;
    }
}

extern "C" __global__ void gd_cg_beta(const double* __restrict__ rz_new, const double* __restrict__ rz,
                                      const bool* __restrict__ keep, double* __restrict__ beta,
                                      long long nimg) {
    for (gd_i64 b = gd_thread_index(); b < nimg; b += gd_thread_stride())
        gd_cg_beta_at(rz_new, rz, keep, beta, b);
}

#define GD_CG_KERNELS(T, SFX)                                                               \
    extern "C" __global__ void gd_dot_partial_##SFX(                                        \
        const T* __restrict__ u, const T* __restrict__ v, double* __restrict__ partial,     \
        long long n, long long nimg, long long nblk) {                                      \
        __shared__ double sh[GD_BLOCK];                                                     \
        const gd_i64 first = (gd_i64)blockIdx.x * blockDim.x + threadIdx.x;                 \
        const gd_i64 stride = nblk * (gd_i64)blockDim.x;                                    \
        for (gd_i64 b = blockIdx.y; b < nimg; b += gridDim.y) {                             \
            const double acc = gd_dot_thread<T>(u + b * n, v + b * n, n, first, stride);    \
            const double s = gd_block_reduce<gd_sum<double>, double>(acc, sh);              \
            if (threadIdx.x == 0) partial[b * nblk + blockIdx.x] = s;                       \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    extern "C" __global__ void gd_cg_update_xr_##SFX(                                       \
        T* __restrict__ x, T* __restrict__ r, const T* __restrict__ p,                      \
        const T* __restrict__ q, const double* __restrict__ a, double* __restrict__ partial, \
        long long n, long long nimg, long long nblk) {                                      \
        __shared__ double sh[GD_BLOCK];                                                     \
        const gd_i64 first = (gd_i64)blockIdx.x * blockDim.x + threadIdx.x;                 \
        const gd_i64 stride = nblk * (gd_i64)blockDim.x;                                    \
        for (gd_i64 b = blockIdx.y; b < nimg; b += gridDim.y) {                             \
            const gd_i64 o = b * n;                                                         \
            const double acc = gd_cg_update_xr_thread<T>(x + o, r + o, p + o, q + o,        \
                                                         (T)a[b], n, first, stride);        \
            const double s = gd_block_reduce<gd_sum<double>, double>(acc, sh);              \
            if (threadIdx.x == 0) partial[b * nblk + blockIdx.x] = s;                       \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    extern "C" __global__ void gd_cg_update_p_##SFX(T* __restrict__ p, const T* __restrict__ z, \
                                                   const double* __restrict__ beta,         \
                                                   long long total, long long n) {          \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())              \
            gd_cg_update_p_at<T>(p, z, beta, i, n);                                         \
    }

#if !defined(GD_ONLY_F64)
GD_CG_KERNELS(float, f32)
#endif
#if !defined(GD_ONLY_F32)
GD_CG_KERNELS(double, f64)
#endif
