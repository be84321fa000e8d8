// The training driver behind uoe-train: data, model, optimizer, loop, evaluation, metrics.
#pragma once
#include <cstdint>
#include <vector>

#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "runtime/config.hpp"

namespace uoe {

// What one optimizer step did, on this rank.
struct StepFigures {
  double loss = 0;        // mean cross-entropy over the micro-batches (nats per token)
  double aux = 0;         // mean router losses (balance + z, summed over blocks)
  double flops = 0;       // training FLOPs executed (3 × forward)
  double grad_norm = 0;   // global gradient norm before clipping
  int64_t tokens = 0;
  std::vector<double> load_max_over_mean;  // [2L] worst expert load / mean load, over micro-batches
  std::vector<int64_t> dropped, assignments;  // [2L] capacity drops and (patch, choice) pairs
};

// One training step: M micro-batches of random windows (micro-batch m uses data slot
// slot_base + m), gradient accumulation, global-norm clipping, AdamW at the scheduled lr.
// Throws uoe::Error on a non-finite loss or gradient. Shared by uoe-train and the benchmarks.
StepFigures train_step(Model& model, AdamW& opt, const Config& cfg, const std::vector<int32_t>& train_tokens,
                       int step, uint64_t slot_base);

// Runs a whole training job as configured; returns the process exit code. Throws uoe::Error on
// bad input discovered at run time (e.g. an unreadable data file).
int train_run(const Config& cfg);

}  // namespace uoe
