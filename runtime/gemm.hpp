// GEMM on the reference path: row-major single-precision through OpenBLAS (cblas_sgemm).
// C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C, leading dimensions in elements.
// Large products run split over the compute threads (runtime/threads.hpp) by rows or columns of C,
// each part a single-threaded BLAS call: the same bits for any thread count.
#pragma once
#include <string>

namespace uoe {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);

// The model's GEMMs (experts, the tied head) at the run's compute precision (runtime/bf16.hpp):
// gemm() itself in fp32; in bf16, A and B rounded to bf16 (copies; the caller's arrays are left
// alone) and multiplied with fp32 accumulation. On CPUs without bf16 instructions that is the
// emulated path: the fp32 GEMM on the rounded inputs gives what a bf16-input, fp32-accumulate GEMM
// gives, up to the order of the sums — with gemm()'s order, so the same bits on any thread count.
// The router's GEMMs call gemm(): routing is decided in fp32 in both precisions.
void gemm_mixed(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc);
// How gemm_mixed runs in bf16 on this CPU, for the start-up log.
std::string gemm_bf16_describe();

// This machine's sgemm rate in GFLOP/s for an n×n×n product with the current thread count: the
// best of `reps` timed runs after a warm-up, so FLOP/s shares can be quoted against a peak measured
// in the same run on the same cores.
double gemm_measure_gflops(int n, int reps);

// Sets the compute threads of this process (runtime/threads.hpp; 0 keeps the current count). The
// BLAS itself always runs single-threaded: gemm() splits large products over the threads.
void gemm_set_threads(int n);
int gemm_get_threads();
// "OpenBLAS Cooperlake, small-matrix GEMM pieces": the library's core and how gemm() calls it (for
// the start-up log).
std::string gemm_describe();

}  // namespace uoe
