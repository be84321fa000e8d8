// Row kernels of the model, written once. Each per-row (or per-element) body is a UOE_HD inline
// function, so the GPU path (CUDA kernels, one row per block/warp) calls the very arithmetic the
// CPU tests exercise; the CPU loops over rows live in kernels.cpp. Shapes use the model's names:
// N rows (tokens), C columns (channels), V vocabulary. Gradients take a `d` prefix and backward
// kernels ACCUMULATE (+=) into input gradients, as in llm.c, so residual branches add up.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstddef>
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
// erf(x) given ex2 = e^(−x²) (exp_approx(−x·x)): callers that need e^(−x²) too share one exp.
UOE_HD inline float erf_from_exp(float x, float ex2) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * ex2;
  return x < 0.0f ? -y : y;
}
UOE_HD inline float erf_approx(float x) { return erf_from_exp(x, exp_approx(-x * x)); }

// ---- fixed-order sums that vectorise ----
// Without -ffast-math (forbidden here) a compiler must add `s += x[i]` one term at a time, in index
// order, and row reductions (LayerNorm, softmax, dot products) ran as scalar chains. sum_terms keeps
// kSumLanes partial sums (term i goes to lane i mod kSumLanes) and adds the lanes in a fixed tree at
// the end: one summation order on every machine, host and device, and an inner loop GCC turns into
// vector adds. term(i) is inlined (a lambda), so the terms themselves vectorise too.
constexpr int kSumLanes = 16;
// Rows shorter than kSumLanes (a router's E scores) are summed in index order: the lanes would only
// add zeros there.
template <class Term>
UOE_HD inline float sum_terms(int n, Term term) {
  if (n < kSumLanes) {
    float s = 0.0f;
    for (int i = 0; i < n; ++i) s += term(i);
    return s;
  }
  float acc[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l) acc[l] = 0.0f;
  int i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int l = 0; l < kSumLanes; ++l) acc[l] += term(i + l);
  for (int l = 0; i + l < n; ++l) acc[l] += term(i + l);
  for (int w = kSumLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}
// max of x[0..n), n ≥ 1, in lanes like sum_terms (a max is exact in any order; the lanes only let
// it vectorise).
UOE_HD inline float max_lanes(const float* x, int n) {
  if (n < kSumLanes) {
    float m = x[0];
    for (int i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
  }
  float acc[kSumLanes];
  for (int l = 0; l < kSumLanes; ++l) acc[l] = x[0];
  int i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int l = 0; l < kSumLanes; ++l) acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
  for (int l = 0; i + l < n; ++l) acc[l] = x[i + l] > acc[l] ? x[i + l] : acc[l];
  for (int w = kSumLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] = acc[l + w] > acc[l] ? acc[l + w] : acc[l];
  return acc[0];
}
// Σ a[i]·b[i] in sum_terms' order.
UOE_HD inline float dot_lanes(const float* a, const float* b, int n) {
  return sum_terms(n, [a, b](int i) { return a[i] * b[i]; });
}

// ---- per-row bodies (host and device) ----

// out = (x - mean) * rstd * weight + bias; returns mean and rstd for the backward pass.
UOE_HD inline void layernorm_row_forward(float* out, float* mean_out, float* rstd_out,
                                         const float* x, const float* weight, const float* bias, int C) {
  const float m = sum_terms(C, [x](int i) { return x[i]; }) / static_cast<float>(C);
  const float v = sum_terms(C, [x, m](int i) {
                    const float d = x[i] - m;
                    return d * d;
                  }) /
                  static_cast<float>(C);
  const float s = 1.0f / sqrtf(v + kLayerNormEps);
  for (int i = 0; i < C; ++i) out[i] = (x[i] - m) * s * weight[i] + bias[i];
  *mean_out = m;
  *rstd_out = s;
}

