// --precision bf16 (runtime/bf16.hpp): the rounding body against an independent reference, the
// mixed-precision GEMM (runtime/gemm.hpp, gemm_mixed) against fp32 within a derived bound and
// bitwise against the fp32 GEMM of rounded inputs, routing decided in fp32, and a step of each
// backend in bf16 (the CPU twin of the device path; bitwise recomputation).
#include <gtest/gtest.h>

#include <array>
#include <cfenv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/memory.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/router.hpp"
#include "layers/step.hpp"
#include "parallel/exchange.hpp"
#include "runtime/bf16.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/onednn_gemm.hpp"
#include "runtime/rng.hpp"
#include "runtime/sum_squares.hpp"
#include "small_spec.hpp"
#include "step_backend_device_like.hpp"

namespace uoe {
namespace {

uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
float from_bits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// The nearest number with 8 significant bits (bf16's), ties to even, by exact double arithmetic:
// x = m·2^e with 0.5 ≤ |m| < 1, so x·2^(8−e) has 8 integer bits, rounded by nearbyint (the default
// rounding mode: to nearest, ties to even). For normal bf16 results (|x| ≥ 2^-126) only.
float reference_round(float x) {
  if (x == 0.0f || !std::isfinite(x)) return x;
  int e = 0;
  std::frexp(static_cast<double>(x), &e);
  const double r = std::ldexp(std::nearbyint(std::ldexp(static_cast<double>(x), 8 - e)), e - 8);
  return r > std::numeric_limits<float>::max()    ? std::numeric_limits<float>::infinity()
         : r < -std::numeric_limits<float>::max() ? -std::numeric_limits<float>::infinity()
                                                  : static_cast<float>(r);
}

TEST(Bf16, RoundsToNearestEvenAsExactArithmeticDoes) {
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);
  // Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 (even: 1); 1 + 3·2^-8 between 1 + 2^-7 and
  // 1 + 2^-6 (even: the latter); just above a tie rounds up.
  EXPECT_EQ(bf16_round(1.0f + 0x1p-8f), 1.0f);
  EXPECT_EQ(bf16_round(1.0f + 3 * 0x1p-8f), 1.0f + 0x1p-6f);
  EXPECT_EQ(bf16_round(std::nextafter(1.0f + 0x1p-8f, 2.0f)), 1.0f + 0x1p-7f);
  EXPECT_EQ(bf16_round(-1.0f - 0x1p-8f), -1.0f);
  EXPECT_EQ(bits(bf16_round(-0.0f)), bits(-0.0f));
  // Overflow: FLT_MAX is above bf16's largest finite value's halfway point: +inf, as IEEE rounds.
  EXPECT_EQ(bf16_round(std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bf16_round(-std::numeric_limits<float>::infinity()), -std::numeric_limits<float>::infinity());
  // NaNs stay NaNs, also one whose payload lies only in the low 16 bits (which rounding by adding
  // would carry into the exponent: an infinity) and a negative one.
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu}) {
    EXPECT_TRUE(std::isnan(bf16_round(from_bits(nan)))) << std::hex << nan;
    EXPECT_EQ(bits(bf16_round(from_bits(nan))) >> 31, nan >> 31) << std::hex << nan;
  }
  // Random normal floats of every exponent in bf16's normal range, and their neighbours.
  size_t bad = 0, changed = 0;
  for (uint64_t i = 0; i < 200000; ++i) {
    const uint32_t u = static_cast<uint32_t>(rng_bits(3, 4, i));
    const uint32_t exponent = (u >> 23) & 0xffu;
    if (exponent == 0 || exponent == 0xffu) continue;
    const float x = from_bits(u);
    bad += bits(bf16_round(x)) != bits(reference_round(x));
    changed += bf16_round(x) != x;
    EXPECT_EQ(bf16_to_float(bf16_from_float(x)), bf16_round(x));
    EXPECT_EQ(bf16_round(bf16_round(x)), bf16_round(x));  // idempotent: bf16 values are kept exactly
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_GT(changed, 100000u);
}

TEST(Bf16, PackAndUnpackAreTheRoundingBody) {
  std::vector<float> x(1000), back(x.size()), rounded;
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng_normal(5, 6, i));
  std::vector<uint16_t> packed(x.size());
  bf16_pack(packed.data(), x.data(), x.size());
  bf16_unpack(back.data(), packed.data(), x.size());
  rounded = x;
  bf16_round_inplace(rounded.data(), rounded.size());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(packed[i], bf16_from_float(x[i]));
    EXPECT_EQ(bits(back[i]), bits(rounded[i]));
    EXPECT_EQ(bits(back[i]), bits(reference_round(x[i])));
  }
}

