// cuda_host.h -- run CUDA C++ kernels on the host: the grid executor of the gpu_deconv simulator.
//
// Force-included (g++ -include cuda_host.h) in front of a real kernels/*.cu
// file. It maps what those sources use of CUDA onto the host compiler:
//   __global__ / __device__ / __host__ / __forceinline__   plain (inline) functions;
//   threadIdx / blockIdx / blockDim / gridDim              thread_local variables;
//   __shared__                                             `static`: one array per module,
//                                                          used by one block at a time;
//   __syncthreads()                                        a barrier among the threads of the block.
// A launch runs the blocks of the grid one after another (forward or reverse
// order, both legal CUDA schedules). A kernel that declares __shared__ runs
// each block on blockDim threads of a persistent pool, so that a missing
// barrier is a real data race (ThreadSanitizer reports it); any other kernel
// runs the threads of a block one after another on the calling thread (its
// threads cannot communicate, so the order is immaterial). Barrier misuse
// (some threads of a block at __syncthreads while others finished, or a
// __syncthreads in a kernel run serially) is detected and reported as an
// error of the launch.
//
// This proves the kernels' logic (indexing, grid-stride and image loops,
// barriers), not the device: no warps, no memory model beyond the barrier,
// no device limits except those checked by the Python side.
#ifndef GDSIM_CUDA_HOST_H
#define GDSIM_CUDA_HOST_H

#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <csetjmp>
#include <ucontext.h>
#include <vector>

// What gd_common.cuh tests to see device code (grid-stride helpers, block reductions).
#ifndef __CUDACC__
#define __CUDACC__ 1
#endif
#define __host__
#define __device__
#define __forceinline__ inline
#ifndef __global__
#define __global__
#endif
#ifndef __shared__
#define __shared__ static
#endif

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

inline thread_local uint3 threadIdx = {0, 0, 0};
inline thread_local uint3 blockIdx = {0, 0, 0};
inline thread_local dim3 blockDim = {1, 1, 1};
inline thread_local dim3 gridDim = {1, 1, 1};

namespace gdsim {

enum { ARRIVE_SYNC = 1, ARRIVE_BLOCK_END = 2 };

// Set when the current launch misuses a barrier (first message wins).
inline std::mutex error_mutex;
inline std::string error;

inline void set_error(const std::string& msg) {
    std::lock_guard<std::mutex> l(error_mutex);
    if (error.empty()) error = msg;
}

// A reusable barrier that also checks that every thread arrives for the same
// reason. Waiting is a futex wait on the generation (C++20 atomic wait), so a
// release wakes the waiters without a mutex for them to queue on.
struct Barrier {
    int n = 0;
    std::atomic<int> count{0}, kind{0};
    std::atomic<unsigned> gen{0};
    std::atomic<bool> broken{false};

    void reset(int nthreads) {
        n = nthreads;
        count.store(0);
        kind.store(0);
        broken.store(false);
    }

    void arrive(int k) {
        if (broken.load(std::memory_order_acquire)) return;
        const unsigned g = gen.load(std::memory_order_acquire);
        int expected = 0;
        if (!kind.compare_exchange_strong(expected, k, std::memory_order_acq_rel) && expected != k) {
            broken.store(true, std::memory_order_release);  // release everyone: the launch failed
            gen.fetch_add(1, std::memory_order_acq_rel);
            gen.notify_all();
            set_error("barrier divergence: some threads of a block reached __syncthreads() while "
                      "others had finished the block");
            return;
        }
        if (count.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
            count.store(0, std::memory_order_relaxed);
            kind.store(0, std::memory_order_relaxed);
            gen.fetch_add(1, std::memory_order_acq_rel);
            gen.notify_all();
            return;
        }
        for (;;) {
            gen.wait(g, std::memory_order_acquire);
            if (gen.load(std::memory_order_acquire) != g) return;
        }
    }
};

// blockDim threads that run one launch's blocks in step.
inline thread_local bool in_pool = false;  // a pool thread (kernels that may synchronise)

struct Pool {
    std::vector<std::thread> threads;
    std::atomic<unsigned> job{0};
    std::atomic<int> done{0};
    std::atomic<bool> quit{false};
    const std::function<void()>* body = nullptr;
    dim3 grid{1, 1, 1}, block{1, 1, 1};
    int reverse = 0;
    Barrier bar;

