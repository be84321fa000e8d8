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

void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C) {
  for (int i = 0; i < N; ++i)
    std::memcpy(out + (int64_t)i * C, table + (int64_t)ids[i] * C, sizeof(float) * C);
}

void scatter_add_rows(float* table, const float* src, const int32_t* ids, int N, int C, float scale) {
  for (int i = 0; i < N; ++i) {
    float* t = table + (int64_t)ids[i] * C;
    const float* s = src + (int64_t)i * C;
    for (int c = 0; c < C; ++c) t[c] += scale * s[c];
  }
}

double crossentropy_forward_backward(float* logits, const int32_t* targets, int N, int V, float grad_scale) {
  double total = 0.0;
  for (int i = 0; i < N; ++i) {
    float* row = logits + (int64_t)i * V;
    total += crossentropy_row_forward(row, V, targets[i]);
    row[targets[i]] -= 1.0f;
    for (int v = 0; v < V; ++v) row[v] *= grad_scale;
  }
  return total;
}

double crossentropy_forward(float* logits, const int32_t* targets, int N, int V) {
  double total = 0.0;
  for (int i = 0; i < N; ++i) total += crossentropy_row_forward(logits + (int64_t)i * V, V, targets[i]);
  return total;
}

}  // namespace uoe
