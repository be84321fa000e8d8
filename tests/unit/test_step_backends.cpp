// The one step (layers/step.hpp) over its two CPU-run backends: CpuBackend (the production CPU
// path) and DeviceLikeBackend (step_backend_device_like.hpp: CPU kernels with the CUDA backend's
// policies — arena copies, hooks at the end, batched metadata, unfused combine, poisoned buffers).
// Every kernel is the same per element, so the two must agree BIT FOR BIT: losses, router figures,
// routing, every gradient, and the parameters after several AdamW steps. What this cannot check —
// the CUDA kernels against these CPU kernels — is what the gpu.* tests do on a machine with a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/step.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "parallel/exchange.hpp"
#include "runtime/rng.hpp"
#include "step_backend_device_like.hpp"

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

// `chunks`: both cut each block's rows into that many chunks (exchanges in line).
void expect_same_as_cpu_backend(const ModelSpec& spec, int micro_batches, int chunks = 1) {
  LocalExchange ex_ref, ex_dev;
  Model ref_model(spec, 11, &ex_ref), host(spec, 11, &ex_dev);
  CpuStep ref(ref_model);
  ref.set_chunks(chunks);
  Step<DeviceLikeBackend> step(host);
  step.set_chunks(chunks);
  const DeviceLikeBackend& be = step.backend();
  AdamW opt_ref(ref_model.params(), AdamWSpec{}), opt_dev(host.params(), AdamWSpec{});
  std::vector<int> hooked;
  step.set_backward_hook([&hooked](int b) { hooked.push_back(b); });
  const int B = 3, N = B * spec.seq_len, blocks = 2 * spec.layers;
  for (int it = 1; it <= 3; ++it) {
    ref_model.params().zero_grads();
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
    const ParamStore& pr = ref_model.params();
    const ParamStore& pd = host.params();
    for (size_t i = 0; i < pr.count(); ++i) {
      const int t = static_cast<int>(i);
      EXPECT_EQ(bit_differences(pd.grad(t), pr.grad(t), pr.info(t).size), 0u)
          << pr.info(t).name << " gradient, step " << it;
    }
    // Not all zero: the comparison above compared something.
    EXPECT_GT(grad_sum_squares(pr.grads().data(), pr.total()), 0.0);
    opt_ref.update(ref_model.params(), 1e-2, it, 1.0f);
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

TEST(StepBackends, UoeMatchesCpuBackendBitwise) { expect_same_as_cpu_backend(spec_of(BlockType::uoe, 1, 0.0, false), 1); }
TEST(StepBackends, UoePatchesZLossMicroBatchesMatchCpuBackendBitwise) {
  expect_same_as_cpu_backend(spec_of(BlockType::uoe, 2, 1e-3, false), 2);
}
TEST(StepBackends, ProbGateMatchesCpuBackendBitwise) { expect_same_as_cpu_backend(spec_of(BlockType::uoe, 1, 0.0, true), 1); }
TEST(StepBackends, DenseMatchesCpuBackendBitwise) { expect_same_as_cpu_backend(spec_of(BlockType::dense, 1, 0.0, false), 1); }
TEST(StepBackends, MoeMatchesCpuBackendBitwise) { expect_same_as_cpu_backend(spec_of(BlockType::moe, 1, 0.0, false), 2); }
// Chunks (3 sequences: with 4 chunks one is empty): the experts run chunk by chunk on both sides.
TEST(StepBackends, ChunkedMatchesChunkedCpuBackendBitwise) {
  for (int chunks : {2, 4}) {
    SCOPED_TRACE(std::to_string(chunks) + " chunks");
    expect_same_as_cpu_backend(spec_of(BlockType::uoe, 1, 0.0, false), 1, chunks);
    expect_same_as_cpu_backend(spec_of(BlockType::moe, 2, 1e-3, false), 2, chunks);
  }
}

TEST(StepBackends, EmptyMicroBatchIsRefused) {
  const ModelSpec spec = spec_of(BlockType::uoe, 1, 0.0, false);
  LocalExchange ex;
  Model host(spec, 1, &ex);
  CpuStep cpu(host);
  Step<DeviceLikeBackend> device_like(host);
  ForwardStats st;
  EXPECT_THROW(cpu.forward_backward(nullptr, nullptr, 0, 1.0f, &st), Error);
  EXPECT_THROW(device_like.forward_backward(nullptr, nullptr, 0, 1.0f, &st), Error);
}

}  // namespace
}  // namespace uoe
