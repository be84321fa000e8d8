#include "layers/experts.hpp"

#include <algorithm>
#include <cmath>

#include "runtime/gemm.hpp"
#include "runtime/kernels.hpp"
#include "runtime/profile.hpp"
#include "runtime/threads.hpp"

namespace uoe {

void mlp_experts_forward(float* y, MlpExpertCache& cache, const ExpertRows& rows, const float* W1,
                         const float* b1, const float* W2, int d, int f) {
  const int R = rows.rows();
  cache.g.resize_uninit(static_cast<size_t>(R) * f);
  cache.a.resize_uninit(static_cast<size_t>(R) * f);
  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n == 0) continue;
    float* h = cache.g.data() + static_cast<size_t>(r0) * f;
    const float* bias = b1 + static_cast<size_t>(e) * f;
    parallel_ranges(n, 64, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) std::copy(bias, bias + f, h + i * f);
    });
    gemm(false, false, n, f, d, 1.0f, rows.x.data() + static_cast<size_t>(r0) * d, d,
         W1 + static_cast<size_t>(e) * d * f, f, 1.0f, h, f);
    float* a = cache.a.data() + static_cast<size_t>(r0) * f;
    gelu_forward_keep_grad(a, h, static_cast<int64_t>(n) * f);  // h becomes GELU'(h)
    gemm(false, false, n, d, f, 1.0f, a, f, W2 + static_cast<size_t>(e) * f * d, d, 0.0f,
         y + static_cast<size_t>(r0) * d, d);
  }
}

void mlp_experts_backward_data(float* dx, const float* dy, MlpExpertCache& cache, const ExpertRows& rows,
                               const float* W1, const float* W2, int d, int f) {
  FloatBuffer& dh = cache.dh;
  dh.resize_uninit(static_cast<size_t>(rows.rows()) * f);
  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n == 0) continue;
    const float* dye = dy + static_cast<size_t>(r0) * d;
    const float* g = cache.g.data() + static_cast<size_t>(r0) * f;
    float* dhe = dh.data() + static_cast<size_t>(r0) * f;
    // da = dy·W2ᵀ ; dh = da ⊙ GELU'(h) ; dx = dh·W1ᵀ
    gemm(false, true, n, f, d, 1.0f, dye, d, W2 + static_cast<size_t>(e) * f * d, d, 0.0f, dhe, f);
    parallel_ranges(static_cast<int64_t>(n) * f, 16384, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dhe[i] *= g[i];
    });
    gemm(false, true, n, d, f, 1.0f, dhe, f, W1 + static_cast<size_t>(e) * d * f, f, 0.0f,
         dx + static_cast<size_t>(r0) * d, d);
  }
}

void mlp_experts_backward_weights(float* dW1, float* db1, float* dW2, const float* dy, const MlpExpertCache& cache,
                                  const ExpertRows& rows, int d, int f) {
  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n == 0) continue;
    const float* dye = dy + static_cast<size_t>(r0) * d;
    const float* a = cache.a.data() + static_cast<size_t>(r0) * f;
    const float* dhe = cache.dh.data() + static_cast<size_t>(r0) * f;
    // dW2 += aᵀ·dy ; db1 += Σ dh ; dW1 += xᵀ·dh
    gemm(true, false, f, d, n, 1.0f, a, f, dye, d, 1.0f, dW2 + static_cast<size_t>(e) * f * d, d);
    sum_rows_into(db1 + static_cast<size_t>(e) * f, dhe, n, f);
    gemm(true, false, d, f, n, 1.0f, rows.x.data() + static_cast<size_t>(r0) * d, d, dhe, f, 1.0f,
         dW1 + static_cast<size_t>(e) * d * f, f);
  }
}

void mlp_experts_backward(float* dx, float* dW1, float* db1, float* dW2, const float* dy, MlpExpertCache& cache,
                          const ExpertRows& rows, const float* W1, const float* W2, int d, int f) {
  mlp_experts_backward_data(dx, dy, cache, rows, W1, W2, d, f);
  mlp_experts_backward_weights(dW1, db1, dW2, dy, cache, rows, d, f);
}

