// GEMM on the GPU path: cuBLAS behind the reference path's row-major convention (runtime/gemm.hpp).
//
// Row-major ⇄ column-major: a row-major X with leading dimension ld is, to cuBLAS, the column-major
// matrix Xᵀ with the same ld. So C = op(A)·op(B) (row-major, [M, N]) is computed as the column-major
// product Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS gets (opB, opA, m = N, n = M, k = K, B, ldb, A, lda, C, ldc),
// each op unchanged (op(B)ᵀ of the stored Bᵀ is B·…, i.e. transposing twice cancels).
//
// Expert GEMMs: one product per local expert, each over that expert's rows. When every expert has
// the same shape and the operands sit at constant strides (equal token counts, e.g. capacity-bound
// routing), one strided-batched call does them all; otherwise one grouped call
// (cublasGemmGroupedBatchedEx, cuBLAS ≥ 12.5) with one group per expert; older cuBLAS loops.
//
// Precision: CUBLAS_COMPUTE_32F by default (full fp32, comparable with the OpenBLAS reference);
// set_tf32(true) allows TF32 tensor cores (faster on A100/H100, ~1e-3 relative error). With the
// process's compute precision bf16 (--precision, runtime/bf16.hpp) the expert GEMMs and gemm_mixed
// take their inputs as bf16 (CUDA_R_16BF, rounded by the body the CPU path rounds with, in a
// staging copy) with fp32 accumulation and an fp32 C (CUBLAS_COMPUTE_32F): the tensor-core rate,
// the CPU path's emulated numerics (runtime/gemm.hpp, gemm_mixed) up to the order of the sums.
//
// Host-only declarations: g++ and nvcc can both include this header.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "runtime/cuda/memory.cuh"

namespace uoe::cuda {

// One expert's product, row-major: C[M, N] = alpha · op(A)[M, K] · op(B)[K, N] + beta · C.
// Pointers to device memory; leading dimensions are shared by the whole call.
struct GemmProblem {
  int M = 0, N = 0, K = 0;
  const float* A = nullptr;
  const float* B = nullptr;
  float* C = nullptr;
};

// Which cuBLAS entry point gemm_experts used last (for tests and benchmarks).
enum class ExpertGemmPath { none, strided_batched, grouped, loop };

// A cuBLAS handle bound to one stream, with its workspace: created once per rank and reused for
// every GEMM (handle creation and workspace allocation are far too slow for a step). RAII.
class Blas {
 public:
  explicit Blas(cudaStream_t stream, size_t workspace_bytes = size_t{32} << 20);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  cublasHandle_t handle() const { return handle_; }
  cudaStream_t stream() const { return stream_; }
  // Rebinds the handle (and its workspace) to stream s; work queued on s waits for what was
  // queued on the old stream, so the shared workspace and pointer array are never used twice at once.
  void set_stream(cudaStream_t s);
  void set_tf32(bool on) { tf32_ = on; }

  // Row-major GEMM, the device twin of uoe::gemm (same arguments): always fp32 (the router's).
  void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
            int ldb, float beta, float* C, int ldc);
  // The twin of uoe::gemm_mixed: gemm in fp32, bf16 inputs with fp32 accumulation in bf16 (the
  // model's GEMMs: the tied head).
  void gemm_mixed(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                  const float* B, int ldb, float beta, float* C, int ldc);
  // Row-major strided batch: problem b uses A + b·stride_a, B + b·stride_b, C + b·stride_c.
  void gemm_strided_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                            long long stride_a, const float* B, int ldb, long long stride_b, float beta, float* C,
                            int ldc, long long stride_c, int batch);
  // One product per expert, at the compute precision (problems with M = 0 or N = 0, or K = 0 with
  // beta = 1, change nothing and are left out). Picks strided-batched / grouped / loop as described above; the pointer arrays the
  // grouped call needs are staged through pinned memory and copied in stream order.
  void gemm_experts(bool trans_a, bool trans_b, float alpha, int lda, int ldb, float beta, int ldc,
                    std::span<const GemmProblem> problems);
  ExpertGemmPath last_path() const { return last_path_; }

 private:
  cublasComputeType_t compute_type() const;
  // The calls on inputs of type `in` (CUDA_R_32F or CUDA_R_16BF); pointers A[e], B[e] of that type.
  void gemm_strided_batched_as(cudaDataType_t in, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                               const void* A, int lda, long long stride_a, const void* B, int ldb, long long stride_b,
                               float beta, float* C, int ldc, long long stride_c, int batch);
  void gemm_grouped(cudaDataType_t in, bool trans_a, bool trans_b, float alpha, int lda, int ldb, float beta, int ldc,
                    std::span<const GemmProblem> p, std::span<const void* const> A, std::span<const void* const> B);
  // x [rows, cols] at leading dimension ld, rounded to bf16 into `buf` at the same layout.
  const uint16_t* stage_bf16(DeviceBuffer<uint16_t>& buf, const float* x, int rows, int cols, int ld);

  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  DeviceBuffer<unsigned char> workspace_;
  bool tf32_ = false;
  ExpertGemmPath last_path_ = ExpertGemmPath::none;
  // Grouped-call pointer arrays: staged through pinned memory (Uploader) into one device array,
  // reused in stream order; set_stream orders the old stream's last use before the new stream.
  Uploader uploader_;
  Event stream_switch_;
  DeviceBuffer<const void*> device_ptrs_;
  DeviceBuffer<uint16_t> a16_, b16_;  // bf16 staging of the inputs (reused in stream order)
};

}  // namespace uoe::cuda
