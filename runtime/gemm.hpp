// GEMM on the reference path: row-major single-precision through OpenBLAS (cblas_sgemm).
// C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C, leading dimensions in elements.
#pragma once

namespace uoe {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);

// Sets the BLAS thread count for this process (0 leaves OpenBLAS's default).
void gemm_set_threads(int n);
int gemm_get_threads();

}  // namespace uoe
