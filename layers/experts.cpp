#include "layers/experts.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/bf16.hpp"
#include "runtime/gemm.hpp"
#include "runtime/kernels.hpp"
#include "runtime/profile.hpp"
#include "runtime/threads.hpp"

namespace uoe {
namespace {
std::atomic<bool> g_row_parts{true};
std::atomic<bool> g_whole_weights{true};
std::atomic<bool> g_balanced{true};
// fn(e, r0, r1) over every expert's rows: where `by_rows`, in one parallel region, else once per
// expert with all its rows on the calling thread, whose GEMMs and row kernels split themselves. In
// the region (experts_set_balanced, on by default) each thread takes one contiguous run of the
// experts' rows taken together, cut at about total·p/parts rows (at a multiple of 12 — the own
// kernel's tile height on AVX-512, twice AVX2's — from the start of the expert it falls in): the
// threads get the same number of rows within a tile, most experts go whole to one thread (their
// weights packed once, their products taller), and expert order is kept on each thread. Off: every
// expert's rows cut into one part per thread, the last thread taking each expert's remainder (a
// 640-row expert split 312 + 328 on 2 threads, the same thread longer in every expert). fn must give
// a row the same bits whichever part it falls in (gemm_rows_independent products and row kernels):
// every way then computes the same bits.
template <class Fn>
void for_expert_rows(const ExpertRows& rows, bool by_rows, Fn&& fn) {
  if (!by_rows || !experts_row_parts()) {
    for (int e = 0; e < rows.n_experts; ++e)
      if (rows.offsets[e + 1] > rows.offsets[e]) fn(e, rows.offsets[e], rows.offsets[e + 1]);
    return;
  }
  constexpr int64_t kGranule = 12;
  const int64_t parts = threads_inside() ? 1 : threads_count();
  const bool balanced = g_balanced.load(std::memory_order_relaxed);
  const int64_t first = rows.offsets[0], total = rows.offsets[rows.n_experts] - first;
  parallel_ranges(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int e = 0; e < rows.n_experts; ++e) {
      const int64_t r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
      auto cut = [&](int64_t p) -> int64_t {
        if (p >= parts) return n;
        if (!balanced) return n * p / parts / kGranule * kGranule;
        const int64_t at = first + total * p / parts - r0;  // thread p's first row, from this expert's start
        return at <= 0 ? 0 : at >= n ? n : at / kGranule * kGranule;
      };
      if (cut(p1) > cut(p0)) fn(e, static_cast<int>(r0 + cut(p0)), static_cast<int>(r0 + cut(p1)));
    }
  });
}

// fn(s0, s1) over the segments [0, nseg) of an attention cache in one parallel region, each thread
// a contiguous run of segments: of about equal Σ L² (the score tiles' size: the causal core's work
// grows with it) where experts_set_balanced (on by default), of equal count otherwise. Segments are
// disjoint: the bits do not depend on the cut.
template <class Fn>
void for_segments(const AttnExpertCache& c, Fn&& fn) {
  const int nseg = static_cast<int>(c.seg_begin.size()) - 1;
  if (!g_balanced.load(std::memory_order_relaxed)) {
    parallel_ranges(nseg, 1, fn);
    return;
  }
  const int64_t parts = std::min<int64_t>(threads_inside() ? 1 : threads_count(), nseg);
  if (parts <= 1) {
    if (nseg > 0) fn(0, nseg);
    return;
  }
  std::vector<int64_t> prefix(static_cast<size_t>(nseg) + 1, 0);  // Σ L² of segments [0, s)
  for (int s = 0; s < nseg; ++s) {
    const int64_t L = c.seg_begin[s + 1] - c.seg_begin[s];
    prefix[s + 1] = prefix[s] + L * L;
  }
  // Thread p starts at the first segment whose prefix reaches p/parts of the whole.
  const auto start = [&](int64_t p) -> int64_t {
    if (p >= parts) return nseg;
    return std::lower_bound(prefix.begin(), prefix.end(), prefix[nseg] * p / parts) - prefix.begin();
  };
  parallel_ranges(parts, 1, [&](int64_t p0, int64_t p1) {
    const int64_t s0 = start(p0), s1 = start(p1);
    if (s1 > s0) fn(s0, s1);
  });
}

