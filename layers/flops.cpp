#include "layers/flops.hpp"

#include "layers/expert_kinds.hpp"
#include "layers/model.hpp"
#include "layers/router.hpp"

namespace uoe {

BlockWork block_work_from_routing(const Routing& r, int seq_len, bool attention, bool routed) {
  BlockWork w;
  w.router_rows = routed ? r.P : 0;
  const int ps = r.patch;
  for (int e = 0; e < r.E; ++e) {
    const int n = r.row_offsets[e + 1] - r.row_offsets[e];
    w.expert_rows += static_cast<double>(n) * ps;
    if (!attention) continue;
    if (r.row_patch.empty() && !r.sequence_rows.empty()) {  // the tables stayed on the device: the cells
      const int S = static_cast<int>(r.sequence_rows.size()) / r.E;
      for (int s = 0; s < S; ++s) {
        const double len = static_cast<double>(r.sequence_rows[static_cast<size_t>(s) * r.E + e]) * ps;
        if (len > 0) w.attn_tiles += len * len;
      }
      continue;
    }
    // Rows of an expert are in patch order, so one sequence's rows are contiguous: a segment.
    int seq = -1;
    double len = 0;
    for (int i = r.row_offsets[e]; i < r.row_offsets[e + 1]; ++i) {
      const int s = r.row_patch[i] * ps / seq_len;
      if (s != seq) {
        w.attn_tiles += len * len;
        seq = s;
        len = 0;
      }
      len += ps;
    }
    w.attn_tiles += len * len;
  }
  return w;
}

double flops_block_forward(const ModelSpec& s, int b, const BlockWork& w) {
  const double d = s.d, E = s.block_experts(b);
  // The router, then the block's expert kind (layers/expert_kinds.hpp): per row, and per L² tile
  // of an (expert, sequence) segment.
  const double router = 2.0 * w.router_rows * d * E;
  return visit_expert_kind(block_expert_kind(s, b), [&](auto kind) {
    return router + w.expert_rows * kind.flops_per_row(s) + kind.flops_per_tile(s) * w.attn_tiles;
  });
}

double flops_head_forward(const ModelSpec& s, int64_t tokens) {
  return 2.0 * static_cast<double>(tokens) * s.d * s.vocab;
}

double flops_model_forward(const ModelSpec& s, int64_t tokens, const std::vector<BlockWork>& blocks) {
  double fl = 0;
  for (size_t b = 0; b < blocks.size(); ++b) fl += flops_block_forward(s, static_cast<int>(b), blocks[b]);
  return fl + flops_head_forward(s, tokens);
}

BlockWork block_work_expected(const ModelSpec& spec, int b) {
  const ModelSpec s = model_spec_resolve(spec);
  const double T = s.seq_len, k = s.block_topk(b), E = s.block_experts(b);
  BlockWork w;
  w.router_rows = s.block_routed(b) ? T / s.patch_size : 0;
  w.expert_rows = T * k;
  if (b % 2 == 0) {
    const double L = T * k / E;  // average segment: the sequence's tokens an expert keeps
    w.attn_tiles = E * L * L;
  }
  return w;
}

double flops_expected_forward_per_token(const ModelSpec& spec) {
  const ModelSpec s = model_spec_resolve(spec);
  std::vector<BlockWork> blocks;
  for (int b = 0; b < 2 * s.layers; ++b) blocks.push_back(block_work_expected(s, b));
  return flops_model_forward(s, s.seq_len, blocks) / s.seq_len;
}

}  // namespace uoe
