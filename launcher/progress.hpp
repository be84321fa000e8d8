// The trainer's progress on the log (launcher/trainer.hpp): the step line every --log-every steps,
// the live status line between them on a terminal, the evaluation line, a skipped step's warning
// and the closing lines; and the window of step figures the step line (and the metrics line,
// launcher/metrics.hpp) averages.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "layers/train_step.hpp"
#include "runtime/config.hpp"

namespace uoe {


using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0);
// "12m05s", or "1h02m" from an hour on.
std::string format_duration(double s);

// One validation pass over the world: mean nats per token and the tokens it covered.
struct EvalResult {
  double loss = 0;  // mean nats per token
  int64_t tokens = 0;
  // Bits per byte of the original text: loss · (split tokens / split bytes) / ln 2, the split's
  // ratio (Dataset::val_bytes); < 0 when the bytes are unknown (word-level .tok without an index).
  double bpb = -1;
};

// Figures accumulated between log lines: sums over the window's (not skipped) steps.
struct StepWindow {
  explicit StepWindow(int blocks);
  // Adds a step of `seconds`, with this rank's exchange time (comm_s), the training thread's wait
  // for it (exposed_s), the exchanges' processor time (comm_cpu_s), the bytes sent (a2a_bytes: rows,
  // counts and metadata) and of them the rows' (a2a_payload_bytes).
  void add(const StepFigures& fig, double seconds, double comm_s, double exposed_s, double comm_cpu_s,
           double a2a_bytes, double a2a_payload_bytes, double link_bytes);
  void clear();  // after a log line

  int blocks;
  double loss = 0, aux = 0, time = 0, flops = 0, comm = 0, exposed = 0, bytes = 0, comm_cpu = 0, payload_bytes = 0;
  double link_bytes = 0;
  int64_t tokens = 0;
  int steps = 0;
  std::vector<double> load_max;             // max over the window of (max/mean load) per block
  std::vector<double> entropy;              // Σ over the window of mean router entropy per block
  std::vector<std::vector<double>> ept;     // Σ over the window of experts_per_token [K+1][2L]
  std::vector<int64_t> dropped, assignments;
};

// The window's exchange figures, each the mean over the ranks (they differ: a lighter rank also
// waits out the routing imbalance).
struct WindowComm {
  double busy = 0, exposed = 0, cpu = 0;
  double link_bytes = 0;  // the busiest rank's link_bytes (Exchange::link_bytes), not a mean
};

// The live line on a terminal between the logged ones.
void log_status_line(int step, int steps, double loss, double tokens_per_s, double eta_s);
// The step line: the window's mean loss, throughput, utilisation (share of the FMA peak; on the
// GPU path the model FLOP/s as they are), loads, drops, exchange share and the ETA.
void log_step_line(int step, int steps, double lr, const StepWindow& w, const WindowComm& comm, double tokens_per_s,
                   double share, double eta_s, bool on_gpu);
// A step whose loss or gradient was not finite (`where`: the loss, or the first bad tensor).
void log_skipped_step(int step, const StepFigures& fig, const std::string& where, int bad_steps, int max_bad_steps);
void log_eval_line(int step, const EvalResult& eval, double seconds, bool byte_level);
// The closing lines: totals, rank 0's peak RSS, where the metrics went.
void log_done(const Config& cfg, double run_seconds, double tokens_per_s, const EvalResult& last_eval);

}  // namespace uoe
