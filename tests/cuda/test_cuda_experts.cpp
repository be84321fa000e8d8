// cuBLAS GEMMs (runtime/cuda/gemm.cuh) against uoe::gemm, and the GPU expert functions
// (runtime/cuda/experts.cuh) against layers/experts.cpp. GEMMs use integer-valued inputs, exact in
// fp32 whatever the blocking, so they must match bit for bit (COMPUTE_32F, no TF32). The expert
// functions use random inputs: GELU and softmax arithmetic is shared, GEMM summation orders differ,
// so 1e-4 relative (O(1) values, sums of ≤ 64 terms).
#include <cstring>

#include "gpu_test.hpp"
#include "layers/experts.hpp"
#include "runtime/cuda/experts.cuh"
#include "runtime/cuda/gemm.cuh"
#include "runtime/bf16.hpp"
#include "runtime/gemm.hpp"

namespace uoe::gpu_test {
namespace {

using BlasGpu = Gpu;

TEST_F(BlasGpu, RowMajorGemmAllTransposes) {
  cuda::Blas blas(s());
  const int M = 23, N = 17, K = 31;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const int lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 1, ldc = N + 3;
      const auto A = integer_vector(static_cast<size_t>(ta ? K : M) * lda, 1, 3);
      const auto B = integer_vector(static_cast<size_t>(tb ? N : K) * ldb, 2, 3);
      auto C = integer_vector(static_cast<size_t>(M) * ldc, 3, 3);
      auto gA = up(A), gB = up(B), gC = up(C);
      gemm(ta, tb, M, N, K, 2.0f, A.data(), lda, B.data(), ldb, 0.5f, C.data(), ldc);
      blas.gemm(ta, tb, M, N, K, 2.0f, gA.data(), lda, gB.data(), ldb, 0.5f, gC.data(), ldc);
      expect_equal(down(gC), C, ta ? (tb ? "AᵀBᵀ" : "AᵀB") : (tb ? "ABᵀ" : "AB"));
    }
}

// Expert GEMMs: equal row counts take the strided-batched path, unequal ones (one expert empty) the
// grouped path; both equal a per-expert loop of uoe::gemm.
TEST_F(BlasGpu, ExpertGemmsStridedAndGrouped) {
  cuda::Blas blas(s());
  const int E = 4, d = 24, f = 40;
  for (bool equal : {true, false}) {
    const std::vector<int> offsets = equal ? std::vector<int>{0, 9, 18, 27, 36} : std::vector<int>{0, 5, 5, 19, 22};
    const int R = offsets.back();
    const auto x = integer_vector(static_cast<size_t>(R) * d, 1, 2), W = integer_vector(static_cast<size_t>(E) * d * f, 2, 2);
    std::vector<float> y(static_cast<size_t>(R) * f);
    for (int e = 0; e < E; ++e) {
      const int n = offsets[e + 1] - offsets[e];
      if (n) gemm(false, false, n, f, d, 1.0f, x.data() + static_cast<size_t>(offsets[e]) * d, d,
                  W.data() + static_cast<size_t>(e) * d * f, f, 0.0f, y.data() + static_cast<size_t>(offsets[e]) * f, f);
    }
    auto gx = up(x), gW = up(W);
    cuda::DeviceBuffer<float> gy(y.size());
    std::vector<cuda::GemmProblem> p(E);
    for (int e = 0; e < E; ++e)
      p[e] = {offsets[e + 1] - offsets[e], f, d, gx.data() + static_cast<size_t>(offsets[e]) * d,
              gW.data() + static_cast<size_t>(e) * d * f, gy.data() + static_cast<size_t>(offsets[e]) * f};
    blas.gemm_experts(false, false, 1.0f, d, f, 0.0f, f, p);
    EXPECT_EQ(blas.last_path(), equal ? cuda::ExpertGemmPath::strided_batched : cuda::ExpertGemmPath::grouped);
    expect_equal(down(gy), y, equal ? "strided-batched" : "grouped");
  }
}

// --precision bf16: cuBLAS on bf16 inputs (gemm_mixed, gemm_experts) against uoe::gemm_mixed, the
// CPU's emulated path. Inputs k/8 (|k| ≤ 15, exact in bf16) moved by 2^-12 (under half a bf16 ulp
// at |x| ≥ 1/8): both paths must round them back to k/8, and their products (multiples of 1/64)
// sum exactly in fp32, so the results must be equal bit for bit — and differ from fp32's.
std::vector<float> near_bf16(size_t n, uint64_t stream) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const int k = static_cast<int>(rng_below(17, stream, i, 31)) - 15;
    v[i] = k == 0 ? 0.0f : k / 8.0f + (k > 0 ? 0x1p-12f : -0x1p-12f);
  }
  return v;
}
TEST_F(BlasGpu, Bf16GemmsMatchTheCpuEmulation) {
  const ScopedPrecision bf16(Precision::bf16);
  cuda::Blas blas(s());
  const int M = 23, N = 17, K = 31;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const int lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 1, ldc = N + 3;
      const auto A = near_bf16(static_cast<size_t>(ta ? K : M) * lda, 1), B = near_bf16(static_cast<size_t>(tb ? N : K) * ldb, 2);
      auto C = near_bf16(static_cast<size_t>(M) * ldc, 3), C32 = C;
      auto gA = up(A), gB = up(B), gC = up(C);
      gemm_mixed(ta, tb, M, N, K, 2.0f, A.data(), lda, B.data(), ldb, 0.5f, C.data(), ldc);
      gemm(ta, tb, M, N, K, 2.0f, A.data(), lda, B.data(), ldb, 0.5f, C32.data(), ldc);
      blas.gemm_mixed(ta, tb, M, N, K, 2.0f, gA.data(), lda, gB.data(), ldb, 0.5f, gC.data(), ldc);
      expect_equal(down(gC), C, ta ? (tb ? "bf16 AᵀBᵀ" : "bf16 AᵀB") : (tb ? "bf16 ABᵀ" : "bf16 AB"));
      EXPECT_NE(C, C32);
    }
  const int E = 4, d = 24, f = 40;
  for (bool equal : {true, false}) {
    const std::vector<int> offsets = equal ? std::vector<int>{0, 9, 18, 27, 36} : std::vector<int>{0, 5, 5, 19, 22};
    const int R = offsets.back();
    const auto x = near_bf16(static_cast<size_t>(R) * d, 4), W = near_bf16(static_cast<size_t>(E) * d * f, 5);
    std::vector<float> y(static_cast<size_t>(R) * f);
    for (int e = 0; e < E; ++e) {
      const int n = offsets[e + 1] - offsets[e];
      if (n) gemm_mixed(false, false, n, f, d, 1.0f, x.data() + static_cast<size_t>(offsets[e]) * d, d,
                        W.data() + static_cast<size_t>(e) * d * f, f, 0.0f, y.data() + static_cast<size_t>(offsets[e]) * f, f);
    }
    auto gx = up(x), gW = up(W);
    cuda::DeviceBuffer<float> gy(y.size());
    std::vector<cuda::GemmProblem> p(E);
    for (int e = 0; e < E; ++e)
      p[e] = {offsets[e + 1] - offsets[e], f, d, gx.data() + static_cast<size_t>(offsets[e]) * d,
              gW.data() + static_cast<size_t>(e) * d * f, gy.data() + static_cast<size_t>(offsets[e]) * f};
    blas.gemm_experts(false, false, 1.0f, d, f, 0.0f, f, p);
    EXPECT_EQ(blas.last_path(), equal ? cuda::ExpertGemmPath::strided_batched : cuda::ExpertGemmPath::grouped);
    expect_equal(down(gy), y, equal ? "bf16 strided-batched" : "bf16 grouped");
  }
}

