// Gradient synchronisation across ranks (UOE_MODEL.md §6): replicated tensors (embedding, norms,
// routers, output biases) are summed over the whole world; an expert slab over its replicas, the
// ranks of its data-parallel group. Each class of gradient is packed into one buffer in tensor
// order and reduced with one collective, so the order of every sum is fixed by the world size
// alone and runs are bitwise reproducible.
#pragma once
#include <vector>

#include "layers/params.hpp"
#include "parallel/comm.hpp"
#include "runtime/tensor.hpp"

namespace uoe {

class GradientSync {
 public:
  // world: every rank; dp_group: the replicas of this rank's experts; ep_group: the ranks that
  // together hold every expert once (for the gradient norm). Any may be of size 1.
  GradientSync(const ParamStore& params, Communicator& world, Communicator& ep_group, Communicator& dp_group);
  // Sums the gradients in place as described above.
  void all_reduce(ParamStore& params);
  // Σ g² over the GLOBAL model after all_reduce: replicated tensors once, every expert slab once
  // (summed over the ep group). The same value on every rank.
  double global_sum_squares(const ParamStore& params);
  double seconds() const { return seconds_; }  // wall time spent in the collectives so far

 private:
  Communicator& world_;
  Communicator& ep_;
  Communicator& dp_;
  std::vector<int> replicated_, sharded_;  // tensor indices of each class
  FloatBuffer pack_;
  double seconds_ = 0;
};

}  // namespace uoe
