// Hierarchical routing (docs/model.md, Routing): router_forward on hand-built inputs whose probabilities
// are known, then whole models against the naive UoE reference (reference_dense.hpp) where
// capacity drops and patches are in play.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "tests/common/stepped_model.hpp"
#include "layers/model.hpp"
#include "layers/router.hpp"
#include "parallel/exchange.hpp"
#include "reference_dense.hpp"

namespace {

using uoe::Routing;
using uoe::RouterSpec;

RouterSpec router_spec(int E, int k, double cf, bool renorm = true, int patch = 1) {
  RouterSpec s;
  s.experts = E;
  s.topk = k;
  s.patch_size = patch;
  s.capacity_factor = cf;
  s.renorm = renorm;
  s.aux_weight = 0.01;
  s.z_weight = 0.0;
  return s;
}

// d = 2, E = 2 router whose logits are (x0, −x0): p0 = σ(2·x0), so every patch with x0 > 0
// chooses expert 0 and a larger x0 means a larger p0. Logits are exact (products by ±1, adds of 0).
const std::vector<float> kSignW = {1.0f, -1.0f,   // row 0 of W [d = 2, E = 2]
                                   0.0f, 0.0f};   // row 1
const std::vector<float> kZeroB2 = {0.0f, 0.0f};

std::vector<float> rows_from_x0(const std::vector<float>& x0) {
  std::vector<float> x;
  for (float v : x0) {
    x.push_back(v);
    x.push_back(0.0f);
  }
  return x;
}

TEST(Routing, CapacityKeepsHighestProbabilityPatches) {
  // P = 8, k = 1, E = 2, cf = 1.1: C = ceil(1.1·8·1/2) = ceil(4.4) = 5.
  const std::vector<float> x0 = {0.3f, 1.2f, 0.7f, 0.1f, 2.0f, 0.5f, 0.9f, 0.4f};
  const auto x = rows_from_x0(x0);
  Routing r;
  uoe::router_forward(r, router_spec(2, 1, 1.1), x.data(), kSignW.data(), kZeroB2.data(), 8, 2, false);
  EXPECT_EQ(r.capacity, 5);
  EXPECT_EQ(r.chosen, (std::vector<int>{8, 0}));
  // The 5 highest x0: 2.0 (4), 1.2 (1), 0.9 (6), 0.7 (2), 0.5 (5); rows back in patch order.
  EXPECT_EQ(r.row_offsets, (std::vector<int>{0, 5, 5}));
  EXPECT_EQ(r.row_patch, (std::vector<int>{1, 2, 4, 5, 6}));
  EXPECT_EQ(r.row_slot, (std::vector<int>{0, 0, 0, 0, 0}));
  EXPECT_EQ(r.kept, (std::vector<uint8_t>{0, 1, 1, 0, 1, 1, 1, 0}));
  EXPECT_EQ(r.dropped, 3);
  EXPECT_EQ(r.capacity_kept, (std::vector<int>{5, 0}));
}

TEST(Routing, CapacityFormulaAndTiesGoToLowerPatchIndex) {
  // W = 0, b = 0: every p = 1/E exactly, every patch chooses experts 0..k−1 (expert ties → lower
  // index), and each of those experts sees P exactly tied candidates: it keeps patches 0..C−1.
  struct Case {
    int P, E, k;
    double cf;
    int C;  // ceil(cf·P·k/E), worked out by hand
  };
  for (const Case& c : {Case{8, 2, 1, 1.1, 5}, Case{6, 4, 2, 1.0, 3}, Case{8, 2, 1, 0.3, 2}, Case{10, 4, 3, 0.5, 4},
                        Case{7, 4, 2, 1.25, 5}}) {
    const int d = 4;
    const std::vector<float> x(static_cast<size_t>(c.P) * d, 0.25f), W(static_cast<size_t>(d) * c.E, 0.0f),
        b(c.E, 0.0f);
    Routing r;
    uoe::router_forward(r, router_spec(c.E, c.k, c.cf), x.data(), W.data(), b.data(), c.P, d, false);
    SCOPED_TRACE(::testing::Message() << "P " << c.P << " E " << c.E << " k " << c.k << " cf " << c.cf);
    EXPECT_EQ(r.capacity, c.C);
    std::vector<int> offsets(c.E + 1, 0), patches;
    for (int e = 0; e < c.E; ++e) {
      const int keep = e < c.k ? std::min(c.C, c.P) : 0;
      for (int p = 0; p < keep; ++p) patches.push_back(p);
      offsets[e + 1] = offsets[e] + keep;
    }
    EXPECT_EQ(r.row_offsets, offsets);
    EXPECT_EQ(r.row_patch, patches);
    EXPECT_EQ(r.dropped, c.k * std::max(0, c.P - c.C));
  }
}

TEST(Routing, CapacityTiesBetweenEqualScoresGoToLowerPatchIndex) {
  // x0 = 0.5 three times (patches 0, 2, 3), 0.9 twice (1, 4), 0.1 once (5). C = ceil(1·6/2) = 3:
  // both 0.9s, then the lowest-index 0.5 (patch 0).
  const auto x = rows_from_x0({0.5f, 0.9f, 0.5f, 0.5f, 0.9f, 0.1f});
  Routing r;
  uoe::router_forward(r, router_spec(2, 1, 1.0), x.data(), kSignW.data(), kZeroB2.data(), 6, 2, false);
  EXPECT_EQ(r.capacity, 3);
  EXPECT_EQ(r.row_patch, (std::vector<int>{0, 1, 4}));
  EXPECT_EQ(r.kept, (std::vector<uint8_t>{1, 1, 0, 0, 1, 0}));
}

TEST(Routing, TopkOrderAndTiesBetweenExpertsGoToLowerIndex) {
  // W = 0: the logits are the bias, the same for every patch.
  struct Case {
    std::vector<float> b;
    int k;
    std::vector<int> choice;  // best first
  };
  for (const Case& c : {Case{{0, 1, 1, 0}, 2, {1, 2}}, Case{{1, 0, 1, 1}, 2, {0, 2}}, Case{{0, 0, 0, 0}, 3, {0, 1, 2}},
                        Case{{0, 2, 1, 3}, 2, {3, 1}}, Case{{0, 2, 1, 2}, 3, {1, 3, 2}}, Case{{5, 5}, 1, {0}}}) {
    const int E = static_cast<int>(c.b.size()), d = 2, P = 3;
    const std::vector<float> x(static_cast<size_t>(P) * d, 0.5f), W(static_cast<size_t>(d) * E, 0.0f);
    Routing r;
    uoe::router_forward(r, router_spec(E, c.k, 0.0), x.data(), W.data(), c.b.data(), P, d, false);
    for (int p = 0; p < P; ++p)
      EXPECT_EQ(std::vector<int>(r.choice.begin() + p * c.k, r.choice.begin() + (p + 1) * c.k), c.choice)
          << "bias " << ::testing::PrintToString(c.b) << ", k " << c.k << ", patch " << p;
  }
}

TEST(Routing, PatchRoutesByItsMeanAndAllItsTokensFollow) {
  // ps = 2, N = 8 tokens → P = 4 patches. Token x0 values chosen so the two tokens of a patch
  // would disagree alone but their mean decides: patch 0 mean +0.3 → expert 0, patch 1 mean −0.4
  // → expert 1, patch 2 mean +0.25 → 0, patch 3 mean −0.05 → 1.
  const std::vector<float> x0 = {1.0f, -0.4f, -1.0f, 0.2f, -0.5f, 1.0f, 0.3f, -0.4f};
  const auto x = rows_from_x0(x0);
  Routing r;
  // cf = 1: C = ceil(1·4·1/2) = 2 counts PATCHES, not tokens: nothing dropped.
  uoe::router_forward(r, router_spec(2, 1, 1.0, true, 2), x.data(), kSignW.data(), kZeroB2.data(), 8, 2, false);
  EXPECT_EQ(r.N, 8);
  EXPECT_EQ(r.P, 4);
  EXPECT_EQ(r.capacity, 2);
  ASSERT_EQ(r.xm.size(), 8u);
  for (int p = 0; p < 4; ++p) {
    // The mean of two floats: (a + b)/2, computed in double then rounded; the library's fp32
    // sum-then-scale may differ by one rounding (≤ 1 ulp ~ 6e-8 at these magnitudes).
    const double mean = (static_cast<double>(x0[2 * p]) + x0[2 * p + 1]) / 2;
    EXPECT_NEAR(r.xm[2 * p], mean, 1e-7) << "patch " << p;
    EXPECT_EQ(r.xm[2 * p + 1], 0.0f) << "patch " << p;
    // p0 = σ(2·mean): float softmax, 1e-6 absolute.
    EXPECT_NEAR(r.probs[2 * p], 1.0 / (1.0 + std::exp(-2.0 * mean)), 1e-6) << "patch " << p;
  }
  EXPECT_EQ(r.choice, (std::vector<int>{0, 1, 0, 1}));
  // Rows are per patch (the model expands each to its ps tokens).
  EXPECT_EQ(r.row_offsets, (std::vector<int>{0, 2, 4}));
  EXPECT_EQ(r.row_patch, (std::vector<int>{0, 2, 1, 3}));
  EXPECT_EQ(r.dropped, 0);
}

TEST(Routing, RenormGatesAndSumGates) {
  // W = 0, b = log(p): p = (0.1, 0.4, 0.2, 0.3); k = 2 picks experts 1 (0.4) then 3 (0.3).
  const int d = 2, E = 4, k = 2, P = 2;
  const std::vector<float> b = {std::log(0.1f), std::log(0.4f), std::log(0.2f), std::log(0.3f)};
  const std::vector<float> x(static_cast<size_t>(P) * d, 1.0f), W(static_cast<size_t>(d) * E, 0.0f);
  Routing r;
  uoe::router_forward(r, router_spec(E, k, 0.0, true), x.data(), W.data(), b.data(), P, d, false);
  for (int p = 0; p < P; ++p) {
    EXPECT_EQ(r.choice[p * k], 1);
    EXPECT_EQ(r.choice[p * k + 1], 3);
    // w = k·p_e/Σ_chosen p = 2·0.4/0.7 and 2·0.3/0.7 (fp32 softmax of logs: 1e-6).
    EXPECT_NEAR(r.gate[p * k], 2 * 0.4 / 0.7, 1e-6);
    EXPECT_NEAR(r.gate[p * k + 1], 2 * 0.3 / 0.7, 1e-6);
    EXPECT_NEAR(r.probs[p * E + 2], 0.2, 1e-6);
  }
  Routing s;
  uoe::router_forward(s, router_spec(E, k, 0.0, false), x.data(), W.data(), b.data(), P, d, false);
  EXPECT_EQ(s.gate, (std::vector<float>(P * k, 1.0f)));
  EXPECT_EQ(s.choice, r.choice);
}

TEST(Routing, PartlyDroppedPatchIsNotRenormalised) {
  // E = 2, k = 2: both patches choose both experts. p(patch 0) = (0.6, 0.4), p(patch 1) = (0.3, 0.7).
  // cf = 0.5: C = ceil(0.5·2·2/2) = 1. Expert 0 keeps patch 0 (0.6 > 0.3), expert 1 keeps patch 1.
  const int d = 2, E = 2, k = 2, P = 2;
  // One-hot inputs: patch p's logits are row p of W, the logs of its probabilities.
  const std::vector<float> x = {1.0f, 0.0f, 0.0f, 1.0f};
  const std::vector<float> W = {std::log(0.6f), std::log(0.4f), std::log(0.3f), std::log(0.7f)};
  const std::vector<float> b = {0.0f, 0.0f};
  Routing r;
  uoe::router_forward(r, router_spec(E, k, 0.5, true), x.data(), W.data(), b.data(), P, d, false);
  EXPECT_EQ(r.capacity, 1);
  EXPECT_EQ(r.choice, (std::vector<int>{0, 1, 1, 0}));
  EXPECT_EQ(r.kept, (std::vector<uint8_t>{1, 0, 1, 0}));
  // Gates computed over both choices before the drop: 2·p/1, not 2·p/p = 2.
  EXPECT_NEAR(r.gate[0], 1.2, 1e-6);
  EXPECT_NEAR(r.gate[1], 0.8, 1e-6);
  EXPECT_NEAR(r.gate[2], 1.4, 1e-6);
  EXPECT_NEAR(r.gate[3], 0.6, 1e-6);
  EXPECT_EQ(r.row_patch, (std::vector<int>{0, 1}));
  EXPECT_EQ(r.row_slot, (std::vector<int>{0, 0}));
  EXPECT_EQ(r.dropped, 2);
}

TEST(Routing, DroplessIgnoresCapacity) {
  const auto x = rows_from_x0({0.3f, 1.2f, 0.7f, 0.1f, 2.0f, 0.5f, 0.9f, 0.4f});
  for (bool dropless : {true, false}) {
    // dropless = true with cf 1.1 (would keep 5), and cf = 0 (no limit) without the flag.
    Routing r;
    uoe::router_forward(r, router_spec(2, 1, dropless ? 1.1 : 0.0), x.data(), kSignW.data(), kZeroB2.data(), 8, 2,
                        dropless);
    EXPECT_EQ(r.capacity, 0) << "dropless " << dropless;
    EXPECT_EQ(r.dropped, 0) << "dropless " << dropless;
    EXPECT_EQ(r.row_patch, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7})) << "dropless " << dropless;
    EXPECT_EQ(r.kept, (std::vector<uint8_t>(8, 1))) << "dropless " << dropless;
  }
}

