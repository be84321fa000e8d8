#include "runtime/gemm.hpp"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/bf16.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm_own.hpp"
#include "runtime/kernels.hpp"
#include "runtime/onednn_gemm.hpp"
#include "runtime/profile.hpp"
#include "runtime/tensor.hpp"
#include "runtime/threads.hpp"

namespace uoe {
namespace {
constexpr double kSmallGemm = 1e6;  // OpenBLAS's small-matrix limit on M·N·K (sgemm, SKYLAKEX kernels)
constexpr int kMinPiece = 16;       // thinner pieces would lose more than packing costs
constexpr int kMinRowsToTranspose = 128;     // NT → NN only when the copy of B is amortised
constexpr size_t kMaxTransposed = 1 << 18;  // and B is a weight-sized operand (≤ 1 MB)
constexpr double kMinParallelMacs = 1 << 19;  // ~5-10 µs on one thread: smaller products stay whole
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
// The BLAS runs single-threaded from the start (OpenBLAS would otherwise start with one thread per
// core): the compute threads are runtime/threads.hpp's.
const bool g_blas_single_threaded = [] {
  openblas_set_num_threads(1);
  return true;
}();
const bool g_split = [] {
  const char* e = std::getenv("UOE_GEMM_SPLIT");
  if (e && std::string(e) == "0") return false;
  return blas_has_small_kernels();
}();

// uoe's own kernels (runtime/gemm_own.hpp) for the model's small products: OpenBLAS's Haswell
// kernels (AVX2 CPUs) pack both operands and zero C on every call, and its SkylakeX/Cooperlake ones
// (AVX-512 CPUs) run products of K = 128 at 47-60% of the FMA peak against 85% for K = 512
// (bench/README.md, the AVX-512 kernel's section and the optimisation log). The widest kernel the CPU runs is used; UOE_GEMM_KERNEL=
// openblas, =uoe (the widest) or =uoe-avx2 in the environment overrides the choice (for
// comparisons). Depends on the CPU and the environment only.
struct OwnChoice {
  bool on = false;
  OwnGemmIsa isa = OwnGemmIsa::avx2;
};
const OwnChoice& own_kernel() {
  static const OwnChoice own = [] {
    const char* e = std::getenv("UOE_GEMM_KERNEL");
    const std::string v = e ? e : "";
    const bool wide = gemm_own_available(OwnGemmIsa::avx512), narrow = gemm_own_available(OwnGemmIsa::avx2);
    if (v == "openblas") return OwnChoice{};
    if (v == "uoe-avx2") {
      if (!narrow) fail("UOE_GEMM_KERNEL=uoe-avx2: this CPU or build has no AVX2 + FMA for uoe's kernel");
      return OwnChoice{true, OwnGemmIsa::avx2};
    }
    if (v == "uoe") {
      if (!narrow) fail("UOE_GEMM_KERNEL=uoe: this CPU or build has no AVX2 + FMA for uoe's kernel");
      return OwnChoice{true, wide ? OwnGemmIsa::avx512 : OwnGemmIsa::avx2};
    }
    if (!v.empty()) fail("UOE_GEMM_KERNEL=", v, ": expected openblas, uoe or uoe-avx2");
    if (wide) return OwnChoice{true, OwnGemmIsa::avx512};
    return OwnChoice{narrow && cpu_vector_isa(cpu_features_detect()) == VectorIsa::avx2_fma, OwnGemmIsa::avx2};
  }();
  return own;
}
// The depth up to which NN and NT products take the own kernel: 512 for its AVX-512 width (the
// products of d 512 — NN 1.03-1.05×, NT 1.14-1.24× OpenBLAS Cooperlake's rate on 2 threads, the d 512
// step +4.3-4.7% on 2 threads, +2.5% on 1), 256 for the AVX2 width (measured against OpenBLAS Haswell on a Zen 3; deeper
// ones were not). TN products (weight gradients, K = rows) and deeper ones stay OpenBLAS's, which
// ran them as fast or faster (bench/README.md's optimisation log). gemm_set_own_deep(false) holds
// the AVX-512 width to 256 too (bench-step --ab own-deep). Depends on the CPU, the environment and
// that switch only — never on M or the thread count — so a product's bits do not either.
constexpr int kOwnMaxDepthAvx2 = 256, kOwnMaxDepthAvx512 = 512;
std::atomic<bool> g_own_deep{true};
std::atomic<bool> g_touch_tn{true};  // gemm_set_touch_tn
int own_max_depth() {
  return own_kernel().isa == OwnGemmIsa::avx512 && g_own_deep.load(std::memory_order_relaxed) ? kOwnMaxDepthAvx512
                                                                                                : kOwnMaxDepthAvx2;
}
bool own_kernel_takes(bool trans_a, int K) { return !trans_a && own_kernel().on && K <= own_max_depth(); }

}  // namespace

namespace {
// The rows of an NN product's small-matrix pieces (below), at a multiple of the row period; and the
// depth of a TN product's.
int piece_rows(int N, int K, int period) {
  const int rows = static_cast<int>(kSmallGemm / (static_cast<double>(N) * K));
  return period > 0 ? rows - rows % period : rows;
}
int piece_depth(int whole_M, int whole_N) {
  return static_cast<int>(kSmallGemm / (static_cast<double>(whole_M) * whole_N));
}
// Whether gemm_part gives OpenBLAS the whole product (or its thread's part of it) in one call above
// the small-matrix limit, rather than in small-matrix pieces or to uoe's kernel.
bool one_large_blas_call(bool trans_a, bool trans_b, int whole_M, int whole_N, int K, int period) {
  if (own_kernel_takes(trans_a, K) || static_cast<double>(whole_M) * whole_N * K <= kSmallGemm) return false;
  if (!g_split || trans_b) return true;
  return (trans_a ? piece_depth(whole_M, whole_N) : piece_rows(whole_N, K, period)) < kMinPiece;
}

// One part of a product on the calling thread (the BLAS is single-threaded: runtime/threads.hpp).
// whole_M, whole_N: the whole product's, so that how K is cut into pieces does not depend on how
// the product was split over threads; period: the row period the product is split at (row_period(),
// or the candidate being probed), so that its row pieces are cut at multiples of it too — every
// call then starts at a multiple of the period in the whole product, whatever the thread count.
void gemm_part_run(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                   const float* B, int ldb, float beta, float* C, int ldc, int whole_M, int whole_N, int period) {
  if (own_kernel_takes(trans_a, K)) {
    gemm_own(own_kernel().isa, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // TN products (weight gradients: A the layer's input rows, saved by the forward long before) read
  // A in a transposed order the hardware's prefetchers do not follow, from memory in the step: A's
  // rows read once in address order first cost less than the misses they save (bench/README.md,
  // "Cold operands"). Not for the router's products a vector or less wide.
  if (trans_a && N >= 16 && g_touch_tn.load(std::memory_order_relaxed)) touch_lines(A, K, M, lda);
  // NN products and TN products (weight gradients, K = rows) are cut into pieces of at most
  // kSmallGemm multiply-adds: OpenBLAS runs such pieces with its small-matrix kernels (0.3.17+, on
  // AVX-512 cores), which need no packing of A and B and no separate zeroing of C for beta = 0. For
  // the model's shapes (K or N = 128, a few hundred rows) that is 100-104 → 111-116 GFLOP/s on the
  // reference machine, +5% on a training step (bench/README.md's log). Cut NN products give each
  // element the sum of the whole product; cut TN products add K in pieces (C + A₁ᵀB₁ + A₂ᵀB₂ …) of a
  // depth fixed by the whole product's M·N, so a split over threads does not move the cuts.
  // Only where OpenBLAS has those kernels (blas_has_small_kernels); UOE_GEMM_SPLIT=0 in the
  // environment turns this off (for comparisons).
  if (g_split && !trans_b && static_cast<double>(whole_M) * whole_N * K > kSmallGemm) {
    if (!trans_a) {
      const int rows = piece_rows(N, K, period);
      if (rows >= kMinPiece) {
        for (int r0 = 0; r0 < M; r0 += rows)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, std::min(rows, M - r0), N, K, alpha,
                      A + static_cast<size_t>(r0) * lda, lda, B, ldb, beta, C + static_cast<size_t>(r0) * ldc, ldc);
        return;
      }
    } else {
      const int depth = piece_depth(whole_M, whole_N);
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

// gemm_observe: 0 off, 1 timing the parts, 2 timing them and their replays.
std::atomic<int> g_observe{0};
std::mutex g_observed_mu;
std::array<GemmKindTimes, kGemmKinds> g_observed;

GemmKind kind_of(bool trans_a, bool trans_b, int M, int N) {
  if (std::min(M, N) <= kNarrowProduct) return GemmKind::narrow;
  return trans_a ? GemmKind::tn : trans_b ? GemmKind::nt : GemmKind::nn;
}

void gemm_part(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
               const float* B, int ldb, float beta, float* C, int ldc, int whole_M, int whole_N, int period) {
  const int observe = g_observe.load(std::memory_order_relaxed);
  if (observe == 0) {
    gemm_part_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, whole_M, whole_N, period);
    return;
  }
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  gemm_part_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, whole_M, whole_N, period);
  const double seconds = std::chrono::duration<double>(clock::now() - t0).count();
  double hot = 0;
  if (observe == 2) {  // the same part at once, its operands now in cache, into a scratch C
    static thread_local FloatBuffer scratch;
    scratch.resize_uninit(static_cast<size_t>(M) * ldc);
    const auto t1 = clock::now();
    gemm_part_run(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, 0.0f, scratch.data(), ldc, whole_M, whole_N,
                  period);
    hot = std::chrono::duration<double>(clock::now() - t1).count();
  }
  const std::lock_guard<std::mutex> lock(g_observed_mu);
  GemmKindTimes& t = g_observed[static_cast<int>(kind_of(trans_a, trans_b, M, N))];
  ++t.calls;
  t.flops += 2.0 * M * N * static_cast<double>(K);
  t.seconds += seconds;
  t.hot_seconds += hot;
}

// The BLAS kernels compute C in tiles of rows, with other code for a last, shorter tile; so C's rows
// split at multiples of the tile height get the same bits as the whole product, and split
// elsewhere they do not (OpenBLAS's Haswell/Zen sgemm: multiples of 24 rows). Columns split at no
// multiple tried keep the bits there. The period is found once, by trying: the smallest candidate
// whose splits give the whole product's bits for every transpose and three depths (through
// gemm_part, so the piece logic above is part of what is tried), or 0 — products stay whole. The
// deepest is beyond what uoe's kernel takes at any width, so OpenBLAS's NN/NT kernels are tried
// too (uoe's own kernel keeps the bits at any split).
int probe_row_period() {
  std::vector<float> A, B, whole, parts;
  for (int period : {4, 8, 16, 24, 32, 48, 64, 96, 128}) {
    bool same = true;
    const int M = 5 * period + period / 2 + 3, N = 64;
    for (int K : {80, 300, kOwnMaxDepthAvx512 + 44})
      for (int t = 0; t < 4 && same; ++t) {
        const bool ta = t & 1, tb = t & 2;
        A.resize(static_cast<size_t>(M) * K);
        B.resize(static_cast<size_t>(K) * N);
        for (size_t i = 0; i < A.size(); ++i) A[i] = static_cast<float>((i * 2654435761u) % 1999) * 1e-3f - 1.0f;
        for (size_t i = 0; i < B.size(); ++i) B[i] = static_cast<float>((i * 40503u) % 1997) * 1e-3f - 1.0f;
        whole.assign(static_cast<size_t>(M) * N, 0.0f);
        parts.assign(whole.size(), 0.0f);
        const int lda = ta ? M : K, ldb = tb ? K : N;
        gemm_part_run(ta, tb, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, whole.data(), N, M, N, period);
        const int cut[] = {0, period, 3 * period, M};
        for (int p = 0; p < 3; ++p)
          gemm_part_run(ta, tb, cut[p + 1] - cut[p], N, K, 1.0f, ta ? A.data() + cut[p] : A.data() + cut[p] * lda, lda,
                        B.data(), ldb, 0.0f, parts.data() + static_cast<size_t>(cut[p]) * N, N, M, N, period);
        same = std::memcmp(whole.data(), parts.data(), whole.size() * sizeof(float)) == 0;
      }
    if (same) return period;
  }
  return 0;
}
int row_period() {
  static const int period = probe_row_period();
  return period;
}
}  // namespace

namespace {
// Whether gemm() multiplies an NT product as an NN one on a transposed copy of B: a small B (a
// weight, in backward), where the copy's ~N·K moves cost less than the NN pieces save (~10% of
// 2·M·N·K flops' time from M ≈ 100 on).
bool nt_through_transpose(bool trans_a, bool trans_b, int M, int N, int K) {
  return g_split && trans_b && !trans_a && !own_kernel_takes(trans_a, K) && M >= kMinRowsToTranspose &&
         static_cast<size_t>(N) * K <= kMaxTransposed && static_cast<double>(M) * N * K > kSmallGemm;
}
const float* transposed_copy(const float* B, int ldb, int N, int K) {
  static thread_local std::vector<float> bt;
  bt.resize(static_cast<size_t>(N) * K);
  transpose(bt.data(), N, B, ldb, N, K);
  return bt.data();
}

// How gemm() cuts a product over `threads` threads. Large products are split by rows of C, at
// multiples of the kernels' row period: a part is C's rows [m0, m1) = op(A)'s rows times op(B),
// computed as the whole product computes them, so the split never changes a result
// (tests/unit/test_threads.cpp). parts = 1: the product stays whole.
struct RowSplit {
  int parts = 1, period = 0, tiles = 0, M = 0;
  // Part p's rows begin here (cut(parts) = M). One part per thread, as even in rows as whole tiles
  // allow: part p ends at the tile boundary nearest (p + 1)/parts of M (the last at M). Even tile
  // counts per part left a 128-row weight gradient (d 128) at 48 + 80 rows of 24-row tiles; this
  // cuts it 72 + 56. Each step of the rounded cut is at least one tile (tiles ≥ parts), so no part
  // is empty.
  int64_t cut(int64_t p) const {
    if (p <= 0) return 0;
    if (p >= parts) return M;
    const int64_t t = std::llround(static_cast<double>(M) * static_cast<double>(p) / (static_cast<double>(parts) * period));
    return std::clamp<int64_t>(t, p, tiles - (parts - p)) * period;
  }
};
RowSplit row_split(bool trans_a, bool trans_b, int M, int N, int K, int threads) {
  RowSplit s;
  s.M = M;
  s.period = row_period();
  if (threads <= 1 || static_cast<double>(M) * N * K < kMinParallelMacs) return s;
  s.tiles = s.period > 0 ? M / s.period : 0;  // the last tile takes the rows left over
  // Where the whole product is one BLAS call above OpenBLAS's small-matrix limit, each part must
  // be too: a part under it would get the small-matrix kernels, which round otherwise. Parts are
  // whole tiles (none shorter than the period), and such a product is not split where one tile
  // would fall under the limit.
  if (g_split && one_large_blas_call(trans_a, trans_b, M, N, K, s.period) &&
      static_cast<double>(s.period) * N * K <= kSmallGemm)
    s.tiles = 0;
  if (s.tiles >= 2) s.parts = std::min(threads, s.tiles);
  return s;
}
void gemm_rows_of(const RowSplit& s, int64_t p, bool trans_a, bool trans_b, int N, int K, float alpha,
                  const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  const int64_t m0 = s.cut(p), m1 = s.cut(p + 1);
  if (m1 <= m0) return;
  const float* Ap = trans_a ? A + m0 : A + m0 * lda;
  gemm_part(trans_a, trans_b, static_cast<int>(m1 - m0), N, K, alpha, Ap, lda, B, ldb, beta, C + m0 * ldc, ldc,
            s.M, N, s.period);
}
// K = 0: BLAS leaves C untouched only when beta = 1; the beta scaling made explicit.
void scale_c(int M, int N, float beta, float* C, int ldc) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}
}  // namespace

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  const ProfileScope profile(Phase::gemm);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  if (nt_through_transpose(trans_a, trans_b, M, N, K)) {
    gemm(false, false, M, N, K, alpha, A, lda, transposed_copy(B, ldb, N, K), N, beta, C, ldc);
    return;
  }
  const RowSplit s = row_split(trans_a, trans_b, M, N, K, threads_inside() ? 1 : threads_count());
  if (s.parts > 1) {
    parallel_ranges(s.parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) gemm_rows_of(s, p, trans_a, trans_b, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    });
    return;
  }
  gemm_part(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, M, N, s.period);
}

