// The baselines of the per-FLOP study (layers/model.hpp, --block-type): `dense` is the uoe model's
// equivalence-law limit run without routing; `moe` with every expert selected is a dense FFN of the
// concatenated width. Both checked on the same weights (forward probabilities, loss and every
// gradient), with power checks that partial routing differs; finite-difference gradients of whole
// dense and moe models; parameter layout; configuration rules.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "tests/common/stepped_model.hpp"
#include "grad_check.hpp"
#include "layers/convert.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "reference_dense.hpp"
#include "runtime/config.hpp"
#include "runtime/error.hpp"

namespace uoe {
namespace {

using uoe_ref::compare_close;
using uoe_ref::describe;

// Probabilities ~1/V in fp32 through 2 layers: see test_equivalence.cpp (same tolerance reasoning).
constexpr double kProbAtol = 1e-6, kProbRtol = 1e-4;

// 2 layers, d 16, 4 heads of dh 4, d_ff 32, V 32, T 8; uoe: 2 attention experts, 4 MLP experts,
// every expert selected (k = E), dropless, sum gates, no router losses: the equivalence limit.
ModelSpec limit_spec(BlockType type) {
  ModelSpec s;
  s.block_type = type;
  s.layers = 2;
  s.d = 16;
  s.heads = 4;
  s.attn_experts = 2;
  s.attn_topk = 2;
  s.experts = 4;
  s.topk = 4;
  s.d_ff = 32;
  s.vocab = 32;
  s.seq_len = 8;
  s.capacity_factor = 0;
  s.renorm = false;
  s.aux_loss = 0;
  s.z_loss = 0;
  return s;
}

float* value(uoe_test::SteppedModel& m, const std::string& name) {
  const int i = m.params().find(name);
  if (i < 0) fail("no parameter ", name);
  return m.params().value(i);
}
const ParamInfo& info(const uoe_test::SteppedModel& m, const std::string& name) {
  const int i = m.params().find(name);
  if (i < 0) fail("no parameter ", name);
  return m.params().info(i);
}

// The tensors a block-type change leaves alone: embedding, norms, output biases.
bool shared_tensor(const std::string& name) {
  for (const char* suffix : {"norm.scale", "norm.bias", "attn.bo", "mlp.b2"})
    if (name.size() >= std::strlen(suffix) && name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
      return true;
  return name == "embed" || name.starts_with("final_norm.");
}

// Dense block-type tensors [1, …] from dense layer weights: wqkv rows are [q | k | v] of all heads.
struct DenseExperts {
  std::vector<float> wqkv, wo, w1, b1, w2;
};
DenseExperts dense_experts_from(const DenseLayerWeights& w, int d) {
  const size_t Hd = w.wq.size() / d;
  DenseExperts x;
  x.wqkv.resize(static_cast<size_t>(d) * 3 * Hd);
  for (int i = 0; i < d; ++i)
    for (size_t c = 0; c < Hd; ++c) {
      x.wqkv[i * 3 * Hd + c] = w.wq[i * Hd + c];
      x.wqkv[i * 3 * Hd + Hd + c] = w.wk[i * Hd + c];
      x.wqkv[i * 3 * Hd + 2 * Hd + c] = w.wv[i * Hd + c];
    }
  x.wo = w.wo;
  x.w1 = w.w1;
  x.b1 = w.b1;
  x.w2 = w.w2;
  return x;
}

// The dense-layout expert tensors of a single-rank uoe model's values (or, through a scratch
// model, of its gradients), layer by layer.
std::vector<DenseExperts> dense_layout_of(const uoe_test::SteppedModel& uoe, const float* values) {
  LocalExchange ex;
  uoe_test::SteppedModel scratch(uoe.spec(), 1, &ex);
  std::memcpy(scratch.params().values().data(), values, sizeof(float) * uoe.params().total());
  std::vector<DenseExperts> out;
  for (int l = 0; l < uoe.spec().layers; ++l) out.push_back(dense_experts_from(dense_from_uoe(scratch, l), uoe.spec().d));
  return out;
}

void expect_close(const float* got, const std::vector<float>& ref, const std::string& what, double atol, double rtol) {
  const auto c = compare_close(got, ref.data(), ref.size(), atol, rtol);
  EXPECT_EQ(c.bad, 0u) << what << ": " << describe(c);
}

// A dense model holding exactly the weights of `uoe` (shared tensors by name, experts cut back).
void copy_uoe_into_dense(const uoe_test::SteppedModel& uoe, uoe_test::SteppedModel& dense) {
  for (const ParamInfo& p : dense.params().infos())
    if (shared_tensor(p.name)) std::memcpy(value(dense, p.name), uoe.params().value(uoe.params().find(p.name)), sizeof(float) * p.size);
  const auto layers = dense_layout_of(uoe, uoe.params().values().data());
  for (int l = 0; l < uoe.spec().layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    const DenseExperts& x = layers[l];
    for (const auto& [name, v] : {std::pair{"attn.wqkv", &x.wqkv}, {"attn.wo", &x.wo}, {"mlp.w1", &x.w1},
                                  {"mlp.b1", &x.b1}, {"mlp.w2", &x.w2}}) {
      ASSERT_EQ(info(dense, p + name).size, v->size()) << p + name;
      std::memcpy(value(dense, p + name), v->data(), sizeof(float) * v->size());
    }
  }
}

TEST(Baselines, DenseHasNoRoutersAndReplicatedSingleExperts) {
  LocalExchange ex;
  uoe_test::SteppedModel m(limit_spec(BlockType::dense), 1, &ex);
  for (const ParamInfo& p : m.params().infos()) {
    EXPECT_EQ(p.name.find("router"), std::string::npos) << p.name;
    EXPECT_FALSE(p.expert_sharded) << p.name << ": dense weights are replicated";
  }
  EXPECT_EQ(info(m, "layers.1.attn.wqkv").global_shape, (std::vector<int64_t>{1, 16, 48}));
  EXPECT_EQ(info(m, "layers.1.attn.wo").global_shape, (std::vector<int64_t>{1, 16, 16}));
  EXPECT_EQ(info(m, "layers.1.mlp.w1").global_shape, (std::vector<int64_t>{1, 16, 32}));
  EXPECT_EQ(info(m, "layers.1.mlp.b1").global_shape, (std::vector<int64_t>{1, 32}));
  EXPECT_EQ(info(m, "layers.1.mlp.w2").global_shape, (std::vector<int64_t>{1, 32, 16}));
  for (const BlockParams& bp : m.blocks()) {
    EXPECT_EQ(bp.router_w, -1);
    EXPECT_EQ(bp.router_b, -1);
  }
  // The same tensors as the uoe model less its routers.
  LocalExchange ex2;
  uoe_test::SteppedModel u(limit_spec(BlockType::uoe), 1, &ex2);
  size_t routers = 0;
  for (const ParamInfo& p : u.params().infos()) routers += p.name.find("router") != std::string::npos ? p.size : 0;
  EXPECT_EQ(m.params().total(), u.params().total() - routers);
}

TEST(Baselines, MoeLayout) {
  ModelSpec s = limit_spec(BlockType::moe);
  s.d_ff = 4 * 24;  // 4 experts of 24 (wider than d_ff/E of a uoe cut)
  LocalExchange ex;
  uoe_test::SteppedModel m(s, 1, &ex);
  EXPECT_EQ(m.params().find("layers.0.attn.router.weight"), -1);
  EXPECT_EQ(info(m, "layers.0.mlp.router.weight").global_shape, (std::vector<int64_t>{16, 4}));
  EXPECT_TRUE(info(m, "layers.0.mlp.w1").expert_sharded);
  EXPECT_EQ(info(m, "layers.0.mlp.w1").global_shape, (std::vector<int64_t>{4, 16, 24}));
  EXPECT_EQ(info(m, "layers.0.mlp.w2").global_shape, (std::vector<int64_t>{4, 24, 16}));
  EXPECT_FALSE(info(m, "layers.0.attn.wqkv").expert_sharded);
  EXPECT_EQ(info(m, "layers.0.attn.wqkv").global_shape, (std::vector<int64_t>{1, 16, 48}));
}

// The equivalence law's limit: uoe with every expert selected, dropless, gates 1 IS the dense
// transformer; the dense block type computes it without routing, on the same weights.
TEST(Baselines, DenseEqualsUoeInTheEquivalenceLimit) {
  LocalExchange ex_u, ex_d;
  uoe_test::SteppedModel u(limit_spec(BlockType::uoe), 3, &ex_u);
  uoe_test::SteppedModel dn(limit_spec(BlockType::dense), 4, &ex_d);
  uoe_ref::randomise_params(u, 31);
  copy_uoe_into_dense(u, dn);
  const int B = 2, N = B * u.spec().seq_len, V = u.spec().vocab;
  const auto tokens = uoe_ref::random_tokens(N, V, 41);
  const auto targets = uoe_ref::random_tokens(N, V, 42);

  ForwardStats su, sd;
  u.forward_eval(tokens.data(), targets.data(), B, &su);
  const std::vector<float> pu(u.last_probs(), u.last_probs() + static_cast<size_t>(N) * V);
  dn.forward_eval(tokens.data(), targets.data(), B, &sd);
  expect_close(dn.last_probs(), pu, "probabilities", kProbAtol, kProbRtol);
  // CE sum ≈ 55 over 16 tokens in fp32: 1e-4 + 1e-5 relative is ~10× the float error.
  EXPECT_NEAR(sd.ce_sum, su.ce_sum, 1e-4 + 1e-5 * su.ce_sum);

  // Training: the same loss and the same gradient for every weight (dense layout of uoe's grads).
  u.params().zero_grads();
  dn.params().zero_grads();
  u.forward_backward(tokens.data(), targets.data(), B, 1.0f, &su);
  dn.forward_backward(tokens.data(), targets.data(), B, 1.0f, &sd);
  EXPECT_NEAR(sd.ce_sum, su.ce_sum, 1e-4 + 1e-5 * su.ce_sum);
  EXPECT_EQ(sd.aux_loss, 0.0);
  // Gradients O(0.01–1) summed over 16 tokens in fp32: atol 1e-5 + 1e-3 relative.
  for (const ParamInfo& p : dn.params().infos())
    if (shared_tensor(p.name)) {
      const float* gu = u.params().grad(u.params().find(p.name));
      expect_close(dn.params().grad(dn.params().find(p.name)), std::vector<float>(gu, gu + p.size), p.name, 1e-5, 1e-3);
    }
  const auto gl = dense_layout_of(u, u.params().grads().data());
  for (int l = 0; l < u.spec().layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    for (const auto& [name, v] : {std::pair{"attn.wqkv", &gl[l].wqkv}, {"attn.wo", &gl[l].wo}, {"mlp.w1", &gl[l].w1},
                                  {"mlp.b1", &gl[l].b1}, {"mlp.w2", &gl[l].w2}})
      expect_close(dn.params().grad(dn.params().find(p + name)), *v, p + name, 1e-5, 1e-3);
  }

  // Power check: uoe with fewer experts per token is not the dense model.
  ModelSpec partial = limit_spec(BlockType::uoe);
  partial.topk = 2;
  partial.attn_topk = 1;
  LocalExchange ex_p;
  uoe_test::SteppedModel up(partial, 3, &ex_p);
  std::memcpy(up.params().values().data(), u.params().values().data(), sizeof(float) * u.params().total());
  up.forward_eval(tokens.data(), targets.data(), B, &su);
  const auto c = compare_close(up.last_probs(), dn.last_probs(), static_cast<size_t>(N) * V, kProbAtol, kProbRtol);
  EXPECT_GT(c.max_abs_err, 1e-3) << "partial routing reproduced the dense model";
}

// A moe MLP of E experts of width f with every expert selected, dropless, sum gates is the dense
// GELU FFN of width E·f whose hidden units are the experts' units side by side (W1 = [W1_0 | … ],
// b1 = [b1_0, …], W2 = [W2_0; …]), plus b2; its attention is the dense attention.
TEST(Baselines, MoeWithAllExpertsEqualsDenseFfnOfConcatenatedWidth) {
  const int E = 4, f = 8, d = 16;
  ModelSpec ms = limit_spec(BlockType::moe);
  ms.experts = E;
  ms.topk = E;
  ms.d_ff = E * f;
  ModelSpec ds = limit_spec(BlockType::dense);
  ds.d_ff = E * f;
  LocalExchange ex_m, ex_d;
  uoe_test::SteppedModel mo(ms, 5, &ex_m);
  uoe_test::SteppedModel dn(ds, 6, &ex_d);
  uoe_ref::randomise_params(mo, 51);
  // Every tensor the two share by name and shape is copied (attention, norms, biases, embedding);
  // the MLP experts are concatenated.
  for (const ParamInfo& p : dn.params().infos()) {
    const int i = mo.params().find(p.name);
    if (i >= 0 && mo.params().info(i).global_shape == p.global_shape)
      std::memcpy(value(dn, p.name), mo.params().value(i), sizeof(float) * p.size);
  }
  auto concat = [&](const float* W1, const float* B1, const float* W2, float* w1, float* b1, float* w2) {
    const int F = E * f;
    for (int e = 0; e < E; ++e)
      for (int u = 0; u < f; ++u) {
        for (int i = 0; i < d; ++i) w1[static_cast<size_t>(i) * F + e * f + u] = W1[(static_cast<size_t>(e) * d + i) * f + u];
        b1[e * f + u] = B1[static_cast<size_t>(e) * f + u];
        for (int j = 0; j < d; ++j) w2[static_cast<size_t>(e * f + u) * d + j] = W2[(static_cast<size_t>(e) * f + u) * d + j];
      }
  };
  for (int l = 0; l < ms.layers; ++l) {
    const BlockParams& a = mo.blocks()[2 * l + 1];
    const BlockParams& b = dn.blocks()[2 * l + 1];
    concat(mo.params().value(a.w_in), mo.params().value(a.b_in), mo.params().value(a.w_out), dn.params().value(b.w_in),
           dn.params().value(b.b_in), dn.params().value(b.w_out));
  }
  const int B = 2, N = B * ms.seq_len, V = ms.vocab;
  const auto tokens = uoe_ref::random_tokens(N, V, 61);
  const auto targets = uoe_ref::random_tokens(N, V, 62);
  ForwardStats sm, sd;
  mo.forward_eval(tokens.data(), targets.data(), B, &sm);
  const std::vector<float> pm(mo.last_probs(), mo.last_probs() + static_cast<size_t>(N) * V);
  dn.forward_eval(tokens.data(), targets.data(), B, &sd);
  expect_close(dn.last_probs(), pm, "probabilities", kProbAtol, kProbRtol);

  // Training: same loss; the concatenation of moe's expert gradients is the dense FFN's gradient.
  mo.params().zero_grads();
  dn.params().zero_grads();
  mo.forward_backward(tokens.data(), targets.data(), B, 1.0f, &sm);
  dn.forward_backward(tokens.data(), targets.data(), B, 1.0f, &sd);
  EXPECT_NEAR(sd.ce_sum, sm.ce_sum, 1e-4 + 1e-5 * sm.ce_sum);
  for (int l = 0; l < ms.layers; ++l) {
    const BlockParams& a = mo.blocks()[2 * l + 1];
    const BlockParams& b = dn.blocks()[2 * l + 1];
    std::vector<float> w1(d * E * f), b1(E * f), w2(E * f * d);
    concat(mo.params().grad(a.w_in), mo.params().grad(a.b_in), mo.params().grad(a.w_out), w1.data(), b1.data(), w2.data());
    // Same tolerance reasoning as the dense test.
    expect_close(dn.params().grad(b.w_in), w1, "mlp.w1 grad", 1e-5, 1e-3);
    expect_close(dn.params().grad(b.b_in), b1, "mlp.b1 grad", 1e-5, 1e-3);
    expect_close(dn.params().grad(b.w_out), w2, "mlp.w2 grad", 1e-5, 1e-3);
    const BlockParams& aa = mo.blocks()[2 * l];
    const BlockParams& ba = dn.blocks()[2 * l];
    const float* g = mo.params().grad(aa.w_in);
    expect_close(dn.params().grad(ba.w_in), std::vector<float>(g, g + mo.params().info(aa.w_in).size), "attn.wqkv grad",
                 1e-5, 1e-3);
  }

  // Power check: top-1 is a different model.
  ModelSpec top1 = ms;
  top1.topk = 1;
  LocalExchange ex_1;
  uoe_test::SteppedModel m1(top1, 5, &ex_1);
  std::memcpy(m1.params().values().data(), mo.params().values().data(), sizeof(float) * mo.params().total());
  m1.forward_eval(tokens.data(), targets.data(), B, &sm);
  const auto c = compare_close(m1.last_probs(), dn.last_probs(), static_cast<size_t>(N) * V, kProbAtol, kProbRtol);
  EXPECT_GT(c.max_abs_err, 1e-3) << "top-1 moe reproduced the dense FFN of all experts";
}

// Evaluation of both baselines is causal and batch-independent (dropless): a token's output does
// not depend on later tokens.
TEST(Baselines, CausalInEvaluation) {
  for (BlockType t : {BlockType::dense, BlockType::moe}) {
    ModelSpec s = limit_spec(t);
    s.topk = 2;
    s.capacity_factor = 1.0;
    LocalExchange ex;
    uoe_test::SteppedModel m(s, 7, &ex);
    uoe_ref::randomise_params(m, 71);
    const int N = s.seq_len, V = s.vocab;
    auto tokens = uoe_ref::random_tokens(N, V, 72);
    ForwardStats st;
    m.forward_eval(tokens.data(), tokens.data(), 1, &st);
    const std::vector<float> before(m.last_probs(), m.last_probs() + static_cast<size_t>(N) * V);
    tokens[N - 1] = (tokens[N - 1] + 1) % V;
    m.forward_eval(tokens.data(), tokens.data(), 1, &st);
    const auto c = compare_close(m.last_probs(), before.data(), static_cast<size_t>(N - 1) * V, 0.0, 0.0);
    EXPECT_EQ(c.bad, 0u) << block_type_name(t) << ": " << describe(c);
  }
}

ModelSpec gradient_spec(BlockType type) {
  ModelSpec s;
  s.block_type = type;
  s.layers = 2;
  s.d = 16;
  s.heads = 4;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 4 * 12;  // moe: 4 experts of 12
  s.vocab = 11;
  s.seq_len = 8;
  s.capacity_factor = 1.0;
  s.aux_loss = 0.05;
  s.z_loss = 0.01;
  return s;
}

TEST(Baselines, GradientsDense) { check_model(gradient_spec(BlockType::dense), "dense"); }
TEST(Baselines, GradientsMoeRenormWithCapacity) { check_model(gradient_spec(BlockType::moe), "moe"); }
TEST(Baselines, GradientsMoeTop1) {
  ModelSpec s = gradient_spec(BlockType::moe);
  s.topk = 1;
  s.renorm = false;
  check_model(s, "moe top-1 sum");
}

// Options → spec: --expert-d-ff sets the moe experts' width; unrouted parts resolve to one expert.
TEST(Baselines, SpecFromConfig) {
  Config c;
  c.block_type = "moe";
  c.experts = 4;
  c.topk = 1;
  c.d_ff = 512;
  c.expert_d_ff = 512;
  ModelSpec s = model_spec_from_config(c, 256);
  EXPECT_EQ(s.block_type, BlockType::moe);
  EXPECT_EQ(s.d_ff, 2048);
  EXPECT_EQ(s.expert_ff(), 512);
  EXPECT_EQ(s.attn_experts, 1);
  EXPECT_EQ(s.attn_topk, 1);
  EXPECT_EQ(s.heads_per_expert(), s.heads);
  c.expert_d_ff = 0;  // default: d_ff / E
  EXPECT_EQ(model_spec_from_config(c, 256).expert_ff(), 128);
  c.block_type = "dense";
  s = model_spec_from_config(c, 256);
  EXPECT_EQ(s.experts, 1);
  EXPECT_EQ(s.topk, 1);
  EXPECT_EQ(s.expert_ff(), 512);
  EXPECT_EQ(model_spec_from_config(Config{}, 256).block_type, BlockType::uoe);
}

// The study's equal-parameter pair (docs/model.md, FLOP counts): a Switch MoE of 4 × 512 top-1 and a UoE cut
// from d_ff 2048 into 8 experts, both ≈ 2.41 M parameters.
TEST(Baselines, EqualParameterPairOfTheStudy) {
  Config moe;
  moe.block_type = "moe";
  moe.topk = 1;
  moe.expert_d_ff = 512;
  Config uoe;
  uoe.d_ff = 2048;
  uoe.experts = 8;
  uoe.attn_topk = 4;
  LocalExchange e1, e2;
  uoe_test::SteppedModel mm(model_spec_from_config(moe, 256), 1, &e1);
  uoe_test::SteppedModel mu(model_spec_from_config(uoe, 256), 1, &e2);
  EXPECT_NEAR(mm.params().total() / 1e6, 2.41, 0.01);
  EXPECT_NEAR(mu.params().total() / 1e6, 2.41, 0.01);
}

void expect_invalid(const Config& c, const std::string& needle) {
  try {
    config_validate(c);
    ADD_FAILURE() << "accepted; expected an error naming " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Baselines, ConfigRules) {
  Config c;
  c.expert_d_ff = 256;
  expect_invalid(c, "--expert-d-ff");  // uoe cuts d_ff; the option is moe's
  c.block_type = "moe";
  c.d_ff = 510;  // not divisible by 4 experts, but the experts' width is given
  EXPECT_NO_THROW(config_validate(c));
  c.expert_d_ff = 0;
  expect_invalid(c, "--d-ff");
  c.d_ff = 512;
  c.heads = 8;
  c.attn_experts = 3;  // attention is dense: attention-expert options are not used
  c.attn_topk = 5;
  EXPECT_NO_THROW(config_validate(c));
  c.ep = 2;  // moe shards its MLP experts; attention is replicated
  EXPECT_NO_THROW(config_validate(c));
  c.ep = 8;
  expect_invalid(c, "--ep");  // 4 MLP experts over 8 ranks
  c.block_type = "dense";
  c.experts = 3;  // ignored by dense (d_ff % 3 != 0 does not matter)
  c.topk = 4;
  EXPECT_NO_THROW(config_validate(c));
}

}  // namespace
}  // namespace uoe