TEST(Routing, BalanceLossIsAlphaWhenBalancedAndZLossIsBetaMeanLseSquared) {
  const double alpha = 0.01, beta = 0.1;
  // (1) E = 2, k = 1: patch 0 x0 = +0.5 → p = (σ(1), σ(−1)), patch 1 x0 = −0.5 → mirror. f = (½, ½),
  // P_e = ½: α·2·(¼ + ¼) = α.
  {
    const auto x = rows_from_x0({0.5f, -0.5f});
    RouterSpec s = router_spec(2, 1, 0.0);
    s.aux_weight = alpha;
    s.z_weight = beta;
    Routing r;
    uoe::router_forward(r, s, x.data(), kSignW.data(), kZeroB2.data(), 2, 2, false);
    EXPECT_EQ(r.chosen, (std::vector<int>{1, 1}));
    // p sums in fp32: P_e = ½ ± 1e-7, so α within 1e-6 relative.
    EXPECT_NEAR(r.balance_loss, alpha, 1e-6 * alpha);
    // logits (±0.5, ∓0.5): lse = log(e^0.5 + e^−0.5) for both patches.
    const double lse = std::log(std::exp(0.5) + std::exp(-0.5));
    EXPECT_NEAR(r.z_loss, beta * lse * lse, 1e-6 * beta * lse * lse);
  }
  // (2) E = 4, k = 2, balanced choices with unequal P_e: patch 0 picks {0, 1}, patch 1 picks {2, 3}.
  // f_e = ¼ for all e, so α·4·Σ ¼·P_e = α·Σ P_e = α whatever the P_e.
  {
    const std::vector<float> x = {1.0f, 0.0f, 0.0f, 1.0f};
    const std::vector<float> W = {3.0f, 2.0f, 1.0f, 0.0f,   // patch 0 logits
                                  0.5f, -1.0f, 2.0f, 1.5f}; // patch 1 logits
    const std::vector<float> b(4, 0.0f);
    RouterSpec s = router_spec(4, 2, 0.0);
    s.aux_weight = alpha;
    s.z_weight = beta;
    Routing r;
    uoe::router_forward(r, s, x.data(), W.data(), b.data(), 2, 2, false);
    EXPECT_EQ(r.chosen, (std::vector<int>{1, 1, 1, 1}));
    EXPECT_NEAR(r.balance_loss, alpha, 1e-6 * alpha);
    double z = 0;
    for (int p = 0; p < 2; ++p) {
      double s_exp = 0;
      for (int e = 0; e < 4; ++e) s_exp += std::exp(static_cast<double>(W[p * 4 + e]));
      z += std::log(s_exp) * std::log(s_exp);
    }
    EXPECT_NEAR(r.z_loss, beta * z / 2, 1e-6 * beta * z / 2);
  }
  // (3) Unbalanced: every patch picks expert 0 with p = (0.8, 0.2): α·2·(1·0.8 + 0·0.2) = 1.6α.
  {
    const std::vector<float> x(6, 0.0f), W(4, 0.0f), b = {std::log(0.8f), std::log(0.2f)};
    RouterSpec s = router_spec(2, 1, 0.0);
    s.aux_weight = alpha;
    Routing r;
    uoe::router_forward(r, s, x.data(), W.data(), b.data(), 3, 2, false);
    EXPECT_NEAR(r.balance_loss, 1.6 * alpha, 1e-6 * alpha);
    EXPECT_EQ(r.z_loss, 0.0);
  }
}

