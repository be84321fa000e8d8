// GPU twins of layers/experts.cpp (runtime/cuda/experts.cuh). Each step mirrors the CPU function
// line for line; the per-expert GEMM loops become one Blas::gemm_experts call. Compiled only.
#include <algorithm>
#include <vector>

#include "runtime/cuda/check.cuh"
#include "runtime/cuda/experts.cuh"
#include "runtime/cuda/kernels.cuh"
#include "runtime/kernels.hpp"

namespace uoe::cuda {
namespace {

// Per-expert problems over row blocks: expert e's rows [offsets[e], offsets[e+1]) of a row-major
// [R, width] operand start at base + offsets[e]·width; its weight slab at w + e·slab.
struct RowsOf {
  const float* base;
  int width;
};
const float* rows_ptr(RowsOf r, int row) { return r.base + static_cast<size_t>(row) * r.width; }

// C_e = op(A_e)·op(B_e) for the common expert shapes:
//   rows × weight  (forward, backward data): A = row block [n, K], B = weight slab, C = row block
std::vector<GemmProblem> rows_times_weight(const DeviceExpertRows& r, const float* A, int a_width, const float* W,
                                           size_t slab, float* C, int c_width, int N, int K) {
  std::vector<GemmProblem> p(r.n_experts);
  for (int e = 0; e < r.n_experts; ++e) {
    const int r0 = r.offsets[e], n = r.offsets[e + 1] - r0;
    p[e] = GemmProblem{n, N, K, rows_ptr({A, a_width}, r0), W + e * slab, C + static_cast<size_t>(r0) * c_width};
  }
  return p;
}
//   rowsᵀ × rows  (weight gradients): A = row block [n, M] (transposed), B = row block [n, N], C = slab
std::vector<GemmProblem> rows_t_times_rows(const DeviceExpertRows& r, const float* A, int M, const float* B, int N,
                                           float* C, size_t slab) {
  std::vector<GemmProblem> p(r.n_experts);
  for (int e = 0; e < r.n_experts; ++e) {
    const int r0 = r.offsets[e], n = r.offsets[e + 1] - r0;
    p[e] = GemmProblem{M, N, n, rows_ptr({A, M}, r0), rows_ptr({B, N}, r0), C + e * slab};
  }
  return p;
}

}  // namespace

void mlp_experts_forward(float* y, DeviceMlpCache& c, const DeviceExpertRows& rows, const float* W1, const float* b1,
                         const float* W2, int d, int f, Blas& blas) {
  const int R = rows.rows();
  c.h.resize(static_cast<size_t>(R) * f);
  c.a.resize(static_cast<size_t>(R) * f);
  // h = b1_e (per row) + x·W1_e ; a = GELU(h) ; y = a·W2_e
  broadcast_expert_bias(c.h.data(), b1, rows.offsets_dev.data(), rows.n_experts, R, f, blas.stream());
  auto p1 = rows_times_weight(rows, rows.x.data(), d, W1, static_cast<size_t>(d) * f, c.h.data(), f, f, d);
  blas.gemm_experts(false, false, 1.0f, d, f, 1.0f, f, p1);
  gelu_forward(c.a.data(), c.h.data(), static_cast<int64_t>(R) * f, blas.stream());
  auto p2 = rows_times_weight(rows, c.a.data(), f, W2, static_cast<size_t>(f) * d, y, d, d, f);
  blas.gemm_experts(false, false, 1.0f, f, d, 0.0f, d, p2);
}

void mlp_experts_backward_data(float* dx, const float* dy, DeviceMlpCache& c, const DeviceExpertRows& rows,
                               const float* W1, const float* W2, int d, int f, Blas& blas) {
  const int R = rows.rows();
  c.dh.resize(static_cast<size_t>(R) * f);
  // da = dy·W2ᵀ ; dh = da ⊙ GELU'(h) ; dx = dh·W1ᵀ
  auto p1 = rows_times_weight(rows, dy, d, W2, static_cast<size_t>(f) * d, c.dh.data(), f, f, d);
  blas.gemm_experts(false, true, 1.0f, d, d, 0.0f, f, p1);
  gelu_backward(c.dh.data(), c.h.data(), c.dh.data(), static_cast<int64_t>(R) * f, blas.stream());
  auto p2 = rows_times_weight(rows, c.dh.data(), f, W1, static_cast<size_t>(d) * f, dx, d, d, f);
  blas.gemm_experts(false, true, 1.0f, f, f, 0.0f, d, p2);
}

void mlp_experts_backward_weights(float* dW1, float* db1, float* dW2, const float* dy, const DeviceMlpCache& c,
                                  const DeviceExpertRows& rows, int d, int f, Blas& blas) {
  // dW2 += aᵀ·dy ; db1 += Σ dh ; dW1 += xᵀ·dh
  auto p1 = rows_t_times_rows(rows, c.a.data(), f, dy, d, dW2, static_cast<size_t>(f) * d);
  blas.gemm_experts(true, false, 1.0f, f, d, 1.0f, d, p1);
  accumulate_expert_bias_grad(db1, c.dh.data(), rows.offsets_dev.data(), rows.n_experts, f, blas.stream());
  auto p2 = rows_t_times_rows(rows, rows.x.data(), d, c.dh.data(), f, dW1, static_cast<size_t>(d) * f);
  blas.gemm_experts(true, false, 1.0f, d, f, 1.0f, f, p2);
}

namespace {
// layers/experts.cpp's attn_build_segments, then the tables go to the device in stream order.
void attn_build_segments(DeviceAttnCache& c, const DeviceExpertRows& rows, int g, cudaStream_t s) {
  c.seg_begin.clear();
  for (int e = 0; e < rows.n_experts; ++e)
    for (int r = rows.offsets[e]; r < rows.offsets[e + 1]; ++r)
      if (r == rows.offsets[e] || rows.seg[r] != rows.seg[r - 1]) c.seg_begin.push_back(r);
  c.seg_begin.push_back(rows.rows());
  c.att_offset.assign(c.seg_begin.size(), 0);
  for (size_t k = 0; k + 1 < c.seg_begin.size(); ++k) {
    const int64_t L = c.seg_begin[k + 1] - c.seg_begin[k];
    c.att_offset[k + 1] = c.att_offset[k] + g * L * L;
  }
  c.seg_begin_dev.resize(c.seg_begin.size());
  c.att_offset_dev.resize(c.att_offset.size());
  c.uploader.copy<int>(c.seg_begin_dev.data(), c.seg_begin, s);
  c.uploader.copy<int64_t>(c.att_offset_dev.data(), c.att_offset, s);
}
// The RoPE table (rope_table, computed on the host in double) uploaded when positions outgrow it.
void attn_ensure_rope(DeviceAttnCache& c, const DeviceExpertRows& rows, int half, cudaStream_t s) {
  int need = rows.positions;
  for (int32_t p : rows.pos) need = p + 1 > need ? p + 1 : need;
  if (need <= c.rope_positions && half == c.rope_half) return;
  // Grown geometrically: each growth is an upload (and the rare reallocation a device sync).
  const int positions = std::max(need, 2 * c.rope_positions);
  std::vector<float> cs(static_cast<size_t>(positions) * half), sn(cs.size());
  rope_table(cs.data(), sn.data(), positions, half);
  c.rope_cos.resize(cs.size());
  c.rope_sin.resize(sn.size());
  c.uploader.copy<float>(c.rope_cos.data(), cs, s);
  c.uploader.copy<float>(c.rope_sin.data(), sn, s);
  c.rope_positions = positions;
  c.rope_half = half;
}
}  // namespace

void attn_experts_forward(float* y, DeviceAttnCache& c, const DeviceExpertRows& rows, const float* Wqkv,
                          const float* Wo, int d, int g, int dh, Blas& blas) {
  const int R = rows.rows(), gd = g * dh, W3 = 3 * gd;
  cudaStream_t s = blas.stream();
  c.qkv.resize(static_cast<size_t>(R) * W3);
  c.o.resize(static_cast<size_t>(R) * gd);
  attn_build_segments(c, rows, g, s);
  c.att.resize(static_cast<size_t>(c.att_offset.back()));
  auto p1 = rows_times_weight(rows, rows.x.data(), d, Wqkv, static_cast<size_t>(d) * W3, c.qkv.data(), W3, W3, d);
  blas.gemm_experts(false, false, 1.0f, d, W3, 0.0f, W3, p1);
  attn_ensure_rope(c, rows, dh / 2, s);
  rope_rows(c.qkv.data(), rows.pos_dev.data(), c.rope_cos.data(), c.rope_sin.data(), R, 2 * g, dh, W3, false, s);
  const int nseg = static_cast<int>(c.seg_begin.size()) - 1;
  attn_causal_forward(c.o.data(), c.att.data(), c.qkv.data(), c.seg_begin_dev.data(), c.att_offset_dev.data(), nseg, g,
                      dh, s);
  auto p2 = rows_times_weight(rows, c.o.data(), gd, Wo, static_cast<size_t>(gd) * d, y, d, d, gd);
  blas.gemm_experts(false, false, 1.0f, gd, d, 0.0f, d, p2);
}

void attn_experts_backward_data(float* dx, const float* dy, DeviceAttnCache& c, const DeviceExpertRows& rows,
                                const float* Wqkv, const float* Wo, int d, int g, int dh, Blas& blas) {
  const int R = rows.rows(), gd = g * dh, W3 = 3 * gd;
  cudaStream_t s = blas.stream();
  c.d_o.resize(static_cast<size_t>(R) * gd);
  c.d_qkv.resize(static_cast<size_t>(R) * W3);
  c.ds.resize(c.att.size());
  auto p1 = rows_times_weight(rows, dy, d, Wo, static_cast<size_t>(gd) * d, c.d_o.data(), gd, gd, d);
  blas.gemm_experts(false, true, 1.0f, d, d, 0.0f, gd, p1);
  const int nseg = static_cast<int>(c.seg_begin.size()) - 1;
  attn_causal_backward(c.d_qkv.data(), c.ds.data(), c.d_o.data(), c.att.data(), c.qkv.data(), c.seg_begin_dev.data(),
                       c.att_offset_dev.data(), nseg, g, dh, s);
  rope_rows(c.d_qkv.data(), rows.pos_dev.data(), c.rope_cos.data(), c.rope_sin.data(), R, 2 * g, dh, W3, true, s);
  auto p2 = rows_times_weight(rows, c.d_qkv.data(), W3, Wqkv, static_cast<size_t>(d) * W3, dx, d, d, W3);
  blas.gemm_experts(false, true, 1.0f, W3, W3, 0.0f, d, p2);
}

void attn_experts_backward_weights(float* dWqkv, float* dWo, const float* dy, const DeviceAttnCache& c,
                                   const DeviceExpertRows& rows, int d, int g, int dh, Blas& blas) {
  const int gd = g * dh, W3 = 3 * gd;
  // dWo += oᵀ·dy ; dWqkv += xᵀ·dqkv
  auto p1 = rows_t_times_rows(rows, c.o.data(), gd, dy, d, dWo, static_cast<size_t>(gd) * d);
  blas.gemm_experts(true, false, 1.0f, gd, d, 1.0f, d, p1);
  auto p2 = rows_t_times_rows(rows, rows.x.data(), d, c.d_qkv.data(), W3, dWqkv, static_cast<size_t>(d) * W3);
  blas.gemm_experts(true, false, 1.0f, d, W3, 1.0f, W3, p2);
}

}  // namespace uoe::cuda