// dx += LN'ᵀ dout of one row (the row's mean and 1/std from forward).
// The arrays must not overlap (every caller passes distinct buffers); __restrict__ lets the
// compiler vectorise the update loop, which with several pointers it will not version for aliasing.
UOE_HD inline void layernorm_row_backward_input(float* __restrict__ dx, const float* __restrict__ dout,
                                                const float* __restrict__ x, const float* __restrict__ weight,
                                                float mean, float rstd, int C) {
  // mean of dnorm and of dnorm·norm
  const float sum_dn = sum_terms(C, [dout, weight](int i) { return dout[i] * weight[i]; }) / static_cast<float>(C);
  const float sum_dn_n = sum_terms(C, [dout, weight, x, mean, rstd](int i) {
                           return dout[i] * weight[i] * ((x[i] - mean) * rstd);
                         }) /
                         static_cast<float>(C);
  for (int i = 0; i < C; ++i) {
    const float n = (x[i] - mean) * rstd;
    const float dn = dout[i] * weight[i];
    dx[i] += (dn - sum_dn - n * sum_dn_n) * rstd;
  }
}
// dweight/dbias += one row's contribution, over C columns (a caller that splits the columns over
// threads passes the row's x, dout and the accumulators offset to its first column).
UOE_HD inline void layernorm_row_backward_params(float* __restrict__ dweight, float* __restrict__ dbias,
                                                 const float* __restrict__ dout, const float* __restrict__ x,
                                                 float mean, float rstd, int C) {
  for (int i = 0; i < C; ++i) {
    dbias[i] += dout[i];
    dweight[i] += dout[i] * ((x[i] - mean) * rstd);
  }
}
// Both, for one row (the GPU path: a block per row; the CPU's layernorm_backward splits rows for dx
// and columns for dweight/dbias over its threads).
UOE_HD inline void layernorm_row_backward(float* __restrict__ dx, float* __restrict__ dweight,
                                          float* __restrict__ dbias, const float* __restrict__ dout,
                                          const float* __restrict__ x, const float* __restrict__ weight, float mean,
                                          float rstd, int C) {
  layernorm_row_backward_input(dx, dout, x, weight, mean, rstd, C);
  layernorm_row_backward_params(dweight, dbias, dout, x, mean, rstd, C);
}

// In-place softmax of one row of length n; returns log-sum-exp of the input row.
UOE_HD inline float softmax_row(float* x, int n) {
  const float mx = max_lanes(x, n);
  for (int i = 0; i < n; ++i) x[i] = exp_approx(x[i] - mx);
  const float s = sum_terms(n, [x](int i) { return x[i]; });
  const float inv = 1.0f / s;
  for (int i = 0; i < n; ++i) x[i] *= inv;
  return mx + logf(s);
}

// dx = p ⊙ (dp − Σ p⊙dp): backward of softmax, given its output p and the output gradient dp.
UOE_HD inline void softmax_row_backward(float* dx, const float* p, const float* dp, int n) {
  const float dot = dot_lanes(p, dp, n);
  for (int i = 0; i < n; ++i) dx[i] = p[i] * (dp[i] - dot);
}