void gemm_part_of(int part, int parts, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  const ProfileScope profile(Phase::gemm);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (part == 0) scale_c(M, N, beta, C, ldc);
    return;
  }
  if (nt_through_transpose(trans_a, trans_b, M, N, K)) {
    gemm_part_of(part, parts, false, false, M, N, K, alpha, A, lda, transposed_copy(B, ldb, N, K), N, beta, C, ldc);
    return;
  }
  const RowSplit s = row_split(trans_a, trans_b, M, N, K, parts);
  if (part < s.parts) gemm_rows_of(s, part, trans_a, trans_b, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

namespace {
// out [rows, cols] packed = bf16_round(in [rows, cols], leading dimension ld).
void round_copy(std::vector<float>& out, const float* in, int rows, int cols, int ld) {
  out.resize(static_cast<size_t>(rows) * cols);
  float* o = out.data();
  parallel_ranges(rows, std::max(1, (1 << 14) / std::max(cols, 1)), [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) bf16_round_copy(o + r * cols, in + r * ld, static_cast<size_t>(cols));
  });
}
}  // namespace

namespace {
std::atomic<Bf16GemmForce> g_force{Bf16GemmForce::none};

// What gemm_bf16_path decided, once per process.
struct Bf16Choice {
  Bf16GemmPath path = Bf16GemmPath::emulated;
  std::string reason;  // for the start-up line
  std::string error;   // set: every bf16 GEMM throws it
};
const Bf16Choice& bf16_choice() {
  static const Bf16Choice choice = [] {
    Bf16Choice c;
    try {
      const Bf16GemmDecision d = bf16_gemm_decide(cpu_features_detect(), std::getenv("UOE_BF16_GEMM"));
      c.path = d.path;
      c.reason = d.reason;
      if (d.path == Bf16GemmPath::onednn) {
        const std::string why = onednn_unavailable(OnednnInput::bf16);
        if (!why.empty() && d.forced) {
          c.error = "UOE_BF16_GEMM=onednn: " + why;
        } else if (!why.empty()) {
          c.path = Bf16GemmPath::emulated;
          c.reason += ", but " + why;
        }
      }
    } catch (const Error& e) {
      c.error = e.what();
    }
    return c;
  }();
  return choice;
}
}  // namespace

