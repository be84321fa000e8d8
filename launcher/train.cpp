#include "launcher/train.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "parallel/exchange.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/log.hpp"
#include "runtime/metrics.hpp"

namespace uoe {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string format_duration(double s) {
  char buf[32];
  const int t = static_cast<int>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  return buf;
}

struct EvalResult {
  double loss = 0;  // mean nats per token
  int64_t tokens = 0;
};

// Validation: consecutive windows of T with stride T (the targets tile the split), dropless, in
// batches of up to B windows; eval_batches = 0 evaluates the whole split.
EvalResult evaluate(Model& model, const Dataset& data, const Config& cfg) {
  const int T = cfg.seq_len, B = cfg.batch_size;
  int64_t windows = data_val_window_count(data.val.size(), T);
  if (cfg.eval_batches > 0) windows = std::min<int64_t>(windows, static_cast<int64_t>(cfg.eval_batches) * B);
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(static_cast<size_t>(B) * T);
  double ce = 0;
  int64_t tokens = 0;
  ForwardStats st;
  for (int64_t w = 0; w < windows; w += B) {
    const int n = static_cast<int>(std::min<int64_t>(B, windows - w));
    data_val_windows(data.val, T, w, n, in.data(), tg.data());
    model.forward_eval(in.data(), tg.data(), n, &st);
    ce += st.ce_sum;
    tokens += st.tokens;
  }
  return {tokens ? ce / static_cast<double>(tokens) : 0.0, tokens};
}

}  // namespace

StepFigures train_step(Model& model, AdamW& opt, const Config& cfg, const std::vector<int32_t>& train_tokens,
                       int step, uint64_t slot_base) {
  const int T = cfg.seq_len, B = cfg.batch_size, M = cfg.micro_batches;
  const int blocks = 2 * model.spec().layers;
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(static_cast<size_t>(B) * T);
  StepFigures fig;
  fig.load_max_over_mean.assign(blocks, 0.0);
  fig.dropped.assign(blocks, 0);
  fig.assignments.assign(blocks, 0);
  model.params().zero_grads();
  ForwardStats st;
  for (int m = 0; m < M; ++m) {
    data_sample_batch(train_tokens, T, B, cfg.seed, static_cast<uint64_t>(step), slot_base + m, in.data(), tg.data());
    model.forward_backward(in.data(), tg.data(), B, 1.0f / static_cast<float>(M), &st);
    fig.loss += st.ce_sum / static_cast<double>(st.tokens) / M;
    fig.aux += st.aux_loss / M;
    fig.flops += 3.0 * st.flops;
    fig.tokens += st.tokens;
    for (int b = 0; b < blocks; ++b) {
      const BlockStats& bs = st.blocks[b];
      const int mx = *std::max_element(bs.chosen.begin(), bs.chosen.end());
      const double mean = static_cast<double>(bs.patches) * bs.k / static_cast<double>(bs.chosen.size());
      fig.load_max_over_mean[b] = std::max(fig.load_max_over_mean[b], mx / mean);
      fig.dropped[b] += bs.dropped;
      fig.assignments[b] += static_cast<int64_t>(bs.patches) * bs.k;
    }
  }
  fig.grad_norm = std::sqrt(grad_sum_squares(model.params().grads().data(), model.params().total()));
  if (!std::isfinite(fig.loss) || !std::isfinite(fig.grad_norm))
    fail("non-finite loss or gradient at step ", step, " (loss ", fig.loss, ", gradient norm ", fig.grad_norm, ")");
  const float clip_scale =
      (cfg.clip > 0 && fig.grad_norm > cfg.clip) ? static_cast<float>(cfg.clip / fig.grad_norm) : 1.0f;
  opt.update(model.params(), lr_at_step(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr), step, clip_scale);
  return fig;
}

