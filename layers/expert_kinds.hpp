// Expert kinds (docs/architecture.md, Where do I add… an expert kind): what the step asks of a
// block's experts. Each kind is a type providing its parameters (names, shapes, initialisation),
// its forward, its backward for data and for weights, its FLOPs per row and its activation memory
// per row, in one place; the pipeline (layers/step.hpp) asks the block's kind, not the block's
// index. Today's kinds:
//   AttentionExperts  SMHA: expert a owns g = H / E_a heads (docs/model.md, SMHA)
//   MlpExperts        UoME: expert e owns f = d_ff / E hidden columns (docs/model.md, UoME); the
//                     standard MoE's independent experts are the same computation with a free f
// Dense blocks are the same kinds with one expert taking every token (docs/model.md, Baselines).
#pragma once
#include <cstdint>
#include <string>
#include <utility>

#include "layers/model.hpp"
#include "runtime/param_store.hpp"

namespace uoe {

enum class ExpertKind { attention, mlp };

// Layer l's blocks: 2l attention, 2l + 1 MLP.
inline ExpertKind block_expert_kind(const ModelSpec&, int b) { return b % 2 == 0 ? ExpertKind::attention : ExpertKind::mlp; }

// A block's expert weights (this rank's slabs) and their gradients; b_in null when the kind has none.
struct ExpertWeights {
  const float* w_in;
  const float* b_in;
  const float* w_out;
};
struct ExpertWeightGrads {
  float* w_in;
  float* b_in;
  float* w_out;
};

// How a kind registers its tensors: sharded over the experts [e0, e1) of this rank when routed,
// replicated with expert dimension 1 when not (docs/model.md, Baselines).
struct ExpertParamSite {
  ParamStore* store;
  std::string prefix;  // "layers.<l>."
  bool routed;
  int e0, e1;          // local experts
  float std_in, std_out;
  int add(const std::string& name, std::vector<int64_t> shape, InitKind init, float std, bool decay) const {
    return routed ? store->add_sharded(prefix + name, std::move(shape), e0, e1, init, std, decay)
                  : store->add(prefix + name, std::move(shape), init, std, decay);
  }
};

// What a kind's memory depends on besides the spec (layers/memory.cpp): the rows its experts hold
// on this rank, and for attention the (expert, sequence) segments and their length.
struct ExpertMemoryShape {
  double rows = 0, segments = 0, segment_len = 0, seq_len = 0;
};

struct AttentionExperts {
  static constexpr ExpertKind kind = ExpertKind::attention;
  static constexpr const char* name = "attention";
  static constexpr const char* param_prefix = "attn";
  static constexpr const char* out_bias = "bo";  // the block's output bias [d], replicated
  static int experts(const ModelSpec& s) { return s.attn_experts; }
  // Wqkv [E, d, 3·g·dh] (q heads, k heads, v heads), Wo [E, g·dh, d]; no input bias.
  static void add_params(const ExpertParamSite& at, const ModelSpec& s, BlockParams* p) {
    const int gd = s.heads_per_expert() * s.head_dim();
    p->w_in = at.add("attn.wqkv", {s.attn_experts, s.d, 3 * gd}, InitKind::normal, at.std_in, true);
    p->b_in = -1;
    p->w_out = at.add("attn.wo", {s.attn_experts, gd, s.d}, InitKind::normal, at.std_out, true);
  }
  template <class Be, class Chunk>
  void forward(Be& be, float* y, Chunk& k, const ExpertWeights& w, const ModelSpec& s) const {
    be.attn_forward(y, k.attn, k.rows, w.w_in, w.w_out, s.d, s.heads_per_expert(), s.head_dim());
  }
  template <class Be, class Chunk>
  void backward_data(Be& be, float* dx, const float* dy, Chunk& k, const ExpertWeights& w, const ModelSpec& s) const {
    be.attn_backward_data(dx, dy, k.attn, k.rows, w.w_in, w.w_out, s.d, s.heads_per_expert(), s.head_dim());
  }
  template <class Be, class Chunk>
  void backward_weights(Be& be, ExpertWeightGrads& g, const float* dy, Chunk& k, const ModelSpec& s) const {
    be.attn_backward_weights(g.w_in, g.w_out, dy, k.attn, k.rows, s.d, s.heads_per_expert(), s.head_dim());
  }
  // Forward FLOPs per row (projections) and per L² of a segment (scores and values): layers/flops.hpp.
  static double flops_per_row(const ModelSpec& s) {
    const double gd = static_cast<double>(s.heads_per_expert()) * s.head_dim();
    return 8.0 * s.d * gd;
  }
  static double flops_per_tile(const ModelSpec& s) { return 4.0 * s.heads_per_expert() * s.head_dim(); }
  // Memory: the parameters of one expert, and the bytes its caches keep for backward (qkv, o, the
  // attention probabilities of each segment, the segment index, the RoPE table) and its backward
  // workspaces (d_o, d_qkv, one segment's dP) — layers/experts.hpp, AttnExpertCache.
  static int64_t params_per_expert(const ModelSpec& s) {
    const int64_t d = s.d, w = int64_t{s.heads_per_expert()} * s.head_dim();
    return d * 3 * w + w * d;
  }
  static void cache_bytes(const ModelSpec& s, const ExpertMemoryShape& m, double* kept, double* backward) {
    const double w = static_cast<double>(int64_t{s.heads_per_expert()} * s.head_dim());
    const double g = s.heads_per_expert(), dh = s.head_dim(), R = m.rows, len = m.segment_len, T = m.seq_len;
    *kept += 4.0 * R * 4 * w;                                 // qkv [R, 3·g·dh], o [R, g·dh]
    *kept += 4.0 * g * m.segments * len * len;                // attention probabilities
    *kept += (4.0 + 8.0) * (m.segments + 1) + 4.0 * T * dh;   // segment index; RoPE table
    *backward += 4.0 * R * 4 * w + 4.0 * T * T;               // d_o, d_qkv; one segment's dP
  }
};

struct MlpExperts {
  static constexpr ExpertKind kind = ExpertKind::mlp;
  static constexpr const char* name = "MLP";
  static constexpr const char* param_prefix = "mlp";
  static constexpr const char* out_bias = "b2";
  static int experts(const ModelSpec& s) { return s.experts; }
  // W1 [E, d, f], b1 [E, f], W2 [E, f, d].
  static void add_params(const ExpertParamSite& at, const ModelSpec& s, BlockParams* p) {
    const int f = s.expert_ff();
    p->w_in = at.add("mlp.w1", {s.experts, s.d, f}, InitKind::normal, at.std_in, true);
    p->b_in = at.add("mlp.b1", {s.experts, f}, InitKind::zeros, 0, false);
    p->w_out = at.add("mlp.w2", {s.experts, f, s.d}, InitKind::normal, at.std_out, true);
  }
  template <class Be, class Chunk>
  void forward(Be& be, float* y, Chunk& k, const ExpertWeights& w, const ModelSpec& s) const {
    be.mlp_forward(y, k.mlp, k.rows, w.w_in, w.b_in, w.w_out, s.d, s.expert_ff());
  }
  template <class Be, class Chunk>
  void backward_data(Be& be, float* dx, const float* dy, Chunk& k, const ExpertWeights& w, const ModelSpec& s) const {
    be.mlp_backward_data(dx, dy, k.mlp, k.rows, w.w_in, w.w_out, s.d, s.expert_ff());
  }
  template <class Be, class Chunk>
  void backward_weights(Be& be, ExpertWeightGrads& g, const float* dy, Chunk& k, const ModelSpec& s) const {
    be.mlp_backward_weights(g.w_in, g.b_in, g.w_out, dy, k.mlp, k.rows, s.d, s.expert_ff());
  }
  static double flops_per_row(const ModelSpec& s) { return 4.0 * s.d * s.expert_ff(); }
  static double flops_per_tile(const ModelSpec&) { return 0; }
  // Memory: W1, b1, W2 of one expert; caches h and a = GELU(h) [R, f], backward workspace dh [R, f]
  // (layers/experts.hpp, MlpExpertCache).
  static int64_t params_per_expert(const ModelSpec& s) {
    const int64_t d = s.d, w = s.expert_ff();
    return d * w + w + w * d;
  }
  static void cache_bytes(const ModelSpec& s, const ExpertMemoryShape& m, double* kept, double* backward) {
    const double w = s.expert_ff();
    *kept += 2 * 4.0 * m.rows * w;
    *backward += 4.0 * m.rows * w;
  }
};

// Calls f with the kind's type (an empty object): `visit_expert_kind(k, [&](auto kind) { … })`.
template <class F>
decltype(auto) visit_expert_kind(ExpertKind k, F&& f) {
  switch (k) {
    case ExpertKind::attention: return f(AttentionExperts{});
    case ExpertKind::mlp: break;
  }
  return f(MlpExperts{});
}

}  // namespace uoe
