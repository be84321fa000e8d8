// The hierarchical router of one UoE block (docs/model.md, Routing), for one micro-batch:
//   1. expert selection: each patch (patch_size consecutive tokens of one sequence) scores the
//      mean of its vectors, p = softmax(x̄·Wr + br) in fp32, and picks its top-k experts
//      (ties → lower expert index);
//   2. patch-wise data selection: expert e keeps at most C = ceil(cf · patches · k / E) of the
//      patches that chose it, highest p first (ties → lower patch index = lower sequence, then
//      position); cf = 0 or evaluation → dropless;
//   3. gate weights: renorm w = k·p_e / Σ_chosen p, sum w = 1, or prob w = p_e (Switch / GShard).
// Also the balance loss α·E·Σ f_e·P_e and the z-loss β·mean(lse²), with their gradients.
#pragma once
#include <cstdint>
#include <vector>

namespace uoe {

struct RouterSpec {
  int experts = 1;             // E
  int topk = 1;                // k
  int patch_size = 1;
  double capacity_factor = 0;  // 0 = dropless
  bool renorm = true;          // gate = renorm (else sum, unless prob)
  bool prob = false;           // gate = prob: w = p_e (takes precedence over renorm)
  double aux_weight = 0;       // α
  double z_weight = 0;         // β
};

struct Routing {
  int N = 0, P = 0, E = 0, k = 0, patch = 1, d = 0;
  std::vector<float> xm;       // [P, d] patch means (empty when patch == 1: the input itself)
  std::vector<float> probs;    // [P, E]
  std::vector<float> lse;      // [P] log-sum-exp of the logits
  std::vector<int> choice;     // [P, k] chosen experts, best first
  std::vector<float> gate;     // [P, k] gate weight of each choice
  std::vector<uint8_t> kept;   // [P, k] 1 if the expert kept the patch
  std::vector<int> chosen;     // [E] patches choosing e in their top-k
  std::vector<int> capacity_kept;  // [E] patches kept by e
  // Dispatch rows, expert-major, patches ascending within an expert: row r of expert e is
  // rows [row_offsets[e], row_offsets[e+1]) of row_patch/row_slot (per patch, not per token).
  std::vector<int> row_offsets;  // [E + 1]
  std::vector<int> row_patch;    // [rows]
  std::vector<int> row_slot;     // [rows] which of the patch's k choices
  // Kept patches per (sequence, expert) [S, E], set with figures_only when the row tables stay on
  // the device (row_patch and row_slot empty until routing_to_host): what the host's figures read.
  std::vector<int> sequence_rows;
  int capacity = 0;              // C = expert_capacity (0 = unlimited: dropless)
  double balance_loss = 0;       // α-weighted
  double z_loss = 0;             // β-weighted
  int dropped = 0;               // (patch, choice) assignments dropped by capacity
  // Set by a backend that decides on the device (layers/step.hpp, routing_to_host): probs, lse,
  // choice, gate and kept are not on the host, and the log figures that read them came down formed
  // (router_figures, layers/router_select.hpp): Σ_p entropy of p's probabilities, and how many
  // tokens kept 0..k of their choices [k + 1].
  bool figures_only = false;
  double entropy_sum = 0;
  std::vector<int> experts_per_token;
};

// The most patches one expert keeps of a micro-batch of `patches` patches routed top-k over
// `experts` experts (docs/model.md, Capacity): C = ceil(cf · patches · k / E), with a relative 1e-12
// shaved off the product first, so that a product that is an integer in exact arithmetic is not
// rounded up by binary error (1.1·100·1/2 = 55.000000000000007); never more than `patches` (a
// patch chooses an expert at most once). cf = 0 (dropless): `patches`. What router_forward keeps,
// what the memory estimate (layers/memory.hpp) and the benches plan with.
int64_t expert_capacity(int64_t patches, int k, int experts, double capacity_factor);

// xn [N, d] (N divisible by patch_size), W [d, E], b [E].
void router_forward(Routing& r, const RouterSpec& spec, const float* xn, const float* W, const float* b,
                    int N, int d, bool dropless);

// dgate [P, k]: dLoss/dgate for kept choices (ignored otherwise). Adds to dxn [N, d], dW, db the
// gradients of: the gates (renorm and prob), the balance loss and the z-loss, each scaled by
// aux_scale (the weight of this micro-batch's losses in the step loss).
void router_backward(const Routing& r, const RouterSpec& spec, const float* dgate, const float* xn,
                     const float* W, float* dxn, float* dW, float* db, float aux_scale);

// The parts of router_forward / router_backward, for a backend that keeps the input, the weights and
// the GEMMs in its own memory (layers/step.hpp, the device policy) and the decisions on the host:
// router_forward = router_begin; x̄ = router_patch_means(xn) when patch > 1; r.probs =
// router_bias_rows(b) + x̄·W (a GEMM); router_decide. router_backward = router_backward_logits;
// dW += x̄ᵀ·dlogits; router_bias_grad; dxn += dlogits·Wᵀ (patch > 1: through
// router_patch_means_backward). The loops below are the CPU twins of the CUDA kernels of the same
// names (layers/step_cuda.cu): the same per-element arithmetic in the same order.
void router_begin(Routing& r, const RouterSpec& spec, int N, int d);                // shapes only
void router_patch_means(float* xm, const float* xn, int P, int ps, int d);          // xm [P, d] written
void router_bias_rows(float* logits, const float* b, int P, int E);                 // logits[p, :] = b
// r.probs holds the logits x̄·W + b [P, E] on entry: softmax, top-k, capacity, gates, losses.
void router_decide(Routing& r, const RouterSpec& spec, bool dropless);
// dlogits [P, E] written: the gates', the balance loss's and the z-loss's gradient.
void router_backward_logits(float* dlogits, const Routing& r, const RouterSpec& spec, const float* dgate,
                            float aux_scale);
void router_bias_grad(float* db, const float* dlogits, int P, int E);               // db += Σ_p rows, p order
void router_patch_means_backward(float* dxn, const float* dxm, int P, int ps, int d);  // dxn += dxm / ps

}  // namespace uoe
