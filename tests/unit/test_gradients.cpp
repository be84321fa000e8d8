// Finite-difference gradient checks for every layer and for the whole model. Each check builds a
// scalar loss L = Σ c·output with fixed random c (or the model's own loss), compares the analytic
// gradient with the central difference (L(θ+ε) − L(θ−ε)) / 2ε, and asserts
// |fd − analytic| ≤ atol + rtol·|analytic| per element. The forward passes run in float, so the
// difference carries rounding noise of about 1e-7·|L| / ε: ε and atol are set for that.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "layers/experts.hpp"
#include "layers/model.hpp"
#include "layers/router.hpp"
#include "parallel/exchange.hpp"
#include "runtime/kernels.hpp"
#include "runtime/rng.hpp"
#include "reference_dense.hpp"
#include "grad_check.hpp"

namespace uoe {
namespace {

std::vector<float> random_vector(size_t n, uint64_t stream, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * rng_normal(42, stream, i);
  return v;
}

double dot(const float* a, const std::vector<float>& c) {
  double s = 0;
  for (size_t i = 0; i < c.size(); ++i) s += static_cast<double>(a[i]) * c[i];
  return s;
}

// Checks analytic gradient `grad` of `loss` with respect to every element of `x` (or `max_checks`
// of them, spread evenly). `loss` reads x. Returns the number of elements checked.
int check_gradient(const char* what, std::vector<float>& x, const std::vector<float>& grad,
                   const std::function<double()>& loss, float eps, double atol, double rtol, int max_checks = 1 << 30) {
  EXPECT_EQ(x.size(), grad.size());
  const size_t stride = std::max<size_t>(1, x.size() / std::min<size_t>(x.size(), max_checks));
  int checked = 0;
  double max_abs_grad = 0;
  for (float g : grad) max_abs_grad = std::max(max_abs_grad, static_cast<double>(std::fabs(g)));
  // A gradient that is identically zero would make every comparison trivial.
  EXPECT_GT(max_abs_grad, 1e-6) << what << ": analytic gradient is all zero";
  for (size_t i = 0; i < x.size(); i += stride) {
    const float saved = x[i];
    x[i] = saved + eps;
    const double lp = loss();
    x[i] = saved - eps;
    const double lm = loss();
    x[i] = saved;
    const double fd = (lp - lm) / (2.0 * eps);
    EXPECT_NEAR(fd, grad[i], atol + rtol * std::fabs(grad[i])) << what << "[" << i << "]";
    ++checked;
  }
  return checked;
}

TEST(Gradients, LayerNorm) {
  const int N = 3, C = 8;
  auto x = random_vector(N * C, 1, 1.0f), w = random_vector(C, 2, 1.0f), b = random_vector(C, 3, 1.0f);
  const auto c = random_vector(N * C, 4, 1.0f);
  std::vector<float> out(N * C), mean(N), rstd(N);
  auto loss = [&] {
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
    return dot(out.data(), c);
  };
  loss();
  std::vector<float> dx(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
  layernorm_backward(dx.data(), dw.data(), db.data(), c.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  // atol: float rounding of L (~1e-6) over 2ε.
  check_gradient("dx", x, dx, loss, 1e-2f, 2e-4, 1e-2);
  check_gradient("dweight", w, dw, loss, 1e-2f, 2e-4, 1e-2);
  check_gradient("dbias", b, db, loss, 1e-2f, 2e-4, 1e-2);
}

TEST(Gradients, GeluAndSoftmax) {
  for (float x : {-3.0f, -1.0f, -0.3f, 0.0f, 0.5f, 2.0f}) {
    const float e = 1e-3f;
    const double fd = (static_cast<double>(gelu(x + e)) - gelu(x - e)) / (2.0 * e);
    EXPECT_NEAR(fd, gelu_grad(x), 1e-3) << "x = " << x;
  }
  EXPECT_NEAR(gelu(1.0f), 0.8413447f, 1e-6f);  // Φ(1) = 0.841344746…, the erf form's value
  const int n = 6;
  auto z = random_vector(n, 5, 1.0f);
  const auto c = random_vector(n, 6, 1.0f);
  std::vector<float> p(n);
  auto loss = [&] {
    p = z;
    softmax_row(p.data(), n);
    return dot(p.data(), c);
  };
  loss();
  std::vector<float> dz(n);
  softmax_row_backward(dz.data(), p.data(), c.data(), n);
  check_gradient("softmax", z, dz, loss, 1e-2f, 1e-4, 1e-2);
}

TEST(Gradients, RopeIsARotation) {
  const int dh = 8, half = dh / 2, T = 6;
  std::vector<float> ct(T * half), st(T * half);
  rope_table(ct.data(), st.data(), T, half);
  auto v = random_vector(dh, 7, 1.0f);
  std::vector<float> r = v;
  rope_row(r.data(), half, &ct[5 * half], &st[5 * half], false);
  double n0 = 0, n1 = 0;
  for (int i = 0; i < dh; ++i) {
    n0 += v[i] * v[i];
    n1 += r[i] * r[i];
  }
  EXPECT_NEAR(n0, n1, 1e-5);  // norm preserved
  // Dim 0 pairs with dim 4 at frequency 1 (angle = position); dim 1 with dim 5 at 10000^(-1/4).
  EXPECT_NEAR(r[0], v[0] * std::cos(5.0) - v[4] * std::sin(5.0), 1e-5);
  EXPECT_NEAR(r[5], v[5] * std::cos(0.5) + v[1] * std::sin(0.5), 1e-5);
  rope_row(r.data(), half, &ct[5 * half], &st[5 * half], true);  // the backward (transpose) undoes it
  for (int i = 0; i < dh; ++i) EXPECT_NEAR(r[i], v[i], 1e-5);
  std::vector<float> z = v;
  rope_row(z.data(), half, &ct[0], &st[0], false);  // position 0 is the identity
  for (int i = 0; i < dh; ++i) EXPECT_FLOAT_EQ(z[i], v[i]);
}

// The vectorisable exp and erf against libm over the ranges the model uses.
TEST(Kernels, ExpAndErfApproximations) {
  double worst_exp = 0, worst_erf = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f + 175.0f * static_cast<float>(i) / 200000.0f;
    const double ref = std::exp(static_cast<double>(x));
    worst_exp = std::max(worst_exp, std::fabs(exp_approx(x) - ref) / ref);
    const float y = -6.0f + 12.0f * static_cast<float>(i) / 200000.0f;
    worst_erf = std::max(worst_erf, std::fabs(erf_approx(y) - std::erf(static_cast<double>(y))));
  }
  EXPECT_LT(worst_exp, 4e-7);  // a few float ulps (ulp = 6e-8 relative)
  EXPECT_LT(worst_erf, 6e-7);  // A&S 7.1.26 bound 1.5e-7 plus float rounding of the polynomial (measured 4.7e-7)
  EXPECT_EQ(exp_approx(0.0f), 1.0f);
  EXPECT_LT(exp_approx(-1000.0f), 1e-37f);  // clamped, not NaN or garbage
}

// GELU and GELU' (which share one exp between erf and the normal density) against the exact erf
// forms in double: GELU = x·Φ(x), GELU' = Φ(x) + x·φ(x).
TEST(Kernels, GeluAndDerivativeAgainstExactForms) {
  double worst = 0, worst_grad = 0;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -10.0f + 20.0f * static_cast<float>(i) / 200000.0f;
    const double xd = x, cdf = 0.5 * (1.0 + std::erf(xd / std::sqrt(2.0)));
    const double pdf = std::exp(-0.5 * xd * xd) / std::sqrt(2.0 * M_PI);
    worst = std::max(worst, std::fabs(gelu(x) - xd * cdf) / (1.0 + std::fabs(xd)));
    worst_grad = std::max(worst_grad, std::fabs(gelu_grad(x) - (cdf + xd * pdf)) / (1.0 + std::fabs(xd)));
  }
  // erf's error (above) scaled by |x|/2, plus the float rounding of the last products (measured
  // 1.1e-7 and 2.5e-7 with GCC 12, AVX-512).
  EXPECT_LT(worst, 4e-7);
  EXPECT_LT(worst_grad, 4e-7);
}

ExpertRows make_rows(const std::vector<int>& offsets, const std::vector<int32_t>& seg, const std::vector<int32_t>& pos,
                     const std::vector<float>& x) {
  ExpertRows r;
  r.n_experts = static_cast<int>(offsets.size()) - 1;
  r.offsets = offsets;
  r.seg = seg;
  r.pos = pos;
  r.x.resize(x.size());
  std::copy(x.begin(), x.end(), r.x.begin());
  return r;
}

TEST(Gradients, MlpExperts) {
  const int d = 6, f = 5, E = 2;
  const std::vector<int> off = {0, 3, 5};
  const int R = 5;
  auto x = random_vector(R * d, 10, 1.0f);
  auto W1 = random_vector(E * d * f, 11, 0.5f), b1 = random_vector(E * f, 12, 0.5f), W2 = random_vector(E * f * d, 13, 0.5f);
  const auto c = random_vector(R * d, 14, 1.0f);
  const std::vector<int32_t> seg(R, 0), pos = {0, 1, 2, 0, 1};
  std::vector<float> y(R * d);
  MlpExpertCache cache;
  auto loss = [&] {
    ExpertRows rows = make_rows(off, seg, pos, x);
    mlp_experts_forward(y.data(), cache, rows, W1.data(), b1.data(), W2.data(), d, f);
    return dot(y.data(), c);
  };
  loss();
  ExpertRows rows = make_rows(off, seg, pos, x);
  std::vector<float> dx(R * d), dW1(W1.size(), 0.0f), db1(b1.size(), 0.0f), dW2(W2.size(), 0.0f);
  mlp_experts_backward(dx.data(), dW1.data(), db1.data(), dW2.data(), c.data(), cache, rows, W1.data(), W2.data(), d, f);
  check_gradient("dx", x, dx, loss, 1e-2f, 5e-4, 1e-2);
  check_gradient("dW1", W1, dW1, loss, 1e-2f, 5e-4, 1e-2);
  check_gradient("db1", b1, db1, loss, 1e-2f, 5e-4, 1e-2);
  check_gradient("dW2", W2, dW2, loss, 1e-2f, 5e-4, 1e-2);
}

TEST(Gradients, AttentionExperts) {
  const int d = 8, g = 2, dh = 4, E = 2, gd = g * dh;
  // Expert 0: sequence 0 at positions 0, 2, 3 and sequence 1 at 1, 4. Expert 1: sequence 0 at 1, 2;
  // sequence 1 at 0 (a one-token segment).
  const std::vector<int> off = {0, 5, 8};
  const std::vector<int32_t> seg = {0, 0, 0, 1, 1, 0, 0, 1}, pos = {0, 2, 3, 1, 4, 1, 2, 0};
  const int R = 8;
  auto x = random_vector(R * d, 20, 1.0f);
  auto Wqkv = random_vector(E * d * 3 * gd, 21, 0.5f), Wo = random_vector(E * gd * d, 22, 0.5f);
  const auto c = random_vector(R * d, 23, 1.0f);
  std::vector<float> y(R * d);
  AttnExpertCache cache;
  auto loss = [&] {
    ExpertRows rows = make_rows(off, seg, pos, x);
    attn_experts_forward(y.data(), cache, rows, Wqkv.data(), Wo.data(), d, g, dh);
    return dot(y.data(), c);
  };
  loss();
  ExpertRows rows = make_rows(off, seg, pos, x);
  std::vector<float> dx(R * d), dWqkv(Wqkv.size(), 0.0f), dWo(Wo.size(), 0.0f);
  attn_experts_backward(dx.data(), dWqkv.data(), dWo.data(), c.data(), cache, rows, Wqkv.data(), Wo.data(), d, g, dh);
  check_gradient("dx", x, dx, loss, 1e-2f, 5e-4, 2e-2);
  check_gradient("dWqkv", Wqkv, dWqkv, loss, 1e-2f, 5e-4, 2e-2);
  check_gradient("dWo", Wo, dWo, loss, 1e-2f, 5e-4, 2e-2);
}

// Router with renorm (or prob) gates, capacity dropping, balance and z-losses, patches of 2 tokens.
void check_router(bool prob) {
  const int d = 4, E = 4, N = 16;
  RouterSpec spec;
  spec.experts = E;
  spec.topk = 2;
  spec.patch_size = 2;
  spec.capacity_factor = 1.0;
  spec.renorm = !prob;
  spec.prob = prob;
  spec.aux_weight = 0.3;
  spec.z_weight = 0.05;
  auto xn = random_vector(N * d, 30, 1.0f), W = random_vector(d * E, 31, 1.0f), b = random_vector(E, 32, 0.3f);
  const int P = N / spec.patch_size;
  const auto cg = random_vector(P * spec.topk, 33, 1.0f);
  Routing r;
  std::vector<int> choice0;
  std::vector<uint8_t> kept0;
  bool routing_changed = false;
  // L = Σ_kept cg·gate + balance + z; routing decisions must not move under the perturbations.
  auto loss = [&] {
    router_forward(r, spec, xn.data(), W.data(), b.data(), N, d, false);
    if (!choice0.empty() && (r.choice != choice0 || r.kept != kept0)) routing_changed = true;
    double l = r.balance_loss + r.z_loss;
    for (size_t i = 0; i < cg.size(); ++i)
      if (r.kept[i]) l += static_cast<double>(cg[i]) * r.gate[i];
    return l;
  };
  loss();
  choice0 = r.choice;
  kept0 = r.kept;
  ASSERT_GT(r.dropped, 0) << "capacity should drop something in this set-up";
  std::vector<float> dxn(N * d, 0.0f), dW(W.size(), 0.0f), db(E, 0.0f);
  router_backward(r, spec, cg.data(), xn.data(), W.data(), dxn.data(), dW.data(), db.data(), 1.0f);
  check_gradient("dW", W, dW, loss, 1e-3f, 2e-4, 2e-2);
  check_gradient("db", b, db, loss, 1e-3f, 2e-4, 2e-2);
  check_gradient("dxn", xn, dxn, loss, 1e-3f, 2e-4, 2e-2);
  EXPECT_FALSE(routing_changed) << "a perturbation changed the routing: the check is not valid";
}

TEST(Gradients, RouterRenormWithCapacity) { check_router(false); }
TEST(Gradients, RouterProbGateWithCapacity) { check_router(true); }

ModelSpec small_spec() {
  ModelSpec s = uoe_ref::small_uoe_spec();
  s.vocab = 11;
  s.seq_len = 8;
  s.capacity_factor = 1.0;
  s.aux_loss = 0.05;
  s.z_loss = 0.01;
  return s;
}

TEST(Gradients, WholeModelRenormWithCapacity) { check_model(small_spec(), "renorm"); }

TEST(Gradients, WholeModelPatchesOfTwo) {
  ModelSpec s = small_spec();
  s.patch_size = 2;
  check_model(s, "patch 2");
}

TEST(Gradients, WholeModelSumGateDropless) {
  ModelSpec s = small_spec();
  s.renorm = false;
  s.capacity_factor = 0;
  check_model(s, "sum");
}

TEST(Gradients, WholeModelProbGateTop1) {
  ModelSpec s = small_spec();
  s.prob_gate = true;
  s.attn_topk = 1;
  s.topk = 1;
  check_model(s, "prob top-1");
}

// Negative tests: a backward that gets one slab of one tensor wrong must fail the check. The slab
// (one index of dimension 0: an expert's block of an expert tensor, a row of others) is chosen to hold none of the
// tensor's 3 largest gradients, the ones the check always looks at: the random elements must find
// it. Returns the hook for GradCheckOptions::after_backward; `slab_out` says which slab it broke.
std::function<void(ParamStore&)> break_slab(const std::string& tensor, float factor, int64_t* slab_out) {
  return [tensor, factor, slab_out](ParamStore& ps) {
    const int t = ps.find(tensor);
    ASSERT_GE(t, 0) << tensor;
    const ParamInfo& p = ps.info(t);
    float* g = ps.grad(t);
    const int64_t rows = p.global_shape[0], slab = p.slab_size();
    ASSERT_EQ(static_cast<int64_t>(p.size), rows * slab) << tensor << " is not whole in one process";
    std::vector<size_t> idx(p.size);
    for (size_t j = 0; j < p.size; ++j) idx[j] = j;
    std::partial_sort(idx.begin(), idx.begin() + 3, idx.end(),
                      [&](size_t a, size_t b) { return std::fabs(g[a]) > std::fabs(g[b]); });
    int64_t best = -1;
    double best_sq = -1;
    for (int64_t e = 0; e < rows; ++e) {
      const bool holds_top = std::any_of(idx.begin(), idx.begin() + 3, [&](size_t j) {
        return static_cast<int64_t>(j) / slab == e;
      });
      double sq = 0;
      for (int64_t j = e * slab; j < (e + 1) * slab; ++j) sq += static_cast<double>(g[j]) * g[j];
      if (!holds_top && sq > best_sq) best = e, best_sq = sq;
    }
    ASSERT_GE(best, 0) << tensor << ": every slab holds one of the 3 largest gradients";
    ASSERT_GT(best_sq, 0) << tensor << ": slab " << best << " has no gradient to break";
    for (int64_t j = best * slab; j < (best + 1) * slab; ++j) g[j] *= factor;
    *slab_out = best;
  };
}

void expect_check_catches(const std::string& tensor, float factor) {
  int64_t slab = -1;
  GradCheckOptions broken;
  broken.after_backward = break_slab(tensor, factor, &slab);
  const GradCheckResult r = model_gradient_check(small_spec(), broken);
  EXPECT_FALSE(r.ok()) << tensor << " slab " << slab << " ×" << factor << " passed: " << r.report();
  EXPECT_EQ(r.failed_tensors, std::vector<std::string>{tensor}) << r.report();
  // The largest elements alone (the check as it was) cannot see it: the random ones are what count.
  GradCheckOptions largest_only = broken;
  largest_only.random = 0;
  EXPECT_TRUE(model_gradient_check(small_spec(), largest_only).ok()) << tensor << " slab " << slab;
}

TEST(Gradients, WholeModelCheckCatchesAHalvedExpertSlab) { expect_check_catches("layers.0.mlp.w1", 0.5f); }
TEST(Gradients, WholeModelCheckCatchesAZeroedExpertSlab) { expect_check_catches("layers.1.mlp.w2", 0.0f); }
// A replicated tensor's slab: one token's embedding row (1/11 of the tensor).
TEST(Gradients, WholeModelCheckCatchesAZeroedEmbeddingRow) { expect_check_catches("embed", 0.0f); }

}  // namespace
}  // namespace uoe
