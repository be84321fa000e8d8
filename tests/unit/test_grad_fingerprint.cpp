// The per-tensor gradient fingerprint that the equivalence tests compare across layouts
// (--metrics-grads; parallel/grad_sync.hpp): an expert-sharded tensor's parts, one per rank, add
// up to the whole tensor's figures, and the checksum sees what the sum of squares cannot (slabs in
// the wrong place) as well as a scale.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "layers/params.hpp"
#include "parallel/grad_sync.hpp"
#include "runtime/rng.hpp"

namespace uoe {
namespace {

constexpr int64_t kExperts = 4, kRows = 3, kCols = 5, kSlab = kRows * kCols;

// A store holding experts [e0, e1) of one expert tensor, its gradient the global one's slice.
struct Part {
  ParamStore ps;
  int t;
  Part(int64_t e0, int64_t e1, const std::vector<float>& global) {
    t = ps.add_sharded("layers.0.mlp.w1", {kExperts, kRows, kCols}, e0, e1, InitKind::zeros, 0, true);
    ps.allocate_and_init(1);
    std::memcpy(ps.grad(t), global.data() + e0 * kSlab, sizeof(float) * (e1 - e0) * kSlab);
  }
  std::pair<double, double> fingerprint() {  // not const: a GradTensor views a writable gradient
    double sq, dot;
    tensor_grad_fingerprint(grad_tensor(ps, t), &sq, &dot);
    return {sq, dot};
  }
};

std::vector<float> random_gradient() {
  std::vector<float> g(kExperts * kSlab);
  for (size_t i = 0; i < g.size(); ++i) g[i] = rng_normal(3, 4, i);
  return g;
}

TEST(GradFingerprint, ShardsAddUpToTheWholeTensor) {
  const std::vector<float> g = random_gradient();
  const auto [sq, dot] = Part(0, kExperts, g).fingerprint();
  for (int64_t split : {1, 2, 3}) {  // two ranks: experts [0, split) and [split, 4)
    const auto [sq_a, dot_a] = Part(0, split, g).fingerprint();
    const auto [sq_b, dot_b] = Part(split, kExperts, g).fingerprint();
    // Double sums of 60 floats in another grouping: equal to ~1e-15 relative.
    EXPECT_NEAR(sq_a + sq_b, sq, 1e-12 * sq) << "split at expert " << split;
    EXPECT_NEAR(dot_a + dot_b, dot, 1e-12 * std::sqrt(sq)) << "split at expert " << split;
  }
}

TEST(GradFingerprint, ChecksumSeesSlabsInTheWrongPlaceAndAScale) {
  const std::vector<float> g = random_gradient();
  const auto [sq, dot] = Part(0, kExperts, g).fingerprint();
  std::vector<float> swapped = g;  // experts 0 and 1 exchanged: the same sum of squares
  std::swap_ranges(swapped.begin(), swapped.begin() + kSlab, swapped.begin() + kSlab);
  const auto [sq_s, dot_s] = Part(0, kExperts, swapped).fingerprint();
  EXPECT_NEAR(sq_s, sq, 1e-12 * sq);
  // ±1 weights independent of the data: the difference is of the order of the slabs' norm.
  EXPECT_GT(std::fabs(dot_s - dot), 0.1 * std::sqrt(sq)) << dot_s << " vs " << dot;
  std::vector<float> doubled = g;
  for (float& x : doubled) x *= 2;
  const auto [sq_d, dot_d] = Part(0, kExperts, doubled).fingerprint();
  EXPECT_DOUBLE_EQ(sq_d, 4 * sq);
  EXPECT_DOUBLE_EQ(dot_d, 2 * dot);
}

TEST(GradFingerprint, WeightsArePlusOrMinusOneAndBalanced) {
  const uint64_t stream = rng_stream("embed");
  double sum = 0;
  const int n = 100000;
  for (int64_t i = 0; i < n; ++i) {
    const float w = grad_fingerprint_weight(stream, i);
    ASSERT_TRUE(w == 1.0f || w == -1.0f) << i;
    sum += w;
  }
  EXPECT_LT(std::fabs(sum), 5 * std::sqrt(n));  // a fair coin: within 5 standard deviations
}

}  // namespace
}  // namespace uoe