// The loops over many floats (runtime/bf16.cpp) run the rounding in vector registers where the
// build has AVX2 or AVX-512: every lane must give the scalar body's bits for every kind of float —
// subnormals (which the CPU's own bf16 conversion reads as zero), NaNs whose payload lies only in
// the low 16 bits, infinities, FLT_MAX, ties — at every position in a vector and in the tail.
TEST(Bf16, VectorLoopsGiveTheScalarBodysBitsForEveryKindOfFloat) {
  std::vector<uint32_t> patterns = {0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x00008000u, 0x00018000u,
                                    0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7f7fffffu, 0xff7fffffu, 0x7f7f8000u,
                                    0x7f800000u, 0xff800000u, 0x7f800001u, 0xff800001u, 0x7fc00000u, 0x7fffffffu,
                                    0xffffffffu, 0x7f80ffffu};
  // Then random bit patterns: every exponent, 0 (subnormal) and 255 (inf/NaN) included.
  for (uint64_t i = 0; patterns.size() < 4099; ++i) patterns.push_back(static_cast<uint32_t>(rng_bits(7, 8, i)));
  std::vector<float> x(patterns.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = from_bits(patterns[i]);
  size_t subnormal = 0, nan = 0;
  for (float v : x) {
    subnormal += std::fpclassify(v) == FP_SUBNORMAL;
    nan += std::isnan(v);
  }
  ASSERT_GT(subnormal, 2u);
  ASSERT_GT(nan, 2u);
  // Every start and length modulo a vector: the vector body and the scalar tail both see each value.
  for (size_t start : {size_t{0}, size_t{1}, size_t{7}, size_t{15}})
    for (size_t n : {size_t{0}, size_t{5}, size_t{16}, size_t{33}, x.size() - start}) {
      SCOPED_TRACE("start " + std::to_string(start) + " n " + std::to_string(n));
      std::vector<uint16_t> packed(n, 0xabcd);
      std::vector<float> rounded(n), back(n), inplace(x.begin() + start, x.begin() + start + n);
      bf16_pack(packed.data(), x.data() + start, n);
      bf16_round_copy(rounded.data(), x.data() + start, n);
      bf16_round_inplace(inplace.data(), n);
      bf16_unpack(back.data(), packed.data(), n);
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) {
        const float v = x[start + i];
        bad += packed[i] != bf16_from_float(v);
        bad += bits(rounded[i]) != bits(bf16_round(v));
        bad += bits(inplace[i]) != bits(bf16_round(v));
        bad += bits(back[i]) != bits(bf16_to_float(packed[i]));
      }
      EXPECT_EQ(bad, 0u);
    }
  // Unpacking every bf16 bit pattern: the upper half of the fp32.
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> wide(all.size());
  bf16_unpack(wide.data(), all.data(), all.size());
  size_t bad = 0;
  for (size_t i = 0; i < all.size(); ++i) bad += bits(wide[i]) != (static_cast<uint32_t>(i) << 16);
  EXPECT_EQ(bad, 0u);
}

TEST(Bf16, PrecisionParsesItsNamesAndRefusesOthers) {
  for (Precision p : {Precision::fp32, Precision::bf16}) EXPECT_EQ(precision_parse(precision_name(p)), p);
  try {
    precision_parse("fp16");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--precision 'fp16'"), std::string::npos) << e.what();
  }
  EXPECT_EQ(compute_precision(), Precision::fp32);  // the default
  {
    ScopedPrecision bf16(Precision::bf16);
    EXPECT_EQ(compute_precision(), Precision::bf16);
  }
  EXPECT_EQ(compute_precision(), Precision::fp32);
}

std::vector<float> normals(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(rng_normal(7, stream, i));
  return v;
}

