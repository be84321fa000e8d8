#include "runtime/kernels.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "runtime/threads.hpp"

namespace uoe {
namespace {
// Rows per thread at least, for row kernels of C ≈ 128 floats (a few hundred ns a row): shorter
// loops are not worth waking a thread for. Elementwise loops: kGrainElems elements.
constexpr int64_t kGrainRows = 64;
constexpr int64_t kGrainElems = 16384;
// Column ranges for reductions over rows: every column still adds its rows in row order, so the
// sums are the same bits for any split.
constexpr int64_t kGrainCols = 16;
}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                       const float* bias, int N, int C) {
  parallel_ranges(N, kGrainRows, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      layernorm_row_forward(out + i * C, mean + i, rstd + i, x + i * C, weight, bias, C);
  });
}

void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int N, int C) {
  // dx row by row, then dweight/dbias column by column (each column's rows in row order): the same
  // additions as layernorm_row_backward's, split so that threads never share an accumulator.
  parallel_ranges(N, kGrainRows, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      layernorm_row_backward_input(dx + i * C, dout + i * C, x + i * C, weight, mean[i], rstd[i], C);
  });
  parallel_ranges(C, kGrainCols, [=](int64_t c0, int64_t c1) {
    // Blocks of kBlock columns whose sums stay in registers over all the rows (through memory
    // every row, they were a third of this function's time); each column still adds its rows in
    // order, with layernorm_row_backward_params's arithmetic, so the bits are the same.
    constexpr int kBlock = 32;
    int64_t b0 = c0;
    for (; b0 + kBlock <= c1; b0 += kBlock) {
      float dw[kBlock], db[kBlock];
      for (int c = 0; c < kBlock; ++c) {
        dw[c] = dweight[b0 + c];
        db[c] = dbias[b0 + c];
      }
      for (int64_t i = 0; i < N; ++i) {
        const float* __restrict__ d = dout + i * C + b0;
        const float* __restrict__ xr = x + i * C + b0;
        const float m = mean[i], r = rstd[i];
        for (int c = 0; c < kBlock; ++c) {
          db[c] += d[c];
          dw[c] += d[c] * ((xr[c] - m) * r);
        }
      }
      for (int c = 0; c < kBlock; ++c) {
        dweight[b0 + c] = dw[c];
        dbias[b0 + c] = db[c];
      }
    }
    if (b0 < c1)
      for (int64_t i = 0; i < N; ++i)
        layernorm_row_backward_params(dweight + b0, dbias + b0, dout + i * C + b0, x + i * C + b0, mean[i], rstd[i],
                                      static_cast<int>(c1 - b0));
  });
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
  parallel_ranges(n, kGrainElems, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = gelu(x[i]);
  });
}

void gelu_backward(float* dx, const float* x, const float* dout, int64_t n) {
  parallel_ranges(n, kGrainElems, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dx[i] = dout[i] * gelu_grad(x[i]);
  });
}

void gelu_forward_keep_grad(float* __restrict__ out, float* __restrict__ x, int64_t n) {
  parallel_ranges(n, kGrainElems, [=](int64_t i0, int64_t i1) {
    float* __restrict__ o = out;
    float* __restrict__ v = x;
    for (int64_t i = i0; i < i1; ++i) gelu_with_grad(v[i], &o[i], &v[i]);
  });
}

void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C) {
  parallel_ranges(N, kGrainRows, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) std::memcpy(out + i * C, table + (int64_t)ids[i] * C, sizeof(float) * C);
  });
}

void sum_rows_into(float* acc, const float* x, int N, int C) {
  parallel_ranges(C, kGrainCols, [=](int64_t c0, int64_t c1) {
    // As layernorm_backward's dweight/dbias: blocks of columns summed in registers, each column's
    // rows in order.
    constexpr int kBlock = 32;
    int64_t b0 = c0;
    for (; b0 + kBlock <= c1; b0 += kBlock) {
      float s[kBlock];
      for (int c = 0; c < kBlock; ++c) s[c] = acc[b0 + c];
      for (int64_t i = 0; i < N; ++i) {
        const float* __restrict__ row = x + i * C + b0;
        for (int c = 0; c < kBlock; ++c) s[c] += row[c];
      }
      for (int c = 0; c < kBlock; ++c) acc[b0 + c] = s[c];
    }
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = b0; c < c1; ++c) acc[c] += x[i * C + c];
  });
}

void scatter_add_rows(float* table, const float* src, const int32_t* ids, int N, int C, float scale) {
  for (int i = 0; i < N; ++i) {
    scatter_add_row(table + (int64_t)ids[i] * C, src + (int64_t)i * C, C, scale);
  }
}

namespace {
// Σ of the rows' losses in row order (in double), the rows computed in parallel.
template <class RowLoss>
double sum_row_losses(int N, RowLoss row_loss) {
  static thread_local std::vector<float> loss;
  loss.resize(static_cast<size_t>(N));
  float* l = loss.data();
  parallel_ranges(N, kGrainRows / 4, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) l[i] = row_loss(i);
  });
  double total = 0.0;
  for (int i = 0; i < N; ++i) total += l[i];
  return total;
}
}  // namespace

