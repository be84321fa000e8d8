// The UoE language model (docs/model.md, The network): tied embedding, L layers of pre-norm SMHA and UoME
// blocks, final LayerNorm, tied LM head, mean cross-entropy plus router losses. The Model is what is
// model: its spec, its parameters and which experts live on this rank. A step (layers/step.hpp)
// runs it — forward and backward, written by hand, on a backend.
//
// The same Model also runs the two baselines of the per-FLOP study (docs/model.md, FLOP counts), by block type:
//   uoe    routed SMHA (E_a attention experts, top-k_a) and routed UoME (E MLP experts cut from d_ff).
//   dense  the transformer the UoE layers are cut from (the equivalence law's limit) with no routing:
//          attention is ONE expert holding all H heads and the MLP ONE expert of width d_ff; every
//          token goes to it with gate 1; no routers, no router parameters, no balance loss. The
//          same expert kernels compute it (standard causal MHA with RoPE; GELU FFN).
//   moe    a standard token-choice MoE MLP (Switch/GShard) with dense attention as in `dense`.
//          Its MLP is E independent GELU experts of width f = expert_d_ff, top-k, capacity, the
//          same router, balance loss and gates as uoe. Note a UoME expert y = GELU(x·W1_e + b1_e)·W2_e
//          already IS an independent expert without output bias, and the block adds one bias b2:
//          the moe MLP is exactly that computation with W1 [E, d, f] where f is a free width (the
//          Switch expert size, typically the dense d_ff) instead of d_ff / E. So moe differs from
//          uoe in shapes (E·f hidden units in all, E× the dense MLP's parameters when f = d_ff)
//          and in its dense attention; its MLP code is the UoME code.
// Unrouted blocks (dense attention, the dense MLP) hold their weights REPLICATED on every rank
// (gradients all-reduced over the world, like the norms) with expert dimension 1 and the uoe
// names (attn.wqkv [1, d, 3·d], attn.wo [1, d, d], mlp.w1 [1, d, F], mlp.b1 [1, F], mlp.w2 [1, F, d]),
// and run on this rank's own tokens, never through the expert exchange: so dense and moe work
// with any --ep (moe shards its MLP experts over the ep group like uoe).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "layers/experts.hpp"
#include "layers/flops.hpp"
#include "layers/params.hpp"
#include "layers/router.hpp"
#include "parallel/exchange.hpp"
#include "runtime/config.hpp"

