#include "layers/router.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "layers/router_select.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/kernels.hpp"
#include "runtime/profile.hpp"
#include "runtime/threads.hpp"

namespace uoe {

int64_t expert_capacity(int64_t patches, int k, int experts, double capacity_factor) {
  UOE_ASSERT(patches >= 0 && k >= 1 && experts >= k && capacity_factor >= 0);
  if (capacity_factor == 0) return patches;
  // The product is rounded in binary, so shave a relative 1e-12 before the ceiling: exact integers
  // stay put, real fractions still round up.
  const double cap = capacity_factor * static_cast<double>(patches) * k / experts;
  return std::min(patches, static_cast<int64_t>(std::ceil(cap - cap * 1e-12)));
}

void router_begin(Routing& r, const RouterSpec& spec, int N, int d) {
  const int E = spec.experts, k = spec.topk, ps = spec.patch_size;
  UOE_ASSERT(N % ps == 0 && k >= 1 && k <= E);
  r.N = N; r.P = N / ps; r.E = E; r.k = k; r.patch = ps; r.d = d;
}

void router_patch_means(float* xm, const float* xn, int P, int ps, int d) {
  // fp32, summed in token order.
  const float inv = 1.0f / static_cast<float>(ps);
  for (int p = 0; p < P; ++p) {
    float* m = xm + static_cast<size_t>(p) * d;
    for (int c = 0; c < d; ++c) m[c] = 0.0f;
    for (int t = 0; t < ps; ++t) {
      const float* row = xn + static_cast<size_t>(p * ps + t) * d;
      for (int c = 0; c < d; ++c) m[c] += row[c];
    }
    for (int c = 0; c < d; ++c) m[c] *= inv;
  }
}

void router_bias_rows(float* logits, const float* b, int P, int E) {
  for (int p = 0; p < P; ++p) std::copy(b, b + E, logits + static_cast<size_t>(p) * E);
}

void router_forward(Routing& r, const RouterSpec& spec, const float* xn, const float* W, const float* b,
                    int N, int d, bool dropless) {
  const ProfileScope profile(Phase::routing);
  router_begin(r, spec, N, d);
  const int E = r.E, P = r.P, ps = r.patch;
  const float* x = xn;
  if (ps > 1) {
    r.xm.resize(static_cast<size_t>(P) * d);
    router_patch_means(r.xm.data(), xn, P, ps, d);
    x = r.xm.data();
  } else {
    r.xm.clear();
  }
  // Scores.
  r.probs.resize(static_cast<size_t>(P) * E);
  router_bias_rows(r.probs.data(), b, P, E);
  gemm(false, false, P, E, d, 1.0f, x, d, W, E, 1.0f, r.probs.data(), E);
  router_decide(r, spec, dropless);
}

// Row by row over the compute threads (each patch's decision is its own: the same bits on any count).
void router_decide_rows(float* probs, float* lse, int* choice, float* gate, int P, int E, int k, GateMode mode) {
  parallel_ranges(P, 256, [=](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      lse[p] = router_decide_row(probs + static_cast<size_t>(p) * E, choice + static_cast<size_t>(p) * k,
                                 gate + static_cast<size_t>(p) * k, E, k, mode);
  });
}

void router_chosen(int* chosen, const int* choice, int P, int E, int k) {
  for (int e = 0; e < E; ++e) chosen[e] = router_chosen_count(choice, P, k, e);
}

void router_decide(Routing& r, const RouterSpec& spec, bool dropless) {
  const int E = r.E, k = r.k, P = r.P;
  r.lse.resize(P);
  // Expert selection.
  r.choice.resize(static_cast<size_t>(P) * k);
  r.gate.resize(static_cast<size_t>(P) * k);
  r.kept.assign(static_cast<size_t>(P) * k, 1);
  router_decide_rows(r.probs.data(), r.lse.data(), r.choice.data(), r.gate.data(), P, E, k, gate_mode(spec));
  r.chosen.assign(E, 0);
  for (int i = 0; i < P * k; ++i) r.chosen[r.choice[i]]++;

  // Patch-wise data selection: per expert, the (patch, slot) pairs that chose it.
  std::vector<std::vector<std::pair<int, int>>> cand(E);
  for (int e = 0; e < E; ++e) cand[e].reserve(r.chosen[e]);
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < k; ++j) cand[r.choice[static_cast<size_t>(p) * k + j]].push_back({p, j});
  const bool limited = !dropless && spec.capacity_factor > 0;
  r.capacity = limited ? static_cast<int>(expert_capacity(P, k, E, spec.capacity_factor)) : 0;
  r.dropped = 0;
  r.capacity_kept.assign(E, 0);
  r.row_offsets.assign(E + 1, 0);
  r.row_patch.clear();
  r.row_slot.clear();
  std::vector<float> p_scratch, top;  // a candidate list's scores, in patch order; a copy to partition
  for (int e = 0; e < E; ++e) {
    auto& c = cand[e];
    if (limited && static_cast<int>(c.size()) > r.capacity) {
      // Highest p first; ties → lower patch index (c is in patch order and a patch appears once per
      // expert, so this is a strict total order and the C kept are those a stable sort by p would
      // keep). Only the partition matters: the C-th highest score t (nth_element on the scores
      // alone), then one pass in patch order keeping every score above t and the first C − (their
      // count) equal to t — the kept come out in patch order, with no sort.
      p_scratch.resize(c.size());
      for (size_t i = 0; i < c.size(); ++i) p_scratch[i] = r.probs[static_cast<size_t>(c[i].first) * E + e];
      top.assign(p_scratch.begin(), p_scratch.end());
      float t = std::numeric_limits<float>::infinity();  // capacity 0 (never for P > 0): nothing kept
      if (r.capacity > 0) {
        std::nth_element(top.begin(), top.begin() + (r.capacity - 1), top.end(), std::greater<float>());
        t = top[static_cast<size_t>(r.capacity - 1)];
      }
      int ties = r.capacity;
      for (float v : p_scratch) ties -= v > t;
      size_t w = 0;
      for (size_t i = 0; i < c.size(); ++i) {
        const float v = p_scratch[i];
        if (v > t || (v == t && ties-- > 0)) c[w++] = c[i];
        else r.kept[static_cast<size_t>(c[i].first) * k + c[i].second] = 0;
      }
      r.dropped += static_cast<int>(c.size()) - r.capacity;
      c.resize(w);
    }
    r.capacity_kept[e] = static_cast<int>(c.size());
    for (const auto& [p, j] : c) {
      r.row_patch.push_back(p);
      r.row_slot.push_back(j);
    }
    r.row_offsets[e + 1] = static_cast<int>(r.row_patch.size());
  }

