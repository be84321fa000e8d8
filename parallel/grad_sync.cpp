#include "parallel/grad_sync.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

#include "runtime/error.hpp"
#include "runtime/profile.hpp"
#include "runtime/rng.hpp"
#include "runtime/sum_squares.hpp"
#include "runtime/threads.hpp"

namespace uoe {

GradientSync::GradientSync(std::vector<GradTensor> tensors, std::vector<std::vector<int>> buckets, Communicator& world,
                           Communicator& ep_group, Communicator& dp_group)
    : tensors_(std::move(tensors)), world_(world), ep_(ep_group), dp_(dp_group) {
  std::vector<int> seen(tensors_.size(), 0);
  for (const auto& list : buckets) {
    Bucket b;
    for (int i : list) {
      UOE_ASSERT(i >= 0 && i < static_cast<int>(tensors_.size()), "bucket names tensor ", i);
      ++seen[i];
      (tensors_[i].expert_sharded ? b.sharded : b.replicated).push_back(i);
      b.all.push_back(i);
    }
    std::sort(b.all.begin(), b.all.end());
    buckets_.push_back(std::move(b));
  }
  for (size_t i = 0; i < seen.size(); ++i)
    UOE_ASSERT(seen[i] == 1, "tensor ", tensors_[i].name, " is in ", seen[i], " gradient buckets");
}

void GradientSync::reduce(const std::vector<int>& tensors, Communicator& comm) {
  if (comm.size() == 1 || tensors.empty()) return;
  size_t n = 0;
  bool adjacent = true;  // each tensor's gradient starts where the previous one's ends
  for (size_t q = 0; q < tensors.size(); ++q) {
    const std::span<float> g = tensors_[tensors[q]].grad;
    if (q > 0) {
      const std::span<float> prev = tensors_[tensors[q - 1]].grad;
      if (g.data() != prev.data() + prev.size()) adjacent = false;
    }
    n += g.size();
  }
  if (memory_.copy) {  // another memory's arena: its buffer, its copies, fenced before the collective
    if (adjacent) {
      memory_.fence();
      comm.all_reduce_sum(std::span<float>(tensors_[tensors[0]].grad.data(), n));
      return;
    }
    float* pack = memory_.buffer(n);
    size_t at = 0;
    for (int i : tensors) {
      const std::span<float> g = tensors_[i].grad;
      memory_.copy(pack + at, g.data(), g.size());
      at += g.size();
    }
    memory_.fence();
    comm.all_reduce_sum(std::span<float>(pack, n));
    at = 0;
    for (int i : tensors) {
      const std::span<float> g = tensors_[i].grad;
      memory_.copy(g.data(), pack + at, g.size());
      at += g.size();
    }
    return;
  }
  if (adjacent) {  // one span of the gradient arena: reduced in place, nothing packed
    comm.all_reduce_sum(std::span<float>(tensors_[tensors[0]].grad.data(), n));
    return;
  }
  pack_.resize_uninit(n);
  size_t at = 0;
  for (int i : tensors) {
    const std::span<float> g = tensors_[i].grad;
    std::memcpy(pack_.data() + at, g.data(), sizeof(float) * g.size());
    at += g.size();
  }
  comm.all_reduce_sum(std::span<float>(pack_.data(), n));
  at = 0;
  for (int i : tensors) {
    const std::span<float> g = tensors_[i].grad;
    std::memcpy(g.data(), pack_.data() + at, sizeof(float) * g.size());
    at += g.size();
  }
}

void GradientSync::reduce_bucket(size_t i) {
  const ProfileScope profile(Phase::exchange);
  if (ep_.size() == 1) {  // dp = world: one reduction over the bucket (in place when it is one span)
    reduce(buckets_[i].all, world_);
    return;
  }
  reduce(buckets_[i].replicated, world_);
  reduce(buckets_[i].sharded, dp_);
}

void GradientSync::all_reduce() {
  const ProfileScope profile(Phase::exchange);
  for (size_t i = 0; i < buckets_.size(); ++i) reduce_bucket(i);
}

// Host memory: each tensor's Σ g² (grad_sum_squares, one pass in its own order) on the compute
// threads — contiguous runs of tensors of about equal size, one per thread — then added in the
// buckets' order as below: the same bits on any thread count.
double GradientSync::global_sum_squares() {
  std::vector<double> sums(tensors_.size(), 0.0);
  size_t total = 0;
  for (const GradTensor& t : tensors_) total += t.grad.size();
  const int64_t parts = threads_inside() ? 1 : threads_count();
  parallel_ranges(parts, 1, [&](int64_t p0, int64_t p1) {
    size_t at = 0;  // where tensor i starts, in elements
    for (size_t i = 0; i < tensors_.size(); at += tensors_[i].grad.size(), ++i) {
      const int64_t owner = std::min<int64_t>(parts - 1, static_cast<int64_t>(static_cast<double>(at) * parts / std::max<size_t>(total, 1)));
      if (owner >= p0 && owner < p1) sums[i] = grad_sum_squares(tensors_[i].grad.data(), tensors_[i].grad.size());
    }
  });
  return add_sum_squares([&](int i) { return sums[i]; });
}

double GradientSync::global_sum_squares(const std::function<double(const float*, size_t)>& sum_squares) {
  return add_sum_squares([&](int i) { return sum_squares(tensors_[i].grad.data(), tensors_[i].grad.size()); });
}

double GradientSync::add_sum_squares(const std::function<double(int)>& tensor_sum) {
  const ProfileScope profile(Phase::exchange);
  double replicated = 0, expert = 0;
  for (const Bucket& b : buckets_) {
    for (int i : b.replicated) replicated += tensor_sum(i);
    for (int i : b.sharded) expert += tensor_sum(i);
  }
  if (ep_.size() > 1) ep_.all_reduce_sum(std::span<double>(&expert, 1));
  return replicated + expert;
}

GradientSync GradientSync::rebased(const float* from, float* to) const {
  return rebased(from, to, nullptr, nullptr, GradientMemory{});
}

GradientSync GradientSync::rebased(const float* from, float* to, Communicator* world, Communicator* dp_group,
                                   GradientMemory memory) const {
  UOE_ASSERT(!memory.copy || (memory.buffer && memory.fence), "a gradient memory needs its buffer and fence");
  std::vector<GradTensor> tensors = tensors_;
  for (GradTensor& t : tensors) t.grad = std::span<float>(to + (t.grad.data() - from), t.grad.size());
  std::vector<std::vector<int>> buckets;  // each bucket's replicated then sharded tensors: their order kept
  for (const Bucket& b : buckets_) {
    buckets.push_back(b.replicated);
    buckets.back().insert(buckets.back().end(), b.sharded.begin(), b.sharded.end());
  }
  GradientSync s(std::move(tensors), std::move(buckets), world ? *world : world_, ep_, dp_group ? *dp_group : dp_);
  s.memory_ = std::move(memory);
  return s;
}

float grad_fingerprint_weight(uint64_t name_stream, int64_t global_index) {
  return (rng_bits(0x67726164u /* "grad" */, name_stream, static_cast<uint64_t>(global_index)) >> 63) ? 1.0f : -1.0f;
}

void tensor_grad_fingerprint(const GradTensor& t, double* sum_squares, double* checksum) {
  const uint64_t stream = rng_stream(t.name);
  const int64_t g0 = t.global_offset;
  double sq = 0, dot = 0;
  for (size_t j = 0; j < t.grad.size(); ++j) {
    const double g = t.grad[j];
    sq += g * g;
    dot += g * grad_fingerprint_weight(stream, g0 + static_cast<int64_t>(j));
  }
  *sum_squares = sq;
  *checksum = dot;
}

std::vector<double> GradientSync::global_fingerprint() {
  const size_t n = tensors_.size();
  std::vector<double> out(2 * n, 0.0), sharded;
  for (size_t i = 0; i < n; ++i) {
    tensor_grad_fingerprint(tensors_[i], &out[2 * i], &out[2 * i + 1]);
    if (tensors_[i].expert_sharded) sharded.insert(sharded.end(), {out[2 * i], out[2 * i + 1]});
  }
  if (ep_.size() == 1 || sharded.empty()) return out;
  // Replicated tensors are whole on every rank; expert slabs add up over the ep group.
  ep_.all_reduce_sum(std::span<double>(sharded));
  size_t at = 0;
  for (size_t i = 0; i < n; ++i)
    if (tensors_[i].expert_sharded) {
      out[2 * i] = sharded[at++];
      out[2 * i + 1] = sharded[at++];
    }
  return out;
}

}  // namespace uoe
