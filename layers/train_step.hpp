// One optimizer step of the training loop, as the trainer (launcher/trainer.hpp) and the benches
// (bench/step.cpp, bench/checkpoint.cpp) run it: micro-batches through the model (or the device
// model), the gradient all-reduce in buckets, the global norm, clipping and AdamW, and the step's
// figures summed over the ranks. The collectives go through parallel/'s interfaces (GradientSync,
// Communicator, CommScheduler); the launcher builds them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "runtime/config.hpp"
#include "runtime/token_stream.hpp"

namespace uoe {

class Communicator;
class CommScheduler;
class GradientSync;
class ModelStep;

// The ranks a step runs over. The default is one process without MPI.
struct StepRanks {
  Communicator* world = nullptr;       // null: single process
  GradientSync* sync = nullptr;        // null: single process; buckets as model_gradient_buckets
  CommScheduler* scheduler = nullptr;  // runs the gradient all-reduce buckets (with the model's exchanges)
  ModelStep* step = nullptr;           // runs forward/backward (layers/step.hpp); null: a CPU step per call
  int world_rank = 0, world_size = 1;
  bool inject_nan = false;  // fault injection (tests): this rank's loss becomes non-finite
  // Fault injection (tests; 1 = off, costing one comparison): this rank's gradient is multiplied
  // by fault_grad_scale before the all-reduce, its expert-sharded gradients by fault_expert_scale
  // after it. See UOE_FAULT in launcher/trainer.cpp.
  float fault_grad_scale = 1.0f, fault_expert_scale = 1.0f;
};

// Gradient buckets in the order backward finishes them: block 2L−1, …, block 0, then the
// embedding and final norm (see GradientSync). Block b's bucket is 2L−1−b; the last is 2L.
std::vector<std::vector<int>> model_gradient_buckets(const Model& model);

// What one optimizer step did, summed or averaged over every rank (the same on each).
struct StepFigures {
  double loss = 0;        // mean cross-entropy over all micro-batches of all ranks (nats per token)
  double aux = 0;         // mean router losses (balance + z, summed over blocks)
  double flops = 0;       // training FLOPs executed by all ranks (3 × forward)
  double grad_norm = 0;   // global gradient norm before clipping
  int64_t tokens = 0;     // tokens trained on by all ranks
  std::vector<double> load_max_over_mean;     // [2L] busiest expert's patches / mean, all ranks' patches
  std::vector<int64_t> dropped, assignments;  // [2L] capacity drops and (patch, choice) pairs
  std::vector<double> router_entropy;         // [2L] mean router entropy per patch (nats; 0 unrouted)
  std::vector<std::vector<double>> experts_per_token;  // [K+1][2L] share of tokens processed by j experts
  // A non-finite loss or gradient: the update was skipped (on every rank: the figures are global).
  bool skipped = false;
  std::string bad_tensor;   // first tensor on this rank with a non-finite gradient ("" if only the loss)
  // With --metrics-grads, on steps that write a metrics line: per tensor (index order) Σ g² and the
  // checksum Σ g·w of the global gradient the optimizer receives (synchronised, before clipping);
  // see GradientSync::global_fingerprint. Empty otherwise.
  std::vector<double> grad_fingerprint;
  // Σ over the step's micro-batch slots (every rank's) of a 26-bit hash of the slot and the routing
  // of its micro-batch (ModelStep::routing_fingerprint): two layouts that routed every micro-batch
  // alike report the same value. Written with --metrics-grads, so that a comparison of two layouts
  // (tests/cli/compare_runs.py) can tell a routing decision that rounding flipped from a bug.
  double routing_check = 0;
  // A backend that keeps the figures where it computes them (ModelStep::figures_begin) reports them
  // on the steps that write a log line: on the others figures_deferred is set and only the loss,
  // flops, tokens, drops, assignments and grad_norm are this step's (aux, loads, entropies and
  // experts per token are zero); a log step's figures are its own and `earlier` holds those of the
  // steps since the last log line, in step order (the window's means: launcher/progress.hpp).
  bool figures_deferred = false;
  std::vector<StepFigures> earlier;
};

// One training step: each rank runs M micro-batches of random windows (micro-batch m of world
// rank r uses data slot r·M + m, so one rank with M = P micro-batches sees what P ranks see),
// gradients are summed over the ranks that share them, clipped by global norm, and AdamW applies
// the scheduled learning rate. A non-finite loss or gradient skips the update (fig.skipped).
StepFigures train_step(Model& model, AdamW& opt, const Config& cfg, const TokenStream& train_tokens,
                       int step, const StepRanks& ranks = {});

// Sums v over the world in place (identity on one process), under the collective watchdog as `what`.
void sum_over_ranks(std::vector<double>& v, const StepRanks& ranks, const char* what);

}  // namespace uoe
