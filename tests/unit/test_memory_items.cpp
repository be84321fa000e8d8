// layers/memory.hpp's itemised estimate against what the step actually holds (Step::held_bytes,
// the allocations of every buffer, table and cache after training steps), for each --recompute
// mode: per attention block, per MLP block, the recomputation scratch, and the saving. And the
// refusal of a run that cannot fit (memory_refusal) with what would fit.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/memory.hpp"
#include "layers/model.hpp"
#include "layers/step.hpp"
#include "parallel/exchange.hpp"
#include "runtime/rng.hpp"

namespace uoe {
namespace {

ModelSpec spec_of(BlockType t, int patch) {
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
  s.patch_size = patch;
  s.capacity_factor = 1.25;
  return model_spec_resolve(s);
}

struct Held {
  CpuStep::HeldBytes held;
  MemoryEstimate est;
};

// Trains `steps` micro-batches of B sequences with `mode` and returns what the step holds, with
// the estimate for the same run.
Held after_steps(const ModelSpec& spec, Recompute mode, int chunks, int B, int steps) {
  LocalExchange ex;
  Model model(spec, 3, &ex);
  CpuStep step(model);
  step.set_chunks(chunks);
  step.set_recompute(mode);
  const int N = B * spec.seq_len;
  for (int s = 0; s < steps; ++s) {
    std::vector<int32_t> in(N), tg(N);
    for (int i = 0; i < N; ++i) {
      in[i] = static_cast<int32_t>(rng_below(7, 2 * s, static_cast<uint64_t>(i), spec.vocab));
      tg[i] = static_cast<int32_t>(rng_below(7, 2 * s + 1, static_cast<uint64_t>(i), spec.vocab));
    }
    ForwardStats st;
    step.forward_backward(in.data(), tg.data(), B, 1.0f, &st);
  }
  MemoryRun run;
  run.batch_size = B;
  run.recompute = mode;
  return {step.held_bytes(), memory_estimate(spec, run)};
}

// The tolerance: rows per routed block are estimated at their bound (every expert at capacity)
// and attention's segments as evenly spread; after a few steps of random tokens a block holds
// 90–100% of that: 10% below. Above, the row tables: a std::vector grown by resize by one row keeps
// twice its rows (libstdc++ doubles), and three of a block's int tables (seg, pos, the combine's
// rows) grow so when the rows vary from step to step — 12 bytes a row, up to 7% of what a block
// keeps at d 64 under --recompute blocks (a few hundredths of a percent at d 768 without). 8% above.
void expect_close(double measured, double estimated, const std::string& what) {
  EXPECT_LE(measured, 1.08 * estimated) << what << ": measured " << measured << " bytes, estimated " << estimated;
  EXPECT_GE(measured, 0.90 * estimated) << what << ": measured " << measured << " bytes, estimated " << estimated;
}

TEST(MemoryItems, EachBlockAndTheScratchHoldWhatTheEstimateSays) {
  struct Case {
    BlockType type;
    int chunks;
  };
  for (Recompute mode : {Recompute::none, Recompute::experts, Recompute::blocks})
    for (const Case& k : {Case{BlockType::uoe, 1}, Case{BlockType::uoe, 2}, Case{BlockType::moe, 1},
                          Case{BlockType::dense, 1}}) {
        const BlockType t = k.type;
        const int chunks = k.chunks;
        const std::string what = std::string(block_type_name(t)) + ", --recompute " + recompute_name(mode) + ", " +
                                 std::to_string(chunks) + " chunks";
        const ModelSpec spec = spec_of(t, 1);
        const Held h = after_steps(spec, mode, chunks, 4, 2);
        ASSERT_EQ(h.held.block.size(), 2u * spec.layers);
        for (size_t b = 0; b < h.held.block.size(); ++b)
          expect_close(h.held.block[b], h.est.block_bytes[b % 2], what + ", block " + std::to_string(b));
        if (mode == Recompute::none) {
          EXPECT_EQ(h.held.scratch, 0) << what;
          EXPECT_EQ(h.est.scratch_bytes, 0) << what;
        } else {
          expect_close(h.held.scratch, h.est.scratch_bytes, what + ", scratch");
        }
      }
}

TEST(MemoryItems, PatchesAreCountedToo) {
  for (Recompute mode : {Recompute::none, Recompute::blocks}) {
    const Held h = after_steps(spec_of(BlockType::uoe, 2), mode, 1, 4, 3);
    for (size_t b = 0; b < h.held.block.size(); ++b)
      expect_close(h.held.block[b], h.est.block_bytes[b % 2], std::string(recompute_name(mode)) + " block " +
                                                                  std::to_string(b));
  }
}

// Recomputation cuts what the blocks hold by the factor the estimate predicts (within 5%), and
// blocks keeps less than experts keeps less than none.
TEST(MemoryItems, RecomputationSavesWhatTheEstimatePredicts) {
  const ModelSpec spec = spec_of(BlockType::uoe, 1);
  auto kept = [](const CpuStep::HeldBytes& h) {
    double s = h.scratch;
    for (double b : h.block) s += b;
    return s;
  };
  const Held none = after_steps(spec, Recompute::none, 1, 4, 3);
  double last = kept(none.held);
  for (Recompute mode : {Recompute::experts, Recompute::blocks}) {
    const Held h = after_steps(spec, mode, 1, 4, 3);
    const double measured = kept(h.held), predicted_saving = h.est.recompute_saving;
    EXPECT_LT(measured, last) << recompute_name(mode);
    last = measured;
    EXPECT_GT(predicted_saving, 0) << recompute_name(mode);
    EXPECT_NEAR((kept(none.held) - measured) / predicted_saving, 1.0, 0.05) << recompute_name(mode);
    EXPECT_NEAR(h.est.activations(), spec.layers * (h.est.block_bytes[0] + h.est.block_bytes[1]) + h.est.scratch_bytes,
                1.0);  // ep 1: no exchange buffers
  }
}

TEST(MemoryItems, TheEstimateIsItemised) {
  MemoryRun run;
  run.recompute = Recompute::blocks;
  run.ep = 2;
  run.world_size = 2;
  const MemoryEstimate e = memory_estimate(spec_of(BlockType::uoe, 1), run, 1000);
  for (const char* item : {"parameters", "gradients", "AdamW state", "activations kept, attention blocks",
                           "activations kept, MLP blocks", "recomputation scratch", "exchange buffers", "the data"})
    EXPECT_GT(e.bytes_of(item), 0) << item;
  EXPECT_NE(e.table().find("recomputation saves"), std::string::npos) << e.table();
}

TEST(MemoryItems, ARunThatCannotFitIsRefusedWithWhatWouldFit) {
  const ModelSpec spec = spec_of(BlockType::uoe, 1);
  MemoryRun run;
  run.batch_size = 64;
  const MemoryEstimate est = memory_estimate(spec, run);
  const double need = est.total() + est.runtime_overhead_bytes;
  EXPECT_EQ(memory_refusal(est, MemoryLimit{need + 1, "test"}, spec, run, 0), "");
  // Room for half the batch: the largest batch that fits is named, and it does fit.
  MemoryRun half = run;
  half.batch_size = 32;
  const MemoryEstimate h = memory_estimate(spec, half);
  const double limit = h.total() + h.runtime_overhead_bytes;
  const std::string r = memory_refusal(est, MemoryLimit{limit, "--memory-limit X"}, spec, run, 0);
  EXPECT_NE(r.find("--memory-limit X"), std::string::npos) << r;
  EXPECT_NE(r.find("--batch-size 32 "), std::string::npos) << r;
  EXPECT_NE(r.find("activations kept, MLP blocks"), std::string::npos) << r;
  // Nothing fits: said so, with the parameters' share.
  const std::string none = memory_refusal(est, MemoryLimit{1e6, "test"}, spec, run, 0);
  EXPECT_NE(none.find("nothing of these"), std::string::npos) << none;
}

TEST(MemoryItems, TheLimitIsTheOptionOrTheHostsShare) {
  EXPECT_DOUBLE_EQ(memory_limit("123456789", 4).bytes, 123456789.0);
  const MemoryLimit one = memory_limit("auto", 1), two = memory_limit("auto", 2);
  ASSERT_GT(one.bytes, 0) << "neither a cgroup limit nor MemAvailable could be read";
  // MemAvailable moves between the two reads; the share halves all the same.
  EXPECT_NEAR(two.bytes / one.bytes, 0.5, 0.05) << one.source << " / " << two.source;
  EXPECT_NE(two.source.find("2 ranks"), std::string::npos) << two.source;
}

}  // namespace
}  // namespace uoe
