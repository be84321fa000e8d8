#include "runtime/fma_peak.hpp"

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define UOE_FMA_X86 1
#endif

namespace uoe {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

#ifdef UOE_FMA_X86
// Each kernel runs `iters` rounds of one FMA (or mul+add) on each of its independent accumulators:
// acc = acc·a + b, which converges (no overflow, no denormals). The count of accumulators covers
// latency × units with room: AVX-512 16 (4-cycle latency × 2 units = 8 on Sapphire Rapids / Zen 4),
// AVX2 12 of the 16 ymm registers (5 × 2 = 10 on Haswell, 4 × 2 = 8 on Zen 3). The sum returned
// keeps the work from being optimised away.
constexpr int kAcc512 = 16, kAcc256 = 12, kAcc128 = 12;
// Not instrumented under the sanitizers: ASan would keep the accumulators in memory, and the probe
// would measure loads and stores (the asan preset's start-up line then reported 0.14 FMA/cycle).
#define UOE_PROBE_KERNEL __attribute__((no_sanitize("address", "undefined")))

UOE_PROBE_KERNEL __attribute__((target("avx512f"))) float fma_loop_avx512(int64_t iters) {
  __m512 acc[kAcc512];
  for (int j = 0; j < kAcc512; ++j) acc[j] = _mm512_set1_ps(1.0f + 0.01f * j);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kAcc512; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  __m512 s = acc[0];
  for (int j = 1; j < kAcc512; ++j) s = _mm512_add_ps(s, acc[j]);
  // Summed through memory: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized in its own header.
  alignas(64) float out[16];
  _mm512_store_ps(out, s);
  float t = 0;
  for (float x : out) t += x;
  return t;
}

UOE_PROBE_KERNEL __attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) {
  __m256 acc[kAcc256];
  for (int j = 0; j < kAcc256; ++j) acc[j] = _mm256_set1_ps(1.0f + 0.01f * j);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kAcc256; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  __m256 s = acc[0];
  for (int j = 1; j < kAcc256; ++j) s = _mm256_add_ps(s, acc[j]);
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  float t = 0;
  for (float x : out) t += x;
  return t;
}

UOE_PROBE_KERNEL float muladd_loop_sse(int64_t iters) {
  __m128 acc[kAcc128];
  for (int j = 0; j < kAcc128; ++j) acc[j] = _mm_set1_ps(1.0f + 0.01f * j);
  const __m128 a = _mm_set1_ps(0.999999f), b = _mm_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < kAcc128; ++j) acc[j] = _mm_add_ps(_mm_mul_ps(acc[j], a), b);
  }
  __m128 s = acc[0];
  for (int j = 1; j < kAcc128; ++j) s = _mm_add_ps(s, acc[j]);
  alignas(16) float out[4];
  _mm_store_ps(out, s);
  return out[0] + out[1] + out[2] + out[3];
}

// Core clock in GHz: a chain of dependent 64-bit imuls, 3 cycles each on every x86 core since
// Nehalem / Zen (an add chain would not do: Golden Cove folds immediate adds at rename).
double measure_ghz() {
  auto run = [](int64_t n) {
    uint64_t x = 1;
    const auto t0 = Clock::now();
    for (int64_t i = 0; i < n; ++i)
      __asm__ volatile(
          "imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0\n\t"
          "imul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0\n\timul %0, %0"
          : "+r"(x));
    return seconds_between(t0, Clock::now());
  };
  const int64_t n = 10000;  // 300 k cycles: ~0.1 ms
  run(n);
  double best = 1e30;
  for (int r = 0; r < 16; ++r) best = std::min(best, run(n));
  return 30.0 * static_cast<double>(n) / best * 1e-9;
}
#endif

}  // namespace

FmaPeak fma_peak_measure(const CpuFeatures& f, int threads) {
  FmaPeak p;
  p.threads = std::max(1, threads);
#ifdef UOE_FMA_X86
  const auto t_start = Clock::now();
  const VectorIsa isa = cpu_vector_isa(f);
  int acc = kAcc128;
  float (*loop)(int64_t) = muladd_loop_sse;
  p.lanes = 4;
  p.isa = "SSE mul+add";
  if (isa >= VectorIsa::avx512) {
    loop = fma_loop_avx512;
    acc = kAcc512;
    p.lanes = 16;
    p.isa = "AVX-512 FMA";
  } else if (isa == VectorIsa::avx2_fma) {
    loop = fma_loop_avx2;
    acc = kAcc256;
    p.lanes = 8;
    p.isa = "AVX2 FMA";
  }
  p.ghz = measure_ghz();
  // Each thread sizes its interval (~0.25 ms: long enough for the clock, short enough to find
  // one the machine's other load left alone), then all start together and each keeps its best of
  // 16: about 6 ms on a quiet machine. A best interval, not a mean: a peak is what the cores do
  // when they run, and a share of it must not rise because other programs took the cores.
  std::vector<double> rate(p.threads, 0.0);  // vector FMAs per second
  std::vector<float> sink(p.threads, 0.0f);
  std::barrier sync(p.threads);
  auto work = [&](int t) {
    int64_t iters = 1024;
    for (;;) {
      const auto t0 = Clock::now();
      sink[t] += loop(iters);
      if (seconds_between(t0, Clock::now()) > 6.25e-5 || iters > (int64_t{1} << 30)) break;
      iters *= 2;
    }
    iters *= 4;  // ~0.25 ms
    sync.arrive_and_wait();
    double best = 1e30;
    for (int r = 0; r < 16; ++r) {
      const auto t0 = Clock::now();
      sink[t] += loop(iters);
      best = std::min(best, seconds_between(t0, Clock::now()));
    }
    rate[t] = static_cast<double>(iters) * acc / best;
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < p.threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (std::thread& th : pool) th.join();
  double fmas = 0;
  for (double r : rate) fmas += r;
  p.gflops = fmas * 2.0 * p.lanes * 1e-9;
  p.fma_per_cycle = p.ghz > 0 ? fmas / p.threads / (p.ghz * 1e9) : 0.0;
  p.seconds = seconds_between(t_start, Clock::now());
  if (sink[0] == 12345.0f) std::fputs("", stderr);  // the kernels' results are used
#else
  (void)f;
  p.isa = "none (not x86)";
#endif
  return p;
}

std::string fma_peak_describe(const FmaPeak& p) {
  char s[200];
  std::snprintf(s, sizeof s, "%d thread%s × %.2f FMA/cycle × %d lanes × 2 flop × %.2f GHz (%s) = %.1f GFLOP/s",
                p.threads, p.threads == 1 ? "" : "s", p.fma_per_cycle, p.lanes, p.ghz, p.isa, p.gflops);
  return s;
}

}  // namespace uoe
