#include "layers/train_step.hpp"

#include <algorithm>
#include <cmath>
#include <memory>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/step_figures.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_sync.hpp"
#include "parallel/scheduler.hpp"
#include "runtime/data.hpp"
#include "runtime/watchdog.hpp"

namespace uoe {
namespace {

// Multiplies the gradients of `tensors` by s (fault injection only).
void scale_grads(ParamStore& params, const std::vector<int>& tensors, float s) {
  for (int i : tensors) {
    float* g = params.grad(i);
    for (size_t j = 0; j < params.info(i).size; ++j) g[j] *= s;
  }
}

}  // namespace

void sum_over_ranks(std::vector<double>& v, const StepRanks& ranks, const char* what) {
  if (!ranks.world || ranks.world_size == 1) return;
  WatchScope watch(what);
  ranks.world->all_reduce_sum(std::span<double>(v));
}

std::vector<std::vector<int>> model_gradient_buckets(const Model& model) {
  const int blocks = 2 * model.spec().layers;
  std::vector<std::vector<int>> buckets;
  for (int b = blocks - 1; b >= 0; --b) {
    const BlockParams& p = model.blocks()[b];
    std::vector<int> list;
    // An unrouted block (dense, moe) has no router and no SMHA b_in: index -1.
    for (int i : {p.norm_scale, p.norm_bias, p.router_w, p.router_b, p.w_in, p.w_out, p.b_out, p.b_in})
      if (i >= 0) list.push_back(i);
    buckets.push_back(std::move(list));
  }
  buckets.push_back({model.embed_index(), model.final_norm_scale_index(), model.final_norm_bias_index()});
  return buckets;
}

namespace {
// A micro-batch's share of StepFigures::routing_check: 26 bits of a hash of its data slot and its
// routing, so that the sum over every slot of a step (at most 2^26 slots) stays an exact integer in
// a double through the all-reduce.
uint64_t routing_check_term(uint64_t slot, uint64_t fingerprint) {
  uint64_t h = fingerprint ^ (slot * 0x9E3779B97F4A7C15ULL);
  h ^= h >> 31;
  h *= 0xBF58476D1CE4E5B9ULL;
  h ^= h >> 29;
  return h >> 38;
}
// fig's figures from the step's vector summed over the ranks (micro: the micro-batches of every rank).
void figures_from_sums(StepFigures& fig, const std::vector<double>& sums, const StepFigureLayout& lay,
                       const ModelSpec& spec, double micro) {
  const int blocks = lay.blocks, K = lay.K;
  const std::vector<int>& experts_of = lay.experts_of;
  const size_t at_hist = lay.at_hist;
  fig.loss = sums[0] / micro;
  fig.aux = sums[1] / micro;
  fig.flops = sums[2];
  fig.tokens = static_cast<int64_t>(sums[3]);
  fig.routing_check = sums[lay.at_routing];
  fig.dropped.resize(blocks);
  fig.assignments.resize(blocks);
  fig.load_max_over_mean.resize(blocks);
  fig.router_entropy.assign(blocks, 0.0);
  fig.experts_per_token.assign(K + 1, std::vector<double>(blocks, 0.0));
  size_t at = lay.at_load;
  for (int b = 0; b < blocks; ++b) {
    const double patches = sums[4 + 3 * blocks + b];
    if (spec.block_routed(b) && patches > 0) fig.router_entropy[b] = sums[4 + 2 * blocks + b] / patches;
    double tokens_b = 0;
    for (int j = 0; j <= K; ++j) tokens_b += sums[at_hist + static_cast<size_t>(b) * (K + 1) + j];
    for (int j = 0; j <= K && tokens_b > 0; ++j)
      fig.experts_per_token[j][b] = sums[at_hist + static_cast<size_t>(b) * (K + 1) + j] / tokens_b;
    fig.dropped[b] = static_cast<int64_t>(sums[4 + b]);
    fig.assignments[b] = static_cast<int64_t>(sums[4 + blocks + b]);
    const double mx = *std::max_element(sums.begin() + at, sums.begin() + at + experts_of[b]);
    const double mean = sums[4 + blocks + b] / experts_of[b];
    fig.load_max_over_mean[b] = mean > 0 ? mx / mean : 0.0;
    at += experts_of[b];
  }
}

// Reads the backend's first n figure slots in one copy and completes the n steps waiting in
// step.figures_pending (their host part, summed over the ranks in their step) with them: each
// slot summed over the ranks as its step's vector is (the same collective, so the same sums),
// added to its host part — each figure is one side's, the other side holds +0.0 there — and moved
// to step.figures_drained, in step order.
void figures_drain(ModelStep& step, const StepFigureLayout& lay, const StepRanks& ranks, int n) {
  const size_t size = lay.size();
  std::vector<double> slots(static_cast<size_t>(n) * size);
  step.figures_fetch(slots, n);
  for (int i = 0; i < n; ++i) {
    std::vector<double> part(slots.begin() + static_cast<ptrdiff_t>(i * size),
                             slots.begin() + static_cast<ptrdiff_t>((i + 1) * size));
    part[0] = 0;  // the loss: the host's, read and summed over the ranks in its step
    sum_over_ranks(part, ranks, "step figures: all-reduce");
    std::vector<double>& host = step.figures_pending[i];
    for (size_t j = 0; j < size; ++j) host[j] += part[j];
    step.figures_drained.push_back(std::move(host));
  }
  step.figures_pending.erase(step.figures_pending.begin(), step.figures_pending.begin() + n);
}

}  // namespace

StepFigures train_step(Model& model, AdamW& opt, const Config& cfg, const TokenStream& train_tokens,
                       int step, const StepRanks& ranks) {
  // Without a step of the caller's, a CPU step for this call (its buffers allocated each call).
  std::unique_ptr<CpuStep> own_step;
  ModelStep* step_runner = ranks.step;
  if (!step_runner) {
    own_step = std::make_unique<CpuStep>(model);
    step_runner = own_step.get();
  }
  const int T = cfg.seq_len, B = cfg.batch_size, M = cfg.micro_batches;
  const int blocks = 2 * model.spec().layers;
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(static_cast<size_t>(B) * T);
  // Global figures travel in one vector (layers/step_figures.hpp, StepFigureLayout).
  const ModelSpec& spec = model.spec();
  const StepFigureLayout lay(spec);
  const int K = lay.K;
  const std::vector<int>& experts_of = lay.experts_of;
  const size_t at_hist = lay.at_hist, at_load = lay.at_load, at_routing = lay.at_routing;
  std::vector<double> sums(lay.size(), 0.0);
  // A backend that keeps the loss and the routed blocks' figures where it computes them adds them
  // there, one slot per step until a log line reads them (figures_drain below; docs/gpu.md, Log figures).
  const int fig_slots = std::max(1, cfg.log_every);
  if (step_runner->figures_pending.size() >= static_cast<size_t>(fig_slots) ||
      (!step_runner->figures_pending.empty() && step_runner->figures_slots != fig_slots))
    figures_drain(*step_runner, lay, ranks, static_cast<int>(step_runner->figures_pending.size()));
  step_runner->figures_slots = fig_slots;
  const int fig_slot = static_cast<int>(step_runner->figures_pending.size());
  const bool deferred = step_runner->figures_begin(lay, fig_slot, fig_slots);
  // figures_end on every way out of the training pass (an exception included), so that a backend
  // never stays in the deferring state past this step.
  struct FiguresEnd {
    ModelStep* step;
    ~FiguresEnd() {
      if (step) step->figures_end();
    }
  } figures_end{step_runner};
  step_runner->zero_gradients();  // where the step keeps them (layers/step.hpp)
  ForwardStats st;
  const float loss_scale = 1.0f / static_cast<float>(M * ranks.world_size);
  // On the last micro-batch each block's gradient bucket is reduced as soon as backward finishes
  // it, behind the backward of the blocks below (on the communication thread when overlapping).
  auto reduce_when_done = [&](int block) {
    const size_t bucket = block < 0 ? static_cast<size_t>(blocks) : static_cast<size_t>(blocks - 1 - block);
    ranks.scheduler->submit([&ranks, &model, step_runner, bucket, block] {
      std::string where = "gradient all-reduce of ";
      if (block < 0) where += "embedding and final norm";
      else where += "block " + std::to_string(block);
      if (ranks.fault_grad_scale != 1.0f)
        scale_grads(model.params(), model_gradient_buckets(model)[bucket], ranks.fault_grad_scale);
      WatchScope watch(where);
      step_runner->reduce_gradients(*ranks.sync, static_cast<int>(bucket));
    });
  };
  const bool bucketed = ranks.sync && ranks.scheduler && ranks.world_size > 1;
  auto set_hook = [&](std::function<void(int)> hook) {
    step_runner->set_backward_hook(std::move(hook));
  };
  for (int m = 0; m < M; ++m) {
    const uint64_t slot = static_cast<uint64_t>(ranks.world_rank) * M + m;
    if (bucketed && m == M - 1) set_hook(reduce_when_done);
    // --data-offset: a continued run draws the windows its source would have drawn next.
    const uint64_t window_step = static_cast<uint64_t>(step) + static_cast<uint64_t>(cfg.data_offset);
    data_sample_batch(train_tokens, T, B, cfg.seed, window_step, slot, in.data(), tg.data());
    step_runner->forward_backward(in.data(), tg.data(), B, loss_scale, &st);
    if (cfg.metrics_grads)  // only those metrics lines carry it
      sums[at_routing] += static_cast<double>(routing_check_term(slot, step_runner->routing_fingerprint()));
    if (!deferred) {  // otherwise in the backend (and an unrouted block's below: the host's)
      sums[0] += st.ce_sum / static_cast<double>(st.tokens);
      sums[1] += st.aux_loss;
    }
    sums[2] += 3.0 * st.flops;
    sums[3] += static_cast<double>(st.tokens);
    size_t at = at_load;
    for (int b = 0; b < blocks; ++b) {
      const BlockStats& bs = st.blocks[b];
      sums[4 + b] += bs.dropped;
      sums[4 + blocks + b] += static_cast<double>(bs.patches) * bs.k;
      sums[4 + 3 * blocks + b] += bs.patches;
      if (!deferred || !spec.block_routed(b)) {
        sums[4 + 2 * blocks + b] += bs.entropy_sum;
        for (size_t j = 0; j < bs.experts_per_token.size() && j <= static_cast<size_t>(K); ++j)
          sums[at_hist + static_cast<size_t>(b) * (K + 1) + j] += static_cast<double>(bs.experts_per_token[j]);
        for (int e = 0; e < experts_of[b]; ++e) sums[at + e] += bs.chosen[e];
      }
      at += experts_of[b];
    }
  }
  set_hook(nullptr);
  figures_end.step = nullptr;
  step_runner->figures_end();
  // The loss every step (one double): the skip below and the window's mean loss need it.
  if (deferred) sums[0] = step_runner->figures_loss(fig_slot);
  double sq;
  StepFigures fig;
  ParamStore& ps = model.params();
  if (ranks.sync) {
    if (bucketed) {
      ranks.scheduler->wait_all();
    } else {
      if (ranks.fault_grad_scale != 1.0f)
        for (const std::vector<int>& b : model_gradient_buckets(model)) scale_grads(ps, b, ranks.fault_grad_scale);
      step_runner->reduce_gradients(*ranks.sync, -1);
    }
    if (ranks.fault_expert_scale != 1.0f)
      for (int i = 0; i < static_cast<int>(ps.count()); ++i)
        if (ps.info(i).expert_sharded) scale_grads(ps, {i}, ranks.fault_expert_scale);
    sq = step_runner->gradient_sum_squares(ranks.sync);
  } else {
    sq = step_runner->gradient_sum_squares(nullptr);
  }
  // The fingerprint of what the optimizer receives (before clipping, which scales every tensor by
  // one factor that grad_norm determines), on the steps that write a metrics line.
  if (cfg.metrics_grads && (step % cfg.log_every == 0 || step == cfg.steps)) {
    step_runner->state_to_host(nullptr);  // a backend with its own arenas: the gradients, for the log line
    if (ranks.sync) {
      fig.grad_fingerprint = ranks.sync->global_fingerprint();
    } else {
      std::vector<double>& f = fig.grad_fingerprint;
      f.resize(2 * ps.count());
      for (int i = 0; i < static_cast<int>(ps.count()); ++i)
        tensor_grad_fingerprint(grad_tensor(ps, i), &f[2 * i], &f[2 * i + 1]);
    }
  }
  if (ranks.inject_nan) sums[0] = std::numeric_limits<double>::quiet_NaN();
  sum_over_ranks(sums, ranks, "step figures: all-reduce");

  const double micro = static_cast<double>(M) * ranks.world_size;
  figures_from_sums(fig, sums, lay, spec, micro);
  fig.grad_norm = std::sqrt(sq);
  // Every rank sees the same global loss and norm, so every rank skips (or not) together.
  const bool skip = !std::isfinite(fig.loss) || !std::isfinite(fig.grad_norm);
  if (deferred && !skip) {
    // This step's figures wait in its slot; a step that writes a log line reads every waiting
    // slot in one copy and completes its own figures and the earlier steps' (fig.earlier).
    step_runner->figures_pending.push_back(sums);
    fig.figures_deferred = true;
    if (step % cfg.log_every == 0 || step == cfg.steps) {
      figures_drain(*step_runner, lay, ranks, static_cast<int>(step_runner->figures_pending.size()));
      std::vector<std::vector<double>>& done = step_runner->figures_drained;
      for (size_t i = 0; i + 1 < done.size(); ++i) {
        fig.earlier.emplace_back();
        figures_from_sums(fig.earlier.back(), done[i], lay, spec, micro);
      }
      const double loss = fig.loss;  // the one the step's skip decision read
      figures_from_sums(fig, done.back(), lay, spec, micro);
      fig.loss = loss;
      fig.figures_deferred = false;
      done.clear();
    }
  }
  if (skip) {
    fig.skipped = true;
    step_runner->state_to_host(nullptr);  // the gradients where the host can name the bad tensor
    // Name the first tensor backward reached with a non-finite gradient (buckets are in backward
    // order, last block first): that is where the fault entered, the rest inherited it.
    for (const std::vector<int>& bucket : model_gradient_buckets(model))
      for (int i : bucket) {
        const float* g = ps.grad(i);
        for (size_t j = 0; j < ps.info(i).size && fig.bad_tensor.empty(); ++j)
          if (!std::isfinite(g[j])) fig.bad_tensor = ps.info(i).name;
        if (!fig.bad_tensor.empty()) return fig;
      }
    return fig;
  }
  step_runner->optimizer_update(opt, lr_at_step(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr), step,
                                clip_scale(cfg.clip, fig.grad_norm));
  return fig;
}

}  // namespace uoe