namespace {
// Splits each expert's rows into segments (maximal runs with one seg id, never crossing an
// expert boundary) and sizes the attention-probability storage: g heads × L² per segment.
void attn_build_segments(AttnExpertCache& c, const ExpertRows& rows, int g) {
  c.seg_begin.clear();
  for (int e = 0; e < rows.n_experts; ++e)
    for (int r = rows.offsets[e]; r < rows.offsets[e + 1]; ++r)
      if (r == rows.offsets[e] || rows.seg[r] != rows.seg[r - 1]) c.seg_begin.push_back(r);
  c.seg_begin.push_back(rows.rows());  // sentinel: segment s spans [seg_begin[s], seg_begin[s+1])
  c.att_offset.assign(c.seg_begin.size(), 0);
  for (size_t s = 0; s + 1 < c.seg_begin.size(); ++s) {
    const int64_t L = c.seg_begin[s + 1] - c.seg_begin[s];
    c.att_offset[s + 1] = c.att_offset[s] + g * L * L;
  }
}
// Makes sure the cached RoPE table covers every position in `rows`.
void attn_ensure_rope(AttnExpertCache& c, const ExpertRows& rows, int half) {
  int need = 0;
  for (int32_t p : rows.pos) need = p + 1 > need ? p + 1 : need;
  if (need <= c.rope_positions && half == c.rope_half) return;
  c.rope_positions = need > c.rope_positions ? need : c.rope_positions;
  c.rope_half = half;
  c.rope_cos.resize(static_cast<size_t>(c.rope_positions) * half);
  c.rope_sin.resize(static_cast<size_t>(c.rope_positions) * half);
  rope_table(c.rope_cos.data(), c.rope_sin.data(), c.rope_positions, half);
}

// Row blocks of a causal segment of L rows: rows [i0, i1) see only keys [0, i1), so b blocks do
// (b + 1) / 2b of the full L×L products, for b GEMM calls instead of one. 16 rows per block: at
// the reference config (L ≈ 64) the attention core takes 0.65 ms per block instead of 0.78 ms
// (blocks of 8: 0.64, 32: 0.69, one: 0.78; bench/README.md's log).
int causal_row_blocks(int L) { return std::max(1, L / 16); }

// RoPE (or its inverse) on the q and k heads of every row of a [R, 3·g·dh] block.
void attn_apply_rope(float* qkv, const AttnExpertCache& c, const ExpertRows& rows, int g, int dh, bool inverse) {
  const int half = dh / 2, W3 = 3 * g * dh;
  parallel_ranges(rows.rows(), 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = qkv + r * W3;
      const float* ct = c.rope_cos.data() + static_cast<size_t>(rows.pos[r]) * half;
      const float* st = c.rope_sin.data() + static_cast<size_t>(rows.pos[r]) * half;
      for (int h = 0; h < 2 * g; ++h) rope_row(row + h * dh, half, ct, st, inverse);
    }
  });
}
}  // namespace