// ---- whole models against the naive UoE reference ----

uoe::ModelSpec routed_spec() {
  uoe::ModelSpec s;
  s.layers = 2;
  s.d = 16;
  s.heads = 4;
  s.attn_experts = 2;  // g = 2
  s.attn_topk = 1;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 32;
  s.vocab = 32;
  s.seq_len = 8;
  s.patch_size = 2;
  s.capacity_factor = 1.0;
  s.aux_loss = 0.01;
  s.z_loss = 0.0;
  s.renorm = true;
  return s;
}

uoe_ref::RefRouteSpec ref_spec(const uoe::ModelSpec& s, bool dropless) {
  uoe_ref::RefRouteSpec r;
  r.attn_topk = s.attn_topk;
  r.topk = s.topk;
  r.patch = s.patch_size;
  r.capacity_factor = s.capacity_factor;
  r.renorm = s.renorm;
  r.dropless = dropless;
  return r;
}

// α·E·Σ_e f_e·P_e of a reference routing.
double ref_balance(const uoe_ref::RefRoute& r, double alpha) {
  double bal = 0;
  for (int e = 0; e < r.E; ++e) {
    int chosen = 0;
    double pe = 0;
    for (int p = 0; p < r.P; ++p) {
      for (int j = 0; j < r.k; ++j) chosen += r.choice[static_cast<size_t>(p) * r.k + j] == e;
      pe += r.probs[static_cast<size_t>(p) * r.E + e];
    }
    bal += static_cast<double>(chosen) / (static_cast<double>(r.P) * r.k) * (pe / r.P);
  }
  return alpha * r.E * bal;
}