// gemm_mixed's emulated path in bf16 is gemm() on the rounded inputs, bit for bit (every transpose, padded leading
// dimensions, beta accumulating into C, 1 and 2 threads), and gemm() itself in fp32.
TEST(Bf16, MixedGemmIsTheFp32GemmOfRoundedInputs) {
  const ScopedBf16Gemm emulated(Bf16GemmForce::emulated);  // the oneDNN path: OnednnPath* below
  const int threads = gemm_get_threads();
  for (int t : {1, 2}) {
    gemm_set_threads(t);
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (auto [M, N, K] : {std::array<int, 3>{7, 5, 3}, {300, 128, 64}, {64, 96, 500}}) {
          SCOPED_TRACE(std::string(ta ? "T" : "N") + (tb ? "T" : "N") + " M " + std::to_string(M) + " N " +
                       std::to_string(N) + " K " + std::to_string(K) + ", threads " + std::to_string(t));
          const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;
          const auto A = normals(static_cast<size_t>(ta ? K : M) * lda, 1);
          const auto B = normals(static_cast<size_t>(tb ? N : K) * ldb, 2);
          const auto C0 = normals(static_cast<size_t>(M) * ldc, 3);
          auto Ar = A, Br = B;
          bf16_round_inplace(Ar.data(), Ar.size());
          bf16_round_inplace(Br.data(), Br.size());
          auto want = C0, got = C0, fp32 = C0, plain = C0;
          gemm(ta, tb, M, N, K, 0.5f, Ar.data(), lda, Br.data(), ldb, 1.0f, want.data(), ldc);
          gemm(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 1.0f, plain.data(), ldc);
          {
            ScopedPrecision bf16(Precision::bf16);
            gemm_mixed(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 1.0f, got.data(), ldc);
          }
          gemm_mixed(ta, tb, M, N, K, 0.5f, A.data(), lda, B.data(), ldb, 1.0f, fp32.data(), ldc);
          EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
          EXPECT_EQ(std::memcmp(fp32.data(), plain.data(), fp32.size() * sizeof(float)), 0);
          EXPECT_NE(std::memcmp(got.data(), plain.data(), got.size() * sizeof(float)), 0);  // it rounded
        }
  }
  gemm_set_threads(threads);
}

// Against the exact product (double). Rounding an input to bf16 (8 significant bits, to nearest)
// moves it by at most half an ulp, u = 2^-8 of itself (unit roundoff 2^-p, p = 8), so each product
// a·b by at most (2u + u²)|a·b|; the fp32 GEMM then adds K products with a relative error of at
// most γ_K = K·2^-24/(1 − K·2^-24) of Σ|a·b| (Higham, Accuracy and Stability, §3.1). Per element:
//     |C_bf16 − C_exact| ≤ (2^-7 + 2^-16 + γ_K) · Σ_k |a_ik · b_kj|,
// a worst-case bound (every rounding the same way); for K = 512, 7.8e-3 of Σ|a·b|. The typical
// error is much smaller: each rounding error is about uniform in ±half an ulp, a relative variance
// of (2u)²/12 · E[1/m²] ≈ u²/6 for mantissas m spread over [1, 2), independent across inputs, so
// the error of a K-term sum has a standard deviation of sqrt(K · 2 · u²/6 · E[(a·b)²]) — sqrt(K)·u
// scaled by the products' size. The test also holds the rms error to within 1.4× of that, so a
// coarser rounding (7 bits: twice the error) or none fails it.
TEST(Bf16, MixedGemmIsWithinTheDerivedBoundOfTheExactProduct) {
  ScopedPrecision bf16(Precision::bf16);
  const int M = 64, N = 48, K = 512;
  const auto A = normals(static_cast<size_t>(M) * K, 11), B = normals(static_cast<size_t>(K) * N, 12);
  std::vector<float> C(static_cast<size_t>(M) * N);
  gemm_mixed(false, false, M, N, K, 1.0f, A.data(), K, B.data(), N, 0.0f, C.data(), N);
  const double u = std::ldexp(1.0, -8), gamma = K * std::ldexp(1.0, -24) / (1 - K * std::ldexp(1.0, -24));
  double err2 = 0, prod2 = 0;
  size_t over = 0;
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double exact = 0, abs_sum = 0;
      for (int k = 0; k < K; ++k) {
        const double p = static_cast<double>(A[static_cast<size_t>(i) * K + k]) * B[static_cast<size_t>(k) * N + j];
        exact += p;
        abs_sum += std::fabs(p);
        prod2 += p * p;
      }
      const double err = C[static_cast<size_t>(i) * N + j] - exact;
      over += std::fabs(err) > (2 * u + u * u + gamma) * abs_sum;
      err2 += err * err;
    }
  EXPECT_EQ(over, 0u);
  const double rms = std::sqrt(err2 / (M * N)),
               model = std::sqrt(K * 2 * (u * u / 6) * prod2 / (static_cast<double>(M) * N * K));
  EXPECT_GT(rms, model / 1.4) << "model " << model;
  EXPECT_LT(rms, model * 1.4) << "model " << model;
}

