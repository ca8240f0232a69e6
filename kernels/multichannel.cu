// multichannel.cu -- thin __global__ wrapper over multichannel.cuh.
//
// gd_sherman_morrison_<f32|f64>(D, Y, Z, alpha, X, total = B * nf, C, nf);
// X may alias Z.
#include "multichannel.cuh"

#define GD_MULTICHANNEL_KERNELS(T, SFX)                                                     \
    extern "C" __global__ void gd_sherman_morrison_##SFX(                                   \
        const gd_complex<T>* __restrict__ D, const gd_complex<T>* __restrict__ Y,           \
        const gd_complex<T>* Z, const T* __restrict__ alpha, gd_complex<T>* X,              \
        long long total, long long C, long long nf) {                                       \
        for (gd_i64 i = gd_thread_index(); i < total; i += gd_thread_stride())              \
            gd_sherman_morrison_at<T>(D, Y, Z, alpha, X, i, C, nf);                         \
    }

#if !defined(GD_ONLY_F64)
GD_MULTICHANNEL_KERNELS(float, f32)
#endif
#if !defined(GD_ONLY_F32)
GD_MULTICHANNEL_KERNELS(double, f64)
#endif