void attn_experts_forward(float* y, AttnExpertCache& c, const ExpertRows& rows, const float* Wqkv,
                          const float* Wo, int d, int g, int dh) {
  const ProfileScope profile(Phase::attention);
  const int R = rows.rows(), gd = g * dh, W3 = 3 * gd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  c.qkv.resize_uninit(static_cast<size_t>(R) * W3);
  c.o.resize_uninit(static_cast<size_t>(R) * gd);
  attn_build_segments(c, rows, g);
  c.att.resize_uninit(static_cast<size_t>(c.att_offset.back()));

  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n == 0) continue;
    gemm(false, false, n, W3, d, 1.0f, rows.x.data() + static_cast<size_t>(r0) * d, d,
         Wqkv + static_cast<size_t>(e) * d * W3, W3, 0.0f, c.qkv.data() + static_cast<size_t>(r0) * W3, W3);
  }
  // RoPE on q and k heads at true positions.
  attn_ensure_rope(c, rows, dh / 2);
  attn_apply_rope(c.qkv.data(), c, rows, g, dh, false);
  // Causal attention per segment and head: S = q·kᵀ/√dh (row i sees j ≤ i), P = softmax, o = P·v.
  // Segments are disjoint sets of rows with their own score tiles: split over threads freely.
  const int nseg = static_cast<int>(c.seg_begin.size()) - 1;
  parallel_ranges(nseg, 1, [&](int64_t s0, int64_t s1) {
  for (int s = static_cast<int>(s0); s < s1; ++s) {
    const int r0 = c.seg_begin[s], L = c.seg_begin[s + 1] - r0;
    for (int h = 0; h < g; ++h) {
      float* P = c.att.data() + c.att_offset[s] + static_cast<int64_t>(h) * L * L;
      const float* q = c.qkv.data() + static_cast<size_t>(r0) * W3 + h * dh;
      const float* kk = q + gd;
      const float* v = q + 2 * gd;
      float* o = c.o.data() + static_cast<size_t>(r0) * gd + h * dh;
      // Row blocks [i0, i1) need keys [0, i1) only: the causal half above the diagonal blocks is
      // neither computed nor multiplied (its probabilities are zero).
      const int nb = causal_row_blocks(L);
      for (int rb = 0; rb < nb; ++rb) {
        const int i0 = rb * L / nb, i1 = (rb + 1) * L / nb;
        gemm(false, true, i1 - i0, i1, dh, scale, q + static_cast<size_t>(i0) * W3, W3, kk, W3, 0.0f,
             P + static_cast<int64_t>(i0) * L, L);
      }
      for (int i = 0; i < L; ++i) {
        float* row = P + static_cast<int64_t>(i) * L;
        softmax_row(row, i + 1);
        for (int j = i + 1; j < L; ++j) row[j] = 0.0f;
      }
      for (int rb = 0; rb < nb; ++rb) {
        const int i0 = rb * L / nb, i1 = (rb + 1) * L / nb;
        gemm(false, false, i1 - i0, dh, i1, 1.0f, P + static_cast<int64_t>(i0) * L, L, v, W3, 0.0f,
             o + static_cast<size_t>(i0) * gd, gd);
      }
    }
  }
  });
  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n == 0) continue;
    gemm(false, false, n, d, gd, 1.0f, c.o.data() + static_cast<size_t>(r0) * gd, gd,
         Wo + static_cast<size_t>(e) * gd * d, d, 0.0f, y + static_cast<size_t>(r0) * d, d);
  }
}

