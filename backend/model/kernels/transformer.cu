// Fused CUDA kernels of the RUDOLPH decoder (see backend/src/model/fused.rs, which wraps
// each as a candle custom op whose CPU path is the composite it replaces).
//
// Every kernel reads and writes the model's dtype (f32, f16, bf16) and computes in f32,
// rounding to the dtype exactly where the op-by-op path rounds, so the fused and the
// composite paths differ only in the order of sums.
//
// Built to PTX by backend/build.rs (feature `cuda`); `nvcc -ptx` of this file also runs in
// the test suite, so a kernel that does not compile never lands.

#ifndef BORSCHT_EMULATE
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
// Per-block memory sized at launch (emulate.h, for the CPU test, gives each block its own).
#define DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

#define MASK_VALUE 10000.0f
#define WARP 32

__device__ __forceinline__ float gelu_tanh(float v);

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Rounds an f32 value to the dtype and back: where the op-by-op path stores a tensor.
template <typename T> __device__ __forceinline__ float round_to(float v) { return to_f(from_f<T>(v)); }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffff, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, offset));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ float block_sum(float v) {
    __shared__ float partial[WARP];
    __shared__ float total;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < blockDim.x / WARP ? partial[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    const float result = total;
    __syncthreads();  // partial/total are reused by the next call
    return result;
}

__device__ float block_max(float v) {
    __shared__ float partial[WARP];
    __shared__ float total;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_max(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < blockDim.x / WARP ? partial[lane] : -INFINITY;
        w = warp_max(w);
        if (lane == 0) total = w;
    }
    __syncthreads();
    const float result = total;
    __syncthreads();
    return result;
}

// ---------------------------------------------------------------------------------------
// Masked softmax: softmax(scores * m - 10000 * (1 - m)) over the last dim, one block a row.
// scores/out: [b, h, n, t]; mask: [mb (1 or b), 1, n, t] of 0/1, read in place (no copy
// spread to the scores' shape).

template <typename T>
__device__ void masked_softmax(const T *scores, const T *mask, T *out, int t, int h, int n, int mb) {
    const int64_t row = blockIdx.x;
    const int64_t sample = mb == 1 ? 0 : row / ((int64_t)h * n);
    const int64_t position = row % n;
    const T *s = scores + row * t;
    const T *m = mask + (sample * n + position) * t;
    T *o = out + row * t;
    float mx = -INFINITY;
    for (int c = threadIdx.x; c < t; c += blockDim.x) {
        const float v = to_f(m[c]) != 0.0f ? to_f(s[c]) : -MASK_VALUE;
        mx = fmaxf(mx, v);
    }
    mx = block_max(mx);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < t; c += blockDim.x) {
        const float v = to_f(m[c]) != 0.0f ? to_f(s[c]) : -MASK_VALUE;
        sum += expf(v - mx);
    }
    const float inv = 1.0f / block_sum(sum);
    for (int c = threadIdx.x; c < t; c += blockDim.x) {
        const float v = to_f(m[c]) != 0.0f ? to_f(s[c]) : -MASK_VALUE;
        o[c] = from_f<T>(expf(v - mx) * inv);
    }
}

// d scores = m * p * (g - sum(p * g)), one block a row.
template <typename T>
__device__ void masked_softmax_backward(const T *probs, const T *grad, const T *mask, T *out, int t, int h, int n,
                                        int mb) {
    const int64_t row = blockIdx.x;
    const int64_t sample = mb == 1 ? 0 : row / ((int64_t)h * n);
    const int64_t position = row % n;
    const T *p = probs + row * t;
    const T *g = grad + row * t;
    const T *m = mask + (sample * n + position) * t;
    T *o = out + row * t;
    float dot = 0.0f;
    for (int c = threadIdx.x; c < t; c += blockDim.x) dot += to_f(p[c]) * to_f(g[c]);
    dot = block_sum(dot);
    for (int c = threadIdx.x; c < t; c += blockDim.x) o[c] = from_f<T>(to_f(m[c]) * to_f(p[c]) * (to_f(g[c]) - dot));
}

// ---------------------------------------------------------------------------------------
// Residual + sandwich LayerNorms, one block a row of h features (h floats of shared memory):
//   a = y + bias                 (when bias is given)
//   a = LN_a(a)                  (when the sandwich norm is given)
//   r = x + a                    -> r_out
//   n = LN_b(r)                  -> n_out
// What a RUDOLPH layer does between its attention (or MLP) output and the next block's
// input, in one pass instead of five ops.

