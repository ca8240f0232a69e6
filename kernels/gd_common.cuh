// gd_common.cuh -- what every gpu_deconv kernel shares.
//
// Self-contained on purpose: no CUDA, cupy, thrust or C++ standard headers, so
// that the same element logic builds with nvcc, with NVRTC (cupy.RawModule)
// and with the host C++ compiler (tests/harness/harness.cpp runs it on the CPU).
#ifndef GD_COMMON_CUH
#define GD_COMMON_CUH

#if !defined(__CUDACC__)
// Host compiler: the CUDA qualifiers mean nothing there.
#define __host__
#define __device__
#define __forceinline__ inline
#endif

#define GD_HD __host__ __device__ __forceinline__

// 64-bit indexes throughout: a batch of images on a padded grid passes 2^31
// elements long before it fills a GPU.
typedef long long gd_i64;

// Threads per block of every launch (the reductions rely on a power of two).
#define GD_BLOCK 256

// Boundary models, in the order of gpu_deconv._cuda.BOUNDARY_CODES.
#define GD_BC_ZERO 0
#define GD_BC_PERIODIC 1
#define GD_BC_SYMMETRIC 2
#define GD_BC_REFLECT 3
#define GD_BC_REPLICATE 4

// --------------------------------------------------------------- complex
// Same layout as numpy/cupy complex64 / complex128: two reals, real first,
// aligned to the pair so a load is one 8- or 16-byte transaction.
template <typename T>
struct alignas(2 * sizeof(T)) gd_complex {
    T re;
    T im;
};

template <typename T>
GD_HD gd_complex<T> gd_cmake(T re, T im) {
    gd_complex<T> c;
    c.re = re;
    c.im = im;
    return c;
}

template <typename T>
GD_HD gd_complex<T> gd_cadd(gd_complex<T> a, gd_complex<T> b) {
    return gd_cmake<T>(a.re + b.re, a.im + b.im);
}

template <typename T>
GD_HD gd_complex<T> gd_csub(gd_complex<T> a, gd_complex<T> b) {
    return gd_cmake<T>(a.re - b.re, a.im - b.im);
}

// a * b
template <typename T>
GD_HD gd_complex<T> gd_cmul(gd_complex<T> a, gd_complex<T> b) {
    return gd_cmake<T>(a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re);
}

// conj(a) * b
template <typename T>
GD_HD gd_complex<T> gd_cconjmul(gd_complex<T> a, gd_complex<T> b) {
    return gd_cmake<T>(a.re * b.re + a.im * b.im, a.re * b.im - a.im * b.re);
}

// s * a for a real s
template <typename T>
GD_HD gd_complex<T> gd_cscale(T s, gd_complex<T> a) {
    return gd_cmake<T>(s * a.re, s * a.im);
}

// a / s for a real s (a true division, as NumPy does, not a multiplication by 1/s)
template <typename T>
GD_HD gd_complex<T> gd_cdivr(gd_complex<T> a, T s) {
    return gd_cmake<T>(a.re / s, a.im / s);
}

// |a|^2
template <typename T>
GD_HD T gd_cnorm2(gd_complex<T> a) {
    return a.re * a.re + a.im * a.im;
}

// ------------------------------------------------------------- integers
// Floor modulo (result in [0, p) for p > 0), as Python's and NumPy's `%`.
GD_HD gd_i64 gd_mod(gd_i64 a, gd_i64 p) {
    gd_i64 r = a % p;
    return r < 0 ? r + p : r;
}

GD_HD gd_i64 gd_min_i64(gd_i64 a, gd_i64 b) { return a < b ? a : b; }

// ----------------------------------------------------------- launch grid
#if defined(__CUDACC__)
// Grid-stride loops: the launchers cap the grid, so every index is visited
// however large `total` is. Cast before multiplying: blockIdx.x * blockDim.x
// is a 32-bit product.
__device__ __forceinline__ gd_i64 gd_thread_index() {
    return (gd_i64)blockIdx.x * (gd_i64)blockDim.x + (gd_i64)threadIdx.x;
}

__device__ __forceinline__ gd_i64 gd_thread_stride() {
    return (gd_i64)gridDim.x * (gd_i64)blockDim.x;
}
#endif

#endif  // GD_COMMON_CUH
