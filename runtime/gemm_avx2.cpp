#include "runtime/gemm_avx2.hpp"

#include <algorithm>
#include <cstring>

#include "runtime/cpu_features.hpp"
#include "runtime/error.hpp"
#include "runtime/kernels.hpp"
#include "runtime/tensor.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define UOE_GEMM_AVX2 1
#else
#define UOE_GEMM_AVX2 0
#endif

namespace uoe {

#if UOE_GEMM_AVX2
namespace {
constexpr int kRows = 6;   // rows of C per tile: 6 × 2 accumulators + 2 of B + 1 of A = 15 of 16 registers
constexpr int kCols = 16;  // columns of C per tile: two 8-float vectors
constexpr int kDepth = 128;    // depth of one range of k (see gemm_avx2)
constexpr int kDepthTn = 256;  // the same for TN products: a panel's range (16 KB) and a tile's (6 KB) in L1

// Bp[p][k][c] = op(B)[k][16p + c], zero for columns at or beyond N (the last panel's padding).
void pack_b(float* __restrict__ Bp, bool trans_b, int N, int K, const float* __restrict__ B, int ldb) {
  const int panels = (N + kCols - 1) / kCols;
  for (int p = 0; p < panels; ++p) {
    float* out = Bp + static_cast<size_t>(p) * K * kCols;
    const int j0 = p * kCols, w = std::min(kCols, N - j0);
    if (!trans_b) {
      for (int k = 0; k < K; ++k) {
        const float* src = B + static_cast<size_t>(k) * ldb + j0;
        float* dst = out + static_cast<size_t>(k) * kCols;
        if (w == kCols) {  // two vector moves (a memcpy call per 64 bytes cost more than the copy)
          _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
          _mm256_storeu_ps(dst + 8, _mm256_loadu_ps(src + 8));
        } else {
          for (int c = 0; c < kCols; ++c) dst[c] = c < w ? src[c] : 0.0f;
        }
      }
    } else {
      transpose(out, kCols, B + static_cast<size_t>(j0) * ldb, ldb, w, K);
      if (w < kCols)
        for (int k = 0; k < K; ++k) std::fill(out + static_cast<size_t>(k) * kCols + w, out + (k + 1) * static_cast<size_t>(kCols), 0.0f);
    }
  }
}

// The rows of the tile that starts with `remaining` rows of C left: 6, but the last 7–9 rows as
// 3–5 and 4 (a tile of fewer than 4 rows has too few independent sums to hide the FMA latency).
inline int tile_rows(int remaining) { return remaining >= 10 ? kRows : remaining > kRows ? remaining - 4 : remaining; }

// One tile of C: R rows, `width` ≤ 16 columns, over the depth range [k0, k0 + kb) that A and Bp
// point at. op(A)'s row r, element k: A[r·lda + k], or transposed A[k·lda + r]. The sums start from
// zero (first range) or from the partial sums in `part` (R rows of 16, row stride 16·panels), and go
// back there (not the last range) or through the epilogue into C (the last): so every element is one
// chain of FMAs over k in order, however K is cut, and the same vector epilogue for every element
// (edge columns through a padded copy): no element's bits depend on the tile or range it falls in.
template <int R, bool TA>
void tile(int kb, const float* __restrict__ A, int lda, const float* __restrict__ Bp, float* __restrict__ part,
          int ldp, bool first, bool last, float* __restrict__ C, int ldc, int width, float alpha, float beta) {
  __m256 lo[R], hi[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    lo[r] = first ? _mm256_setzero_ps() : _mm256_load_ps(part + static_cast<size_t>(r) * ldp);
    hi[r] = first ? _mm256_setzero_ps() : _mm256_load_ps(part + static_cast<size_t>(r) * ldp + 8);
  }
  const float* a = A;
  const size_t step = TA ? static_cast<size_t>(lda) : 1;
  for (int k = 0; k < kb; ++k) {
    const __m256 b0 = _mm256_loadu_ps(Bp), b1 = _mm256_loadu_ps(Bp + 8);
    Bp += kCols;
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(TA ? a + r : a + static_cast<size_t>(r) * lda);
      lo[r] = _mm256_fmadd_ps(av, b0, lo[r]);
      hi[r] = _mm256_fmadd_ps(av, b1, hi[r]);
    }
    a += step;
  }
  // The accumulators leave the registers once, through `part` or this buffer (indexing them by a
  // loop counter below would keep them in memory inside the loop above).
  alignas(32) float acc[R][kCols];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    _mm256_store_ps(last ? acc[r] : part + static_cast<size_t>(r) * ldp, lo[r]);
    _mm256_store_ps(last ? acc[r] + 8 : part + static_cast<size_t>(r) * ldp + 8, hi[r]);
  }
  if (!last) return;
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  for (int r = 0; r < R; ++r) {
    float* c = C + static_cast<size_t>(r) * ldc;
    float pad[kCols];
    float* out = width == kCols ? c : pad;
    if (width < kCols && beta != 0.0f) {
      std::memcpy(pad, c, sizeof(float) * width);
      std::fill(pad + width, pad + kCols, 0.0f);
    }
    __m256 v0 = _mm256_mul_ps(va, _mm256_load_ps(acc[r])), v1 = _mm256_mul_ps(va, _mm256_load_ps(acc[r] + 8));
    if (beta != 0.0f) {
      v0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(out), v0);
      v1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(out + 8), v1);
    }
    _mm256_storeu_ps(out, v0);
    _mm256_storeu_ps(out + 8, v1);
    if (width < kCols) std::memcpy(c, pad, sizeof(float) * width);
  }
}

