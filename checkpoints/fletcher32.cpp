#include "checkpoints/fletcher32.hpp"

#include <cstring>

namespace uoe {
namespace {

constexpr uint64_t kMod = 65535;

inline uint32_t word_at(const uint8_t* p) { return (uint32_t{p[0]} << 8) | p[1]; }

// The folded representative HDF5 ends with: 0 only for an all-zero input.
inline uint32_t representative(uint64_t sum_mod, bool any_nonzero) {
  if (!any_nonzero) return 0;
  return sum_mod == 0 ? 65535u : static_cast<uint32_t>(sum_mod);
}

}  // namespace

uint32_t fletcher32_reference(const void* data, size_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  size_t words = bytes / 2;
  uint32_t sum1 = 0, sum2 = 0;
  while (words) {
    size_t n = words > 360 ? 360 : words;
    words -= n;
    for (; n; --n, p += 2) {
      sum1 += word_at(p);
      sum2 += sum1;
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  if (bytes % 2) {
    sum1 += uint32_t{*p} << 8;
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  return (sum2 << 16) | sum1;
}

uint32_t fletcher32(const void* data, size_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const size_t words = bytes / 2;
  const uint64_t n = words + (bytes & 1);  // words, the odd byte counting as one
  // With words w_0 .. w_{n-1}: S1 = Σ w_i, S2 = Σ (n − i) w_i (word i is in n − i running sums).
  uint64_t s1 = 0, s2 = 0;  // modulo 65535
  bool any = false;

  // Blocks of K lanes × M rows of words: lane l holds words l, l+K, l+2K, …; after the block,
  // A[l] = Σ_m w(l + mK) and B[l] = Σ_m (M − m) w(l + mK). Within the block, word j = l + mK is in
  // K·M − j = K·(M − m) − l of the block's running sums, so the block adds K·ΣB − Σ l·A to S2 (and
  // the rest of the input's running sums count its ΣA once per word after the block). M = 256
  // keeps B below 65535 · M(M+1)/2 < 2^32.
  constexpr size_t K = 32, M = 256, kBlockWords = K * M;
  size_t i = 0;
  for (; i + kBlockWords <= words; i += kBlockWords) {
    uint32_t A[K] = {}, B[K] = {};
    const uint8_t* q = p + 2 * i;
    for (size_t m = 0; m < M; ++m, q += 2 * K) {
      uint16_t raw[K];
      std::memcpy(raw, q, sizeof raw);
      for (size_t l = 0; l < K; ++l) {
        const uint32_t w = static_cast<uint16_t>((raw[l] >> 8) | (raw[l] << 8));  // big-endian word
        A[l] += w;
        B[l] += A[l];
      }
    }
    uint64_t a = 0, b = 0, la = 0;
    for (size_t l = 0; l < K; ++l) {
      a += A[l];
      b += B[l];
      la += l * uint64_t{A[l]};
    }
    any = any || a != 0;
    const uint64_t after = (n - i - kBlockWords) % kMod;  // running sums after this block
    const uint64_t within = (K * (b % kMod) + kMod * kMod - la % kMod) % kMod;
    s1 = (s1 + a) % kMod;
    s2 = (s2 + within + after * (a % kMod)) % kMod;
  }
  for (; i < words; ++i) {
    const uint64_t w = word_at(p + 2 * i);
    any = any || w != 0;
    s1 = (s1 + w) % kMod;
    s2 = (s2 + ((n - i) % kMod) * w) % kMod;
  }
  if (bytes & 1) {
    const uint64_t w = uint64_t{p[2 * words]} << 8;
    any = any || w != 0;
    s1 = (s1 + w) % kMod;
    s2 = (s2 + w) % kMod;  // the last word is in one running sum
  }
  return (representative(s2, any) << 16) | representative(s1, any);
}

}  // namespace uoe
