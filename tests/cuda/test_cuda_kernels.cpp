// Every CUDA kernel of runtime/cuda/kernels.cuh against its CPU loop (runtime/kernels.hpp). The two
// run the same row bodies, so differences come only from the compilers' floating-point contraction
// (nvcc fuses a·b + c into FMAs by default; GCC decides per loop) and device logf/sqrtf; tolerances
// below are a few float ulps of the values involved unless a comment says otherwise. Integer-valued
// inputs where the operation allows make the comparison exact.
#include <algorithm>
#include <numeric>

#include "gpu_test.hpp"
#include "runtime/cuda/kernels.cuh"
#include "runtime/kernels.hpp"

namespace uoe::gpu_test {
namespace {

using KernelsGpu = Gpu;

TEST_F(KernelsGpu, LayerNormForward) {
  const int N = 37, C = 70;
  const auto x = random_vector(static_cast<size_t>(N) * C, 1, 2.0f), w = random_vector(C, 2, 1.0f),
             b = random_vector(C, 3, 1.0f);
  std::vector<float> out(x.size()), mean(N), rstd(N);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  auto dx = up(x), dw = up(w), db = up(b);
  cuda::DeviceBuffer<float> dout(x.size()), dmean(N), drstd(N);
  cuda::layernorm_forward(dout.data(), dmean.data(), drstd.data(), dx.data(), dw.data(), db.data(), N, C, s());
  expect_close(down(dout), out, 1e-6, 1e-5, "out");
  expect_close(down(dmean), mean, 1e-6, 1e-5, "mean");
  expect_close(down(drstd), rstd, 1e-6, 1e-5, "rstd");
}

TEST_F(KernelsGpu, LayerNormBackwardInChunks) {
  const int N = 37, C = 70;
  const auto x = random_vector(static_cast<size_t>(N) * C, 1, 2.0f), w = random_vector(C, 2, 1.0f),
             b = random_vector(C, 3, 1.0f), g = random_vector(x.size(), 4, 1.0f);
  std::vector<float> out(x.size()), mean(N), rstd(N);
  layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, C);
  // Accumulating outputs start non-zero, as in the model.
  auto dx = random_vector(x.size(), 5, 1.0f), dw = random_vector(C, 6, 1.0f), dbias = random_vector(C, 7, 1.0f);
  auto gdx = up(dx), gdw = up(dw), gdb = up(dbias), gg = up(g), gx = up(x), gw = up(w), gm = up(mean), gr = up(rstd);
  layernorm_backward(dx.data(), dw.data(), dbias.data(), g.data(), x.data(), w.data(), mean.data(), rstd.data(), N, C);
  const int scratch_rows = 8;  // 5 chunks, the last one partial
  cuda::DeviceBuffer<float> scratch(static_cast<size_t>(2) * scratch_rows * C);
  cuda::layernorm_backward(gdx.data(), gdw.data(), gdb.data(), gg.data(), gx.data(), gw.data(), gm.data(), gr.data(),
                           N, C, scratch.data(), scratch_rows, s());
  expect_close(down(gdx), dx, 1e-5, 1e-5, "dx");
  // Σ over 37 rows of O(1) terms: the CPU may fuse each += into an FMA, the GPU adds the rounded
  // product: ~N ulp of the sum.
  expect_close(down(gdw), dw, 1e-5, 1e-5, "dweight");
  expect_close(down(gdb), dbias, 1e-5, 1e-5, "dbias");
}

TEST_F(KernelsGpu, Gelu) {
  const int64_t n = 10001;
  const auto x = random_vector(n, 1, 3.0f), g = random_vector(n, 2, 1.0f);
  std::vector<float> y(n), dx(n);
  gelu_forward(y.data(), x.data(), n);
  gelu_backward(dx.data(), x.data(), g.data(), n);
  auto gx = up(x), gg = up(g);
  cuda::DeviceBuffer<float> gy(n), gdx(n);
  cuda::gelu_forward(gy.data(), gx.data(), n, s());
  cuda::gelu_backward(gdx.data(), gx.data(), gg.data(), n, s());
  expect_close(down(gy), y, 1e-6, 1e-6, "gelu");
  expect_close(down(gdx), dx, 1e-6, 1e-6, "gelu'");
}

TEST_F(KernelsGpu, SoftmaxRows) {
  const int N = 50, n = 33;
  auto x = random_vector(static_cast<size_t>(N) * n, 1, 4.0f);
  auto gx = up(x);
  std::vector<float> lse(N);
  softmax_rows(x.data(), lse.data(), N, n);
  cuda::DeviceBuffer<float> glse(N);
  cuda::softmax_rows(gx.data(), glse.data(), N, n, s());
  expect_close(down(gx), x, 1e-7, 1e-5, "p");
  expect_close(down(glse), lse, 1e-6, 1e-6, "lse");
}

TEST_F(KernelsGpu, TopkRowsIsExactWithTies) {
  const int N = 64, n = 8, k = 3;
  const auto x = integer_vector(static_cast<size_t>(N) * n, 1, 2);  // many ties → lower index wins
  std::vector<int> idx(static_cast<size_t>(N) * k);
  topk_rows(idx.data(), x.data(), N, n, k);
  auto gx = up(x);
  cuda::DeviceBuffer<int> gidx(idx.size());
  cuda::topk_rows(gidx.data(), gx.data(), N, n, k, s());
  EXPECT_EQ(down(gidx), idx);
}

TEST_F(KernelsGpu, RopeRows) {
  const int R = 20, heads = 4, dh = 8, ld = heads * dh + 3, half = dh / 2, P = 64;
  std::vector<float> ct(static_cast<size_t>(P) * half), st(ct.size());
  rope_table(ct.data(), st.data(), P, half);
  std::vector<int32_t> pos(R);
  for (int r = 0; r < R; ++r) pos[r] = (r * 7) % P;
  for (bool inverse : {false, true}) {
    auto x = random_vector(static_cast<size_t>(R) * ld, 1, 1.0f);
    auto gx = up(x), gct = up(ct), gst = up(st);
    auto gpos = up(pos);
    rope_rows(x.data(), pos.data(), ct.data(), st.data(), R, heads, dh, ld, inverse);
    cuda::rope_rows(gx.data(), gpos.data(), gct.data(), gst.data(), R, heads, dh, ld, inverse, s());
    expect_close(down(gx), x, 1e-6, 1e-6, inverse ? "rope⁻¹" : "rope");
  }
}

TEST_F(KernelsGpu, CrossEntropy) {
  const int N = 40, V = 97;
  const auto logits = random_vector(static_cast<size_t>(N) * V, 1, 3.0f);
  std::vector<int32_t> t(N);
  for (int i = 0; i < N; ++i) t[i] = (i * 31) % V;
  auto gt = up(t);
  cuda::DeviceBuffer<float> row_loss(N);
  cuda::DeviceBuffer<double> sum(1);
  {
    auto cpu = logits;
    const double loss = crossentropy_forward_backward(cpu.data(), t.data(), N, V, 0.125f);
    auto gl = up(logits);
    cuda::crossentropy_forward_backward(sum.data(), row_loss.data(), gl.data(), gt.data(), N, V, 0.125f, s());
    expect_close(down(gl), cpu, 1e-7, 1e-5, "dlogits");
    EXPECT_NEAR(down(sum)[0], loss, 1e-5 * std::fabs(loss));
  }
  {
    auto cpu = logits;
    const double loss = crossentropy_forward(cpu.data(), t.data(), N, V);
    auto gl = up(logits);
    cuda::crossentropy_forward(sum.data(), row_loss.data(), gl.data(), gt.data(), N, V, s());
    expect_close(down(gl), cpu, 1e-7, 1e-5, "probabilities");
    EXPECT_NEAR(down(sum)[0], loss, 1e-5 * std::fabs(loss));
  }
}

TEST_F(KernelsGpu, GatherRowsIsExact) {
  const int rows = 13, N = 40, C = 19;
  const auto table = random_vector(static_cast<size_t>(rows) * C, 1, 1.0f);
  std::vector<int32_t> ids(N);
  for (int i = 0; i < N; ++i) ids[i] = (i * 5 + 3) % rows;
  std::vector<float> out(static_cast<size_t>(N) * C);
  gather_rows(out.data(), table.data(), ids.data(), N, C);
  auto gt = up(table);
  auto gi = up(ids);
  cuda::DeviceBuffer<float> gout(out.size());
  cuda::gather_rows(gout.data(), gt.data(), gi.data(), N, C, s());
  expect_equal(down(gout), out, "gathered");
}

// Unpermute: integer data makes every order exact, so the GPU must match bit for bit; random data
// checks the grouped order (ascending source per destination) gives the same result twice and within
// contraction rounding of the CPU.
TEST_F(KernelsGpu, ScatterAddRowsDeterministic) {
  const int rows = 11, N = 300, C = 45;
  std::vector<int32_t> ids(N);
  for (int i = 0; i < N; ++i) ids[i] = static_cast<int32_t>(rng_below(3, 4, i, rows - 2));  // rows − 2 untouched
  auto gi = up(ids);
  cuda::ScatterPlan plan;
  plan.build(gi.data(), N, rows, s());
  {
    const auto src = integer_vector(static_cast<size_t>(N) * C, 1, 3);
    auto table = integer_vector(static_cast<size_t>(rows) * C, 2, 3);
    auto gt = up(table);
    auto gs = up(src);
    scatter_add_rows(table.data(), src.data(), ids.data(), N, C, 2.0f);
    cuda::scatter_add_rows(gt.data(), gs.data(), plan, C, 2.0f, nullptr, s());
    expect_equal(down(gt), table, "integer scatter-add");
  }
  {
    const auto src = random_vector(static_cast<size_t>(N) * C, 3, 1.0f);
    const auto w = random_vector(N, 4, 1.0f);
    const auto table0 = random_vector(static_cast<size_t>(rows) * C, 5, 1.0f);
    auto table = table0;
    for (int i = 0; i < N; ++i)  // the model's combine: h[token] += w·y
      scatter_add_row(table.data() + static_cast<size_t>(ids[i]) * C, src.data() + static_cast<size_t>(i) * C, C, w[i]);
    auto gs = up(src);
    auto gw = up(w);
    auto g1 = up(table0), g2 = up(table0);
    cuda::scatter_add_rows(g1.data(), gs.data(), plan, C, 1.0f, gw.data(), s());
    cuda::scatter_add_rows(g2.data(), gs.data(), plan, C, 1.0f, gw.data(), s());
    const auto r1 = down(g1), r2 = down(g2);
    expect_equal(r1, r2, "run-to-run");
    // ~30 additions per element of O(1) terms.
    expect_close(r1, table, 1e-5, 1e-5, "weighted scatter-add");
  }
}

TEST_F(KernelsGpu, AdamW) {
  const size_t n = 100003;
  auto w = random_vector(n, 1, 1.0f), m = random_vector(n, 2, 0.1f), v = random_vector(n, 3, 0.1f);
  for (float& x : v) x *= x;
  const auto g = random_vector(n, 4, 1.0f);
  std::vector<float> mask(n);
  for (size_t i = 0; i < n; ++i) mask[i] = i % 5 ? 1.0f : 0.0f;
  const AdamWScalars sc{0.9f, 0.95f, 3.69f, 7.0f, 1e-3f, 1e-8f, 1e-4f, 0.7f};
  auto gw = up(w), gm = up(m), gv = up(v), gg = up(g), gmask = up(mask);
  adamw_update(w.data(), m.data(), v.data(), g.data(), mask.data(), n, sc);
  cuda::adamw_update(gw.data(), gm.data(), gv.data(), gg.data(), gmask.data(), n, sc, s());
  expect_close(down(gm), m, 1e-8, 1e-6, "m");
  expect_close(down(gv), v, 1e-9, 1e-6, "v");
  expect_close(down(gw), w, 1e-7, 1e-6, "w");
}

// Packed segments of lengths 1, 5, 16 and 3 over g = 2 heads.
TEST_F(KernelsGpu, AttentionForwardBackward) {
  const int g = 2, dh = 8, gd = g * dh, W3 = 3 * gd;
  const std::vector<int> seg_begin = {0, 1, 6, 22, 25};
  const int nseg = 4, R = seg_begin.back();
  std::vector<int64_t> att_offset(nseg + 1, 0);
  for (int k = 0; k < nseg; ++k) {
    const int64_t L = seg_begin[k + 1] - seg_begin[k];
    att_offset[k + 1] = att_offset[k] + g * L * L;
  }
  const auto qkv = random_vector(static_cast<size_t>(R) * W3, 1, 1.0f);
  const auto d_o = random_vector(static_cast<size_t>(R) * gd, 2, 1.0f);
  std::vector<float> o(static_cast<size_t>(R) * gd), att(static_cast<size_t>(att_offset.back()));
  std::vector<float> dqkv(qkv.size()), ds(att.size());
  attn_causal_forward(o.data(), att.data(), qkv.data(), seg_begin.data(), att_offset.data(), nseg, g, dh);
  attn_causal_backward(dqkv.data(), ds.data(), d_o.data(), att.data(), qkv.data(), seg_begin.data(), att_offset.data(),
                       nseg, g, dh);
  auto gq = up(qkv), gdo = up(d_o);
  auto gsb = up(seg_begin);
  auto gao = up(att_offset);
  cuda::DeviceBuffer<float> go(o.size()), gatt(att.size()), gdqkv(dqkv.size()), gds(ds.size());
  cuda::attn_causal_forward(go.data(), gatt.data(), gq.data(), gsb.data(), gao.data(), nseg, g, dh, s());
  cuda::attn_causal_backward(gdqkv.data(), gds.data(), gdo.data(), gatt.data(), gq.data(), gsb.data(), gao.data(), nseg,
                             g, dh, s());
  expect_close(down(gatt), att, 1e-7, 1e-5, "P");
  expect_close(down(go), o, 1e-6, 1e-5, "o");
  expect_close(down(gdqkv), dqkv, 1e-5, 1e-5, "dqkv");
}

}  // namespace
}  // namespace uoe::gpu_test
