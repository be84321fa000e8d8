// The one step over the CUDA backend (layers/step_cuda.hpp) against it over the CPU backend: one
// forward_backward of a small model from the same weights on the same batch, for the UoE blocks and
// both baselines (dense, moe), then a dropless evaluation.
//
// Tolerances: the two steps share the routing code, the row bodies and the combine order, but cuBLAS
// and OpenBLAS sum GEMMs in different orders and nvcc contracts a·b + c into FMAs, so values differ
// in the last bits after each GEMM. Through 2 layers and back that stays far below 1e-3 relative for
// the O(1e-3…1) gradients here; atol covers entries that cancel to ~0 (1e-3 of the tensor's largest
// entry). Routing must be identical: the router runs on the host on the GPU's normalised inputs,
// and a random model of this size has no near-ties (if this ever fails, print the top-2 probability
// gaps of the differing patch before relaxing anything).
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "gpu_test.hpp"
#include "layers/cpu_backend.hpp"
#include "layers/step_cuda.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"

namespace uoe::gpu_test {
namespace {

using StepCudaGpu = Gpu;

ModelSpec small_spec(BlockType t) {
  ModelSpec s;
  s.block_type = t;
  s.layers = 2;
  s.d = 64;
  s.heads = 4;
  s.attn_experts = 4;
  s.attn_topk = 2;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 256;
  s.vocab = 64;
  s.seq_len = 32;
  s.capacity_factor = 1.25;
  s.aux_loss = 0.01;
  s.z_loss = 0.001;
  return model_spec_resolve(s);
}

std::vector<int32_t> tokens(int n, int V, uint64_t stream) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<int32_t>(rng_below(5, stream, static_cast<uint64_t>(i), V));
  return v;
}

void expect_step_matches(BlockType type) {
  const ModelSpec spec = small_spec(type);
  LocalExchange ex_cpu, ex_host;
  Model cpu_model(spec, 7, &ex_cpu), host(spec, 7, &ex_host);
  CpuStep cpu(cpu_model);
  const std::unique_ptr<ModelStep> gpu = make_cuda_step(host, CudaStepOptions{});  // every expert here
  ModelStep& dev = *gpu;
  const int B = 4, N = B * spec.seq_len;
  const auto in = tokens(N, spec.vocab, 1), tg = tokens(N, spec.vocab, 2);

  std::vector<int> hooked;
  dev.set_backward_hook([&hooked](int b) { hooked.push_back(b); });
  ForwardStats sc, sg;
  cpu.forward_backward(in.data(), tg.data(), B, 0.5f, &sc);
  dev.forward_backward(in.data(), tg.data(), B, 0.5f, &sg);

  for (int b = 0; b < 2 * spec.layers; ++b) {
    EXPECT_EQ(dev.routing(b).choice, cpu.routing(b).choice) << "block " << b;
    EXPECT_EQ(dev.routing(b).kept, cpu.routing(b).kept) << "block " << b;
  }
  EXPECT_EQ(sg.tokens, sc.tokens);
  EXPECT_NEAR(sg.ce_sum, sc.ce_sum, 1e-5 * std::fabs(sc.ce_sum));
  EXPECT_NEAR(sg.aux_loss, sc.aux_loss, 1e-4 * std::fabs(sc.aux_loss) + 1e-9);
  EXPECT_DOUBLE_EQ(sg.flops, sc.flops);  // counted from the (identical) routing

  const ParamStore& pc = cpu_model.params();
  const ParamStore& pg = host.params();
  for (size_t i = 0; i < pc.count(); ++i) {
    const int t = static_cast<int>(i);
    const size_t n = pc.info(t).size;
    std::vector<float> gc(pc.grad(t), pc.grad(t) + n), gg(pg.grad(t), pg.grad(t) + n);
    float peak = 0;
    for (float v : gc) peak = std::max(peak, std::fabs(v));
    expect_close(gg, gc, 1e-3 * peak, 1e-3, pc.info(t).name.c_str());
  }
  // The hook saw every block, last first, then the embedding (−1).
  std::vector<int> want;
  for (int b = 2 * spec.layers - 1; b >= -1; --b) want.push_back(b);
  EXPECT_EQ(hooked, want);

  // Dropless evaluation of the same batch.
  ForwardStats ec, eg;
  cpu.forward_eval(in.data(), tg.data(), B, &ec);
  dev.forward_eval(in.data(), tg.data(), B, &eg);
  EXPECT_NEAR(eg.ce_sum, ec.ce_sum, 1e-5 * std::fabs(ec.ce_sum));
}

TEST_F(StepCudaGpu, UoeTrainingStepMatchesCpu) { expect_step_matches(BlockType::uoe); }
TEST_F(StepCudaGpu, DenseTrainingStepMatchesCpu) { expect_step_matches(BlockType::dense); }
TEST_F(StepCudaGpu, MoeTrainingStepMatchesCpu) { expect_step_matches(BlockType::moe); }

}  // namespace
}  // namespace uoe::gpu_test
