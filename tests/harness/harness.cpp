// harness.cpp -- runs the element logic of kernels/*.cuh on the CPU.
//
// Built by tests/test_kernels_harness.py with the host C++ compiler alone
// (g++ -I kernels), loaded with ctypes. Every function loops over the indexes
// a kernel launch would cover and calls exactly the __host__ __device__
// functions that the __global__ wrappers of kernels/*.cu call; reductions
// replay the per-thread sweep and the shared-memory tree level by level.
// Arguments mirror the kernels' (geometry as 3 values per quantity); `f64`
// selects double (1) or float (0).
#include <vector>

#include "cg.cuh"
#include "multichannel.cuh"
#include "pad_extract.cuh"
#include "spectral.cuh"

namespace {

template <typename T>
using cplx = gd_complex<T>;

// Pick the template instance (dtype, ndim, boundary) a kernel name encodes.
template <template <typename, int, int> class F, typename... Args>
int dispatch(int f64, int bc, int nd, Args... args) {
#define GD_CASE(T, ND, BC) \
    if (nd == ND && bc == BC) { F<T, ND, BC>::run(args...); return 0; }
#define GD_CASES_ND(T, BC) GD_CASE(T, 1, BC) GD_CASE(T, 2, BC) GD_CASE(T, 3, BC)
#define GD_CASES(T)                        \
    GD_CASES_ND(T, GD_BC_ZERO)             \
    GD_CASES_ND(T, GD_BC_PERIODIC)         \
    GD_CASES_ND(T, GD_BC_SYMMETRIC)        \
    GD_CASES_ND(T, GD_BC_REFLECT)          \
    GD_CASES_ND(T, GD_BC_REPLICATE)
    if (f64) {
        GD_CASES(double)
    } else {
        GD_CASES(float)
    }
#undef GD_CASES
#undef GD_CASES_ND
#undef GD_CASE
    return -1;
}

template <typename T, int ND, int BC>
struct PadF {
    static void run(const void* x, void* out, gd_i64 total, const gd_i64* g) {
        const gd_i64 *n = g, *L = g + 3, *e = g + 6, *G = g + 9;
        for (gd_i64 i = 0; i < total; ++i)
            static_cast<T*>(out)[i] =
                gd_pad_value<T, ND, BC>(static_cast<const T*>(x), i, n, L, e, G);
    }
};

template <typename T, int ND, int BC>
struct FoldF {
    static void run(const void* v, void* out, gd_i64 total, const gd_i64* g) {
        const gd_i64 *n = g, *L = g + 3, *e = g + 6, *G = g + 9;
        for (gd_i64 i = 0; i < total; ++i)
            static_cast<T*>(out)[i] =
                gd_fold_value<T, ND, BC>(static_cast<const T*>(v), i, n, L, e, G);
    }
};

template <typename T, int ND>
void crop_loop(const void* v, void* out, gd_i64 total, const gd_i64* mG) {
    for (gd_i64 i = 0; i < total; ++i)
        static_cast<T*>(out)[i] = static_cast<const T*>(v)[gd_crop_source<ND>(i, mG, mG + 3)];
}

template <typename T, int ND>
void mask_loop(void* v, gd_i64 total, const gd_i64* mG) {
    for (gd_i64 i = 0; i < total; ++i)
        if (!gd_in_window<ND>(i, mG, mG + 3)) static_cast<T*>(v)[i] = T(0);
}

// gd_embed_scaled_* (crop = 0: out is the grid) and gd_crop_scaled_* (crop = 1: out is the window).
template <typename T, int ND>
void window_scaled_loop(int crop, const void* in, const void* s, void* out, gd_i64 total, const gd_i64* mG) {
    const T* x = static_cast<const T*>(in);
    const T* w = static_cast<const T*>(s);
    T* o = static_cast<T*>(out);
    for (gd_i64 i = 0; i < total; ++i)
        o[i] = crop ? gd_crop_scaled_value<T, ND>(x, w, i, mG, mG + 3)
                    : gd_embed_scaled_value<T, ND>(x, w, i, mG, mG + 3);
}

template <typename T>
void window_scaled_nd(int nd, int crop, const void* in, const void* s, void* out, gd_i64 total,
                      const gd_i64* mG) {
    if (nd == 1) window_scaled_loop<T, 1>(crop, in, s, out, total, mG);
    if (nd == 2) window_scaled_loop<T, 2>(crop, in, s, out, total, mG);
    if (nd == 3) window_scaled_loop<T, 3>(crop, in, s, out, total, mG);
}

// The shared-memory tree of gd_block_reduce, level by level.
template <class Op, typename A>
A block_tree(std::vector<A>& buf) {
    const int block = (int)buf.size();
    for (int s = block >> 1; s > 0; s >>= 1)
        for (int t = 0; t < s; ++t) gd_tree_level<Op, A>(buf.data(), t, s);
    return buf[0];
}

template <typename T>
void extrema(const void* H, const void* R, const void* lam, const void* alpha, void* pmin,
             void* pmax, gd_i64 nf, gd_i64 nimg, gd_i64 nblk, gd_i64 hs, gd_i64 rs, int has_r,
             int block) {
    std::vector<T> lo(block), hi(block);
    for (gd_i64 b = 0; b < nimg; ++b)
        for (gd_i64 k = 0; k < nblk; ++k) {
            for (int t = 0; t < block; ++t)
                gd_den_extrema_thread<T>(static_cast<const cplx<T>*>(H), static_cast<const T*>(R),
                                         static_cast<const T*>(lam), static_cast<const T*>(alpha), b,
                                         nf, k * block + t, nblk * block, hs, rs, has_r, &lo[t],
                                         &hi[t]);
            static_cast<T*>(pmin)[b * nblk + k] = block_tree<gd_min<T>, T>(lo);
            static_cast<T*>(pmax)[b * nblk + k] = block_tree<gd_max<T>, T>(hi);
        }
}

template <typename T>
void dot_partial(const void* u, const void* v, double* partial, gd_i64 n, gd_i64 nimg,
                 gd_i64 nblk, int block) {
    std::vector<double> buf(block);
    for (gd_i64 b = 0; b < nimg; ++b)
        for (gd_i64 k = 0; k < nblk; ++k) {
            for (int t = 0; t < block; ++t)
                buf[t] = gd_dot_thread<T>(static_cast<const T*>(u) + b * n,
                                          static_cast<const T*>(v) + b * n, n, k * block + t,
                                          nblk * block);
            partial[b * nblk + k] = block_tree<gd_sum<double>, double>(buf);
        }
}

template <typename T>
void update_xr(void* x, void* r, const void* p, const void* q, const double* a, double* partial,
               gd_i64 n, gd_i64 nimg, gd_i64 nblk, int block) {
    std::vector<double> buf(block);
    for (gd_i64 b = 0; b < nimg; ++b) {
        const gd_i64 o = b * n;
        for (gd_i64 k = 0; k < nblk; ++k) {
            for (int t = 0; t < block; ++t)
                buf[t] = gd_cg_update_xr_thread<T>(static_cast<T*>(x) + o, static_cast<T*>(r) + o,
                                                   static_cast<const T*>(p) + o,
                                                   static_cast<const T*>(q) + o, (T)a[b], n,
                                                   k * block + t, nblk * block);
            partial[b * nblk + k] = block_tree<gd_sum<double>, double>(buf);
        }
    }
}

template <typename T>
void spectral_solve(void* Y, const void* H, const void* R, const void* lam, const void* alpha,
                    const void* Z, gd_i64 total, gd_i64 nf, gd_i64 hs, gd_i64 rs, int has_r,
                    int has_z) {
    for (gd_i64 i = 0; i < total; ++i)
        gd_spectral_solve_at<T>(static_cast<cplx<T>*>(Y), static_cast<const cplx<T>*>(H),
                                static_cast<const T*>(R), static_cast<const T*>(lam),
                                static_cast<const T*>(alpha), static_cast<const cplx<T>*>(Z), i, nf,
                                hs, rs, has_r, has_z);
}

template <typename T>
void precond_mul(void* Y, const void* Dinv, gd_i64 total, gd_i64 nf, gd_i64 ds) {
    for (gd_i64 i = 0; i < total; ++i)
        gd_precond_mul_at<T>(static_cast<cplx<T>*>(Y), static_cast<const T*>(Dinv), i, nf, ds);
}

template <typename T>
void precond_div(void* Y, const void* D, const void* floor_, gd_i64 total, gd_i64 nf, gd_i64 ds) {
    for (gd_i64 i = 0; i < total; ++i)
        gd_precond_div_at<T>(static_cast<cplx<T>*>(Y), static_cast<const T*>(D),
                             static_cast<const T*>(floor_), i, nf, ds);
}

template <typename T>
void sherman_morrison(const void* D, const void* Y, const void* Z, const void* alpha, void* X,
                      gd_i64 total, gd_i64 C, gd_i64 nf) {
    for (gd_i64 i = 0; i < total; ++i)
        gd_sherman_morrison_at<T>(static_cast<const cplx<T>*>(D), static_cast<const cplx<T>*>(Y),
                                  static_cast<const cplx<T>*>(Z), static_cast<const T*>(alpha),
                                  static_cast<cplx<T>*>(X), i, C, nf);
}

template <typename T>
void update_p(void* p, const void* z, const double* beta, gd_i64 total, gd_i64 n) {
    for (gd_i64 i = 0; i < total; ++i)
        gd_cg_update_p_at<T>(static_cast<T*>(p), static_cast<const T*>(z), beta, i, n);
}

}  // namespace

