// The UoE language model (UOE_MODEL.md §4): tied embedding, L layers of pre-norm SMHA and UoME
// blocks, final LayerNorm, tied LM head, mean cross-entropy plus router losses. Forward and
// backward are written by hand; activations needed by backward are cached per block.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/experts.hpp"
#include "layers/params.hpp"
#include "layers/router.hpp"
#include "parallel/exchange.hpp"
#include "parallel/scheduler.hpp"
#include "runtime/config.hpp"

namespace uoe {

struct ModelSpec {
  int layers = 4, d = 128, heads = 4, attn_experts = 4, attn_topk = 2, experts = 4, topk = 2, d_ff = 512;
  int vocab = 256, seq_len = 128, patch_size = 1;
  double capacity_factor = 1.25, aux_loss = 0.01, z_loss = 0.0;
  bool renorm = true;
  int head_dim() const { return d / heads; }
  int heads_per_expert() const { return heads / attn_experts; }
  int expert_ff() const { return d_ff / experts; }
};
ModelSpec model_spec_from_config(const Config& c, int vocab);

// Figures of one forward pass, per block (2L blocks: layer l's SMHA is block 2l, UoME 2l+1).
struct BlockStats {
  std::vector<int> chosen;  // [E] patches choosing each expert
  int patches = 0;          // P
  int k = 0;
  int dropped = 0;          // (patch, choice) assignments over capacity
  double balance_loss = 0, z_loss = 0;
  double flops = 0;         // forward FLOPs of the block on this rank (see ForwardStats)
};
struct ForwardStats {
  double ce_sum = 0;        // Σ −log p(target) over the tokens
  int64_t tokens = 0;
  double aux_loss = 0;      // Σ balance + z over the 2L routers
  double flops = 0;         // forward matmul FLOPs actually executed on this rank's tokens
                            // (rows routed, segments attended); training ≈ 3× this
  std::vector<BlockStats> blocks;
};

// Indices of one block's parameters in the ParamStore.
struct BlockParams {
  int norm_scale, norm_bias, router_w, router_b;
  int w_in, b_in, w_out, b_out;  // SMHA: wqkv, -1, wo, bo; UoME: w1, b1, w2, b2
};

class Model {
 public:
  // `exchange` decides which experts live on this rank; it must outlive the model.
  Model(const ModelSpec& spec, uint64_t seed, ExpertExchange* exchange);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  // One micro-batch of B sequences: inputs/targets [B·T]. Accumulates into params().grads() the
  // gradient of loss_scale · (mean CE + router losses). seg_base offsets the sequence ids this
  // rank gives its rows (unique across the ranks of an exchange).
  void forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale,
                        ForwardStats* stats);
  // Forward only, dropless (evaluation): returns stats with the CE sum. Writes logits' CE only.
  void forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats);

  // A hash of every block's routing decisions (choices and capacity drops) of the last forward
  // pass: lets tests check that a perturbation did not change which experts were used.
  uint64_t routing_fingerprint() const;
  // Output probabilities [N, V] of the last forward_eval (softmax of the logits).
  const float* last_probs() const { return logits_.data(); }

  // Exchanges run through `scheduler` (null: synchronously on the calling thread), each block
  // cut into `chunks` pipelined chunks. The scheduler must outlive the model.
  void set_schedule(CommScheduler* scheduler, int chunks);
  // Called after block b's backward (its gradients are final for this micro-batch) and with
  // b = −1 at the end of backward (embedding, final norm): lets gradient all-reduce start early.
  void set_backward_hook(std::function<void(int block)> hook) { on_block_backward_ = std::move(hook); }

  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  const ModelSpec& spec() const { return spec_; }
  const std::vector<BlockParams>& blocks() const { return blocks_; }
  int embed_index() const { return embed_; }
  int final_norm_scale_index() const { return final_scale_; }
  int final_norm_bias_index() const { return final_bias_; }

 private:
  struct BlockCache;
  void forward(const int32_t* inputs, int B, bool dropless, ForwardStats* stats);
  void block_forward(int b, float* h, int N, bool dropless, BlockStats* bs);
  void block_backward(int b, float* dh, int N, float loss_scale);

  ModelSpec spec_;
  ExpertExchange* exchange_;
  CommScheduler sync_scheduler_;  // the default: synchronous
  CommScheduler* scheduler_;
  int chunks_ = 1;
  std::function<void(int)> on_block_backward_;
  ParamStore params_;
  int embed_ = -1, final_scale_ = -1, final_bias_ = -1;
  std::vector<BlockParams> blocks_;  // [2L]
  int attn_e0_ = 0, attn_e1_ = 0, mlp_e0_ = 0, mlp_e1_ = 0;  // local expert ranges
  std::vector<std::unique_ptr<BlockCache>> cache_;           // [2L]
  // Model-level activations.
  FloatBuffer h_;        // [N, d] residual stream
  FloatBuffer hf_;       // [N, d] final-normed
  FloatBuffer fmean_, frstd_;  // [N]
  FloatBuffer logits_;   // [N, V]
  std::vector<int32_t> tokens_;  // [N]
  // Backward workspaces, reused by every block and step (no per-step allocation).
  FloatBuffer ws_dhf_, ws_dh_;                       // [N, d]
  FloatBuffer ws_dgate_;                             // [P, k]
  FloatBuffer ws_dy_src_, ws_dx_src_;                // [R_src, d]
  FloatBuffer ws_dy_owner_, ws_dx_owner_;            // [R_dst, d]
  FloatBuffer ws_dxn_;                               // [N, d]
};

}  // namespace uoe