template <typename T>
__device__ void normalise_row(float *v, int h, float eps, const T *w, const T *b) {
    float sum = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) sum += v[c];
    const float mean = block_sum(sum) / h;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) sq += (v[c] - mean) * (v[c] - mean);
    const float rstd = 1.0f / sqrtf(block_sum(sq) / h + eps);
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        v[c] = round_to<T>((v[c] - mean) * rstd * to_f(w[c]) + to_f(b[c]));
    }
    __syncthreads();
}

template <typename T>
__device__ void residual_norm(const T *x, const T *y, const T *bias, const T *wa, const T *ba, const T *wb,
                              const T *bb, T *r_out, T *n_out, int h, float eps) {
    DYNAMIC_SHARED(float, row_values);
    const int64_t row = blockIdx.x;
    const T *xr = x + row * h;
    const T *yr = y + row * h;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        float v = to_f(yr[c]);
        if (bias != nullptr) v = round_to<T>(v + to_f(bias[c]));
        row_values[c] = v;
    }
    __syncthreads();
    if (wa != nullptr) normalise_row<T>(row_values, h, eps, wa, ba);
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const float r = round_to<T>(to_f(xr[c]) + row_values[c]);
        row_values[c] = r;
        r_out[row * h + c] = from_f<T>(r);
    }
    __syncthreads();
    normalise_row<T>(row_values, h, eps, wb, bb);
    for (int c = threadIdx.x; c < h; c += blockDim.x) n_out[row * h + c] = from_f<T>(row_values[c]);
}

// ---------------------------------------------------------------------------------------
// Bias + tanh GELU (the reference's gelu_jit), element-wise over [rows, cols].

template <typename T>
__device__ void bias_gelu(const T *x, const T *bias, T *out, int64_t elements, int cols) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < elements; i += (int64_t)gridDim.x * blockDim.x) {
        out[i] = from_f<T>(gelu_tanh(round_to<T>(to_f(x[i]) + to_f(bias[i % cols]))));
    }
}

// ---------------------------------------------------------------------------------------
// The attention's q/k/v split: qkv [b, n, 3, heads, d] (+ bias [3 * heads * d]) gives
// q [b, heads, n, d] (times q_scale, PB-relax's 1/sqrt(d)) and writes k and v into the KV
// cache kv [2, cache_b, heads, capacity, d] at positions position[0] .. position[0] + n,
// where position lives in device memory (a captured CUDA graph replays with new values).

template <typename T>
__device__ void qkv_split(const T *qkv, const T *bias, T *q, T *kv, const uint32_t *position, int b, int n, int heads,
                          int d, int capacity, int cache_b, float q_scale) {
    const int64_t hd = (int64_t)heads * d;
    const int64_t elements = (int64_t)b * n * 3 * hd;
    const int64_t start = position[0];
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < elements; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t feature = i % (3 * hd);
        const int64_t token = i / (3 * hd);  // sample * n + t
        const int64_t sample = token / n, t = token % n;
        const int64_t part = feature / hd, head = (feature % hd) / d, dd = feature % d;
        float v = round_to<T>(to_f(qkv[i]) + to_f(bias[feature]));
        if (part == 0) {
            q[((sample * heads + head) * n + t) * d + dd] = from_f<T>(v * q_scale);
        } else {
            const int64_t slot = (((part - 1) * cache_b + sample) * heads + head) * capacity + start + t;
            kv[slot * d + dd] = from_f<T>(v);
        }
    }
}

// ---------------------------------------------------------------------------------------
// LayerNorm (torch's: biased variance, eps inside the root) with its backward, one block a
// row of h features, for training on the GPU (inference uses candle's forward kernel).

template <typename T>
__device__ void layer_norm(const T *x, const T *w, const T *b, T *out, int h, float eps) {
    DYNAMIC_SHARED(float, row_values);
    const int64_t row = blockIdx.x;
    for (int c = threadIdx.x; c < h; c += blockDim.x) row_values[c] = to_f(x[row * h + c]);
    __syncthreads();
    normalise_row<T>(row_values, h, eps, w, b);
    for (int c = threadIdx.x; c < h; c += blockDim.x) out[row * h + c] = from_f<T>(row_values[c]);
}

