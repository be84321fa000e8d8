// The one step (layers/step.hpp) over its two CPU-run backends: CpuBackend (the production CPU
// path) and DeviceLikeBackend (step_backend_device_like.hpp: CPU kernels with the CUDA backend's
// policies — arena copies, hooks at the end, batched metadata, unfused combine, poisoned buffers).
// Every kernel is the same per element, so the two must agree BIT FOR BIT: losses, router figures,
// routing, every gradient, and the parameters after several AdamW steps (run by each backend on its
// own arenas). DeviceLikeBackend records what crosses between host and device: one training step
// moves no parameter, gradient or activation across, only metadata and the loss. What this cannot check —
// the CUDA kernels against these CPU kernels — is what the gpu.* tests do on a machine with a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdlib.h>
#include <limits>
#include <utility>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "layers/cpu_backend.hpp"
#include "layers/step.hpp"
#include "layers/step_figures.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/train_step.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_sync.hpp"
#include "parallel/exchange.hpp"
#include "runtime/config.hpp"
#include "runtime/rng.hpp"
#include "runtime/sum_squares.hpp"
#include "runtime/token_stream.hpp"
#include "small_spec.hpp"
#include "step_backend_device_like.hpp"

namespace uoe {
namespace {

ModelSpec spec_of(BlockType t, int patch, double z_loss, bool prob_gate) {
  ModelSpec s = small_test_spec(t, patch);
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
    ref.zero_gradients();
    step.zero_gradients();
    for (int m = 0; m < micro_batches; ++m) {
      const auto in = tokens(N, spec.vocab, 2 * (it * 8 + m)), tg = tokens(N, spec.vocab, 2 * (it * 8 + m) + 1);
      ForwardStats sr, sd;
      ref.forward_backward(in.data(), tg.data(), B, 1.0f / micro_batches, &sr);
      hooked.clear();
      step.forward_backward(in.data(), tg.data(), B, 1.0f / micro_batches, &sd);
      step.state_to_host(&opt_dev);
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
    ref.optimizer_update(opt_ref, 1e-2, it, 1.0f);
    step.optimizer_update(opt_dev, 1e-2, it, 1.0f);
    step.state_to_host(&opt_dev);
    EXPECT_EQ(bit_differences(opt_dev.m().data(), opt_ref.m().data(), pr.total()), 0u) << "AdamW m, step " << it;
    EXPECT_EQ(bit_differences(opt_dev.v().data(), opt_ref.v().data(), pr.total()), 0u) << "AdamW v, step " << it;
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
  // What crossed: the arenas once each way per state_to_host, routing counts and row tables.
  EXPECT_GT(be.bytes(DeviceLikeBackend::Traffic::arena), 0u);
  EXPECT_GT(be.bytes(DeviceLikeBackend::Traffic::metadata), 0u);
}

// One training step as the trainer runs it (layers/train_step.cpp): zero the gradients, forward +
// backward over micro-batches, the all-reduce, the global Σ g², AdamW with the clip scale. On the
// device-like backend after a first step (which takes the arenas from the host), a step moves no
// arena (parameters, gradients, moments) and no activation across, only metadata and the loss; and
// it computes bit for bit what the CPU backend computes in the host arenas.
void expect_step_stays_on_device(const ModelSpec& spec, int chunks) {
  LocalExchange ex_ref, ex_dev;
  Model ref_model(spec, 5, &ex_ref), host(spec, 5, &ex_dev);
  CpuStep ref(ref_model);
  Step<DeviceLikeBackend> step(host);
  ref.set_chunks(chunks);
  step.set_chunks(chunks);
  SelfCommunicator self;
  GradientSync sync_ref(grad_tensors(ref_model.params()), model_gradient_buckets(ref_model), self, self, self),
      sync_dev(grad_tensors(host.params()), model_gradient_buckets(host), self, self, self);
  AdamW opt_ref(ref_model.params(), AdamWSpec{}), opt_dev(host.params(), AdamWSpec{});
  const int B = 2, N = B * spec.seq_len, M = 2;
  auto train = [&](ModelStep& s, GradientSync& sync, AdamW& opt, int it) {
    s.zero_gradients();
    double ce = 0;
    for (int m = 0; m < M; ++m) {
      const auto in = tokens(N, spec.vocab, 40 + 2 * (it * M + m)), tg = tokens(N, spec.vocab, 41 + 2 * (it * M + m));
      ForwardStats st;
      s.forward_backward(in.data(), tg.data(), B, 1.0f / M, &st);
      ce += st.ce_sum;
    }
    for (size_t b = 0; b < sync.buckets(); ++b) s.reduce_gradients(sync, static_cast<int>(b));
    const double sq = s.gradient_sum_squares(&sync);
    // A clip below the norm: the scale is exercised.
    s.optimizer_update(opt, 1e-2, it, clip_scale(0.5 * std::sqrt(sq), std::sqrt(sq)));
    return std::make_pair(ce, sq);
  };
  const DeviceLikeBackend& be = step.backend();
  for (int it = 1; it <= 3; ++it) {
    if (it == 2) step.backend().transfers.clear();  // the first step took the arenas from the host
    const auto r = train(ref, sync_ref, opt_ref, it);
    const auto d = train(step, sync_dev, opt_dev, it);
    EXPECT_EQ(d.first, r.first) << "loss, step " << it;
    EXPECT_EQ(d.second, r.second) << "Σ g², step " << it;
    EXPECT_GT(r.second, 0.0);
  }
  using T = DeviceLikeBackend::Traffic;
  for (const auto& t : be.transfers)
    EXPECT_TRUE(t.what == T::metadata || t.what == T::loss)
        << (t.to_device ? "up: " : "down: ") << t.name << ", " << t.bytes << " bytes";
  EXPECT_EQ(be.bytes(T::arena), 0u);
  EXPECT_EQ(be.bytes(T::activations), 0u);
  // Per micro-batch: the CE sum, and per routed block its three figures (balance, z-loss, entropy).
  int routed = 0;
  for (int b = 0; b < 2 * spec.layers; ++b) routed += spec.block_routed(b) ? 1 : 0;
  EXPECT_GT(routed, 0);
  EXPECT_EQ(be.bytes(T::loss), 2u * M * (1 + 3 * routed) * sizeof(double));
  // Routing crossed as counts only (routing decided and the source rows laid out on the device):
  // down, per routed block the row counts [E + 1], chosen counts [E], experts per token [k + 1] and
  // the source rows' cells [B, E]; per unrouted block up its row counts [2], down its cells [B, 1];
  // up, the tokens and targets. No row table, nothing that grows with the kept rows.
  const std::vector<std::string> allowed = {"step input", "targets",       "loss",
                                            "router losses and entropy", "row counts", "chosen counts",
                                            "experts per token",         "source row cells"};
  for (const auto& t : be.transfers)
    EXPECT_NE(std::find(allowed.begin(), allowed.end(), t.name), allowed.end())
        << (t.to_device ? "up: " : "down: ") << t.name << ", " << t.bytes << " bytes";
  size_t want_meta = 0;
  for (int b = 0; b < 2 * spec.layers; ++b) {
    const int E = spec.block_experts(b), k = spec.block_topk(b);
    want_meta += spec.block_routed(b) ? (E + 1) + E + (k + 1) + B * E : 2 + B;
  }
  want_meta = 2u * M * (2 * N + want_meta) * sizeof(int);  // two steps of M micro-batches
  EXPECT_EQ(be.bytes(T::metadata), want_meta);
  // The host arenas were not touched by the steps; the snapshot brings the device's state.
  const ParamStore& pr = ref_model.params();
  const ParamStore& pd = host.params();
  EXPECT_GT(bit_differences(pd.values().data(), pr.values().data(), pr.total()), 0u);
  step.state_to_host(&opt_dev);
  EXPECT_EQ(bit_differences(pd.values().data(), pr.values().data(), pr.total()), 0u);
  EXPECT_EQ(bit_differences(pd.grads().data(), pr.grads().data(), pr.total()), 0u);
  EXPECT_EQ(bit_differences(opt_dev.m().data(), opt_ref.m().data(), pr.total()), 0u);
  EXPECT_EQ(bit_differences(opt_dev.v().data(), opt_ref.v().data(), pr.total()), 0u);
  EXPECT_GT(be.bytes(T::arena), 0u);
  // A host change (a checkpoint read) is taken at the next use: both continue from the host's state.
  step.state_from_host();
  const auto r = train(ref, sync_ref, opt_ref, 4);
  const auto d = train(step, sync_dev, opt_dev, 4);
  EXPECT_EQ(d.first, r.first);
  step.state_to_host(&opt_dev);
  EXPECT_EQ(bit_differences(pd.values().data(), pr.values().data(), pr.total()), 0u);
}

TEST(StepBackends, TrainingStepMovesNoArenaAcrossTheDeviceBoundary) {
  expect_step_stays_on_device(spec_of(BlockType::uoe, 2, 1e-3, false), 1);
  expect_step_stays_on_device(spec_of(BlockType::moe, 1, 0.0, true), 2);
}

// The small model both tests below train: 2 layers, d 16, 2 attention experts top-1, 4 MLP experts
// top-2, T 8.
Config tiny_step_config() {
  Config cfg;
  cfg.layers = 2;
  cfg.d_model = 16;
  cfg.heads = 2;
  cfg.attn_experts = 2;
  cfg.attn_topk = 1;
  cfg.experts = 4;
  cfg.topk = 2;
  cfg.d_ff = 32;
  cfg.seq_len = 8;
  return cfg;
}

// train_step over the device-like backend keeps the loss and the router's figures where it computed
// them (ModelStep::figures_begin, layers/step_figures.hpp): a step without a log line moves only the
// tokens, targets, row counts and cells, and one double (the loss, for the skip check); a log step
// adds one copy of every waiting step's figures (the steps since the last log line, a slot of
// StepFigureLayout::size() doubles each). The figures are the CPU backend's bit for bit: each step's
// own loss, flops, tokens, drops and norm, and on log steps its router figures and (`earlier`) those
// of the steps since the last log line. A skipped step (non-finite loss) leaves no figures behind.
// One model trained side by side by the CPU backend (ref) and the device-like one (dev), from the
// same initial parameters on the same data.
struct FigurePair {
  Config cfg;
  ModelSpec spec;
  StepFigureLayout lay;
  TokenStream data;
  LocalExchange ex_ref, ex_dev;
  Model ref_model, host;
  CpuStep ref;
  Step<DeviceLikeBackend> step;
  DeviceLikeBackend& be;
  AdamW opt_ref, opt_dev;
  StepRanks ranks_ref, ranks_dev;
  explicit FigurePair(const Config& c)
      : cfg(c), spec(model_spec_from_config(cfg, 32)), lay(spec), data(tokens(4096, spec.vocab, 70)),
        ref_model(spec, 5, &ex_ref), host(spec, 5, &ex_dev), ref(ref_model), step(host), be(step.backend()),
        opt_ref(ref_model.params(), AdamWSpec{}), opt_dev(host.params(), AdamWSpec{}) {
    ranks_ref.step = &ref;
    ranks_dev.step = &step;
  }
  StepFigures train_ref(int s) { return train_step(ref_model, opt_ref, cfg, data, s, ranks_ref); }
  StepFigures train_dev(int s) { return train_step(host, opt_dev, cfg, data, s, ranks_dev); }
};

Config figures_config(const std::string& type, int patch, int micro_batches) {
  Config cfg = tiny_step_config();
  cfg.patch_size = patch;
  cfg.batch_size = 2;
  cfg.micro_batches = micro_batches;
  cfg.block_type = type;
  cfg.seed = 3;
  cfg.steps = 8;
  cfg.log_every = 3;
  cfg.warmup = 1;
  config_validate(cfg);
  return cfg;
}

// The device-like backend's figures d against the CPU backend's r, bit for bit (router: the
// router's figures too, which a step has only on a log line).
void same_figures(const StepFigures& d, const StepFigures& r, bool router, const std::string& what) {
  auto bits = [](double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; };
  EXPECT_TRUE(bits(d.loss, r.loss)) << what << ": loss " << d.loss << " vs " << r.loss;
  EXPECT_TRUE(bits(d.flops, r.flops)) << what;
  EXPECT_EQ(d.tokens, r.tokens) << what;
  EXPECT_EQ(d.dropped, r.dropped) << what;
  EXPECT_EQ(d.assignments, r.assignments) << what;
  if (!router) return;
  EXPECT_TRUE(bits(d.aux, r.aux)) << what << ": aux " << d.aux << " vs " << r.aux;
  EXPECT_GT(r.aux, 0.0) << what;
  for (size_t b = 0; b < r.router_entropy.size(); ++b) {
    EXPECT_TRUE(bits(d.router_entropy[b], r.router_entropy[b])) << what << ": entropy, block " << b;
    EXPECT_TRUE(bits(d.load_max_over_mean[b], r.load_max_over_mean[b])) << what << ": load, block " << b;
  }
  ASSERT_EQ(d.experts_per_token.size(), r.experts_per_token.size()) << what;
  for (size_t j = 0; j < r.experts_per_token.size(); ++j)
    for (size_t b = 0; b < r.experts_per_token[j].size(); ++b)
      EXPECT_TRUE(bits(d.experts_per_token[j][b], r.experts_per_token[j][b])) << what << ": experts per token";
}

void expect_figures_stay_on_device(const std::string& type, int patch, int micro_batches) {
  FigurePair fp(figures_config(type, patch, micro_batches));
  const Config& cfg = fp.cfg;
  const StepFigureLayout& lay = fp.lay;
  DeviceLikeBackend& be = fp.be;
  auto same = same_figures;
  using T = DeviceLikeBackend::Traffic;
  const std::vector<std::string> allowed = {"step input", "targets", "row counts", "source row cells", "loss"};
  std::vector<StepFigures> window;  // the CPU backend's figures since the last log line
  int waiting = 0;                  // steps whose figures wait on the device
  for (int s = 1; s <= cfg.steps; ++s) {
    const std::string what = "step " + std::to_string(s);
    fp.ranks_ref.inject_nan = fp.ranks_dev.inject_nan = s == 5;  // skipped: its slot is reused
    be.transfers.clear();
    const StepFigures r = fp.train_ref(s);
    const StepFigures d = fp.train_dev(s);
    EXPECT_EQ(d.skipped, r.skipped) << what;
    EXPECT_EQ(r.skipped, s == 5) << what;
    EXPECT_TRUE(std::isnan(d.loss) == std::isnan(r.loss)) << what;
    if (!r.skipped) {
      EXPECT_EQ(d.grad_norm, r.grad_norm) << what;
      ++waiting;
    }
    const bool log = s % cfg.log_every == 0 || s == cfg.steps;
    EXPECT_FALSE(r.figures_deferred);
    EXPECT_TRUE(r.earlier.empty());
    EXPECT_EQ(d.figures_deferred, !log && !r.skipped) << what;
    if (!r.skipped) same(d, r, log, what);
    // What crossed in this step (the first also took the arenas and moments from the host; the
    // skipped one brought the gradients down to name the non-finite tensor).
    size_t loss_bytes = 0, figure_copies = 0, figure_bytes = 0;
    for (const auto& t : be.transfers) {
      if ((s == 1 || r.skipped) && t.what == T::arena) continue;
      if (t.what == T::figures) {
        ++figure_copies;
        figure_bytes += t.bytes;
        continue;
      }
      if (t.what == T::loss) loss_bytes += t.bytes;
      EXPECT_NE(std::find(allowed.begin(), allowed.end(), t.name), allowed.end())
          << what << (t.to_device ? ": up: " : ": down: ") << t.name << ", " << t.bytes << " bytes";
      EXPECT_TRUE(t.what == T::metadata || t.what == T::loss) << what << ": " << t.name;
    }
    EXPECT_EQ(loss_bytes, sizeof(double)) << what << ": the loss, once a step";
    if (log && !r.skipped) {
      EXPECT_EQ(figure_copies, 1u) << what;
      EXPECT_EQ(figure_bytes, static_cast<size_t>(waiting) * lay.size() * sizeof(double)) << what;
      ASSERT_EQ(d.earlier.size(), window.size()) << what;
      for (size_t i = 0; i < window.size(); ++i) same(d.earlier[i], window[i], true, what + ", earlier " + std::to_string(i));
      window.clear();
      waiting = 0;
    } else {
      EXPECT_EQ(figure_copies, 0u) << what << ": figures before a log line";
      EXPECT_TRUE(d.earlier.empty()) << what;
      if (!r.skipped) window.push_back(r);
    }
  }
  fp.step.state_to_host(&fp.opt_dev);
  EXPECT_EQ(bit_differences(fp.host.params().values().data(), fp.ref_model.params().values().data(),
                            fp.ref_model.params().total()),
            0u);
}

TEST(StepBackends, TrainStepReadsTheFiguresOnlyOnLogSteps) {
  expect_figures_stay_on_device("uoe", 2, 2);
  expect_figures_stay_on_device("moe", 1, 1);
}

// A --log-every that changes while steps' figures wait on the device (a run resumed with another
// one, in one process here): the waiting slots are read before the slot buffer is laid out for the
// new count (the device's buffer is reallocated when it grows), and reach the next log line
// complete, bit for bit the CPU backend's.
TEST(StepBackends, AChangedLogEveryKeepsTheWaitingStepsFigures) {
  Config cfg = figures_config("uoe", 1, 1);
  cfg.log_every = 4;
  FigurePair fp(cfg);
  std::vector<StepFigures> window;
  int logs = 0;
  for (int s = 1; s <= 5; ++s) {
    if (s == 3) fp.cfg.log_every = 5;  // steps 1 and 2 wait in slots laid out for 4
    const StepFigures r = fp.train_ref(s);
    const StepFigures d = fp.train_dev(s);
    const std::string what = "step " + std::to_string(s);
    if (d.figures_deferred) {
      window.push_back(r);
      continue;
    }
    ++logs;
    same_figures(d, r, true, what);
    ASSERT_EQ(d.earlier.size(), window.size()) << what;
    for (size_t i = 0; i < window.size(); ++i) same_figures(d.earlier[i], window[i], true, what + ", earlier " + std::to_string(i));
    window.clear();
  }
  EXPECT_EQ(logs, 1);  // step 5, with steps 1-4 earlier
}

// A training pass that fails (an exception out of the backend) leaves the backend out of its
// deferring state: figures_end runs on every way out of the pass.
TEST(StepBackends, AFailedTrainingPassEndsTheDeferredFigures) {
  FigurePair fp(figures_config("uoe", 1, 1));
  fp.train_dev(1);
  fp.be.fail_in_route = true;
  EXPECT_THROW(fp.train_dev(2), Error);
  EXPECT_FALSE(fp.be.defer_figures);
}

// Routing on the device path (decided where the input and weights are; only counts, row tables and
// three figures come down) against the CPU router on the same inputs, with capacity ties: patches that are copies
// of one another score identically, so experts over capacity keep the lower patches.
TEST(StepBackends, DeviceRoutingEqualsCpuRoutingWithCapacityTies) {
  for (int patch : {1, 2}) {
    SCOPED_TRACE("patch " + std::to_string(patch));
    RouterSpec rs;
    rs.experts = 4;
    rs.topk = 2;
    rs.patch_size = patch;
    rs.capacity_factor = 1.0;
    rs.aux_weight = 0.01;
    rs.z_weight = 1e-3;
    const int N = 24, d = 8, E = rs.experts, P = N / patch;
    std::vector<float> xn(static_cast<size_t>(N) * d), w(static_cast<size_t>(d) * E), b(E), dgate;
    // Three distinct token rows, repeated: whole patches repeat, so their scores tie.
    for (int t = 0; t < N; ++t)
      for (int c = 0; c < d; ++c)
        xn[static_cast<size_t>(t) * d + c] = rng_normal(3, (t / patch) % 3, static_cast<uint64_t>((t % patch) * d + c));
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.5f * rng_normal(4, 0, i);
    for (int e = 0; e < E; ++e) b[e] = 0.1f * static_cast<float>(e);
    CpuBackend cpu;
    DeviceLikeBackend dev;
    CpuBackend::RouteCache cc;
    DeviceLikeBackend::RouteCache dc;
    Routing rc, rd;
    cpu.route(rc, cc, rs, xn.data(), w.data(), b.data(), N, d, false);
    dev.route(rd, dc, rs, xn.data(), w.data(), b.data(), N, d, false);
    EXPECT_GT(rc.dropped, 0);  // the capacity rule decided something
    // What came to the host: the counts, the row tables and the figures, decided on the device.
    EXPECT_TRUE(rd.probs.empty() && rd.choice.empty() && rd.kept.empty() && rd.gate.empty() && rd.lse.empty());
    EXPECT_EQ(rd.row_offsets, rc.row_offsets);
    EXPECT_EQ(rd.chosen, rc.chosen);
    EXPECT_EQ(rd.capacity_kept, rc.capacity_kept);
    EXPECT_TRUE(rd.row_patch.empty() && rd.row_slot.empty());  // the row tables stay on the device
    EXPECT_EQ(rd.dropped, rc.dropped);
    EXPECT_EQ(rd.capacity, rc.capacity);
    EXPECT_EQ(rd.balance_loss, rc.balance_loss);
    EXPECT_EQ(rd.z_loss, rc.z_loss);
    // Only those crossed: no [P, E] array, no row table: (E + 1) + E + (k + 1) counts, 3 figures.
    size_t crossed = 0;
    for (const auto& t : dev.transfers) {
      EXPECT_FALSE(t.to_device) << t.name;
      EXPECT_NE(t.bytes, static_cast<size_t>(P) * E * sizeof(float)) << t.name;
      crossed += t.bytes;
    }
    EXPECT_EQ(crossed, (2 * E + 1 + rs.topk + 1) * sizeof(int) + 3 * sizeof(double));
    // The figures the log line reads, as block_stats_from_routing forms them from the CPU routing.
    BlockStats want, got;
    const ModelSpec ms = spec_of(BlockType::uoe, patch, 0.0, false);
    block_stats_from_routing(&want, ms, 0, rc, N, false, true);
    block_stats_from_routing(&got, ms, 0, rd, N, false, true);
    EXPECT_EQ(got.entropy_sum, want.entropy_sum);
    EXPECT_GT(want.entropy_sum, 0.0);
    EXPECT_EQ(got.experts_per_token, want.experts_per_token);
    // The rest, when the host asks for it: the CPU router's, bit for bit.
    dev.transfers.clear();
    dev.routing_to_host(rd, dc);
    EXPECT_GT(dev.transfers.size(), 0u);
    EXPECT_EQ(rd.probs, rc.probs);
    EXPECT_EQ(rd.lse, rc.lse);
    EXPECT_EQ(rd.choice, rc.choice);
    EXPECT_EQ(rd.gate, rc.gate);
    EXPECT_EQ(rd.kept, rc.kept);
    EXPECT_EQ(rd.row_patch, rc.row_patch);
    EXPECT_EQ(rd.row_slot, rc.row_slot);
    // The tie rule itself: among patches with the same score for an expert, a kept one never has a
    // higher index than a dropped one.
    for (int p = 0; p < P; ++p)
      for (int j = 0; j < rs.topk; ++j)
        for (int q = p + 1; q < P; ++q)
          for (int i = 0; i < rs.topk; ++i) {
            const int e = rd.choice[p * rs.topk + j];
            if (rd.choice[q * rs.topk + i] != e || rd.probs[p * E + e] != rd.probs[q * E + e]) continue;
            EXPECT_FALSE(!rd.kept[p * rs.topk + j] && rd.kept[q * rs.topk + i]) << "expert " << e << ", patches " << p << ", " << q;
          }
    // Backward: the same gradients, bit for bit, with the gate gradients on the device.
    dgate.resize(static_cast<size_t>(P) * rs.topk);
    for (size_t i = 0; i < dgate.size(); ++i) dgate[i] = rng_normal(5, 0, i);
    dev.gate_gradients().resize(dgate.size());
    std::copy(dgate.begin(), dgate.end(), dev.gate_gradients().data());
    std::vector<float> dxc(xn.size(), 0.25f), dxd(dxc), dwc(w.size(), 0.5f), dwd(dwc), dbc(E, -1.0f), dbd(dbc);
    std::vector<float> no_dgate(dgate.size(), std::numeric_limits<float>::quiet_NaN());  // not read
    dev.transfers.clear();
    cpu.route_backward(rc, cc, rs, dgate.data(), xn.data(), w.data(), dxc.data(), dwc.data(), dbc.data(), 0.5f);
    dev.route_backward(rd, dc, rs, no_dgate.data(), xn.data(), w.data(), dxd.data(), dwd.data(), dbd.data(), 0.5f);
    EXPECT_EQ(bit_differences(dxd.data(), dxc.data(), dxc.size()), 0u);
    EXPECT_EQ(bit_differences(dwd.data(), dwc.data(), dwc.size()), 0u);
    EXPECT_EQ(bit_differences(dbd.data(), dbc.data(), dbc.size()), 0u);
    EXPECT_TRUE(dev.transfers.empty());  // the backward moves nothing
  }
}

// A checkpoint written from the device's state (state_to_host through the snapshot's staging
// slices, then the existing writer) equals the CPU path's bitwise, and a run resumed from each (on
// the other backend) continues bitwise alike.
TEST(StepBackends, CheckpointFromTheDeviceSnapshotEqualsTheCpuPathsAndResumesBitwise) {
  namespace fs = std::filesystem;
  std::string pattern = (fs::temp_directory_path() / "uoe-snapshot-XXXXXX").string();
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  const fs::path root = pattern;
  Config cfg = tiny_step_config();
  cfg.patch_size = 2;
  cfg.batch_size = 2;
  cfg.seed = 3;
  config_validate(cfg);
  const ModelSpec spec = model_spec_from_config(cfg, 32);
  LocalExchange ex_ref, ex_dev;
  Model ref_model(spec, 5, &ex_ref), host(spec, 5, &ex_dev);
  CpuStep ref(ref_model);
  Step<DeviceLikeBackend> step(host);
  DeviceLikeBackend& be = step.backend();
  AdamW opt_ref(ref_model.params(), AdamWSpec{}), opt_dev(host.params(), AdamWSpec{});
  const int B = cfg.batch_size, N = B * spec.seq_len;
  auto train = [&](ModelStep& s, AdamW& opt, int it) {
    s.zero_gradients();
    const auto in = tokens(N, spec.vocab, 60 + 2 * it), tg = tokens(N, spec.vocab, 61 + 2 * it);
    ForwardStats st;
    s.forward_backward(in.data(), tg.data(), B, 1.0f, &st);
    const double sq = s.gradient_sum_squares(nullptr);
    s.optimizer_update(opt, 1e-2, it, clip_scale(1.0, std::sqrt(sq)));
    return st.ce_sum;
  };
  for (int it = 1; it <= 2; ++it) EXPECT_EQ(train(step, opt_dev, it), train(ref, opt_ref, it));
  SelfCommunicator self;
  auto save = [&](const ParamStore& ps, AdamW& opt, const std::string& dir) {
    CheckpointWriter w(dir, 0, self, shard_role_single());
    TrainState st;
    st.step = 2;
    st.seed = cfg.seed;
    st.config_ini = config_to_ini(cfg);
    w.save(ps, opt, st);
    w.wait();
    return (fs::path(dir) / checkpoint_step_name(2)).string();
  };
  const size_t slices0 = be.snapshot_slices;
  step.state_to_host(&opt_dev);
  // Every arena came down in slices (several each: the twin's slices are small).
  EXPECT_GE(be.snapshot_slices - slices0, 4 * (host.params().total() * sizeof(float) / be.snapshot_slice));
  const std::string from_dev = save(host.params(), opt_dev, (root / "device").string());
  const std::string from_cpu = save(ref_model.params(), opt_ref, (root / "cpu").string());
  // Both read back into fresh models: the same bits.
  LocalExchange ex_a, ex_b;
  Model a(spec, 99, &ex_a), b(spec, 98, &ex_b);
  AdamW opt_a(a.params(), AdamWSpec{}), opt_b(b.params(), AdamWSpec{});
  checkpoint_load(from_dev, cfg, a.params(), opt_a, self);
  checkpoint_load(from_cpu, cfg, b.params(), opt_b, self);
  const size_t n = a.params().total();
  EXPECT_EQ(bit_differences(a.params().values().data(), b.params().values().data(), n), 0u);
  EXPECT_EQ(bit_differences(opt_a.m().data(), opt_b.m().data(), n), 0u);
  EXPECT_EQ(bit_differences(opt_a.v().data(), opt_b.v().data(), n), 0u);
  EXPECT_EQ(bit_differences(a.params().values().data(), ref_model.params().values().data(), n), 0u);
  EXPECT_GT(grad_sum_squares(opt_a.v().data(), n), 0.0);  // the moments were written, not zeros
  // Resumed crosswise — the device-like step from the CPU's checkpoint, the CPU step from the
  // device's — then two more steps each: bitwise alike.
  Step<DeviceLikeBackend> resumed_dev(b);
  CpuStep resumed_cpu(a);
  for (int it = 3; it <= 4; ++it) EXPECT_EQ(train(resumed_dev, opt_b, it), train(resumed_cpu, opt_a, it));
  resumed_dev.state_to_host(&opt_b);
  EXPECT_EQ(bit_differences(a.params().values().data(), b.params().values().data(), n), 0u);
  EXPECT_EQ(bit_differences(opt_a.m().data(), opt_b.m().data(), n), 0u);
  EXPECT_EQ(bit_differences(opt_a.v().data(), opt_b.v().data(), n), 0u);
  fs::remove_all(root);
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