// Probabilities ~1/V in fp32 through 2 layers: atol 1e-6 + rtol 1e-4 is ~10× the float error
// (see test_equivalence.cpp); a wrong routing decision or gate moves them by ≥ 1e-3.
constexpr double kProbAtol = 1e-6, kProbRtol = 1e-4;

TEST(Routing, ModelWithPatchesMatchesNaiveUoeInEvaluation) {
  const uoe::ModelSpec s = routed_spec();
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 21, &ex);
  uoe_ref::randomise_params(m, 121);
  const int B = 3, N = B * s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 31);
  uoe::ForwardStats st;
  m.forward_eval(tokens.data(), tokens.data(), B, &st);
  const auto ref = uoe_ref::ref_uoe_forward(uoe_ref::ref_from_model(m), ref_spec(s, true), tokens.data(), B);
  for (size_t b = 0; b < ref.route.size(); ++b) {
    // Float and double routing agree only away from ties.
    ASSERT_GT(ref.route[b].min_margin, 1e-5) << "block " << b << ": routing too close to a tie for this seed";
    std::vector<int> chosen(ref.route[b].E, 0);
    for (int e : ref.route[b].choice) chosen[e]++;
    EXPECT_EQ(st.blocks[b].chosen, chosen) << "block " << b;
    EXPECT_EQ(st.blocks[b].patches, N / s.patch_size) << "block " << b;
    EXPECT_EQ(st.blocks[b].dropped, 0) << "block " << b;
  }
  const auto c = uoe_ref::compare_close(m.last_probs(), ref.probs.data(), ref.probs.size(), kProbAtol, kProbRtol);
  EXPECT_EQ(c.bad, 0u) << uoe_ref::describe(c);

  // Power check: routing every token alone (patch 1) gives another model output.
  uoe_ref::RefRouteSpec per_token = ref_spec(s, true);
  per_token.patch = 1;
  const auto alt = uoe_ref::ref_uoe_forward(uoe_ref::ref_from_model(m), per_token, tokens.data(), B);
  const auto c2 = uoe_ref::compare_close(m.last_probs(), alt.probs.data(), alt.probs.size(), kProbAtol, kProbRtol);
  EXPECT_GT(c2.max_abs_err, 1e-3) << "patch routing indistinguishable from token routing here";
}