// gemm_mixed's oneDNN path (runtime/onednn_gemm.hpp) against its emulated path, through the
// dispatch (ScopedBf16Gemm). Both round A and B to bf16 the same way, and the product of two bf16
// numbers (8 significant bits each) is exact in fp32; so they differ only in how the fp32 sums
// are ordered (and blocked). Any order of the K products' sum, then alpha's product and beta·c's
// sum, is within γ_{K+2}·(|alpha|·Σ_k|a_k·b_k| + |beta·c|) of the exact value, γ_n = n·u/(1 − n·u),
// u = 2^-24 (Higham, Accuracy and Stability, §3.1): the two paths within twice that of each other.
// Rounding to bf16 moves a result by ~2^-8 of Σ|a·b|/sqrt(K), far beyond the bound, so a path that
// did not round, or rounded or transposed another operand than it should, fails it; so does one
// that read C when beta = 0 (C starts as NaN there). f32: the oneDNN path with its bf16-rounded
// inputs carried as fp32, which runs on any CPU; bf16: oneDNN's bf16 matmul, skipped (saying why)
// where this oneDNN has none. The oneDNN path also computes the same bits on 1 and 2 threads.
class OnednnPath : public ::testing::TestWithParam<OnednnInput> {};

TEST_P(OnednnPath, MatchesTheEmulatedPathWithinTheSummationOrderBound) {
  const OnednnInput in = GetParam();
  const std::string why = onednn_unavailable(in);
  if (!why.empty()) GTEST_SKIP() << why;
  ScopedPrecision bf16(Precision::bf16);
  const Bf16GemmForce force = in == OnednnInput::bf16 ? Bf16GemmForce::onednn : Bf16GemmForce::onednn_f32;
  const double u = std::ldexp(1.0, -24);
  const int threads = gemm_get_threads();
  size_t compared = 0;
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (auto [M, N, K] : {std::array<int, 3>{1, 1, 1}, {7, 5, 3}, {33, 17, 129}, {300, 128, 64}, {64, 96, 500}}) {
        const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5;
        const auto A = normals(static_cast<size_t>(ta ? K : M) * lda, 31);
        const auto B = normals(static_cast<size_t>(tb ? N : K) * ldb, 32);
        // Σ_k |a_ik·b_kj| of the rounded inputs, in double (exact enough for a bound).
        std::vector<double> abs_sum(static_cast<size_t>(M) * N, 0.0);
        for (int i = 0; i < M; ++i)
          for (int k = 0; k < K; ++k) {
            const double a = std::fabs(bf16_round(A[ta ? static_cast<size_t>(k) * lda + i : static_cast<size_t>(i) * lda + k]));
            for (int j = 0; j < N; ++j)
              abs_sum[static_cast<size_t>(i) * N + j] +=
                  a * std::fabs(bf16_round(B[tb ? static_cast<size_t>(j) * ldb + k : static_cast<size_t>(k) * ldb + j]));
          }
        const double gamma = (K + 2) * u / (1 - (K + 2) * u);
        for (float beta : {0.0f, 1.0f})
          for (float alpha : {1.0f, 0.5f})
            for (int ldc : {N, N + 2}) {
              SCOPED_TRACE(std::string(ta ? "T" : "N") + (tb ? "T" : "N") + " M " + std::to_string(M) + " N " +
                           std::to_string(N) + " K " + std::to_string(K) + " alpha " + std::to_string(alpha) +
                           " beta " + std::to_string(beta) + " ldc " + std::to_string(ldc));
              auto C0 = normals(static_cast<size_t>(M) * ldc, 33);
              if (beta == 0.0f) std::fill(C0.begin(), C0.end(), std::numeric_limits<float>::quiet_NaN());
              auto want = C0;
              {
                const ScopedBf16Gemm emulated(Bf16GemmForce::emulated);
                gemm_mixed(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(), ldc);
              }
              std::vector<float> got[2];
              for (int t : {1, 2}) {
                gemm_set_threads(t);
                got[t - 1] = C0;
                const ScopedBf16Gemm onednn(force);
                gemm_mixed(ta, tb, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, got[t - 1].data(), ldc);
              }
              gemm_set_threads(threads);
              EXPECT_EQ(std::memcmp(got[0].data(), got[1].data(), got[0].size() * sizeof(float)), 0) << "1 vs 2 threads";
              size_t over = 0;
              for (int i = 0; i < M; ++i)
                for (int j = 0; j < ldc; ++j) {
                  const size_t at = static_cast<size_t>(i) * ldc + j;
                  if (j >= N) {  // the padding is left alone
                    over += std::memcmp(&got[0][at], &C0[at], sizeof(float)) != 0;
                    continue;
                  }
                  const double scale = std::fabs(alpha) * abs_sum[static_cast<size_t>(i) * N + j] +
                                       (beta != 0.0f ? std::fabs(beta * C0[at]) : 0.0);
                  over += !(std::fabs(static_cast<double>(got[0][at]) - want[at]) <= 2 * gamma * scale);
                  ++compared;
                }
              EXPECT_EQ(over, 0u);
            }
      }
  EXPECT_GT(compared, 0u);
}

