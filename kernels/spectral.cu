// spectral.cu -- thin __global__ wrappers over spectral.cuh.
//
// gd_spectral_solve_<f32|f64>    Y (B, nf) <- (conj(H) Y + alpha Z) / (|H|^2 + lam R + alpha)
// gd_spectral_extrema_<..>       per-image, per-block min and max of that denominator
// gd_precond_mul_<..>            Y *= Dinv
// gd_precond_div_<..>            Y /= max(D, floor)
// Complex arrays are complex64 (f32) or complex128 (f64); R may be NULL
// (has_r = 0) and Z may be NULL (has_z = 0).
#include "spectral.cuh"

#define GD_SPECTRAL_KERNELS(T, SFX)                                                          \
    extern "C" __global__ void gd_spectral_solve_##SFX(                                      \
        gd_complex<T>* Y, const gd_complex<T>* __restrict__ H, const T* __restrict__ R,      \
        const T* __restrict__ lam, const T* __restrict__ alpha,                              \
        const gd_complex<T>* __restrict__ Z, long long total, long long nf,                  \
        long long h_stride, long long r_stride, int has_r, int has_z) {                      \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())               \
            gd_spectral_solve_at<T>(Y, H, R, lam, alpha, Z, i, nf, h_stride, r_stride, has_r, \
                                    has_z);                                                  \
    }                                                                                        \
                                                                                             \
    /* grid (nblk, <= nimg); pmin, pmax are (nimg, nblk) */                                  \
    extern "C" __global__ void gd_spectral_extrema_##SFX(                                    \
        const gd_complex<T>* __restrict__ H, const T* __restrict__ R,                        \
        const T* __restrict__ lam, const T* __restrict__ alpha, T* __restrict__ pmin,        \
        T* __restrict__ pmax, long long nf, long long nimg, long long nblk,                  \
        long long h_stride, long long r_stride, int has_r) {                                 \
        __shared__ T sh[GD_BLOCK];                                                           \
        const gd_i64 first = (gd_i64)blockIdx.x * blockDim.x + threadIdx.x;                  \
        const gd_i64 stride = nblk * (gd_i64)blockDim.x;                                     \
        for (gd_i64 b = blockIdx.y; b < nimg; b += gridDim.y) {                              \
            T lo, hi;                                                                        \
            gd_den_extrema_thread<T>(H, R, lam, alpha, b, nf, first, stride, h_stride,       \
                                     r_stride, has_r, &lo, &hi);                             \
            lo = gd_block_reduce<gd_min<T>, T>(lo, sh);                                      \
            hi = gd_block_reduce<gd_max<T>, T>(hi, sh);                                      \
            if (threadIdx.x == 0) {                                                          \
                pmin[b * nblk + blockIdx.x] = lo;                                            \
                pmax[b * nblk + blockIdx.x] = hi;                                            \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
                                                                                             \
    extern "C" __global__ void gd_precond_mul_##SFX(gd_complex<T>* Y,                        \
                                                   const T* __restrict__ Dinv,               \
                                                   long long total, long long nf,            \
                                                   long long d_stride) {                     \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())               \
            gd_precond_mul_at<T>(Y, Dinv, i, nf, d_stride);                                  \
    }                                                                                        \
                                                                                             \
    extern "C" __global__ void gd_precond_div_##SFX(                                         \
        gd_complex<T>* Y, const T* __restrict__ D, const T* __restrict__ floor_,             \
        long long total, long long nf, long long d_stride) {                                 \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())               \
            gd_precond_div_at<T>(Y, D, floor_, i, nf, d_stride);                             \
    }

#if !defined(GD_ONLY_F64)
GD_SPECTRAL_KERNELS(float, f32)
#endif
#if !defined(GD_ONLY_F32)
GD_SPECTRAL_KERNELS(double, f64)
#endif