Bf16GemmPath gemm_bf16_path() {
  const Bf16Choice& c = bf16_choice();
  if (!c.error.empty()) throw Error(c.error);
  return c.path;
}

ScopedBf16Gemm::ScopedBf16Gemm(Bf16GemmForce f) : saved_(g_force.load(std::memory_order_relaxed)) {
  g_force.store(f, std::memory_order_relaxed);
}
ScopedBf16Gemm::~ScopedBf16Gemm() { g_force.store(saved_, std::memory_order_relaxed); }

void gemm_mixed(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc) {
  if (compute_precision() == Precision::fp32 || M == 0 || N == 0 || K == 0) {
    gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const Bf16GemmForce force = g_force.load(std::memory_order_relaxed);
  if (force == Bf16GemmForce::onednn_f32 || force == Bf16GemmForce::onednn ||
      (force == Bf16GemmForce::none && gemm_bf16_path() == Bf16GemmPath::onednn)) {
    onednn_gemm(force == Bf16GemmForce::onednn_f32 ? OnednnInput::f32 : OnednnInput::bf16, trans_a, trans_b, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  // Emulated: op(A) is [M, K]: stored [K, M] when transposed; op(B) is [K, N]: stored [N, K] when transposed.
  static thread_local std::vector<float> a16, b16;
  const int a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
  round_copy(a16, A, trans_a ? K : M, a_cols, lda);
  round_copy(b16, B, trans_b ? N : K, b_cols, ldb);
  gemm(trans_a, trans_b, M, N, K, alpha, a16.data(), a_cols, b16.data(), b_cols, beta, C, ldc);
}

bool gemm_rows_independent(bool trans_a, bool trans_b, int K) {
  return compute_precision() == Precision::fp32 && own_kernel_takes(trans_a, K) && !(trans_a && trans_b);
}

std::string gemm_bf16_describe() {
  const Bf16GemmForce force = g_force.load(std::memory_order_relaxed);
  const Bf16GemmPath path = force == Bf16GemmForce::none       ? gemm_bf16_path()
                            : force == Bf16GemmForce::emulated ? Bf16GemmPath::emulated
                                                               : Bf16GemmPath::onednn;
  const std::string reason = force == Bf16GemmForce::none ? bf16_choice().reason : std::string("forced in this process");
  if (path == Bf16GemmPath::emulated)
    return "bf16 GEMMs emulated: inputs rounded to bf16, fp32 OpenBLAS GEMM with fp32 accumulation (" + reason + ")";
  const OnednnInput in = force == Bf16GemmForce::onednn_f32 ? OnednnInput::f32 : OnednnInput::bf16;
  std::string s = "bf16 GEMMs through " + onednn_describe(in) + " matmul" +
                  (in == OnednnInput::f32 ? " on bf16-rounded inputs carried as fp32" : " on bf16 inputs") +
                  ", fp32 accumulation";
  const int n = threads_count();
  if (n > 1) {
    const int period = onednn_row_period(in);
    s += period > 0 ? ", split over " + std::to_string(n) + " threads at " + std::to_string(period) + "-row tiles"
                    : ", whole products on one thread (no row split keeps the bits)";
  }
  return s + " (" + reason + ")";
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
  // The BLAS itself stays single-threaded: one pool (runtime/threads.hpp), no nested one.
  openblas_set_num_threads(1);
  if (n > 0) threads_set(n);
}
int gemm_get_threads() { return threads_count(); }

void gemm_observe(bool on, bool replay) {
  {
    const std::lock_guard<std::mutex> lock(g_observed_mu);
    if (on) g_observed = {};
  }
  g_observe.store(on ? (replay ? 2 : 1) : 0, std::memory_order_relaxed);
}
std::array<GemmKindTimes, kGemmKinds> gemm_observed() {
  const std::lock_guard<std::mutex> lock(g_observed_mu);
  return g_observed;
}
const char* gemm_kind_name(GemmKind k) {
  switch (k) {
    case GemmKind::nn: return "NN";
    case GemmKind::nt: return "NT";
    case GemmKind::tn: return "TN";
    case GemmKind::narrow: break;
  }
  return "narrow";
}

void gemm_set_touch_tn(bool on) { g_touch_tn.store(on, std::memory_order_relaxed); }
void gemm_set_own_deep(bool on) { g_own_deep.store(on, std::memory_order_relaxed); }

std::string gemm_describe() {
  std::string s = std::string("OpenBLAS ") + openblas_get_corename();
  s += g_split ? ", small-matrix GEMM pieces" : ", whole GEMMs";
  const std::string own = own_kernel().on ? std::string("; uoe's ") + own_gemm_isa_name(own_kernel().isa) +
                                              " kernel for NN/NT products of depth <= " + std::to_string(own_max_depth())
                                        : "";
  const int n = threads_count();
  if (n == 1) return s + ", single-threaded" + own;
  const int period = row_period();
  return s + ", single-threaded, split over " + std::to_string(n) + " threads" +
         (period > 0 ? " at " + std::to_string(period) + "-row tiles" : " (never: no row split keeps the bits)") + own;
}

}  // namespace uoe
