#include "layers/model.hpp"

#include "layers/expert_kinds.hpp"
#include "layers/source_rows.hpp"

#include <cmath>
#include <algorithm>
#include <cstring>

#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/kernels.hpp"
#include "runtime/profile.hpp"

namespace uoe {

BlockType block_type_parse(const std::string& name) {
  if (name == "uoe") return BlockType::uoe;
  if (name == "dense") return BlockType::dense;
  if (name == "moe") return BlockType::moe;
  fail("block type '", name, "': expected uoe, dense or moe");
}

const char* block_type_name(BlockType t) {
  switch (t) {
    case BlockType::uoe: return "uoe";
    case BlockType::dense: return "dense";
    case BlockType::moe: return "moe";
  }
  return "?";
}

ModelSpec model_spec_resolve(ModelSpec s) {
  if (!s.attn_routed()) s.attn_experts = s.attn_topk = 1;
  if (!s.mlp_routed()) s.experts = s.topk = 1;
  return s;
}

ModelSpec model_spec_from_config(const Config& c, int vocab) {
  ModelSpec s;
  s.block_type = block_type_parse(c.block_type);
  s.layers = c.layers;
  s.d = c.d_model;
  s.heads = c.heads;
  s.attn_experts = c.attn_experts;
  s.attn_topk = c.attn_topk;
  s.experts = c.experts;
  s.topk = c.topk;
  s.d_ff = c.d_ff;
  // moe: E experts of --expert-d-ff each (default d_ff / E, the uoe cut): F = E·f in all.
  if (s.block_type == BlockType::moe && c.expert_d_ff > 0) s.d_ff = c.experts * c.expert_d_ff;
  s.vocab = vocab;
  s.seq_len = c.seq_len;
  s.patch_size = c.patch_size;
  s.capacity_factor = c.capacity_factor;
  s.aux_loss = c.aux_loss;
  s.z_loss = c.z_loss;
  s.renorm = c.gate == "renorm";
  s.prob_gate = c.gate == "prob";
  return model_spec_resolve(s);
}

// The routing of an unrouted block: every token is its own patch, sent to expert 0 with gate 1,
// nothing dropped, no router losses. Written in the Routing layout so that the rest of the block
// (source rows, exchange, combine, backward) is the routed code path.
void routing_all_to_one(Routing& r, int N, int d) {
  r.N = N; r.P = N; r.E = 1; r.k = 1; r.patch = 1; r.d = d;
  r.xm.clear();
  r.probs.assign(N, 1.0f);
  r.lse.assign(N, 0.0f);
  r.choice.assign(N, 0);
  r.gate.assign(N, 1.0f);
  r.kept.assign(N, 1);
  r.chosen.assign(1, N);
  r.capacity_kept.assign(1, N);
  r.row_offsets.assign({0, N});
  r.row_patch.resize(N);
  for (int t = 0; t < N; ++t) r.row_patch[t] = t;
  r.row_slot.assign(N, 0);
  r.capacity = 0;
  r.balance_loss = r.z_loss = 0;
  r.dropped = 0;
}

RouterSpec block_router_spec(const ModelSpec& s, int b) {
  RouterSpec r;
  r.experts = s.block_experts(b);
  r.topk = s.block_topk(b);
  r.patch_size = s.patch_size;
  r.capacity_factor = s.capacity_factor;
  r.renorm = s.renorm;
  r.prob = s.prob_gate;
  r.aux_weight = s.aux_loss;
  r.z_weight = s.z_loss;
  return r;
}

void source_rows_cells(int* cells, const int* row_offsets, const int* row_patch, int S, int E, int ps, int T) {
  for (int s = 0; s < S; ++s)
    for (int e = 0; e < E; ++e) cells[static_cast<size_t>(s) * E + e] = source_rows_cell(row_offsets, row_patch, ps, T, s, e);
}

void source_rows_place(int32_t* token, int32_t* gate, int32_t* seg, int32_t* pos, int* first_src, int* first_route,
                       int* chunk_begin, int* chunk_offsets, const int* cells, const int* row_offsets,
                       const int* row_patch, const int* row_slot, int rows, int S, int E, int k, int ps, int T,
                       int C) {
  source_rows_layout(first_src, first_route, chunk_begin, chunk_offsets, cells, row_offsets, S, E, C, ps);
  for (int i = 0; i < rows; ++i)
    source_row_place(token, gate, seg, pos, first_src, first_route, row_offsets, row_patch, row_slot, E, k, ps, T, i);
}

namespace {
// The chunks' counts as SourceRows holds them, from the flat [C, E + 1] table.
void chunk_offsets_from_flat(SourceRows& src, const std::vector<int>& flat, int C, int E) {
  src.chunk_offsets.resize(C);
  for (int ch = 0; ch < C; ++ch)
    src.chunk_offsets[ch].assign(flat.begin() + static_cast<ptrdiff_t>(ch) * (E + 1),
                                 flat.begin() + static_cast<ptrdiff_t>(ch + 1) * (E + 1));
}
}  // namespace

void source_rows_build(SourceRows& src, const Routing& r, int B, int T, int chunks) {
  const ProfileScope profile(Phase::routing);
  // Kept patches expanded to tokens, chunk-major, then by global expert. Chunk c holds sequences
  // [c·B/C, (c+1)·B/C) (empty when C > B: every rank still takes part). The device's bodies
  // (layers/source_rows.hpp) through their CPU twins: the cells, then the layout and the rows.
  const int E = r.E, C = chunks, ps = r.patch, rows = r.row_offsets[E];
  src.cells.resize(static_cast<size_t>(B) * E);
  source_rows_cells(src.cells.data(), r.row_offsets.data(), r.row_patch.data(), B, E, ps, T);
  int Rs = 0;
  for (int c : src.cells) Rs += c * ps;
  // token and gate keep the capacities they had when they grew row by row (doubling from what they
  // held: tests/unit/test_memory_items.cpp holds the estimate to them), seg and pos their own.
  for (std::vector<int32_t>* v : {&src.token, &src.gate}) {
    if (static_cast<size_t>(Rs) > v->capacity()) {
      size_t cap = std::max<size_t>(v->capacity(), 1);
      while (cap < static_cast<size_t>(Rs)) cap *= 2;
      v->reserve(cap);
    }
    v->resize(Rs);
  }
  src.seg.resize(Rs);
  src.pos.resize(Rs);
  src.first_src.resize(src.cells.size());
  src.first_route.resize(src.cells.size());
  src.chunk_begin.resize(C + 1);
  std::vector<int> offsets(static_cast<size_t>(C) * (E + 1));
  source_rows_place(src.token.data(), src.gate.data(), src.seg.data(), src.pos.data(), src.first_src.data(),
                    src.first_route.data(), src.chunk_begin.data(), offsets.data(), src.cells.data(),
                    r.row_offsets.data(), r.row_patch.data(), r.row_slot.data(), rows, B, E, r.k, ps, T, C);
  chunk_offsets_from_flat(src, offsets, C, E);
}

void source_rows_from_cells(SourceRows& src, const std::vector<int>& row_offsets, int B, int chunks, int ps) {
  const int E = static_cast<int>(row_offsets.size()) - 1, C = chunks;
  src.first_src.resize(src.cells.size());
  src.first_route.resize(src.cells.size());
  src.chunk_begin.resize(C + 1);
  std::vector<int> offsets(static_cast<size_t>(C) * (E + 1));
  source_rows_layout(src.first_src.data(), src.first_route.data(), src.chunk_begin.data(), offsets.data(),
                     src.cells.data(), row_offsets.data(), B, E, C, ps);
  chunk_offsets_from_flat(src, offsets, C, E);
  src.token.clear();
  src.gate.clear();
  src.pos.clear();
  src.seg.resize(src.rows());
  for (int s = 0; s < B; ++s)
    for (int e = 0; e < E; ++e) source_rows_cell_segments(src.seg.data(), src.first_src.data(), src.cells.data(), E, ps, s, e);
}

void source_rows_by_token(const SourceRows& src, int N, std::vector<int>& first, std::vector<int>& rows) {
  const int Rs = src.rows();
  first.assign(N + 1, 0);
  for (int i = 0; i < Rs; ++i) ++first[src.token[i] + 1];
  for (int t = 0; t < N; ++t) first[t + 1] += first[t];
  rows.resize(Rs);
  for (int i = 0; i < Rs; ++i) rows[first[src.token[i]]++] = i;  // first[t] ends at t's end …
  for (int t = N; t > 0; --t) first[t] = first[t - 1];           // … shift back to the starts
  first[0] = 0;
}

void block_stats_from_routing(BlockStats* bs, const ModelSpec& s, int b, const Routing& r, int T, bool attention,
                              bool routed) {
  // FLOPs of this rank's tokens, counted from the routing (layers/flops.hpp; summed over the ranks
  // this equals what the experts executed wherever they live), and routing diagnostics.
  bs->work = block_work_from_routing(r, T, attention, routed);
  bs->flops = flops_block_forward(s, b, bs->work);
  bs->chosen = r.chosen;
  bs->patches = r.P;
  bs->k = r.k;
  bs->dropped = r.dropped;
  bs->balance_loss = r.balance_loss;
  bs->z_loss = r.z_loss;
  bs->entropy_sum = 0;
  if (r.figures_only) {  // decided on the device, which formed these (layers/router.hpp)
    bs->entropy_sum = routed ? r.entropy_sum : 0;
    bs->experts_per_token.assign(r.experts_per_token.begin(), r.experts_per_token.end());
    return;
  }
  if (routed) {
    for (int p = 0; p < r.P; ++p) {
      const float* pr = r.probs.data() + static_cast<size_t>(p) * r.E;
      double h = 0;
      for (int e = 0; e < r.E; ++e)
        if (pr[e] > 0) h -= static_cast<double>(pr[e]) * std::log(static_cast<double>(pr[e]));
      bs->entropy_sum += h;
    }
  }
  bs->experts_per_token.assign(r.k + 1, 0);
  for (int p = 0; p < r.P; ++p) {
    int kept = 0;
    for (int j = 0; j < r.k; ++j) kept += r.kept[static_cast<size_t>(p) * r.k + j];
    bs->experts_per_token[kept] += r.patch;
  }
}

Model::Model(const ModelSpec& spec, uint64_t seed, ExpertExchange* exchange)
    : spec_(model_spec_resolve(spec)), exchange_(exchange) {
  UOE_ASSERT(exchange_ != nullptr);
  const ModelSpec& s = spec_;
  const int d = s.d, L = s.layers;
  const float std_w = 0.02f;
  const float std_out = 0.02f / std::sqrt(2.0f * L);  // residual-branch output projections
  embed_ = params_.add("embed", {s.vocab, d}, InitKind::normal, std_w, true);
  for (int l = 0; l < L; ++l) {
    for (int b = 2 * l; b < 2 * l + 2; ++b) {
      visit_expert_kind(block_expert_kind(s, b), [&](auto kind) {
        const std::string p = "layers." + std::to_string(l) + "." + kind.param_prefix + ".";
        const bool routed = s.block_routed(b);
        const int E = s.block_experts(b);
        // Routed experts live where the exchange says; an unrouted block's one expert lives everywhere.
        ExpertParamSite site{&params_, "layers." + std::to_string(l) + ".", routed, 0, 1, std_w, std_out};
        if (routed) exchange_->local_experts(E, &site.e0, &site.e1);
        BlockParams bp{};
        bp.norm_scale = params_.add(p + "norm.scale", {d}, InitKind::ones, 0, false);
        bp.norm_bias = params_.add(p + "norm.bias", {d}, InitKind::zeros, 0, false);
        bp.router_w = routed ? params_.add(p + "router.weight", {d, E}, InitKind::normal, std_w, true) : -1;
        bp.router_b = routed ? params_.add(p + "router.bias", {E}, InitKind::zeros, 0, false) : -1;
        kind.add_params(site, s, &bp);
        bp.b_out = params_.add(p + kind.out_bias, {d}, InitKind::zeros, 0, false);
        blocks_.push_back(bp);
      });
    }
  }
  final_scale_ = params_.add("final_norm.scale", {d}, InitKind::ones, 0, false);
  final_bias_ = params_.add("final_norm.bias", {d}, InitKind::zeros, 0, false);
  params_.allocate_and_init(seed);
}

}  // namespace uoe
