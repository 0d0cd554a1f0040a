// Runs every kernel of transformer.cu on the CPU (emulate.h) in f32, f16 and bf16, with
// the launch shapes of src/model/cuda_kernels.rs, against plain double-precision loops.
// Built and run by backend/tests/cuda_kernels.rs; exits 1 when a kernel is off.
#include <math.h>
#include <stdio.h>

#include <random>
#include <string>

#include "emulate.h"
#include "transformer.cu"

static bool all_ok = true;

// The launch shapes of src/model/cuda_kernels.rs.
static unsigned row_threads(size_t len) {
    size_t threads = (len + 31) / 32 * 32;
    return threads < 32 ? 32 : threads > 256 ? 256 : (unsigned)threads;
}
static unsigned element_blocks(size_t elements) {
    size_t blocks = (elements + 255) / 256;
    return blocks < 1 ? 1 : blocks > 65535 ? 65535 : (unsigned)blocks;
}

template <typename T> struct Name;
template <> struct Name<float> { static constexpr const char *value = "f32"; static constexpr double tolerance = 2e-5; };
template <> struct Name<__half> { static constexpr const char *value = "f16"; static constexpr double tolerance = 4e-3; };
template <> struct Name<__nv_bfloat16> { static constexpr const char *value = "bf16"; static constexpr double tolerance = 3e-2; };

template <typename T> std::vector<T> random_values(size_t n, unsigned seed, float scale, float offset = 0.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-scale, scale);
    std::vector<T> v(n);
    for (auto &x : v) x = from_f<T>(uniform(rng) + offset);
    return v;
}

template <typename T> std::vector<double> as_double(const std::vector<T> &v) {
    std::vector<double> d(v.size());
    for (size_t i = 0; i < v.size(); ++i) d[i] = to_f(v[i]);
    return d;
}

// Reports max |ours - expected| / max |expected| against the dtype's tolerance.
template <typename T> void check(const std::string &what, const std::vector<T> &ours, const std::vector<double> &expected) {
    double diff = 0.0, scale = 1e-12;
    for (size_t i = 0; i < expected.size(); ++i) {
        double o = to_f(ours[i]);
        diff = fmax(diff, isnan(o) ? INFINITY : fabs(o - expected[i]));
        scale = fmax(scale, fabs(expected[i]));
    }
    const double relative = diff / scale;
    const bool ok = relative <= Name<T>::tolerance;
    all_ok &= ok;
    printf("%-4s %-5s %-52s %.2e (<= %.0e)\n", ok ? "ok" : "FAIL", Name<T>::value, what.c_str(), relative, Name<T>::tolerance);
}

// The kernels' entry points, by dtype.
#define ENTRY(name)                                                                                                \
    template <typename T> struct name##_entry;                                                                    \
    template <> struct name##_entry<float> { static constexpr auto f = name##_f32; };                          \
    template <> struct name##_entry<__half> { static constexpr auto f = name##_f16; };                         \
    template <> struct name##_entry<__nv_bfloat16> { static constexpr auto f = name##_bf16; };
ENTRY(masked_softmax)
ENTRY(masked_softmax_backward)
ENTRY(residual_norm)
ENTRY(layer_norm)
ENTRY(layer_norm_backward)
ENTRY(gelu)
ENTRY(gelu_backward)
ENTRY(bias_gelu)
ENTRY(qkv_split)


template <typename T> void masked_softmax_case(int b, int h, int n, int t, int mb) {
    const size_t rows = (size_t)b * h * n;
    auto scores = random_values<T>(rows * t, 1, 6.0f);
    auto grad = random_values<T>(rows * t, 2, 1.0f);
    std::vector<T> mask((size_t)mb * n * t);
    std::mt19937 rng(3);
    for (size_t i = 0; i < mask.size(); ++i) mask[i] = from_f<T>(rng() % 4 != 0 ? 1.0f : 0.0f);
    std::vector<T> probs(rows * t), dscores(rows * t);
    emulate::launch(rows, row_threads(t), 0, masked_softmax_entry<T>::f, scores.data(), mask.data(), probs.data(), t, h, n, mb);
    emulate::launch(rows, row_threads(t), 0, masked_softmax_backward_entry<T>::f, probs.data(), grad.data(), mask.data(),
                    dscores.data(), t, h, n, mb);
    std::vector<double> want(rows * t), want_grad(rows * t);
    for (size_t r = 0; r < rows; ++r) {
        const size_t sample = mb == 1 ? 0 : r / ((size_t)h * n), position = r % n;
        const T *m = mask.data() + (sample * n + position) * t;
        double mx = -INFINITY, sum = 0.0, dot = 0.0;
        std::vector<double> v(t);
        for (int c = 0; c < t; ++c) {
            const double mc = to_f(m[c]);
            v[c] = to_f(scores[r * t + c]) * mc - 10000.0 * (1.0 - mc);
            mx = fmax(mx, v[c]);
        }
        for (int c = 0; c < t; ++c) sum += exp(v[c] - mx);
        for (int c = 0; c < t; ++c) want[r * t + c] = exp(v[c] - mx) / sum;
        // The backward from our own probabilities, as the op's backward takes them.
        for (int c = 0; c < t; ++c) dot += to_f(probs[r * t + c]) * to_f(grad[r * t + c]);
        for (int c = 0; c < t; ++c) {
            want_grad[r * t + c] = to_f(m[c]) * to_f(probs[r * t + c]) * (to_f(grad[r * t + c]) - dot);
        }
    }
    const std::string shape = "[" + std::to_string(b) + "," + std::to_string(h) + "," + std::to_string(n) + "," +
                              std::to_string(t) + "] mask batch " + std::to_string(mb);
    check("masked softmax " + shape, probs, want);
    check("masked softmax backward " + shape, dscores, want_grad);
}

