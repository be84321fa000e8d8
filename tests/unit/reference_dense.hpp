// Test oracles, written independently of layers/: plain loops in double over the weights of a
// uoe::Model read back as a DENSE transformer (docs/model.md: Experts by equivalent decomposition,
// Selective attention, The network).
//   - ref_dense_forward: the dense pre-LN transformer (causal MHA with RoPE, GELU FFN, tied head).
//   - ref_uoe_forward:   the same weights cut into experts and routed as docs/model.md, Routing says (patch means,
//                        top-k, capacity highest-p first, renorm/sum gates, bias-only for a patch
//                        dropped by every expert it chose), also in plain loops.
// The building blocks (LayerNorm, RoPE, attention over a set of heads and tokens, FFN over a set of
// hidden units) are exposed so the expert-level tests can use them directly.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "layers/convert.hpp"
#include "layers/model.hpp"
#include "runtime/rng.hpp"

namespace uoe_ref {

using Vec = std::vector<double>;

inline Vec to_vec(const float* p, size_t n) { return Vec(p, p + n); }
inline Vec to_vec(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

// ---- building blocks ----

// out[C] = (x − mean)/sqrt(var + 1e-5)·s + b, population variance.
inline void ref_layernorm(double* out, const double* x, const double* s, const double* b, int C) {
  double m = 0;
  for (int i = 0; i < C; ++i) m += x[i];
  m /= C;
  double v = 0;
  for (int i = 0; i < C; ++i) v += (x[i] - m) * (x[i] - m);
  v /= C;
  const double r = 1.0 / std::sqrt(v + 1e-5);
  for (int i = 0; i < C; ++i) out[i] = (x[i] - m) * r * s[i] + b[i];
}

// Rotate-half RoPE on one head vector: dims i and i + dh/2 rotated by pos·10000^(−i/(dh/2)).
inline void ref_rope(double* v, int dh, int pos) {
  const int half = dh / 2;
  for (int i = 0; i < half; ++i) {
    const double ang = pos * std::pow(10000.0, -static_cast<double>(i) / half);
    const double a = v[i], b = v[i + half];
    v[i] = a * std::cos(ang) - b * std::sin(ang);
    v[i + half] = b * std::cos(ang) + a * std::sin(ang);
  }
}

inline double ref_gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

// Causal attention of heads [h0, h1) over the n rows x [n, d] of ONE sequence whose true
// positions pos[n] ascend; row i sees row j iff pos[j] ≤ pos[i]. Adds Σ_h o_h·Wo[rows of h] to
// out [n, d] (no output bias). wq/wk/wv [d, Hd], wo [Hd, d], Hd = H·dh.
inline void ref_attention_heads(double* out, const double* x, const int* pos, int n, int d, int dh, int Hd,
                                const double* wq, const double* wk, const double* wv, const double* wo, int h0,
                                int h1) {
  std::vector<Vec> q(n, Vec(dh)), k(n, Vec(dh)), v(n, Vec(dh));
  Vec o(dh), sc(n);
  for (int h = h0; h < h1; ++h) {
    for (int i = 0; i < n; ++i) {
      for (int c = 0; c < dh; ++c) {
        double sq = 0, sk = 0, sv = 0;
        for (int j = 0; j < d; ++j) {
          const size_t w = static_cast<size_t>(j) * Hd + h * dh + c;
          sq += x[static_cast<size_t>(i) * d + j] * wq[w];
          sk += x[static_cast<size_t>(i) * d + j] * wk[w];
          sv += x[static_cast<size_t>(i) * d + j] * wv[w];
        }
        q[i][c] = sq;
        k[i][c] = sk;
        v[i][c] = sv;
      }
      ref_rope(q[i].data(), dh, pos[i]);
      ref_rope(k[i].data(), dh, pos[i]);
    }
    for (int i = 0; i < n; ++i) {
      double mx = -1e300;
      for (int j = 0; j < n; ++j) {
        if (pos[j] > pos[i]) continue;
        double s = 0;
        for (int c = 0; c < dh; ++c) s += q[i][c] * k[j][c];
        sc[j] = s / std::sqrt(static_cast<double>(dh));
        mx = std::max(mx, sc[j]);
      }
      double z = 0;
      for (int j = 0; j < n; ++j)
        if (pos[j] <= pos[i]) z += std::exp(sc[j] - mx);
      std::fill(o.begin(), o.end(), 0.0);
      for (int j = 0; j < n; ++j) {
        if (pos[j] > pos[i]) continue;
        const double p = std::exp(sc[j] - mx) / z;
        for (int c = 0; c < dh; ++c) o[c] += p * v[j][c];
      }
      for (int col = 0; col < d; ++col) {
        double s = 0;
        for (int c = 0; c < dh; ++c) s += o[c] * wo[static_cast<size_t>(h * dh + c) * d + col];
        out[static_cast<size_t>(i) * d + col] += s;
      }
    }
  }
}

// Adds Σ_{u ∈ [u0, u1)} GELU(x·W1[:, u] + b1[u])·W2[u, :] to out [d] for one row x [d] (no b2).
// w1 [d, F], b1 [F], w2 [F, d].
inline void ref_ffn_units(double* out, const double* x, int d, int F, const double* w1, const double* b1,
                          const double* w2, int u0, int u1) {
  for (int u = u0; u < u1; ++u) {
    double hsum = b1[u];
    for (int j = 0; j < d; ++j) hsum += x[j] * w1[static_cast<size_t>(j) * F + u];
    const double a = ref_gelu(hsum);
    for (int col = 0; col < d; ++col) out[col] += a * w2[static_cast<size_t>(u) * d + col];
  }
}

// ---- the whole network ----

struct RefLayer {
  Vec attn_norm_s, attn_norm_b;      // [d]
  Vec attn_router_w, attn_router_b;  // [d, Ea], [Ea]
  Vec wq, wk, wv;                    // [d, H·dh]
  Vec wo;                            // [H·dh, d]
  Vec bo;                            // [d]
  Vec mlp_norm_s, mlp_norm_b;        // [d]
  Vec mlp_router_w, mlp_router_b;    // [d, E], [E]
  Vec w1, b1, w2, b2;                // [d, F], [F], [F, d], [d]
};

struct RefModel {
  int d = 0, heads = 0, dh = 0, d_ff = 0, vocab = 0, seq_len = 0;
  int attn_experts = 1, experts = 1;
  Vec embed;             // [V, d] (tied head)
  std::vector<RefLayer> layers;
  Vec final_s, final_b;  // [d]
};

inline Vec ref_param(const uoe::Model& m, const std::string& name) {
  const int i = m.params().find(name);
  if (i < 0) throw std::runtime_error("reference: no parameter named " + name);
  return to_vec(m.params().value(i), m.params().info(i).size);
}

// The dense weights of a single-rank model: decomposed tensors through dense_from_uoe, the rest by name.
inline RefModel ref_from_model(const uoe::Model& m) {
  const uoe::ModelSpec& s = m.spec();
  RefModel r;
  r.d = s.d;
  r.heads = s.heads;
  r.dh = s.head_dim();
  r.d_ff = s.d_ff;
  r.vocab = s.vocab;
  r.seq_len = s.seq_len;
  r.attn_experts = s.attn_experts;
  r.experts = s.experts;
  r.embed = ref_param(m, "embed");
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    const uoe::DenseLayerWeights w = uoe::dense_from_uoe(m, l);
    RefLayer L;
    L.attn_norm_s = ref_param(m, p + "attn.norm.scale");
    L.attn_norm_b = ref_param(m, p + "attn.norm.bias");
    L.attn_router_w = ref_param(m, p + "attn.router.weight");
    L.attn_router_b = ref_param(m, p + "attn.router.bias");
    L.wq = to_vec(w.wq);
    L.wk = to_vec(w.wk);
    L.wv = to_vec(w.wv);
    L.wo = to_vec(w.wo);
    L.bo = ref_param(m, p + "attn.bo");
    L.mlp_norm_s = ref_param(m, p + "mlp.norm.scale");
    L.mlp_norm_b = ref_param(m, p + "mlp.norm.bias");
    L.mlp_router_w = ref_param(m, p + "mlp.router.weight");
    L.mlp_router_b = ref_param(m, p + "mlp.router.bias");
    L.w1 = to_vec(w.w1);
    L.b1 = to_vec(w.b1);
    L.w2 = to_vec(w.w2);
    L.b2 = ref_param(m, p + "mlp.b2");
    r.layers.push_back(std::move(L));
  }
  r.final_s = ref_param(m, "final_norm.scale");
  r.final_b = ref_param(m, "final_norm.bias");
  return r;
}

// Row-wise LayerNorm of h [N, d].
inline Vec ref_layernorm_rows(const Vec& h, const Vec& s, const Vec& b, int N, int d) {
  Vec out(h.size());
  for (int t = 0; t < N; ++t)
    ref_layernorm(out.data() + static_cast<size_t>(t) * d, h.data() + static_cast<size_t>(t) * d, s.data(), b.data(), d);
  return out;
}

// Final LN, tied head, softmax: probabilities [N, V].
inline Vec ref_head(const RefModel& M, const Vec& h, int N) {
  const int d = M.d, V = M.vocab;
  const Vec hf = ref_layernorm_rows(h, M.final_s, M.final_b, N, d);
  Vec probs(static_cast<size_t>(N) * V);
  for (int t = 0; t < N; ++t) {
    double* p = probs.data() + static_cast<size_t>(t) * V;
    double mx = -1e300;
    for (int v = 0; v < V; ++v) {
      double s = 0;
      for (int j = 0; j < d; ++j) s += hf[static_cast<size_t>(t) * d + j] * M.embed[static_cast<size_t>(v) * d + j];
      p[v] = s;
      mx = std::max(mx, s);
    }
    double z = 0;
    for (int v = 0; v < V; ++v) z += std::exp(p[v] - mx);
    for (int v = 0; v < V; ++v) p[v] = std::exp(p[v] - mx) / z;
  }
  return probs;
}

inline Vec ref_embed(const RefModel& M, const int32_t* tokens, int N) {
  Vec h(static_cast<size_t>(N) * M.d);
  for (int t = 0; t < N; ++t)
    for (int j = 0; j < M.d; ++j) h[static_cast<size_t>(t) * M.d + j] = M.embed[static_cast<size_t>(tokens[t]) * M.d + j];
  return h;
}

// Dense transformer: probabilities [B·T, V].
inline Vec ref_dense_forward(const RefModel& M, const int32_t* tokens, int B) {
  const int T = M.seq_len, N = B * T, d = M.d, Hd = M.heads * M.dh;
  Vec h = ref_embed(M, tokens, N);
  std::vector<int> pos(T);
  for (int t = 0; t < T; ++t) pos[t] = t;
  for (const RefLayer& L : M.layers) {
    Vec xn = ref_layernorm_rows(h, L.attn_norm_s, L.attn_norm_b, N, d);
    Vec att(static_cast<size_t>(N) * d, 0.0);
    for (int b = 0; b < B; ++b)
      ref_attention_heads(att.data() + static_cast<size_t>(b) * T * d, xn.data() + static_cast<size_t>(b) * T * d,
                          pos.data(), T, d, M.dh, Hd, L.wq.data(), L.wk.data(), L.wv.data(), L.wo.data(), 0, M.heads);
    for (int t = 0; t < N; ++t)
      for (int j = 0; j < d; ++j) h[static_cast<size_t>(t) * d + j] += att[static_cast<size_t>(t) * d + j] + L.bo[j];
    xn = ref_layernorm_rows(h, L.mlp_norm_s, L.mlp_norm_b, N, d);
    for (int t = 0; t < N; ++t) {
      double* ht = h.data() + static_cast<size_t>(t) * d;
      ref_ffn_units(ht, xn.data() + static_cast<size_t>(t) * d, d, M.d_ff, L.w1.data(), L.b1.data(), L.w2.data(), 0,
                    M.d_ff);
      for (int j = 0; j < d; ++j) ht[j] += L.b2[j];
    }
  }
  return ref_head(M, h, N);
}

// Σ −log p(target) over the rows.
inline double ref_ce_sum(const Vec& probs, const int32_t* targets, int N, int V) {
  double s = 0;
  for (int t = 0; t < N; ++t) s -= std::log(probs[static_cast<size_t>(t) * V + targets[t]]);
  return s;
}

// ---- routing (docs/model.md, Routing), naive ----

struct RefRouteSpec {
  int attn_topk = 1, topk = 1, patch = 1;
  double capacity_factor = 0;  // 0 = dropless
  bool renorm = true;
  bool dropless = false;       // evaluation: capacity ignored
};

struct RefRoute {
  int P = 0, E = 0, k = 0, capacity = 0;
  Vec probs;                 // [P, E]
  std::vector<int> choice;   // [P, k]
  Vec gate;                  // [P, k]
  std::vector<char> kept;    // [P, k]
  int dropped = 0;           // (patch, choice) pairs over capacity
  int fully_dropped = 0;     // patches dropped by every expert they chose
  // Smallest nonzero gap between probabilities at a decision boundary (top-k cut, capacity cut):
  // float and double routing agree when this is well above float error. Exact ties (gap 0) are
  // deliberate in some tests and broken the same way by both (lower index first).
  double min_margin = 1e300;
};

inline RefRoute ref_route(const Vec& xn, const Vec& W, const Vec& b, int N, int d, int E, int k, const RefRouteSpec& s) {
  RefRoute r;
  const int ps = s.patch, P = N / ps;
  r.P = P;
  r.E = E;
  r.k = k;
  r.probs.assign(static_cast<size_t>(P) * E, 0.0);
  for (int p = 0; p < P; ++p) {
    Vec xm(d, 0.0);
    for (int t = 0; t < ps; ++t)
      for (int j = 0; j < d; ++j) xm[j] += xn[static_cast<size_t>(p * ps + t) * d + j] / ps;
    double* pr = r.probs.data() + static_cast<size_t>(p) * E;
    double mx = -1e300;
    for (int e = 0; e < E; ++e) {
      double z = b[e];
      for (int j = 0; j < d; ++j) z += xm[j] * W[static_cast<size_t>(j) * E + e];
      pr[e] = z;
      mx = std::max(mx, z);
    }
    double zs = 0;
    for (int e = 0; e < E; ++e) zs += std::exp(pr[e] - mx);
    for (int e = 0; e < E; ++e) pr[e] = std::exp(pr[e] - mx) / zs;
  }
  auto note_gap = [&r](double a, double bb) {
    const double g = std::fabs(a - bb);
    if (g > 0) r.min_margin = std::min(r.min_margin, g);
  };
  r.choice.assign(static_cast<size_t>(P) * k, -1);
  r.gate.assign(static_cast<size_t>(P) * k, 0.0);
  r.kept.assign(static_cast<size_t>(P) * k, 1);
  for (int p = 0; p < P; ++p) {
    const double* pr = r.probs.data() + static_cast<size_t>(p) * E;
    // Experts sorted by p descending, ties → lower index.
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [pr](int a, int bb) { return pr[a] > pr[bb]; });
    if (k < E) note_gap(pr[order[k - 1]], pr[order[k]]);
    double sum = 0;
    for (int j = 0; j < k; ++j) sum += pr[order[j]];
    for (int j = 0; j < k; ++j) {
      r.choice[static_cast<size_t>(p) * k + j] = order[j];
      r.gate[static_cast<size_t>(p) * k + j] = s.renorm ? k * pr[order[j]] / sum : 1.0;
    }
  }
  const bool limited = !s.dropless && s.capacity_factor > 0;
  r.capacity = limited ? static_cast<int>(std::ceil(s.capacity_factor * P * k / E)) : 0;
  for (int e = 0; e < E; ++e) {
    std::vector<std::pair<int, int>> cand;  // (patch, slot), patch ascending
    for (int p = 0; p < P; ++p)
      for (int j = 0; j < k; ++j)
        if (r.choice[static_cast<size_t>(p) * k + j] == e) cand.push_back({p, j});
    if (!limited || static_cast<int>(cand.size()) <= r.capacity) continue;
    std::stable_sort(cand.begin(), cand.end(), [&](const auto& a, const auto& bb) {
      return r.probs[static_cast<size_t>(a.first) * E + e] > r.probs[static_cast<size_t>(bb.first) * E + e];
    });
    note_gap(r.probs[static_cast<size_t>(cand[r.capacity - 1].first) * E + e],
             r.probs[static_cast<size_t>(cand[r.capacity].first) * E + e]);
    for (size_t i = r.capacity; i < cand.size(); ++i) {
      r.kept[static_cast<size_t>(cand[i].first) * k + cand[i].second] = 0;
      ++r.dropped;
    }
  }
  for (int p = 0; p < P; ++p) {
    bool any = false;
    for (int j = 0; j < k; ++j) any = any || r.kept[static_cast<size_t>(p) * k + j];
    if (!any) ++r.fully_dropped;
  }
  return r;
}

