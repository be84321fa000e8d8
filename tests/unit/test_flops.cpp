// Model FLOPs (layers/flops.hpp): hand counts from the layer shapes for small configs of each
// block type, the analytic planning figures of docs/model.md (FLOP counts), and the executed count of real
// forward passes (ForwardStats::flops) against the function applied to that pass's routing, which
// the test reads back from the model and counts on its own. Also the routing diagnostics.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "tests/common/stepped_model.hpp"
#include "layers/flops.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "reference_dense.hpp"

namespace uoe {
namespace {

// One layer, d 8, 2 heads of dh 4, V 10, T 4; B 2 sequences → N 8 tokens.
ModelSpec tiny_spec(BlockType type) {
  ModelSpec s;
  s.block_type = type;
  s.layers = 1;
  s.d = 8;
  s.heads = 2;
  s.attn_experts = 2;  // uoe: g = 1 head (gd 4) per attention expert
  s.attn_topk = 2;     // every token to both
  s.experts = 2;
  s.topk = 1;
  s.d_ff = 16;         // uoe: f = 8; moe: 2 experts of 8; dense: one FFN of 16
  s.vocab = 10;
  s.seq_len = 4;
  s.capacity_factor = 0;
  return s;
}

// Every MLP token to expert 1 (zero router weights, bias favouring 1) so the routing is known.
void force_mlp_expert_1(uoe_test::SteppedModel& m) {
  for (int b = 1; b < 2 * m.spec().layers; b += 2) {
    const BlockParams& bp = m.blocks()[b];
    std::fill(m.params().value(bp.router_w), m.params().value(bp.router_w) + m.params().info(bp.router_w).size, 0.0f);
    m.params().value(bp.router_b)[0] = 0.0f;
    m.params().value(bp.router_b)[1] = 5.0f;
  }
}

double forward_flops(uoe_test::SteppedModel& m, int B) {
  const int N = B * m.spec().seq_len;
  const auto tokens = uoe_ref::random_tokens(N, m.spec().vocab, 3);
  ForwardStats st;
  m.forward_eval(tokens.data(), tokens.data(), B, &st);
  return st.flops;
}

TEST(Flops, HandCountUoe) {
  LocalExchange ex;
  uoe_test::SteppedModel m(tiny_spec(BlockType::uoe), 1, &ex);
  force_mlp_expert_1(m);
  // N = 8 tokens, d = 8, V = 10.
  // Attention block: E_a 2, g·dh = gd = 4, every token in both experts (k_a = 2):
  //   router      2·P·d·E_a            = 2·8·8·2          =  256
  //   projections R·(2·d·3gd + 2·gd·d)  = 16·(192 + 64)    = 4096   (R = 8 tokens × 2 experts)
  //   scores      4·gd·Σ L²            = 4·4·(4 segments of 4: 4·16 = 64) = 1024
  // MLP block: E 2, f 8, every token to expert 1 only:
  //   router      2·8·8·2              =  256
  //   experts     R·4·d·f              = 8·4·8·8          = 2048
  // Head: 2·N·d·V                      = 2·8·8·10         = 1280
  const double attn = 256 + 4096 + 1024, mlp = 256 + 2048, head = 1280;
  EXPECT_EQ(forward_flops(m, 2), attn + mlp + head);  // 8960
  // Planning figure per token (dropless, average segment T·k_a/E_a = 4 → Σ L² per sequence 2·16):
  //   attention 2·8·2 + 2·(192 + 64) + 4·4·32/4 = 32 + 512 + 128 = 672; MLP 2·8·2 + 1·4·8·8 = 32 + 256 = 288;
  //   head 2·8·10 = 160.
  EXPECT_DOUBLE_EQ(flops_expected_forward_per_token(m.spec()), 672.0 + 288.0 + 160.0);
  EXPECT_DOUBLE_EQ(flops_expected_training_per_token(m.spec()), 3.0 * (672.0 + 288.0 + 160.0));
}

TEST(Flops, HandCountDense) {
  LocalExchange ex;
  uoe_test::SteppedModel m(tiny_spec(BlockType::dense), 1, &ex);
  EXPECT_EQ(m.spec().attn_experts, 1);
  EXPECT_EQ(m.spec().experts, 1);
  // Attention: one expert of all heads (gd = 8), every token once, one segment per sequence:
  //   projections 8·(2·8·24 + 2·8·8) = 8·512 = 4096; scores 4·8·(2 sequences · 4²) = 1024; no router.
  // MLP: 8·4·8·16 = 4096; no router. Head 1280.
  EXPECT_EQ(forward_flops(m, 2), 4096.0 + 1024 + 4096 + 1280);  // 10496
  // Per token: (4096 + 1024 + 4096 + 1280) / 8 = 1312 (dense work is the same whatever the routing).
  EXPECT_DOUBLE_EQ(flops_expected_forward_per_token(m.spec()), 1312.0);
}

TEST(Flops, HandCountMoe) {
  LocalExchange ex;
  uoe_test::SteppedModel m(tiny_spec(BlockType::moe), 1, &ex);
  force_mlp_expert_1(m);
  EXPECT_EQ(m.spec().attn_experts, 1);
  EXPECT_EQ(m.spec().expert_ff(), 8);
  // Dense attention as above: 4096 + 1024. MLP: router 2·8·8·2 = 256; experts top-1: 8·4·8·8 = 2048.
  EXPECT_EQ(forward_flops(m, 2), 4096.0 + 1024 + 256 + 2048 + 1280);  // 8704
  EXPECT_DOUBLE_EQ(flops_expected_forward_per_token(m.spec()), 8704.0 / 8);
}

// The analytic figures of docs/model.md (FLOP counts) at the reference width (d 128, 4 layers, T 128, V 256).
TEST(Flops, ReferenceConfigsOfTheStudy) {
  ModelSpec ref;  // the defaults: 4 attention experts top-2, 4 MLP experts top-2 of d_ff 512
  // Per layer: attention 2·128·4 + 2·8·128·32 + 4·32·128·4/4 = 1024 + 65536 + 16384;
  //            MLP 2·128·4 + 2·4·128·128 = 1024 + 131072. Head 2·128·256 = 65536.
  const double uoe = 4 * (1024.0 + 65536 + 16384 + 1024 + 131072) + 65536;  // 925,696
  EXPECT_DOUBLE_EQ(flops_expected_forward_per_token(ref), uoe);
  ModelSpec dense = ref;
  dense.block_type = BlockType::dense;
  // Per layer: 8·128² + 4·128·128 + 4·128·512 = 131072 + 65536 + 262144.
  const double dn = 4 * (131072.0 + 65536 + 262144) + 65536;  // 1,900,544
  EXPECT_DOUBLE_EQ(flops_expected_forward_per_token(dense), dn);
  EXPECT_NEAR(uoe / dn, 0.49, 0.005);  // "0.49× dense's FLOPs"
  ModelSpec moe = ref;  // 4 experts × 512, top-1: d_ff = 4·512
  moe.block_type = BlockType::moe;
  moe.topk = 1;
  moe.d_ff = 2048;
  const double mo = 4 * (131072.0 + 65536 + 1024 + 4 * 128 * 512) + 65536;  // 1,904,640
  EXPECT_DOUBLE_EQ(flops_expected_forward_per_token(moe), mo);
  ModelSpec big = ref;  // UoE of d_ff 2048, 8 experts top-2, all 4 attention experts
  big.d_ff = 2048;
  big.experts = 8;
  big.attn_topk = 4;
  const double bg = 4 * (1024.0 + 4 * 8 * 128 * 32 + 4 * 32 * 128 * 16 / 4 + 2 * 128 * 8 + 2 * 4 * 128 * 256) + 65536;
  EXPECT_DOUBLE_EQ(flops_expected_forward_per_token(big), bg);  // 1,912,832
  // "both ... 1.91 M forward FLOPs per token"
  EXPECT_NEAR(mo / 1e6, 1.91, 0.01);
  EXPECT_NEAR(bg / 1e6, 1.91, 0.01);
}

// The test's own count of a block's work from the model's routing: rows per expert expanded to
// tokens, tokens per (expert, sequence) for the attention tiles.
BlockWork count_work(const Routing& r, int T, bool attention, bool routed) {
  BlockWork w;
  if (routed) w.router_rows = r.P;
  std::map<std::pair<int, int>, double> seg;  // (expert, sequence) → tokens
  for (int e = 0; e < r.E; ++e)
    for (int i = r.row_offsets[e]; i < r.row_offsets[e + 1]; ++i)
      for (int t = 0; t < r.patch; ++t) {
        w.expert_rows += 1;
        seg[{e, (r.row_patch[i] * r.patch + t) / T}] += 1;
      }
  if (attention)
    for (const auto& [key, n] : seg) w.attn_tiles += n * n;
  return w;
}

void expect_flops_follow_routing(ModelSpec s, bool train) {
  LocalExchange ex;
  uoe_test::SteppedModel m(s, 5, &ex);
  uoe_ref::randomise_params(m, 17, 0.5f);
  const int B = 3, N = B * s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 9);
  ForwardStats st;
  if (train) m.forward_backward(tokens.data(), tokens.data(), B, 1.0f, &st);
  else m.forward_eval(tokens.data(), tokens.data(), B, &st);
  std::vector<BlockWork> works;
  int dropped = 0;
  for (int b = 0; b < 2 * s.layers; ++b) {
    const Routing& r = m.routing(b);
    const BlockWork w = count_work(r, s.seq_len, b % 2 == 0, m.spec().block_routed(b));
    EXPECT_EQ(st.blocks[b].work.router_rows, w.router_rows) << "block " << b;
    EXPECT_EQ(st.blocks[b].work.expert_rows, w.expert_rows) << "block " << b;
    EXPECT_EQ(st.blocks[b].work.attn_tiles, w.attn_tiles) << "block " << b;
    EXPECT_EQ(st.blocks[b].flops, flops_block_forward(m.spec(), b, w)) << "block " << b;
    dropped += st.blocks[b].dropped;
    works.push_back(w);
  }
  EXPECT_EQ(st.flops, flops_model_forward(m.spec(), N, works));
  if (train && s.capacity_factor > 0 && s.block_type != BlockType::dense) {
    EXPECT_GT(dropped, 0) << "the set-up should drop something, so the count follows the kept rows";
  }
  // Executed FLOPs are close to the plan, and below it by about the dropped share.
  const double plan = flops_expected_forward_per_token(m.spec()) * N;
  EXPECT_NEAR(st.flops / plan, 1.0, 0.35);
}

ModelSpec varied_spec(BlockType type) {
  ModelSpec s;
  s.block_type = type;
  s.layers = 2;
  s.d = 16;
  s.heads = 4;
  s.attn_experts = 4;
  s.attn_topk = 2;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 32;
  s.vocab = 13;
  s.seq_len = 8;
  s.capacity_factor = 1.0;
  return s;
}

TEST(Flops, ExecutedCountFollowsTheRoutingUoe) {
  expect_flops_follow_routing(varied_spec(BlockType::uoe), true);
  expect_flops_follow_routing(varied_spec(BlockType::uoe), false);
  ModelSpec p = varied_spec(BlockType::uoe);
  p.patch_size = 2;
  expect_flops_follow_routing(p, true);
}

TEST(Flops, ExecutedCountFollowsTheRoutingBaselines) {
  expect_flops_follow_routing(varied_spec(BlockType::moe), true);
  expect_flops_follow_routing(varied_spec(BlockType::dense), true);
}

// Chunked pipelines compute the same rows: the count does not depend on the chunk count.
TEST(Flops, ChunksDoNotChangeTheCount) {
  const ModelSpec s = varied_spec(BlockType::uoe);
  LocalExchange ex;
  uoe_test::SteppedModel m(s, 5, &ex);
  uoe_ref::randomise_params(m, 17, 0.5f);
  const int B = 3, N = B * s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 9);
  ForwardStats a, b;
  m.forward_backward(tokens.data(), tokens.data(), B, 1.0f, &a);
  m.set_schedule(nullptr, 2);
  m.forward_backward(tokens.data(), tokens.data(), B, 1.0f, &b);
  EXPECT_EQ(a.flops, b.flops);
}

