#include "layers/model.hpp"

#include <chrono>
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

namespace {
// First token of chunk ch of a micro-batch of B sequences of T tokens cut into C chunks (chunk ch
// holds sequences [ch·B/C, (ch+1)·B/C); empty when C > B).
int chunk_first_token(int ch, int B, int T, int C) { return static_cast<int>(static_cast<int64_t>(ch) * B / C) * T; }
}  // namespace

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

void source_rows_build(SourceRows& src, const Routing& r, int B, int T, int chunks) {
  const ProfileScope profile(Phase::routing);
  // Kept patches expanded to tokens, chunk-major, then by global expert. Chunk c holds sequences
  // [c·B/C, (c+1)·B/C) (empty when C > B: every rank still takes part).
  const int E = r.E, C = chunks, ps = r.patch;
  src.chunk_begin.assign(C + 1, 0);
  src.chunk_offsets.assign(C, std::vector<int>(E + 1, 0));
  src.token.clear();
  src.gate.clear();
  for (int ch = 0; ch < C; ++ch) {
    const int tok0 = chunk_first_token(ch, B, T, C), tok1 = chunk_first_token(ch + 1, B, T, C);
    for (int e = 0; e < E; ++e) {
      // Rows of expert e are in patch order: binary-search the chunk's patch range.
      const int* first = r.row_patch.data() + r.row_offsets[e];
      const int* last = r.row_patch.data() + r.row_offsets[e + 1];
      const int* lo = std::lower_bound(first, last, tok0 / ps);
      const int* hi = std::lower_bound(first, last, tok1 / ps);
      for (const int* it = lo; it != hi; ++it) {
        const int i = static_cast<int>(it - r.row_patch.data());
        const int p = *it;
        for (int t = 0; t < ps; ++t) {
          src.token.push_back(p * ps + t);
          src.gate.push_back(p * r.k + r.row_slot[i]);
        }
      }
      src.chunk_offsets[ch][e + 1] = static_cast<int>(src.token.size()) - src.chunk_begin[ch];
    }
    src.chunk_begin[ch + 1] = static_cast<int>(src.token.size());
  }
  const int Rs = src.rows();
  src.seg.resize(Rs);
  src.pos.resize(Rs);
  for (int i = 0; i < Rs; ++i) {
    src.seg[i] = src.token[i] / T;
    src.pos[i] = src.token[i] % T;
  }
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

// The owner side of one chunk of a block: what reached this rank's experts, and their caches.
struct ExpertChunk {
  ExchangePlan plan;
  ExpertRows rows;              // owner side
  FloatBuffer y_owner;          // [R_dst, d] expert outputs
  FloatBuffer dy_owner, dx_owner;  // [R_dst, d] backward
  MlpExpertCache mlp;
  AttnExpertCache attn;
};

// Everything one block keeps from forward for backward.
//
// Chunks (the overlap scheduler): the micro-batch's sequences are cut into `chunks` groups; source
// rows are stored chunk-major (chunk c, then expert e, then token order), so each chunk's rows are
// one contiguous range that is exchanged and computed on its own. A token's rows all lie in its
// sequence's chunk, in expert order, so the combine sums in the same order whatever the chunk count.
struct Model::BlockCache {
  bool attention = false;
  bool routed = true;           // false: dense attention / dense MLP (routing_all_to_one)
  ExpertExchange* exchange = nullptr;  // the model's exchange (routed) or its local one (unrouted)
  RouterSpec router;
  FloatBuffer hin;              // [N, d] residual stream entering the block
  FloatBuffer xn;               // [N, d] normalised input
  FloatBuffer mean, rstd;       // [N]
  Routing routing;
  SourceRows src;               // the routed rows, chunk-major (source_rows_build)
  FloatBuffer x_src;            // [R_src, d]
  FloatBuffer y_src;            // [R_src, d] expert outputs back at the source
  std::vector<ExpertChunk> chunk;  // [chunks]
};

Model::Model(const ModelSpec& spec, uint64_t seed, ExpertExchange* exchange)
    : spec_(model_spec_resolve(spec)), exchange_(exchange), sync_scheduler_(false), scheduler_(&sync_scheduler_) {
  UOE_ASSERT(exchange_ != nullptr);
  const ModelSpec& s = spec_;
  const int d = s.d, L = s.layers, gd = s.heads_per_expert() * s.head_dim(), f = s.expert_ff();
  // Routed experts live where the exchange says; unrouted blocks' single expert lives everywhere.
  (s.attn_routed() ? exchange_ : &local_exchange_)->local_experts(s.attn_experts, &attn_e0_, &attn_e1_);
  (s.mlp_routed() ? exchange_ : &local_exchange_)->local_experts(s.experts, &mlp_e0_, &mlp_e1_);
  const float std_w = 0.02f;
  const float std_out = 0.02f / std::sqrt(2.0f * L);  // residual-branch output projections
  // Expert tensors: sharded over the exchange when routed, replicated (expert dimension 1) when not.
  auto add_experts = [this](bool routed, const std::string& name, std::vector<int64_t> shape, int e0, int e1,
                            InitKind init, float std, bool decay) {
    return routed ? params_.add_sharded(name, std::move(shape), e0, e1, init, std, decay)
                  : params_.add(name, std::move(shape), init, std, decay);
  };
  embed_ = params_.add("embed", {s.vocab, d}, InitKind::normal, std_w, true);
  for (int l = 0; l < L; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    BlockParams a{}, m{};
    const bool ar = s.attn_routed(), mr = s.mlp_routed();
    a.norm_scale = params_.add(p + "attn.norm.scale", {d}, InitKind::ones, 0, false);
    a.norm_bias = params_.add(p + "attn.norm.bias", {d}, InitKind::zeros, 0, false);
    a.router_w = ar ? params_.add(p + "attn.router.weight", {d, s.attn_experts}, InitKind::normal, std_w, true) : -1;
    a.router_b = ar ? params_.add(p + "attn.router.bias", {s.attn_experts}, InitKind::zeros, 0, false) : -1;
    a.w_in = add_experts(ar, p + "attn.wqkv", {s.attn_experts, d, 3 * gd}, attn_e0_, attn_e1_, InitKind::normal,
                         std_w, true);
    a.b_in = -1;
    a.w_out = add_experts(ar, p + "attn.wo", {s.attn_experts, gd, d}, attn_e0_, attn_e1_, InitKind::normal, std_out,
                          true);
    a.b_out = params_.add(p + "attn.bo", {d}, InitKind::zeros, 0, false);
    m.norm_scale = params_.add(p + "mlp.norm.scale", {d}, InitKind::ones, 0, false);
    m.norm_bias = params_.add(p + "mlp.norm.bias", {d}, InitKind::zeros, 0, false);
    m.router_w = mr ? params_.add(p + "mlp.router.weight", {d, s.experts}, InitKind::normal, std_w, true) : -1;
    m.router_b = mr ? params_.add(p + "mlp.router.bias", {s.experts}, InitKind::zeros, 0, false) : -1;
    m.w_in = add_experts(mr, p + "mlp.w1", {s.experts, d, f}, mlp_e0_, mlp_e1_, InitKind::normal, std_w, true);
    m.b_in = add_experts(mr, p + "mlp.b1", {s.experts, f}, mlp_e0_, mlp_e1_, InitKind::zeros, 0, false);
    m.w_out = add_experts(mr, p + "mlp.w2", {s.experts, f, d}, mlp_e0_, mlp_e1_, InitKind::normal, std_out, true);
    m.b_out = params_.add(p + "mlp.b2", {d}, InitKind::zeros, 0, false);
    blocks_.push_back(a);
    blocks_.push_back(m);
  }
  final_scale_ = params_.add("final_norm.scale", {d}, InitKind::ones, 0, false);
  final_bias_ = params_.add("final_norm.bias", {d}, InitKind::zeros, 0, false);
  params_.allocate_and_init(seed);

  for (int b = 0; b < 2 * L; ++b) {
    auto c = std::make_unique<BlockCache>();
    c->attention = (b % 2 == 0);
    c->routed = s.block_routed(b);
    c->exchange = c->routed ? exchange_ : &local_exchange_;
    c->router = block_router_spec(s, b);
    cache_.push_back(std::move(c));
  }
}

Model::~Model() = default;

void Model::set_schedule(CommScheduler* scheduler, int chunks) {
  UOE_ASSERT(chunks >= 1);
  scheduler_ = scheduler ? scheduler : &sync_scheduler_;
  chunks_ = chunks;
}

template <class Pass>
void Model::timed_phase(int b, bool backward, Pass&& pass) {
  if (!phase_log_) {
    pass();
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  const double busy0 = scheduler_->busy_seconds();
  pass();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  phase_log_->push_back({b, backward, wall, scheduler_->busy_seconds() - busy0});
}

void Model::block_forward(int b, float* h, int N, bool dropless, BlockStats* bs) {
  BlockCache& c = *cache_[b];
  const BlockParams& bp = blocks_[b];
  const ModelSpec& s = spec_;
  const int d = s.d, T = s.seq_len, B = N / T, C = chunks_;
  // The block reads its input from c.hin (kept for backward; forward() wrote it there) and writes
  // hin + its output to h: no copy of the residual stream per block.
  const float* hin = c.hin.data();
  c.xn.resize_uninit(static_cast<size_t>(N) * d);
  c.mean.resize_uninit(N);
  c.rstd.resize_uninit(N);
  layernorm_forward(c.xn.data(), c.mean.data(), c.rstd.data(), hin, params_.value(bp.norm_scale),
                    params_.value(bp.norm_bias), N, d);

  // 1. Route locally (an unrouted block: every token to its one expert).
  Routing& r = c.routing;
  if (c.routed)
    router_forward(r, c.router, c.xn.data(), params_.value(bp.router_w), params_.value(bp.router_b), N, d, dropless);
  else
    routing_all_to_one(r, N, d);
  // 2. Source rows: kept patches expanded to tokens, chunk-major, then by global expert.
  source_rows_build(c.src, r, B, T, C);
  const int E = r.E;
  const int Rs = c.src.rows();
  // An identity exchange (every expert here) moves nothing: each chunk's rows are gathered
  // straight into its ExpertRows and the experts write their outputs in source order (y_src).
  const bool identity = c.exchange->identity();
  if (!identity) {
    c.x_src.resize_uninit(static_cast<size_t>(Rs) * d);
    gather_rows(c.x_src.data(), c.xn.data(), c.src.token.data(), Rs, d);
  }
  c.y_src.resize_uninit(static_cast<size_t>(Rs) * d);
  if (c.chunk.size() < static_cast<size_t>(C)) c.chunk.resize(C);
  // Where each chunk's exchanges belong, for the collective watchdog's report.
  for (int ch = 0; ch < C; ++ch) {
    std::string& where = c.chunk[ch].plan.where;
    where = "layer ";
    where += std::to_string(b / 2);
    where += c.attention ? " attention (block " : " MLP (block ";
    where += std::to_string(b);
    where += "), chunk ";
    where += std::to_string(ch + 1);
    where += " of ";
    where += std::to_string(C);
  }

  // 3. Pipeline: the exchanges of chunks i+1.. and the return of chunk i−1 run on the
  //    communication thread while this thread computes chunk i's experts.
  CommScheduler& sched = *scheduler_;
  auto dispatch = [this, &c, d](int ch) {
    const size_t r0 = c.src.chunk_begin[ch];
    return scheduler_->submit([&c, ch, r0, d] {
      c.exchange->dispatch(c.chunk[ch].plan, c.src.chunk_offsets[ch], c.x_src.data() + r0 * d, c.src.seg.data() + r0,
                          c.src.pos.data() + r0, d, c.chunk[ch].rows);
    });
  };
  // Every chunk's rows are queued at once, ahead of any return: a forward pass moves as many bytes
  // as a backward pass for about half its compute, so it is exchange-bound and its link must not
  // wait for the compute (dispatching one chunk ahead left the link idle between a chunk's return
  // and the next dispatch: bench-overlap_layer at ratio 1, 4 chunks, 60% → 73% hidden). Each chunk
  // carries its own counts and metadata: sending every chunk's first, in one collective each
  // (dispatch_metadata_chunks, as the device step does to save host synchronisations), delays the
  // first chunk's rows and measured 1-3% slower end to end here.
  std::vector<CommScheduler::Ticket>& arrived = ws_arrived_;  // [C] each chunk's rows at their owners
  arrived.assign(C, 0);
  if (!identity)
    for (int ch = 0; ch < C; ++ch) arrived[ch] = dispatch(ch);
  // While the first dispatch is on the wire: what needs no expert output — the combine's token
  // lists, the block's figures and, when rows travel, the combine's residual + bias part (with an
  // identity exchange that stays fused into the combine below, one pass over h).
  std::vector<int>& first = ws_token_first_;  // [N + 1] CSR over tokens (shared workspace)
  std::vector<int>& rows_of = ws_token_rows_;  // [Rs] source rows, token-major
  source_rows_by_token(c.src, N, first, rows_of);
  const float* bias = params_.value(bp.b_out);
  if (!identity)
    for (int t = 0; t < N; ++t)
      residual_bias_row(h + static_cast<size_t>(t) * d, hin + static_cast<size_t>(t) * d, bias, d);
  if (bs) block_stats_from_routing(bs, s, b, r, T, c.attention, c.routed);
  std::vector<CommScheduler::Ticket>& returned = ws_returned_;  // [C] each chunk's return to the sources
  returned.assign(C, 0);
  for (int ch = 0; ch < C; ++ch) {
    ExpertChunk& k = c.chunk[ch];
    const size_t r0 = c.src.chunk_begin[ch];
    float* y;
    if (identity) {
      const int n = c.src.chunk_begin[ch + 1] - c.src.chunk_begin[ch];
      ExpertRows& rows = k.rows;
      rows.n_experts = E;
      rows.offsets = c.src.chunk_offsets[ch];
      rows.x.resize_uninit(static_cast<size_t>(n) * d);
      gather_rows(rows.x.data(), c.xn.data(), c.src.token.data() + r0, n, d);
      rows.seg.assign(c.src.seg.begin() + r0, c.src.seg.begin() + r0 + n);
      rows.pos.assign(c.src.pos.begin() + r0, c.src.pos.begin() + r0 + n);
      y = c.y_src.data() + r0 * d;
    } else {
      sched.wait(arrived[ch]);
      k.y_owner.resize_uninit(static_cast<size_t>(k.rows.rows()) * d);
      y = k.y_owner.data();
    }
    if (c.attention) {
      attn_experts_forward(y, k.attn, k.rows, params_.value(bp.w_in), params_.value(bp.w_out), d,
                           s.heads_per_expert(), s.head_dim());
    } else {
      mlp_experts_forward(y, k.mlp, k.rows, params_.value(bp.w_in), params_.value(bp.b_in), params_.value(bp.w_out),
                          d, s.expert_ff());
    }
    if (!identity)
      returned[ch] =
          sched.submit([&k, &c, r0, d] { c.exchange->to_source(k.plan, k.y_owner.data(), c.y_src.data() + r0 * d, d); });
  }

  // 4. Combine: h = hin + bias + Σ_kept w_e · y_e, experts in index order (deterministic).
  //    One pass over the tokens: each token's rows (at most k, listed in row order = expert order,
  //    since a token's rows all lie in its sequence's chunk) are summed into its output while it is
  //    in cache: the same additions in the same order as bias first, then a scatter-add by row.
  //    Chunk by chunk (a chunk's tokens have rows in that chunk only), each once its rows are back:
  //    the earlier chunks' combine runs while the last chunk's return is still on the wire.
  for (int ch = 0; ch < C; ++ch) {
    if (!identity) sched.wait(returned[ch]);
    for (int t = chunk_first_token(ch, B, T, C); t < chunk_first_token(ch + 1, B, T, C); ++t) {
      float* out = h + static_cast<size_t>(t) * d;
      if (identity) residual_bias_row(out, hin + static_cast<size_t>(t) * d, bias, d);
      for (int q = first[t]; q < first[t + 1]; ++q) {
        const int i = rows_of[q];
        scatter_add_row(out, c.y_src.data() + static_cast<size_t>(i) * d, d, r.gate[c.src.gate[i]]);
      }
    }
  }
  sched.wait_all();
}

void Model::block_backward(int b, float* dh, int N, float loss_scale) {
  BlockCache& c = *cache_[b];
  const BlockParams& bp = blocks_[b];
  const ModelSpec& s = spec_;
  const int d = s.d, C = chunks_;
  const Routing& r = c.routing;
  const int Rs = static_cast<int>(c.src.token.size());

  // Combine backward: dy = w·dh[token], dgate += <dh[token], y> (rows in ascending order), and
  // the output bias's gradient. Workspaces shared by all blocks (backward runs one block at a
  // time): allocated once.
  FloatBuffer& dgate = ws_dgate_;
  FloatBuffer& dy_src = ws_dy_src_;
  FloatBuffer& dx_src = ws_dx_src_;
  dgate.resize(static_cast<size_t>(r.P) * r.k);
  dy_src.resize_uninit(static_cast<size_t>(Rs) * d);
  dx_src.resize_uninit(static_cast<size_t>(Rs) * d);
  // Rows [i0, i1): their output gradients and/or their gates' gradients, in one pass over each row.
  // An unrouted block's gate 1 is a constant: no router to send its gradient to.
  auto combine_backward = [&](int i0, int i1, bool output, bool gate) {
    gate = gate && c.routed;
    for (int i = i0; i < i1; ++i) {
      const float* g = dh + static_cast<size_t>(c.src.token[i]) * d;
      if (output) scale_row(dy_src.data() + static_cast<size_t>(i) * d, g, d, r.gate[c.src.gate[i]]);
      if (gate) dgate[c.src.gate[i]] += dot_lanes(g, c.y_src.data() + static_cast<size_t>(i) * d, d);
    }
  };

  // The same pipeline in reverse: output gradients travel to the owners chunk by chunk; each
  // chunk's input gradient is formed first and sent back at once, and its weight gradients are
  // computed while that return (and the next chunk's dispatch) is on the wire. Only the first
  // chunk's output gradients are needed before its send; the rest of the combine backward, the
  // bias gradient and the router's backward (no expert result needed) fill the wait for it.
  CommScheduler& sched = *scheduler_;
  auto send = [this, &c, &dy_src, d](int ch) {
    ExpertChunk& k = c.chunk[ch];
    k.dy_owner.resize_uninit(static_cast<size_t>(k.rows.rows()) * d);
    const size_t r0 = c.src.chunk_begin[ch];
    return scheduler_->submit([&c, &k, &dy_src, r0, d] {
      c.exchange->to_owner(k.plan, dy_src.data() + r0 * d, k.dy_owner.data(), d);
    });
  };
  const bool identity = c.exchange->identity();  // as in block_forward: experts read/write source order
  CommScheduler::Ticket next = 0;
  if (identity) {
    combine_backward(0, Rs, true, true);
  } else {
    const int first_end = c.src.chunk_begin[1];
    combine_backward(0, first_end, true, false);
    next = send(0);
    combine_backward(0, first_end, false, true);
    combine_backward(first_end, Rs, true, true);
  }
  sum_rows_into(params_.grad(bp.b_out), dh, N, d);
  FloatBuffer& dxn = ws_dxn_;
  dxn.resize(static_cast<size_t>(N) * d);  // accumulated into: zeroed
  if (c.routed)
    router_backward(r, c.router, dgate.data(), c.xn.data(), params_.value(bp.router_w), dxn.data(),
                    params_.grad(bp.router_w), params_.grad(bp.router_b), loss_scale);
  for (int ch = 0; ch < C; ++ch) {
    ExpertChunk& k = c.chunk[ch];
    const size_t r0 = c.src.chunk_begin[ch];
    const float* dy;
    float* dx;
    if (identity) {
      dy = dy_src.data() + r0 * d;
      dx = dx_src.data() + r0 * d;
    } else {
      sched.wait(next);
      if (ch + 1 < C) next = send(ch + 1);
      k.dx_owner.resize_uninit(static_cast<size_t>(k.rows.rows()) * d);
      dy = k.dy_owner.data();
      dx = k.dx_owner.data();
    }
    if (c.attention)
      attn_experts_backward_data(dx, dy, k.attn, k.rows, params_.value(bp.w_in), params_.value(bp.w_out), d,
                                 s.heads_per_expert(), s.head_dim());
    else
      mlp_experts_backward_data(dx, dy, k.mlp, k.rows, params_.value(bp.w_in), params_.value(bp.w_out), d,
                                s.expert_ff());
    if (!identity)
      sched.submit([&c, &k, &dx_src, r0, d] { c.exchange->to_source(k.plan, k.dx_owner.data(), dx_src.data() + r0 * d, d); });
    if (c.attention)
      attn_experts_backward_weights(params_.grad(bp.w_in), params_.grad(bp.w_out), dy, k.attn, k.rows, d,
                                    s.heads_per_expert(), s.head_dim());
    else
      mlp_experts_backward_weights(params_.grad(bp.w_in), params_.grad(bp.b_in), params_.grad(bp.w_out), dy, k.mlp,
                                   k.rows, d, s.expert_ff());
  }
  sched.wait_all();
  scatter_add_rows(dxn.data(), dx_src.data(), c.src.token.data(), Rs, d, 1.0f);

  // LayerNorm backward into the residual stream's gradient.
  layernorm_backward(dh, params_.grad(bp.norm_scale), params_.grad(bp.norm_bias), dxn.data(), c.hin.data(),
                     params_.value(bp.norm_scale), c.mean.data(), c.rstd.data(), N, d);
  if (on_block_backward_) on_block_backward_(b);
}

void Model::forward(const int32_t* inputs, int B, bool dropless, ForwardStats* stats) {
  const ModelSpec& s = spec_;
  const int N = B * s.seq_len, d = s.d, V = s.vocab;
  tokens_.assign(inputs, inputs + N);
  for (int i = 0; i < N; ++i)
    if (inputs[i] < 0 || inputs[i] >= V) fail("token id ", inputs[i], " out of range [0, ", V, ")");
  // The residual stream: block b reads cache_[b]->hin and writes the next block's hin (the last
  // one writes h_), so every block's input stays for backward without a copy.
  const int nb = 2 * s.layers;
  h_.resize_uninit(static_cast<size_t>(N) * d);
  for (int b = 0; b < nb; ++b) cache_[b]->hin.resize_uninit(static_cast<size_t>(N) * d);
  gather_rows(nb > 0 ? cache_[0]->hin.data() : h_.data(), params_.value(embed_), inputs, N, d);
  stats->blocks.assign(2 * s.layers, BlockStats{});
  stats->aux_loss = 0;
  stats->flops = 0;
  for (int b = 0; b < 2 * s.layers; ++b) {
    timed_phase(b, false, [&] {
      block_forward(b, b + 1 < nb ? cache_[b + 1]->hin.data() : h_.data(), N, dropless, &stats->blocks[b]);
    });
    stats->aux_loss += stats->blocks[b].balance_loss + stats->blocks[b].z_loss;
    stats->flops += stats->blocks[b].flops;
  }
  stats->flops += flops_head_forward(s, N);
  hf_.resize_uninit(static_cast<size_t>(N) * d);
  fmean_.resize_uninit(N);
  frstd_.resize_uninit(N);
  layernorm_forward(hf_.data(), fmean_.data(), frstd_.data(), h_.data(), params_.value(final_scale_),
                    params_.value(final_bias_), N, d);
  logits_.resize_uninit(static_cast<size_t>(N) * V);
  gemm(false, true, N, V, d, 1.0f, hf_.data(), d, params_.value(embed_), d, 0.0f, logits_.data(), V);
  stats->tokens = N;
}

void Model::forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale,
                             ForwardStats* stats) {
  const ModelSpec& s = spec_;
  const int N = B * s.seq_len, d = s.d, V = s.vocab;
  forward(inputs, B, /*dropless=*/false, stats);
  // Loss = mean CE: dlogits = (softmax − onehot) · loss_scale / N.
  stats->ce_sum = crossentropy_forward_backward(logits_.data(), targets, N, V, loss_scale / static_cast<float>(N));

  // LM head (tied): logits = hf · Wembᵀ.
  gemm(true, false, V, d, N, 1.0f, logits_.data(), V, hf_.data(), d, 1.0f, params_.grad(embed_), d);
  FloatBuffer& dhf = ws_dhf_;
  dhf.resize_uninit(static_cast<size_t>(N) * d);
  gemm(false, false, N, d, V, 1.0f, logits_.data(), V, params_.value(embed_), d, 0.0f, dhf.data(), d);
  FloatBuffer& dh = ws_dh_;
  dh.resize(static_cast<size_t>(N) * d);  // accumulated into: zeroed
  layernorm_backward(dh.data(), params_.grad(final_scale_), params_.grad(final_bias_), dhf.data(), h_.data(),
                     params_.value(final_scale_), fmean_.data(), frstd_.data(), N, d);
  for (int b = 2 * s.layers - 1; b >= 0; --b) timed_phase(b, true, [&] { block_backward(b, dh.data(), N, loss_scale); });
  scatter_add_rows(params_.grad(embed_), dh.data(), tokens_.data(), N, d, 1.0f);
  if (on_block_backward_) on_block_backward_(-1);
}

const Routing& Model::routing(int b) const {
  UOE_ASSERT(b >= 0 && b < static_cast<int>(cache_.size()));
  return cache_[b]->routing;
}

uint64_t Model::routing_fingerprint() const {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ULL; };
  for (const auto& c : cache_) {
    for (int v : c->routing.choice) mix(static_cast<uint64_t>(v));
    for (uint8_t v : c->routing.kept) mix(v);
  }
  return h;
}

void Model::forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats) {
  const int N = B * spec_.seq_len;
  forward(inputs, B, /*dropless=*/true, stats);
  stats->ce_sum = crossentropy_forward(logits_.data(), targets, N, spec_.vocab);
}

}  // namespace uoe