TEST(Routing, ModelWithCapacityMatchesNaiveUoeInTraining) {
  const uoe::ModelSpec s = routed_spec();
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 22, &ex);
  uoe_ref::randomise_params(m, 122);
  const int B = 3, N = B * s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 41);
  const auto targets = uoe_ref::random_tokens(N, s.vocab, 42);
  uoe::ForwardStats st;
  m.params().zero_grads();
  m.forward_backward(tokens.data(), targets.data(), B, 1.0f, &st);
  const auto ref = uoe_ref::ref_uoe_forward(uoe_ref::ref_from_model(m), ref_spec(s, false), tokens.data(), B);
  int total_dropped = 0;
  for (size_t b = 0; b < ref.route.size(); ++b) {
    ASSERT_GT(ref.route[b].min_margin, 1e-5) << "block " << b << ": routing too close to a tie for this seed";
    EXPECT_EQ(st.blocks[b].dropped, ref.route[b].dropped) << "block " << b;
    // Balance from fp32 probabilities: 1e-6 relative.
    const double bal = ref_balance(ref.route[b], s.aux_loss);
    EXPECT_NEAR(st.blocks[b].balance_loss, bal, 1e-6 * bal) << "block " << b;
    total_dropped += ref.route[b].dropped;
  }
  ASSERT_GT(total_dropped, 0) << "capacity never bound: the test would not exercise it";
  const double ce = uoe_ref::ref_ce_sum(ref.probs, targets.data(), N, s.vocab);
  // CE sum ≈ 80 over 24 tokens in fp32: 1e-4 + 1e-5 relative is ~10× the float error.
  EXPECT_NEAR(st.ce_sum, ce, 1e-4 + 1e-5 * std::fabs(ce));
  const auto dropless = uoe_ref::ref_uoe_forward(uoe_ref::ref_from_model(m), ref_spec(s, true), tokens.data(), B);
  EXPECT_GT(std::fabs(uoe_ref::ref_ce_sum(dropless.probs, targets.data(), N, s.vocab) - ce), 1e-2)
      << "the drops do not change the loss: the comparison would not see them";
}

