// The equivalence law (docs/model.md, Equivalence law): when every token selects every expert, nothing is dropped
// and gate weights are 1, a UoE layer computes exactly the dense layer it was cut from. Checked
// against an independent dense transformer in plain double loops (reference_dense.hpp), at the
// level of whole models and of single expert kernels, plus the dense ↔ UoE weight conversion.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "tests/common/stepped_model.hpp"
#include "layers/convert.hpp"
#include "layers/experts.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "reference_dense.hpp"
#include "runtime/rng.hpp"

namespace {

using uoe_ref::compare_close;
using uoe_ref::describe;
using uoe_ref::Vec;

// Small model with several heads per attention expert (g = 2) and d_ff split into 4 experts,
// every expert selected by every token.
uoe::ModelSpec full_routing_spec() {
  uoe::ModelSpec s;
  s.layers = 2;
  s.d = 16;
  s.heads = 4;
  s.attn_experts = 2;  // g = 2 heads per expert, dh = 4
  s.attn_topk = 2;
  s.experts = 4;       // f = 8
  s.topk = 4;
  s.d_ff = 32;
  s.vocab = 32;
  s.seq_len = 8;
  s.patch_size = 1;
  s.capacity_factor = 0.0;
  s.aux_loss = 0.01;
  s.z_loss = 0.0;
  s.renorm = false;
  return s;
}

// Probabilities are ~1/V ≈ 0.03 and the model computes in fp32 (GEMMs, LayerNorm, softmax in
// float, 2 layers): relative error of a probability is a few 1e-6 at most; atol 1e-6 + rtol 1e-4
// leaves ~10× margin while a wrong head, unit, position or bias moves probabilities by ≥ 1e-3.
constexpr double kProbAtol = 1e-6, kProbRtol = 1e-4;

void zero_param(uoe_test::SteppedModel& m, int idx) {
  std::fill(m.params().value(idx), m.params().value(idx) + m.params().info(idx).size, 0.0f);
}

// Guards against a vacuous comparison: output probabilities must be far from uniform.
void expect_non_trivial_probs(const float* p, int N, int V) {
  double spread = 0;
  for (int t = 0; t < N; ++t) {
    double mn = 1, mx = 0;
    for (int v = 0; v < V; ++v) {
      mn = std::min(mn, static_cast<double>(p[static_cast<size_t>(t) * V + v]));
      mx = std::max(mx, static_cast<double>(p[static_cast<size_t>(t) * V + v]));
    }
    spread = std::max(spread, mx - mn);
  }
  EXPECT_GT(spread, 0.05) << "output probabilities are nearly uniform: the comparison would be weak";
}

TEST(Equivalence, FullRoutingSumGatesEqualsDenseTransformer) {
  const uoe::ModelSpec s = full_routing_spec();
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 11, &ex);
  uoe_ref::randomise_params(m, 101);
  const int B = 2, N = B * s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 5);
  const auto targets = uoe_ref::random_tokens(N, s.vocab, 6);

  uoe::ForwardStats st;
  m.forward_eval(tokens.data(), targets.data(), B, &st);
  const uoe_ref::RefModel ref = uoe_ref::ref_from_model(m);
  const Vec probs = uoe_ref::ref_dense_forward(ref, tokens.data(), B);

  expect_non_trivial_probs(m.last_probs(), N, s.vocab);
  const auto c = compare_close(m.last_probs(), probs.data(), probs.size(), kProbAtol, kProbRtol);
  EXPECT_EQ(c.bad, 0u) << describe(c);
  // CE sum over 16 tokens ≈ 60; float accumulation of per-token −log p: ≤ 1e-5 relative.
  const double ce = uoe_ref::ref_ce_sum(probs, targets.data(), N, s.vocab);
  EXPECT_NEAR(st.ce_sum, ce, 1e-4 + 1e-5 * std::fabs(ce));
  for (int b = 0; b < 2 * s.layers; ++b) EXPECT_EQ(st.blocks[b].dropped, 0) << "block " << b;
}

