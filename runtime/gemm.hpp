// GEMM on the reference path: row-major single-precision through OpenBLAS (cblas_sgemm).
// C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C, leading dimensions in elements.
// Large products run split over the compute threads (runtime/threads.hpp) by rows or columns of C,
// each part a single-threaded BLAS call: the same bits for any thread count.
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "runtime/cpu_features.hpp"  // Bf16GemmPath

namespace uoe {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);
// Part `part` (0 ≤ part < parts) of that product as gemm() cuts it over `parts` threads, on the
// calling thread, with gemm()'s bits: a product gemm() keeps whole is part 0's, and a part it does
// not make is nothing. Lets a caller run the parts of several products in one parallel region
// (each thread a different part of each, so that uneven cuts even out: layers/experts.cpp).
void gemm_part_of(int part, int parts, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc);

// The model's GEMMs (experts, the tied head) at the run's compute precision (runtime/bf16.hpp):
// gemm() itself in fp32; in bf16, A and B rounded to bf16 (copies; the caller's arrays are left
// alone) and multiplied with fp32 accumulation, by one of two paths (gemm_bf16_path):
//  - oneDNN's bf16 matmul (runtime/onednn_gemm.hpp), where the CPU has bf16 instructions
//    (AVX512-BF16 or AMX-BF16, from CPUID: runtime/cpu_features.hpp, bf16_gemm_decide);
//  - emulated elsewhere: the fp32 GEMM on the rounded inputs gives what a bf16-input,
//    fp32-accumulate GEMM gives, up to the order of the sums — with gemm()'s order.
// The two differ only in that order; each computes the same bits on any thread count.
// The router's GEMMs call gemm(): routing is decided in fp32 in both precisions.
void gemm_mixed(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc);
// True when gemm_mixed's products op(A)·op(B) of depth K give each row of C the same bits whatever
// rows they are computed with — uoe's own kernel in fp32 (runtime/gemm_own.hpp: every element one
// chain of FMAs over k). A caller may then cut such products by rows anywhere: e.g. run a chain of
// products and row kernels on each thread's rows in one parallel region (layers/experts.cpp).
// Elsewhere only gemm() may cut a product (at the BLAS kernels' row period, with its own rules).
bool gemm_rows_independent(bool trans_a, bool trans_b, int K);
// The path gemm_mixed takes in bf16 in this process: bf16_gemm_decide on this CPU and the user's
// UOE_BF16_GEMM, then emulated where oneDNN cannot run a bf16 matmul (unless the user forced
// onednn: then an error). Decided once; throws uoe::Error (naming UOE_BF16_GEMM) for a value it does
// not know or a forced path that cannot run.
Bf16GemmPath gemm_bf16_path();
// How gemm_mixed runs in bf16 in this process, one line for the start-up log (throws as
// gemm_bf16_path does).
std::string gemm_bf16_describe();
// Tests and benches: the bf16 path for a scope, whatever gemm_bf16_path chose (restored after).
// onednn_f32 is the oneDNN path with the rounded inputs carried as fp32 (runtime/onednn_gemm.hpp):
// it runs where oneDNN has no bf16 matmul; uoe-train never takes it. A path that cannot run here
// makes gemm_mixed throw uoe::Error saying why.
enum class Bf16GemmForce { none, emulated, onednn, onednn_f32 };
class ScopedBf16Gemm {
 public:
  explicit ScopedBf16Gemm(Bf16GemmForce f);
  ~ScopedBf16Gemm();
  ScopedBf16Gemm(const ScopedBf16Gemm&) = delete;
  ScopedBf16Gemm& operator=(const ScopedBf16Gemm&) = delete;

 private:
  Bf16GemmForce saved_;
};

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
// Whether uoe's AVX-512 kernel takes NN/NT products of depth 257-512 (on, the default) or leaves
// them to OpenBLAS as the AVX2 width does (off): the A/B switch of bench-step --ab own-deep. Set it
// between steps only.
void gemm_set_own_deep(bool on);
// Whether TN products (weight gradients) read A once in address order before OpenBLAS multiplies
// (on, the default): A is a layer's input, saved by the forward pass and by then in memory, and the
// kernel's transposed order of reads misses where a pass in order streams (bench/README.md, "Cold
// operands"). The same bits either way; the A/B switch of bench-step --ab touch-tn. Set it between
// steps only.
void gemm_set_touch_tn(bool on);

// A diagnostic (bench-step --gemm-kinds): while on, every part of a product that reaches a kernel
// (each thread's rows of a split product, as the BLAS or uoe's kernel gets it) is timed and counted
// by kind; with replay, each part then runs a second time at once, on the same operands, into a
// scratch C, timed apart: the same product with its operands in cache. In-step time against hot
// time is what the step loses to operands fetched from memory. Replays double the GEMM work, so
// the step's own timings mean nothing while they run. Set it between steps only.
enum class GemmKind { nn, nt, tn, narrow };  // narrow: M or N at most kNarrowProduct (the routers')
inline constexpr int kGemmKinds = 4;
inline constexpr int kNarrowProduct = 8;
struct GemmKindTimes {
  int64_t calls = 0;
  double flops = 0, seconds = 0, hot_seconds = 0;  // seconds summed over the threads
};
void gemm_observe(bool on, bool replay);  // on: from zero
std::array<GemmKindTimes, kGemmKinds> gemm_observed();
const char* gemm_kind_name(GemmKind k);

}  // namespace uoe
