// uoe's AVX2 GEMM kernel (runtime/gemm_avx2.hpp): exact against a naive product on small-integer
// inputs (every order of summation gives the same result), and bitwise against its rounding
// contract on real-valued inputs — every element one fused multiply-add chain over k in order from
// zero, then alpha·sum (+ beta·C by one more FMA) — whatever the shape, the row range a call gets or
// the depth ranges K is cut into. Skips (visibly) where the CPU or build has no AVX2 + FMA.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/gemm_avx2.hpp"
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
  // Rows [i0, i1) of C through gemm_avx2.
  void run_rows(std::vector<float>& out, int i0, int i1) const {
    const float* Ap = ta ? A.data() + i0 : A.data() + static_cast<size_t>(i0) * lda;
    gemm_avx2(ta, tb, i1 - i0, N, K, alpha, Ap, lda, B.data(), ldb, beta, out.data() + static_cast<size_t>(i0) * ldc,
              ldc);
  }
};

std::string name(const Product& p) {
  return std::string(p.ta ? "T" : "N") + (p.tb ? "T" : "N") + " M " + std::to_string(p.M) + " N " +
         std::to_string(p.N) + " K " + std::to_string(p.K) + " alpha " + std::to_string(p.alpha) + " beta " +
         std::to_string(p.beta);
}

// Small integers, alpha and beta sums of powers of two: the exact result, in any summation order.
void check_exact(bool ta, bool tb, int M, int N, int K, float alpha, float beta) {
  const Product p(ta, tb, M, N, K, alpha, beta, true);
  std::vector<float> want = p.C, got = p.C;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += static_cast<double>(p.a(i, k)) * p.b(k, j);
      float& w = want[static_cast<size_t>(i) * p.ldc + j];
      w = static_cast<float>(alpha * s + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * w));
    }
  p.run_rows(got, 0, M);
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) bad += std::memcmp(&want[i], &got[i], sizeof(float)) != 0;
  EXPECT_EQ(bad, 0u) << name(p) << " (padding between rows must stay untouched too)";
}

// The rounding contract, bit for bit, on real-valued inputs.
void check_rounding(bool ta, bool tb, int M, int N, int K, float alpha, float beta) {
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
  p.run_rows(whole, 0, M);
  const int cuts[] = {0, std::min(M, 1), std::min(M, 8), std::min(M, 21), M};
  for (int c = 0; c < 4; ++c)
    if (cuts[c + 1] > cuts[c]) p.run_rows(parts, cuts[c], cuts[c + 1]);
  size_t bad_whole = 0, bad_parts = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    bad_whole += std::memcmp(&want[i], &whole[i], sizeof(float)) != 0;
    bad_parts += std::memcmp(&want[i], &parts[i], sizeof(float)) != 0;
  }
  EXPECT_EQ(bad_whole, 0u) << name(p);
  EXPECT_EQ(bad_parts, 0u) << name(p) << " in row ranges";
}

#define REQUIRE_AVX2() \
  if (!gemm_avx2_available()) GTEST_SKIP() << "no AVX2 + FMA on this CPU or in this build: gemm_avx2 does not run"

TEST(GemmAvx2, ExactOnIntegersForEveryTransposeEdgeAndDepth) {
  REQUIRE_AVX2();
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      if (ta && tb) continue;
      for (int M : {1, 5, 6, 7, 13})
        for (int N : {1, 15, 16, 17, 40})
          for (int K : {0, 1, 9, 128, 129, 300}) {
            check_exact(ta, tb, M, N, K, 1.0f, 0.0f);
            check_exact(ta, tb, M, N, K, 0.5f, 0.75f);
          }
      check_exact(ta, tb, 300, 128, 128, 1.0f, 1.0f);  // a model-sized product
    }
}

TEST(GemmAvx2, EveryElementIsOneFmaChainWhateverTheRowsOrDepthRanges) {
  REQUIRE_AVX2();
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      if (ta && tb) continue;
      for (int K : {1, 32, 128, 257, 700})  // one depth range, two, six
        for (float beta : {0.0f, 1.0f, 0.3f}) {
          check_rounding(ta, tb, 29, 37, K, 1.0f, beta);
          check_rounding(ta, tb, 29, 37, K, 0.7f, beta);
        }
    }
}

TEST(GemmAvx2, BetaZeroNeverReadsC) {
  REQUIRE_AVX2();
  const int M = 11, N = 21, K = 140;
  const std::vector<float> A = reals(static_cast<size_t>(M) * K, 4), B = reals(static_cast<size_t>(K) * N, 5);
  std::vector<float> C(static_cast<size_t>(M) * N, std::numeric_limits<float>::quiet_NaN());
  gemm_avx2(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  size_t nans = 0;
  for (float v : C) nans += std::isnan(v);
  EXPECT_EQ(nans, 0u);
}

TEST(GemmAvx2, RefusesTwoTransposedOperands) {
  REQUIRE_AVX2();
  std::vector<float> A(4, 1.0f), B(4, 1.0f), C(4, 0.0f);
  EXPECT_THROW(gemm_avx2(true, true, 2, 2, 2, 1.0f, A.data(), 2, B.data(), 2, 0.0f, C.data(), 2), Error);
}

// On a CPU with AVX2 + FMA and no AVX-512, gemm() sends NN and NT products of depth ≤ 256 here
// (unless UOE_GEMM_KERNEL says otherwise): its bits are this kernel's, on any thread count.
TEST(GemmAvx2, GemmUsesItWhereTheStartUpLineSaysSo) {
  REQUIRE_AVX2();
  if (gemm_describe().find("uoe's AVX2 kernel") == std::string::npos)
    GTEST_SKIP() << "gemm() does not use the kernel here: " << gemm_describe();
  const int M = 300, N = 130, K = 128;
  const std::vector<float> A = reals(static_cast<size_t>(M) * K, 6), B = reals(static_cast<size_t>(N) * K, 7);
  std::vector<float> own(static_cast<size_t>(M) * N), viagemm(own.size());
  gemm_avx2(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, own.data(), N);
  const int threads = gemm_get_threads();
  for (int t : {1, 2, 3}) {
    gemm_set_threads(t);
    gemm(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, viagemm.data(), N);
    EXPECT_EQ(std::memcmp(own.data(), viagemm.data(), own.size() * sizeof(float)), 0) << t << " threads";
  }
  gemm_set_threads(threads);
}

}  // namespace
}  // namespace uoe
