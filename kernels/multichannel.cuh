// multichannel.cuh -- the Sherman-Morrison solve of the multi-channel proximal step, per frequency.
//
// Per frequency f of image b, with C filter responses d_c = D[c, f]:
//   (conj(d) d^T + alpha I) x = conj(d) y + alpha z
//   b_c = conj(d_c) y + alpha z_c,  x_c = (b_c - conj(d_c) (d^T b) / (alpha + sum |d_c|^2)) / alpha
// (solvers/multichannel.py sherman_morrison). Layouts: D (C, nf), Y (B, nf),
// Z and X (B, C, nf), alpha (B,). X may be Z (in place): each thread reads
// z_c before it writes x_c, and no other thread touches frequency f of image b.
#ifndef GD_MULTICHANNEL_CUH
#define GD_MULTICHANNEL_CUH

#include "gd_common.cuh"

template <typename T>
GD_HD void gd_sherman_morrison_at(const gd_complex<T>* D, const gd_complex<T>* Y,
                                  const gd_complex<T>* Z, const T* alpha, gd_complex<T>* X,
                                  gd_i64 idx, gd_i64 C, gd_i64 nf) {
    const gd_i64 b = idx / nf;
    const gd_i64 f = idx - b * nf;
    const T a = alpha[b];
    const gd_complex<T> y = Y[idx];
    const gd_complex<T>* Zb = Z + b * C * nf + f;
    gd_complex<T>* Xb = X + b * C * nf + f;
    // Two sweeps over the channels, b_c recomputed in the second: C is not
    // known at compile time, and a per-thread array of it would spill.
    gd_complex<T> vtb = gd_cmake<T>(T(0), T(0));
    T dd = T(0);
    for (gd_i64 c = 0; c < C; ++c) {
        const gd_complex<T> d = D[c * nf + f];
        const gd_complex<T> bc = gd_cadd<T>(gd_cconjmul<T>(d, y), gd_cscale<T>(a, Zb[c * nf]));
        vtb = gd_cadd<T>(vtb, gd_cmul<T>(d, bc));
        dd += gd_cnorm2<T>(d);
    }
    const gd_complex<T> s = gd_cdivr<T>(vtb, a + dd);
    for (gd_i64 c = 0; c < C; ++c) {
        const gd_complex<T> d = D[c * nf + f];
        const gd_complex<T> bc = gd_cadd<T>(gd_cconjmul<T>(d, y), gd_cscale<T>(a, Zb[c * nf]));
        Xb[c * nf] = gd_cdivr<T>(gd_csub<T>(bc, gd_cconjmul<T>(d, s)), a);
    }
}

#endif  // GD_MULTICHANNEL_CUH