  if (P == 0) {  // an empty micro-batch (e.g. a rank with no evaluation windows left)
    r.balance_loss = r.z_loss = 0;
    return;
  }
  // Balance loss α·E·Σ f_e·P_e (f_e = chosen_e / (P·k), P_e = mean p_e) and z-loss β·mean(lse²).
  double losses[2];
  router_losses(losses, r.probs.data(), r.lse.data(), r.chosen.data(), P, E, k, spec.aux_weight, spec.z_weight);
  r.balance_loss = losses[0];
  r.z_loss = losses[1];
}

void router_select(Routing& r, const RouterSpec& spec, bool dropless) {
  const int E = r.E, k = r.k, P = r.P;
  UOE_ASSERT(r.choice.size() == static_cast<size_t>(P) * k && r.probs.size() == static_cast<size_t>(P) * E);
  const bool limited = !dropless && spec.capacity_factor > 0;
  r.capacity = limited ? static_cast<int>(expert_capacity(P, k, E, spec.capacity_factor)) : 0;
  const int* choice = r.choice.data();
  r.kept.resize(static_cast<size_t>(P) * k);
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < k; ++j)
      r.kept[static_cast<size_t>(p) * k + j] = router_keeps(choice, r.probs.data(), P, E, k, r.capacity, p, j);
  r.capacity_kept.resize(E);
  r.row_offsets.assign(E + 1, 0);
  for (int e = 0; e < E; ++e) {
    r.capacity_kept[e] = router_kept_before(choice, r.kept.data(), k, e, P);
    r.row_offsets[e + 1] = r.row_offsets[e] + r.capacity_kept[e];
  }
  r.dropped = P * k - r.row_offsets[E];
  r.row_patch.assign(r.row_offsets[E], -1);
  r.row_slot.assign(r.row_offsets[E], -1);
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < k; ++j)
      router_place_row(r.row_patch.data(), r.row_slot.data(), r.row_offsets.data(), choice, r.kept.data(), k, p, j);
}

