// cuBLAS expert GEMMs (runtime/cuda/gemm.cuh explains the row-major mapping and the path choice).
// Compiled only; see docs/gpu.md.
#include <algorithm>
#include <vector>

#include "runtime/bf16.hpp"
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/gemm.cuh"
#include "runtime/cuda/kernels.cuh"

namespace uoe::cuda {
namespace {
cublasOperation_t op(bool trans) { return trans ? CUBLAS_OP_T : CUBLAS_OP_N; }
bool changes_nothing(const GemmProblem& p, float beta) { return p.M == 0 || p.N == 0 || (p.K == 0 && beta == 1.0f); }
}  // namespace

Blas::Blas(cudaStream_t stream, size_t workspace_bytes) : stream_(stream) {
  UOE_CHECK_CUBLAS(cublasCreate(&handle_));
  try {
    UOE_CHECK_CUBLAS(cublasSetStream(handle_, stream_));
    UOE_CHECK_CUBLAS(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST));
    if (workspace_bytes) {
      workspace_.resize(workspace_bytes);
      UOE_CHECK_CUBLAS(cublasSetWorkspace(handle_, workspace_.data(), workspace_bytes));
    }
  } catch (...) {
    cublasDestroy(handle_);
    throw;
  }
}

Blas::~Blas() {
  if (handle_) (void)cublasDestroy(handle_);
}

void Blas::set_stream(cudaStream_t s) {
  if (s == stream_) return;
  stream_switch_.record(stream_);
  stream_switch_.wait_in(s);
  stream_ = s;
  UOE_CHECK_CUBLAS(cublasSetStream(handle_, s));
  // The workspace is re-bound with the stream (cuBLAS resets it to its default on a stream change).
  if (workspace_.size()) UOE_CHECK_CUBLAS(cublasSetWorkspace(handle_, workspace_.data(), workspace_.size()));
}

cublasComputeType_t Blas::compute_type() const {
  return tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
}

const uint16_t* Blas::stage_bf16(DeviceBuffer<uint16_t>& buf, const float* x, int rows, int cols, int ld) {
  const size_t n = rows > 0 && cols > 0 ? static_cast<size_t>(rows - 1) * ld + cols : 0;
  buf.resize(std::max<size_t>(n, 1));
  bf16_pack(buf.data(), x, static_cast<int64_t>(n), stream_);
  return buf.data();
}

void Blas::gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
                int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  // Column-major Cᵀ[N, M] = op(B)ᵀ · op(A)ᵀ (see the header).
  UOE_CHECK_CUBLAS(cublasGemmEx(handle_, op(trans_b), op(trans_a), N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F,
                                lda, &beta, C, CUDA_R_32F, ldc, compute_type(), CUBLAS_GEMM_DEFAULT));
}

