#include "runtime/gemm_own.hpp"

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
#if UOE_GEMM_AVX2 && defined(__AVX512F__)
#define UOE_GEMM_AVX512 1
#else
#define UOE_GEMM_AVX512 0
#endif

namespace uoe {

#if UOE_GEMM_AVX2
namespace {
// One vector width: its register type and the few operations the kernel uses. A tile of C is kRows
// rows × two vectors (kCols columns); the accumulators, two vectors of B and a broadcast of A fit
// the register file (AVX2: 6 × 2 + 3 = 15 of 16; AVX-512: 12 × 2 + 3 = 27 of 32).
struct Avx2 {
  using V = __m256;
  static constexpr int kLanes = 8, kRows = 6;
  static constexpr int kDepth = 128;  // depth of one range of k for NN/NT products (see gemm_own)
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_load_ps(p); }
  static V loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_store_ps(p, v); }
  static void storeu(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
};
#if UOE_GEMM_AVX512
struct Avx512 {
  using V = __m512;
  static constexpr int kLanes = 16, kRows = 12;
  // One range up to depth 512: at d 512 (NN/NT 1024 × 512 × 512 on 2 threads) the partial sums'
  // trips through memory between ranges of 128 cost 6-9% (bench/README.md, the deep products).
  static constexpr int kDepth = 512;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_load_ps(p); }
  static V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_store_ps(p, v); }
  static void storeu(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
};
#endif

constexpr int kDepthTn = 256;  // depth of one range of k for TN products: a panel's range and a tile's in L1
// The packed B a row tile passes in one go, per range of depth: panels are taken in blocks of at
// most this many bytes, so a block stays in L2 while every row tile passes it (N = 2048 at depth
// 512 would otherwise stream 4 MB of panels per tile from L3).
constexpr size_t kPanelBlockBytes = size_t{512} << 10;

template <class S>
struct Kernel {
  using V = typename S::V;
  static constexpr int kRows = S::kRows;        // rows of C per tile
  static constexpr int kCols = 2 * S::kLanes;   // columns of C per tile: two vectors

  // Bp[p][k][c] = op(B)[k][kCols·p + c], zero for columns at or beyond N (the last panel's padding).
  static void pack_b(float* __restrict__ Bp, bool trans_b, int N, int K, const float* __restrict__ B, int ldb) {
    const int panels = (N + kCols - 1) / kCols;
    for (int p = 0; p < panels; ++p) {
      float* out = Bp + static_cast<size_t>(p) * K * kCols;
      const int j0 = p * kCols, w = std::min(kCols, N - j0);
      if (!trans_b) {
        for (int k = 0; k < K; ++k) {
          const float* src = B + static_cast<size_t>(k) * ldb + j0;
          float* dst = out + static_cast<size_t>(k) * kCols;
          if (w == kCols) {  // two vector moves (a memcpy call per row cost more than the copy)
            S::storeu(dst, S::loadu(src));
            S::storeu(dst + S::kLanes, S::loadu(src + S::kLanes));
          } else {
            for (int c = 0; c < kCols; ++c) dst[c] = c < w ? src[c] : 0.0f;
          }
        }
      } else {
        transpose(out, kCols, B + static_cast<size_t>(j0) * ldb, ldb, w, K);
        if (w < kCols)
          for (int k = 0; k < K; ++k)
            std::fill(out + static_cast<size_t>(k) * kCols + w, out + (k + 1) * static_cast<size_t>(kCols), 0.0f);
      }
    }
  }

  // The rows of the tile that starts with `remaining` rows of C left: kRows, but the last kRows + 1
  // to kRows + 3 rows as two tiles, the second of 4 (a tile of fewer than 4 rows has too few
  // independent sums to hide the FMA latency).
  static int tile_rows(int remaining) {
    return remaining >= kRows + 4 ? kRows : remaining > kRows ? remaining - 4 : remaining;
  }

