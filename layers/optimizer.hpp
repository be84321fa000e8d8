// AdamW over the parameter arena, the warm-up + cosine learning-rate schedule, and global-norm
// gradient clipping (docs/model.md, Optimiser).
#pragma once
#include <cstdint>

#include "layers/params.hpp"
#include "runtime/kernels.hpp"  // AdamWScalars
#include "runtime/sum_squares.hpp"  // grad_sum_squares, for the optimizer's callers
#include "runtime/tensor.hpp"

namespace uoe {

struct AdamWSpec {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// The moments live in OptimizerMoments (runtime/param_store.hpp), the part checkpoints save.
class AdamW : public OptimizerMoments {
 public:
  AdamW(const ParamStore& params, const AdamWSpec& spec);
  // One update with learning rate lr; `step` counts from 1 (bias correction). grad_scale multiplies
  // every gradient first (clipping). Weight decay (decoupled) only where ParamInfo::decay.
  void update(ParamStore& params, double lr, int64_t step, float grad_scale);
  // What update runs, for a backend that keeps its own copies of the arenas (layers/step.hpp): the
  // step's scalars (runtime/kernels.hpp, adamw_update) and the weight-decay mask [total].
  AdamWScalars scalars(double lr, int64_t step, float grad_scale) const;
  const FloatBuffer& decay_mask() const { return decay_mask_; }

 private:
  AdamWSpec spec_;
  FloatBuffer decay_mask_;   // 1 where weight decay applies, else 0
};

// Learning rate at step s (1-based) of `steps`: linear from lr/warmup to lr over the first
// `warmup` steps, then cosine from lr down to min_lr, reached at the last step.
double lr_at_step(int64_t s, int64_t steps, int64_t warmup, double lr, double min_lr);

// Global-norm clipping: the factor every gradient is multiplied by, clip / grad_norm when the norm
// exceeds `clip`, else 1 (clip <= 0: off). A non-finite norm never reaches here (the step is skipped).
float clip_scale(double clip, double grad_norm);

}  // namespace uoe
