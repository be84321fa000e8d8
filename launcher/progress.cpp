#include "launcher/progress.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "runtime/bf16.hpp"
#include "runtime/log.hpp"

namespace uoe {

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

StepWindow::StepWindow(int blocks)
    : blocks(blocks), load_max(blocks, 0.0), entropy(blocks, 0.0), dropped(blocks, 0), assignments(blocks, 0) {}

void StepWindow::add(const StepFigures& fig, double seconds, double comm_s, double exposed_s, double comm_cpu_s,
                     double a2a_bytes, double a2a_payload_bytes, double a2a_link_bytes) {
  // The router's figures of a step whose figures the backend kept (StepFigures::figures_deferred)
  // arrive with the next log step, in step order, before its own.
  auto add_router = [this](const StepFigures& f) {
    for (int b = 0; b < blocks; ++b) load_max[b] = std::max(load_max[b], f.load_max_over_mean[b]);
    aux += f.aux;
    for (int b = 0; b < blocks; ++b) entropy[b] += f.router_entropy[b];
    if (ept.empty()) ept.assign(f.experts_per_token.size(), std::vector<double>(blocks, 0.0));
    for (size_t jj = 0; jj < ept.size(); ++jj)
      for (int b = 0; b < blocks; ++b) ept[jj][b] += f.experts_per_token[jj][b];
  };
  for (const StepFigures& f : fig.earlier) add_router(f);
  if (!fig.figures_deferred) add_router(fig);
  for (int b = 0; b < blocks; ++b) {
    dropped[b] += fig.dropped[b];
    assignments[b] += fig.assignments[b];
  }
  loss += fig.loss;
  time += seconds;
  flops += fig.flops;
  tokens += fig.tokens;
  comm += comm_s;
  exposed += exposed_s;
  comm_cpu += comm_cpu_s;
  bytes += a2a_bytes;
  payload_bytes += a2a_payload_bytes;
  link_bytes += a2a_link_bytes;
  ++steps;
}

void StepWindow::clear() {
  loss = aux = time = flops = comm = exposed = bytes = comm_cpu = payload_bytes = link_bytes = 0;
  tokens = 0;
  steps = 0;
  std::fill(entropy.begin(), entropy.end(), 0.0);
  ept.clear();
  std::fill(load_max.begin(), load_max.end(), 0.0);
  std::fill(dropped.begin(), dropped.end(), 0);
  std::fill(assignments.begin(), assignments.end(), 0);
}

void log_status_line(int step, int steps, double loss, double tokens_per_s, double eta_s) {
  log_status("step %6d/%d | loss %.4f | %8.0f tok/s | ETA %s", step, steps, loss, tokens_per_s,
             format_duration(eta_s).c_str());
}

void log_step_line(int step, int steps, double lr, const StepWindow& w, const WindowComm& comm, double tokens_per_s,
                   double share, double eta_s, bool on_gpu) {
  double worst_load = 0;
  int64_t drop_n = 0, assign_n = 0;
  for (int b = 0; b < w.blocks; ++b) {
    worst_load = std::max(worst_load, w.load_max[b]);
    drop_n += w.dropped[b];
    assign_n += w.assignments[b];
  }
  const double drop_pct = assign_n ? 100.0 * drop_n / assign_n : 0.0;
  // The FMA peak is the host CPU's: on the GPU path the model FLOP/s are shown as they are.
  char rate[40];
  if (on_gpu) std::snprintf(rate, sizeof rate, "%.2f model TFLOP/s", w.flops / w.time * 1e-12);
  else if (compute_precision() == Precision::bf16)  // the GEMMs on bf16 units or emulated: see the start-up line
    std::snprintf(rate, sizeof rate, "%4.1f%% of fp32 FMA peak", 100.0 * share);
  else std::snprintf(rate, sizeof rate, "%4.1f%% of FMA peak", 100.0 * share);
  log_info("step %6d/%d | loss %.4f | lr %.3e | %8.0f tok/s | %s | load max/mean %.2f | "
           "dropped %4.1f%% | comm %4.1f%% of step, %3.0f%% hidden | ETA %s",
           step, steps, w.loss / w.steps, lr, tokens_per_s, rate, worst_load, drop_pct,
           100.0 * comm.busy / w.time, comm.busy > 0 ? 100.0 * (1.0 - comm.exposed / comm.busy) : 0.0,
           format_duration(eta_s).c_str());
}

void log_skipped_step(int step, const StepFigures& fig, const std::string& where, int bad_steps, int max_bad_steps) {
  log_warn("step %d: non-finite loss (%g) or gradient norm (%g), first seen in %s; update skipped (%d of at most "
           "%d in a row)", step, fig.loss, fig.grad_norm, where.c_str(), bad_steps, max_bad_steps);
}

void log_eval_line(int step, const EvalResult& eval, double seconds, bool byte_level) {
  char bpb[48] = "";
  if (eval.bpb >= 0) std::snprintf(bpb, sizeof bpb, " | val_bpb %.4f", eval.bpb);
  if (byte_level)
    log_info("eval  step %6d | val_loss %.4f%s | %lld tokens in %.1fs", step, eval.loss, bpb,
             static_cast<long long>(eval.tokens), seconds);
  else
    log_info("eval  step %6d | val_loss %.4f | val_ppl %.2f%s | %lld tokens in %.1fs", step, eval.loss,
             std::exp(eval.loss), bpb, static_cast<long long>(eval.tokens), seconds);
}

void log_done(const Config& cfg, double run_seconds, double tokens_per_s, const EvalResult& last_eval) {
  log_info("done: %d steps in %s, %.0f tokens/s, final val_loss %.4f", cfg.steps,
           format_duration(run_seconds).c_str(), tokens_per_s, last_eval.loss);
  struct rusage usage {};
  if (getrusage(RUSAGE_SELF, &usage) == 0)  // ru_maxrss is in KiB on Linux
    log_info("peak memory (RSS) of rank 0: %.1f MiB", static_cast<double>(usage.ru_maxrss) / 1024.0);
  if (!cfg.metrics.empty()) log_info("metrics: %s", cfg.metrics.c_str());
}

}  // namespace uoe