// One of an expert kind's two weight gradients: every expert e's C_e [M, N] (experts one after
// another in C) += A_eᵀ·B_e, A_e and B_e expert e's rows of A [rows, M] and B [rows, N].
struct WeightProduct {
  int M, N;
  const float* A;
  const float* B;
  float* C;
};

// Both weight gradients of every expert with rows. Where they may run in one parallel region
// (fp32, several threads, row parts on):
//  - whole products (experts_set_whole_weights, on by default), when there are at least two per
//    thread: each product goes whole to one thread, the longest first to the thread with the least
//    work so far (work = rows × M·N; ties to the lower thread, so the assignment depends on the
//    routing only). A whole product packs its operands once, where row parts had each thread pack
//    all of B (d 512: OpenBLAS's packing copies were ~5% of a 2-thread step's samples);
//  - else row parts: every thread computes its own part of every product as gemm() cuts it
//    (gemm_part_of), rotated per expert and product, which evens out gemm()'s uneven cuts (a 128-row
//    weight gradient cuts 72 + 56).
// Else (one thread, bf16) each product whole through gemm_mixed on the calling thread, split over
// the threads by gemm() itself. Every way gives each element the bits of the whole product
// (gemm_part_of's contract).
void expert_weight_gradients(const ExpertRows& rows, const WeightProduct (&w)[2]) {
  // Part `part` of `parts` of expert e's product q; parts = 0: the whole product via gemm_mixed.
  const auto product = [&](int part, int parts, int e, int q) {
    const WeightProduct& p = w[q];
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    const float* A = p.A + static_cast<size_t>(r0) * p.M;
    const float* B = p.B + static_cast<size_t>(r0) * p.N;
    float* C = p.C + static_cast<size_t>(e) * p.M * p.N;
    if (parts > 0) gemm_part_of(part, parts, true, false, p.M, p.N, n, 1.0f, A, p.M, B, p.N, 1.0f, C, p.N);
    else gemm_mixed(true, false, p.M, p.N, n, 1.0f, A, p.M, B, p.N, 1.0f, C, p.N);
  };
  struct Product {
    int e, q;
  };
  std::vector<Product> products;
  for (int e = 0; e < rows.n_experts; ++e)
    if (rows.offsets[e + 1] > rows.offsets[e])
      for (int q = 0; q < 2; ++q) products.push_back({e, q});
  const int parts = threads_inside() ? 1 : threads_count();
  if (parts <= 1 || !experts_row_parts() || compute_precision() != Precision::fp32) {
    for (const Product& p : products) product(0, 0, p.e, p.q);
    return;
  }
  if (g_whole_weights.load(std::memory_order_relaxed) && products.size() >= 2 * static_cast<size_t>(parts)) {
    const auto work = [&](const Product& p) {
      return static_cast<int64_t>(w[p.q].M) * w[p.q].N * (rows.offsets[p.e + 1] - rows.offsets[p.e]);
    };
    std::stable_sort(products.begin(), products.end(),
                     [&](const Product& a, const Product& b) { return work(a) > work(b); });
    std::vector<int64_t> load(static_cast<size_t>(parts), 0);
    std::vector<int> owner(products.size());
    for (size_t i = 0; i < products.size(); ++i) {
      const int t = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
      owner[i] = t;
      load[static_cast<size_t>(t)] += work(products[i]);
    }
    parallel_ranges(parts, 1, [&](int64_t t0, int64_t t1) {
      for (size_t i = 0; i < products.size(); ++i)
        if (owner[i] >= t0 && owner[i] < t1) product(0, 1, products[i].e, products[i].q);
    });
    return;
  }
  parallel_ranges(parts, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (const Product& p : products) product(static_cast<int>(t + p.e + p.q) % parts, parts, p.e, p.q);
  });
}
}  // namespace

void experts_set_row_parts(bool on) { g_row_parts.store(on, std::memory_order_relaxed); }
void experts_set_whole_weights(bool on) { g_whole_weights.store(on, std::memory_order_relaxed); }
void experts_set_balanced(bool on) { g_balanced.store(on, std::memory_order_relaxed); }
bool experts_row_parts() { return g_row_parts.load(std::memory_order_relaxed); }

