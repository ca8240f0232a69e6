// stencil.cu -- thin __global__ wrappers over stencil.cuh.
//
// Names: gd_stencil_normal_<boundary>_<nd>d_<f32|f64>, nd = 1, 2, 3.
// out (B, n...) = scale[b] * sum_t w_t G_t^T G_t x (added to out when accumulate != 0),
// x (B, n...) read in place, never the same array as out;
// scale holds one value per image (scale_stride 1) or one for all (0). The term tables come from
// gpu_deconv._direct.StencilSum (see stencil.cuh for their layout).
#include "stencil.cuh"

#define GD_STENCIL_KERNEL(T, SFX, BCNAME, BC, ND)                                            \
    extern "C" __global__ void gd_stencil_normal_##BCNAME##_##ND##d_##SFX(                   \
        const T* __restrict__ x, T* __restrict__ out, const T* __restrict__ scale,           \
        const long long* __restrict__ tab, const T* __restrict__ vals, long long total,      \
        long long scale_stride, long long n0, long long n1, long long n2,                    \
        long long accumulate) {                                                              \
        const gd_i64 n[3] = {n0, n1, n2};                                                    \
        gd_i64 size = 1;                                                                     \
        for (int a = 0; a < ND; ++a) size *= n[a];                                           \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride()) {             \
            const T v = scale[(i / size) * scale_stride] * gd_stencil_value<T, ND, BC>(x, i, n, tab, vals); \
            out[i] = accumulate ? out[i] + v : v;                                            \
        }                                                                                    \
    }

#define GD_STENCIL_BC(T, SFX, BCNAME, BC)  \
    GD_STENCIL_KERNEL(T, SFX, BCNAME, BC, 1) \
    GD_STENCIL_KERNEL(T, SFX, BCNAME, BC, 2) \
    GD_STENCIL_KERNEL(T, SFX, BCNAME, BC, 3)

#define GD_STENCIL_ALL(T, SFX)                       \
    GD_STENCIL_BC(T, SFX, zero, GD_BC_ZERO)          \
    GD_STENCIL_BC(T, SFX, periodic, GD_BC_PERIODIC)  \
    GD_STENCIL_BC(T, SFX, symmetric, GD_BC_SYMMETRIC) \
    GD_STENCIL_BC(T, SFX, reflect, GD_BC_REFLECT)    \
    GD_STENCIL_BC(T, SFX, replicate, GD_BC_REPLICATE)

#if !defined(GD_ONLY_F64)
GD_STENCIL_ALL(float, f32)
#endif
#if !defined(GD_ONLY_F32)
GD_STENCIL_ALL(double, f64)
#endif