void attn_experts_backward_data(float* dx, const float* dy, AttnExpertCache& c, const ExpertRows& rows,
                                const float* Wqkv, const float* Wo, int d, int g, int dh) {
  const ProfileScope profile(Phase::attention);
  const int R = rows.rows(), gd = g * dh, W3 = 3 * gd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  FloatBuffer& dO = c.d_o;
  FloatBuffer& dqkv = c.d_qkv;
  dO.resize_uninit(static_cast<size_t>(R) * gd);
  dqkv.resize_uninit(static_cast<size_t>(R) * W3);
  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n == 0) continue;
    const float* dye = dy + static_cast<size_t>(r0) * d;
    gemm(false, true, n, gd, d, 1.0f, dye, d, Wo + static_cast<size_t>(e) * gd * d, d, 0.0f,
         dO.data() + static_cast<size_t>(r0) * gd, gd);
  }
  const int nseg = static_cast<int>(c.seg_begin.size()) - 1;
  // Segments split over threads as in forward; each thread its own dP tile.
  parallel_ranges(nseg, 1, [&](int64_t s0, int64_t s1) {
  static thread_local std::vector<float> dP;
  for (int s = static_cast<int>(s0); s < s1; ++s) {
    const int r0 = c.seg_begin[s], L = c.seg_begin[s + 1] - r0;
    dP.resize(static_cast<size_t>(L) * L);
    for (int h = 0; h < g; ++h) {
      const float* P = c.att.data() + c.att_offset[s] + static_cast<int64_t>(h) * L * L;
      const float* q = c.qkv.data() + static_cast<size_t>(r0) * W3 + h * dh;
      const float* kk = q + gd;
      const float* v = q + 2 * gd;
      float* dq = dqkv.data() + static_cast<size_t>(r0) * W3 + h * dh;
      float* dk = dq + gd;
      float* dv = dq + 2 * gd;
      const float* dOh = dO.data() + static_cast<size_t>(r0) * gd + h * dh;
      // dP = dO·vᵀ ; dv = Pᵀ·dO — by causal row blocks as in forward: query rows [i0, i1) see keys
      // [0, i1); key rows [j0, j1) are seen by queries [j0, L).
      const int nb = causal_row_blocks(L);
      for (int rb = 0; rb < nb; ++rb) {
        const int i0 = rb * L / nb, i1 = (rb + 1) * L / nb;
        gemm(false, true, i1 - i0, i1, dh, 1.0f, dOh + static_cast<size_t>(i0) * gd, gd, v, W3, 0.0f,
             dP.data() + static_cast<int64_t>(i0) * L, L);
        gemm(true, false, i1 - i0, dh, L - i0, 1.0f, P + static_cast<int64_t>(i0) * L + i0, L,
             dOh + static_cast<size_t>(i0) * gd, gd, 0.0f, dv + static_cast<size_t>(i0) * W3, W3);
      }
      // dS = softmax'(dP) · scale, causal rows only
      for (int i = 0; i < L; ++i) {
        float* row = dP.data() + static_cast<int64_t>(i) * L;
        softmax_row_backward(row, P + static_cast<int64_t>(i) * L, row, i + 1);
        for (int j = 0; j <= i; ++j) row[j] *= scale;
        for (int j = i + 1; j < L; ++j) row[j] = 0.0f;
      }
      // dq = dS·k ; dk = dSᵀ·q (the same row blocks)
      for (int rb = 0; rb < nb; ++rb) {
        const int i0 = rb * L / nb, i1 = (rb + 1) * L / nb;
        gemm(false, false, i1 - i0, dh, i1, 1.0f, dP.data() + static_cast<int64_t>(i0) * L, L, kk, W3, 0.0f,
             dq + static_cast<size_t>(i0) * W3, W3);
        gemm(true, false, i1 - i0, dh, L - i0, 1.0f, dP.data() + static_cast<int64_t>(i0) * L + i0, L,
             q + static_cast<size_t>(i0) * W3, W3, 0.0f, dk + static_cast<size_t>(i0) * W3, W3);
      }
    }
  }
  });
  // Undo RoPE on dq and dk (the rotation is orthogonal: backward = inverse rotation).
  attn_apply_rope(dqkv.data(), c, rows, g, dh, true);
  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n == 0) continue;
    const float* dq = dqkv.data() + static_cast<size_t>(r0) * W3;
    gemm(false, true, n, d, W3, 1.0f, dq, W3, Wqkv + static_cast<size_t>(e) * d * W3, W3, 0.0f,
         dx + static_cast<size_t>(r0) * d, d);
  }
}

void attn_experts_backward_weights(float* dWqkv, float* dWo, const float* dy, const AttnExpertCache& c,
                                   const ExpertRows& rows, int d, int g, int dh) {
  const ProfileScope profile(Phase::attention);
  const int gd = g * dh, W3 = 3 * gd;
  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n == 0) continue;
    // dWo += oᵀ·dy ; dWqkv += xᵀ·dqkv
    gemm(true, false, gd, d, n, 1.0f, c.o.data() + static_cast<size_t>(r0) * gd, gd, dy + static_cast<size_t>(r0) * d,
         d, 1.0f, dWo + static_cast<size_t>(e) * gd * d, d);
    gemm(true, false, d, W3, n, 1.0f, rows.x.data() + static_cast<size_t>(r0) * d, d,
         c.d_qkv.data() + static_cast<size_t>(r0) * W3, W3, 1.0f, dWqkv + static_cast<size_t>(e) * d * W3, W3);
  }
}

void attn_experts_backward(float* dx, float* dWqkv, float* dWo, const float* dy, AttnExpertCache& c,
                           const ExpertRows& rows, const float* Wqkv, const float* Wo, int d, int g, int dh) {
  attn_experts_backward_data(dx, dy, c, rows, Wqkv, Wo, d, g, dh);
  attn_experts_backward_weights(dWqkv, dWo, dy, c, rows, d, g, dh);
}

}  // namespace uoe
