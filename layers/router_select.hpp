// Expert-choice capacity selection and the dispatch row tables (docs/model.md, Routing, step 2),
// written as per-assignment bodies that a GPU thread and a CPU loop both run (UOE_HD), so the device
// can decide which patches each expert keeps and lay out its rows without the host: the host needs
// only the row counts per expert (row_offsets), which size the exchange buffers.
//
// The rule is router_decide's (layers/router.cpp): expert e keeps at most `capacity` of the
// (patch, slot) assignments that chose it, highest probability first, ties to the lower patch
// index (a patch chooses an expert at most once, so this is a strict total order); capacity 0:
// every assignment is kept (dropless). Its rows are the kept assignments in ascending patch order,
// expert after expert. router_decide keeps its own partition (nth_element, O(P log P)); these bodies
// are O(P) per assignment, made for one thread each, and must give the same bits: the twin tests
// (tests/unit/test_router_select.cpp against router_decide; tests/cuda/test_step_cuda.cpp, the
// CUDA kernels against the CPU twin) hold them to it.
//
// Shapes: choice [P, k] (chosen experts of each patch), probs [P, E] (the softmaxed scores),
// kept [P, k] (1: kept).
#pragma once
#include <cmath>
#include <cstdint>

#include "layers/router.hpp"
#include "runtime/kernels.hpp"  // softmax_row, softmax_row_backward, topk_row
#include "runtime/rng.hpp"      // UOE_HD