cuda::DeviceExpertRows device_rows(const ExpertRows& r, cudaStream_t s) {
  cuda::DeviceExpertRows d;
  d.n_experts = r.n_experts;
  d.offsets = r.offsets;
  d.seg = r.seg;
  d.pos = r.pos;
  d.offsets_dev.upload(std::span<const int>(r.offsets), s);
  d.x.upload(std::span<const float>(r.x.data(), r.x.size()), s);
  d.pos_dev.upload(std::span<const int32_t>(r.pos), s);
  return d;
}

ExpertRows make_rows(int d, const std::vector<int>& offsets, const std::vector<int32_t>& seg,
                     const std::vector<int32_t>& pos) {
  ExpertRows r;
  r.n_experts = static_cast<int>(offsets.size()) - 1;
  r.offsets = offsets;
  r.seg = seg;
  r.pos = pos;
  const auto x = random_vector(static_cast<size_t>(r.rows()) * d, 9, 1.0f);
  r.x.resize(x.size());
  std::memcpy(r.x.data(), x.data(), x.size() * sizeof(float));
  return r;
}

TEST_F(BlasGpu, MlpExpertsMatchCpu) {
  const int d = 16, f = 24, E = 3;
  const ExpertRows rows = make_rows(d, {0, 6, 6, 13}, std::vector<int32_t>(13, 0), std::vector<int32_t>(13, 0));
  const int R = rows.rows();
  const auto W1 = random_vector(static_cast<size_t>(E) * d * f, 1, 0.3f), b1 = random_vector(static_cast<size_t>(E) * f, 2, 0.3f),
             W2 = random_vector(static_cast<size_t>(E) * f * d, 3, 0.3f), dy = random_vector(static_cast<size_t>(R) * d, 4, 1.0f);
  MlpExpertCache cache;
  std::vector<float> y(static_cast<size_t>(R) * d), dx(y.size());
  std::vector<float> dW1(W1.size(), 0.5f), db1(b1.size(), 0.5f), dW2(W2.size(), 0.5f);
  mlp_experts_forward(y.data(), cache, rows, W1.data(), b1.data(), W2.data(), d, f);
  mlp_experts_backward(dx.data(), dW1.data(), db1.data(), dW2.data(), dy.data(), cache, rows, W1.data(), W2.data(), d, f);

  cuda::Blas blas(s());
  cuda::DeviceExpertRows grows = device_rows(rows, s());
  auto gW1 = up(W1), gb1 = up(b1), gW2 = up(W2), gdy = up(dy);
  auto gdW1 = up(std::vector<float>(W1.size(), 0.5f)), gdb1 = up(std::vector<float>(b1.size(), 0.5f)),
       gdW2 = up(std::vector<float>(W2.size(), 0.5f));
  cuda::DeviceBuffer<float> gy(y.size()), gdx(dx.size());
  cuda::DeviceMlpCache gc;
  cuda::mlp_experts_forward(gy.data(), gc, grows, gW1.data(), gb1.data(), gW2.data(), d, f, blas);
  cuda::mlp_experts_backward_data(gdx.data(), gdy.data(), gc, grows, gW1.data(), gW2.data(), d, f, blas);
  cuda::mlp_experts_backward_weights(gdW1.data(), gdb1.data(), gdW2.data(), gdy.data(), gc, grows, d, f, blas);
  expect_close(down(gy), y, 1e-5, 1e-4, "y");
  expect_close(down(gdx), dx, 1e-5, 1e-4, "dx");
  expect_close(down(gdW1), dW1, 1e-5, 1e-4, "dW1");
  expect_close(down(gdb1), db1, 1e-5, 1e-4, "db1");
  expect_close(down(gdW2), dW2, 1e-5, 1e-4, "dW2");
}