extern "C" {

void gdh_source_index(int bc, long long n, const long long* m, long long* out, long long count) {
    for (gd_i64 i = 0; i < count; ++i) {
        switch (bc) {
            case GD_BC_ZERO: out[i] = gd_source_index<GD_BC_ZERO>(n, m[i]); break;
            case GD_BC_PERIODIC: out[i] = gd_source_index<GD_BC_PERIODIC>(n, m[i]); break;
            case GD_BC_SYMMETRIC: out[i] = gd_source_index<GD_BC_SYMMETRIC>(n, m[i]); break;
            case GD_BC_REFLECT: out[i] = gd_source_index<GD_BC_REFLECT>(n, m[i]); break;
            default: out[i] = gd_source_index<GD_BC_REPLICATE>(n, m[i]); break;
        }
    }
}

int gdh_pad(int f64, int bc, int nd, const void* x, void* out, long long total,
            const long long* geom) {
    return dispatch<PadF>(f64, bc, nd, x, out, (gd_i64)total, (const gd_i64*)geom);
}

int gdh_fold(int f64, int bc, int nd, const void* v, void* out, long long total,
             const long long* geom) {
    return dispatch<FoldF>(f64, bc, nd, v, out, (gd_i64)total, (const gd_i64*)geom);
}

int gdh_crop(int f64, int nd, const void* v, void* out, long long total, const long long* mG) {
    if (nd < 1 || nd > 3) return -1;
    if (f64) {
        if (nd == 1) crop_loop<double, 1>(v, out, total, mG);
        if (nd == 2) crop_loop<double, 2>(v, out, total, mG);
        if (nd == 3) crop_loop<double, 3>(v, out, total, mG);
    } else {
        if (nd == 1) crop_loop<float, 1>(v, out, total, mG);
        if (nd == 2) crop_loop<float, 2>(v, out, total, mG);
        if (nd == 3) crop_loop<float, 3>(v, out, total, mG);
    }
    return 0;
}

int gdh_mask(int f64, int nd, void* v, long long total, const long long* mG) {
    if (nd < 1 || nd > 3) return -1;
    if (f64) {
        if (nd == 1) mask_loop<double, 1>(v, total, mG);
        if (nd == 2) mask_loop<double, 2>(v, total, mG);
        if (nd == 3) mask_loop<double, 3>(v, total, mG);
    } else {
        if (nd == 1) mask_loop<float, 1>(v, total, mG);
        if (nd == 2) mask_loop<float, 2>(v, total, mG);
        if (nd == 3) mask_loop<float, 3>(v, total, mG);
    }
    return 0;
}

int gdh_window_scaled(int f64, int nd, int crop, const void* in, const void* s, void* out, long long total,
                      const long long* mG) {
    if (nd < 1 || nd > 3) return -1;
    if (f64)
        window_scaled_nd<double>(nd, crop, in, s, out, total, mG);
    else
        window_scaled_nd<float>(nd, crop, in, s, out, total, mG);
    return 0;
}

void gdh_spectral_solve(int f64, void* Y, const void* H, const void* R, const void* lam,
                        const void* alpha, const void* Z, long long total, long long nf,
                        long long h_stride, long long r_stride, int has_r, int has_z) {
    if (f64)
        spectral_solve<double>(Y, H, R, lam, alpha, Z, total, nf, h_stride, r_stride, has_r, has_z);
    else
        spectral_solve<float>(Y, H, R, lam, alpha, Z, total, nf, h_stride, r_stride, has_r, has_z);
}

void gdh_spectral_extrema(int f64, const void* H, const void* R, const void* lam,
                          const void* alpha, void* pmin, void* pmax, long long nf, long long nimg,
                          long long nblk, long long h_stride, long long r_stride, int has_r,
                          int block) {
    if (f64)
        extrema<double>(H, R, lam, alpha, pmin, pmax, nf, nimg, nblk, h_stride, r_stride, has_r,
                        block);
    else
        extrema<float>(H, R, lam, alpha, pmin, pmax, nf, nimg, nblk, h_stride, r_stride, has_r,
                       block);
}

void gdh_precond_mul(int f64, void* Y, const void* Dinv, long long total, long long nf,
                     long long d_stride) {
    if (f64)
        precond_mul<double>(Y, Dinv, total, nf, d_stride);
    else
        precond_mul<float>(Y, Dinv, total, nf, d_stride);
}

void gdh_precond_div(int f64, void* Y, const void* D, const void* floor_, long long total,
                     long long nf, long long d_stride) {
    if (f64)
        precond_div<double>(Y, D, floor_, total, nf, d_stride);
    else
        precond_div<float>(Y, D, floor_, total, nf, d_stride);
}

void gdh_sherman_morrison(int f64, const void* D, const void* Y, const void* Z, const void* alpha,
                          void* X, long long total, long long C, long long nf) {
    if (f64)
        sherman_morrison<double>(D, Y, Z, alpha, X, total, C, nf);
    else
        sherman_morrison<float>(D, Y, Z, alpha, X, total, C, nf);
}

void gdh_dot_partial(int f64, const void* u, const void* v, double* partial, long long n,
                     long long nimg, long long nblk, int block) {
    if (f64)
        dot_partial<double>(u, v, partial, n, nimg, nblk, block);
    else
        dot_partial<float>(u, v, partial, n, nimg, nblk, block);
}

void gdh_sum_partials(const double* partial, double* out, long long nblk, long long nimg,
                      int block) {
    std::vector<double> buf(block);
    for (gd_i64 b = 0; b < nimg; ++b) {
        for (int t = 0; t < block; ++t) buf[t] = gd_sum_thread(partial + b * nblk, nblk, t, block);
        out[b] = block_tree<gd_sum<double>, double>(buf);
    }
}

void gdh_cg_update_xr(int f64, void* x, void* r, const void* p, const void* q, const double* a,
                      double* partial, long long n, long long nimg, long long nblk, int block) {
    if (f64)
        update_xr<double>(x, r, p, q, a, partial, n, nimg, nblk, block);
    else
        update_xr<float>(x, r, p, q, a, partial, n, nimg, nblk, block);
}

void gdh_cg_update_p(int f64, void* p, const void* z, const double* beta, long long total,
                     long long n) {
    if (f64)
        update_p<double>(p, z, beta, total, n);
    else
        update_p<float>(p, z, beta, total, n);
}

}  // extern "C"