static void layer_norm_ref(std::vector<double> &v, const double *w, const double *b, double eps) {
    double mean = 0.0, var = 0.0;
    for (double x : v) mean += x;
    mean /= v.size();
    for (double x : v) var += (x - mean) * (x - mean);
    var /= v.size();
    for (size_t c = 0; c < v.size(); ++c) v[c] = (v[c] - mean) / sqrt(var + eps) * w[c] + b[c];
}

template <typename T> void residual_norm_case(int rows, int h, bool bias, bool sandwich) {
    auto x = random_values<T>((size_t)rows * h, 4, 3.0f), y = random_values<T>((size_t)rows * h, 5, 3.0f);
    auto bv = random_values<T>(h, 6, 1.0f);
    auto wa = random_values<T>(h, 7, 0.3f, 1.0f), ba = random_values<T>(h, 8, 0.3f);
    auto wb = random_values<T>(h, 9, 0.3f, 1.0f), bb = random_values<T>(h, 10, 0.3f);
    std::vector<T> r_out((size_t)rows * h), n_out((size_t)rows * h);
    emulate::launch(rows, row_threads(h), h * 4, residual_norm_entry<T>::f, x.data(), y.data(), bias ? bv.data() : nullptr,
                    sandwich ? wa.data() : nullptr, sandwich ? ba.data() : nullptr, wb.data(), bb.data(), r_out.data(),
                    n_out.data(), h, 1e-5f);
    auto dwa = as_double(wa), dba = as_double(ba), dwb = as_double(wb), dbb = as_double(bb);
    std::vector<double> want_r((size_t)rows * h), want_n((size_t)rows * h);
    for (int r = 0; r < rows; ++r) {
        std::vector<double> a(h);
        for (int c = 0; c < h; ++c) a[c] = to_f(y[(size_t)r * h + c]) + (bias ? to_f(bv[c]) : 0.0);
        if (sandwich) layer_norm_ref(a, dwa.data(), dba.data(), 1e-5);
        for (int c = 0; c < h; ++c) a[c] += to_f(x[(size_t)r * h + c]);
        for (int c = 0; c < h; ++c) want_r[(size_t)r * h + c] = a[c];
        layer_norm_ref(a, dwb.data(), dbb.data(), 1e-5);
        for (int c = 0; c < h; ++c) want_n[(size_t)r * h + c] = a[c];
    }
    const std::string what = "residual norm h=" + std::to_string(h) + (bias ? " +bias" : "") + (sandwich ? " +sandwich" : "");
    check(what + ": residual", r_out, want_r);
    check(what + ": norm", n_out, want_n);
}

template <typename T> void layer_norm_case(int rows, int h) {
    auto x = random_values<T>((size_t)rows * h, 11, 2.0f, 0.5f), g = random_values<T>((size_t)rows * h, 12, 1.0f);
    auto w = random_values<T>(h, 13, 0.5f, 1.0f), b = random_values<T>(h, 14, 0.5f);
    std::vector<T> out((size_t)rows * h), dx((size_t)rows * h), gxhat((size_t)rows * h);
    emulate::launch(rows, row_threads(h), h * 4, layer_norm_entry<T>::f, x.data(), w.data(), b.data(), out.data(), h, 1e-5f);
    emulate::launch(rows, row_threads(h), h * 4, layer_norm_backward_entry<T>::f, x.data(), w.data(), g.data(), dx.data(),
                    gxhat.data(), h, 1e-5f);
    auto dw = as_double(w), db = as_double(b);
    std::vector<double> want((size_t)rows * h), want_dx((size_t)rows * h), want_gxhat((size_t)rows * h);
    for (int r = 0; r < rows; ++r) {
        std::vector<double> v(h);
        for (int c = 0; c < h; ++c) v[c] = to_f(x[(size_t)r * h + c]);
        double mean = 0.0, var = 0.0;
        for (double e : v) mean += e;
        mean /= h;
        for (double e : v) var += (e - mean) * (e - mean);
        const double rstd = 1.0 / sqrt(var / h + 1e-5);
        double mean_gw = 0.0, mean_gw_xhat = 0.0;
        for (int c = 0; c < h; ++c) {
            const double xhat = (v[c] - mean) * rstd, gc = to_f(g[(size_t)r * h + c]);
            want[(size_t)r * h + c] = xhat * dw[c] + db[c];
            mean_gw += gc * dw[c] / h;
            mean_gw_xhat += gc * dw[c] * xhat / h;
            want_gxhat[(size_t)r * h + c] = gc * xhat;
        }
        for (int c = 0; c < h; ++c) {
            const double xhat = (v[c] - mean) * rstd, gc = to_f(g[(size_t)r * h + c]);
            want_dx[(size_t)r * h + c] = rstd * (gc * dw[c] - mean_gw - xhat * mean_gw_xhat);
        }
    }
    const std::string what = "layer norm h=" + std::to_string(h);
    check(what, out, want);
    check(what + " backward: dx", dx, want_dx);
    check(what + " backward: g * xhat", gxhat, want_gxhat);
}