    int size() const { return (int)threads.size(); }

    void start(int n) {
        stop();
        quit.store(false);
        bar.reset(n);
        const unsigned first = job.load();  // each worker waits for the job after this
        for (int t = 0; t < n; ++t) threads.emplace_back([this, t, first] { worker(t, first); });
    }

    void stop() {
        quit.store(true, std::memory_order_release);
        job.fetch_add(1, std::memory_order_acq_rel);
        job.notify_all();
        for (auto& th : threads) th.join();
        threads.clear();
    }

    ~Pool() { stop(); }

    void worker(int t, unsigned seen) {
        in_pool = true;
        for (;;) {
            job.wait(seen, std::memory_order_acquire);
            const unsigned now = job.load(std::memory_order_acquire);
            if (now == seen) continue;
            seen = now;
            if (quit.load(std::memory_order_acquire)) return;
            run_blocks(t);
            if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == size()) done.notify_all();
        }
    }

    void run_blocks(int t) {
        blockDim = block;
        gridDim = grid;
        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
        for (unsigned long long k = 0; k < nb; ++k) {
            const unsigned long long kk = reverse ? nb - 1 - k : k;
            blockIdx = {(unsigned)(kk % grid.x), (unsigned)((kk / grid.x) % grid.y),
                        (unsigned)(kk / ((unsigned long long)grid.x * grid.y))};
            (*body)();
            bar.arrive(ARRIVE_BLOCK_END);
        }
    }

    void launch(const std::function<void()>& f, dim3 g, dim3 b, int rev) {
        const int n = (int)(b.x * b.y * b.z);
        if (size() != n) start(n);
        bar.reset(n);
        body = &f;
        grid = g;
        block = b;
        reverse = rev;
        done.store(0, std::memory_order_relaxed);
        job.fetch_add(1, std::memory_order_acq_rel);
        job.notify_all();
        for (;;) {
            const int d = done.load(std::memory_order_acquire);
            if (d == n) break;
            done.wait(d, std::memory_order_acquire);
        }
        body = nullptr;
    }
};

inline Pool pool;
inline std::mutex launch_mutex;

}  // namespace gdsim

namespace gdsim {

// The threads of one block as fibers on the calling thread: each runs until
// its __syncthreads() or its end, then the next one; a round in which some
// threads synchronise and others finish is a barrier divergence. The fibers
// are made once (ucontext) and switched with _setjmp/_longjmp, which saves no
// signal mask: far cheaper than waking blockDim OS threads at every barrier,
// with the same semantics short of data races (which the pool and
// ThreadSanitizer check).
enum { FIBER_RUNNING = 0, FIBER_AT_SYNC = 1, FIBER_DONE = 2 };
constexpr size_t FIBER_STACK = 128 * 1024;

struct JumpBuf {
    jmp_buf b;
};

struct Fibers {
    std::vector<ucontext_t> ctx;
    std::vector<std::vector<char>> stacks;
    std::vector<JumpBuf> jb;
    std::vector<char> started;
    std::vector<int> state;
    jmp_buf sched;
    int current = -1;
    const std::function<void()>* body = nullptr;

    static void entry();

    void resume(unsigned t) {
        current = (int)t;
        if (_setjmp(sched) == 0) {
            if (!started[t]) {
                started[t] = 1;
                ucontext_t here;  // abandoned: the fiber comes back by _longjmp
                swapcontext(&here, &ctx[t]);
            } else {
                _longjmp(jb[t].b, 1);
            }
        }
    }