struct RefUoeResult {
  Vec probs;                    // [N, V]
  std::vector<RefRoute> route;  // [2L]: SMHA of layer l at 2l, UoME at 2l + 1
};

// The UoE network over the dense weights of M: attention expert a = heads [a·g, (a+1)·g), MLP
// expert e = hidden units [e·f, (e+1)·f); out = bias + Σ_{chosen, kept} w·y.
inline RefUoeResult ref_uoe_forward(const RefModel& M, const RefRouteSpec& s, const int32_t* tokens, int B) {
  const int T = M.seq_len, N = B * T, d = M.d, Hd = M.heads * M.dh, ps = s.patch;
  const int Ea = M.attn_experts, g = M.heads / Ea, E = M.experts, f = M.d_ff / E;
  RefUoeResult res;
  Vec h = ref_embed(M, tokens, N);
  for (const RefLayer& L : M.layers) {
    // SMHA
    Vec xn = ref_layernorm_rows(h, L.attn_norm_s, L.attn_norm_b, N, d);
    RefRoute ra = ref_route(xn, L.attn_router_w, L.attn_router_b, N, d, Ea, s.attn_topk, s);
    Vec add(static_cast<size_t>(N) * d, 0.0);
    for (int a = 0; a < Ea; ++a)
      for (int b = 0; b < B; ++b) {
        std::vector<int> tok, pos;
        std::vector<double> w;
        for (int t = 0; t < T; ++t) {
          const int n = b * T + t, p = n / ps;
          for (int j = 0; j < ra.k; ++j)
            if (ra.choice[static_cast<size_t>(p) * ra.k + j] == a && ra.kept[static_cast<size_t>(p) * ra.k + j]) {
              tok.push_back(n);
              pos.push_back(t);
              w.push_back(ra.gate[static_cast<size_t>(p) * ra.k + j]);
            }
        }
        const int n = static_cast<int>(tok.size());
        if (n == 0) continue;
        Vec x(static_cast<size_t>(n) * d), y(static_cast<size_t>(n) * d, 0.0);
        for (int i = 0; i < n; ++i)
          for (int j = 0; j < d; ++j) x[static_cast<size_t>(i) * d + j] = xn[static_cast<size_t>(tok[i]) * d + j];
        ref_attention_heads(y.data(), x.data(), pos.data(), n, d, M.dh, Hd, L.wq.data(), L.wk.data(), L.wv.data(),
                            L.wo.data(), a * g, (a + 1) * g);
        for (int i = 0; i < n; ++i)
          for (int j = 0; j < d; ++j) add[static_cast<size_t>(tok[i]) * d + j] += w[i] * y[static_cast<size_t>(i) * d + j];
      }
    for (int t = 0; t < N; ++t)
      for (int j = 0; j < d; ++j) h[static_cast<size_t>(t) * d + j] += L.bo[j] + add[static_cast<size_t>(t) * d + j];
    res.route.push_back(std::move(ra));
    // UoME
    xn = ref_layernorm_rows(h, L.mlp_norm_s, L.mlp_norm_b, N, d);
    RefRoute rm = ref_route(xn, L.mlp_router_w, L.mlp_router_b, N, d, E, s.topk, s);
    for (int t = 0; t < N; ++t) {
      const int p = t / ps;
      Vec acc(d, 0.0);
      for (int j = 0; j < rm.k; ++j) {
        if (!rm.kept[static_cast<size_t>(p) * rm.k + j]) continue;
        const int e = rm.choice[static_cast<size_t>(p) * rm.k + j];
        Vec y(d, 0.0);
        ref_ffn_units(y.data(), xn.data() + static_cast<size_t>(t) * d, d, M.d_ff, L.w1.data(), L.b1.data(),
                      L.w2.data(), e * f, (e + 1) * f);
        for (int c = 0; c < d; ++c) acc[c] += rm.gate[static_cast<size_t>(p) * rm.k + j] * y[c];
      }
      for (int c = 0; c < d; ++c) h[static_cast<size_t>(t) * d + c] += L.b2[c] + acc[c];
    }
    res.route.push_back(std::move(rm));
  }
  res.probs = ref_head(M, h, N);
  return res;
}

