#include "parallel/grad_sync.hpp"

#include <algorithm>
#include <cstring>

#include "layers/optimizer.hpp"
#include "runtime/error.hpp"
#include "runtime/profile.hpp"

namespace uoe {

GradientSync::GradientSync(const ParamStore& params, std::vector<std::vector<int>> buckets, Communicator& world,
                           Communicator& ep_group, Communicator& dp_group)
    : world_(world), ep_(ep_group), dp_(dp_group) {
  std::vector<int> seen(params.count(), 0);
  for (const auto& list : buckets) {
    Bucket b;
    for (int i : list) {
      UOE_ASSERT(i >= 0 && i < static_cast<int>(params.count()), "bucket names tensor ", i);
      ++seen[i];
      (params.info(i).expert_sharded ? b.sharded : b.replicated).push_back(i);
      b.all.push_back(i);
    }
    std::sort(b.all.begin(), b.all.end());
    buckets_.push_back(std::move(b));
  }
  for (size_t i = 0; i < seen.size(); ++i)
    UOE_ASSERT(seen[i] == 1, "tensor ", params.info(static_cast<int>(i)).name, " is in ", seen[i], " gradient buckets");
}

void GradientSync::reduce(ParamStore& params, const std::vector<int>& tensors, Communicator& comm) {
  if (comm.size() == 1 || tensors.empty()) return;
  size_t n = 0;
  bool adjacent = true;  // each tensor's gradient starts where the previous one's ends
  for (size_t q = 0; q < tensors.size(); ++q) {
    if (q > 0 && params.grad(tensors[q]) != params.grad(tensors[q - 1]) + params.info(tensors[q - 1]).size)
      adjacent = false;
    n += params.info(tensors[q]).size;
  }
  if (adjacent) {  // one span of the gradient arena: reduced in place, nothing packed
    comm.all_reduce_sum(std::span<float>(params.grad(tensors[0]), n));
    return;
  }
  pack_.resize_uninit(n);
  size_t at = 0;
  for (int i : tensors) {
    std::memcpy(pack_.data() + at, params.grad(i), sizeof(float) * params.info(i).size);
    at += params.info(i).size;
  }
  comm.all_reduce_sum(std::span<float>(pack_.data(), n));
  at = 0;
  for (int i : tensors) {
    std::memcpy(params.grad(i), pack_.data() + at, sizeof(float) * params.info(i).size);
    at += params.info(i).size;
  }
}

void GradientSync::reduce_bucket(ParamStore& params, size_t i) {
  const ProfileScope profile(Phase::exchange);
  if (ep_.size() == 1) {  // dp = world: one reduction over the bucket (in place when it is one span)
    reduce(params, buckets_[i].all, world_);
    return;
  }
  reduce(params, buckets_[i].replicated, world_);
  reduce(params, buckets_[i].sharded, dp_);
}

void GradientSync::all_reduce(ParamStore& params) {
  const ProfileScope profile(Phase::exchange);
  for (size_t i = 0; i < buckets_.size(); ++i) reduce_bucket(params, i);
}

double GradientSync::global_sum_squares(const ParamStore& params) {
  const ProfileScope profile(Phase::exchange);
  double replicated = 0, expert = 0;
  for (const Bucket& b : buckets_) {
    for (int i : b.replicated) {
      replicated += grad_sum_squares(params.grad(i), params.info(i).size);
    }
    for (int i : b.sharded) {
      expert += grad_sum_squares(params.grad(i), params.info(i).size);
    }
  }
  if (ep_.size() > 1) ep_.all_reduce_sum(std::span<double>(&expert, 1));
  return replicated + expert;
}

}  // namespace uoe
