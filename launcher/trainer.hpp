// The training driver behind uoe-train: data, model, optimizer, loop, evaluation, metrics, over
// one process or many MPI ranks (expert parallel × data parallel). One step is layers/train_step.hpp;
// the log lines are launcher/progress.hpp, the metrics lines launcher/metrics.hpp.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "launcher/metrics.hpp"
#include "launcher/progress.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/train_step.hpp"
#include "parallel/comm.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/fma_peak.hpp"

namespace uoe {

class CheckpointWriter;
class CommScheduler;
class ModelStep;
class ExpertExchange;
class GradientSync;
class SimulatedLinkCommunicator;
class Watchdog;

class Trainer {
 public:
  // Sets the run up as configured: ranks, threads, data, model, optimizer, peaks, checkpoints
  // (resuming from one if asked), logging what it built. Expects MPI to be initialised (uoe-train's
  // main does it; a process started without mpirun is a world of one). Throws uoe::Error on bad
  // input discovered at run time (e.g. an unreadable data file).
  explicit Trainer(const Config& cfg);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains from the start (or resumed) step to --steps, evaluating and checkpointing on the way;
  // returns the process exit code. Call once.
  int run();

 private:
  // Fault injection for the tests (UOE_FAULT, see launcher/trainer.cpp): none unless set.
  struct Fault {
    std::string kind;
    int rank = -2, step = -1;
    bool on(int world_rank) const { return rank == -1 || rank == world_rank; }
  };
  static Fault fault_from_env();

  // Set-up, in this order.
  void start_ranks();      // process groups, build line, faults, device check, watchdog, compute threads
  void build_model();      // data, links, exchange, model, scheduler, the step, optimizer, sync
  void measure_peaks();    // the FMA and sgemm peaks utilisation is quoted against
  void describe() const;   // the set-up's log lines and the memory estimate
  void open_checkpoints(); // the checkpoint directory and resume

  // The loop.
  void inject_faults(int step);
  StepFigures timed_step(int step, double* seconds);
  void skip_step(int step, const StepFigures& fig);  // counts a skipped step; fails after too many
  void account_step(int step, const StepFigures& fig, double seconds);
  void report_window(int step, const StepFigures& fig, double lr);
  bool step_boundary(int step);  // evaluation, checkpoints, stop signals; true: stop now (preempted)
  EvalResult evaluate();
  void run_eval(int step);
  void save_checkpoint(int step);
  int finish_preempted(int last_step);
  int finish();

  double eta_seconds(int step) const;

  // Members in construction order (destroyed in reverse: the checkpoint writer and the model
  // before the communicators they use).
  const Config cfg_;
  const Clock::time_point t_start_;
  ProcessGroups groups_;
  int world_rank_ = 0, world_size_ = 1;
  Fault fault_;
  bool on_gpu_ = false;  // --device cuda
  std::unique_ptr<Watchdog> watchdog_;
  int threads_ = 1;
  Dataset data_;
  ModelSpec spec_;
  std::unique_ptr<SimulatedLinkCommunicator> sim_world_, sim_ep_, sim_dp_;
  std::unique_ptr<ExpertExchange> exchange_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<CommScheduler> scheduler_;
  std::unique_ptr<ModelStep> step_;  // forward/backward on the backend --device names (make_step)
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<GradientSync> sync_;
  StepRanks ranks_;
  bool byte_level_ = false;
  double data_load_seconds_ = 0;
  FmaPeak fma_;       // the probe's rate (peaks_.fma is this rank's share of it)
  PeakRates peaks_;
  int node_threads_ = 1, cores_ = 1;
  std::unique_ptr<CheckpointWriter> writer_;
  int start_step_ = 1;
  std::unique_ptr<MetricsWriter> metrics_;

  // Loop state.
  double tokens_per_step_ = 0;  // tokens one step trains on, all ranks together (fig.tokens)
  StepWindow window_{0};
  double total_train_time_ = 0, total_flops_ = 0;
  int64_t total_tokens_ = 0;
  EvalResult last_eval_;
  int bad_steps_ = 0;  // consecutive skipped steps
  Clock::time_point last_status_;
};

// Trainer(cfg).run(): the whole training job as configured; returns the process exit code.
int train_run(const Config& cfg);

}  // namespace uoe