// Power check for the test above: with fewer experts per token the model must NOT match the
// dense reference, so the comparison is able to tell routing apart from the dense layer.
TEST(Equivalence, PartialRoutingDiffersFromDenseTransformer) {
  uoe::ModelSpec s = full_routing_spec();
  s.topk = 2;
  s.attn_topk = 1;
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 11, &ex);
  uoe_ref::randomise_params(m, 101);
  const int B = 2, N = B * s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 5);
  uoe::ForwardStats st;
  m.forward_eval(tokens.data(), tokens.data(), B, &st);
  const Vec probs = uoe_ref::ref_dense_forward(uoe_ref::ref_from_model(m), tokens.data(), B);
  const auto c = compare_close(m.last_probs(), probs.data(), probs.size(), kProbAtol, kProbRtol);
  EXPECT_GT(c.max_abs_err, 1e-3) << "partial routing reproduced the dense model";
}

// renorm gates with a uniform router (W = 0, b = 0: p = 1/E, w = k·p/Σp = 1) and a capacity
// factor of exactly 1 (C = ceil(P·k/E) = P with k = E: the boundary, nothing dropped). Checked
// in evaluation (dropless) and in training (capacity applies) through the loss.
TEST(Equivalence, UniformRouterRenormGatesEqualsDenseInTraining) {
  uoe::ModelSpec s = full_routing_spec();
  s.renorm = true;
  s.capacity_factor = 1.0;
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 12, &ex);
  uoe_ref::randomise_params(m, 102);
  for (const uoe::BlockParams& bp : m.blocks()) {
    zero_param(m, bp.router_w);
    zero_param(m, bp.router_b);
  }
  const int B = 2, N = B * s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 7);
  const auto targets = uoe_ref::random_tokens(N, s.vocab, 8);
  const uoe_ref::RefModel ref = uoe_ref::ref_from_model(m);
  const Vec probs = uoe_ref::ref_dense_forward(ref, tokens.data(), B);
  const double ce = uoe_ref::ref_ce_sum(probs, targets.data(), N, s.vocab);

  uoe::ForwardStats ev;
  m.forward_eval(tokens.data(), targets.data(), B, &ev);
  expect_non_trivial_probs(m.last_probs(), N, s.vocab);
  const auto c = compare_close(m.last_probs(), probs.data(), probs.size(), kProbAtol, kProbRtol);
  EXPECT_EQ(c.bad, 0u) << describe(c);

  uoe::ForwardStats tr;
  m.params().zero_grads();
  m.forward_backward(tokens.data(), targets.data(), B, 1.0f, &tr);
  // CE sum ≈ 60 over 16 tokens in fp32: 1e-4 + 1e-5 relative is ~10× the float error.
  EXPECT_NEAR(tr.ce_sum, ce, 1e-4 + 1e-5 * std::fabs(ce));
  EXPECT_NEAR(ev.ce_sum, ce, 1e-4 + 1e-5 * std::fabs(ce));
  ASSERT_EQ(tr.blocks.size(), static_cast<size_t>(2 * s.layers));
  for (int b = 0; b < 2 * s.layers; ++b) {
    EXPECT_EQ(tr.blocks[b].dropped, 0) << "block " << b;
    // Every patch chooses every expert (f_e = 1/k) and p = 1/E: α·E·Σ (1/E)(1/E) = α.
    EXPECT_NEAR(tr.blocks[b].balance_loss, s.aux_loss, 1e-9) << "block " << b;
  }

  // Power check: a capacity factor just below 1 drops patches in training and changes the loss.
  uoe::ModelSpec s2 = s;
  s2.capacity_factor = 0.9;
  uoe::LocalExchange ex2;
  uoe_test::SteppedModel m2(s2, 12, &ex2);
  std::memcpy(m2.params().values().data(), m.params().values().data(), sizeof(float) * m.params().total());
  uoe::ForwardStats tr2;
  m2.forward_backward(tokens.data(), targets.data(), B, 1.0f, &tr2);
  EXPECT_GT(tr2.blocks[0].dropped, 0);
  EXPECT_GT(std::fabs(tr2.ce_sum - ce), 1e-2) << "dropping patches did not change the loss";
}

// ---- expert kernels against the dense blocks ----

std::vector<float> random_floats(size_t n, uint64_t seed, uint64_t stream, float std) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std * uoe::rng_normal(seed, stream, i);
  return v;
}