void router_select(uint8_t* kept, int* row_offsets, int* row_patch, int* row_slot, const int* choice,
                   const float* probs, int P, int E, int k, int capacity) {
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < k; ++j) kept[static_cast<size_t>(p) * k + j] = router_keeps(choice, probs, P, E, k, capacity, p, j);
  row_offsets[0] = 0;
  for (int e = 0; e < E; ++e) row_offsets[e + 1] = row_offsets[e] + router_kept_before(choice, kept, k, e, P);
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < k; ++j) router_place_row(row_patch, row_slot, row_offsets, choice, kept, k, p, j);
}

void router_backward_logits_rows(float* dlogits, const float* probs, const float* lse, const int* choice,
                                 const uint8_t* kept, const float* dgate, const int* chosen, int P, int E, int k,
                                 GateMode mode, double aux_scale, double aux_weight, double z_weight) {
  const float zscale = static_cast<float>(aux_scale * z_weight * 2.0 / P);
  parallel_ranges(P, 256, [=](int64_t p0, int64_t p1) {
    std::vector<float> dp(E);
    for (int64_t p = p0; p < p1; ++p) {
      const size_t pk = static_cast<size_t>(p) * k;
      router_backward_logits_row(dlogits + static_cast<size_t>(p) * E, dp.data(), probs + static_cast<size_t>(p) * E,
                                 choice + pk, kept + pk, dgate + pk, lse[p], chosen, static_cast<int>(P), E, k, mode,
                                 aux_scale, aux_weight, zscale);
    }
  });
}

void router_backward_logits(float* dlogits, const Routing& r, const RouterSpec& spec, const float* dgate,
                            float aux_scale) {
  router_backward_logits_rows(dlogits, r.probs.data(), r.lse.data(), r.choice.data(), r.kept.data(), dgate,
                              r.chosen.data(), r.P, r.E, r.k, gate_mode(spec), aux_scale, spec.aux_weight,
                              spec.z_weight);
}

void router_gate_grads(float* dgate, const int32_t* slot, const float* rowdot, int i0, int n) {
  for (int i = i0; i < i0 + n; ++i) router_gate_grad_run(dgate, slot, rowdot, i0, n, i);
}

void router_bias_grad(float* db, const float* dlogits, int P, int E) {
  for (int p = 0; p < P; ++p)
    for (int e = 0; e < E; ++e) db[e] += dlogits[static_cast<size_t>(p) * E + e];
}

void router_patch_means_backward(float* dxn, const float* dxm, int P, int ps, int d) {
  const float inv = 1.0f / static_cast<float>(ps);
  for (int p = 0; p < P; ++p)
    for (int t = 0; t < ps; ++t) {
      float* row = dxn + static_cast<size_t>(p * ps + t) * d;
      const float* g = dxm + static_cast<size_t>(p) * d;
      for (int c = 0; c < d; ++c) row[c] += g[c] * inv;
    }
}

void router_backward(const Routing& r, const RouterSpec& spec, const float* dgate, const float* xn,
                     const float* W, float* dxn, float* dW, float* db, float aux_scale) {
  const ProfileScope profile(Phase::routing);
  const int P = r.P, E = r.E, d = r.d, ps = r.patch;
  std::vector<float> dlogits(static_cast<size_t>(P) * E);
  router_backward_logits(dlogits.data(), r, spec, dgate, aux_scale);
  // Logits = x̄·W + b.
  const float* x = ps > 1 ? r.xm.data() : xn;
  gemm(true, false, d, E, P, 1.0f, x, d, dlogits.data(), E, 1.0f, dW, E);
  router_bias_grad(db, dlogits.data(), P, E);
  if (ps == 1) {
    gemm(false, true, P, d, E, 1.0f, dlogits.data(), E, W, E, 1.0f, dxn, d);
  } else {
    std::vector<float> dxm(static_cast<size_t>(P) * d);
    gemm(false, true, P, d, E, 1.0f, dlogits.data(), E, W, E, 0.0f, dxm.data(), d);
    router_patch_means_backward(dxn, dxm.data(), P, ps, d);
  }
}

}  // namespace uoe
