// Device selection (runtime/device.hpp) and, on the CPU, the shared row bodies that only the GPU path
// uses in production (kernels.hpp): the attention row bodies are checked against the GEMM-based
// attention of layers/experts.cpp, and the AdamW, scatter-add and cross-entropy bodies against
// independent formulas. tests/cuda then compares the GPU kernels with these CPU loops.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "layers/experts.hpp"
#include "runtime/device.hpp"
#include "runtime/error.hpp"
#include "runtime/kernels.hpp"
#include "runtime/rng.hpp"

namespace uoe {
namespace {

std::vector<float> random_vector(size_t n, uint64_t stream, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * rng_normal(7, stream, i);
  return v;
}

// |a − b| ≤ atol + rtol·|b| element by element, and b not all zero (a zero reference would let a
// zero result pass).
void expect_close(const float* a, const float* b, size_t n, double atol, double rtol, const char* what) {
  double norm = 0;
  for (size_t i = 0; i < n; ++i) {
    norm += std::fabs(b[i]);
    EXPECT_NEAR(a[i], b[i], atol + rtol * std::fabs(b[i])) << what << "[" << i << "]";
  }
  EXPECT_GT(norm, 0.0) << what << ": reference is all zero";
}

// ---- device selection ---------------------------------------------------------------------------

TEST(Device, ProbeIsConsistentWithRequire) {
  const DeviceProbe p = device_probe();
  ASSERT_FALSE(p.message.empty());
  EXPECT_NO_THROW(device_require(Device::cpu));
  if (p.available) {
    EXPECT_GT(p.count, 0);
    EXPECT_NO_THROW(device_require(Device::cuda));
    return;
  }
  EXPECT_EQ(p.count, 0);
#ifdef UOE_HAVE_CUDA
  // Built with CUDA: any cudaGetDeviceCount error (here cudaErrorInsufficientDriver) means no GPU.
  EXPECT_EQ(p.message.rfind("no usable GPU: ", 0), 0u) << p.message;
#else
  EXPECT_NE(p.message.find("built without CUDA"), std::string::npos) << p.message;
#endif
  try {
    device_require(Device::cuda);
    FAIL() << "device_require(cuda) returned without a usable GPU";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("--device cuda"), std::string::npos) << what;
    EXPECT_NE(what.find(p.message), std::string::npos) << what;  // names the reason
  }
}

TEST(Device, ParseNamesTheOption) {
  EXPECT_EQ(device_parse("cpu"), Device::cpu);
  EXPECT_EQ(device_parse("cuda"), Device::cuda);
  EXPECT_STREQ(device_name(Device::cuda), "cuda");
  EXPECT_STREQ(device_name(Device::cpu), "cpu");
  try {
    device_parse("gpu");
    FAIL() << "device_parse accepted 'gpu'";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("--device gpu"), std::string::npos) << what;
    EXPECT_NE(what.find("cpu or cuda"), std::string::npos) << what;
  }
}

// ---- shared bodies on the CPU ------------------------------------------------------------------

// Two local experts; expert 0 holds two sequences (segments of 3 and 4 rows from position 0),
// expert 1 one sequence whose kept tokens sit at true positions 2, 3, 5, 6, 9.
ExpertRows attention_rows(int d) {
  ExpertRows r;
  r.n_experts = 2;
  r.offsets = {0, 7, 12};
  r.seg = {0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0};
  r.pos = {0, 1, 2, 0, 1, 2, 3, 2, 3, 5, 6, 9};
  const auto x = random_vector(static_cast<size_t>(r.rows()) * d, 1, 1.0f);
  r.x.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) r.x[i] = x[i];
  return r;
}

