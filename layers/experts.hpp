// Expert computation on the OWNER side: whatever rows reached this rank's experts, packed
// expert-major. Rows of one expert are ordered so that the tokens of one sequence are contiguous
// and in position order (a "segment"); seg[r] identifies the sequence (unique per source rank and
// sequence), pos[r] is the token's true position (ExpertRows, parallel/expert_rows.hpp). UoME and
// SMHA experts share this interface, so the dispatch/combine of parallel/ serves both.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel/expert_rows.hpp"  // the rows, as the exchange delivers them
#include "runtime/tensor.hpp"

namespace uoe {

// Where every product of a chain allows it (runtime/gemm.hpp, gemm_rows_independent), the experts
// run the chain — products and row kernels — on each compute thread's share of every expert's rows,
// in one parallel region, rather than splitting each product and kernel over the threads in turn:
// the same bits, fewer thread rendezvous, and a row's intermediates stay in the cache of the core
// that made them. On by default; off for comparisons (bench-step --ab expert-rows).
void experts_set_row_parts(bool on);
bool experts_row_parts();
// Whether the experts' weight gradients go to the threads as whole products (on, the default) or
// as every thread's row part of each product (off); the same bits either way (layers/experts.cpp,
// expert_weight_gradients). The A/B switch of bench-step --ab whole-weights; set it between steps.
void experts_set_whole_weights(bool on);
// Whether the threads' shares of the experts' rows and of the attention segments are balanced (on,
// the default: contiguous runs of the experts' rows taken together; segments by Σ L²) or cut per
// expert and by segment count (off); the same bits either way (layers/experts.cpp). The A/B switch
// of bench-step --ab balanced; set it between steps.
void experts_set_balanced(bool on);

// ---- UoME: expert e computes y = GELU(x·W1_e + b1_e)·W2_e (a partial sum of the dense FFN) ----
struct MlpExpertCache {
  FloatBuffer g;  // [R, f] GELU'(h) of the pre-activation h (forward writes h here, then its derivative)
  FloatBuffer a;  // [R, f] GELU(h)
  FloatBuffer dh;  // [R, f] backward workspace
};
// y [R, d]; W1 [n_experts, d, f], b1 [n_experts, f], W2 [n_experts, f, d] (local slabs).
void mlp_experts_forward(float* y, MlpExpertCache& cache, const ExpertRows& rows, const float* W1,
                         const float* b1, const float* W2, int d, int f);
// Backward in two halves, so the scheduler can return dx to the sources before the weight
// gradients are formed: _data writes dx [R, d] (and keeps dh in the cache); _weights then
// accumulates dW1, db1, dW2. mlp_experts_backward does both.
void mlp_experts_backward_data(float* dx, const float* dy, MlpExpertCache& cache, const ExpertRows& rows,
                               const float* W1, const float* W2, int d, int f);
void mlp_experts_backward_weights(float* dW1, float* db1, float* dW2, const float* dy, const MlpExpertCache& cache,
                                  const ExpertRows& rows, int d, int f);
// dx [R, d] (overwritten); dW1, db1, dW2 accumulate.
void mlp_experts_backward(float* dx, float* dW1, float* db1, float* dW2, const float* dy,
                          MlpExpertCache& cache, const ExpertRows& rows, const float* W1,
                          const float* W2, int d, int f);

// ---- SMHA: expert a owns g heads: qkv = x·Wqkv_a ([d, 3·g·dh]: q heads, k heads, v heads),
// RoPE at true positions, causal attention within each segment, y = o·Wo_a ([g·dh, d]) ----
struct AttnExpertCache {
  FloatBuffer qkv;                  // [R, 3·g·dh] after RoPE on q and k
  FloatBuffer o;                    // [R, g·dh] attention outputs
  FloatBuffer att;                  // softmax probabilities, per (segment, head): [L, L] each
  std::vector<int> seg_begin;       // segment row ranges, over all local experts
  std::vector<int64_t> att_offset;  // [segments + 1] offsets into att (per segment, g heads)
  FloatBuffer d_o, d_qkv;           // backward workspaces [R, g·dh], [R, 3·g·dh]
  std::vector<float> rope_cos, rope_sin;  // [positions, dh/2] RoPE table, grown as needed
  int rope_positions = 0, rope_half = 0;
};
void attn_experts_forward(float* y, AttnExpertCache& cache, const ExpertRows& rows, const float* Wqkv,
                          const float* Wo, int d, int g, int dh);
// The same split as the MLP: _data writes dx (keeping dqkv in the cache), _weights accumulates
// dWqkv and dWo; attn_experts_backward does both.
void attn_experts_backward_data(float* dx, const float* dy, AttnExpertCache& cache, const ExpertRows& rows,
                                const float* Wqkv, const float* Wo, int d, int g, int dh);
void attn_experts_backward_weights(float* dWqkv, float* dWo, const float* dy, const AttnExpertCache& cache,
                                   const ExpertRows& rows, int d, int g, int dh);
void attn_experts_backward(float* dx, float* dWqkv, float* dWo, const float* dy, AttnExpertCache& cache,
                           const ExpertRows& rows, const float* Wqkv, const float* Wo, int d, int g, int dh);

}  // namespace uoe