TEST(RoutingDiagnostics, HistogramAndEntropy) {
  ModelSpec s = varied_spec(BlockType::uoe);
  LocalExchange ex;
  uoe_test::SteppedModel m(s, 5, &ex);
  uoe_ref::randomise_params(m, 17, 0.5f);
  const int B = 3, N = B * s.seq_len;
  const auto tokens = uoe_ref::random_tokens(N, s.vocab, 9);
  ForwardStats st;
  m.forward_backward(tokens.data(), tokens.data(), B, 1.0f, &st);
  bool some_partial = false;
  for (int b = 0; b < 2 * s.layers; ++b) {
    const BlockStats& bs = st.blocks[b];
    ASSERT_EQ(bs.experts_per_token.size(), static_cast<size_t>(bs.k + 1));
    int64_t tokens_seen = 0, rows = 0;
    for (int j = 0; j <= bs.k; ++j) {
      tokens_seen += bs.experts_per_token[j];
      rows += j * bs.experts_per_token[j];
    }
    EXPECT_EQ(tokens_seen, N) << "block " << b;
    EXPECT_EQ(static_cast<double>(rows), bs.work.expert_rows) << "block " << b;  // Σ j·n_j = kept rows
    EXPECT_EQ(rows, static_cast<int64_t>(N) * bs.k - bs.dropped) << "block " << b;
    some_partial |= bs.experts_per_token[bs.k] < N;
    // Entropy of the router's distribution: between 0 and ln E per patch, recomputed here.
    const Routing& r = m.routing(b);
    double h = 0;
    for (int p = 0; p < r.P; ++p)
      for (int e = 0; e < r.E; ++e) {
        const double q = r.probs[static_cast<size_t>(p) * r.E + e];
        if (q > 0) h -= q * std::log(q);
      }
    EXPECT_NEAR(bs.entropy_sum, h, 1e-9 * h) << "block " << b;
    EXPECT_GT(bs.entropy_sum, 0) << "block " << b;
    EXPECT_LE(bs.entropy_sum, r.P * std::log(static_cast<double>(r.E)) + 1e-9) << "block " << b;
  }
  EXPECT_TRUE(some_partial) << "capacity 1.0 should leave some tokens with fewer than k experts";

  // A uniform router has entropy ln E per patch; evaluation (dropless) gives every token k experts.
  for (const BlockParams& bp : m.blocks()) {
    std::fill(m.params().value(bp.router_w), m.params().value(bp.router_w) + m.params().info(bp.router_w).size, 0.0f);
    std::fill(m.params().value(bp.router_b), m.params().value(bp.router_b) + m.params().info(bp.router_b).size, 0.0f);
  }
  m.forward_eval(tokens.data(), tokens.data(), B, &st);
  for (int b = 0; b < 2 * s.layers; ++b) {
    const BlockStats& bs = st.blocks[b];
    EXPECT_NEAR(bs.entropy_sum / bs.patches, std::log(4.0), 1e-6) << "block " << b;
    EXPECT_EQ(bs.experts_per_token[bs.k], N) << "block " << b;
  }
}

TEST(RoutingDiagnostics, UnroutedBlocksReadAsOneExpert) {
  LocalExchange ex;
  uoe_test::SteppedModel m(varied_spec(BlockType::dense), 5, &ex);
  const int B = 2, N = B * m.spec().seq_len;
  const auto tokens = uoe_ref::random_tokens(N, m.spec().vocab, 9);
  ForwardStats st;
  m.forward_backward(tokens.data(), tokens.data(), B, 1.0f, &st);
  EXPECT_EQ(st.aux_loss, 0.0);
  for (const BlockStats& bs : st.blocks) {
    EXPECT_EQ(bs.chosen, std::vector<int>{N});
    EXPECT_EQ(bs.k, 1);
    EXPECT_EQ(bs.dropped, 0);
    EXPECT_EQ(bs.entropy_sum, 0.0);
    EXPECT_EQ(bs.experts_per_token, (std::vector<int64_t>{0, N}));
    EXPECT_EQ(bs.work.router_rows, 0.0);
  }
}

}  // namespace
}  // namespace uoe
