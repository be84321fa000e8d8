// uoe's own single-precision GEMM kernels for the model's small products (runtime/gemm.cpp sends
// them here), in two vector widths: AVX2 + FMA (6 × 16 register tiles, for CPUs without AVX-512)
// and AVX-512 (12 × 32 tiles). OpenBLAS packs both operands and zeroes C for beta = 0 on every call
// (its Haswell kernels), or packs in small-matrix pieces (SkylakeX/Cooperlake); at the reference
// configuration's shapes (K and N of 128 or less, a few hundred rows) those copies and edges cost
// 10-40% of the products' time. Here only B is packed (into panels of one tile's width, N·K moves,
// amortised over M rows); A is read in place a tile's rows at a time (transposed: copied once per
// depth range, its power-of-two strides would thrash L1); C is written once, from registers. The
// AVX-512 width runs NN/NT products in one depth range up to 512 (d 512's products: no partial sums
// through memory) and passes B's panels in blocks that fit L2.
//
// Rounding: every element of C is one fused multiply-add chain over k in increasing order, from
// zero, then alpha·sum (+ beta·C by one more FMA): so its bits do not depend on M, on which rows a
// call gets, on where a product is cut into row ranges (the row split over threads, any period) or
// on the vector width — the AVX2 and AVX-512 kernels give the same bits — only on the element's own
// row of op(A) and column of op(B).
#pragma once

namespace uoe {

enum class OwnGemmIsa { avx2, avx512 };

// "AVX2" or "AVX-512", for start-up lines and messages.
const char* own_gemm_isa_name(OwnGemmIsa isa);

// Whether this build and CPU run the kernel of that width (compiled with AVX2 + FMA, resp.
// AVX-512 F, and the CPU has them).
bool gemm_own_available(OwnGemmIsa isa);

// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C (row-major, leading dimensions in elements);
// beta = 0 never reads C. Any shape but op(A) and op(B) both transposed. Single-threaded; throws
// uoe::Error where gemm_own_available(isa) is false.
void gemm_own(OwnGemmIsa isa, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc);

}  // namespace uoe
