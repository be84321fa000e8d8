#include "runtime/sum_squares.hpp"

#include "runtime/profile.hpp"

namespace uoe {

double grad_sum_squares(const float* g, size_t n) {
  const ProfileScope profile(Phase::optimizer);
  // 8 partial sums in double (element i to lane i mod 8), added in a fixed order: the same result
  // on every run, and a loop that vectorises (one serial chain of double adds cannot).
  constexpr size_t kLanes = 8;
  double acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (size_t l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(g[i + l]) * g[i + l];
  for (size_t l = 0; i + l < n; ++l) acc[l] += static_cast<double>(g[i + l]) * g[i + l];
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

}  // namespace uoe