// GELU, erf form (torch.nn.GELU()'s default), with erf to 1.5e-7. With z = x/√2, e = erf(z) and
// ez = e^(−z²) = e^(−x²/2): GELU = x·(1 + e)/2 and GELU' = (1 + e)/2 + x·ez/√(2π), so one exp
// serves erf and the normal density, and the fused form below shares both with the same formulas.
UOE_HD inline float gelu_erf_arg(float x) { return x * 0.70710678118654752f; }
UOE_HD inline float gelu_from_erf(float x, float e) { return 0.5f * x * (1.0f + e); }
UOE_HD inline float gelu_grad_from_erf(float x, float e, float ez) {
  const float cdf = 0.5f * (1.0f + e);
  const float pdf = 0.39894228040143268f * ez;
  return cdf + x * pdf;
}
UOE_HD inline float gelu(float x) { return gelu_from_erf(x, erf_approx(gelu_erf_arg(x))); }
UOE_HD inline float gelu_grad(float x) {
  const float z = gelu_erf_arg(x), ez = exp_approx(-z * z);
  return gelu_grad_from_erf(x, erf_from_exp(z, ez), ez);
}
// GELU(x) and GELU'(x) together, sharing one erf and one exp: what the MLP experts' forward keeps
// for backward.
UOE_HD inline void gelu_with_grad(float x, float* out, float* grad) {
  const float z = gelu_erf_arg(x), ez = exp_approx(-z * z);
  const float e = erf_from_exp(z, ez);
  *out = gelu_from_erf(x, e);
  *grad = gelu_grad_from_erf(x, e, ez);
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

// Cross-entropy forward + backward of one row: logits become (softmax − onehot)·grad_scale in
// place; returns −log p[target].
UOE_HD inline float crossentropy_row_forward_backward(float* logits, int V, int target, float grad_scale) {
  const float loss = crossentropy_row_forward(logits, V, target);
  logits[target] -= 1.0f;
  for (int v = 0; v < V; ++v) logits[v] *= grad_scale;
  return loss;
}

// One row of a scatter-add: t += scale · s over C columns. Element-wise, so a GPU that splits the
// columns over threads (calling this with C = 1 per column) computes exactly what the CPU does.
UOE_HD inline void scatter_add_row(float* t, const float* s, int C, float scale) {
  for (int c = 0; c < C; ++c) t[c] += scale * s[c];
}

// The combine of a UoE block (docs/model.md, Routing), per token row: out = x + bias, then
// scatter_add_row(out, y_i, C, w_i) for each of the token's expert rows in row order. Backward:
// each row's output gradient is w_i · g (scale_row) and its gate's gradient <g, y_i> (dot_lanes).
// Element-wise like scatter_add_row: a GPU that gives each thread one column computes the same.
UOE_HD inline void residual_bias_row(float* out, const float* x, const float* bias, int C) {
  for (int c = 0; c < C; ++c) out[c] = x[c] + bias[c];
}
UOE_HD inline void scale_row(float* out, const float* x, int C, float scale) {
  for (int c = 0; c < C; ++c) out[c] = scale * x[c];
}

// AdamW's per-step scalars (docs/model.md, Optimiser), formed once per step on the host.
struct AdamWScalars {
  float beta1, beta2;  // β1, β2
  float bias1, bias2;  // 1 / (1 − β1^t), 1 / (1 − β2^t)
  float lr, eps;
  float decay;         // lr · weight_decay (decoupled)
  float grad_scale;    // multiplies every gradient first (global-norm clipping)
};

// One AdamW element update; decay_mask is 1 where weight decay applies, else 0. Scalars by value so
// that, inlined into a loop, the compiler knows stores to w/m/v cannot change them.
UOE_HD inline void adamw_update_elem(float& w, float& m, float& v, float g, float decay_mask, AdamWScalars s) {
  const float gi = g * s.grad_scale;
  m = s.beta1 * m + (1.0f - s.beta1) * gi;
  v = s.beta2 * v + (1.0f - s.beta2) * gi * gi;
  const float mh = m * s.bias1, vh = v * s.bias2;
  w -= s.lr * mh / (sqrtf(vh) + s.eps) + s.decay * decay_mask * w;
}

// ---- causal attention over one (segment, head), row by row ----
// A segment holds L rows of one sequence in position order; q, k, v point at the segment's first
// row of this head's q, k and v vectors (dh floats each), rows ld floats apart. P is the segment's
// [L, L] probability tile for this head (row i sees columns j ≤ i; columns j > i are 0). These are
// the bodies the GPU runs (one thread per row); the CPU training path forms the same products with
// GEMMs (layers/experts.cpp), and test_device.cpp checks the two agree.

// Query row i: p_i = softmax(scale · q_i·kⱼ, j ≤ i), o_i = Σ_j p_ij vⱼ (o_i: dh floats).
UOE_HD inline void attn_row_forward(float* o_i, float* p_i, const float* q_i, const float* k, const float* v,
                                    int ld, int i, int L, int dh, float scale) {
  for (int j = 0; j <= i; ++j) {
    const float* kj = k + static_cast<int64_t>(j) * ld;
    float s = 0.0f;
    for (int t = 0; t < dh; ++t) s += q_i[t] * kj[t];
    p_i[j] = scale * s;
  }
  softmax_row(p_i, i + 1);
  for (int j = i + 1; j < L; ++j) p_i[j] = 0.0f;
  for (int t = 0; t < dh; ++t) {
    float a = 0.0f;
    for (int j = 0; j <= i; ++j) a += p_i[j] * v[static_cast<int64_t>(j) * ld + t];
    o_i[t] = a;
  }
}

// Backward, query row i: ds_i = scale · softmax'(dp_i) with dp_ij = do_i·vⱼ (j ≤ i; 0 beyond), and
// dq_i = Σ_j ds_ij kⱼ (overwritten). ds_i is row i of the segment-head's [L, L] dS tile, which the
// key pass below reads by column.
UOE_HD inline void attn_row_backward_query(float* dq_i, float* ds_i, const float* do_i, const float* p_i,
                                           const float* k, const float* v, int ld, int i, int L, int dh,
                                           float scale) {
  for (int j = 0; j <= i; ++j) {
    const float* vj = v + static_cast<int64_t>(j) * ld;
    float s = 0.0f;
    for (int t = 0; t < dh; ++t) s += do_i[t] * vj[t];
    ds_i[j] = s;
  }
  softmax_row_backward(ds_i, p_i, ds_i, i + 1);
  for (int j = 0; j <= i; ++j) ds_i[j] *= scale;
  for (int j = i + 1; j < L; ++j) ds_i[j] = 0.0f;
  for (int t = 0; t < dh; ++t) {
    float a = 0.0f;
    for (int j = 0; j <= i; ++j) a += ds_i[j] * k[static_cast<int64_t>(j) * ld + t];
    dq_i[t] = a;
  }
}

// Backward, key row j (after every query row's ds): dk_j = Σ_{i≥j} ds_ij q_i and
// dv_j = Σ_{i≥j} p_ij do_i (both overwritten). ds, p: [L, L] tiles; dO rows are ldo apart.
UOE_HD inline void attn_row_backward_key(float* dk_j, float* dv_j, const float* ds, const float* p, const float* q,
                                         const float* dO, int ld, int ldo, int j, int L, int dh) {
  for (int t = 0; t < dh; ++t) {
    float a = 0.0f, b = 0.0f;
    for (int i = j; i < L; ++i) {
      a += ds[static_cast<int64_t>(i) * L + j] * q[static_cast<int64_t>(i) * ld + t];
      b += p[static_cast<int64_t>(i) * L + j] * dO[static_cast<int64_t>(i) * ldo + t];
    }
    dk_j[t] = a;
    dv_j[t] = b;
  }
}

// ---- CPU loops over rows ----

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int N, int C);  // out/x [N, C]; mean/rstd [N]
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int N, int C);
void gelu_forward(float* out, const float* x, int64_t n);
void gelu_backward(float* dx, const float* x, const float* dout, int64_t n);  // dx = dout·gelu'(x)
// out = gelu(x), and x is overwritten with gelu'(x) (the forward keeps the derivative, so backward
// is one multiply); out and x must not overlap.
void gelu_forward_keep_grad(float* out, float* x, int64_t n);
// out[c, r] = in[r, c] for r < rows, c < cols (leading dimensions ldo, ldi; single-threaded): 8 × 8
// blocks in AVX registers where the build has AVX, the edges one element at a time. Pure moves.
void transpose(float* out, int ldo, const float* in, int ldi, int rows, int cols);
// Reads one float of every 64-byte line of x[r, c] for r < rows, c < cols (leading dimension ld),
// row by row and discards them: brings an operand into cache in address order, which the
// hardware's prefetchers follow, ahead of a kernel whose own order of reads they do not.
void touch_lines(const float* x, int rows, int cols, int ld);
// out[i, :] = table[ids[i], :]  (out [N, C], table [rows, C])
void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C);
// acc[:] += Σ_i x[i, :], rows in order (bias gradients; x [N, C], acc [C])
void sum_rows_into(float* acc, const float* x, int N, int C);
// table[ids[i], :] += scale · src[i, :], in order of i (deterministic)
void scatter_add_rows(float* table, const float* src, const int32_t* ids, int N, int C, float scale);
// Cross-entropy over N rows: logits [N, V] become dlogits = (softmax − onehot)·grad_scale in
// place; returns Σ −log p[target] (summed in double, in row order).
double crossentropy_forward_backward(float* logits, const int32_t* targets, int N, int V, float grad_scale);
// Loss only (logits overwritten with probabilities).
double crossentropy_forward(float* logits, const int32_t* targets, int N, int V);