void mlp_experts_forward(float* y, MlpExpertCache& cache, const ExpertRows& rows, const float* W1,
                         const float* b1, const float* W2, int d, int f) {
  const int R = rows.rows();
  cache.g.resize_uninit(static_cast<size_t>(R) * f);
  cache.a.resize_uninit(static_cast<size_t>(R) * f);
  // Each row's h = b1 + x·W1, a = GELU(h) (h becomes GELU'(h)), y = a·W2: per thread's rows when
  // both products allow it (the row's h and a stay in that core's cache between the passes).
  const bool by_rows = gemm_rows_independent(false, false, d) && gemm_rows_independent(false, false, f);
  for_expert_rows(rows, by_rows, [&](int e, int r0, int r1) {
    const int n = r1 - r0;
    float* h = cache.g.data() + static_cast<size_t>(r0) * f;
    const float* bias = b1 + static_cast<size_t>(e) * f;
    parallel_ranges(n, 64, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) std::copy(bias, bias + f, h + i * f);
    });
    gemm_mixed(false, false, n, f, d, 1.0f, rows.x.data() + static_cast<size_t>(r0) * d, d,
         W1 + static_cast<size_t>(e) * d * f, f, 1.0f, h, f);
    float* a = cache.a.data() + static_cast<size_t>(r0) * f;
    gelu_forward_keep_grad(a, h, static_cast<int64_t>(n) * f);  // h becomes GELU'(h)
    gemm_mixed(false, false, n, d, f, 1.0f, a, f, W2 + static_cast<size_t>(e) * f * d, d, 0.0f,
         y + static_cast<size_t>(r0) * d, d);
  });
}

void mlp_experts_backward_data(float* dx, const float* dy, MlpExpertCache& cache, const ExpertRows& rows,
                               const float* W1, const float* W2, int d, int f) {
  FloatBuffer& dh = cache.dh;
  dh.resize_uninit(static_cast<size_t>(rows.rows()) * f);
  const bool by_rows = gemm_rows_independent(false, true, d) && gemm_rows_independent(false, true, f);
  for_expert_rows(rows, by_rows, [&](int e, int r0, int r1) {
    const int n = r1 - r0;
    const float* dye = dy + static_cast<size_t>(r0) * d;
    const float* g = cache.g.data() + static_cast<size_t>(r0) * f;
    float* dhe = dh.data() + static_cast<size_t>(r0) * f;
    // da = dy·W2ᵀ ; dh = da ⊙ GELU'(h) ; dx = dh·W1ᵀ
    gemm_mixed(false, true, n, f, d, 1.0f, dye, d, W2 + static_cast<size_t>(e) * f * d, d, 0.0f, dhe, f);
    parallel_ranges(static_cast<int64_t>(n) * f, 16384, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dhe[i] *= g[i];
    });
    gemm_mixed(false, true, n, d, f, 1.0f, dhe, f, W1 + static_cast<size_t>(e) * d * f, f, 0.0f,
         dx + static_cast<size_t>(r0) * d, d);
  });
}

