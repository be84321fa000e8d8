#include "runtime/gemm.hpp"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "runtime/profile.hpp"

namespace uoe {
namespace {
constexpr double kSmallGemm = 1e6;  // OpenBLAS's small-matrix limit on M·N·K (sgemm, SKYLAKEX kernels)
constexpr int kMinPiece = 16;       // thinner pieces would lose more than packing costs
constexpr int kMinRowsToTranspose = 128;     // NT → NN only when the copy of B is amortised
constexpr size_t kMaxTransposed = 1 << 18;  // and B is a weight-sized operand (≤ 1 MB)
int g_threads = openblas_get_num_threads();  // kept by gemm_set_threads
// OpenBLAS has small-matrix sgemm kernels (from 0.3.17) for its AVX-512 x86 cores only; elsewhere
// the pieces would take the packed path with fewer rows, which is slower, so they stay whole. The
// decision depends on the library and the CPU only, never on a timing, so runs stay reproducible.
bool blas_has_small_kernels() {
  int major = 0, minor = 0, patch = 0;
  if (std::sscanf(openblas_get_config(), "OpenBLAS %d.%d.%d", &major, &minor, &patch) != 3) return false;
  if (major == 0 && (minor < 3 || (minor == 3 && patch < 17))) return false;
  std::string core = openblas_get_corename();
  std::transform(core.begin(), core.end(), core.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return core == "skylakex" || core == "cooperlake" || core == "sapphirerapids";
}
const bool g_split = [] {
  const char* e = std::getenv("UOE_GEMM_SPLIT");
  if (e && std::string(e) == "0") return false;
  return blas_has_small_kernels();
}();

// out [K, N] (leading dimension ldo) = in [N, K]ᵀ, in 16 × 16 tiles that stay in L1.
void transpose(float* __restrict__ out, int ldo, const float* __restrict__ in, int ldi, int N, int K) {
  constexpr int kTile = 16;
  for (int n0 = 0; n0 < N; n0 += kTile)
    for (int k0 = 0; k0 < K; k0 += kTile) {
      const int n1 = std::min(N, n0 + kTile), k1 = std::min(K, k0 + kTile);
      for (int k = k0; k < k1; ++k)
        for (int n = n0; n < n1; ++n) out[static_cast<size_t>(k) * ldo + n] = in[static_cast<size_t>(n) * ldi + k];
    }
}
}  // namespace

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  const ProfileScope profile(Phase::gemm);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    // BLAS leaves C untouched for K = 0 only when beta = 1; make the beta scaling explicit.
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  // With one BLAS thread, NN products and TN products (weight gradients, K = rows) are cut into
  // pieces of at most kSmallGemm multiply-adds: OpenBLAS runs such pieces with its small-matrix
  // kernels (0.3.17+, on AVX-512 cores), which need no packing of A and B and no separate zeroing
  // of C for beta = 0. For the model's shapes (K or N = 128, a few hundred rows) that is 100-104
  // → 111-116 GFLOP/s on the reference machine, +5% on a training step (bench/README.md's log).
  // NT products are left whole: OpenBLAS's small NT kernel is slower than its packed path. Cut
  // NN products give each element the sum of the whole product; cut TN products add K in pieces
  // (C + A₁ᵀB₁ + A₂ᵀB₂ …), a fixed order, so results stay bitwise reproducible for a given BLAS
  // thread count (they differ in the last bits from --threads 2, which calls the packed path).
  // Only where OpenBLAS has those kernels (blas_has_small_kernels); UOE_GEMM_SPLIT=0 in the
  // environment turns this off (for comparisons).
  if (g_split && g_threads == 1 && trans_b && !trans_a && M >= kMinRowsToTranspose &&
      static_cast<size_t>(N) * K <= kMaxTransposed && static_cast<double>(M) * N * K > kSmallGemm) {
    // An NT product with a small B (a weight, in backward) becomes an NN one on a transposed copy of
    // B: the copy costs ~N·K moves, the NN pieces save ~10% of 2·M·N·K flops' time from M ≈ 100 on.
    static thread_local std::vector<float> bt;
    bt.resize(static_cast<size_t>(N) * K);
    transpose(bt.data(), N, B, ldb, N, K);
    gemm(false, false, M, N, K, alpha, A, lda, bt.data(), N, beta, C, ldc);
    return;
  }
  if (g_split && g_threads == 1 && !trans_b && static_cast<double>(M) * N * K > kSmallGemm) {
    if (!trans_a) {
      const int rows = static_cast<int>(kSmallGemm / (static_cast<double>(N) * K));
      if (rows >= kMinPiece) {
        for (int r0 = 0; r0 < M; r0 += rows)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, std::min(rows, M - r0), N, K, alpha,
                      A + static_cast<size_t>(r0) * lda, lda, B, ldb, beta, C + static_cast<size_t>(r0) * ldc, ldc);
        return;
      }
    } else {
      const int depth = static_cast<int>(kSmallGemm / (static_cast<double>(M) * N));
      if (depth >= kMinPiece) {
        for (int k0 = 0; k0 < K; k0 += depth)
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, std::min(depth, K - k0), alpha,
                      A + static_cast<size_t>(k0) * lda, lda, B + static_cast<size_t>(k0) * ldb, ldb,
                      k0 == 0 ? beta : 1.0f, C, ldc);
        return;
      }
    }
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

double gemm_measure_gflops(int n, int reps) {
  std::vector<float> a(static_cast<size_t>(n) * n), b(a.size()), c(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<float>(i % 7) * 0.1f;
    b[i] = static_cast<float>(i % 5) * 0.1f;
  }
  gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);  // warm-up
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * n * n * static_cast<double>(n) / best * 1e-9;
}

void gemm_set_threads(int n) {
  if (n > 0) openblas_set_num_threads(n);
  g_threads = openblas_get_num_threads();
}
int gemm_get_threads() { return openblas_get_num_threads(); }

std::string gemm_describe() {
  std::string s = std::string("OpenBLAS ") + openblas_get_corename();
  if (!g_split) return s + ", whole GEMMs";
  return s + (g_threads == 1 ? ", small-matrix GEMM pieces" : ", whole GEMMs (pieces only with 1 thread)");
}

}  // namespace uoe