// dx = rstd * (g w - mean(g w) - xhat mean(g w xhat)); also g * xhat per element, whose
// column sums (taken by the caller) are the weight's gradient.
template <typename T>
__device__ void layer_norm_backward(const T *x, const T *w, const T *grad, T *dx, T *g_xhat, int h, float eps) {
    DYNAMIC_SHARED(float, row_values);
    const int64_t row = blockIdx.x;
    float sum = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        row_values[c] = to_f(x[row * h + c]);
        sum += row_values[c];
    }
    const float mean = block_sum(sum) / h;
    float sq = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) sq += (row_values[c] - mean) * (row_values[c] - mean);
    const float rstd = 1.0f / sqrtf(block_sum(sq) / h + eps);
    float gw_sum = 0.0f, gw_xhat_sum = 0.0f;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const float xhat = (row_values[c] - mean) * rstd;
        const float g = to_f(grad[row * h + c]);
        gw_sum += g * to_f(w[c]);
        gw_xhat_sum += g * to_f(w[c]) * xhat;
    }
    const float mean_gw = block_sum(gw_sum) / h;
    const float mean_gw_xhat = block_sum(gw_xhat_sum) / h;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const float xhat = (row_values[c] - mean) * rstd;
        const float g = to_f(grad[row * h + c]);
        dx[row * h + c] = from_f<T>(rstd * (g * to_f(w[c]) - mean_gw - xhat * mean_gw_xhat));
        g_xhat[row * h + c] = from_f<T>(g * xhat);
    }
}

// ---------------------------------------------------------------------------------------
// tanh GELU and its gradient, element-wise (training; inference fuses the bias in).

__device__ __forceinline__ float gelu_tanh(float v) {
    return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * v * (1.0f + 0.044715f * v * v)));
}

template <typename T>
__device__ void gelu(const T *x, T *out, int64_t elements) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < elements; i += (int64_t)gridDim.x * blockDim.x) {
        out[i] = from_f<T>(gelu_tanh(to_f(x[i])));
    }
}

template <typename T>
__device__ void gelu_backward(const T *x, const T *grad, T *out, int64_t elements) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < elements; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = to_f(x[i]);
        const float t = tanhf(0.7978845608028654f * v * (1.0f + 0.044715f * v * v));
        const float inner = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * v * v);
        out[i] = from_f<T>(to_f(grad[i]) * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * inner));
    }
}

// ---------------------------------------------------------------------------------------
// Instantiations, one symbol per dtype.

#define ROW_KERNELS(T, SUFFIX)                                                                                     \
    extern "C" __global__ void masked_softmax_##SUFFIX(const T *scores, const T *mask, T *out, int t, int h,     \
                                                       int n, int mb) {                                           \
        masked_softmax<T>(scores, mask, out, t, h, n, mb);                                                        \
    }                                                                                                              \
    extern "C" __global__ void masked_softmax_backward_##SUFFIX(const T *probs, const T *grad, const T *mask,     \
                                                                T *out, int t, int h, int n, int mb) {            \
        masked_softmax_backward<T>(probs, grad, mask, out, t, h, n, mb);                                          \
    }                                                                                                              \
    extern "C" __global__ void residual_norm_##SUFFIX(const T *x, const T *y, const T *bias, const T *wa,         \
                                                      const T *ba, const T *wb, const T *bb, T *r_out, T *n_out,  \
                                                      int h, float eps) {                                         \
        residual_norm<T>(x, y, bias, wa, ba, wb, bb, r_out, n_out, h, eps);                                       \
    }                                                                                                              \
    extern "C" __global__ void bias_gelu_##SUFFIX(const T *x, const T *bias, T *out, int64_t elements, int cols) { \
        bias_gelu<T>(x, bias, out, elements, cols);                                                               \
    }                                                                                                              \
    extern "C" __global__ void qkv_split_##SUFFIX(const T *qkv, const T *bias, T *q, T *kv,                       \
                                                  const uint32_t *position, int b, int n, int heads, int d,        \
                                                  int capacity, int cache_b, float q_scale) {                     \
        qkv_split<T>(qkv, bias, q, kv, position, b, n, heads, d, capacity, cache_b, q_scale);                     \
    }                                                                                                              \
    extern "C" __global__ void layer_norm_##SUFFIX(const T *x, const T *w, const T *b, T *out, int h, float eps) { \
        layer_norm<T>(x, w, b, out, h, eps);                                                                      \
    }                                                                                                              \
    extern "C" __global__ void layer_norm_backward_##SUFFIX(const T *x, const T *w, const T *grad, T *dx,         \
                                                            T *g_xhat, int h, float eps) {                        \
        layer_norm_backward<T>(x, w, grad, dx, g_xhat, h, eps);                                                   \
    }                                                                                                              \
    extern "C" __global__ void gelu_##SUFFIX(const T *x, T *out, int64_t elements) { gelu<T>(x, out, elements); } \
    extern "C" __global__ void gelu_backward_##SUFFIX(const T *x, const T *grad, T *out, int64_t elements) {      \
        gelu_backward<T>(x, grad, out, elements);                                                                 \
    }

ROW_KERNELS(float, f32)
ROW_KERNELS(__half, f16)
ROW_KERNELS(__nv_bfloat16, bf16)