  // One tile of C: R rows, `width` ≤ kCols columns, over the depth range [k0, k0 + kb) that A and Bp
  // point at. op(A)'s row r, element k: A[r·lda + k], or transposed A[k·lda + r]. The sums start from
  // zero (first range) or from the partial sums in `part` (R rows of kCols, row stride ldp), and go
  // back there (not the last range) or through the epilogue into C (the last): so every element is
  // one chain of FMAs over k in order, however K is cut, and the same vector epilogue for every
  // element (edge columns through a padded copy): no element's bits depend on the tile or range it
  // falls in.
  template <int R, bool TA>
  static void tile(int kb, const float* __restrict__ A, int lda, const float* __restrict__ Bp,
                   float* __restrict__ part, int ldp, bool first, bool last, float* __restrict__ C, int ldc,
                   int width, float alpha, float beta) {
    constexpr int L = S::kLanes;
    V lo[R], hi[R];
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      lo[r] = first ? S::zero() : S::load(part + static_cast<size_t>(r) * ldp);
      hi[r] = first ? S::zero() : S::load(part + static_cast<size_t>(r) * ldp + L);
    }
    const float* a = A;
    const size_t step = TA ? static_cast<size_t>(lda) : 1;
    for (int k = 0; k < kb; ++k) {
      const V b0 = S::loadu(Bp), b1 = S::loadu(Bp + L);
      Bp += kCols;
#pragma GCC unroll 12
      for (int r = 0; r < R; ++r) {
        const V av = S::broadcast(TA ? a + r : a + static_cast<size_t>(r) * lda);
        lo[r] = S::fmadd(av, b0, lo[r]);
        hi[r] = S::fmadd(av, b1, hi[r]);
      }
      a += step;
    }
    // The accumulators leave the registers once, through `part` or this buffer (indexing them by a
    // loop counter below would keep them in memory inside the loop above).
    alignas(64) float acc[R][kCols];
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      S::store(last ? acc[r] : part + static_cast<size_t>(r) * ldp, lo[r]);
      S::store(last ? acc[r] + L : part + static_cast<size_t>(r) * ldp + L, hi[r]);
    }
    if (!last) return;
    const V va = S::set1(alpha), vb = S::set1(beta);
    for (int r = 0; r < R; ++r) {
      float* c = C + static_cast<size_t>(r) * ldc;
      float pad[kCols];
      float* out = width == kCols ? c : pad;
      if (width < kCols && beta != 0.0f) {
        std::memcpy(pad, c, sizeof(float) * width);
        std::fill(pad + width, pad + kCols, 0.0f);
      }
      V v0 = S::mul(va, S::load(acc[r])), v1 = S::mul(va, S::load(acc[r] + L));
      if (beta != 0.0f) {
        v0 = S::fmadd(vb, S::loadu(out), v0);
        v1 = S::fmadd(vb, S::loadu(out + L), v1);
      }
      S::storeu(out, v0);
      S::storeu(out + L, v1);
      if (width < kCols) std::memcpy(c, pad, sizeof(float) * width);
    }
  }

  // tile<rows, TA> for rows = 1 … kRows.
  template <bool TA, int R = kRows>
  static void tiles(int rows, int kb, const float* A, int lda, const float* Bp, float* part, int ldp, bool first,
                    bool last, float* C, int ldc, int width, float alpha, float beta) {
    if constexpr (R > 1) {
      if (rows < R) {
        tiles<TA, R - 1>(rows, kb, A, lda, Bp, part, ldp, first, last, C, ldc, width, alpha, beta);
        return;
      }
    }
    tile<R, TA>(kb, A, lda, Bp, part, ldp, first, last, C, ldc, width, alpha, beta);
  }

  static void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                   const float* B, int ldb, float beta, float* C, int ldc) {
    constexpr int L = S::kLanes;
    const int panels = (N + kCols - 1) / kCols;
    static thread_local FloatBuffer packed;  // every element written by pack_b, padding included
    packed.resize_uninit(static_cast<size_t>(panels) * std::max(K, 1) * kCols);
    pack_b(packed.data(), trans_b, N, K, B, ldb);
    // Depth in ranges (S::kDepth; kDepthTn for TN), partial sums kept in `part` between them, so
    // that a tile's rows of op(A) stay in L1 (or L2) while a block of B's panels passes them, and the
    // block's range in L2.
    const int depth = trans_a ? kDepthTn : S::kDepth;
    const int ranges = std::max(1, (K + depth - 1) / depth);
    const int ldp = panels * kCols;
    static thread_local FloatBuffer part;  // 64-byte aligned
    if (ranges > 1) part.resize_uninit(static_cast<size_t>(M) * ldp);  // a row of partial sums per row of C
    if (trans_a) {
      // op(A)'s rows are A's columns, lda apart (strided rows of a power-of-two width would evict
      // each other from L1): each depth range of op(A) is copied once, tile by tile, to [k][tile's
      // rows] at offset i0·kb; then each panel's range of B stays in L1 while the tiles pass it.
      static thread_local FloatBuffer apack;
      apack.resize_uninit(static_cast<size_t>(M) * std::min(K, kDepthTn) + L);
      for (int k0 = 0; k0 < std::max(K, 1); k0 += kDepthTn) {
        const int kb = std::min(kDepthTn, K - k0);
        const bool first = k0 == 0, last = k0 + kDepthTn >= K;
        for (int i0 = 0, rows; i0 < M; i0 += rows) {
          // In address order, so that each vector store's extra floats (a tile has at most one
          // vector's rows) land where a later slot goes; the buffer has a vector of room at its end.
          rows = tile_rows(M - i0);
          float* dst = apack.data() + static_cast<size_t>(i0) * kb;
          const float* src = A + static_cast<size_t>(k0) * lda + i0;
          if (i0 + L <= M) {
            for (int k = 0; k < kb; ++k)
              S::storeu(dst + static_cast<size_t>(k) * rows, S::loadu(src + static_cast<size_t>(k) * lda));
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
    for (int k0 = 0; k0 < std::max(K, 1); k0 += S::kDepth) {
      const int kb = std::min(S::kDepth, K - k0);
      const bool first = k0 == 0, last = k0 + S::kDepth >= K;
      const int block = std::max<int>(1, static_cast<int>(kPanelBlockBytes / (sizeof(float) * kCols * std::max(kb, 1))));
      for (int p0 = 0; p0 < panels; p0 += block) {
        const int p1 = std::min(panels, p0 + block);
        for (int i0 = 0, rows; i0 < M; i0 += rows) {
          rows = tile_rows(M - i0);
          const float* Ai = A + static_cast<size_t>(i0) * lda + k0;
          float* Ci = C + static_cast<size_t>(i0) * ldc;
          float* Pi = ranges > 1 ? part.data() + static_cast<size_t>(i0) * ldp : nullptr;
          for (int p = p0; p < p1; ++p) {
            const float* Bp = packed.data() + (static_cast<size_t>(p) * K + k0) * kCols;
            const int width = std::min(kCols, N - p * kCols);
            float* Pp = Pi ? Pi + p * kCols : nullptr;
            tiles<false>(rows, kb, Ai, lda, Bp, Pp, ldp, first, last, Ci + p * kCols, ldc, width, alpha, beta);
          }
        }
      }
    }
  }
};
}  // namespace
#endif

const char* own_gemm_isa_name(OwnGemmIsa isa) { return isa == OwnGemmIsa::avx512 ? "AVX-512" : "AVX2"; }

bool gemm_own_available(OwnGemmIsa isa) {
  static const CpuFeatures f = cpu_features_detect();
  if (isa == OwnGemmIsa::avx2) return UOE_GEMM_AVX2 && f.avx2 && f.fma;
  return UOE_GEMM_AVX512 && f.avx512f && f.fma;
}

void gemm_own(OwnGemmIsa isa, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc) {
  if (!gemm_own_available(isa))
    fail("uoe's ", own_gemm_isa_name(isa), " GEMM kernel called where this CPU or build lacks ",
         isa == OwnGemmIsa::avx512 ? "AVX-512 F" : "AVX2 + FMA");
  if (trans_a && trans_b) fail("uoe's GEMM kernel does not multiply two transposed operands");
  if (M <= 0 || N <= 0) return;
#if UOE_GEMM_AVX512
  if (isa == OwnGemmIsa::avx512) {
    Kernel<Avx512>::gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#endif
#if UOE_GEMM_AVX2
  Kernel<Avx2>::gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
  (void)alpha, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C, (void)ldc, (void)K;
#endif
}

}  // namespace uoe
