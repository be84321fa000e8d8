#include "runtime/kernels.hpp"

#include <cmath>
#include <cstring>

namespace uoe {

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int N, int C) {
  for (int i = 0; i < N; ++i)
    layernorm_row_forward(out + (int64_t)i * C, mean + i, rstd + i, x + (int64_t)i * C, weight, bias, C);
}

void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int N, int C) {
  for (int i = 0; i < N; ++i)
    layernorm_row_backward(dx + (int64_t)i * C, dweight, dbias, dout + (int64_t)i * C, x + (int64_t)i * C,
                           weight, mean[i], rstd[i], C);
}

void rope_table(float* cos_out, float* sin_out, int T, int half) {
  for (int p = 0; p < T; ++p)
    for (int i = 0; i < half; ++i) {
      const double ang = p * std::pow(10000.0, -static_cast<double>(i) / half);
      cos_out[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(ang));
      sin_out[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(ang));
    }
}

void gelu_forward(float* out, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gelu(x[i]);
}

void gelu_backward(float* dx, const float* x, const float* dout, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dx[i] = dout[i] * gelu_grad(x[i]);
}

void gelu_forward_keep_grad(float* __restrict__ out, float* __restrict__ x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gelu_with_grad(x[i], &out[i], &x[i]);
}

void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C) {
  for (int i = 0; i < N; ++i)
    std::memcpy(out + (int64_t)i * C, table + (int64_t)ids[i] * C, sizeof(float) * C);
}

void sum_rows_into(float* acc, const float* x, int N, int C) {
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) acc[c] += x[static_cast<int64_t>(i) * C + c];
}

void scatter_add_rows(float* table, const float* src, const int32_t* ids, int N, int C, float scale) {
  for (int i = 0; i < N; ++i) {
    scatter_add_row(table + (int64_t)ids[i] * C, src + (int64_t)i * C, C, scale);
  }
}

double crossentropy_forward_backward(float* logits, const int32_t* targets, int N, int V, float grad_scale) {
  double total = 0.0;
  for (int i = 0; i < N; ++i) {
    total += crossentropy_row_forward_backward(logits + (int64_t)i * V, V, targets[i], grad_scale);
  }
  return total;
}

double crossentropy_forward(float* logits, const int32_t* targets, int N, int V) {
  double total = 0.0;
  for (int i = 0; i < N; ++i) total += crossentropy_row_forward(logits + (int64_t)i * V, V, targets[i]);
  return total;
}

void softmax_rows(float* x, float* lse, int N, int n) {
  for (int i = 0; i < N; ++i) {
    const float l = softmax_row(x + (int64_t)i * n, n);
    if (lse) lse[i] = l;
  }
}

void topk_rows(int* idx, const float* x, int N, int n, int k) {
  for (int i = 0; i < N; ++i) topk_row(idx + (int64_t)i * k, x + (int64_t)i * n, n, k);
}

void rope_rows(float* x, const int32_t* pos, const float* cos_table, const float* sin_table, int R, int heads,
               int dh, int ld, bool inverse) {
  const int half = dh / 2;
  for (int r = 0; r < R; ++r) {
    float* row = x + (int64_t)r * ld;
    const float* ct = cos_table + (int64_t)pos[r] * half;
    const float* st = sin_table + (int64_t)pos[r] * half;
    for (int h = 0; h < heads; ++h) rope_row(row + h * dh, half, ct, st, inverse);
  }
}

void adamw_update(float* w, float* m, float* v, const float* g, const float* decay_mask, size_t n,
                  const AdamWScalars& s) {
  const AdamWScalars k = s;  // a local copy: stores through w/m/v cannot alias it
  for (size_t i = 0; i < n; ++i) adamw_update_elem(w[i], m[i], v[i], g[i], decay_mask[i], k);
}

void attn_causal_forward(float* o, float* att, const float* qkv, const int* seg_begin, const int64_t* att_offset,
                         int nseg, int g, int dh) {
  const int gd = g * dh, W3 = 3 * gd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  for (int s = 0; s < nseg; ++s) {
    const int r0 = seg_begin[s], L = seg_begin[s + 1] - r0;
    for (int h = 0; h < g; ++h) {
      float* P = att + att_offset[s] + (int64_t)h * L * L;
      const float* q = qkv + (int64_t)r0 * W3 + h * dh;
      for (int i = 0; i < L; ++i)
        attn_row_forward(o + (int64_t)(r0 + i) * gd + h * dh, P + (int64_t)i * L, q + (int64_t)i * W3, q + gd,
                         q + 2 * gd, W3, i, L, dh, scale);
    }
  }
}

void attn_causal_backward(float* dqkv, float* ds, const float* d_o, const float* att, const float* qkv,
                          const int* seg_begin, const int64_t* att_offset, int nseg, int g, int dh) {
  const int gd = g * dh, W3 = 3 * gd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  for (int s = 0; s < nseg; ++s) {
    const int r0 = seg_begin[s], L = seg_begin[s + 1] - r0;
    for (int h = 0; h < g; ++h) {
      const int64_t tile = att_offset[s] + (int64_t)h * L * L;
      const float* q = qkv + (int64_t)r0 * W3 + h * dh;
      const float* dOh = d_o + (int64_t)r0 * gd + h * dh;
      float* dq = dqkv + (int64_t)r0 * W3 + h * dh;
      for (int i = 0; i < L; ++i)
        attn_row_backward_query(dq + (int64_t)i * W3, ds + tile + (int64_t)i * L, dOh + (int64_t)i * gd,
                                att + tile + (int64_t)i * L, q + gd, q + 2 * gd, W3, i, L, dh, scale);
      for (int j = 0; j < L; ++j)
        attn_row_backward_key(dq + (int64_t)j * W3 + gd, dq + (int64_t)j * W3 + 2 * gd, ds + tile, att + tile, q,
                              dOh, W3, gd, j, L, dh);
    }
  }
}

}  // namespace uoe
