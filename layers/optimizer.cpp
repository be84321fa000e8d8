#include "layers/optimizer.hpp"

#include <cmath>

#include "runtime/kernels.hpp"
#include "runtime/profile.hpp"

namespace uoe {

AdamW::AdamW(const ParamStore& params, const AdamWSpec& spec) : spec_(spec) {
  m_.resize(params.total());
  v_.resize(params.total());
  decay_mask_.resize(params.total());
  for (const ParamInfo& p : params.infos())
    for (size_t j = 0; j < p.size; ++j) decay_mask_[p.offset + j] = p.decay ? 1.0f : 0.0f;
}

AdamWScalars AdamW::scalars(double lr, int64_t step, float grad_scale) const {
  AdamWScalars s;
  s.beta1 = static_cast<float>(spec_.beta1);
  s.beta2 = static_cast<float>(spec_.beta2);
  s.bias1 = static_cast<float>(1.0 / (1.0 - std::pow(spec_.beta1, static_cast<double>(step))));
  s.bias2 = static_cast<float>(1.0 / (1.0 - std::pow(spec_.beta2, static_cast<double>(step))));
  s.lr = static_cast<float>(lr);
  s.eps = static_cast<float>(spec_.eps);
  s.decay = static_cast<float>(lr * spec_.weight_decay);
  s.grad_scale = grad_scale;
  return s;
}

void AdamW::update(ParamStore& params, double lr, int64_t step, float grad_scale) {
  const ProfileScope profile(Phase::optimizer);
  const AdamWScalars s = scalars(lr, step, grad_scale);
  // The element update is kernels.hpp's adamw_update_elem, the body the GPU path runs too.
  adamw_update(params.values().data(), m_.data(), v_.data(), params.grads().data(), decay_mask_.data(),
               params.total(), s);
}

double lr_at_step(int64_t s, int64_t steps, int64_t warmup, double lr, double min_lr) {
  if (warmup > 0 && s <= warmup) return lr * static_cast<double>(s) / static_cast<double>(warmup);
  const int64_t decay_steps = steps - warmup;
  if (decay_steps <= 0) return lr;
  const double t = static_cast<double>(s - warmup) / static_cast<double>(decay_steps);  // (0, 1]
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * t));
}

float clip_scale(double clip, double grad_norm) {
  return (clip > 0 && grad_norm > clip) ? static_cast<float>(clip / grad_norm) : 1.0f;
}

}  // namespace uoe
