// uoe's own GEMM kernels (runtime/gemm_own.hpp), AVX2 and AVX-512: exact against a naive product on
// small-integer inputs (every order of summation gives the same result), and bitwise against their
// rounding contract on real-valued inputs — every element one fused multiply-add chain over k in
// order from zero, then alpha·sum (+ beta·C by one more FMA) — whatever the shape, the row range a
// call gets or the depth ranges K is cut into; so the two widths give the same bits. Each test runs
// every width this CPU and build have, and skips (visibly) where they have none.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/gemm_own.hpp"
#include "runtime/rng.hpp"
#include "gemm_inputs.hpp"

namespace uoe {
namespace {

std::vector<float> reals(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<float>(static_cast<double>(rng_below(29, stream, i, 1u << 20)) / (1 << 19) - 1.0) * 1.37f;
  return v;
}

struct Product {
  bool ta, tb;
  int M, N, K, lda, ldb, ldc;
  float alpha, beta;
  std::vector<float> A, B, C;
  Product(bool ta_, bool tb_, int M_, int N_, int K_, float alpha_, float beta_, bool integer)
      : ta(ta_), tb(tb_), M(M_), N(N_), K(K_), alpha(alpha_), beta(beta_) {
    lda = (ta ? M : K) + 3;
    ldb = (tb ? K : N) + 5;
    ldc = N + 2;
    const size_t na = static_cast<size_t>(ta ? K : M) * lda, nb = static_cast<size_t>(tb ? N : K) * ldb,
                 nc = static_cast<size_t>(M) * ldc;
    A = integer ? small_ints(na, 1) : reals(na, 1);
    B = integer ? small_ints(nb, 2) : reals(nb, 2);
    C = integer ? small_ints(nc, 3) : reals(nc, 3);
  }
  float a(int i, int k) const { return ta ? A[static_cast<size_t>(k) * lda + i] : A[static_cast<size_t>(i) * lda + k]; }
  float b(int k, int j) const { return tb ? B[static_cast<size_t>(j) * ldb + k] : B[static_cast<size_t>(k) * ldb + j]; }
  // Rows [i0, i1) of C through the kernel of width isa.
  void run_rows(OwnGemmIsa isa, std::vector<float>& out, int i0, int i1) const {
    const float* Ap = ta ? A.data() + i0 : A.data() + static_cast<size_t>(i0) * lda;
    gemm_own(isa, ta, tb, i1 - i0, N, K, alpha, Ap, lda, B.data(), ldb, beta,
             out.data() + static_cast<size_t>(i0) * ldc, ldc);
  }
};

std::string name(OwnGemmIsa isa, const Product& p) {
  return std::string(own_gemm_isa_name(isa)) + " " + (p.ta ? "T" : "N") + (p.tb ? "T" : "N") + " M " + std::to_string(p.M) + " N " +
         std::to_string(p.N) + " K " + std::to_string(p.K) + " alpha " + std::to_string(p.alpha) + " beta " +
         std::to_string(p.beta);
}

// Small integers, alpha and beta sums of powers of two: the exact result, in any summation order.
void check_exact(OwnGemmIsa isa, bool ta, bool tb, int M, int N, int K, float alpha, float beta) {
  const Product p(ta, tb, M, N, K, alpha, beta, true);
  std::vector<float> want = p.C, got = p.C;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += static_cast<double>(p.a(i, k)) * p.b(k, j);
      float& w = want[static_cast<size_t>(i) * p.ldc + j];
      w = static_cast<float>(alpha * s + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * w));
    }
  p.run_rows(isa, got, 0, M);
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) bad += std::memcmp(&want[i], &got[i], sizeof(float)) != 0;
  EXPECT_EQ(bad, 0u) << name(isa, p) << " (padding between rows must stay untouched too)";
}