// The row-by-row attention (what the GPU runs) matches the GEMM-based attention of the CPU
// training path, forward (probabilities and outputs) and backward (dq, dk, dv after undoing RoPE,
// which also checks rope_rows against the experts' own RoPE). Tolerance: the two sum the same
// products in different orders (BLAS blocks them), float rounding of O(1) values → 1e-5.
TEST(SharedBodies, RowAttentionMatchesGemmAttention) {
  const int d = 8, g = 2, dh = 4, gd = g * dh, W3 = 3 * gd;
  ExpertRows rows = attention_rows(d);
  const int R = rows.rows();
  const auto Wqkv = random_vector(static_cast<size_t>(2) * d * W3, 2, 0.5f);
  const auto Wo = random_vector(static_cast<size_t>(2) * gd * d, 3, 0.5f);
  AttnExpertCache c;
  std::vector<float> y(static_cast<size_t>(R) * d);
  attn_experts_forward(y.data(), c, rows, Wqkv.data(), Wo.data(), d, g, dh);

  const int nseg = static_cast<int>(c.seg_begin.size()) - 1;
  ASSERT_EQ(nseg, 3);
  std::vector<float> o(static_cast<size_t>(R) * gd), att(c.att.size());
  attn_causal_forward(o.data(), att.data(), c.qkv.data(), c.seg_begin.data(), c.att_offset.data(), nseg, g, dh);
  expect_close(att.data(), c.att.data(), att.size(), 1e-6, 1e-5, "P");
  expect_close(o.data(), c.o.data(), o.size(), 1e-6, 1e-5, "o");

  const auto dy = random_vector(static_cast<size_t>(R) * d, 4, 1.0f);
  std::vector<float> dx(static_cast<size_t>(R) * d);
  attn_experts_backward_data(dx.data(), dy.data(), c, rows, Wqkv.data(), Wo.data(), d, g, dh);
  std::vector<float> dqkv(static_cast<size_t>(R) * W3, -1.0f), ds(c.att.size(), -1.0f);
  attn_causal_backward(dqkv.data(), ds.data(), c.d_o.data(), c.att.data(), c.qkv.data(), c.seg_begin.data(),
                       c.att_offset.data(), nseg, g, dh);
  rope_rows(dqkv.data(), rows.pos.data(), c.rope_cos.data(), c.rope_sin.data(), R, 2 * g, dh, W3, true);
  expect_close(dqkv.data(), c.d_qkv.data(), dqkv.size(), 1e-5, 1e-5, "dqkv");
}

// RoPE on rows: the inverse undoes the forward, and position 0 is the identity.
TEST(SharedBodies, RopeRowsRoundTrip) {
  const int R = 5, heads = 3, dh = 6, ld = heads * dh + 2, half = dh / 2;
  std::vector<float> ct(static_cast<size_t>(16) * half), st(ct.size());
  rope_table(ct.data(), st.data(), 16, half);
  const std::vector<int32_t> pos = {0, 3, 7, 15, 1};
  auto x = random_vector(static_cast<size_t>(R) * ld, 5, 1.0f);
  const auto x0 = x;
  rope_rows(x.data(), pos.data(), ct.data(), st.data(), R, heads, dh, ld, false);
  for (int c = 0; c < ld; ++c) EXPECT_EQ(x[c], x0[c]) << "position 0 must be the identity";
  EXPECT_NE(x[ld + 0], x0[ld + 0]);
  for (int r = 0; r < R; ++r)  // the two columns past the heads are untouched
    for (int c = heads * dh; c < ld; ++c) EXPECT_EQ(x[r * ld + c], x0[r * ld + c]);
  rope_rows(x.data(), pos.data(), ct.data(), st.data(), R, heads, dh, ld, true);
  expect_close(x.data(), x0.data(), x.size(), 1e-6, 1e-6, "round trip");
}