// UoME: Σ_e GELU(x·W1_e + b1_e)·W2_e + b2 over experts cut from dense W1/b1/W2 by hidden units
// (expert e owns units [e·f, (e+1)·f)) equals the dense GELU FFN.
TEST(Equivalence, MlpExpertsSumToDenseFfn) {
  const int d = 8, E = 3, f = 5, F = E * f, N = 7;
  const auto w1 = random_floats(static_cast<size_t>(d) * F, 1, 1, 0.5f);
  const auto b1 = random_floats(F, 1, 2, 0.5f);
  const auto w2 = random_floats(static_cast<size_t>(F) * d, 1, 3, 0.5f);
  const auto b2 = random_floats(d, 1, 4, 0.5f);
  const auto x = random_floats(static_cast<size_t>(N) * d, 1, 5, 1.0f);
  std::vector<float> W1(static_cast<size_t>(E) * d * f), B1(static_cast<size_t>(E) * f), W2(static_cast<size_t>(E) * f * d);
  for (int e = 0; e < E; ++e)
    for (int u = 0; u < f; ++u) {
      for (int i = 0; i < d; ++i) W1[(static_cast<size_t>(e) * d + i) * f + u] = w1[static_cast<size_t>(i) * F + e * f + u];
      B1[static_cast<size_t>(e) * f + u] = b1[e * f + u];
      for (int j = 0; j < d; ++j) W2[(static_cast<size_t>(e) * f + u) * d + j] = w2[static_cast<size_t>(e * f + u) * d + j];
    }
  uoe::ExpertRows rows;
  rows.n_experts = E;
  rows.offsets.resize(E + 1);
  rows.x.resize(static_cast<size_t>(E) * N * d);
  for (int e = 0; e <= E; ++e) rows.offsets[e] = e * N;
  for (int e = 0; e < E; ++e) std::memcpy(rows.x.data() + static_cast<size_t>(e) * N * d, x.data(), sizeof(float) * N * d);
  rows.seg.assign(E * N, 0);
  rows.pos.resize(E * N);
  for (int r = 0; r < E * N; ++r) rows.pos[r] = r % N;
  std::vector<float> y(static_cast<size_t>(E) * N * d);
  uoe::MlpExpertCache cache;
  uoe::mlp_experts_forward(y.data(), cache, rows, W1.data(), B1.data(), W2.data(), d, f);

  std::vector<float> got(static_cast<size_t>(N) * d);
  for (int t = 0; t < N; ++t)
    for (int j = 0; j < d; ++j) {
      float s = b2[j];
      for (int e = 0; e < E; ++e) s += y[(static_cast<size_t>(e) * N + t) * d + j];
      got[static_cast<size_t>(t) * d + j] = s;
    }
  const Vec W1d = uoe_ref::to_vec(w1), b1d = uoe_ref::to_vec(b1), W2d = uoe_ref::to_vec(w2);
  Vec ref(static_cast<size_t>(N) * d);
  for (int t = 0; t < N; ++t) {
    const Vec xt(x.begin() + static_cast<size_t>(t) * d, x.begin() + static_cast<size_t>(t + 1) * d);
    uoe_ref::ref_ffn_units(ref.data() + static_cast<size_t>(t) * d, xt.data(), d, F, W1d.data(), b1d.data(),
                           W2d.data(), 0, F);
    for (int j = 0; j < d; ++j) ref[static_cast<size_t>(t) * d + j] += b2[j];
  }
  // Outputs are O(1); fp32 sums of ~15 products each: 1e-5 + 1e-5 relative covers it ~10×.
  const auto c = compare_close(got.data(), ref.data(), ref.size(), 1e-5, 1e-5);
  EXPECT_EQ(c.bad, 0u) << describe(c);
}

// Cuts dense q/k/v/o weights into attention experts the way docs/model.md says (expert a owns
// heads [a·g, (a+1)·g); Wqkv_a = [q heads | k heads | v heads], Wo_a = rows of its heads).
struct AttnCut {
  std::vector<float> wqkv;  // [Ea, d, 3·g·dh]
  std::vector<float> wo;    // [Ea, g·dh, d]
};
AttnCut cut_attention(const std::vector<float>& wq, const std::vector<float>& wk, const std::vector<float>& wv,
                      const std::vector<float>& wo, int d, int Ea, int g, int dh) {
  const int gd = g * dh, Hd = Ea * gd;
  AttnCut c;
  c.wqkv.resize(static_cast<size_t>(Ea) * d * 3 * gd);
  c.wo.resize(static_cast<size_t>(Ea) * gd * d);
  for (int a = 0; a < Ea; ++a)
    for (int i = 0; i < d; ++i)
      for (int col = 0; col < gd; ++col) {
        const size_t base = (static_cast<size_t>(a) * d + i) * 3 * gd;
        c.wqkv[base + col] = wq[static_cast<size_t>(i) * Hd + a * gd + col];
        c.wqkv[base + gd + col] = wk[static_cast<size_t>(i) * Hd + a * gd + col];
        c.wqkv[base + 2 * gd + col] = wv[static_cast<size_t>(i) * Hd + a * gd + col];
      }
  for (int a = 0; a < Ea; ++a)
    for (int r = 0; r < gd; ++r)
      for (int j = 0; j < d; ++j)
        c.wo[(static_cast<size_t>(a) * gd + r) * d + j] = wo[static_cast<size_t>(a * gd + r) * d + j];
  return c;
}

