// The device training step's orchestration (layers/device_step.hpp — what `uoe-train --device cuda`
// runs, over the CUDA backend) over a CPU backend (step_backend_cpu.hpp), against the CPU Model.
// Every backend call is a CPU kernel the Model also calls, in the same order per element, so the
// two must agree BIT FOR BIT: losses, router figures, routing, every gradient, and the parameters
// after several AdamW steps. What this cannot check — the CUDA kernels against these CPU kernels —
// is what the gpu.* tests do on a machine with a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "layers/device_step.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "parallel/exchange.hpp"
#include "runtime/rng.hpp"
#include "step_backend_cpu.hpp"

namespace uoe {
namespace {

ModelSpec spec_of(BlockType t, int patch, double z_loss, bool prob_gate) {
  ModelSpec s;
  s.block_type = t;
  s.layers = 2;
  s.d = 32;
  s.heads = 4;
  s.attn_experts = 4;
  s.attn_topk = 2;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 128;
  s.vocab = 48;
  s.seq_len = 16;
  s.patch_size = patch;
  s.capacity_factor = 1.0;  // tight: drops happen, so the capacity path is exercised
  s.aux_loss = 0.01;
  s.z_loss = z_loss;
  s.prob_gate = prob_gate;
  s.renorm = !prob_gate;
  return model_spec_resolve(s);
}

std::vector<int32_t> tokens(int n, int V, uint64_t stream) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<int32_t>(rng_below(17, stream, static_cast<uint64_t>(i), V));
  return v;
}

// Counts elements that differ in their bits (so −0 vs +0 or NaN payloads would show too).
size_t bit_differences(const float* a, const float* b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += std::memcmp(a + i, b + i, sizeof(float)) != 0;
  return bad;
}

// `chunks`: both cut each block's rows into that many chunks (the Model's overlap schedule, in line).
void expect_same_as_model(const ModelSpec& spec, int micro_batches, int chunks = 1) {
  LocalExchange ex_ref, ex_dev;
  Model ref(spec, 11, &ex_ref), host(spec, 11, &ex_dev);
  ref.set_schedule(nullptr, chunks);
  CpuStepBackend be;
  DeviceStep<CpuStepBackend> step(host, be);
  step.set_chunks(chunks);
  AdamW opt_ref(ref.params(), AdamWSpec{}), opt_dev(host.params(), AdamWSpec{});
  std::vector<int> hooked;
  step.set_backward_hook([&hooked](int b) { hooked.push_back(b); });
  const int B = 3, N = B * spec.seq_len, blocks = 2 * spec.layers;
  for (int it = 1; it <= 3; ++it) {
    ref.params().zero_grads();
    host.params().zero_grads();
    for (int m = 0; m < micro_batches; ++m) {
      const auto in = tokens(N, spec.vocab, 2 * (it * 8 + m)), tg = tokens(N, spec.vocab, 2 * (it * 8 + m) + 1);
      ForwardStats sr, sd;
      ref.forward_backward(in.data(), tg.data(), B, 1.0f / micro_batches, &sr);
      hooked.clear();
      step.forward_backward(in.data(), tg.data(), B, 1.0f / micro_batches, &sd);
      EXPECT_EQ(sd.ce_sum, sr.ce_sum) << "step " << it;
      EXPECT_EQ(sd.aux_loss, sr.aux_loss) << "step " << it;
      EXPECT_EQ(sd.flops, sr.flops);
      EXPECT_EQ(sd.tokens, sr.tokens);
      ASSERT_EQ(sd.blocks.size(), sr.blocks.size());
      for (int b = 0; b < blocks; ++b) {
        EXPECT_EQ(step.routing(b).choice, ref.routing(b).choice) << "block " << b;
        EXPECT_EQ(step.routing(b).kept, ref.routing(b).kept) << "block " << b;
        EXPECT_EQ(sd.blocks[b].dropped, sr.blocks[b].dropped);
        EXPECT_EQ(sd.blocks[b].entropy_sum, sr.blocks[b].entropy_sum);
        EXPECT_EQ(sd.blocks[b].experts_per_token, sr.blocks[b].experts_per_token);
      }
      std::vector<int> want;
      for (int b = blocks - 1; b >= -1; --b) want.push_back(b);
      EXPECT_EQ(hooked, want);
    }
    const ParamStore& pr = ref.params();
    const ParamStore& pd = host.params();
    for (size_t i = 0; i < pr.count(); ++i) {
      const int t = static_cast<int>(i);
      EXPECT_EQ(bit_differences(pd.grad(t), pr.grad(t), pr.info(t).size), 0u)
          << pr.info(t).name << " gradient, step " << it;
    }
    // Not all zero: the comparison above compared something.
    EXPECT_GT(grad_sum_squares(pr.grads().data(), pr.total()), 0.0);
    opt_ref.update(ref.params(), 1e-2, it, 1.0f);
    opt_dev.update(host.params(), 1e-2, it, 1.0f);
    EXPECT_EQ(bit_differences(pd.values().data(), pr.values().data(), pr.total()), 0u) << "parameters, step " << it;
  }
  // Dropless evaluation, and an empty evaluation batch.
  const auto in = tokens(N, spec.vocab, 90), tg = tokens(N, spec.vocab, 91);
  ForwardStats er, ed;
  ref.forward_eval(in.data(), tg.data(), B, &er);
  step.forward_eval(in.data(), tg.data(), B, &ed);
  EXPECT_EQ(ed.ce_sum, er.ce_sum);
  EXPECT_EQ(ed.tokens, er.tokens);
  step.forward_eval(in.data(), tg.data(), 0, &ed);
  EXPECT_EQ(ed.tokens, 0);
  EXPECT_EQ(ed.ce_sum, 0.0);
  // The GPU path's host round trips per micro-batch: parameters up, gradients down, and per routed
  // block one routing download and one gate-gradient download.
  EXPECT_GT(be.uploads, 0);
  EXPECT_GT(be.downloads, 0);
}

TEST(DeviceStep, UoeMatchesModelBitwise) { expect_same_as_model(spec_of(BlockType::uoe, 1, 0.0, false), 1); }
TEST(DeviceStep, UoePatchesZLossMicroBatchesMatchModelBitwise) {
  expect_same_as_model(spec_of(BlockType::uoe, 2, 1e-3, false), 2);
}
TEST(DeviceStep, ProbGateMatchesModelBitwise) { expect_same_as_model(spec_of(BlockType::uoe, 1, 0.0, true), 1); }
TEST(DeviceStep, DenseMatchesModelBitwise) { expect_same_as_model(spec_of(BlockType::dense, 1, 0.0, false), 1); }
TEST(DeviceStep, MoeMatchesModelBitwise) { expect_same_as_model(spec_of(BlockType::moe, 1, 0.0, false), 2); }
// Chunks (3 sequences: with 4 chunks one is empty): the experts run chunk by chunk on both sides.
TEST(DeviceStep, ChunkedMatchesChunkedModelBitwise) {
  for (int chunks : {2, 4}) {
    SCOPED_TRACE(std::to_string(chunks) + " chunks");
    expect_same_as_model(spec_of(BlockType::uoe, 1, 0.0, false), 1, chunks);
    expect_same_as_model(spec_of(BlockType::moe, 2, 1e-3, false), 2, chunks);
  }
}

TEST(DeviceStep, EmptyMicroBatchIsRefused) {
  const ModelSpec spec = spec_of(BlockType::uoe, 1, 0.0, false);
  LocalExchange ex;
  Model host(spec, 1, &ex);
  CpuStepBackend be;
  DeviceStep<CpuStepBackend> step(host, be);
  ForwardStats st;
  EXPECT_THROW(step.forward_backward(nullptr, nullptr, 0, 1.0f, &st), Error);
}

}  // namespace
}  // namespace uoe
