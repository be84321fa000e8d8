// Gradient synchronisation across ranks (docs/model.md, Expert parallelism): replicated tensors (embedding, norms,
// routers, output biases) are summed over the whole world; an expert slab over its replicas, the
// ranks of its data-parallel group. Tensors are grouped into buckets (one per block, in the order
// backward finishes them, so a bucket can be reduced while backward goes on: the scheduler); each
// bucket packs its replicated and its sharded gradients into one buffer each, reduced by one
// collective (with ep = 1 both go over the world, together; gradients that lie in one span of the
// arena are reduced in place, without packing). The buckets and their order depend only on the model, so every sum's order is fixed
// by the world size and runs are bitwise reproducible.
//
// The tensors arrive as named flat spans (GradTensor), which must stay valid while the
// GradientSync lives (the model's gradient arena is allocated once).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "parallel/communicator.hpp"
#include "parallel/grad_tensor.hpp"
#include "runtime/tensor.hpp"

namespace uoe {

// The fixed weight w(i) = ±1 of global element i of tensor `name` in the gradient checksum: a pure
// function of the tensor's global name and the element's global index, so the checksum does not
// depend on how the tensor is sharded, and pseudo-random, so an error pattern in the gradient
// (a slab zeroed, halved or swapped) cannot line up with it.
float grad_fingerprint_weight(uint64_t name_stream, int64_t global_index);

// Σ g² and Σ g[i]·w(global index of i) over this rank's part of tensor `t` (in double, in a
// fixed order). Summed over the ranks holding the parts, they are the whole tensor's.
void tensor_grad_fingerprint(const GradTensor& t, double* sum_squares, double* checksum);

// Where the gradients of a rebased GradientSync live when that is not host memory (a step backend's
// device arena, layers/step.hpp): how a bucket that is not one span of the arena is packed there
// for its one collective. `buffer(n)`: at least n floats of that memory (grow-only, the packing
// buffer); `copy`: n floats from one buffer of that memory to another, queued; `fence`: returns once
// every queued copy and whatever wrote the gradients is done (called before each collective, whose
// result is in place when it returns: the Communicator contract).
struct GradientMemory {
  std::function<float*(size_t n)> buffer;
  std::function<void(float* dst, const float* src, size_t n)> copy;
  std::function<void()> fence;
};

class GradientSync {
 public:
  // world: every rank; dp_group: the replicas of this rank's experts; ep_group: the ranks that
  // together hold every expert once (for the gradient norm). Any may be of size 1. `buckets` lists
  // indices into `tensors`; together they must name every tensor exactly once.
  GradientSync(std::vector<GradTensor> tensors, std::vector<std::vector<int>> buckets, Communicator& world,
               Communicator& ep_group, Communicator& dp_group);
  size_t buckets() const { return buckets_.size(); }
  // Sums bucket i's gradients in place (collective: every rank reduces the same buckets in order).
  void reduce_bucket(size_t i);
  // All buckets, in order.
  void all_reduce();
  // Σ g² over the GLOBAL model after the reduction: replicated tensors once, every expert slab once
  // (summed over the ep group). The same value on every rank.
  double global_sum_squares();
  // The same with each tensor's Σ g² formed by `sum_squares` (a device's, on a rebased copy).
  double global_sum_squares(const std::function<double(const float*, size_t)>& sum_squares);
  // Bucket i's tensors (indices, ascending) and each tensor's gradient span.
  const std::vector<int>& bucket_tensors(size_t i) const { return buckets_[i].all; }
  std::span<float> tensor_grad(int i) const { return tensors_[i].grad; }
  // The communicators it reduces over (what a rebased copy on other memory must replace).
  Communicator& world() const { return world_; }
  Communicator& ep_group() const { return ep_; }
  Communicator& dp_group() const { return dp_; }
  // One rank holds the whole model: nothing to reduce.
  bool single_rank() const { return world_.size() == 1; }
  // The per-tensor gradient fingerprint (see tensor_grad_fingerprint) of the GLOBAL model: an
  // expert-sharded tensor's is summed over the ep group, so every layout reports the same figures
  // for the same gradient. Returns 2 values per tensor, in index order: Σ g², Σ g·w. Collective
  // over the ep group (every rank calls it at the same steps); the same on every rank.
  std::vector<double> global_fingerprint();
  // The same tensors, buckets and communicators over another copy of the gradient arena: each
  // tensor at the same offset from `to` as from `from` (a step backend's own arena, layers/step.hpp).
  GradientSync rebased(const float* from, float* to) const;
  // The same over a copy in other memory (`memory`), the replicated tensors reduced over `world` and
  // the expert slabs over `dp_group` (null: this sync's own; a device's: communicators over that
  // memory, e.g. NCCL). The buckets, their order and each bucket's collectives are this sync's, so
  // the sums are formed in the same order; the ep group (Σ g²'s one double) stays this sync's.
  GradientSync rebased(const float* from, float* to, Communicator* world, Communicator* dp_group,
                       GradientMemory memory) const;

 private:
  // Σ over the buckets of tensor_sum(i) (each tensor's Σ g²), replicated then expert per bucket,
  // the expert part summed over the ep group.
  double add_sum_squares(const std::function<double(int)>& tensor_sum);
  struct Bucket {
    std::vector<int> replicated, sharded;
    std::vector<int> all;  // both, in index order (reduced together when ep = 1)
  };
  void reduce(const std::vector<int>& tensors, Communicator& comm);

  std::vector<GradTensor> tensors_;
  Communicator& world_;
  Communicator& ep_;
  Communicator& dp_;
  std::vector<Bucket> buckets_;
  FloatBuffer pack_;
  GradientMemory memory_;  // unset: host memory (pack_, memcpy)
};

}  // namespace uoe
