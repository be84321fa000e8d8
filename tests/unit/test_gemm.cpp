// uoe::gemm (runtime/gemm.cpp) against a naive product, for every transpose, padded leading
// dimensions, alpha and beta, at shapes below and above the small-matrix limit: with one BLAS
// thread on a core with OpenBLAS's small-matrix kernels, the larger NN products are cut into row
// pieces, TN products into K pieces (beta on the first only), and NT products with a weight-sized B
// run as NN on a transposed copy. Inputs are small integers and alpha, beta powers of two or
// sums of them, so every order of summation gives the exact result: equality is required. TN
// products with and without A read ahead (gemm_set_touch_tn).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/gemm.hpp"
#include "runtime/rng.hpp"
#include "gemm_inputs.hpp"

namespace uoe {
namespace {


void check(bool ta, bool tb, int M, int N, int K, float beta) {
  const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
  const auto A = small_ints(static_cast<size_t>(ta ? K : M) * lda, 1);
  const auto B = small_ints(static_cast<size_t>(tb ? N : K) * ldb, 2);
  auto C = small_ints(static_cast<size_t>(M) * ldc, 3);
  std::vector<float> want = C;
  const float alpha = 0.5f;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) {
        const double a = ta ? A[static_cast<size_t>(k) * lda + i] : A[static_cast<size_t>(i) * lda + k];
        const double b = tb ? B[static_cast<size_t>(j) * ldb + k] : B[static_cast<size_t>(k) * ldb + j];
        s += a * b;
      }
      float& w = want[static_cast<size_t>(i) * ldc + j];
      w = static_cast<float>(alpha * s + (beta == 0.0f ? 0.0 : static_cast<double>(beta) * w));
    }
  gemm(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
  size_t bad = 0;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) bad += C[static_cast<size_t>(i) * ldc + j] != want[static_cast<size_t>(i) * ldc + j];
  EXPECT_EQ(bad, 0u) << (ta ? "T" : "N") << (tb ? "T" : "N") << " M " << M << " N " << N << " K " << K << " beta "
                     << beta;
}

TEST(Gemm, MatchesNaiveProductAcrossPiecesAndTransposes) {
  const int threads = gemm_get_threads();
  // TN products read A once before the product where gemm_set_touch_tn is on (the default): the
  // same result either way, and (in the sanitizer pass) no read outside A's padded rows.
  for (bool touch : {true, false}) {
    gemm_set_touch_tn(touch);
    for (int t : {1, 2}) {
      gemm_set_threads(t);
      for (float beta : {0.0f, 0.75f})
        for (bool ta : {false, true})
          for (bool tb : {false, true}) {
            check(ta, tb, 7, 5, 3, beta);        // tiny
            check(ta, tb, 300, 128, 128, beta);  // NN: row pieces of 61; NT: transposed B
            check(ta, tb, 128, 96, 500, beta);   // TN: K pieces of 81
            check(ta, tb, 1030, 130, 33, beta);  // ragged pieces
            check(ta, tb, 37, 21, 70, beta);     // TN: a width not a multiple of 16 (A's last line)
          }
    }
  }
  gemm_set_touch_tn(true);
  gemm_set_threads(threads);
}

// bench-step --gemm-kinds: observed products keep their exact results (the replay writes a scratch
// C), and each part is counted once under its kind with its multiply-adds.
TEST(Gemm, ObservedProductsAreCountedByKindAndKeepTheirResults) {
  const int threads = gemm_get_threads();
  gemm_set_threads(1);
  for (bool replay : {false, true}) {
    gemm_observe(true, replay);
    check(false, false, 300, 128, 128, 0.0f);
    check(false, true, 300, 128, 128, 0.75f);
    check(true, false, 128, 96, 500, 0.0f);
    check(false, false, 64, 4, 128, 0.0f);  // a router's product: narrow
    const auto seen = gemm_observed();
    gemm_observe(false, false);
    const double nn = 2.0 * 300 * 128 * 128, tn = 2.0 * 128 * 96 * 500, narrow = 2.0 * 64 * 4 * 128;
    // (The NT product reaches the kernel as NN on a transposed copy where uoe's kernel is off.)
    const GemmKindTimes &sn = seen[static_cast<int>(GemmKind::nn)], &st = seen[static_cast<int>(GemmKind::nt)];
    EXPECT_EQ(sn.calls + st.calls, 2);
    EXPECT_EQ(sn.flops + st.flops, 2 * nn);
    EXPECT_EQ(sn.calls, gemm_describe().find("uoe's") != std::string::npos ? 1 : 2) << gemm_describe();
    EXPECT_EQ(seen[static_cast<int>(GemmKind::tn)].calls, 1);
    EXPECT_EQ(seen[static_cast<int>(GemmKind::tn)].flops, tn);
    EXPECT_EQ(seen[static_cast<int>(GemmKind::narrow)].calls, 1);
    EXPECT_EQ(seen[static_cast<int>(GemmKind::narrow)].flops, narrow);
    for (const GemmKindTimes& t : seen) {
      if (t.calls == 0) continue;
      EXPECT_GT(t.seconds, 0.0);
      EXPECT_EQ(t.hot_seconds > 0.0, replay);
    }
  }
  const int64_t before = gemm_observed()[static_cast<int>(GemmKind::nn)].calls;
  check(false, false, 300, 128, 128, 0.0f);  // off again: nothing more counted
  EXPECT_EQ(gemm_observed()[static_cast<int>(GemmKind::nn)].calls, before);
  gemm_set_threads(threads);
}

}  // namespace
}  // namespace uoe