// The rounding contract, bit for bit, on real-valued inputs.
void check_rounding(OwnGemmIsa isa, bool ta, bool tb, int M, int N, int K, float alpha, float beta) {
  const Product p(ta, tb, M, N, K, alpha, beta, false);
  std::vector<float> want = p.C;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = 0.0f;
      for (int k = 0; k < K; ++k) s = std::fma(p.a(i, k), p.b(k, j), s);
      float& w = want[static_cast<size_t>(i) * p.ldc + j];
      const float t = alpha * s;
      w = beta == 0.0f ? t : std::fma(beta, w, t);
    }
  // Whole, and in row ranges cut at places no tile height divides.
  std::vector<float> whole = p.C, parts = p.C;
  p.run_rows(isa, whole, 0, M);
  const int cuts[] = {0, std::min(M, 1), std::min(M, 8), std::min(M, 21), M};
  for (int c = 0; c < 4; ++c)
    if (cuts[c + 1] > cuts[c]) p.run_rows(isa, parts, cuts[c], cuts[c + 1]);
  size_t bad_whole = 0, bad_parts = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    bad_whole += std::memcmp(&want[i], &whole[i], sizeof(float)) != 0;
    bad_parts += std::memcmp(&want[i], &parts[i], sizeof(float)) != 0;
  }
  EXPECT_EQ(bad_whole, 0u) << name(isa, p);
  EXPECT_EQ(bad_parts, 0u) << name(isa, p) << " in row ranges";
}

// The widths this CPU and build run (AVX-512 implies AVX2 here).
std::vector<OwnGemmIsa> widths() {
  std::vector<OwnGemmIsa> w;
  for (OwnGemmIsa isa : {OwnGemmIsa::avx2, OwnGemmIsa::avx512})
    if (gemm_own_available(isa)) w.push_back(isa);
  return w;
}
#define REQUIRE_OWN() \
  if (widths().empty()) GTEST_SKIP() << "no AVX2 + FMA on this CPU or in this build: uoe's kernels do not run"

TEST(GemmOwn, ExactOnIntegersForEveryTransposeEdgeAndDepth) {
  REQUIRE_OWN();
  for (OwnGemmIsa isa : widths())
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      if (ta && tb) continue;
      // Every tile height and edge of both widths (6 × 16, 12 × 32).
      for (int M : {1, 5, 6, 7, 12, 13, 15, 17, 29})
        for (int N : {1, 15, 16, 17, 31, 32, 33, 40, 70})
          for (int K : {0, 1, 9, 128, 129, 300}) {
            check_exact(isa, ta, tb, M, N, K, 1.0f, 0.0f);
            check_exact(isa, ta, tb, M, N, K, 0.5f, 0.75f);
          }
      check_exact(isa, ta, tb, 300, 128, 128, 1.0f, 1.0f);  // a model-sized product
      check_exact(isa, ta, tb, 40, 600, 520, 1.0f, 0.0f);   // several blocks of panels, two depth ranges
      // Narrow products (N ≤ 8: a router's, padded to a tile's width) over many row tiles.
      for (int M : {32, 33, 45, 64, 77})
        for (int N : {1, 4, 7, 8, 9})
          for (int K : {1, 128, 300}) check_exact(isa, ta, tb, M, N, K, 0.5f, 0.75f);
      check_exact(isa, ta, tb, 1024, 4, 128, 1.0f, 1.0f);  // a router's scores (or, TN, its weight gradient's shape)
    }
}

TEST(GemmOwn, EveryElementIsOneFmaChainWhateverTheRowsOrDepthRanges) {
  REQUIRE_OWN();
  for (OwnGemmIsa isa : widths())
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      if (ta && tb) continue;
      for (int K : {1, 32, 128, 257, 700})  // one depth range or several (128 / 512 / 256 deep)
        for (float beta : {0.0f, 1.0f, 0.3f}) {
          check_rounding(isa, ta, tb, 29, 37, K, 1.0f, beta);
          check_rounding(isa, ta, tb, 29, 37, K, 0.7f, beta);
        }
      // Wider than one block of B's panels per depth range (256 columns at depth 512 in the
      // AVX-512 width), with an edge panel, over two depth ranges of different widths.
      check_rounding(isa, ta, tb, 29, 300, 600, 0.7f, 0.3f);
      // Narrow products (a router's) over many row tiles, cut into rows 0-1, 1-8, 8-21 and 21-M.
      for (int N : {1, 4, 8})
        for (int K : {1, 128, 700})
          for (float beta : {0.0f, 1.0f, 0.3f}) check_rounding(isa, ta, tb, 100, N, K, 0.7f, beta);
      check_rounding(isa, ta, tb, 1024, 4, 128, 1.0f, 1.0f);
    }
}