void Blas::gemm_mixed(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                      const float* B, int ldb, float beta, float* C, int ldc) {
  if (compute_precision() != Precision::bf16 || K == 0) {
    gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (M == 0 || N == 0) return;
  const uint16_t* a = stage_bf16(a16_, A, trans_a ? K : M, trans_a ? M : K, lda);
  const uint16_t* b = stage_bf16(b16_, B, trans_b ? N : K, trans_b ? K : N, ldb);
  UOE_CHECK_CUBLAS(cublasGemmEx(handle_, op(trans_b), op(trans_a), N, M, K, &alpha, b, CUDA_R_16BF, ldb, a,
                                CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void Blas::gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                                long long stride_a, const float* B, int ldb, long long stride_b, float beta, float* C,
                                int ldc, long long stride_c, int batch) {
  gemm_strided_batched_as(CUDA_R_32F, trans_a, trans_b, M, N, K, alpha, A, lda, stride_a, B, ldb, stride_b, beta, C,
                          ldc, stride_c, batch);
}

void Blas::gemm_strided_batched_as(cudaDataType_t in, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                                   const void* A, int lda, long long stride_a, const void* B, int ldb,
                                   long long stride_b, float beta, float* C, int ldc, long long stride_c, int batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  const cublasComputeType_t compute = in == CUDA_R_32F ? compute_type() : CUBLAS_COMPUTE_32F;
  UOE_CHECK_CUBLAS(cublasGemmStridedBatchedEx(handle_, op(trans_b), op(trans_a), N, M, K, &alpha, B, in, ldb,
                                              stride_b, A, in, lda, stride_a, &beta, C, CUDA_R_32F, ldc,
                                              stride_c, batch, compute, CUBLAS_GEMM_DEFAULT));
}

void Blas::gemm_experts(bool trans_a, bool trans_b, float alpha, int lda, int ldb, float beta, int ldc,
                        std::span<const GemmProblem> problems) {
  std::vector<GemmProblem> p;
  p.reserve(problems.size());
  for (const GemmProblem& q : problems)
    if (!changes_nothing(q, beta)) p.push_back(q);
  last_path_ = ExpertGemmPath::none;
  if (p.empty()) return;

  // The inputs as the calls take them: fp32 in place, or (bf16) each operand's whole span — the
  // experts' rows or weight slabs, one region for all problems — rounded once into a staging copy
  // at the same offsets, so strides and leading dimensions stay.
  const size_t G = p.size();
  std::vector<const void*> A(G), B(G);
  cudaDataType_t in = CUDA_R_32F;
  if (compute_precision() == Precision::bf16) {
    in = CUDA_R_16BF;
    auto stage = [&](DeviceBuffer<uint16_t>& buf, bool is_a, std::vector<const void*>& out) {
      const float* lo = nullptr;
      const float* hi = nullptr;
      for (const GemmProblem& q : p) {
        const bool t = is_a ? trans_a : trans_b;
        const int rows = is_a ? (t ? q.K : q.M) : (t ? q.N : q.K), cols = is_a ? (t ? q.M : q.K) : (t ? q.K : q.N);
        const int ld = is_a ? lda : ldb;
        const float* x = is_a ? q.A : q.B;
        if (rows == 0 || cols == 0) continue;
        const float* end = x + static_cast<size_t>(rows - 1) * ld + cols;
        lo = lo && lo < x ? lo : x;
        hi = hi && hi > end ? hi : end;
      }
      const uint16_t* base = lo ? stage_bf16(buf, lo, 1, static_cast<int>(hi - lo), 0) : nullptr;
      for (size_t e = 0; e < G; ++e) {
        const float* x = is_a ? p[e].A : p[e].B;
        out[e] = base && x >= lo && x < hi ? static_cast<const void*>(base + (x - lo)) : static_cast<const void*>(base);
      }
    };
    stage(a16_, true, A);
    stage(b16_, false, B);
  } else {
    for (size_t e = 0; e < G; ++e) {
      A[e] = p[e].A;
      B[e] = p[e].B;
    }
  }

  // Equal shapes at constant strides → one strided-batched call.
  bool uniform = true;
  const long long sa = p.size() > 1 ? p[1].A - p[0].A : 0;
  const long long sb = p.size() > 1 ? p[1].B - p[0].B : 0;
  const long long sc = p.size() > 1 ? p[1].C - p[0].C : 0;
  for (size_t e = 1; e < p.size() && uniform; ++e)
    uniform = p[e].M == p[0].M && p[e].N == p[0].N && p[e].K == p[0].K && p[e].A - p[e - 1].A == sa &&
              p[e].B - p[e - 1].B == sb && p[e].C - p[e - 1].C == sc;
  if (uniform) {
    gemm_strided_batched_as(in, trans_a, trans_b, p[0].M, p[0].N, p[0].K, alpha, A[0], lda, sa, B[0], ldb, sb, beta,
                            p[0].C, ldc, sc, static_cast<int>(p.size()));
    last_path_ = ExpertGemmPath::strided_batched;
    return;
  }
#if CUBLAS_VERSION >= 120500
  gemm_grouped(in, trans_a, trans_b, alpha, lda, ldb, beta, ldc, p, A, B);
  last_path_ = ExpertGemmPath::grouped;
#else
  for (size_t e = 0; e < G; ++e)
    gemm_strided_batched_as(in, trans_a, trans_b, p[e].M, p[e].N, p[e].K, alpha, A[e], lda, 0, B[e], ldb, 0, beta,
                            p[e].C, ldc, 0, 1);
  last_path_ = ExpertGemmPath::loop;
#endif
}

void Blas::gemm_grouped(cudaDataType_t in, bool trans_a, bool trans_b, float alpha, int lda, int ldb, float beta,
                        int ldc, std::span<const GemmProblem> p, std::span<const void* const> A,
                        std::span<const void* const> B) {
#if CUBLAS_VERSION >= 120500
  const int G = static_cast<int>(p.size());
  // Host arrays (one entry per group; every group holds one problem). In column-major terms each
  // problem is Cᵀ = op(B)ᵀ·op(A)ᵀ: m = N, n = M, cuBLAS's A is our B and its B is our A.
  std::vector<cublasOperation_t> ta(G, op(trans_b)), tb(G, op(trans_a));
  std::vector<int> m(G), n(G), k(G), lda_v(G, ldb), ldb_v(G, lda), ldc_v(G, ldc), group_size(G, 1);
  std::vector<float> alphas(G, alpha), betas(G, beta);
  for (int e = 0; e < G; ++e) {
    m[e] = p[e].N;
    n[e] = p[e].M;
    k[e] = p[e].K;
  }
  // Device pointer arrays [3, G]: cuBLAS-A (our B), cuBLAS-B (our A), C, copied in stream order
  // before the GEMM reads them.
  std::vector<const void*> ptrs(3 * static_cast<size_t>(G));
  for (int e = 0; e < G; ++e) {
    ptrs[e] = B[e];
    ptrs[G + e] = A[e];
    ptrs[2 * G + e] = p[e].C;
  }
  device_ptrs_.resize(ptrs.size());
  uploader_.copy<const void*>(device_ptrs_.data(), ptrs, stream_);
  const void* const* d = device_ptrs_.data();
  const cublasComputeType_t compute = in == CUDA_R_32F ? compute_type() : CUBLAS_COMPUTE_32F;
  UOE_CHECK_CUBLAS(cublasGemmGroupedBatchedEx(
      handle_, ta.data(), tb.data(), m.data(), n.data(), k.data(), alphas.data(), d, in, lda_v.data(), d + G,
      in, ldb_v.data(), betas.data(), const_cast<void* const*>(d + 2 * G), CUDA_R_32F, ldc_v.data(), G,
      group_size.data(), compute));
#else
  (void)in, (void)trans_a, (void)trans_b, (void)alpha, (void)lda, (void)ldb, (void)beta, (void)ldc, (void)p, (void)A,
      (void)B;
  UOE_ASSERT(false, "grouped GEMM needs cuBLAS 12.5 or newer");
#endif
}

}  // namespace uoe::cuda
