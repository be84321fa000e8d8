// Dense ↔ UoE conversion of whole models (launcher/ckpt_convert.hpp, behind `uoe-ckpt convert`):
// round trips bitwise, routers dropped or freshly initialised, and the converted model computing
// the source model in the equivalence limit (docs/model.md, Equivalence law) — checked against the
// convert check's own comparison and against a double-precision dense transformer whose weights are
// read straight from the dense model's tensors by the documented layout, not through layers/convert.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "launcher/ckpt_convert.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "reference_dense.hpp"
#include "runtime/error.hpp"

namespace {

uoe::ModelSpec dense_spec() {
  uoe::ModelSpec s = uoe_ref::small_uoe_spec();
  s.block_type = uoe::BlockType::dense;
  return uoe::model_spec_resolve(s);
}

// The same shape cut into 2 attention experts (2 heads each) and 4 MLP experts (8 units each).
uoe::ModelSpec uoe_spec() {
  uoe::ModelSpec s = uoe_ref::small_uoe_spec();
  s.attn_experts = 2;
  s.experts = 4;
  return s;
}

bool same_tensor(const uoe::Model& a, const uoe::Model& b, const std::string& name) {
  const int i = a.params().find(name), j = b.params().find(name);
  return i >= 0 && j >= 0 && a.params().info(i).size == b.params().info(j).size &&
         std::memcmp(a.params().value(i), b.params().value(j), a.params().info(i).size * sizeof(float)) == 0;
}

bool is_router(const std::string& name) { return name.find(".router.") != std::string::npos; }

// The dense transformer of a dense model, read from its tensors by the layout docs/model.md gives
// (attn.wqkv [1, d, 3·d] rows [Wq | Wk | Wv], attn.wo [1, d, d], mlp.w1 [1, d, F], mlp.b1 [1, F],
// mlp.w2 [1, F, d]), independently of layers/convert.
uoe_ref::RefModel ref_from_dense(const uoe::Model& m) {
  const uoe::ModelSpec& s = m.spec();
  uoe_ref::RefModel r;
  r.d = s.d;
  r.heads = s.heads;
  r.dh = s.head_dim();
  r.d_ff = s.d_ff;
  r.vocab = s.vocab;
  r.seq_len = s.seq_len;
  r.embed = uoe_ref::ref_param(m, "embed");
  const int d = s.d;
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    uoe_ref::RefLayer L;
    L.attn_norm_s = uoe_ref::ref_param(m, p + "attn.norm.scale");
    L.attn_norm_b = uoe_ref::ref_param(m, p + "attn.norm.bias");
    const uoe_ref::Vec wqkv = uoe_ref::ref_param(m, p + "attn.wqkv");
    for (int i = 0; i < d; ++i)
      for (int c = 0; c < d; ++c) {
        L.wq.push_back(wqkv[static_cast<size_t>(i) * 3 * d + c]);
        L.wk.push_back(wqkv[static_cast<size_t>(i) * 3 * d + d + c]);
        L.wv.push_back(wqkv[static_cast<size_t>(i) * 3 * d + 2 * d + c]);
      }
    L.wo = uoe_ref::ref_param(m, p + "attn.wo");
    L.bo = uoe_ref::ref_param(m, p + "attn.bo");
    L.mlp_norm_s = uoe_ref::ref_param(m, p + "mlp.norm.scale");
    L.mlp_norm_b = uoe_ref::ref_param(m, p + "mlp.norm.bias");
    L.w1 = uoe_ref::ref_param(m, p + "mlp.w1");
    L.b1 = uoe_ref::ref_param(m, p + "mlp.b1");
    L.w2 = uoe_ref::ref_param(m, p + "mlp.w2");
    L.b2 = uoe_ref::ref_param(m, p + "mlp.b2");
    r.layers.push_back(std::move(L));
  }
  r.final_s = uoe_ref::ref_param(m, "final_norm.scale");
  r.final_b = uoe_ref::ref_param(m, "final_norm.bias");
  return r;
}

