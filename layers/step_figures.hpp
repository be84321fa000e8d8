// The figures a training step reports (layers/train_step.hpp, StepFigures) travel in one vector of
// doubles, summed over the micro-batches and then over the ranks. StepFigureLayout says where each
// figure lies in it; the UOE_HD bodies below add one micro-batch's figures into it, the arithmetic of
// train_step's host loop (layers/train_step.cpp), so a backend that keeps the loss and the router's
// figures where it computed them (the CUDA backend: on the device) accumulates them there and the
// host reads them only when it needs them (docs/gpu.md, Log figures): the loss, one double a step
// (the non-finite check and the window's loss), and the rest on the steps that write a log line.
// Summed in the same order with the same operations, the figures are the host's bit for bit
// (tests/unit/test_step_backends.cpp holds the device-like backend to the CPU backend).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "layers/model.hpp"
#include "runtime/rng.hpp"  // UOE_HD

namespace uoe {

// The vector's layout: loss, aux, flops, tokens, then per block dropped, assignments, router entropy
// and patches, then per block the tokens processed by 0..K experts (K the largest top-k), then per
// block the patches choosing each expert, last the routing check (StepFigures::routing_check).
struct StepFigureLayout {
  int blocks = 0, K = 0;
  std::vector<int> experts_of;  // [2L] experts of each block
  std::vector<size_t> load_at;  // [2L] where block b's per-expert patches begin
  size_t at_hist = 0, at_load = 0, at_routing = 0;

  StepFigureLayout() = default;
  explicit StepFigureLayout(const ModelSpec& spec)
      : blocks(2 * spec.layers), K(std::max(spec.topk, spec.attn_topk)), experts_of(blocks), load_at(blocks) {
    at_hist = 4 + 4 * static_cast<size_t>(blocks);
    at_load = at_hist + static_cast<size_t>(blocks) * (K + 1);
    size_t at = at_load;
    for (int b = 0; b < blocks; ++b) {
      experts_of[b] = spec.block_experts(b);
      load_at[b] = at;
      at += experts_of[b];
    }
    at_routing = at;
  }
  size_t size() const { return at_routing + 1; }
  size_t at_entropy(int b) const { return 4 + 2 * static_cast<size_t>(blocks) + b; }
  size_t at_hist_of(int b) const { return at_hist + static_cast<size_t>(b) * (K + 1); }
};

// The figures of one routed block, where they are added (one StepFigureLayout, one block).
struct StepFigureBlock {
  int64_t at_entropy, at_hist, at_load;  // indices into the vector
  int k, K, E;
};
inline StepFigureBlock step_figure_block(const StepFigureLayout& lay, int b, int k) {
  return {static_cast<int64_t>(lay.at_entropy(b)), static_cast<int64_t>(lay.at_hist_of(b)),
          static_cast<int64_t>(lay.load_at[b]), k, lay.K, lay.experts_of[b]};
}

// One micro-batch's mean cross-entropy: sums[0] += Σ CE / tokens.
UOE_HD inline void step_figures_add_loss(double* sums, const double* ce_sum, double tokens) { sums[0] += *ce_sum / tokens; }

// One routed block's figures of one micro-batch: *aux (the micro-batch's Σ over blocks of balance +
// z, ForwardStats::aux_loss, in block order) += balance + z; the entropy sum; the tokens by the
// number of experts kept (j ≤ K); the patches choosing each expert. figures [3]: balance, z-loss,
// entropy sum (router_losses_and_figures' output); experts_per_token [k + 1]; chosen [E].
UOE_HD inline void step_figures_add_block(double* sums, double* aux, const double* figures, const int* experts_per_token,
                                          const int* chosen, StepFigureBlock blk) {
  *aux += figures[0] + figures[1];
  sums[blk.at_entropy] += figures[2];
  for (int j = 0; j <= blk.k && j <= blk.K; ++j) sums[blk.at_hist + j] += static_cast<double>(experts_per_token[j]);
  for (int e = 0; e < blk.E; ++e) sums[blk.at_load + e] += chosen[e];
}

// The micro-batch's router losses: sums[1] += *aux.
UOE_HD inline void step_figures_add_aux(double* sums, const double* aux) { sums[1] += *aux; }

}  // namespace uoe