void mlp_experts_backward_weights(float* dW1, float* db1, float* dW2, const float* dy, const MlpExpertCache& cache,
                                  const ExpertRows& rows, int d, int f) {
  // dW2 += aᵀ·dy ; dW1 += xᵀ·dh; then db1 += Σ dh per expert.
  expert_weight_gradients(rows, {{f, d, cache.a.data(), dy, dW2}, {d, f, rows.x.data(), cache.dh.data(), dW1}});
  for (int e = 0; e < rows.n_experts; ++e) {
    const int r0 = rows.offsets[e], n = rows.offsets[e + 1] - r0;
    if (n > 0) sum_rows_into(db1 + static_cast<size_t>(e) * f, cache.dh.data() + static_cast<size_t>(r0) * f, n, f);
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

// The attention core's products over one causal segment of L rows (one head): tiles of kTileRows
// rows × kTileCols columns kept in registers while the shared dimension runs, in its order, in
// fp32 — every element one fixed sum, whatever L. Small products (L ≈ 64–160, dh = 32–64) spend
// more in a BLAS call's set-up and packing than in arithmetic (about 20 GFLOP/s on one Zen 3
// core with 16-row BLAS blocks; bench/README.md, "Where the step's time goes"); these run the
// tiles straight from the rows. P and dS hold zeros above the diagonal (the softmax writes them),
// so the lower- and upper-triangle products below may add those zero terms.
constexpr int kTileRows = 4;
// Each element below is one multiply-add chain over the shared dimension in order, in whichever
// lane or tail loop it falls, so the vector width changes no bits (the same losses at the reference
// config and d 512 with 8 and 16 lanes); 16 lanes took the attention phase from 5.1-5.5 to 4.2-4.5 ms
// at the reference config and from 20-22 to 17 ms at d 512 on an AVX-512 Xeon (bench/README.md).
#ifdef __AVX512F__
constexpr int kLanes = 16;  // floats per vector below (GCC vector extension: one AVX-512 register)
#else
constexpr int kLanes = 8;  // floats per vector below (GCC vector extension: AVX2 registers, two SSE ones)
#endif
using Vec = float __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_vec(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
// x in every lane (one broadcast; `Vec{} + x` would cost an add, which must keep −0 + 0 = +0).
inline Vec splat(float x) {
  if constexpr (kLanes == 16) return Vec{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
  else return Vec{x, x, x, x, x, x, x, x};
}

// S[i][j] = alpha · Σ_c a[i][c]·b[j][c] for j ≤ i (q·kᵀ and dO·vᵀ). Entries above the diagonal
// that the last 16-column block of a 4-row tile covers get unspecified values (the callers
// overwrite every entry above the diagonal); the rest above it are left as they were.
void causal_scores(float* S, int ldS, const float* a, int lda, const float* b, int ldb, int L, int dh, float alpha) {
  constexpr int kCols = 2 * kLanes;
  // bᵀ, its columns padded to a whole tile with zeros, so the tiles need no edge code.
  static thread_local std::vector<float> bt;
  const int Lp = (L + kCols - 1) / kCols * kCols;
  bt.resize(static_cast<size_t>(dh) * Lp);
  transpose(bt.data(), Lp, b, ldb, L, dh);
  for (int c = 0; c < dh; ++c)
    std::fill(bt.begin() + static_cast<int64_t>(c) * Lp + L, bt.begin() + static_cast<int64_t>(c + 1) * Lp, 0.0f);
  for (int i0 = 0; i0 < L; i0 += kTileRows) {
    const int nr = std::min(kTileRows, L - i0);
    const float* ar[kTileRows];
    for (int r = 0; r < kTileRows; ++r) ar[r] = a + static_cast<size_t>(i0 + std::min(r, nr - 1)) * lda;
    for (int j0 = 0; j0 < i0 + nr; j0 += kCols) {
      Vec acc[kTileRows][2] = {};
      for (int c = 0; c < dh; ++c) {
        const float* bc = bt.data() + static_cast<size_t>(c) * Lp + j0;
        const Vec b0 = load_vec(bc), b1 = load_vec(bc + kLanes);
        for (int r = 0; r < kTileRows; ++r) {
          const Vec av = splat(ar[r][c]);
          acc[r][0] += av * b0;
          acc[r][1] += av * b1;
        }
      }
      const Vec va = splat(alpha);
      for (int r = 0; r < nr; ++r) {
        float* out = S + static_cast<size_t>(i0 + r) * ldS + j0;
        if (j0 + kCols <= L) {  // the whole block lies inside the row: stored as it is
          store_vec(out, va * acc[r][0]);
          store_vec(out + kLanes, va * acc[r][1]);
          continue;
        }
        float row[kCols];
        store_vec(row, va * acc[r][0]);
        store_vec(row + kLanes, va * acc[r][1]);
        std::copy(row, row + (L - j0), out);
      }
    }
  }
}

// out[rows r of the tile][c0, c0 + NV·kLanes) = Σ_{t in [t0, t1)} coef(r, t) · x[t][c0 + ·]:
// NV vectors of columns, kTileRows rows, the terms in t order.
template <int NV, class Coef>
void tile_product(float* out, int ldo, int nr, const float* x, int ldx, int c0, int t0, int t1, Coef coef) {
  Vec acc[kTileRows][NV] = {};
  for (int t = t0; t < t1; ++t) {
    const float* xt = x + static_cast<size_t>(t) * ldx + c0;
    Vec xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = load_vec(xt + v * kLanes);
    for (int r = 0; r < kTileRows; ++r) {
      const Vec p = splat(coef(r, t));
      for (int v = 0; v < NV; ++v) acc[r][v] += p * xv[v];
    }
  }
  for (int r = 0; r < nr; ++r)
    for (int v = 0; v < NV; ++v) store_vec(out + static_cast<size_t>(r) * ldo + c0 + v * kLanes, acc[r][v]);
}
// The same for the last dh % kLanes columns, one at a time.
template <class Coef>
void tile_product_tail(float* out, int ldo, int nr, const float* x, int ldx, int c0, int width, int t0, int t1,
                       Coef coef) {
  float acc[kTileRows][kLanes] = {};
  for (int t = t0; t < t1; ++t)
    for (int r = 0; r < kTileRows; ++r) {
      const float p = coef(r, t);
      for (int cc = 0; cc < width; ++cc) acc[r][cc] += p * x[static_cast<size_t>(t) * ldx + c0 + cc];
    }
  for (int r = 0; r < nr; ++r) std::copy(acc[r], acc[r] + width, out + static_cast<size_t>(r) * ldo + c0);
}
// All dh columns of a row tile: two vectors at a time, then one, then the tail.
template <class Coef>
void tile_row(float* out, int ldo, int nr, const float* x, int ldx, int dh, int t0, int t1, Coef coef) {
  int c0 = 0;
  for (; c0 + 2 * kLanes <= dh; c0 += 2 * kLanes) tile_product<2>(out, ldo, nr, x, ldx, c0, t0, t1, coef);
  for (; c0 + kLanes <= dh; c0 += kLanes) tile_product<1>(out, ldo, nr, x, ldx, c0, t0, t1, coef);
  if (c0 < dh) tile_product_tail(out, ldo, nr, x, ldx, c0, dh - c0, t0, t1, coef);
}

// out[i][:] = Σ_{j ≤ i} P[i][j] · x[j][:] (P·v and dS·k): dh columns, rows of out overwritten.
void lower_times(float* out, int ldo, const float* P, int ldp, const float* x, int ldx, int L, int dh) {
  for (int i0 = 0; i0 < L; i0 += kTileRows) {
    const int nr = std::min(kTileRows, L - i0);
    const float* pr[kTileRows];
    for (int r = 0; r < kTileRows; ++r) pr[r] = P + static_cast<size_t>(i0 + std::min(r, nr - 1)) * ldp;
    tile_row(out + static_cast<size_t>(i0) * ldo, ldo, nr, x, ldx, dh, 0, i0 + nr,
             [&pr](int r, int t) { return pr[r][t]; });
  }
}

// out[j][:] = Σ_{i ≥ j} P[i][j] · x[i][:] (Pᵀ·dO and dSᵀ·q): dh columns, rows of out overwritten.
void upper_transposed_times(float* out, int ldo, const float* P, int ldp, const float* x, int ldx, int L, int dh) {
  for (int j0 = 0; j0 < L; j0 += kTileRows) {
    const int nr = std::min(kTileRows, L - j0);
    int col[kTileRows];
    for (int r = 0; r < kTileRows; ++r) col[r] = j0 + std::min(r, nr - 1);
    tile_row(out + static_cast<size_t>(j0) * ldo, ldo, nr, x, ldx, dh, j0, L,
             [&col, P, ldp](int r, int t) { return P[static_cast<size_t>(t) * ldp + col[r]]; });
  }
}

// RoPE (or its inverse) on the q and k heads of rows [first, last) of a [R, 3·g·dh] block.
void attn_apply_rope(float* qkv, const AttnExpertCache& c, const ExpertRows& rows, int g, int dh, bool inverse,
                     int first, int last) {
  const int half = dh / 2, W3 = 3 * g * dh;
  parallel_ranges(last - first, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t r = first + i0; r < first + i1; ++r) {
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

  // q, k, v = x·Wqkv, then RoPE on the q and k heads at true positions: per thread's rows where
  // the product allows it (for_expert_rows).
  attn_ensure_rope(c, rows, dh / 2);
  for_expert_rows(rows, gemm_rows_independent(false, false, d), [&](int e, int r0, int r1) {
    gemm_mixed(false, false, r1 - r0, W3, d, 1.0f, rows.x.data() + static_cast<size_t>(r0) * d, d,
               Wqkv + static_cast<size_t>(e) * d * W3, W3, 0.0f, c.qkv.data() + static_cast<size_t>(r0) * W3, W3);
    attn_apply_rope(c.qkv.data(), c, rows, g, dh, false, r0, r1);
  });
  // Causal attention per segment and head: S = q·kᵀ/√dh (row i sees j ≤ i), P = softmax, o = P·v.
  // Segments are disjoint sets of rows with their own score tiles: split over threads freely.
  for_segments(c, [&](int64_t s0, int64_t s1) {
  for (int s = static_cast<int>(s0); s < s1; ++s) {
    const int r0 = c.seg_begin[s], L = c.seg_begin[s + 1] - r0;
    for (int h = 0; h < g; ++h) {
      float* P = c.att.data() + c.att_offset[s] + static_cast<int64_t>(h) * L * L;
      const float* q = c.qkv.data() + static_cast<size_t>(r0) * W3 + h * dh;
      const float* kk = q + gd;
      const float* v = q + 2 * gd;
      float* o = c.o.data() + static_cast<size_t>(r0) * gd + h * dh;
      causal_scores(P, L, q, W3, kk, W3, L, dh, scale);
      for (int i = 0; i < L; ++i) {
        float* row = P + static_cast<int64_t>(i) * L;
        softmax_row(row, i + 1);
        for (int j = i + 1; j < L; ++j) row[j] = 0.0f;
      }
      lower_times(o, gd, P, L, v, W3, L, dh);
    }
  }
  });
  for_expert_rows(rows, gemm_rows_independent(false, false, gd), [&](int e, int r0, int r1) {
    gemm_mixed(false, false, r1 - r0, d, gd, 1.0f, c.o.data() + static_cast<size_t>(r0) * gd, gd,
               Wo + static_cast<size_t>(e) * gd * d, d, 0.0f, y + static_cast<size_t>(r0) * d, d);
  });
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
  for_expert_rows(rows, gemm_rows_independent(false, true, d), [&](int e, int r0, int r1) {
    gemm_mixed(false, true, r1 - r0, gd, d, 1.0f, dy + static_cast<size_t>(r0) * d, d,
               Wo + static_cast<size_t>(e) * gd * d, d, 0.0f, dO.data() + static_cast<size_t>(r0) * gd, gd);
  });
  // Segments split over threads as in forward; each thread its own dP tile.
  for_segments(c, [&](int64_t s0, int64_t s1) {
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
      // dP = dO·vᵀ (query i sees keys j ≤ i) ; dv = Pᵀ·dO (key j is seen by queries i ≥ j)
      causal_scores(dP.data(), L, dOh, gd, v, W3, L, dh, 1.0f);
      upper_transposed_times(dv, W3, P, L, dOh, gd, L, dh);
      // dS = softmax'(dP) · scale, causal rows only
      for (int i = 0; i < L; ++i) {
        float* row = dP.data() + static_cast<int64_t>(i) * L;
        softmax_row_backward(row, P + static_cast<int64_t>(i) * L, row, i + 1);
        for (int j = 0; j <= i; ++j) row[j] *= scale;
        for (int j = i + 1; j < L; ++j) row[j] = 0.0f;
      }
      // dq = dS·k ; dk = dSᵀ·q
      lower_times(dq, W3, dP.data(), L, kk, W3, L, dh);
      upper_transposed_times(dk, W3, dP.data(), L, q, W3, L, dh);
    }
  }
  });
  // Undo RoPE on dq and dk (the rotation is orthogonal: backward = inverse rotation), then
  // dx = dqkv·Wqkvᵀ.
  for_expert_rows(rows, gemm_rows_independent(false, true, W3), [&](int e, int r0, int r1) {
    attn_apply_rope(dqkv.data(), c, rows, g, dh, true, r0, r1);
    gemm_mixed(false, true, r1 - r0, d, W3, 1.0f, dqkv.data() + static_cast<size_t>(r0) * W3, W3,
               Wqkv + static_cast<size_t>(e) * d * W3, W3, 0.0f, dx + static_cast<size_t>(r0) * d, d);
  });
}

void attn_experts_backward_weights(float* dWqkv, float* dWo, const float* dy, const AttnExpertCache& c,
                                   const ExpertRows& rows, int d, int g, int dh) {
  const ProfileScope profile(Phase::attention);
  const int gd = g * dh, W3 = 3 * gd;
  // dWo += oᵀ·dy ; dWqkv += xᵀ·dqkv.
  expert_weight_gradients(rows, {{gd, d, c.o.data(), dy, dWo}, {d, W3, rows.x.data(), c.d_qkv.data(), dWqkv}});
}

void attn_experts_backward(float* dx, float* dWqkv, float* dWo, const float* dy, AttnExpertCache& c,
                           const ExpertRows& rows, const float* Wqkv, const float* Wo, int d, int g, int dh) {
  attn_experts_backward_data(dx, dy, c, rows, Wqkv, Wo, d, g, dh);
  attn_experts_backward_weights(dWqkv, dWo, dy, c, rows, d, g, dh);
}

}  // namespace uoe
