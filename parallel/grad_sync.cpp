#include "parallel/grad_sync.hpp"

#include <chrono>
#include <cstring>

namespace uoe {

GradientSync::GradientSync(const ParamStore& params, Communicator& world, Communicator& ep_group,
                           Communicator& dp_group)
    : world_(world), ep_(ep_group), dp_(dp_group) {
  for (size_t i = 0; i < params.count(); ++i)
    (params.info(static_cast<int>(i)).expert_sharded ? sharded_ : replicated_).push_back(static_cast<int>(i));
}

void GradientSync::all_reduce(ParamStore& params) {
  const auto t0 = std::chrono::steady_clock::now();
  auto reduce = [&](const std::vector<int>& tensors, Communicator& comm) {
    if (comm.size() == 1) return;
    size_t n = 0;
    for (int i : tensors) n += params.info(i).size;
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
  };
  reduce(replicated_, world_);
  reduce(sharded_, dp_);
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double GradientSync::global_sum_squares(const ParamStore& params) {
  auto sum_sq = [&](const std::vector<int>& tensors) {
    double s = 0;
    for (int i : tensors) {
      const float* g = params.grad(i);
      for (size_t j = 0; j < params.info(i).size; ++j) s += static_cast<double>(g[j]) * g[j];
    }
    return s;
  };
  double expert = sum_sq(sharded_);
  if (ep_.size() > 1) ep_.all_reduce_sum(std::span<double>(&expert, 1));
  return sum_sq(replicated_) + expert;
}

}  // namespace uoe