// adamw_update (the shared element body) against the update written out in double.
TEST(SharedBodies, AdamWMatchesFormula) {
  const size_t n = 257;
  auto w = random_vector(n, 6, 1.0f), m = random_vector(n, 7, 0.1f), g = random_vector(n, 9, 1.0f);
  auto v = random_vector(n, 8, 0.1f);
  for (float& x : v) x = x * x;  // second moments are ≥ 0
  std::vector<float> mask(n);
  for (size_t i = 0; i < n; ++i) mask[i] = i % 3 == 0 ? 0.0f : 1.0f;
  const double b1 = 0.9, b2 = 0.95, lr = 1e-2, eps = 1e-8, wd = 0.1, gs = 0.5;
  const int step = 3;
  AdamWScalars s{static_cast<float>(b1), static_cast<float>(b2),
                 static_cast<float>(1.0 / (1.0 - std::pow(b1, step))), static_cast<float>(1.0 / (1.0 - std::pow(b2, step))),
                 static_cast<float>(lr), static_cast<float>(eps), static_cast<float>(lr * wd), static_cast<float>(gs)};
  std::vector<float> w_ref(n), m_ref(n), v_ref(n);
  for (size_t i = 0; i < n; ++i) {
    const double gi = g[i] * gs;
    const double mi = b1 * m[i] + (1 - b1) * gi, vi = b2 * v[i] + (1 - b2) * gi * gi;
    const double mh = mi / (1.0 - std::pow(b1, step)), vh = vi / (1.0 - std::pow(b2, step));
    m_ref[i] = static_cast<float>(mi);
    v_ref[i] = static_cast<float>(vi);
    w_ref[i] = static_cast<float>(w[i] - (lr * mh / (std::sqrt(vh) + eps) + lr * wd * mask[i] * w[i]));
  }
  adamw_update(w.data(), m.data(), v.data(), g.data(), mask.data(), n, s);
  // float vs double arithmetic on O(1) values: a few ulp.
  expect_close(m.data(), m_ref.data(), n, 1e-7, 1e-5, "m");
  expect_close(v.data(), v_ref.data(), n, 1e-8, 1e-5, "v");
  expect_close(w.data(), w_ref.data(), n, 1e-6, 1e-5, "w");
}

// scatter_add_rows with repeated destinations, integer-valued data: exact.
TEST(SharedBodies, ScatterAddRowsIsExactOnIntegers) {
  const int N = 9, C = 5, rows = 4;
  const std::vector<int32_t> ids = {2, 0, 2, 3, 2, 0, 1, 3, 2};
  std::vector<float> src(static_cast<size_t>(N) * C), table(static_cast<size_t>(rows) * C);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(static_cast<int>(i % 11) - 5);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<float>(i % 4);
  std::vector<float> expect = table;
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) expect[static_cast<size_t>(ids[i]) * C + c] += 2.0f * src[static_cast<size_t>(i) * C + c];
  scatter_add_rows(table.data(), src.data(), ids.data(), N, C, 2.0f);
  for (size_t i = 0; i < table.size(); ++i) EXPECT_EQ(table[i], expect[i]) << i;
}

// Cross-entropy forward + backward rows: the loss is −log softmax[target] (double reference), and
// the gradient is (softmax − onehot)·grad_scale, which sums to 0 over a row.
TEST(SharedBodies, CrossEntropyForwardBackward) {
  const int N = 4, V = 11;
  const std::vector<int32_t> targets = {0, 10, 5, 5};
  auto logits = random_vector(static_cast<size_t>(N) * V, 10, 3.0f);
  const auto x = logits;
  const float gs = 0.25f;
  const double total = crossentropy_forward_backward(logits.data(), targets.data(), N, V, gs);
  double ref = 0;
  for (int i = 0; i < N; ++i) {
    const float* r = x.data() + static_cast<size_t>(i) * V;
    double mx = r[0], s = 0;
    for (int v = 1; v < V; ++v) mx = std::max<double>(mx, r[v]);
    for (int v = 0; v < V; ++v) s += std::exp(r[v] - mx);
    ref += -(r[targets[i]] - mx - std::log(s));
    double row_sum = 0;
    for (int v = 0; v < V; ++v) {
      const double p = std::exp(r[v] - mx) / s;
      const double dl = (p - (v == targets[i] ? 1.0 : 0.0)) * gs;
      EXPECT_NEAR(logits[static_cast<size_t>(i) * V + v], dl, 1e-6) << i << "," << v;
      row_sum += logits[static_cast<size_t>(i) * V + v];
    }
    EXPECT_NEAR(row_sum, 0.0, 1e-6);
  }
  EXPECT_NEAR(total, ref, 1e-5 * std::fabs(ref));
}