// SMHA: every attention expert over all T tokens of one sequence; Σ_a y_a = dense causal MHA
// with RoPE (bias bo omitted on both sides).
TEST(Equivalence, AttentionExpertsSumToDenseMha) {
  const int d = 12, Ea = 2, g = 2, dh = 4, Hd = Ea * g * dh, T = 9;
  const auto wq = random_floats(static_cast<size_t>(d) * Hd, 2, 1, 0.4f);
  const auto wk = random_floats(static_cast<size_t>(d) * Hd, 2, 2, 0.4f);
  const auto wv = random_floats(static_cast<size_t>(d) * Hd, 2, 3, 0.4f);
  const auto wo = random_floats(static_cast<size_t>(Hd) * d, 2, 4, 0.4f);
  const auto x = random_floats(static_cast<size_t>(T) * d, 2, 5, 1.0f);
  const AttnCut cut = cut_attention(wq, wk, wv, wo, d, Ea, g, dh);

  uoe::ExpertRows rows;
  rows.n_experts = Ea;
  rows.offsets = {0, T, 2 * T};
  rows.x.resize(static_cast<size_t>(2) * T * d);
  for (int a = 0; a < Ea; ++a) std::memcpy(rows.x.data() + static_cast<size_t>(a) * T * d, x.data(), sizeof(float) * T * d);
  rows.seg.assign(2 * T, 3);
  rows.pos.resize(2 * T);
  for (int r = 0; r < 2 * T; ++r) rows.pos[r] = r % T;
  std::vector<float> y(static_cast<size_t>(2) * T * d);
  uoe::AttnExpertCache cache;
  uoe::attn_experts_forward(y.data(), cache, rows, cut.wqkv.data(), cut.wo.data(), d, g, dh);

  std::vector<float> got(static_cast<size_t>(T) * d);
  for (size_t i = 0; i < got.size(); ++i) got[i] = y[i] + y[static_cast<size_t>(T) * d + i];
  std::vector<int> pos(T);
  for (int t = 0; t < T; ++t) pos[t] = t;
  const Vec xd = uoe_ref::to_vec(x), q = uoe_ref::to_vec(wq), k = uoe_ref::to_vec(wk), v = uoe_ref::to_vec(wv),
            o = uoe_ref::to_vec(wo);
  Vec ref(static_cast<size_t>(T) * d, 0.0);
  uoe_ref::ref_attention_heads(ref.data(), xd.data(), pos.data(), T, d, dh, Hd, q.data(), k.data(), v.data(), o.data(),
                               0, Ea * g);
  // Outputs O(1); fp32 projections, softmax and RoPE (powf/cosf at positions < 9): 1e-5 + 1e-4·|ref|.
  const auto c = compare_close(got.data(), ref.data(), ref.size(), 1e-5, 1e-4);
  EXPECT_EQ(c.bad, 0u) << describe(c);
}