namespace uoe {

// router_decide's capacity selection and row tables alone, from r.choice and the softmaxed r.probs,
// by the bodies below (layers/router.cpp; the CPU twin of cuda::router_select, layers/step_cuda.hpp):
// r.capacity, kept, capacity_kept, row_offsets, row_patch, row_slot and dropped, the same bits as
// router_decide's.
void router_select(Routing& r, const RouterSpec& spec, bool dropless);

// The CPU twins of the device's routing kernels (cuda::, layers/step_cuda.hpp: the same names and
// arguments, less the stream), loops over the bodies below; router_decide and
// router_backward_logits are made of them.
//   router_decide_rows: probs [P, E] logits in, softmaxed; lse [P], choice [P, k], gate [P, k] out.
//   router_chosen: chosen [E] = patches choosing each expert.
//   router_select (this overload): kept [P, k], row_offsets [E + 1], row_patch / row_slot [≤ P·k]
//   from choice and probs — the device's capacity selection (capacity 0: dropless).
//   router_losses and router_figures (the bodies below, one call each): balance and z-loss; the log
//   figures.
//   router_backward_logits_rows: dlogits [P, E] written from the routing's arrays and dgate [P, k],
//   zscale = aux_scale·β·2/P in double, then float (router_backward_logits's).
//   router_gate_grads: dgate += the combine backward's row dots, rows [i0, i0 + n), in row order.
enum class GateMode : int;
void router_decide_rows(float* probs, float* lse, int* choice, float* gate, int P, int E, int k, GateMode mode);
void router_chosen(int* chosen, const int* choice, int P, int E, int k);
void router_select(uint8_t* kept, int* row_offsets, int* row_patch, int* row_slot, const int* choice,
                   const float* probs, int P, int E, int k, int capacity);
void router_backward_logits_rows(float* dlogits, const float* probs, const float* lse, const int* choice,
                                 const uint8_t* kept, const float* dgate, const int* chosen, int P, int E, int k,
                                 GateMode mode, double aux_scale, double aux_weight, double z_weight);
void router_gate_grads(float* dgate, const int32_t* slot, const float* rowdot, int i0, int n);

// Whether expert choice[p·k + j] keeps assignment (p, j): fewer than `capacity` assignments of that
// expert rank before it (capacity 0: always).
UOE_HD inline uint8_t router_keeps(const int* choice, const float* probs, int P, int E, int k, int capacity, int p,
                                   int j) {
  if (capacity <= 0) return 1;
  const int e = choice[p * k + j];
  const float pe = probs[static_cast<int64_t>(p) * E + e];
  int before = 0;
  for (int q = 0; q < P; ++q) {
    if (q == p) continue;
    const float pq = probs[static_cast<int64_t>(q) * E + e];
    if (!(pq > pe || (pq == pe && q < p))) continue;
    for (int i = 0; i < k; ++i)
      if (choice[q * k + i] == e) {
        if (++before >= capacity) return 0;
        break;
      }
  }
  return 1;
}

// Kept assignments of expert e among patches [0, p_end): with p_end = P, expert e's row count; with
// p_end = p, the index of patch p's row among expert e's rows.
UOE_HD inline int router_kept_before(const int* choice, const uint8_t* kept, int k, int e, int p_end) {
  int n = 0;
  for (int q = 0; q < p_end; ++q)
    for (int i = 0; i < k; ++i) n += (choice[q * k + i] == e && kept[q * k + i]) ? 1 : 0;
  return n;
}

// Writes assignment (p, j)'s row (when kept) into row_patch / row_slot, expert-major, patches
// ascending: row_offsets [E + 1] must hold the prefix sums of the row counts.
UOE_HD inline void router_place_row(int* row_patch, int* row_slot, const int* row_offsets, const int* choice,
                                    const uint8_t* kept, int k, int p, int j) {
  if (!kept[p * k + j]) return;
  const int e = choice[p * k + j];
  const int at = row_offsets[e] + router_kept_before(choice, kept, k, e, p);
  row_patch[at] = p;
  row_slot[at] = j;
}

// The rest of router_decide and router_backward_logits as per-patch / per-expert bodies, so that
// the device decides too and the host receives only counts (docs/gpu.md, Routing). The CPU router
// (layers/router.cpp) runs these same bodies in its loops, so the twins below are the CPU rule by
// construction; the twin tests hold the device path to it.

// How the gate weights are formed from the chosen probabilities (RouterSpec::prob / renorm).
enum class GateMode : int { sum = 0, renorm = 1, prob = 2 };
inline GateMode gate_mode(const RouterSpec& spec) {
  return spec.prob ? GateMode::prob : spec.renorm ? GateMode::renorm : GateMode::sum;
}

// Patch p's decision: its logits row (in: x̄·W + b) softmaxed in place, its log-sum-exp returned,
// its top-k experts (ties → lower index) and their gate weights.
UOE_HD inline float router_decide_row(float* probs_row, int* choice_row, float* gate_row, int E, int k, GateMode mode) {
  const float lse = softmax_row(probs_row, E);
  topk_row(choice_row, probs_row, E, k);
  float s = 0.0f;
  for (int j = 0; j < k; ++j) s += probs_row[choice_row[j]];
  for (int j = 0; j < k; ++j) {
    float w = 1.0f;
    if (mode == GateMode::prob) w = probs_row[choice_row[j]];
    else if (mode == GateMode::renorm) w = static_cast<float>(k) * probs_row[choice_row[j]] / s;
    gate_row[j] = w;
  }
  return lse;
}

// Patches choosing expert e in their top-k.
UOE_HD inline int router_chosen_count(const int* choice, int P, int k, int e) {
  int n = 0;
  for (int i = 0; i < P * k; ++i) n += choice[i] == e ? 1 : 0;
  return n;
}

// The router losses in double, the CPU's order: out[0] = balance α·E·Σ_e f_e·P_e (f_e = chosen_e /
// (P·k), P_e = mean_p p_e; experts in order, patches in order within each), out[1] = z-loss
// β·mean_p lse². P = 0: both 0. One thread (a serial sum keeps the order).
UOE_HD inline void router_losses(double* out, const float* probs, const float* lse, const int* chosen, int P, int E,
                                 int k, double aux_weight, double z_weight) {
  if (P == 0) {
    out[0] = out[1] = 0;
    return;
  }
  double bal = 0.0;
  for (int e = 0; e < E; ++e) {
    double pe = 0.0;
    for (int p = 0; p < P; ++p) pe += probs[static_cast<int64_t>(p) * E + e];
    bal += (static_cast<double>(chosen[e]) / (static_cast<double>(P) * k)) * (pe / P);
  }
  out[0] = aux_weight * E * bal;
  double z = 0.0;
  for (int p = 0; p < P; ++p) z += static_cast<double>(lse[p]) * lse[p];
  out[1] = z_weight * z / P;
}

// The block's log figures from the routing, block_stats_from_routing's arithmetic (layers/model.cpp):
// *entropy_sum = Σ_p −Σ_e p·ln p (double, p order, experts in order within p) and experts_per_token
// [k + 1] (tokens by the number of their choices kept: a patch's count, patch times). One thread.
// One patch's entropy −Σ_e p·ln p (double, experts in order): a term of router_figures' sum.
UOE_HD inline double router_entropy_row(const float* pr, int E) {
  double h = 0;
  for (int e = 0; e < E; ++e)
    if (pr[e] > 0) h -= static_cast<double>(pr[e]) * log(static_cast<double>(pr[e]));
  return h;
}
UOE_HD inline void router_figures(double* entropy_sum, int* experts_per_token, const float* probs, const uint8_t* kept,
                                  int P, int E, int k, int patch) {
  double sum = 0;
  for (int p = 0; p < P; ++p) sum += router_entropy_row(probs + static_cast<int64_t>(p) * E, E);
  *entropy_sum = sum;
  for (int j = 0; j <= k; ++j) experts_per_token[j] = 0;
  for (int p = 0; p < P; ++p) {
    int n = 0;
    for (int j = 0; j < k; ++j) n += kept[p * k + j];
    experts_per_token[n] += patch;
  }
}

// d(balance)/dp[p, e] = α·E·f_e / P, scaled by this micro-batch's loss weight (f_e a count: no
// gradient through it).
UOE_HD inline float router_balance_grad(double aux_scale, double aux_weight, int E, int chosen_e, int P, int k) {
  return static_cast<float>(aux_scale * aux_weight * E * (static_cast<double>(chosen_e) / (static_cast<double>(P) * k)) /
                            P);
}

// Patch p's logits gradient dl [E] (written): the gates' (renorm and prob; kept choices only), the
// balance loss's and the z-loss's, through the softmax. dp [E] is scratch (may be dl itself: the
// softmax backward reads dp[i] before it writes dl[i]).
UOE_HD inline void router_backward_logits_row(float* dl, float* dp, const float* pr, const int* ch, const uint8_t* kept,
                                              const float* dgate, float lse, const int* chosen, int P, int E, int k,
                                              GateMode mode, double aux_scale, double aux_weight, float zscale) {
  for (int e = 0; e < E; ++e) dp[e] = router_balance_grad(aux_scale, aux_weight, E, chosen[e], P, k);
  if (mode == GateMode::prob) {
    // w_j = p_j: dp_j += dw_j
    for (int j = 0; j < k; ++j)
      if (kept[j]) dp[ch[j]] += dgate[j];
  } else if (mode == GateMode::renorm) {
    // w_j = k·p_j / S, S = Σ_chosen p:  dp_i += Σ_j dw_j · k · (δ_ij / S − p_j / S²)
    float s = 0.0f;
    for (int j = 0; j < k; ++j) s += pr[ch[j]];
    float dot = 0.0f;  // Σ_j dw_j p_j
    for (int j = 0; j < k; ++j)
      if (kept[j]) dot += dgate[j] * pr[ch[j]];
    for (int j = 0; j < k; ++j) {
      const float dw = kept[j] ? dgate[j] : 0.0f;
      dp[ch[j]] += static_cast<float>(k) * (dw / s - dot / (s * s));
    }
  }
  softmax_row_backward(dl, pr, dp, E);
  // z-loss: d(lse²)/dlogits = 2·lse·softmax
  for (int e = 0; e < E; ++e) dl[e] += zscale * lse * pr[e];
}

// The combine backward's gate gradients into dgate [P·k], rows [i0, i0 + n): dgate[slot[i]] +=
// rowdot[i − i0] in ascending i (the CPU path's order). A slot's rows are consecutive (a patch's
// tokens, layers/model.hpp source_rows_build), so row i starts a run when it is the first of its
// slot; that run's adds are one thread's, in order. Called for every i; only run starts add.
UOE_HD inline void router_gate_grad_run(float* dgate, const int32_t* slot, const float* rowdot, int i0, int n, int i) {
  if (i > i0 && slot[i - 1] == slot[i]) return;
  const int s = slot[i];
  for (int j = i; j < i0 + n && slot[j] == s; ++j) dgate[s] += rowdot[j - i0];
}

}  // namespace uoe
