// The whole-model finite-difference gradient check, shared by the gradient tests of every block
// type (test_gradients.cpp: uoe; test_baselines.cpp: dense and moe).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "runtime/rng.hpp"

namespace uoe {

// The whole model: loss = mean CE + router losses, every tensor checked at its largest-gradient
// elements, with routing frozen (checked through the routing fingerprint).
inline void check_model(ModelSpec spec, const char* name) {
  LocalExchange ex;
  Model model(spec, 7, &ex);
  // Move away from the near-symmetric initialisation so every path carries gradient.
  FloatBuffer& vals = model.params().values();
  for (size_t i = 0; i < vals.size(); ++i) vals[i] += 0.15f * rng_normal(99, 1, i);
  const int B = 2, N = B * spec.seq_len;
  std::vector<int32_t> in(N), tg(N);
  for (int i = 0; i < N; ++i) {
    in[i] = static_cast<int32_t>(rng_below(5, 6, i, spec.vocab));
    tg[i] = static_cast<int32_t>(rng_below(5, 7, i, spec.vocab));
  }
  ForwardStats st;
  auto loss = [&] {
    model.params().zero_grads();
    model.forward_backward(in.data(), tg.data(), B, 1.0f, &st);
    return st.ce_sum / static_cast<double>(st.tokens) + st.aux_loss;
  };
  loss();
  const uint64_t fp = model.routing_fingerprint();
  std::vector<float> grads(model.params().grads().begin(), model.params().grads().end());
  int checked = 0, skipped = 0;
  for (const ParamInfo& p : model.params().infos()) {
    // The 3 largest-|gradient| elements of each tensor: the strongest signal against float noise.
    std::vector<size_t> idx(p.size);
    for (size_t j = 0; j < p.size; ++j) idx[j] = j;
    const size_t top = std::min<size_t>(3, p.size);
    std::partial_sort(idx.begin(), idx.begin() + top, idx.end(), [&](size_t a, size_t b) {
      return std::fabs(grads[p.offset + a]) > std::fabs(grads[p.offset + b]);
    });
    for (size_t t = 0; t < top; ++t) {
      const size_t i = p.offset + idx[t];
      const float saved = vals[i];
      const float eps = 2e-3f;
      vals[i] = saved + eps;
      const double lp = loss();
      const bool same_p = model.routing_fingerprint() == fp;
      vals[i] = saved - eps;
      const double lm = loss();
      const bool same_m = model.routing_fingerprint() == fp;
      vals[i] = saved;
      if (!same_p || !same_m) {
        ++skipped;  // the perturbation flipped a routing decision: the loss is not smooth there
        continue;
      }
      const double fd = (lp - lm) / (2.0 * eps);
      // atol: float noise of a loss ≈ 3 (~3e-7) over 2ε, times a safety factor.
      EXPECT_NEAR(fd, grads[i], 3e-4 + 3e-2 * std::fabs(grads[i])) << name << ": " << p.name << "[" << idx[t] << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, static_cast<int>(2 * model.params().count()));
  EXPECT_LE(skipped, 3) << name << ": too many routing flips to trust the check";
}

}  // namespace uoe