double crossentropy_forward_backward(float* logits, const int32_t* targets, int N, int V, float grad_scale) {
  return sum_row_losses(N, [=](int64_t i) {
    return crossentropy_row_forward_backward(logits + i * V, V, targets[i], grad_scale);
  });
}

double crossentropy_forward(float* logits, const int32_t* targets, int N, int V) {
  return sum_row_losses(N, [=](int64_t i) { return crossentropy_row_forward(logits + i * V, V, targets[i]); });
}

void softmax_rows(float* x, float* lse, int N, int n) {
  parallel_ranges(N, kGrainRows, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float l = softmax_row(x + i * n, n);
      if (lse) lse[i] = l;
    }
  });
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
  // The range's body takes everything as arguments: locals that stores through w/m/v cannot alias
  // (read from the lambda's captures inside the loop, they would keep it scalar).
  const auto range = [](float* w, float* m, float* v, const float* g, const float* decay_mask, int64_t i0, int64_t i1,
                        const AdamWScalars k) {
    for (int64_t i = i0; i < i1; ++i) adamw_update_elem(w[i], m[i], v[i], g[i], decay_mask[i], k);
  };
  parallel_ranges(static_cast<int64_t>(n), kGrainElems,
                  [=](int64_t i0, int64_t i1) { range(w, m, v, g, decay_mask, i0, i1, s); });
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

#if defined(__AVX__)
namespace {
// out[c][r] = in[r][c] for an 8 × 8 block. Each register is loaded as two 4-float halves, row i's
// and row i + 4's (the same 4 columns): the insert of the upper half issues with the load, not on
// the shuffle port, which the 4 × 4 transposes inside the halves (pairs, then quads) then have to
// themselves — 16 shuffles per block instead of 24 with a cross-half stage.
inline void transpose8x8(float* out, int ldo, const float* in, int ldi) {
  for (int c0 = 0; c0 < 8; c0 += 4) {  // columns c0 … c0 + 3 of the block → rows c0 … c0 + 3 of out
    __m256 r[4];
    for (int i = 0; i < 4; ++i)
      r[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(in + static_cast<size_t>(i) * ldi + c0)),
                                  _mm_loadu_ps(in + static_cast<size_t>(i + 4) * ldi + c0), 1);
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    _mm256_storeu_ps(out + static_cast<size_t>(c0) * ldo, _mm256_shuffle_ps(t0, t2, 0x44));
    _mm256_storeu_ps(out + static_cast<size_t>(c0 + 1) * ldo, _mm256_shuffle_ps(t0, t2, 0xEE));
    _mm256_storeu_ps(out + static_cast<size_t>(c0 + 2) * ldo, _mm256_shuffle_ps(t1, t3, 0x44));
    _mm256_storeu_ps(out + static_cast<size_t>(c0 + 3) * ldo, _mm256_shuffle_ps(t1, t3, 0xEE));
  }
}
}  // namespace
#endif

void touch_lines(const float* x, int rows, int cols, int ld) {
  if (rows <= 0 || cols <= 0) return;
  uint32_t seen = 0;
  for (int r = 0; r < rows; ++r) {
    const float* row = x + static_cast<size_t>(r) * ld;
    // The first float, one every 16 after it, and the last: every line the row touches.
    for (int c = 0; c < cols; c += 16) seen ^= std::bit_cast<uint32_t>(row[c]);
    seen ^= std::bit_cast<uint32_t>(row[cols - 1]);
  }
  asm volatile("" : : "r"(seen));  // the reads happen: their sum is used
}

void transpose(float* out, int ldo, const float* in, int ldi, int rows, int cols) {
  int r0 = 0;
#if defined(__AVX__)
  // Bands of up to 16 rows, each swept along its columns an 8-column strip at a time, the strip's
  // 8 × 8 blocks down the band: each row of `out` gets its band's 16 floats (a cache line) in one
  // go, not 8 at a time over a sweep of the whole width. 16 rows, not more: rows a power-of-two
  // stride apart (2 KB at depth 512) fall into two L1 sets, 8 rows each.
  constexpr int kBand = 16;
  for (; r0 + 8 <= rows; r0 += kBand) {
    const int r1 = r0 + std::min(kBand, (rows - r0) / 8 * 8);
    int c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8)
      for (int r = r0; r < r1; r += 8)
        transpose8x8(out + static_cast<size_t>(c0) * ldo + r, ldo, in + static_cast<size_t>(r) * ldi + c0, ldi);
    for (; c0 < cols; ++c0)
      for (int r = r0; r < r1; ++r) out[static_cast<size_t>(c0) * ldo + r] = in[static_cast<size_t>(r) * ldi + c0];
    if (r1 < r0 + kBand) {
      r0 = r1;
      break;
    }
  }
#endif
  for (; r0 < rows; ++r0)
    for (int c = 0; c < cols; ++c) out[static_cast<size_t>(c) * ldo + r0] = in[static_cast<size_t>(r0) * ldi + c];
}

}  // namespace uoe