// softmax_rows / topk_rows: the loops over the router's row bodies (ties → lower index).
TEST(SharedBodies, SoftmaxAndTopkRows) {
  const int N = 3, n = 5, k = 2;
  std::vector<float> x = {1, 3, 3, 0, 2,  /**/ -1, -1, -1, -1, -1,  /**/ 0, 5, 1, 5, 4};
  std::vector<int> idx(static_cast<size_t>(N) * k);
  topk_rows(idx.data(), x.data(), N, n, k);
  EXPECT_EQ(idx, (std::vector<int>{1, 2, 0, 1, 1, 3}));
  std::vector<float> lse(N);
  const auto x0 = x;
  softmax_rows(x.data(), lse.data(), N, n);
  for (int i = 0; i < N; ++i) {
    double s = 0, e = 0;
    for (int j = 0; j < n; ++j) {
      s += x[static_cast<size_t>(i) * n + j];
      e += std::exp(static_cast<double>(x0[static_cast<size_t>(i) * n + j]));
    }
    EXPECT_NEAR(s, 1.0, 1e-6);
    EXPECT_NEAR(lse[i], std::log(e), 1e-5);
  }
}

// The fixed-lane reductions (sum_terms, max_lanes, dot_lanes): against double sums over lengths on
// both sides of the lane count, exact where the terms are integers (any order gives the same sum),
// and the exact maximum wherever it sits.
TEST(SharedBodies, LaneReductions) {
  for (int n : {1, 2, 4, 15, 16, 17, 31, 32, 33, 100, 128, 1000}) {
    const auto a = random_vector(static_cast<size_t>(n), 100 + n, 2.0f);
    const auto b = random_vector(static_cast<size_t>(n), 200 + n, 2.0f);
    double s = 0, dot = 0, abs_sum = 0, abs_dot = 0;
    for (int i = 0; i < n; ++i) {
      s += a[i];
      abs_sum += std::fabs(a[i]);
      dot += static_cast<double>(a[i]) * b[i];
      abs_dot += std::fabs(static_cast<double>(a[i]) * b[i]);
    }
    const float got = sum_terms(n, [&a](int i) { return a[i]; });
    EXPECT_NEAR(got, s, 1e-6 * abs_sum + 1e-7) << "n " << n;
    EXPECT_NEAR(dot_lanes(a.data(), b.data(), n), dot, 1e-6 * abs_dot + 1e-7) << "n " << n;
    std::vector<float> ints(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) ints[i] = static_cast<float>((i * 7) % 13) - 6.0f;
    double isum = 0;
    for (float v : ints) isum += v;
    EXPECT_EQ(sum_terms(n, [&ints](int i) { return ints[i]; }), static_cast<float>(isum)) << "n " << n;
    for (int at : {0, n / 2, n - 1}) {
      std::vector<float> m = a;
      m[at] = 50.0f;
      EXPECT_EQ(max_lanes(m.data(), n), 50.0f) << "n " << n << " at " << at;
    }
  }
}

// GELU with its derivative in one pass computes what gelu() and gelu_grad() do (the MLP experts keep
// the derivative from the forward; their backward relies on it). The same arithmetic, but not
// always the same bits: where the compiler fuses a·b + c into one FMA differs between this
// vectorised loop and a scalar call, so the bound is a few float ulps of the terms.
TEST(SharedBodies, GeluWithGradMatchesSeparateBodies) {
  auto x = random_vector(4099, 7, 6.0f);
  x[0] = 0.0f;
  x[1] = -40.0f;
  x[2] = 40.0f;
  std::vector<float> out(x.size()), g = x;
  gelu_forward_keep_grad(out.data(), g.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    // Bounds relative to the size of the terms (GELU' = cdf + x·pdf cancels near x = −0.75).
    const float tol = 3e-7f * (1.0f + std::fabs(x[i]));
    EXPECT_NEAR(out[i], gelu(x[i]), tol) << x[i];
    EXPECT_NEAR(g[i], gelu_grad(x[i]), tol) << x[i];
  }
}

}  // namespace
}  // namespace uoe
