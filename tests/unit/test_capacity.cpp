// expert_capacity (layers/router.hpp), the one capacity formula the router, the memory estimate and
// the benches share, against what router_forward actually keeps: every patch is routed to the same
// k experts, so each of them is offered all P patches and keeps as many as its capacity allows.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "layers/router.hpp"

namespace {

struct Case {
  int P, k, E;
  double cf;
};

// The most patches any expert kept when every patch chooses experts 0..k−1 (the bias ranks them;
// W = 0, so every patch has the same probabilities and capacity keeps the lowest patch indices).
int most_kept(const Case& c, bool dropless) {
  const int d = 3;
  const std::vector<float> x(static_cast<size_t>(c.P) * d, 0.5f), W(static_cast<size_t>(d) * c.E, 0.0f);
  std::vector<float> b(c.E);
  for (int e = 0; e < c.E; ++e) b[e] = -static_cast<float>(e);
  uoe::RouterSpec s;
  s.experts = c.E;
  s.topk = c.k;
  s.capacity_factor = c.cf;
  uoe::Routing r;
  uoe::router_forward(r, s, x.data(), W.data(), b.data(), c.P, d, dropless);
  for (int e = 0; e < c.E; ++e)  // the offered experts hold the same count, the others none
    EXPECT_EQ(r.capacity_kept[e], e < c.k ? r.capacity_kept[0] : 0) << "expert " << e;
  return *std::max_element(r.capacity_kept.begin(), r.capacity_kept.end());
}

TEST(Capacity, ExpertCapacityIsWhatTheRouterKeeps) {
  const std::vector<Case> cases = {
      {8, 1, 2, 1.1},    // ceil(4.4): capacity binds
      {100, 1, 2, 1.1},  // 1.1·100/2 is 55.000000000000007 in binary: still 55
      {6, 2, 4, 1.0},    // exact: 3
      {7, 2, 4, 1.25},   // ceil(4.375)
      {10, 3, 4, 0.5},   // ceil(3.75)
      {5, 2, 2, 4.0},    // cf·P·k/E = 20 patches, more than the 5 there are
      {4, 2, 2, 1.5},    // k = E: 6 > P
      {9, 3, 4, 0.0},    // dropless
      {1, 1, 1, 0.3},    // one patch, one expert: at least one is kept
  };
  bool over_p = false, binding = false, dropless = false;
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "P " << c.P << " k " << c.k << " E " << c.E << " cf " << c.cf);
    const int64_t C = uoe::expert_capacity(c.P, c.k, c.E, c.cf);
    EXPECT_EQ(C, most_kept(c, /*dropless=*/false));
    EXPECT_LE(C, c.P);
    over_p |= c.cf * c.P * c.k / c.E > c.P;
    binding |= C < c.P;
    dropless |= c.cf == 0;
    // Evaluation routes dropless whatever the factor: every patch that chose an expert stays.
    EXPECT_EQ(most_kept(c, /*dropless=*/true), uoe::expert_capacity(c.P, c.k, c.E, 0.0));
  }
  // The cases cover a binding capacity, one above P and the dropless factor.
  EXPECT_TRUE(over_p && binding && dropless);
}

TEST(Capacity, GrowsWithTheFactorAndThePatches) {
  for (int P : {1, 16, 2048})
    for (double cf : {0.5, 1.0, 1.25, 2.0}) {
      EXPECT_LE(uoe::expert_capacity(P, 2, 4, cf), uoe::expert_capacity(P, 2, 4, cf + 0.25)) << P << " " << cf;
      EXPECT_LE(uoe::expert_capacity(P, 2, 4, cf), uoe::expert_capacity(2 * P, 2, 4, cf)) << P << " " << cf;
      // Never below the balanced share cf·P·k/E (up to the 1e-12 shave), never above P.
      const double C = static_cast<double>(uoe::expert_capacity(P, 2, 4, cf));
      EXPECT_GE(C, std::min<double>(P, cf * P * 2 / 4 * (1 - 1e-12)));
      EXPECT_LE(C, P);
    }
}

}  // namespace