// Selective attention (docs/model.md, Selective attention): an expert attends causally only among the tokens it
// kept, with RoPE at their TRUE positions, one segment per sequence; a segment never spans two
// sequences nor two experts, even when the same sequence id ends one expert and begins the next.
TEST(Equivalence, AttentionExpertAttendsWithinKeptTokensAtTruePositions) {
  const int d = 12, Ea = 2, g = 2, dh = 4, Hd = Ea * g * dh, T = 8;
  const auto wq = random_floats(static_cast<size_t>(d) * Hd, 3, 1, 0.4f);
  const auto wk = random_floats(static_cast<size_t>(d) * Hd, 3, 2, 0.4f);
  const auto wv = random_floats(static_cast<size_t>(d) * Hd, 3, 3, 0.4f);
  const auto wo = random_floats(static_cast<size_t>(Hd) * d, 3, 4, 0.4f);
  const auto x = random_floats(static_cast<size_t>(2) * T * d, 3, 5, 1.0f);  // two sequences
  const AttnCut cut = cut_attention(wq, wk, wv, wo, d, Ea, g, dh);

  // (expert, sequence id, positions) in row order.
  struct Group {
    int expert, seq;
    std::vector<int> pos;
  };
  const std::vector<Group> groups = {
      {0, 0, {0, 2, 3, 6}}, {0, 1, {1, 4, 7}},                 // expert 0 ends with sequence 1 ...
      {1, 1, {0, 1, 2, 3, 4, 5, 6, 7}}, {1, 0, {1, 2, 5, 7}},  // ... and expert 1 starts with it
  };
  uoe::ExpertRows rows;
  rows.n_experts = Ea;
  rows.offsets = {0, 0, 0};
  std::vector<float> xs;
  for (const Group& gr : groups) {
    for (int p : gr.pos) {
      xs.insert(xs.end(), x.begin() + static_cast<size_t>(gr.seq * T + p) * d,
                x.begin() + static_cast<size_t>(gr.seq * T + p + 1) * d);
      rows.seg.push_back(gr.seq == 0 ? 40 : 17);  // ids are labels, not indices
      rows.pos.push_back(p);
    }
    rows.offsets[gr.expert + 1] += static_cast<int>(gr.pos.size());
  }
  rows.offsets[2] += rows.offsets[1];
  const int R = rows.rows();
  rows.x.resize(static_cast<size_t>(R) * d);
  std::memcpy(rows.x.data(), xs.data(), sizeof(float) * xs.size());
  std::vector<float> y(static_cast<size_t>(R) * d);
  uoe::AttnExpertCache cache;
  uoe::attn_experts_forward(y.data(), cache, rows, cut.wqkv.data(), cut.wo.data(), d, g, dh);

  const Vec q = uoe_ref::to_vec(wq), k = uoe_ref::to_vec(wk), v = uoe_ref::to_vec(wv), o = uoe_ref::to_vec(wo);
  int r0 = 0;
  for (const Group& gr : groups) {
    const int n = static_cast<int>(gr.pos.size());
    Vec xg(xs.begin() + static_cast<size_t>(r0) * d, xs.begin() + static_cast<size_t>(r0 + n) * d);
    Vec ref(static_cast<size_t>(n) * d, 0.0);
    uoe_ref::ref_attention_heads(ref.data(), xg.data(), gr.pos.data(), n, d, dh, Hd, q.data(), k.data(), v.data(),
                                 o.data(), gr.expert * g, (gr.expert + 1) * g);
    // Same tolerance reasoning as the dense MHA test.
    const auto c = compare_close(y.data() + static_cast<size_t>(r0) * d, ref.data(), ref.size(), 1e-5, 1e-4);
    EXPECT_EQ(c.bad, 0u) << "expert " << gr.expert << ", sequence " << gr.seq << ": " << describe(c);
    r0 += n;
  }
}

// ---- dense ↔ UoE conversion ----

uoe::DenseLayerWeights random_dense(const uoe::ModelSpec& s, uint64_t seed) {
  const size_t Hd = static_cast<size_t>(s.heads) * s.head_dim();
  uoe::DenseLayerWeights w;
  w.wq = random_floats(s.d * Hd, seed, 1, 1.0f);
  w.wk = random_floats(s.d * Hd, seed, 2, 1.0f);
  w.wv = random_floats(s.d * Hd, seed, 3, 1.0f);
  w.wo = random_floats(Hd * s.d, seed, 4, 1.0f);
  w.w1 = random_floats(static_cast<size_t>(s.d) * s.d_ff, seed, 5, 1.0f);
  w.b1 = random_floats(s.d_ff, seed, 6, 1.0f);
  w.w2 = random_floats(static_cast<size_t>(s.d_ff) * s.d, seed, 7, 1.0f);
  return w;
}

