// The whole-model finite-difference gradient check, shared by the gradient tests of every block
// type (test_gradients.cpp: uoe; test_baselines.cpp: dense and moe).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "tests/common/stepped_model.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "runtime/rng.hpp"

namespace uoe {

struct GradCheckOptions {
  // Per tensor: its largest-|gradient| elements (the strongest signal against float noise), and
  // seeded random ones, one in each of `random` equal contiguous strata of the tensor, so that a
  // slab given a wrong gradient (zeroed, halved: a backward that skips or mis-scales an expert, a
  // row block) is sampled wherever the largest elements lie: a slab of at least 2/random of the
  // tensor holds a whole stratum. At 32, an expert's slab (1/4 of a tensor in the test models) or
  // one embedding row (1/11) was caught at every one of 29 seeds tried, zeroed or halved.
  int largest = 3;
  int random = 32;
  uint64_t seed = 2024;
  // Test-only: runs on the model after the backward pass whose gradients are checked, e.g. to
  // break one slab (the negative tests prove the check can fail).
  std::function<void(ParamStore&)> after_backward;
};

struct GradCheckResult {
  int tensors = 0;   // tensors of the model
  int checked = 0;   // elements compared with their finite difference
  int skipped = 0;   // elements whose perturbation flipped a routing decision (loss not smooth there)
  std::vector<std::string> failures;  // "tensor[i]: finite difference x vs analytic y"
  std::vector<std::string> failed_tensors;  // the tensors named in failures, each once
  bool ok() const { return failures.empty(); }
  std::string report() const {
    std::ostringstream os;
    os << failures.size() << " of " << checked << " elements differ (" << skipped << " skipped)";
    for (size_t i = 0; i < failures.size() && i < 20; ++i) os << "\n  " << failures[i];
    return os.str();
  }
};

// The whole model: loss = mean CE + router losses, every tensor checked at its largest-gradient
// elements and at random ones (GradCheckOptions), with routing frozen (checked through the routing
// fingerprint). Returns the verdict; check_model turns it into test failures.
inline GradCheckResult model_gradient_check(ModelSpec spec, const GradCheckOptions& opt = {}) {
  LocalExchange ex;
  uoe_test::SteppedModel model(spec, 7, &ex);
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
  if (opt.after_backward) opt.after_backward(model.params());
  const uint64_t fp = model.routing_fingerprint();
  std::vector<float> grads(model.params().grads().begin(), model.params().grads().end());
  GradCheckResult r;
  for (const ParamInfo& p : model.params().infos()) {
    std::vector<size_t> idx(p.size);
    for (size_t j = 0; j < p.size; ++j) idx[j] = j;
    const size_t top = std::min<size_t>(static_cast<size_t>(opt.largest), p.size);
    std::partial_sort(idx.begin(), idx.begin() + top, idx.end(), [&](size_t a, size_t b) {
      return std::fabs(grads[p.offset + a]) > std::fabs(grads[p.offset + b]);
    });
    std::vector<size_t> pick(idx.begin(), idx.begin() + top);
    const size_t strata = std::min<size_t>(static_cast<size_t>(opt.random), p.size);
    for (size_t k = 0; k < strata; ++k) {
      const size_t lo = k * p.size / strata, hi = (k + 1) * p.size / strata;
      const size_t j = lo + rng_below(opt.seed, rng_stream(p.name), k, hi - lo);
      if (std::find(pick.begin(), pick.end(), j) == pick.end()) pick.push_back(j);
    }
    bool tensor_failed = false;
    for (size_t j : pick) {
      const size_t i = p.offset + j;
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
        ++r.skipped;  // the perturbation flipped a routing decision: the loss is not smooth there
        continue;
      }
      const double fd = (lp - lm) / (2.0 * eps);
      // atol: float noise of a loss ≈ 3 (~3e-7) over 2ε, times a safety factor.
      ++r.checked;
      if (std::fabs(fd - grads[i]) > 3e-4 + 3e-2 * std::fabs(grads[i])) {
        std::ostringstream os;
        os << p.name << "[" << j << "]: finite difference " << fd << " vs analytic " << grads[i];
        r.failures.push_back(os.str());
        tensor_failed = true;
      }
    }
    if (tensor_failed) r.failed_tensors.push_back(p.name);
  }
  r.tensors = static_cast<int>(model.params().count());
  return r;
}

inline void check_model(ModelSpec spec, const char* name, const GradCheckOptions& opt = {}) {
  const GradCheckResult r = model_gradient_check(spec, opt);
  EXPECT_TRUE(r.ok()) << name << ": " << r.report();
  EXPECT_GT(r.checked, 2 * r.tensors) << name;
  // Routing flips are rare at ε = 2e-3; many of them would leave too little checked to trust.
  EXPECT_LE(r.skipped, 3 + r.checked / 20) << name << ": too many routing flips to trust the check";
}

}  // namespace uoe