// ---- helpers for building test models ----

// Moves every parameter of a model off its initialisation so nothing relies on init values:
// norm scales 1 + 0.2·n, biases 0.2·n, matrices std `mat_std` (large enough for non-trivial
// attention patterns and non-uniform output probabilities at d ≈ 16).
// A small UoE model (2 layers, d 16, 4 heads as 2 attention experts top-1, 4 MLP experts top-2,
// V 32, T 16), quick enough for tests that run many forward passes.
inline uoe::ModelSpec small_uoe_spec(int patch_size = 1) {
  uoe::ModelSpec s;
  s.layers = 2;
  s.d = 16;
  s.heads = 4;
  s.attn_experts = 2;
  s.attn_topk = 1;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 32;
  s.vocab = 32;
  s.seq_len = 16;
  s.patch_size = patch_size;
  return s;
}

inline void randomise_params(uoe::Model& m, uint64_t seed, float mat_std = 0.3f) {
  uoe::ParamStore& ps = m.params();
  for (size_t i = 0; i < ps.count(); ++i) {
    const uoe::ParamInfo& info = ps.info(static_cast<int>(i));
    float* v = ps.value(static_cast<int>(i));
    const uint64_t stream = uoe::rng_stream("test/" + info.name);
    const bool is_scale = info.name.size() >= 5 && info.name.compare(info.name.size() - 5, 5, "scale") == 0;
    // Matrices: [rows, cols], or [experts, rows, cols] when expert-sharded.
    const bool is_matrix = info.global_shape.size() >= (info.expert_sharded ? 3u : 2u);
    for (size_t j = 0; j < info.size; ++j) {
      const float n = uoe::rng_normal(seed, stream, j);
      v[j] = is_scale ? 1.0f + 0.2f * n : is_matrix ? mat_std * n : 0.2f * n;
    }
  }
}

