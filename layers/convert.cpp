#include "layers/convert.hpp"

#include "runtime/error.hpp"

namespace uoe {
namespace {

// Visits every element pair (dense index, UoE index) of layer l's decomposed tensors; `copy`
// moves one float in whichever direction the caller wants.
template <class Copy>
void visit_layer(const Model& model, int layer, Copy copy) {
  const ModelSpec& s = model.spec();
  const int d = s.d, Ea = s.attn_experts, g = s.heads_per_expert(), dh = s.head_dim(), gd = g * dh, Hd = s.heads * dh;
  const int E = s.experts, f = s.expert_ff(), F = s.d_ff;
  const BlockParams& a = model.blocks()[2 * layer];
  const BlockParams& m = model.blocks()[2 * layer + 1];
  for (int idx : {a.w_in, a.w_out, m.w_in, m.b_in, m.w_out}) {
    const ParamInfo& p = model.params().info(idx);
    if (p.expert_sharded && (p.expert_begin != 0 || p.expert_end != p.global_shape[0]))
      fail("dense conversion needs every expert on this rank; ", p.name, " holds experts [", p.expert_begin, ", ",
           p.expert_end, ")");
  }
  for (int e = 0; e < Ea; ++e)
    for (int i = 0; i < d; ++i)
      for (int c = 0; c < gd; ++c) {
        const size_t dense = static_cast<size_t>(i) * Hd + e * gd + c;
        const size_t base = (static_cast<size_t>(e) * d + i) * 3 * gd;
        copy(0, dense, a.w_in, base + c);
        copy(1, dense, a.w_in, base + gd + c);
        copy(2, dense, a.w_in, base + 2 * gd + c);
      }
  for (int e = 0; e < Ea; ++e)
    for (int c = 0; c < gd; ++c)
      for (int j = 0; j < d; ++j)
        copy(3, static_cast<size_t>(e * gd + c) * d + j, a.w_out, (static_cast<size_t>(e) * gd + c) * d + j);
  for (int e = 0; e < E; ++e)
    for (int u = 0; u < f; ++u) {
      for (int i = 0; i < d; ++i)
        copy(4, static_cast<size_t>(i) * F + e * f + u, m.w_in, (static_cast<size_t>(e) * d + i) * f + u);
      copy(5, static_cast<size_t>(e) * f + u, m.b_in, static_cast<size_t>(e) * f + u);
      for (int j = 0; j < d; ++j)
        copy(6, static_cast<size_t>(e * f + u) * d + j, m.w_out, (static_cast<size_t>(e) * f + u) * d + j);
    }
}

// The dense tensor numbered `which` in visit_layer's order (const or not, as `w` is).
template <class W>
auto* dense_tensor(W& w, int which) {
  decltype(&w.wq) t[] = {&w.wq, &w.wk, &w.wv, &w.wo, &w.w1, &w.b1, &w.w2};
  return t[which];
}

}  // namespace

DenseLayerWeights dense_from_uoe(const Model& model, int layer) {
  const ModelSpec& s = model.spec();
  const size_t Hd = static_cast<size_t>(s.heads) * s.head_dim();
  DenseLayerWeights w;
  w.wq.resize(s.d * Hd);
  w.wk.resize(s.d * Hd);
  w.wv.resize(s.d * Hd);
  w.wo.resize(Hd * s.d);
  w.w1.resize(static_cast<size_t>(s.d) * s.d_ff);
  w.b1.resize(s.d_ff);
  w.w2.resize(static_cast<size_t>(s.d_ff) * s.d);
  visit_layer(model, layer, [&](int which, size_t dense, int param, size_t off) {
    (*dense_tensor(w, which))[dense] = model.params().value(param)[off];
  });
  return w;
}

void dense_to_uoe(const DenseLayerWeights& w, Model& model, int layer) {
  visit_layer(model, layer, [&](int which, size_t dense, int param, size_t off) {
    model.params().value(param)[off] = (*dense_tensor(w, which))[dense];
  });
}

}  // namespace uoe
