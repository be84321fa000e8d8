#include "runtime/bf16.hpp"

#include <atomic>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "runtime/error.hpp"
#include "runtime/threads.hpp"

namespace uoe {
namespace {
std::atomic<Precision> g_precision{Precision::fp32};
constexpr int64_t kGrain = 1 << 14;  // elements per thread at least
}  // namespace

Precision precision_parse(const std::string& s) {
  if (s == "fp32") return Precision::fp32;
  if (s == "bf16") return Precision::bf16;
  fail("--precision '", s, "': expected fp32 or bf16");
}
const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

void compute_precision_set(Precision p) { g_precision.store(p, std::memory_order_relaxed); }
Precision compute_precision() { return g_precision.load(std::memory_order_relaxed); }

namespace {
// The scalar bodies' integer arithmetic on a register of lanes: for each lane's bits u, the
// rounded upper half (u + 0x7fff + bit 16 of u) >> 16, or (u >> 16) | 0x40 for a NaN — in the low
// 16 bits of each 32-bit lane.
#if defined(__AVX512F__)
// The all-lanes mask forms: GCC 12's unmasked shifts and conversions start from an "undefined"
// register that -Wmaybe-uninitialized reports.
constexpr __mmask16 kAll = 0xffff;
constexpr size_t kLanes = 16;
inline __m512i round_lanes(const float* in) {
  const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(in));
  const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i hi = _mm512_maskz_srli_epi32(kAll, u, 16);
  const __m512i odd = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd);
  return _mm512_mask_blend_epi32(nan, _mm512_maskz_srli_epi32(kAll, sum, 16), _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
}
inline void store_bf16(uint16_t* out, __m512i r) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_maskz_cvtepi32_epi16(kAll, r));
}
inline void store_rounded(float* out, __m512i r) {
  _mm512_storeu_ps(out, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, r, 16)));
}
inline void store_widened(float* out, const uint16_t* in) {
  const __m512i w = _mm512_maskz_cvtepu16_epi32(kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in)));
  _mm512_storeu_ps(out, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, w, 16)));
}
#elif defined(__AVX2__)
constexpr size_t kLanes = 8;
inline __m256i round_lanes(const float* in) {
  const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(in));
  const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                         _mm256_set1_epi32(0x7f800000));
  const __m256i hi = _mm256_srli_epi32(u, 16);
  const __m256i odd = _mm256_and_si256(hi, _mm256_set1_epi32(1));
  const __m256i sum = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd);
  return _mm256_blendv_epi8(_mm256_srli_epi32(sum, 16), _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
}
inline void store_bf16(uint16_t* out, __m256i r) {
  // Lanes hold values below 2^16, which packus keeps; it interleaves the two 128-bit halves: put back in order.
  const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(p));
}
inline void store_rounded(float* out, __m256i r) { _mm256_storeu_ps(out, _mm256_castsi256_ps(_mm256_slli_epi32(r, 16))); }
inline void store_widened(float* out, const uint16_t* in) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)));
  _mm256_storeu_ps(out, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
}
#endif
}  // namespace

void bf16_round_copy(float* out, const float* in, size_t n) {
  size_t i = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
  for (; i + kLanes <= n; i += kLanes) store_rounded(out + i, round_lanes(in + i));
#endif
  for (; i < n; ++i) out[i] = bf16_round(in[i]);
}
void bf16_round_inplace(float* x, size_t n) {
  parallel_ranges(static_cast<int64_t>(n), kGrain, [=](int64_t i0, int64_t i1) {
    bf16_round_copy(x + i0, x + i0, static_cast<size_t>(i1 - i0));
  });
}
void bf16_pack(uint16_t* out, const float* in, size_t n) {
  size_t i = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
  for (; i + kLanes <= n; i += kLanes) store_bf16(out + i, round_lanes(in + i));
#endif
  for (; i < n; ++i) out[i] = bf16_from_float(in[i]);
}
void bf16_unpack(float* out, const uint16_t* in, size_t n) {
  size_t i = 0;
#if defined(__AVX512F__) || defined(__AVX2__)
  for (; i + kLanes <= n; i += kLanes) store_widened(out + i, in + i);
#endif
  for (; i < n; ++i) out[i] = bf16_to_float(in[i]);
}

}  // namespace uoe
