// Row kernels of the model, written once. Each per-row (or per-element) body is a UOE_HD inline
// function, so the GPU path (CUDA kernels, one row per block/warp) calls the very arithmetic the
// CPU tests exercise; the CPU loops over rows live in kernels.cpp. Shapes use the model's names:
// N rows (tokens), C columns (channels), V vocabulary. Gradients take a `d` prefix and backward
// kernels ACCUMULATE (+=) into input gradients, as in llm.c, so residual branches add up.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "runtime/rng.hpp"  // UOE_HD

namespace uoe {

constexpr float kLayerNormEps = 1e-5f;

// ---- vectorisable elementary functions ----
// libm's expf/erff are calls the compiler cannot vectorise without -ffast-math (which the reference
// path forbids), and they dominated the step profile (GELU, softmax, cross-entropy). These are
// straight-line float arithmetic that GCC turns into AVX-512 loops; their accuracy is tested
// against libm in test_kernels.cpp.

// e^x: Cody–Waite reduction x = n·ln2 + r, |r| ≤ ln2/2, then Cephes' degree-7 polynomial for e^r
// (≈ 2 ulp), scaled by 2^n built in the exponent bits. Inputs are clamped to [−87.3, 88.7]: below,
// the result is ≈ 1e-38 instead of a denormal or 0 (harmless for softmax weights).
UOE_HD inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  // Round x·log2(e) to nearest with the 1.5·2^23 trick (exact for |v| < 2^22; no rint call).
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;  // ln2 split in two for an exact product with n
  r = r + n * 2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
#ifdef __CUDA_ARCH__
  scale = __int_as_float(bits);
#else
  std::memcpy(&scale, &bits, sizeof scale);
#endif
  return p * scale;
}

// erf(x): Abramowitz & Stegun 7.1.26, |error| ≤ 1.5e-7 (about float epsilon near 1).
UOE_HD inline float erf_approx(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_approx(-ax * ax);
  return x < 0.0f ? -y : y;
}

// ---- per-row bodies (host and device) ----

// out = (x - mean) * rstd * weight + bias; returns mean and rstd for the backward pass.
UOE_HD inline void layernorm_row_forward(float* out, float* mean_out, float* rstd_out,
                                         const float* x, const float* weight, const float* bias, int C) {
  float m = 0.0f;
  for (int i = 0; i < C; ++i) m += x[i];
  m /= static_cast<float>(C);
  float v = 0.0f;
  for (int i = 0; i < C; ++i) {
    const float d = x[i] - m;
    v += d * d;
  }
  v /= static_cast<float>(C);
  const float s = 1.0f / sqrtf(v + kLayerNormEps);
  for (int i = 0; i < C; ++i) out[i] = (x[i] - m) * s * weight[i] + bias[i];
  *mean_out = m;
  *rstd_out = s;
}

// dx += LN'ᵀ dout; dweight/dbias += this row's contribution.
UOE_HD inline void layernorm_row_backward(float* dx, float* dweight, float* dbias, const float* dout,
                                          const float* x, const float* weight, float mean, float rstd,
                                          int C) {
  float sum_dn = 0.0f, sum_dn_n = 0.0f;  // Σ dnorm, Σ dnorm·norm
  for (int i = 0; i < C; ++i) {
    const float n = (x[i] - mean) * rstd;
    const float dn = dout[i] * weight[i];
    sum_dn += dn;
    sum_dn_n += dn * n;
  }
  sum_dn /= static_cast<float>(C);
  sum_dn_n /= static_cast<float>(C);
  for (int i = 0; i < C; ++i) {
    const float n = (x[i] - mean) * rstd;
    const float dn = dout[i] * weight[i];
    dbias[i] += dout[i];
    dweight[i] += dout[i] * n;
    dx[i] += (dn - sum_dn - n * sum_dn_n) * rstd;
  }
}

// In-place softmax of one row of length n; returns log-sum-exp of the input row.
UOE_HD inline float softmax_row(float* x, int n) {
  float mx = x[0];
  for (int i = 1; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  float s = 0.0f;
  for (int i = 0; i < n; ++i) x[i] = exp_approx(x[i] - mx);
  for (int i = 0; i < n; ++i) s += x[i];
  const float inv = 1.0f / s;
  for (int i = 0; i < n; ++i) x[i] *= inv;
  return mx + logf(s);
}

// dx = p ⊙ (dp − Σ p⊙dp): backward of softmax, given its output p and the output gradient dp.
UOE_HD inline void softmax_row_backward(float* dx, const float* p, const float* dp, int n) {
  float dot = 0.0f;
  for (int i = 0; i < n; ++i) dot += p[i] * dp[i];
  for (int i = 0; i < n; ++i) dx[i] = p[i] * (dp[i] - dot);
}

// GELU, erf form (torch.nn.GELU()'s default), with erf to 1.5e-7.
UOE_HD inline float gelu(float x) { return 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752f)); }
UOE_HD inline float gelu_grad(float x) {
  const float cdf = 0.5f * (1.0f + erf_approx(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * exp_approx(-0.5f * x * x);
  return cdf + x * pdf;
}

// RoPE angle table for positions [0, T) and dh = 2·half dims: cos/sin [T, half] of
// pos · 10000^(−i/half) (rotate-half pairing: dim i with i + half). Computed in double once.
void rope_table(float* cos_out, float* sin_out, int T, int half);

// RoPE on one head vector with that position's table row (cos_t/sin_t [half]). inverse = true
// applies the transpose rotation (the backward pass).
UOE_HD inline void rope_row(float* v, int half, const float* cos_t, const float* sin_t, bool inverse) {
  for (int i = 0; i < half; ++i) {
    const float c = cos_t[i];
    const float s = inverse ? -sin_t[i] : sin_t[i];
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

// Top-k of one row of n scores: writes indices in descending score order; ties go to the lower
// index (strict > comparison while scanning upward). k ≤ n.
UOE_HD inline void topk_row(int* idx, const float* x, int n, int k) {
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int i = 0; i < n; ++i) {
      bool taken = false;
      for (int q = 0; q < j; ++q) taken = taken || (idx[q] == i);
      if (taken) continue;
      if (best < 0 || x[i] > x[best]) best = i;
    }
    idx[j] = best;
  }
}

// Cross-entropy of one row of logits against `target`: turns the row into probabilities in
// place and returns −log p[target].
UOE_HD inline float crossentropy_row_forward(float* logits, int V, int target) {
  const float lse = softmax_row(logits, V);
  (void)lse;
  const float p = logits[target];
  return -logf(p > 1e-30f ? p : 1e-30f);
}

// ---- CPU loops over rows ----

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int N, int C);  // out/x [N, C]; mean/rstd [N]
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int N, int C);
void gelu_forward(float* out, const float* x, int64_t n);
void gelu_backward(float* dx, const float* x, const float* dout, int64_t n);  // dx = dout·gelu'(x)
// out[i, :] = table[ids[i], :]  (out [N, C], table [rows, C])
void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C);
// table[ids[i], :] += scale · src[i, :], in order of i (deterministic)
void scatter_add_rows(float* table, const float* src, const int32_t* ids, int N, int C, float scale);
// Cross-entropy over N rows: logits [N, V] become dlogits = (softmax − onehot)·grad_scale in
// place; returns Σ −log p[target] (summed in double, in row order).
double crossentropy_forward_backward(float* logits, const int32_t* targets, int N, int V, float grad_scale);
// Loss only (logits overwritten with probabilities).
double crossentropy_forward(float* logits, const int32_t* targets, int N, int V);

}  // namespace uoe
