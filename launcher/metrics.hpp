// The trainer's metrics (--metrics FILE, JSON lines; runtime/metrics.hpp writes them): one line per
// log line with the window's means, one per evaluation and a final one. Their keys are the schema
// tests/cli/metrics_schema.py checks against README.md's example lines (Training).
#pragma once
#include "launcher/progress.hpp"
#include "layers/train_step.hpp"
#include "runtime/metrics.hpp"
#include "runtime/param_store.hpp"

namespace uoe {


// The peaks utilisation is quoted against, per rank (GFLOP/s).
struct PeakRates {
  double fma = 0;    // the hardware's FMA rate (runtime/fma_peak.hpp), the rank's share of the node
  double sgemm = 0;  // the BLAS's sgemm rate
};

// The line of a logged step: per-step figures are means over the window's steps; "tokens" counts
// every token trained on by all ranks since step 1 (the same on a resumed run). `fig` is the
// logged step's own (its gradient norm, and its gradient fingerprint with --metrics-grads).
JsonLine metrics_step_line(int step, double tokens_per_step, double lr, const StepWindow& w, const WindowComm& comm,
                           double tokens_per_s, double share, const PeakRates& peaks, const StepFigures& fig,
                           const ParamStore& params, bool on_gpu);
JsonLine metrics_eval_line(int step, double tokens_per_step, const EvalResult& eval, bool byte_level);
// The run's last line: final validation, throughput and executed FLOPs per token.
JsonLine metrics_final_line(int steps, const EvalResult& last_eval, bool byte_level, double tokens_per_s,
                            double total_flops, int64_t total_tokens);

}  // namespace uoe