int train_run(const Config& cfg) {
  const auto t_start = Clock::now();
  const int threads = cfg.threads > 0 ? cfg.threads : std::max(1u, std::thread::hardware_concurrency());
  gemm_set_threads(threads);

  Dataset data = data_load(cfg);
  const int V = data.vocab.size();
  const ModelSpec spec = model_spec_from_config(cfg, V);
  LocalExchange exchange;
  Model model(spec, cfg.seed, &exchange);
  AdamWSpec aspec;
  aspec.weight_decay = cfg.weight_decay;
  AdamW opt(model.params(), aspec);
  const bool byte_level = data.vocab.kind == TokenizerKind::byte;

  const double peak = gemm_measure_gflops(512, 5);
  log_info("uoe-train: data %s (%s, V=%d, %zu train / %zu val tokens)", data.source.c_str(),
           byte_level ? "byte" : "word", V, data.train.size(), data.val.size());
  log_info("model: %d layers, d %d, %d heads in %d attention experts (top-%d), %d MLP experts of %d (top-%d), "
           "capacity %g, patch %d, gate %s; %zu parameters",
           spec.layers, spec.d, spec.heads, spec.attn_experts, spec.attn_topk, spec.experts, spec.expert_ff(),
           spec.topk, spec.capacity_factor, spec.patch_size, cfg.gate.c_str(), model.params().total());
  log_info("run: %d steps of %d × %d tokens × %d micro-batches, lr %g → %g, warmup %d, seed %llu; "
           "%d BLAS threads, sgemm peak %.1f GFLOP/s",
           cfg.steps, cfg.batch_size, cfg.seq_len, cfg.micro_batches, cfg.lr, cfg.min_lr, cfg.warmup,
           static_cast<unsigned long long>(cfg.seed), threads, peak);

  MetricsWriter metrics(cfg.metrics);
  const int blocks = 2 * spec.layers;

  // Figures accumulated between log lines.
  double win_loss = 0, win_aux = 0, win_time = 0, win_flops = 0;
  int64_t win_tokens = 0;
  int win_steps = 0;
  double total_train_time = 0;
  int64_t total_tokens = 0;
  std::vector<double> load_max(blocks, 0.0);   // max over the window of (max/mean load) per block
  std::vector<int64_t> dropped(blocks, 0), assignments(blocks, 0);
  EvalResult last_eval;

  auto run_eval = [&](int step) {
    const auto t0 = Clock::now();
    last_eval = evaluate(model, data, cfg);
    const double secs = seconds_since(t0);
    if (byte_level)
      log_info("eval  step %6d | val_loss %.4f | val_bpb %.4f | %lld tokens in %.1fs", step, last_eval.loss,
               last_eval.loss / std::log(2.0), static_cast<long long>(last_eval.tokens), secs);
    else
      log_info("eval  step %6d | val_loss %.4f | val_ppl %.2f | %lld tokens in %.1fs", step, last_eval.loss,
               std::exp(last_eval.loss), static_cast<long long>(last_eval.tokens), secs);
    JsonLine j;
    j.add("step", step).add("val_loss", last_eval.loss);
    if (byte_level) j.add("val_bpb", last_eval.loss / std::log(2.0));
    else j.add("val_ppl", std::exp(last_eval.loss));
    metrics.write(j);
  };

  for (int step = 1; step <= cfg.steps; ++step) {
    const auto t0 = Clock::now();
    const StepFigures fig = train_step(model, opt, cfg, data.train, step, 0);
    const double dt = seconds_since(t0);
    const double loss = fig.loss, norm = fig.grad_norm, flops = fig.flops, aux = fig.aux;
    const int64_t tokens = fig.tokens;
    const double lr = lr_at_step(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr);
    for (int b = 0; b < blocks; ++b) {
      load_max[b] = std::max(load_max[b], fig.load_max_over_mean[b]);
      dropped[b] += fig.dropped[b];
      assignments[b] += fig.assignments[b];
    }

    win_loss += loss;
    win_time += dt;
    win_flops += flops;
    win_tokens += tokens;
    ++win_steps;
    total_train_time += dt;
    total_tokens += tokens;
    win_aux += aux;

    if (step % cfg.log_every == 0 || step == cfg.steps) {
      const double tps = win_tokens / win_time;
      const double mfu = win_flops / win_time * 1e-9 / peak;
      const double eta = (cfg.steps - step) * (total_train_time / step);
      double worst_load = 0, drop_pct = 0;
      int64_t drop_n = 0, assign_n = 0;
      for (int b = 0; b < blocks; ++b) {
        worst_load = std::max(worst_load, load_max[b]);
        drop_n += dropped[b];
        assign_n += assignments[b];
      }
      drop_pct = assign_n ? 100.0 * drop_n / assign_n : 0.0;
      log_info("step %6d/%d | loss %.4f | lr %.3e | %8.0f tok/s | %4.1f%% of sgemm peak | load max/mean %.2f | "
               "dropped %4.1f%% | ETA %s",
               step, cfg.steps, win_loss / win_steps, lr, tps, 100.0 * mfu, worst_load, drop_pct,
               format_duration(eta).c_str());
      JsonLine j;
      j.add("step", step).add("train_loss", win_loss / win_steps).add("lr", lr).add("tokens_per_s", tps);
      j.add("aux_loss", win_aux / win_steps).add("flops_share_of_peak", mfu).add("grad_norm", norm);
      std::vector<double> loads(load_max.begin(), load_max.end()), drops(blocks);
      for (int b = 0; b < blocks; ++b) drops[b] = assignments[b] ? static_cast<double>(dropped[b]) / assignments[b] : 0;
      j.add("load_max_over_mean", loads).add("dropped_share", drops);
      metrics.write(j);
      win_loss = win_aux = win_time = win_flops = 0;
      win_tokens = 0;
      win_steps = 0;
      std::fill(load_max.begin(), load_max.end(), 0.0);
      std::fill(dropped.begin(), dropped.end(), 0);
      std::fill(assignments.begin(), assignments.end(), 0);
    }
    if (cfg.eval_every > 0 && (step % cfg.eval_every == 0) && step != cfg.steps) run_eval(step);
  }
  run_eval(cfg.steps);  // always evaluate at the end (the loop skips the last step)

  const double tps = total_tokens / total_train_time;
  JsonLine j;
  j.add("final", true).add("step", cfg.steps).add("val_loss", last_eval.loss);
  if (byte_level) j.add("val_bpb", last_eval.loss / std::log(2.0));
  else j.add("val_ppl", std::exp(last_eval.loss));
  j.add("tokens_per_s", tps);
  metrics.write(j);
  log_info("done: %d steps in %s, %.0f tokens/s, final val_loss %.4f", cfg.steps,
           format_duration(seconds_since(t_start)).c_str(), tps, last_eval.loss);
  if (!cfg.metrics.empty()) log_info("metrics: %s", cfg.metrics.c_str());
  return 0;
}

}  // namespace uoe