TEST(CkptConvert, DenseToUoeComputesTheDenseModel) {
  uoe::LocalExchange ex1, ex2;
  uoe::Model dense(dense_spec(), 3, &ex1);
  uoe_ref::randomise_params(dense, 41);
  uoe::Model up(uoe::equivalence_limit(uoe_spec()), 3, &ex2);
  const uoe::WeightTransfer t = uoe::convert_weights(dense, up);
  EXPECT_TRUE(t.dropped.empty());
  EXPECT_EQ(t.initialised.size(), 4u * uoe_spec().layers);  // weight and bias of 2 routers per layer

  const int B = 2, T = dense.spec().seq_len, V = dense.spec().vocab;
  const std::vector<int32_t> tokens = uoe::check_tokens(B, T, V);
  const std::vector<float> p_dense = uoe::model_output_probs(dense, tokens, B);
  const std::vector<float> p_uoe = uoe::model_output_probs(up, tokens, B);
  // What `uoe-ckpt convert --check` accepts.
  const uoe::ProbsComparison c = uoe::compare_probs(p_dense, p_uoe, uoe::kConvertCheckRtol, uoe::kConvertCheckAtol);
  EXPECT_TRUE(c.ok) << "max |diff| " << c.max_abs_diff << ", " << c.max_ratio << " of the bound";
  // And independently: the dense transformer in double, from the dense model's tensors.
  const uoe_ref::Vec ref = uoe_ref::ref_dense_forward(ref_from_dense(dense), tokens.data(), B);
  const auto r = uoe_ref::compare_close(p_uoe.data(), ref.data(), ref.size(), uoe::kConvertCheckAtol,
                                        uoe::kConvertCheckRtol);
  EXPECT_EQ(r.bad, 0u) << uoe_ref::describe(r);
  // Not vacuous: the probabilities are far from uniform, and the routing options matter (top-1
  // attention, top-2 MLP with renorm gates does not compute the dense model).
  double spread = 0;
  for (size_t i = 0; i < ref.size(); ++i) spread = std::max(spread, std::fabs(ref[i] - 1.0 / V));
  EXPECT_GT(spread, 0.05);
  uoe::LocalExchange ex3;
  uoe::Model routed(uoe_spec(), 3, &ex3);
  uoe::convert_weights(dense, routed);
  EXPECT_FALSE(uoe::compare_probs(p_dense, uoe::model_output_probs(routed, tokens, B), uoe::kConvertCheckRtol,
                                  uoe::kConvertCheckAtol).ok);
}

TEST(CkptConvert, CheckComparisonCatchesAMisplacedWeight) {
  uoe::LocalExchange ex1, ex2;
  uoe::Model dense(dense_spec(), 3, &ex1);
  uoe_ref::randomise_params(dense, 42);
  uoe::Model up(uoe::equivalence_limit(uoe_spec()), 3, &ex2);
  uoe::convert_weights(dense, up);
  // Swap two hidden units' input columns of one MLP expert: a permutation error of the kind a
  // wrong cut would make.
  const uoe::BlockParams& mlp = up.blocks()[1];
  float* w1 = up.params().value(mlp.w_in);
  const int f = up.spec().expert_ff();
  for (int i = 0; i < up.spec().d; ++i) std::swap(w1[static_cast<size_t>(i) * f], w1[static_cast<size_t>(i) * f + 1]);
  const int B = 2;
  const std::vector<int32_t> tokens = uoe::check_tokens(B, dense.spec().seq_len, dense.spec().vocab);
  const uoe::ProbsComparison c = uoe::compare_probs(uoe::model_output_probs(dense, tokens, B),
                                                    uoe::model_output_probs(up, tokens, B), uoe::kConvertCheckRtol,
                                                    uoe::kConvertCheckAtol);
  EXPECT_FALSE(c.ok);
  EXPECT_GT(c.max_abs_diff, 1e-4);
  // A non-finite value fails too.
  std::vector<float> a = {0.5f, 0.5f}, b = {0.5f, std::nanf("")};
  EXPECT_FALSE(uoe::compare_probs(a, b, uoe::kConvertCheckRtol, uoe::kConvertCheckAtol).ok);
}

TEST(CkptConvert, DenseToUoeToDenseIsBitwise) {
  uoe::LocalExchange ex1, ex2, ex3;
  uoe::Model dense(dense_spec(), 5, &ex1);
  uoe_ref::randomise_params(dense, 43);
  uoe::Model up(uoe_spec(), 5, &ex2);
  uoe::convert_weights(dense, up);
  uoe::Model back(dense_spec(), 6, &ex3);  // another seed: nothing of its own initialisation may survive
  const uoe::WeightTransfer t = uoe::convert_weights(up, back);
  EXPECT_EQ(t.dropped.size(), 4u * uoe_spec().layers);
  for (const std::string& name : t.dropped) EXPECT_TRUE(is_router(name)) << name;
  EXPECT_TRUE(t.initialised.empty());
  ASSERT_EQ(back.params().count(), dense.params().count());
  for (const uoe::ParamInfo& p : dense.params().infos()) EXPECT_TRUE(same_tensor(dense, back, p.name)) << p.name;
}