    void run_block(const std::function<void()>& f, dim3 block, int reverse) {
        const unsigned nt = block.x * block.y * block.z;
        if (ctx.size() < nt) {
            ctx.resize(nt);
            stacks.resize(nt);
            jb.resize(nt);
            started.resize(nt, 0);
            for (unsigned t = 0; t < nt; ++t) {
                if (!stacks[t].empty()) continue;
                stacks[t].resize(FIBER_STACK);
                getcontext(&ctx[t]);
                ctx[t].uc_stack.ss_sp = stacks[t].data();
                ctx[t].uc_stack.ss_size = stacks[t].size();
                ctx[t].uc_link = nullptr;
                makecontext(&ctx[t], entry, 0);
            }
        }
        state.assign(nt, FIBER_RUNNING);
        body = &f;
        for (;;) {
            int at_sync = 0, done = 0;
            for (unsigned i = 0; i < nt; ++i) {
                const unsigned t = reverse ? nt - 1 - i : i;
                if (state[t] == FIBER_DONE) continue;
                state[t] = FIBER_RUNNING;
                threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                resume(t);
                if (state[t] == FIBER_AT_SYNC) ++at_sync; else ++done;
            }
            if (at_sync == 0) break;
            if (done)
                set_error("barrier divergence: some threads of a block reached __syncthreads() while "
                          "others had finished the block");
        }
        current = -1;
    }

    // The calling fiber gives the hand back to the scheduler.
    void yield(int why) {
        const int me = current;
        state[me] = why;
        if (_setjmp(jb[me].b) == 0) _longjmp(sched, 1);
    }
};

inline thread_local Fibers fibers;
inline thread_local bool in_fiber = false;

// A fiber runs the kernel body once per block it is resumed for, forever.
inline void Fibers::entry() {
    for (;;) {
        (*fibers.body)();
        fibers.yield(FIBER_DONE);
    }
}

}  // namespace gdsim

inline void __syncthreads() {
    if (gdsim::in_fiber) {
        gdsim::fibers.yield(gdsim::FIBER_AT_SYNC);
        return;
    }
    if (!gdsim::in_pool) {
        gdsim::set_error("__syncthreads() in a kernel run serially (it declares no __shared__ array)");
        return;
    }
    gdsim::pool.bar.arrive(gdsim::ARRIVE_SYNC);
}

namespace gdsim {

template <class T>
inline T arg(void** args, int i) {
    return *static_cast<T*>(args[i]);
}

// Run `body` over the grid: serially on this thread (threaded = 0), on the pool
// of OS threads (1), or as fibers on this thread (2).
// Returns 0, or 1 with the message in gdsim_error().
inline int launch(const unsigned* g, const unsigned* b, int reverse, int threaded,
                  const std::function<void()>& body) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    {
        std::lock_guard<std::mutex> l(error_mutex);
        error.clear();
    }
    const dim3 grid{g[0], g[1], g[2]}, block{b[0], b[1], b[2]};
    if (threaded == 1) {
        pool.launch(body, grid, block, reverse);
    } else if (threaded == 2) {
        blockDim = block;
        gridDim = grid;
        in_fiber = true;
        const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
        for (unsigned long long k = 0; k < nb; ++k) {
            const unsigned long long kk = reverse ? nb - 1 - k : k;
            blockIdx = {(unsigned)(kk % grid.x), (unsigned)((kk / grid.x) % grid.y),
                        (unsigned)(kk / ((unsigned long long)grid.x * grid.y))};
            fibers.run_block(body, block, reverse);
        }
        in_fiber = false;
    } else {
        blockDim = block;
        gridDim = grid;
        const unsigned long long nb = (unsigned long long)grid.x * grid.y * grid.z;
        const unsigned nt = block.x * block.y * block.z;
        for (unsigned long long k = 0; k < nb; ++k) {
            const unsigned long long kk = reverse ? nb - 1 - k : k;
            blockIdx = {(unsigned)(kk % grid.x), (unsigned)((kk / grid.x) % grid.y),
                        (unsigned)(kk / ((unsigned long long)grid.x * grid.y))};
            for (unsigned t = 0; t < nt; ++t) {
                const unsigned tt = reverse ? nt - 1 - t : t;
                threadIdx = {tt % block.x, (tt / block.x) % block.y, tt / (block.x * block.y)};
                body();
            }
        }
    }
    std::lock_guard<std::mutex> l(error_mutex);
    return error.empty() ? 0 : 1;
}

}  // namespace gdsim

// One exported launch entry of a module (the table the sanitizer driver searches).
struct gdsim_entry {
    const char* name;
    int (*fn)(const unsigned* grid, const unsigned* block, void** args, int reverse, int threaded);
};

#endif  // GDSIM_CUDA_HOST_H