// In-place softmax of N rows of n; lse [N] receives each row's log-sum-exp (may be null).
void softmax_rows(float* x, float* lse, int N, int n);
// Top-k of each of N rows of n scores: idx [N, k], as topk_row.
void topk_rows(int* idx, const float* x, int N, int n, int k);
// RoPE on the first `heads` head vectors (dh floats each, back to back) of each of R rows, rows ld
// floats apart, row r at position pos[r]; cos/sin tables [positions, dh/2] from rope_table.
void rope_rows(float* x, const int32_t* pos, const float* cos_table, const float* sin_table, int R, int heads,
               int dh, int ld, bool inverse);
// AdamW over n elements (w, m, v updated in place; g gradients; decay_mask [n] of 0/1).
void adamw_update(float* w, float* m, float* v, const float* g, const float* decay_mask, size_t n,
                  const AdamWScalars& s);
// Causal attention over packed segments, g heads: qkv [R, 3·g·dh] (q heads, k heads, v heads, RoPE
// applied), o [R, g·dh]. Segment s spans rows [seg_begin[s], seg_begin[s+1]); its g probability tiles
// [L, L] start at att[att_offset[s]] (layout of AttnExpertCache).
void attn_causal_forward(float* o, float* att, const float* qkv, const int* seg_begin, const int64_t* att_offset,
                         int nseg, int g, int dh);
// Its backward: dqkv [R, 3·g·dh] overwritten (before undoing RoPE), ds a workspace shaped like att.
void attn_causal_backward(float* dqkv, float* ds, const float* d_o, const float* att, const float* qkv,
                          const int* seg_begin, const int64_t* att_offset, int nseg, int g, int dh);

}  // namespace uoe