TEST_F(BlasGpu, AttentionExpertsMatchCpu) {
  const int d = 16, g = 2, dh = 4, gd = g * dh, W3 = 3 * gd, E = 2;
  const ExpertRows rows = make_rows(d, {0, 7, 12}, {0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0},
                                    {0, 1, 2, 0, 1, 2, 3, 2, 3, 5, 6, 9});
  const int R = rows.rows();
  const auto Wqkv = random_vector(static_cast<size_t>(E) * d * W3, 1, 0.3f), Wo = random_vector(static_cast<size_t>(E) * gd * d, 2, 0.3f),
             dy = random_vector(static_cast<size_t>(R) * d, 3, 1.0f);
  AttnExpertCache cache;
  std::vector<float> y(static_cast<size_t>(R) * d), dx(y.size()), dWqkv(Wqkv.size(), 0.25f), dWo(Wo.size(), 0.25f);
  attn_experts_forward(y.data(), cache, rows, Wqkv.data(), Wo.data(), d, g, dh);
  attn_experts_backward(dx.data(), dWqkv.data(), dWo.data(), dy.data(), cache, rows, Wqkv.data(), Wo.data(), d, g, dh);

  cuda::Blas blas(s());
  cuda::DeviceExpertRows grows = device_rows(rows, s());
  auto gWqkv = up(Wqkv), gWo = up(Wo), gdy = up(dy);
  auto gdWqkv = up(std::vector<float>(Wqkv.size(), 0.25f)), gdWo = up(std::vector<float>(Wo.size(), 0.25f));
  cuda::DeviceBuffer<float> gy(y.size()), gdx(dx.size());
  cuda::DeviceAttnCache gc;
  cuda::attn_experts_forward(gy.data(), gc, grows, gWqkv.data(), gWo.data(), d, g, dh, blas);
  cuda::attn_experts_backward_data(gdx.data(), gdy.data(), gc, grows, gWqkv.data(), gWo.data(), d, g, dh, blas);
  cuda::attn_experts_backward_weights(gdWqkv.data(), gdWo.data(), gdy.data(), gc, grows, d, g, dh, blas);
  expect_close(down(gy), y, 1e-5, 1e-4, "y");
  expect_close(down(gc.att), std::vector<float>(cache.att.begin(), cache.att.end()), 1e-6, 1e-4, "P");
  expect_close(down(gdx), dx, 1e-5, 1e-4, "dx");
  expect_close(down(gdWqkv), dWqkv, 1e-5, 1e-4, "dWqkv");
  expect_close(down(gdWo), dWo, 1e-5, 1e-4, "dWo");
}

}  // namespace
}  // namespace uoe::gpu_test
