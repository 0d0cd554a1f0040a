// Runs our CUDA kernels on the CPU, for tests on machines without a GPU: every block runs
// after the other, each of its threads as an OS thread, with __syncthreads a barrier over
// the block and warp shuffles a barrier over the warp. Slow, but each kernel's indexing,
// reductions and rounding run as written. Include it before the kernel source, compiled
// as C++20 with -DBORSCHT_EMULATE.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
// Blocks run one at a time, so one static copy serves every block in turn.
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emulate {
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline float warp_values[32][32];
inline std::vector<float> dynamic_shared;

template <typename T> T *shared_memory() { return reinterpret_cast<T *>(dynamic_shared.data()); }

// Launches `kernel(args...)` over `grid` blocks of `block` threads with `shared_bytes` of
// dynamic shared memory per block.
template <typename Kernel, typename... Args>
void launch(unsigned grid, unsigned block, size_t shared_bytes, Kernel kernel, Args... args) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    block_barrier = std::make_unique<std::barrier<>>(block);
    warp_barriers.clear();
    for (unsigned w = 0; w < (block + 31) / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
    for (unsigned b = 0; b < grid; ++b) {
        dynamic_shared.assign(shared_bytes / sizeof(float) + 1, NAN);
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([=] {
                threadIdx = {t, 0, 0};
                blockIdx = {b, 0, 0};
                kernel(args...);
            });
        }
        for (auto &thread : threads) thread.join();
    }
}
}  // namespace emulate

#define DYNAMIC_SHARED(type, name) type *name = emulate::shared_memory<type>()

inline void __syncthreads() { emulate::block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float value, int offset) {
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    emulate::warp_values[warp][lane] = value;
    emulate::warp_barriers[warp]->arrive_and_wait();
    const float other = emulate::warp_values[warp][lane ^ offset];
    emulate::warp_barriers[warp]->arrive_and_wait();
    return other;
}

// The two half-precision types with CUDA's round-to-nearest-even conversions.
struct __half {
    _Float16 value;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
inline float __half2float(__half h) { return static_cast<float>(h.value); }
inline __half __float2half(float f) { return __half{static_cast<_Float16>(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t bits = static_cast<uint32_t>(b.bits) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (std::isnan(f)) return __nv_bfloat16{0x7fc0};
    bits += 0x7fff + ((bits >> 16) & 1);
    return __nv_bfloat16{static_cast<uint16_t>(bits >> 16)};
}
