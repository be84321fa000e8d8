// Model FLOPs, counted from the layer shapes and the tokens actually routed (docs/model.md, FLOP counts), for
// every block type. 2 FLOPs per multiply-add; matmuls only (router scores, expert GEMMs, attention
// scores and values, LM head); norms, GELU, softmax, RoPE and the combine are not counted.
// Training = 3 × forward (backward is two matmuls per forward matmul: data and weights).
//
// One piece of code: the Model fills BlockStats::work from its routing and sets BlockStats::flops
// and ForwardStats::flops with these functions; the study (bench/quality, through bench-model_flops)
// plans its budgets with flops_expected_forward_per_token.
//
// Per block, forward (d model width, E experts of the block, g·dh = gd attention width of one
// expert, f MLP expert width, rows R = tokens kept summed over experts, P patches scored):
//   router      2·P·d·E                               (0 for an unrouted block)
//   attention   R·(2·d·3gd + 2·gd·d) = 8·d·gd·R       (q/k/v and output projections)
//               + 4·gd·Σ_segments L²                  (q·kᵀ and P·v, g heads of dh, over the whole
//                                                      L×L tile of each (expert, sequence) segment:
//                                                      what the kernel executes, not the causal half)
//   MLP         R·(2·d·f + 2·f·d) = 4·d·f·R
// and the LM head 2·N·d·V over the N tokens.
#pragma once
#include <cstdint>
#include <vector>

namespace uoe {

struct ModelSpec;
struct Routing;

// What one block computed for a micro-batch of tokens: its routing outcome, in counts (integers,
// held in doubles so that the expected work of block_work_expected can be fractional).
struct BlockWork {
  double router_rows = 0;  // patches the router scored (0: unrouted block)
  double expert_rows = 0;  // token rows the experts computed: Σ_e tokens kept by e
  double attn_tiles = 0;   // attention blocks: Σ over (expert, sequence) segments of L² (L = tokens
                           // of the sequence the expert kept); 0 for MLP blocks
};

// Counts a block's work from its routing (kept rows per expert, in patch order) over sequences of
// seq_len tokens; `routed` false: an unrouted block (no router FLOPs).
BlockWork block_work_from_routing(const Routing& r, int seq_len, bool attention, bool routed);

// Forward FLOPs of block b (even: attention, odd: MLP) of a resolved spec for that work.
double flops_block_forward(const ModelSpec& s, int b, const BlockWork& w);
// Forward FLOPs of the LM head over `tokens` tokens.
double flops_head_forward(const ModelSpec& s, int64_t tokens);
// Forward FLOPs of a whole pass: every block's work ([2L]) plus the head over `tokens`.
double flops_model_forward(const ModelSpec& s, int64_t tokens, const std::vector<BlockWork>& blocks);

// The expected work per sequence of block b, for planning: dropless, every patch routed to k
// experts (unrouted: one), and for attention every (expert, sequence) segment of the average
// length L = T·k_a/E_a (E_a segments per sequence, Σ L² = T²·k_a²/E_a). With real routing Σ L² is
// larger (segment lengths vary: E[L²] ≥ E[L]²) and capacity drops make R smaller, so executed
// FLOPs differ from this by a few percent; ForwardStats::flops has the executed count.
BlockWork block_work_expected(const ModelSpec& s, int b);
// Analytic forward FLOPs per token (the expected work of every block, plus the head).
double flops_expected_forward_per_token(const ModelSpec& s);
// Analytic training FLOPs per token: 3 × forward.
inline double flops_expected_training_per_token(const ModelSpec& s) { return 3.0 * flops_expected_forward_per_token(s); }

}  // namespace uoe