// An expert's row count changes every step: the oneDNN path must not create a primitive for each
// (runtime/onednn_gemm.hpp: rows in multiples of a quantum, depth padded to 32). 96 row counts and 96
// depths (the weight gradients' depth is a row count) on one thread, each product checked against
// the emulated path within the summation-order bound's spirit (relative 1e-5 of Σ|a·b|: the same
// rounded inputs, fp32 sums in another order), and the primitives created counted.
TEST_P(OnednnPath, ChangingRowCountsAndDepthsMeetFewShapes) {
  const OnednnInput in = GetParam();
  const std::string why = onednn_unavailable(in);
  if (!why.empty()) GTEST_SKIP() << why;
  const int period = onednn_row_period(in);
  if (period == 0) GTEST_SKIP() << "no row split keeps this oneDNN's bits: products stay whole, one shape per row count";
  ScopedPrecision bf16(Precision::bf16);
  const Bf16GemmForce force = in == OnednnInput::bf16 ? Bf16GemmForce::onednn : Bf16GemmForce::onednn_f32;
  const int threads = gemm_get_threads();
  gemm_set_threads(1);
  const int N = 48, D = 40;
  const auto A = normals(static_cast<size_t>(400) * D, 41), B = normals(static_cast<size_t>(400) * N, 42);
  // Warm: the first product of each kind creates its shapes.
  std::vector<float> C(static_cast<size_t>(400) * N), want(C.size());
  auto both = [&](bool ta, int M, int K, int lda, int ldb) {  // C = op(A)·B, onednn against emulated
    {
      const ScopedBf16Gemm emulated(Bf16GemmForce::emulated);
      gemm_mixed(ta, false, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, want.data(), N);
    }
    const ScopedBf16Gemm onednn(force);
    gemm_mixed(ta, false, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), N);
    double worst = 0;
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        double scale = 0;
        for (int k = 0; k < K; ++k)
          scale += std::fabs(bf16_round(A[ta ? static_cast<size_t>(k) * lda + i : static_cast<size_t>(i) * lda + k]) *
                             bf16_round(B[static_cast<size_t>(k) * ldb + j]));
        const size_t at = static_cast<size_t>(i) * N + j;
        worst = std::max(worst, std::fabs(static_cast<double>(C[at]) - want[at]) / std::max(scale, 1e-30));
      }
    return worst;
  };
  both(false, 300, D, D, N);
  both(true, D, 300, D, N);
  const int64_t before = onednn_primitives_created();
  double worst = 0;
  for (int n = 300; n < 396; ++n) {
    worst = std::max(worst, both(false, n, D, D, N));  // forward: rows = M
    worst = std::max(worst, both(true, D, n, D, N));   // weight gradient: rows = depth
  }
  const int64_t created = onednn_primitives_created() - before;
  gemm_set_threads(threads);
  const int quantum = period * std::max(1, 32 / period);
  // Rows: whole quanta (a new count each time n passes a multiple) and one quantum for the rest;
  // depths: one per 32. Without the quanta: 192.
  const int64_t bound = 96 / quantum + 2 + 96 / 32 + 2;
  std::printf("[ info     ] 96 row counts and 96 depths: %lld primitives created (bound %lld; quantum %d rows)\n",
              static_cast<long long>(created), static_cast<long long>(bound), quantum);
  EXPECT_LE(created, bound);
  EXPECT_LT(worst, 1e-5);
}

}  // namespace
// gtest prints a parameter through PrintTo found next to its type (uoe::OnednnInput).
void PrintTo(OnednnInput input, std::ostream* os) { *os << (input == OnednnInput::bf16 ? "bf16" : "f32"); }
namespace {

INSTANTIATE_TEST_SUITE_P(Carriers, OnednnPath, ::testing::Values(OnednnInput::f32, OnednnInput::bf16),
                         [](const ::testing::TestParamInfo<OnednnInput>& info) {
                           return std::string(info.param == OnednnInput::bf16 ? "bf16" : "f32");
                         });

// The path this process chose follows from this CPU's features (runtime/cpu_features.hpp's table
// test has the mapping) and from whether oneDNN runs a bf16 matmul here; the start-up line names it.
TEST(OnednnPathChoice, FollowsThisCpuAndOnednn) {
  if (const char* user = std::getenv("UOE_BF16_GEMM")) GTEST_SKIP() << "UOE_BF16_GEMM=" << user << " is set";
  const CpuFeatures f = cpu_features_detect();
  const bool has_bf16 = f.avx512_bf16 || (f.amx_tile && f.amx_bf16);
  const bool runs = onednn_unavailable(OnednnInput::bf16).empty();
  const Bf16GemmPath path = gemm_bf16_path();
  EXPECT_EQ(path == Bf16GemmPath::onednn, has_bf16 && runs) << gemm_bf16_describe();
  const std::string line = gemm_bf16_describe();
  EXPECT_NE(line.find(path == Bf16GemmPath::onednn ? "oneDNN" : "emulated"), std::string::npos) << line;
  if (!has_bf16) {
    EXPECT_NE(line.find("no bf16 instructions"), std::string::npos) << line;
  } else if (!runs) {
    EXPECT_NE(line.find("cannot create a bf16 matmul"), std::string::npos) << line;
  }
  // A forced oneDNN path where oneDNN has no bf16 matmul fails with oneDNN's reason, not a crash.
  if (!runs) {
    ScopedPrecision bf16(Precision::bf16);
    const ScopedBf16Gemm onednn(Bf16GemmForce::onednn);
    std::vector<float> A(12, 1.0f), B(12, 1.0f), C(9);
    try {
      gemm_mixed(false, false, 3, 3, 4, 1.0f, A.data(), 4, B.data(), 3, 0.0f, C.data(), 3);
      ADD_FAILURE() << "the forced oneDNN path ran although " << onednn_unavailable(OnednnInput::bf16);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bf16 matmul"), std::string::npos) << e.what();
    }
  }
}

// Routing is decided in fp32 in both precisions: the same router weights and input give the same
// logits, choices, gates and drops, bit for bit.
TEST(Bf16, SameWeightsRouteIdenticallyInBothPrecisions) {
  RouterSpec spec;
  spec.experts = 8;
  spec.topk = 2;
  spec.capacity_factor = 1.0;
  spec.aux_weight = 0.01;
  spec.z_weight = 1e-3;
  const int N = 256, d = 64;
  const auto x = normals(static_cast<size_t>(N) * d, 21), W = normals(static_cast<size_t>(d) * spec.experts, 22);
  const auto b = normals(spec.experts, 23);
  Routing r32, r16;
  router_forward(r32, spec, x.data(), W.data(), b.data(), N, d, false);
  {
    ScopedPrecision bf16(Precision::bf16);
    router_forward(r16, spec, x.data(), W.data(), b.data(), N, d, false);
  }
  EXPECT_EQ(std::memcmp(r16.probs.data(), r32.probs.data(), r32.probs.size() * sizeof(float)), 0);
  EXPECT_EQ(r16.choice, r32.choice);
  EXPECT_EQ(r16.gate, r32.gate);
  EXPECT_EQ(r16.kept, r32.kept);
  EXPECT_EQ(r16.dropped, r32.dropped);
  EXPECT_GT(r32.dropped, 0);  // the capacity path decided something
  // The logits through the bf16 GEMM would differ: routing in bf16 would be a real difference.
  std::vector<float> l32(static_cast<size_t>(N) * spec.experts), l16(l32.size());
  gemm(false, false, N, spec.experts, d, 1.0f, x.data(), d, W.data(), spec.experts, 0.0f, l32.data(), spec.experts);
  {
    ScopedPrecision bf16(Precision::bf16);
    gemm_mixed(false, false, N, spec.experts, d, 1.0f, x.data(), d, W.data(), spec.experts, 0.0f, l16.data(),
               spec.experts);
  }
  EXPECT_NE(l16, l32);
}

ModelSpec small_spec() { return model_spec_resolve(small_test_spec()); }
std::vector<int32_t> tokens(int n, int V, uint64_t stream) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<int32_t>(rng_below(23, stream, static_cast<uint64_t>(i), V));
  return v;
}

