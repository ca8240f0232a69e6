// pad_extract.cu -- thin __global__ wrappers over pad_extract.cuh.
//
// Names: gd_pad_<boundary>_<nd>d_<f32|f64>, gd_fold_<boundary>_<nd>d_<..>,
// gd_crop_<nd>d_<..>, gd_mask_<nd>d_<..>, gd_embed_scaled_<nd>d_<..>,
// gd_crop_scaled_<nd>d_<..>; nd = 1, 2, 3 spatial axes. The
// geometry always comes as three values per quantity, the first nd used
// (gpu_deconv._cuda builds them). Compile with -DGD_ONLY_F32 / -DGD_ONLY_F64
// to get one precision only (what gpu_deconv._kernels does).
#include "pad_extract.cuh"

// gd_pad_*:  out (B, G...) = P x written into the whole grid (zeros outside [0, e));
// gd_fold_*: out (B, n...) = P^T v, v (B, G...) read in place.
// KIND (pad or fold) picks gd_<KIND>_value of pad_extract.cuh.
#define GD_PAD_FOLD_KERNEL(KIND, T, SFX, BCNAME, BC, ND)                                    \
    extern "C" __global__ void gd_##KIND##_##BCNAME##_##ND##d_##SFX(                        \
        const T* __restrict__ in, T* __restrict__ out, long long total, long long n0,       \
        long long n1, long long n2, long long L0, long long L1, long long L2, long long e0,  \
        long long e1, long long e2, long long G0, long long G1, long long G2) {              \
        const gd_i64 n[3] = {n0, n1, n2};                                                   \
        const gd_i64 L[3] = {L0, L1, L2};                                                   \
        const gd_i64 e[3] = {e0, e1, e2};                                                   \
        const gd_i64 G[3] = {G0, G1, G2};                                                   \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())              \
            out[i] = gd_##KIND##_value<T, ND, BC>(in, i, n, L, e, G);                       \
    }

// out (B, m...) = the first m samples per axis of v (B, G...).
#define GD_CROP_KERNEL(T, SFX, ND)                                                        \
    extern "C" __global__ void gd_crop_##ND##d_##SFX(                                     \
        const T* __restrict__ v, T* __restrict__ out, long long total, long long m0,      \
        long long m1, long long m2, long long G0, long long G1, long long G2) {           \
        const gd_i64 m[3] = {m0, m1, m2};                                                 \
        const gd_i64 G[3] = {G0, G1, G2};                                                 \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())            \
            out[i] = v[gd_crop_source<ND>(i, m, G)];                                      \
    }

// gd_embed_scaled_*: out (B, G...) = E (x * s), x (B, m...) zero-filled into the grid
//                    (every grid element written once);
// gd_crop_scaled_*:  out (B, m...) = (the first m samples per axis of v (B, G...)) * s.
// s (m...) is one weight shared by the images. KIND picks gd_<KIND>_scaled_value.
#define GD_SCALED_WINDOW_KERNEL(KIND, T, SFX, ND)                                         \
    extern "C" __global__ void gd_##KIND##_scaled_##ND##d_##SFX(                          \
        const T* __restrict__ in, const T* __restrict__ s, T* __restrict__ out,           \
        long long total, long long m0, long long m1, long long m2, long long G0,          \
        long long G1, long long G2) {                                                     \
        const gd_i64 m[3] = {m0, m1, m2};                                                 \
        const gd_i64 G[3] = {G0, G1, G2};                                                 \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())            \
            out[i] = gd_##KIND##_scaled_value<T, ND>(in, s, i, m, G);                     \
    }

// v (B, G...) zeroed outside the first m samples per axis, in place.
#define GD_MASK_KERNEL(T, SFX, ND)                                                         \
    extern "C" __global__ void gd_mask_##ND##d_##SFX(T* __restrict__ v, long long total,   \
                                                    long long m0, long long m1, long long m2, \
                                                    long long G0, long long G1, long long G2) { \
        const gd_i64 m[3] = {m0, m1, m2};                                                  \
        const gd_i64 G[3] = {G0, G1, G2};                                                  \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())             \
            if (!gd_in_window<ND>(i, m, G)) v[i] = T(0);                                   \
    }

#define GD_PAD_FOLD_BC(T, SFX, BCNAME, BC)          \
    GD_PAD_FOLD_KERNEL(pad, T, SFX, BCNAME, BC, 1)  \
    GD_PAD_FOLD_KERNEL(pad, T, SFX, BCNAME, BC, 2)  \
    GD_PAD_FOLD_KERNEL(pad, T, SFX, BCNAME, BC, 3)  \
    GD_PAD_FOLD_KERNEL(fold, T, SFX, BCNAME, BC, 1) \
    GD_PAD_FOLD_KERNEL(fold, T, SFX, BCNAME, BC, 2) \
    GD_PAD_FOLD_KERNEL(fold, T, SFX, BCNAME, BC, 3)

#define GD_PAD_EXTRACT_ALL(T, SFX)                               \
    GD_PAD_FOLD_BC(T, SFX, zero, GD_BC_ZERO)                     \
    GD_PAD_FOLD_BC(T, SFX, periodic, GD_BC_PERIODIC)             \
    GD_PAD_FOLD_BC(T, SFX, symmetric, GD_BC_SYMMETRIC)           \
    GD_PAD_FOLD_BC(T, SFX, reflect, GD_BC_REFLECT)               \
    GD_PAD_FOLD_BC(T, SFX, replicate, GD_BC_REPLICATE)           \
    GD_CROP_KERNEL(T, SFX, 1)                                    \
    GD_CROP_KERNEL(T, SFX, 2)                                    \
    GD_CROP_KERNEL(T, SFX, 3)                                    \
    GD_MASK_KERNEL(T, SFX, 1)                                    \
    GD_MASK_KERNEL(T, SFX, 2)                                    \
    GD_MASK_KERNEL(T, SFX, 3)                                    \
    GD_SCALED_WINDOW_KERNEL(embed, T, SFX, 1)                    \
    GD_SCALED_WINDOW_KERNEL(embed, T, SFX, 2)                    \
    GD_SCALED_WINDOW_KERNEL(embed, T, SFX, 3)                    \
    GD_SCALED_WINDOW_KERNEL(crop, T, SFX, 1)                     \
    GD_SCALED_WINDOW_KERNEL(crop, T, SFX, 2)                     \
    GD_SCALED_WINDOW_KERNEL(crop, T, SFX, 3)

#if !defined(GD_ONLY_F64)
GD_PAD_EXTRACT_ALL(float, f32)
#endif
#if !defined(GD_ONLY_F32)
GD_PAD_EXTRACT_ALL(double, f64)
#endif
