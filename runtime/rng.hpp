// Counter-based random numbers: every draw is a pure function of (seed, stream, counter), so the
// same model and the same data windows come out whatever the world size, thread count or order of
// calls. The mixer is SplitMix64's finaliser applied to a combined key (a well-studied 64-bit
// bijection); streams are named by hashing a string (FNV-1a), e.g. the tensor name.
#pragma once
#include <cmath>
#include <cstdint>
#include <string_view>

#ifdef __CUDACC__
#define UOE_HD __host__ __device__
#else
#define UOE_HD
#endif

namespace uoe {

UOE_HD inline uint64_t rng_mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A 64-bit stream id for a name (FNV-1a).
inline uint64_t rng_stream(std::string_view name) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ULL;
  return h;
}

// Raw 64 random bits for (seed, stream, counter).
UOE_HD inline uint64_t rng_bits(uint64_t seed, uint64_t stream, uint64_t counter) {
  return rng_mix(rng_mix(seed ^ rng_mix(stream)) ^ counter);
}

// Uniform in (0, 1): 24 random bits, never exactly 0 or 1.
UOE_HD inline float rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
  return (static_cast<float>(rng_bits(seed, stream, counter) >> 40) + 0.5f) * (1.0f / 16777216.0f);
}

// Standard normal for (seed, stream, index): Box-Muller on draws 2·index and 2·index+1.
UOE_HD inline float rng_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const double u1 = (static_cast<double>(rng_bits(seed, stream, 2 * index) >> 11) + 0.5) * 0x1.0p-53;
  const double u2 = (static_cast<double>(rng_bits(seed, stream, 2 * index + 1) >> 11) + 0.5) * 0x1.0p-53;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

// Uniform integer in [0, n) for n > 0 (bias is < n / 2^64, negligible for our sizes).
UOE_HD inline uint64_t rng_below(uint64_t seed, uint64_t stream, uint64_t counter, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(rng_bits(seed, stream, counter)) * n) >> 64);
}

}  // namespace uoe
