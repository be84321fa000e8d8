// Generation (layers/generate.hpp): the sampler's arithmetic, the context window, and the contract
// that a window's next-token distribution depends only on the window's tokens (dropless routing,
// causal attention, whole patches), so padding never leaks into generated text.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "tests/common/stepped_model.hpp"
#include "layers/generate.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "reference_dense.hpp"
#include "runtime/error.hpp"

namespace {

TEST(Sample, GreedyAndTopOneTakeTheMostProbableLowestIdOnTies) {
  const std::vector<float> p = {0.1f, 0.35f, 0.2f, 0.35f};
  for (double u : {0.01, 0.5, 0.99}) {
    EXPECT_EQ(uoe::sample_token(p.data(), 4, 0.0, 0, u), 1);
    EXPECT_EQ(uoe::sample_token(p.data(), 4, 1.0, 1, u), 1);
  }
}

TEST(Sample, InvertsTheCumulativeDistributionInDescendingOrder) {
  // Order 1 (0.6), 2 (0.3), 0 (0.1): cumulative 0.6, 0.9, 1.0.
  const std::vector<float> p = {0.1f, 0.6f, 0.3f};
  EXPECT_EQ(uoe::sample_token(p.data(), 3, 1.0, 0, 0.5), 1);
  EXPECT_EQ(uoe::sample_token(p.data(), 3, 1.0, 0, 0.7), 2);
  EXPECT_EQ(uoe::sample_token(p.data(), 3, 1.0, 0, 0.95), 0);
  // top-k 2 renormalises over {1, 2}: u 0.95 lands in token 2 (cumulative 0.6/0.9, 0.9/0.9).
  EXPECT_EQ(uoe::sample_token(p.data(), 3, 1.0, 2, 0.95), 2);
  EXPECT_EQ(uoe::sample_token(p.data(), 3, 1.0, 2, 0.6), 1);
  // Temperature 0.5 squares the odds: weights 0.01, 0.36, 0.09 (total 0.46): token 1 up to 0.78.
  EXPECT_EQ(uoe::sample_token(p.data(), 3, 0.5, 0, 0.77), 1);
  EXPECT_EQ(uoe::sample_token(p.data(), 3, 0.5, 0, 0.79), 2);
  EXPECT_EQ(uoe::sample_token(p.data(), 3, 0.5, 0, 0.985), 0);
  // A zero-probability token is never drawn, even at u close to 1.
  const std::vector<float> q = {0.0f, 0.5f, 0.5f};
  EXPECT_EQ(uoe::sample_token(q.data(), 3, 1.0, 0, 0.999999), 2);
  EXPECT_EQ(uoe::sample_token(q.data(), 3, 3.0, 0, 0.999999), 2);
}

TEST(Sample, NonFiniteProbabilitiesAreNeverDrawn) {
  const float nan = std::nanf(""), inf = INFINITY;
  const std::vector<float> p = {nan, 0.25f, inf, 0.75f};
  for (double u : {0.01, 0.3, 0.999999}) {
    const int t = uoe::sample_token(p.data(), 4, 1.0, 0, u);
    EXPECT_TRUE(t == 1 || t == 3) << t;
  }
  EXPECT_EQ(uoe::sample_token(p.data(), 4, 0.0, 0, 0.5), 3);
  const std::vector<float> bad = {nan, nan};
  EXPECT_THROW(uoe::sample_token(bad.data(), 2, 1.0, 0, 0.5), uoe::Error);
}

TEST(Sample, RefusesBadArguments) {
  const std::vector<float> p = {0.5f, 0.5f}, zero = {0.0f, 0.0f};
  EXPECT_THROW(uoe::sample_token(p.data(), 2, -0.1, 0, 0.5), uoe::Error);
  EXPECT_THROW(uoe::sample_token(p.data(), 2, 1.0, -1, 0.5), uoe::Error);
  EXPECT_THROW(uoe::sample_token(zero.data(), 2, 1.0, 0, 0.5), uoe::Error);
}

TEST(Generate, WindowIsTheContextsLastWholePatches) {
  std::vector<int32_t> in(8);
  // Shorter than the window: at positions 0.., padded after.
  EXPECT_EQ(uoe::generation_window({5, 6, 7}, 8, 1, 0, in.data()), 3);
  EXPECT_EQ(in, (std::vector<int32_t>{5, 6, 7, 0, 0, 0, 0, 0}));
  // Patches of 2: an odd context drops its oldest token so that no patch holds padding.
  EXPECT_EQ(uoe::generation_window({5, 6, 7}, 8, 2, 0, in.data()), 2);
  EXPECT_EQ(in, (std::vector<int32_t>{6, 7, 0, 0, 0, 0, 0, 0}));
  // Shorter than a patch: left-padded to one.
  EXPECT_EQ(uoe::generation_window({9}, 8, 4, 1, in.data()), 4);
  EXPECT_EQ(in, (std::vector<int32_t>{1, 1, 1, 9, 1, 1, 1, 1}));
  // Longer than the window: the last seq_len tokens.
  const std::vector<int32_t> longer = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  EXPECT_EQ(uoe::generation_window(longer, 8, 2, 0, in.data()), 8);
  EXPECT_EQ(in, (std::vector<int32_t>{4, 5, 6, 7, 8, 9, 10, 11}));
}

uoe::ModelSpec small_spec(int patch) { return uoe_ref::small_uoe_spec(patch); }

// The next-token distribution of a window does not depend on what fills the positions after it:
// replacing the padding with other tokens leaves position W − 1 unchanged (tolerances as in
// test_causality: other rows in the GEMMs may round differently), for contexts shorter than a
// patch, odd with patches of 2, and longer than the window.
TEST(Generate, NextTokenDependsOnlyOnTheWindow) {
  for (const int patch : {1, 2, 4}) {
    SCOPED_TRACE("patch size " + std::to_string(patch));
    const uoe::ModelSpec s = small_spec(patch);
    uoe::LocalExchange ex;
    uoe_test::SteppedModel m(s, 17, &ex);
    uoe_ref::randomise_params(m, 71);
    const int T = s.seq_len, V = s.vocab;
    const auto stream = uoe_ref::random_tokens(40, V, 5);
    double moved = 0;
    for (const int len : {1, 3, 7, 16, 23}) {
      const std::vector<int32_t> ctx(stream.begin(), stream.begin() + len);
      std::vector<int32_t> a(T), b(T), targets(T, 0);
      const int W = uoe::generation_window(ctx, T, patch, 0, a.data());
      ASSERT_EQ(W % patch, 0);
      b = a;
      for (int t = W; t < T; ++t) b[t] = static_cast<int32_t>((stream[t] + 3) % V);
      uoe::ForwardStats st;
      m.forward_eval(a.data(), targets.data(), 1, &st);
      const std::vector<float> pa(m.last_probs(), m.last_probs() + static_cast<size_t>(T) * V);
      m.forward_eval(b.data(), targets.data(), 1, &st);
      const float* pb = m.last_probs();
      const auto c = uoe_ref::compare_close(pb + static_cast<size_t>(W - 1) * V, pa.data() + static_cast<size_t>(W - 1) * V,
                                            V, 1e-6, 1e-5);
      EXPECT_EQ(c.bad, 0u) << "context of " << len << ": " << uoe_ref::describe(c);
      if (W < T)  // the changed positions themselves do move (so the check above can fail)
        moved = std::max(moved, uoe_ref::compare_close(pb + static_cast<size_t>(T - 1) * V,
                                                       pa.data() + static_cast<size_t>(T - 1) * V, V, 1e-6, 1e-5)
                                    .max_abs_err);
    }
    EXPECT_GT(moved, 1e-3);
  }
}

// generate: the same seed draws the same tokens; greedy draws the window's most probable token.
TEST(Generate, DeterministicPerSeedAndGreedyIsArgmax) {
  const uoe::ModelSpec s = small_spec(1);
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 23, &ex);
  uoe_ref::randomise_params(m, 29);
  const std::vector<int32_t> prompt = {3, 1, 4};
  uoe::SampleOptions o;
  o.temperature = 1.0;
  o.seed = 7;
  std::vector<int32_t> streamed;
  const auto one = uoe::generate(m, prompt, 24, o, 0, [&](int32_t t) { streamed.push_back(t); });
  const auto two = uoe::generate(m, prompt, 24, o, 0, {});
  EXPECT_EQ(one, two);
  ASSERT_EQ(one.size(), prompt.size() + 24);
  EXPECT_EQ(std::vector<int32_t>(one.begin(), one.begin() + 3), prompt);
  EXPECT_EQ(streamed, std::vector<int32_t>(one.begin() + 3, one.end()));
  o.seed = 8;
  EXPECT_NE(uoe::generate(m, prompt, 24, o, 0, {}), one);  // 24 draws from near-uniform 32-way

  o.temperature = 0;
  const auto greedy = uoe::generate(m, prompt, 1, o, 0, {});
  std::vector<int32_t> in(s.seq_len), targets(s.seq_len, 0);
  const int W = uoe::generation_window(prompt, s.seq_len, 1, 0, in.data());
  uoe::ForwardStats st;
  m.forward_eval(in.data(), targets.data(), 1, &st);
  const float* p = m.last_probs() + static_cast<size_t>(W - 1) * s.vocab;
  int best = 0;
  for (int v = 1; v < s.vocab; ++v)
    if (p[v] > p[best]) best = v;
  EXPECT_EQ(greedy.back(), best);
}

TEST(Generate, RefusesAnEmptyPrompt) {
  const uoe::ModelSpec s = small_spec(1);
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 23, &ex);
  EXPECT_THROW(uoe::generate(m, {}, 1, uoe::SampleOptions{}, 0, {}), uoe::Error);
}

}  // namespace