// Three AdamW steps of a step over backend Be (recomputation `mode`, `chunks` chunks) in bf16
// against the CPU backend's in bf16: losses, routing, every gradient and the parameters bit for
// bit. Returns the CPU backend's gradients of the first step.
template <class Be>
std::vector<float> expect_bf16_step_matches_cpu(Recompute mode, int chunks) {
  ScopedPrecision bf16(Precision::bf16);
  const ModelSpec spec = small_spec();
  LocalExchange ex_ref, ex_other;
  Model ref_model(spec, 5, &ex_ref), other_model(spec, 5, &ex_other);
  CpuStep ref(ref_model);
  ref.set_chunks(chunks);
  Step<Be> other(other_model);
  other.set_chunks(chunks);
  other.set_recompute(mode);
  AdamW opt_ref(ref_model.params(), AdamWSpec{}), opt_other(other_model.params(), AdamWSpec{});
  const int B = 4, N = B * spec.seq_len;
  std::vector<float> first;
  for (int it = 1; it <= 3; ++it) {
    ref.zero_gradients();
    other.zero_gradients();
    const auto in = tokens(N, spec.vocab, 2 * it), tg = tokens(N, spec.vocab, 2 * it + 1);
    ForwardStats sr, so;
    ref.forward_backward(in.data(), tg.data(), B, 1.0f, &sr);
    other.forward_backward(in.data(), tg.data(), B, 1.0f, &so);
    EXPECT_EQ(so.ce_sum, sr.ce_sum) << "step " << it;
    EXPECT_EQ(other.routing_fingerprint(), ref.routing_fingerprint()) << "step " << it;
    other.state_to_host(&opt_other);
    const ParamStore& pr = ref_model.params();
    const ParamStore& po = other_model.params();
    EXPECT_EQ(std::memcmp(po.grads().data(), pr.grads().data(), pr.total() * sizeof(float)), 0) << "step " << it;
    if (it == 1) first.assign(pr.grads().data(), pr.grads().data() + pr.total());
    ref.optimizer_update(opt_ref, 1e-2, it, 1.0f);
    other.optimizer_update(opt_other, 1e-2, it, 1.0f);
    other.state_to_host(&opt_other);
    EXPECT_EQ(std::memcmp(po.values().data(), pr.values().data(), pr.total() * sizeof(float)), 0) << "step " << it;
    // The master parameters stay fp32: updates are not rounded to bf16.
    size_t not_bf16 = 0;
    for (size_t i = 0; i < pr.total(); ++i) not_bf16 += bf16_round(pr.values()[i]) != pr.values()[i];
    EXPECT_GT(not_bf16, pr.total() / 2) << "step " << it;
  }
  return first;
}

