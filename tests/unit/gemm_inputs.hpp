// Inputs for the GEMM tests (test_gemm.cpp, test_gemm_own.cpp): small integers in [-3, 3], so that
// products and sums of a few hundred terms are exact in float, whatever the summation order.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/rng.hpp"

namespace uoe {

inline std::vector<float> small_ints(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(static_cast<int>(rng_below(23, stream, i, 7)) - 3);
  return v;
}

}  // namespace uoe