TEST(Equivalence, ConvertModelToDenseAndBackIsBitwiseIdentity) {
  const uoe::ModelSpec s = full_routing_spec();
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 13, &ex);
  uoe_ref::randomise_params(m, 103);
  const std::vector<float> before(m.params().values().begin(), m.params().values().end());
  for (int l = 0; l < s.layers; ++l) uoe::dense_to_uoe(uoe::dense_from_uoe(m, l), m, l);
  ASSERT_EQ(before.size(), m.params().total());
  EXPECT_EQ(std::memcmp(before.data(), m.params().values().data(), sizeof(float) * before.size()), 0);
}

TEST(Equivalence, ConvertDenseToModelAndBackIsExact) {
  const uoe::ModelSpec s = full_routing_spec();
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 14, &ex);
  uoe_ref::randomise_params(m, 104);
  const std::vector<float> before(m.params().values().begin(), m.params().values().end());
  std::vector<uoe::DenseLayerWeights> dense;
  for (int l = 0; l < s.layers; ++l) {
    dense.push_back(random_dense(s, 200 + l));
    uoe::dense_to_uoe(dense.back(), m, l);
  }
  for (int l = 0; l < s.layers; ++l) {
    const uoe::DenseLayerWeights back = uoe::dense_from_uoe(m, l);
    EXPECT_EQ(back.wq, dense[l].wq) << "layer " << l;
    EXPECT_EQ(back.wk, dense[l].wk) << "layer " << l;
    EXPECT_EQ(back.wv, dense[l].wv) << "layer " << l;
    EXPECT_EQ(back.wo, dense[l].wo) << "layer " << l;
    EXPECT_EQ(back.w1, dense[l].w1) << "layer " << l;
    EXPECT_EQ(back.b1, dense[l].b1) << "layer " << l;
    EXPECT_EQ(back.w2, dense[l].w2) << "layer " << l;
  }
  // Only the decomposed tensors change: norms, routers, bo/b2, embedding are shared (docs/model.md).
  for (size_t i = 0; i < m.params().count(); ++i) {
    const uoe::ParamInfo& p = m.params().info(static_cast<int>(i));
    if (p.expert_sharded) continue;
    EXPECT_EQ(std::memcmp(before.data() + p.offset, m.params().value(static_cast<int>(i)), sizeof(float) * p.size), 0)
        << p.name << " changed";
  }
}

// The conversion follows the documented cut (head permutations and hidden-unit permutations are
// symmetries of the dense layer, so the equivalence tests alone would not pin it down).
TEST(Equivalence, ConvertFollowsDocumentedLayout) {
  const uoe::ModelSpec s = full_routing_spec();
  uoe::LocalExchange ex;
  uoe_test::SteppedModel m(s, 15, &ex);
  const uoe::DenseLayerWeights w = random_dense(s, 300);
  uoe::dense_to_uoe(w, m, 1);
  const uoe::BlockParams& a = m.blocks()[2];
  const uoe::BlockParams& mlp = m.blocks()[3];
  const int d = s.d, Ea = s.attn_experts, g = s.heads_per_expert(), dh = s.head_dim(), E = s.experts, f = s.expert_ff();
  const AttnCut cut = cut_attention(w.wq, w.wk, w.wv, w.wo, d, Ea, g, dh);
  ASSERT_EQ(m.params().info(a.w_in).size, cut.wqkv.size());
  ASSERT_EQ(m.params().info(a.w_out).size, cut.wo.size());
  EXPECT_EQ(std::memcmp(m.params().value(a.w_in), cut.wqkv.data(), sizeof(float) * cut.wqkv.size()), 0);
  EXPECT_EQ(std::memcmp(m.params().value(a.w_out), cut.wo.data(), sizeof(float) * cut.wo.size()), 0);
  const float* W1 = m.params().value(mlp.w_in);
  const float* B1 = m.params().value(mlp.b_in);
  const float* W2 = m.params().value(mlp.w_out);
  int bad = 0;
  for (int e = 0; e < E; ++e)
    for (int u = 0; u < f; ++u) {
      for (int i = 0; i < d; ++i) bad += W1[(static_cast<size_t>(e) * d + i) * f + u] != w.w1[static_cast<size_t>(i) * s.d_ff + e * f + u];
      bad += B1[static_cast<size_t>(e) * f + u] != w.b1[e * f + u];
      for (int j = 0; j < d; ++j) bad += W2[(static_cast<size_t>(e) * f + u) * d + j] != w.w2[static_cast<size_t>(e * f + u) * d + j];
    }
  EXPECT_EQ(bad, 0);
}

}  // namespace