// The device-like backend (the CUDA backend's policies on the CPU kernels: its bf16 rounding of
// the experts' rows is the twin of the CUDA kernel's body) and recomputation, in bf16.
TEST(Bf16, DeviceLikeBackendMatchesCpuBackendBitwise) {
  expect_bf16_step_matches_cpu<DeviceLikeBackend>(Recompute::none, 1);
  expect_bf16_step_matches_cpu<DeviceLikeBackend>(Recompute::none, 3);
}
TEST(Bf16, RecomputationGivesBitwiseTheSameGradients) {
  for (Recompute mode : {Recompute::experts, Recompute::blocks}) {
    SCOPED_TRACE(recompute_name(mode));
    expect_bf16_step_matches_cpu<CpuBackend>(mode, 1);
    expect_bf16_step_matches_cpu<DeviceLikeBackend>(mode, 2);
  }
}

// bf16 changes the gradients (the precision took effect), by about bf16's resolution: the global
// gradient's relative difference from fp32's lies between 2^-14 and 2^-4.
TEST(Bf16, GradientsDifferFromFp32ByBf16Resolution) {
  const std::vector<float> g16 = expect_bf16_step_matches_cpu<CpuBackend>(Recompute::none, 1);
  const ModelSpec spec = small_spec();
  LocalExchange ex;
  Model m(spec, 5, &ex);
  CpuStep step(m);
  const int B = 4, N = B * spec.seq_len;
  const auto in = tokens(N, spec.vocab, 2), tg = tokens(N, spec.vocab, 3);
  ForwardStats s;
  step.zero_gradients();
  step.forward_backward(in.data(), tg.data(), B, 1.0f, &s);
  const float* g32 = m.params().grads().data();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < g16.size(); ++i) {
    diff += (static_cast<double>(g16[i]) - g32[i]) * (static_cast<double>(g16[i]) - g32[i]);
    norm += static_cast<double>(g32[i]) * g32[i];
  }
  const double rel = std::sqrt(diff / norm);
  EXPECT_GT(rel, std::ldexp(1.0, -14));
  EXPECT_LT(rel, std::ldexp(1.0, -4));
}

