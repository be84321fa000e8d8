// The training driver behind uoe-train: data, model, optimizer, loop, evaluation, metrics.
#pragma once
#include "runtime/config.hpp"

namespace uoe {

// Runs a whole training job as configured; returns the process exit code. Throws uoe::Error on
// bad input discovered at run time (e.g. an unreadable data file).
int train_run(const Config& cfg);

}  // namespace uoe