TEST(CkptConvert, UoeToDenseToUoeKeepsExpertsAndReinitialisesRouters) {
  uoe::LocalExchange ex1, ex2, ex3, ex4;
  uoe::Model up(uoe_spec(), 7, &ex1);
  uoe_ref::randomise_params(up, 44);  // "trained": routers too
  uoe::Model dense(dense_spec(), 7, &ex2);
  uoe::convert_weights(up, dense);
  uoe::Model again(uoe_spec(), 7, &ex3);
  const uoe::WeightTransfer t = uoe::convert_weights(dense, again);
  uoe::Model fresh(uoe_spec(), 7, &ex4);  // what a new run with seed 7 starts from
  int routers = 0;
  for (const uoe::ParamInfo& p : up.params().infos()) {
    if (is_router(p.name)) {
      ++routers;
      EXPECT_FALSE(same_tensor(up, again, p.name)) << p.name << " kept its trained value";
      EXPECT_TRUE(same_tensor(fresh, again, p.name)) << p.name << " is not a fresh run's initialisation";
    } else {
      EXPECT_TRUE(same_tensor(up, again, p.name)) << p.name;
    }
  }
  EXPECT_EQ(routers, 4 * uoe_spec().layers);
  EXPECT_EQ(static_cast<int>(t.initialised.size()), routers);
}

// UoE → UoE with other expert counts (a re-cut): the same dense model in the equivalence limit,
// the routers fresh (never carried over, even where the names match).
TEST(CkptConvert, RecutUoeComputesTheSameModelWithFreshRouters) {
  uoe::LocalExchange ex1, ex2, ex3;
  uoe::Model up(uoe::equivalence_limit(uoe_spec()), 8, &ex1);
  uoe_ref::randomise_params(up, 45);
  uoe::ModelSpec other = uoe_spec();
  other.attn_experts = 4;
  other.experts = 2;
  uoe::Model recut(uoe::equivalence_limit(other), 8, &ex2);
  const uoe::WeightTransfer t = uoe::convert_weights(up, recut);
  EXPECT_EQ(t.dropped.size(), 4u * other.layers);
  EXPECT_EQ(t.initialised.size(), 4u * other.layers);
  uoe::Model fresh(other, 8, &ex3);
  for (const std::string& name : t.initialised) EXPECT_TRUE(same_tensor(fresh, recut, name)) << name;
  const int B = 2;
  const std::vector<int32_t> tokens = uoe::check_tokens(B, up.spec().seq_len, up.spec().vocab);
  const uoe::ProbsComparison c = uoe::compare_probs(uoe::model_output_probs(up, tokens, B),
                                                    uoe::model_output_probs(recut, tokens, B), uoe::kConvertCheckRtol,
                                                    uoe::kConvertCheckAtol);
  EXPECT_TRUE(c.ok) << "max |diff| " << c.max_abs_diff << ", " << c.max_ratio << " of the bound";
}

TEST(CkptConvert, RefusesOtherShapesAndMoe) {
  uoe::LocalExchange ex1, ex2, ex3;
  uoe::Model dense(dense_spec(), 1, &ex1);
  uoe::ModelSpec wider = uoe_spec();
  wider.d_ff = 64;
  uoe::Model other(wider, 1, &ex2);
  try {
    uoe::convert_weights(dense, other);
    FAIL() << "converted into another d-ff";
  } catch (const uoe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("d-ff 32 vs 64"), std::string::npos) << e.what();
  }
  uoe::ModelSpec moe = uoe_spec();
  moe.block_type = uoe::BlockType::moe;
  uoe::Model m(uoe::model_spec_resolve(moe), 1, &ex3);
  try {
    uoe::convert_weights(m, dense);
    FAIL() << "converted a moe model";
  } catch (const uoe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("moe"), std::string::npos) << e.what();
  }
}

}  // namespace
