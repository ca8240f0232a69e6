// spectral.cuh -- the closed-form spectral division and the preconditioner, per element.
//
// Half-spectrum layout of rfftn: an array (B, nf) of complex values, nf the
// number of frequencies of one image. Per-image scalars lam[b], alpha[b];
// arrays that are shared by the batch have stride 0 between images.
#ifndef GD_SPECTRAL_CUH
#define GD_SPECTRAL_CUH

#include "gd_common.cuh"
#include "gd_reduce.cuh"

// D = |H|^2 + lam R + alpha at frequency f of image b (the order of
// closed_form.spectral_filter: |H|^2, then + lam R, then + alpha).
template <typename T>
GD_HD T gd_spectral_den_at(const gd_complex<T>* H, const T* R, const T* lam, const T* alpha,
                           gd_i64 b, gd_i64 f, gd_i64 h_stride, gd_i64 r_stride, int has_r) {
    T den = gd_cnorm2<T>(H[b * h_stride + f]);
    if (has_r) den = den + lam[b] * R[b * r_stride + f];
    return den + alpha[b];
}

// Y[idx] <- (conj(H) Y + alpha Z) / D, in place; Z is read only if has_z.
template <typename T>
GD_HD void gd_spectral_solve_at(gd_complex<T>* Y, const gd_complex<T>* H, const T* R,
                                const T* lam, const T* alpha, const gd_complex<T>* Z,
                                gd_i64 idx, gd_i64 nf, gd_i64 h_stride, gd_i64 r_stride,
                                int has_r, int has_z) {
    const gd_i64 b = idx / nf;
    const gd_i64 f = idx - b * nf;
    const T den = gd_spectral_den_at<T>(H, R, lam, alpha, b, f, h_stride, r_stride, has_r);
    gd_complex<T> num = gd_cconjmul<T>(H[b * h_stride + f], Y[idx]);
    if (has_z) num = gd_cadd<T>(num, gd_cscale<T>(alpha[b], Z[idx]));
    Y[idx] = gd_cdivr<T>(num, den);
}

// Smallest and largest D of image b over the frequencies one thread of a
// reduction sweep visits (first, first + stride, ...). Frequency 0 seeds both
// so that a thread with nothing to visit still holds a valid value.
template <typename T>
GD_HD void gd_den_extrema_thread(const gd_complex<T>* H, const T* R, const T* lam,
                                 const T* alpha, gd_i64 b, gd_i64 nf, gd_i64 first,
                                 gd_i64 stride, gd_i64 h_stride, gd_i64 r_stride, int has_r,
                                 T* lo, T* hi) {
    T mn = gd_spectral_den_at<T>(H, R, lam, alpha, b, 0, h_stride, r_stride, has_r);
    T mx = mn;
    for (gd_i64 f = first; f < nf; f += stride) {
        const T d = gd_spectral_den_at<T>(H, R, lam, alpha, b, f, h_stride, r_stride, has_r);
        mn = gd_min<T>::apply(mn, d);
        mx = gd_max<T>::apply(mx, d);
    }
    *lo = mn;
    *hi = mx;
}

// Preconditioner: Y[idx] *= Dinv (the circulant inverse, precomputed).
template <typename T>
GD_HD void gd_precond_mul_at(gd_complex<T>* Y, const T* Dinv, gd_i64 idx, gd_i64 nf,
                             gd_i64 d_stride) {
    const gd_i64 b = idx / nf;
    const gd_i64 f = idx - b * nf;
    Y[idx] = gd_cscale<T>(Dinv[b * d_stride + f], Y[idx]);
}

// Preconditioner: Y[idx] /= max(D, floor[b]) (numpy.maximum: NaN propagates).
template <typename T>
GD_HD void gd_precond_div_at(gd_complex<T>* Y, const T* D, const T* floor_, gd_i64 idx,
                             gd_i64 nf, gd_i64 d_stride) {
    const gd_i64 b = idx / nf;
    const gd_i64 f = idx - b * nf;
    const T d = gd_max<T>::apply(D[b * d_stride + f], floor_[b]);
    Y[idx] = gd_cdivr<T>(Y[idx], d);
}

#endif  // GD_SPECTRAL_CUH