static double gelu_ref(double v) { return 0.5 * v * (1.0 + tanh(sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v))); }

template <typename T> void gelu_case(size_t elements, int cols) {
    auto x = random_values<T>(elements, 15, 4.0f), g = random_values<T>(elements, 16, 1.0f);
    auto bias = random_values<T>(cols, 17, 1.0f);
    std::vector<T> out(elements), dx(elements), biased(elements);
    emulate::launch(element_blocks(elements), 256, 0, gelu_entry<T>::f, x.data(), out.data(), (int64_t)elements);
    emulate::launch(element_blocks(elements), 256, 0, gelu_backward_entry<T>::f, x.data(), g.data(), dx.data(), (int64_t)elements);
    emulate::launch(element_blocks(elements), 256, 0, bias_gelu_entry<T>::f, x.data(), bias.data(), biased.data(),
                    (int64_t)elements, cols);
    std::vector<double> want(elements), want_dx(elements), want_biased(elements);
    for (size_t i = 0; i < elements; ++i) {
        const double v = to_f(x[i]), h = 1e-4;
        want[i] = gelu_ref(v);
        want_dx[i] = to_f(g[i]) * (gelu_ref(v + h) - gelu_ref(v - h)) / (2 * h);
        want_biased[i] = gelu_ref(v + to_f(bias[i % cols]));
    }
    check("gelu", out, want);
    check("gelu backward", dx, want_dx);
    check("bias + gelu", biased, want_biased);
}

template <typename T> void qkv_split_case() {
    const int b = 2, n = 3, heads = 4, d = 8, capacity = 16, cache_b = 3;
    const uint32_t position = 5;
    const size_t hd = (size_t)heads * d;
    auto qkv = random_values<T>((size_t)b * n * 3 * hd, 18, 2.0f), bias = random_values<T>(3 * hd, 19, 0.5f);
    std::vector<T> q((size_t)b * heads * n * d), kv((size_t)2 * cache_b * heads * capacity * d, from_f<T>(0.0f));
    emulate::launch(element_blocks(qkv.size()), 256, 0, qkv_split_entry<T>::f, qkv.data(), bias.data(), q.data(), kv.data(),
                    &position, b, n, heads, d, capacity, cache_b, 0.125f);
    std::vector<double> want_q(q.size()), want_kv(kv.size(), 0.0);
    for (int s = 0; s < b; ++s)
        for (int t = 0; t < n; ++t)
            for (int part = 0; part < 3; ++part)
                for (int hh = 0; hh < heads; ++hh)
                    for (int e = 0; e < d; ++e) {
                        const size_t feature = part * hd + hh * d + e;
                        const double v = to_f(qkv[((size_t)s * n + t) * 3 * hd + feature]) + to_f(bias[feature]);
                        if (part == 0) {
                            want_q[(((size_t)s * heads + hh) * n + t) * d + e] = v * 0.125;
                        } else {
                            want_kv[((((size_t)(part - 1) * cache_b + s) * heads + hh) * capacity + position + t) * d + e] = v;
                        }
                    }
    check("qkv split: q", q, want_q);
    check("qkv split: k and v at the position, the rest untouched", kv, want_kv);
}

template <typename T> void all_cases() {
    masked_softmax_case<T>(2, 3, 4, 37, 1);
    masked_softmax_case<T>(2, 3, 1, 300, 2);
    residual_norm_case<T>(5, 100, true, true);
    residual_norm_case<T>(3, 600, false, false);
    layer_norm_case<T>(4, 70);
    gelu_case<T>(1000, 37);
    qkv_split_case<T>();
}

int main() {
    all_cases<float>();
    all_cases<__half>();
    all_cases<__nv_bfloat16>();
    printf(all_ok ? "all kernels ok\n" : "some kernels are off\n");
    return all_ok ? 0 : 1;
}
