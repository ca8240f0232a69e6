// driver.cpp -- a stand-alone process that runs launches of one simulated module.
//
// Linked with a module's wrappers (the gdsim_table) and built with a sanitizer
// (-fsanitize=thread or address), it runs what gpu_deconv._simulator.executor
// writes to the file argv[1]:
//   u32 nbuf, then per buffer: u64 nbytes, the bytes
//   u32 nlaunch, then per launch: u32 len, name, u32 grid[3], u32 block[3],
//       i32 reverse, i32 threaded, u32 nargs, per argument: u8 kind
//       (0: u32 buffer index; 1: u32 size, the scalar's bytes)
// and writes every buffer, in order, to the file argv[2]. Each buffer is its
// own heap block of exactly its size, so that AddressSanitizer sees any access
// outside it. Exit status: 0, 3 when a launch reports an error, 2 on bad input.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_host.h"

extern "C" const gdsim_entry gdsim_table[];
extern "C" const int gdsim_ntable;
extern "C" const char* gdsim_error();

static FILE* in;

static void rd(void* p, size_t n) {
    if (n && std::fread(p, 1, n, in) != n) {
        std::fprintf(stderr, "gdsim driver: truncated input\n");
        std::exit(2);
    }
}

template <class T>
static T rd() {
    T v;
    rd(&v, sizeof v);
    return v;
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    in = std::fopen(argv[1], "rb");
    if (!in) return 2;
    const uint32_t nbuf = rd<uint32_t>();
    std::vector<void*> bufs(nbuf);
    std::vector<uint64_t> sizes(nbuf);
    for (uint32_t i = 0; i < nbuf; ++i) {
        sizes[i] = rd<uint64_t>();
        bufs[i] = std::malloc(sizes[i] ? sizes[i] : 1);
        rd(bufs[i], sizes[i]);
    }
    const uint32_t nlaunch = rd<uint32_t>();
    int status = 0;
    for (uint32_t l = 0; l < nlaunch; ++l) {
        std::string name(rd<uint32_t>(), '\0');
        rd(&name[0], name.size());
        unsigned grid[3], block[3];
        rd(grid, sizeof grid);
        rd(block, sizeof block);
        const int reverse = rd<int32_t>(), threaded = rd<int32_t>();
        const uint32_t nargs = rd<uint32_t>();
        std::vector<std::vector<char>> scalars(nargs);
        std::vector<void*> ptrs(nargs);  // the pointer values of buffer arguments
        std::vector<void*> args(nargs);
        for (uint32_t a = 0; a < nargs; ++a) {
            const uint8_t kind = rd<uint8_t>();
            if (kind == 0) {
                const uint32_t b = rd<uint32_t>();
                if (b >= nbuf) return 2;
                ptrs[a] = bufs[b];
                args[a] = &ptrs[a];
            } else {
                scalars[a].resize(rd<uint32_t>());
                rd(scalars[a].data(), scalars[a].size());
                args[a] = scalars[a].data();
            }
        }
        const gdsim_entry* e = nullptr;
        for (int k = 0; k < gdsim_ntable; ++k)
            if (name == gdsim_table[k].name) e = &gdsim_table[k];
        if (!e) {
            std::fprintf(stderr, "gdsim driver: no kernel %s\n", name.c_str());
            return 2;
        }
        if (e->fn(grid, block, args.data(), reverse, threaded)) {
            std::fprintf(stderr, "gdsim driver: %s: %s\n", name.c_str(), gdsim_error());
            status = 3;
        }
    }
    FILE* out = std::fopen(argv[2], "wb");
    if (!out) return 2;
    for (uint32_t i = 0; i < nbuf; ++i) {
        if (sizes[i]) std::fwrite(bufs[i], 1, sizes[i], out);
        std::free(bufs[i]);
    }
    std::fclose(out);
    return status;
}