namespace uoe {

enum class BlockType { uoe, dense, moe };
BlockType block_type_parse(const std::string& name);  // "uoe" | "dense" | "moe"; throws otherwise
const char* block_type_name(BlockType t);

// Shapes and routing of a model. d_ff is the MLP's hidden width summed over its E experts (F = E·f):
// for uoe the dense width cut into experts, for moe E × the expert width, for dense the FFN width.
// Unrouted parts count as one expert taking every token: the Model (and model_spec_from_config)
// resolves attn_experts = attn_topk = 1 for dense and moe, and experts = topk = 1 for dense, so
// heads_per_expert(), expert_ff() and the per-block expert counts are the executed ones.
struct ModelSpec {
  BlockType block_type = BlockType::uoe;
  int layers = 4, d = 128, heads = 4, attn_experts = 4, attn_topk = 2, experts = 4, topk = 2, d_ff = 512;
  int vocab = 256, seq_len = 128, patch_size = 1;
  double capacity_factor = 1.25, aux_loss = 0.01, z_loss = 0.0;
  bool renorm = true;
  bool prob_gate = false;  // --gate prob: w = p_e
  int head_dim() const { return d / heads; }
  int heads_per_expert() const { return heads / attn_experts; }
  int expert_ff() const { return d_ff / experts; }
  bool attn_routed() const { return block_type == BlockType::uoe; }
  bool mlp_routed() const { return block_type != BlockType::dense; }
  bool block_routed(int b) const { return b % 2 == 0 ? attn_routed() : mlp_routed(); }
  int block_experts(int b) const { return b % 2 == 0 ? attn_experts : experts; }  // E of block b
  int block_topk(int b) const { return b % 2 == 0 ? attn_topk : topk; }
};
// From the trainer's options: --block-type, and for moe d_ff = experts × (--expert-d-ff, or
// --d-ff / --experts when 0). Resolved (see ModelSpec).
ModelSpec model_spec_from_config(const Config& c, int vocab);
// The spec with unrouted parts set to one expert, top-1 (idempotent).
ModelSpec model_spec_resolve(ModelSpec s);

// Figures of one forward pass, per block (2L blocks: layer l's SMHA is block 2l, UoME 2l+1).
// An unrouted block (dense attention or MLP) reads as one expert chosen by every token, k = 1,
// nothing dropped, entropy 0.
struct BlockStats {
  std::vector<int> chosen;  // [E] patches choosing each expert
  int patches = 0;          // P
  int k = 0;
  int dropped = 0;          // (patch, choice) assignments over capacity
  double balance_loss = 0, z_loss = 0;
  double entropy_sum = 0;   // Σ over patches of the router's entropy −Σ_e p_e·ln p_e (nats); mean = /patches
  std::vector<int64_t> experts_per_token;  // [k + 1] tokens processed by j = 0..k experts (after capacity)
  BlockWork work;           // what the block computed for this rank's tokens (layers/flops.hpp)
  double flops = 0;         // forward FLOPs of that work: flops_block_forward(spec, b, work)
};
struct ForwardStats {
  double ce_sum = 0;        // Σ −log p(target) over the tokens
  int64_t tokens = 0;
  double aux_loss = 0;      // Σ balance + z over the 2L routers
  double flops = 0;         // forward matmul FLOPs of this rank's tokens (rows routed, segments
                            // attended, wherever their experts run): flops_model_forward of the
                            // blocks' work; training = 3× this
  std::vector<BlockStats> blocks;
};

// Host-side bookkeeping of one block's routed rows (layers/step.hpp runs routing → rows → combine
// in this order for every backend).
//
// Source rows are the (token, expert) pairs a rank sends to the experts: kept patches expanded to
// their tokens, chunk-major (chunk c holds sequences [c·B/C, (c+1)·B/C)), then by global expert,
// then token order. A token's rows all lie in its sequence's chunk, in expert order, so the
// combine sums in the same order whatever the chunk count.
struct SourceRows {
  std::vector<int> chunk_begin;                 // [chunks + 1] source-row range of each chunk
  std::vector<std::vector<int>> chunk_offsets;  // [chunks][E + 1] rows per global expert, chunk-relative
  std::vector<int32_t> token;                   // [R_src] token of each source row
  std::vector<int32_t> gate;                    // [R_src] index into Routing::gate (patch·k + slot)
  std::vector<int32_t> seg, pos;                // [R_src] sequence and position of the token
  // Kept patches per (sequence, expert) [B, E], and each such cell's first source row and routing
  // row (layers/source_rows.hpp): what the tables are laid out from.
  std::vector<int> cells, first_src, first_route;
  int rows() const { return chunk_begin.empty() ? 0 : chunk_begin.back(); }
};
// From a micro-batch of B sequences of T tokens, routed as r, cut into `chunks` chunks (the bodies
// of layers/source_rows.hpp, which the device runs too).
void source_rows_build(SourceRows& src, const Routing& r, int B, int T, int chunks);
// The host's part when the device built the tables (docs/gpu.md, Routing): from src.cells [B, E]
// alone, chunk_begin, chunk_offsets, first_src, first_route and seg; token, gate and pos are left
// empty (they stay on the device).
void source_rows_from_cells(SourceRows& src, const std::vector<int>& row_offsets, int B, int chunks, int ps);
// The CPU twins of the device's kernels (cuda::, layers/step_cuda.hpp: the same names and
// arguments, less the stream), loops over layers/source_rows.hpp's bodies; source_rows_build is
// made of them. source_rows_cells: cells [S, E] from the routing's row_offsets [E + 1] and
// row_patch. source_rows_place: from the cells, the layout — first_src, first_route [S, E],
// chunk_begin [C + 1], chunk_offsets [C, E + 1] — and each source row's token, gate slot, sequence
// and position [R]; rows = row_offsets[E].
void source_rows_cells(int* cells, const int* row_offsets, const int* row_patch, int S, int E, int ps, int T);
void source_rows_place(int32_t* token, int32_t* gate, int32_t* seg, int32_t* pos, int* first_src, int* first_route,
                       int* chunk_begin, int* chunk_offsets, const int* cells, const int* row_offsets,
                       const int* row_patch, const int* row_slot, int rows, int S, int E, int k, int ps, int T, int C);
// First token of chunk ch of a micro-batch of B sequences of T tokens cut into C chunks (chunk ch
// holds sequences [ch·B/C, (ch+1)·B/C); empty when C > B).
inline int chunk_first_token(int ch, int B, int T, int C) {
  return static_cast<int>(static_cast<int64_t>(ch) * B / C) * T;
}
// Each token's source rows as CSR: rows[first[t] .. first[t+1]) ascending (first [N + 1], rows [R_src]).
void source_rows_by_token(const SourceRows& src, int N, std::vector<int>& first, std::vector<int>& rows);
// The routing of an unrouted block: every token its own patch, to expert 0 with gate 1, nothing
// dropped, no router losses (the Routing layout, so the rest of the block is the routed code path).
void routing_all_to_one(Routing& r, int N, int d);
// The router of block b (used by routed blocks only).
RouterSpec block_router_spec(const ModelSpec& s, int b);
// Block b's figures (work, FLOPs, loads, losses, entropy, experts per token) from its routing.
void block_stats_from_routing(BlockStats* bs, const ModelSpec& s, int b, const Routing& r, int T, bool attention,
                              bool routed);

// Indices of one block's parameters in the ParamStore (−1: the block has no such tensor).
struct BlockParams {
  int norm_scale, norm_bias, router_w, router_b;  // router_w/b −1 for an unrouted block
  int w_in, b_in, w_out, b_out;  // SMHA: wqkv, -1, wo, bo; UoME: w1, b1, w2, b2
};

class Model {
 public:
  // `exchange` decides which experts live on this rank; it must outlive the model.
  Model(const ModelSpec& spec, uint64_t seed, ExpertExchange* exchange);
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // The exchange of the routed blocks (unrouted blocks keep their tokens on this rank). A step
  // (layers/step.hpp) moves rows through it unless it is given another with the same experts.
  ExpertExchange* exchange() const { return exchange_; }

  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  const ModelSpec& spec() const { return spec_; }
  const std::vector<BlockParams>& blocks() const { return blocks_; }
  int embed_index() const { return embed_; }
  int final_norm_scale_index() const { return final_scale_; }
  int final_norm_bias_index() const { return final_bias_; }

 private:
  ModelSpec spec_;
  ExpertExchange* exchange_;  // routed blocks' experts
  ParamStore params_;
  int embed_ = -1, final_scale_ = -1, final_bias_ = -1;
  std::vector<BlockParams> blocks_;  // [2L]
};

}  // namespace uoe