TEST(GemmOwn, BetaZeroNeverReadsC) {
  REQUIRE_OWN();
  for (const auto& [M, N] : {std::pair{23, 37}, std::pair{100, 4}}) {  // a wide and a narrow product
    const int K = 140;
    const std::vector<float> A = reals(static_cast<size_t>(M) * K, 4), B = reals(static_cast<size_t>(K) * N, 5);
    for (OwnGemmIsa isa : widths()) {
      std::vector<float> C(static_cast<size_t>(M) * N, std::numeric_limits<float>::quiet_NaN());
      gemm_own(isa, false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
      size_t nans = 0;
      for (float v : C) nans += std::isnan(v);
      EXPECT_EQ(nans, 0u) << own_gemm_isa_name(isa) << " M " << M << " N " << N;
    }
  }
}

TEST(GemmOwn, RefusesTwoTransposedOperands) {
  REQUIRE_OWN();
  std::vector<float> A(4, 1.0f), B(4, 1.0f), C(4, 0.0f);
  for (OwnGemmIsa isa : widths())
    EXPECT_THROW(gemm_own(isa, true, true, 2, 2, 2, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2), Error);
}

// Where this CPU or build lacks a width, calling it is an error, not a crash.
TEST(GemmOwn, RefusesAWidthTheCpuLacks) {
  if (widths().size() == 2) GTEST_SKIP() << "this CPU and build run both widths: none to refuse";
  std::vector<float> A(4, 1.0f), B(4, 1.0f), C(4, 0.0f);
  for (OwnGemmIsa isa : {OwnGemmIsa::avx2, OwnGemmIsa::avx512}) {
    if (gemm_own_available(isa)) continue;
    EXPECT_THROW(gemm_own(isa, false, false, 2, 2, 2, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2), Error)
        << own_gemm_isa_name(isa);
  }
}

// On a CPU with AVX2 + FMA, gemm() sends NN and NT products of depth ≤ 256 (≤ 512 in the AVX-512
// width) to the widest kernel (unless UOE_GEMM_KERNEL says otherwise): its bits are that kernel's,
// on any thread count, up to the depth the start-up line names.
TEST(GemmOwn, GemmUsesItWhereTheStartUpLineSaysSo) {
  REQUIRE_OWN();
  OwnGemmIsa used = OwnGemmIsa::avx2;
  bool found = false;
  for (OwnGemmIsa isa : widths())
    if (gemm_describe().find(std::string("uoe's ") + own_gemm_isa_name(isa) + " kernel") != std::string::npos) {
      used = isa;
      found = true;
    }
  if (!found) GTEST_SKIP() << "gemm() does not use uoe's kernels here: " << gemm_describe();
  const std::string line = gemm_describe(), key = "kernel for NN/NT products of depth <= ";
  const size_t at = line.find(key);
  ASSERT_NE(at, std::string::npos) << line;
  const int depth = std::atoi(line.c_str() + at + key.size());
  EXPECT_EQ(depth, used == OwnGemmIsa::avx512 ? 512 : 256) << line;
  const int threads = gemm_get_threads();
  for (int K : {128, depth})
    for (bool tb : {false, true}) {
      const int M = 300, N = 130;
      const std::vector<float> A = reals(static_cast<size_t>(M) * K, 6), B = reals(static_cast<size_t>(N) * K, 7);
      const int ldb = tb ? K : N;
      std::vector<float> own(static_cast<size_t>(M) * N), viagemm(own.size());
      gemm_own(used, false, tb, M, N, K, 1.0f, A.data(), K, B.data(), ldb, 0.0f, own.data(), N);
      for (int t : {1, 2, 3}) {
        gemm_set_threads(t);
        gemm(false, tb, M, N, K, 1.0f, A.data(), K, B.data(), ldb, 0.0f, viagemm.data(), N);
        EXPECT_EQ(std::memcmp(own.data(), viagemm.data(), own.size() * sizeof(float)), 0)
            << (tb ? "NT" : "NN") << " K " << K << ", " << t << " threads";
      }
    }
  gemm_set_threads(threads);
}

// The two widths give the same bits on a model-sized product of each kind (so a run's GEMMs round
// alike on AVX2 and AVX-512 CPUs).
TEST(GemmOwn, BothWidthsGiveTheSameBits) {
  if (widths().size() < 2) GTEST_SKIP() << "this CPU or build runs only one width of uoe's kernel";
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      if (ta && tb) continue;
      const Product p(ta, tb, 301, 130, 200, 0.9f, 0.5f, false);
      std::vector<float> narrow = p.C, wide = p.C;
      p.run_rows(OwnGemmIsa::avx2, narrow, 0, p.M);
      p.run_rows(OwnGemmIsa::avx512, wide, 0, p.M);
      EXPECT_EQ(std::memcmp(narrow.data(), wide.data(), narrow.size() * sizeof(float)), 0) << name(OwnGemmIsa::avx512, p);
    }
}

}  // namespace
}  // namespace uoe
