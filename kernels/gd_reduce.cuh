// gd_reduce.cuh -- deterministic block reductions (no atomics).
//
// A reduction over one image runs in two stages: block k of image b folds the
// elements first = k * GD_BLOCK + t, first + stride, ... (stride = blocks per
// image * GD_BLOCK) into one value per thread, a shared-memory tree folds the
// block into partial[b, k], and a second kernel folds the partials of image b.
// The per-thread and per-level steps are __host__ __device__ so that the CPU
// harness replays the same order of operations.
#ifndef GD_REDUCE_CUH
#define GD_REDUCE_CUH

#include "gd_common.cuh"

template <typename A>
struct gd_sum {
    static GD_HD A apply(A a, A b) { return a + b; }
};

// min / max that propagate NaN, as numpy.min / numpy.max do.
template <typename A>
struct gd_min {
    static GD_HD A apply(A a, A b) { return (a != a || a < b) ? a : b; }
};

template <typename A>
struct gd_max {
    static GD_HD A apply(A a, A b) { return (a != a || a > b) ? a : b; }
};

// One level of the tree: thread t < s folds buf[t + s] into buf[t].
template <class Op, typename A>
GD_HD void gd_tree_level(A* buf, int t, int s) {
    buf[t] = Op::apply(buf[t], buf[t + s]);
}

// What thread `first` of a (blocks x GD_BLOCK) sweep adds up from a partials row.
GD_HD double gd_sum_thread(const double* p, gd_i64 n, gd_i64 first, gd_i64 stride) {
    double acc = 0.0;
    for (gd_i64 i = first; i < n; i += stride) acc += p[i];
    return acc;
}

#if defined(__CUDACC__)
// Fold one value per thread into one value per block; blockDim.x must be a
// power of two no larger than the shared array (GD_BLOCK). Every thread of
// the block must call it (it synchronises), and every thread gets the result.
template <class Op, typename A>
__device__ __forceinline__ A gd_block_reduce(A v, A* sh) {
    const int t = (int)threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = (int)blockDim.x >> 1; s > 0; s >>= 1) {
        if (t < s) gd_tree_level<Op, A>(sh, t, s);
        __syncthreads();
    }
    const A out = sh[0];
    // sh is written again by the next image of the caller's loop.
    __syncthreads();
    return out;
}
#endif

#endif  // GD_REDUCE_CUH
