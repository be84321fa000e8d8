// Activation recomputation (--recompute; layers/memory.hpp, Recompute): a step that drops the
// experts' caches, or everything of a block but its input and routing, and forms them again in
// backward must give the same losses and every tensor's gradient BIT FOR BIT, and hold less. One
// rank here (nothing travels); tests/mpi/test_exchange_mpi.cpp checks two ranks with rows in flight.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/memory.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/step.hpp"
#include "parallel/exchange.hpp"
#include "runtime/rng.hpp"
#include "runtime/sum_squares.hpp"
#include "small_spec.hpp"
#include "step_backend_device_like.hpp"

namespace uoe {
namespace {

ModelSpec spec_of(BlockType t, int patch) { return model_spec_resolve(small_test_spec(t, patch)); }

std::vector<int32_t> tokens(int n, int V, uint64_t stream) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<int32_t>(rng_below(23, stream, static_cast<uint64_t>(i), V));
  return v;
}

size_t bit_differences(const float* a, const float* b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += std::memcmp(a + i, b + i, sizeof(float)) != 0;
  return bad;
}

// Three AdamW steps of `micro_batches` micro-batches each, without and with recomputation: the
// losses, every gradient and the parameters after each update agree bit for bit.
template <class Be = CpuBackend>
void expect_recompute_bitwise(const ModelSpec& spec, Recompute mode, int chunks, int micro_batches) {
  SCOPED_TRACE(std::string("--recompute ") + recompute_name(mode) + ", " + std::to_string(chunks) + " chunks");
  LocalExchange ex_ref, ex_re;
  Model ref_model(spec, 5, &ex_ref), re_model(spec, 5, &ex_re);
  CpuStep ref(ref_model);
  ref.set_chunks(chunks);
  Step<Be> re(re_model);
  re.set_chunks(chunks);
  re.set_recompute(mode);
  AdamW opt_ref(ref_model.params(), AdamWSpec{}), opt_re(re_model.params(), AdamWSpec{});
  const int B = 4, N = B * spec.seq_len;
  for (int it = 1; it <= 3; ++it) {
    ref.zero_gradients();
    re.zero_gradients();  // where the step keeps them (a device-like backend: its own arenas)
    for (int m = 0; m < micro_batches; ++m) {
      const auto in = tokens(N, spec.vocab, 2 * (it * 8 + m)), tg = tokens(N, spec.vocab, 2 * (it * 8 + m) + 1);
      ForwardStats sr, sc;
      ref.forward_backward(in.data(), tg.data(), B, 1.0f / micro_batches, &sr);
      re.forward_backward(in.data(), tg.data(), B, 1.0f / micro_batches, &sc);
      EXPECT_EQ(sc.ce_sum, sr.ce_sum) << "step " << it;
      EXPECT_EQ(sc.aux_loss, sr.aux_loss) << "step " << it;
      EXPECT_EQ(re.routing_fingerprint(), ref.routing_fingerprint()) << "step " << it;
    }
    re.state_to_host(&opt_re);  // the gradients into the host arenas compared below
    const ParamStore& pr = ref_model.params();
    const ParamStore& pc = re_model.params();
    for (size_t i = 0; i < pr.count(); ++i) {
      const int t = static_cast<int>(i);
      EXPECT_EQ(bit_differences(pc.grad(t), pr.grad(t), pr.info(t).size), 0u)
          << pr.info(t).name << " gradient, step " << it;
    }
    EXPECT_GT(grad_sum_squares(pr.grads().data(), pr.total()), 0.0);  // compared something
    ref.optimizer_update(opt_ref, 1e-2, it, 1.0f);
    re.optimizer_update(opt_re, 1e-2, it, 1.0f);
    re.state_to_host(&opt_re);
    ASSERT_EQ(bit_differences(pc.values().data(), pr.values().data(), pr.total()), 0u) << "parameters, step " << it;
  }
  // Evaluation after training with recomputation (its forward writes the scratch too).
  const auto in = tokens(N, spec.vocab, 90), tg = tokens(N, spec.vocab, 91);
  ForwardStats er, ec;
  ref.forward_eval(in.data(), tg.data(), B, &er);
  re.forward_eval(in.data(), tg.data(), B, &ec);
  EXPECT_EQ(ec.ce_sum, er.ce_sum);
}

TEST(Recompute, ExpertsGivesBitwiseTheSameGradients) {
  for (int chunks : {1, 3}) expect_recompute_bitwise(spec_of(BlockType::uoe, 1), Recompute::experts, chunks, 1);
}
TEST(Recompute, BlocksGivesBitwiseTheSameGradients) {
  for (int chunks : {1, 3}) expect_recompute_bitwise(spec_of(BlockType::uoe, 1), Recompute::blocks, chunks, 1);
}
TEST(Recompute, PatchesMicroBatchesAndBaselinesGiveBitwiseTheSameGradients) {
  for (Recompute mode : {Recompute::experts, Recompute::blocks}) {
    expect_recompute_bitwise(spec_of(BlockType::uoe, 2), mode, 2, 2);
    expect_recompute_bitwise(spec_of(BlockType::moe, 1), mode, 1, 1);
    expect_recompute_bitwise(spec_of(BlockType::dense, 1), mode, 2, 1);
  }
}
// The device-like backend (the CUDA backend's policies: batched metadata, arena copies, poisoned
// buffers) runs the same recomputation.
TEST(Recompute, DeviceLikeBackendGivesBitwiseTheSameGradients) {
  for (Recompute mode : {Recompute::experts, Recompute::blocks})
    expect_recompute_bitwise<DeviceLikeBackend>(spec_of(BlockType::uoe, 1), mode, 2, 1);
}

TEST(Recompute, ParsesItsModesAndRefusesOthers) {
  for (Recompute r : {Recompute::none, Recompute::experts, Recompute::blocks})
    EXPECT_EQ(recompute_parse(recompute_name(r)), r);
  try {
    recompute_parse("everything");
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--recompute 'everything'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace uoe