// A short bf16 training run through the oneDNN path against the same run through the emulated
// path (and fp32): four AdamW steps on one batch. It trains (every loss finite, the last below the
// first), its losses stay within 1e-3 (relative) of the emulated path's, and its first gradients
// differ from the emulated path's by less than a quarter of what bf16 itself moves them from fp32:
// the paths differ only in the order of fp32 sums (a relative ~K·2^-24 per GEMM), which later
// roundings to bf16 may turn into a changed last bit of a few inputs, while the emulated path's
// rounding of every input moves the gradients by 2^-14..2^-4 (GradientsDifferFromFp32ByBf16Resolution).
struct TrainRun {
  std::vector<double> losses;
  std::vector<float> first_grads;
};
TrainRun train_small(Precision p, Bf16GemmForce force) {
  ScopedPrecision precision(p);
  const ScopedBf16Gemm path(force);
  const ModelSpec spec = small_spec();
  LocalExchange ex;
  Model model(spec, 5, &ex);
  CpuStep step(model);
  AdamW opt(model.params(), AdamWSpec{});
  const int B = 4, N = B * spec.seq_len;
  const auto in = tokens(N, spec.vocab, 2), tg = tokens(N, spec.vocab, 3);
  TrainRun run;
  for (int it = 1; it <= 4; ++it) {
    step.zero_gradients();
    ForwardStats s;
    step.forward_backward(in.data(), tg.data(), B, 1.0f, &s);
    run.losses.push_back(s.ce_sum);
    if (it == 1) run.first_grads.assign(model.params().grads().data(), model.params().grads().data() + model.params().total());
    step.optimizer_update(opt, 1e-2, it, 1.0f);
  }
  return run;
}
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff / norm);
}

TEST_P(OnednnPath, TrainsLikeTheEmulatedPath) {
  const OnednnInput in = GetParam();
  const std::string why = onednn_unavailable(in);
  if (!why.empty()) GTEST_SKIP() << why;
  const TrainRun emulated = train_small(Precision::bf16, Bf16GemmForce::emulated);
  const TrainRun onednn =
      train_small(Precision::bf16, in == OnednnInput::bf16 ? Bf16GemmForce::onednn : Bf16GemmForce::onednn_f32);
  const TrainRun fp32 = train_small(Precision::fp32, Bf16GemmForce::none);
  ASSERT_EQ(onednn.losses.size(), emulated.losses.size());
  for (size_t i = 0; i < onednn.losses.size(); ++i) {
    EXPECT_TRUE(std::isfinite(onednn.losses[i])) << "step " << i + 1;
    EXPECT_LE(std::fabs(onednn.losses[i] - emulated.losses[i]), 1e-3 * std::fabs(emulated.losses[i])) << "step " << i + 1;
  }
  EXPECT_LT(onednn.losses.back(), onednn.losses.front());
  const double order = relative_difference(onednn.first_grads, emulated.first_grads);
  const double rounding = relative_difference(emulated.first_grads, fp32.first_grads);
  EXPECT_LT(order, rounding / 4) << "oneDNN vs emulated " << order << ", bf16 vs fp32 " << rounding;
  std::printf("[ info     ] oneDNN (%s inputs) vs emulated: first gradients %.3g apart (relative), bf16 vs fp32 %.3g; "
              "losses %.6g → %.6g (emulated %.6g → %.6g)\n",
              in == OnednnInput::bf16 ? "bf16" : "f32-carried", order, rounding, onednn.losses.front(),
              onednn.losses.back(), emulated.losses.front(), emulated.losses.back());
}

// The memory estimate in bf16 (layers/memory.hpp): the fp32 items unchanged (activations stay fp32
// buffers on the CPU path), plus the GEMMs' rounded input copies — at least the tied head's logits
// and embedding — and, with rows travelling, their bf16 staging: 2 bytes an element, twice.
TEST(Bf16, MemoryEstimateAddsTheRoundedCopiesAndTheStaging) {
  const ModelSpec spec = small_spec();
  for (int ep : {1, 2}) {
    MemoryRun run;
    run.batch_size = 4;
    run.ep = ep;
    run.world_size = ep;
    const MemoryEstimate f32 = memory_estimate(spec, run);
    run.precision = Precision::bf16;
    const MemoryEstimate b16 = memory_estimate(spec, run);
    for (const MemoryItem& i : f32.items) EXPECT_EQ(b16.bytes_of(i.name), i.bytes) << i.name;
    const double N = 4.0 * spec.seq_len;
    EXPECT_GE(b16.bytes_of("bf16 GEMM input copies"), 4.0 * (N * spec.vocab + static_cast<double>(spec.vocab) * spec.d));
    EXPECT_EQ(b16.bytes_of("bf16 exchange staging"), ep > 1 ? 2 * 2.0 * b16.rows_per_block * spec.d : 0.0);
    EXPECT_EQ(b16.total(), f32.total() + b16.bytes_of("bf16 GEMM input copies") + b16.bytes_of("bf16 exchange staging"));
  }
}

}  // namespace
}  // namespace uoe
