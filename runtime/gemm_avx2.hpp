// uoe's own single-precision GEMM for AVX2 + FMA CPUs without AVX-512, for the model's small
// products (runtime/gemm.cpp sends them here). OpenBLAS's Haswell kernels, which such CPUs get, pack
// both operands and zero C for beta = 0 on every call; at the reference configuration's shapes
// (K and N of 128 or less, a few hundred rows) those copies are ~13% of a training step. Here only B
// is packed (into 16-column panels, N·K moves, amortised over M rows); A is read in place, six rows
// at a time (transposed: copied once per depth range, its power-of-two strides would thrash L1);
// C is written once, from registers. It runs TN products too, but in a training step those were
// slower here than OpenBLAS's (bench/README.md's optimisation log), so gemm() sends it NN and NT.
//
// Rounding: every element of C is one fused multiply-add chain over k in increasing order, from
// zero, then alpha·sum (+ beta·C): so its bits do not depend on M, on which rows a call gets or on
// where a product is cut into row ranges (the row split over threads, any period) — only on the
// element's own row of op(A) and column of op(B).
#pragma once

namespace uoe {

// Whether this build and CPU run gemm_avx2 (compiled with AVX2 + FMA, and the CPU has them).
bool gemm_avx2_available();

// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C (row-major, leading dimensions in elements);
// beta = 0 never reads C. Any shape but op(A) and op(B) both transposed. Single-threaded; throws
// uoe::Error where gemm_avx2_available() is false.
void gemm_avx2(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
               const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace uoe