// Random tokens in [0, V).
inline std::vector<int32_t> random_tokens(int n, int V, uint64_t seed, uint64_t stream = 0) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = static_cast<int32_t>(uoe::rng_below(seed, stream, i, V));
  return t;
}

// ---- comparison with a tolerance atol + rtol·|ref| ----

struct CloseReport {
  size_t bad = 0;          // elements outside the tolerance
  size_t first_bad = 0;    // index of the first one
  double got = 0, ref = 0; // its values
  double max_abs_err = 0;  // over all elements
};

template <class A, class R>
CloseReport compare_close(const A* got, const R* ref, size_t n, double atol, double rtol) {
  CloseReport c;
  for (size_t i = 0; i < n; ++i) {
    const double g = static_cast<double>(got[i]), r = static_cast<double>(ref[i]);
    const double err = std::fabs(g - r);
    c.max_abs_err = std::max(c.max_abs_err, std::isnan(err) ? 1e300 : err);
    if (!(err <= atol + rtol * std::fabs(r))) {
      if (c.bad == 0) {
        c.first_bad = i;
        c.got = g;
        c.ref = r;
      }
      ++c.bad;
    }
  }
  return c;
}

inline std::string describe(const CloseReport& c) {
  std::ostringstream os;
  os << c.bad << " element(s) out of tolerance; max |err| " << c.max_abs_err;
  if (c.bad) os << "; first at index " << c.first_bad << ": got " << c.got << ", reference " << c.ref;
  return os.str();
}

}  // namespace uoe_ref