// A patch dropped by every expert it chose gets only the block's bias (docs/model.md, Routing, step
// 4). Routers forced:
// attention W = 0, b = 0 (ties: every patch picks experts 0..k−1, kept lowest patches first), MLP
// W = 0, b = (2, 1, 0, −1) (every patch picks experts 0 and 1 with renorm gates 2·p/(p0 + p1)).
// T = 16, patch 1, cf 0.5: attention C = ceil(0.5·16·2/2) = 8 keeps tokens 0..7; MLP
// C = ceil(0.5·16·2/4) = 4 keeps tokens 0..3: tokens 4..15 get b2 alone from every UoME block.
TEST(Routing, PatchDroppedByAllItsExpertsGetsOnlyTheBias) {
  uoe::ModelSpec s = routed_spec();
  s.seq_len = 16;
  s.patch_size = 1;
  s.attn_topk = 2;
  s.capacity_factor = 0.5;
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 23, &ex);
  uoe_ref::randomise_params(m, 123);
  for (int b = 0; b < 2 * s.layers; ++b) {
    const uoe::BlockParams& bp = m.blocks()[b];
    float* W = m.params().value(bp.router_w);
    float* bias = m.params().value(bp.router_b);
    std::fill(W, W + m.params().info(bp.router_w).size, 0.0f);
    const int E = b % 2 == 0 ? s.attn_experts : s.experts;
    for (int e = 0; e < E; ++e) bias[e] = b % 2 == 0 ? 0.0f : static_cast<float>(2 - e);
  }
  const int B = 1, N = s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 51);
  const auto targets = uoe_ref::random_tokens(N, s.vocab, 52);
  uoe::ForwardStats st;
  m.params().zero_grads();
  m.forward_backward(tokens.data(), targets.data(), B, 1.0f, &st);
  const auto ref = uoe_ref::ref_uoe_forward(uoe_ref::ref_from_model(m), ref_spec(s, false), tokens.data(), B);
  for (int b = 0; b < 2 * s.layers; ++b) {
    const bool attn = b % 2 == 0;
    EXPECT_EQ(ref.route[b].fully_dropped, attn ? 8 : 12) << "block " << b;
    EXPECT_EQ(st.blocks[b].dropped, attn ? 16 : 24) << "block " << b;
    EXPECT_EQ(st.blocks[b].chosen, attn ? (std::vector<int>{16, 16}) : (std::vector<int>{16, 16, 0, 0}))
        << "block " << b;
  }
  const double ce = uoe_ref::ref_ce_sum(ref.probs, targets.data(), N, s.vocab);
  // As in the capacity test: ~10× the fp32 error of a CE sum ≈ 55.
  EXPECT_NEAR(st.ce_sum, ce, 1e-4 + 1e-5 * std::fabs(ce));
  const auto dropless = uoe_ref::ref_uoe_forward(uoe_ref::ref_from_model(m), ref_spec(s, true), tokens.data(), B);
  EXPECT_GT(std::fabs(uoe_ref::ref_ce_sum(dropless.probs, targets.data(), N, s.vocab) - ce), 1e-2)
      << "the drops do not change the loss: the comparison would not see them";
  // Eval ignores the capacity and matches the dropless reference.
  uoe::ForwardStats ev;
  m.forward_eval(tokens.data(), targets.data(), B, &ev);
  const auto c = uoe_ref::compare_close(m.last_probs(), dropless.probs.data(), dropless.probs.size(), kProbAtol,
                                        kProbRtol);
  EXPECT_EQ(c.bad, 0u) << uoe_ref::describe(c);
}

}  // namespace