template <bool TA>
void tiles(int rows, int kb, const float* A, int lda, const float* Bp, float* part, int ldp, bool first, bool last,
           float* C, int ldc, int width, float alpha, float beta) {
  switch (rows) {
#define UOE_TILE_CASE(R) \
    case R: tile<R, TA>(kb, A, lda, Bp, part, ldp, first, last, C, ldc, width, alpha, beta); break;
    UOE_TILE_CASE(6)
    UOE_TILE_CASE(5)
    UOE_TILE_CASE(4)
    UOE_TILE_CASE(3)
    UOE_TILE_CASE(2)
    default: tile<1, TA>(kb, A, lda, Bp, part, ldp, first, last, C, ldc, width, alpha, beta); break;
#undef UOE_TILE_CASE
  }
}
}  // namespace

bool gemm_avx2_available() {
  static const bool ok = [] {
    const CpuFeatures f = cpu_features_detect();
    return f.avx2 && f.fma;
  }();
  return ok;
}

void gemm_avx2(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
               int ldb, float beta, float* C, int ldc) {
  if (!gemm_avx2_available()) fail("gemm_avx2 called on a CPU without AVX2 + FMA");
  if (trans_a && trans_b) fail("gemm_avx2 does not multiply two transposed operands");
  if (M <= 0 || N <= 0) return;
  const int panels = (N + kCols - 1) / kCols;
  static thread_local FloatBuffer packed;  // every element written by pack_b, padding included
  packed.resize_uninit(static_cast<size_t>(panels) * std::max(K, 1) * kCols);
  pack_b(packed.data(), trans_b, N, K, B, ldb);
  // Depth in ranges (kDepth; kDepthTn for TN), partial sums kept in `part` between them, so that a
  // tile's rows of op(A) stay in L1 while every panel of B passes them, and a panel's range in L2.
  const int depth = trans_a ? kDepthTn : kDepth;
  const int ranges = std::max(1, (K + depth - 1) / depth);
  const int ldp = panels * kCols;
  static thread_local FloatBuffer part;  // 64-byte aligned
  if (ranges > 1) part.resize_uninit(static_cast<size_t>(M) * ldp);  // a row of partial sums per row of C
  if (trans_a) {
    // op(A)'s rows are A's columns, lda apart (strided rows of a power-of-two width would evict each
    // other from L1): each depth range of op(A) is copied once, tile by tile, to [k][tile's rows]
    // at offset i0·kb; then each panel's range of B stays in L1 while the tiles pass it.
    static thread_local FloatBuffer apack;
    apack.resize_uninit(static_cast<size_t>(M) * std::min(K, kDepthTn) + 8);
    for (int k0 = 0; k0 < std::max(K, 1); k0 += kDepthTn) {
      const int kb = std::min(kDepthTn, K - k0);
      const bool first = k0 == 0, last = k0 + kDepthTn >= K;
      for (int i0 = 0, rows; i0 < M; i0 += rows) {
        // In address order, so that each 8-float store's extra floats land where a later slot
        // goes; the buffer has 8 floats of room at its end.
        rows = tile_rows(M - i0);
        float* dst = apack.data() + static_cast<size_t>(i0) * kb;
        const float* src = A + static_cast<size_t>(k0) * lda + i0;
        if (i0 + 8 <= M) {
          for (int k = 0; k < kb; ++k)
            _mm256_storeu_ps(dst + static_cast<size_t>(k) * rows, _mm256_loadu_ps(src + static_cast<size_t>(k) * lda));
        } else {
          for (int k = 0; k < kb; ++k)
            for (int r = 0; r < rows; ++r) dst[static_cast<size_t>(k) * rows + r] = src[static_cast<size_t>(k) * lda + r];
        }
      }
      for (int p = 0; p < panels; ++p) {
        const float* Bp = packed.data() + (static_cast<size_t>(p) * K + k0) * kCols;
        const int width = std::min(kCols, N - p * kCols);
        for (int i0 = 0, rows; i0 < M; i0 += rows) {
          rows = tile_rows(M - i0);
          float* Pp = ranges > 1 ? part.data() + static_cast<size_t>(i0) * ldp + p * kCols : nullptr;
          tiles<true>(rows, kb, apack.data() + static_cast<size_t>(i0) * kb, rows, Bp, Pp, ldp, first, last,
                      C + static_cast<size_t>(i0) * ldc + p * kCols, ldc, width, alpha, beta);
        }
      }
    }
    return;
  }
  for (int k0 = 0; k0 < std::max(K, 1); k0 += kDepth) {
    const int kb = std::min(kDepth, K - k0);
    const bool first = k0 == 0, last = k0 + kDepth >= K;
    for (int i0 = 0, rows; i0 < M; i0 += rows) {
      rows = tile_rows(M - i0);
      const float* Ai = A + static_cast<size_t>(i0) * lda + k0;
      float* Ci = C + static_cast<size_t>(i0) * ldc;
      float* Pi = ranges > 1 ? part.data() + static_cast<size_t>(i0) * ldp : nullptr;
      for (int p = 0; p < panels; ++p) {
        const float* Bp = packed.data() + (static_cast<size_t>(p) * K + k0) * kCols;
        const int width = std::min(kCols, N - p * kCols);
        float* Pp = Pi ? Pi + p * kCols : nullptr;
        tiles<false>(rows, kb, Ai, lda, Bp, Pp, ldp, first, last, Ci + p * kCols, ldc, width, alpha, beta);
      }
    }
  }
}

#else  // built without AVX2 + FMA: never available

bool gemm_avx2_available() { return false; }

void gemm_avx2(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int) {
  fail("gemm_avx2: this build was compiled without AVX2 + FMA");
}

#endif

}  // namespace uoe
