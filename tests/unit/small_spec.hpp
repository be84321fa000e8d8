// The small model the step tests train (unresolved: a test changes what it is about, then calls
// model_spec_resolve): 2 layers, d 32, 4 heads, 4 attention experts top-2, 4 MLP experts top-2 cut
// from d_ff 128, V 48, T 16, capacity factor 1.0 (tight: drops happen, so the capacity path is
// exercised), balance loss 0.01, z-loss 1e-3.
#pragma once
#include "layers/model.hpp"

namespace uoe {

inline ModelSpec small_test_spec(BlockType t = BlockType::uoe, int patch = 1) {
  ModelSpec s;
  s.block_type = t;
  s.layers = 2;
  s.d = 32;
  s.heads = 4;
  s.attn_experts = 4;
  s.attn_topk = 2;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 128;
  s.vocab = 48;
  s.seq_len = 16;
  s.patch_size = patch;
  s.capacity_factor = 1.0;
  s.aux_loss = 0.01;
  s.z_loss = 1e-3;
  return s;
}

}  // namespace uoe
