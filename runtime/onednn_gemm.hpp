// bf16 GEMMs through oneDNN's matmul (Debian's libdnnl-dev): gemm_mixed's oneDNN path
// (runtime/gemm.hpp). The inputs are rounded to bf16 into packed copies as they are stored, and
// oneDNN is told the layout: a transposed B as [N, K] (its "ba" weights, a linear layer's layout,
// which its kernels reorder as they do a plain B: on an AMX Xeon the same bits), a transposed A as
// a strided source (the weight gradients' saved activations; other bits than a plain A for deep
// products, so it has its own row period) — nothing is transposed on the way (a transpose cost the
// weight gradients a third of their rate). C is accumulated in fp32
// (beta through a sum post-op, alpha through an output scale).
//
// Threads: each oneDNN call runs on one thread (its OpenMP thread count held to 1 for the call, and
// for the creation of its primitive, so its kernel plan never depends on --threads); large products
// are split over the compute threads by rows of C at a row period found by trying, as gemm() does
// (runtime/gemm.cpp), so a run computes the same bits on 1 thread as on N (docs/architecture.md,
// Contracts: Determinism). Primitives are cached by shape (creating one costs ~1-2 ms, more than a
// whole expert product): the rows a primitive computes come in multiples of a row quantum (whole
// row periods, 32 rows or more; a part's last rows padded up to one quantum through a scratch C) and
// the depth is padded with zeros to a multiple of 32, so that the step's changing row counts map
// onto a few dozen shapes per product kind.
//
// OnednnInput::f32 carries the same bf16-rounded inputs as fp32 through oneDNN's f32 matmul: each
// product of two bf16 numbers is exact in fp32 (8 + 8 significant bits), so it computes what the bf16
// matmul computes up to the order of the fp32 sums. The tests use it to check this path's layouts,
// transposes, alpha/beta, row splits and caching on CPUs whose oneDNN has no bf16 matmul (oneDNN 2.6
// needs AVX-512 for bf16); uoe-train never selects it.
#pragma once
#include <cstdint>
#include <string>

namespace uoe {

enum class OnednnInput { bf16, f32 };

// Empty when oneDNN creates a matmul on `in` inputs on this CPU; otherwise why not (oneDNN's words,
// its version and this CPU's ISA). Tried once per process and type.
std::string onednn_unavailable(OnednnInput in);
// "oneDNN 2.6.3" and the implementation oneDNN picks for a typical expert product ("brg:avx512_core_bf16",
// "ref:any", …), for the start-up line; "oneDNN 2.6.3" alone when the type is unavailable.
std::string onednn_describe(OnednnInput in);
// C[M,N] = alpha·op(A)·op(B) + beta·C with A and B rounded to bf16 (gemm_mixed's contract and
// arguments, M, N, K > 0). Throws uoe::Error when oneDNN refuses the type or a shape.
void onednn_gemm(OnednnInput in, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc);
// The row period at which onednn_gemm splits C over threads and cuts its rows into quanta (0:
// products stay whole), found by trying once per type and layout of A (a_trans: A held transposed,
// as onednn_gemm hands a transposed A over).
int onednn_row_period(OnednnInput in, bool a_trans = false);
// Primitives created so far in this process (tests: row counts map onto few shapes).
int64_t onednn_primitives_created();

}  // namespace uoe
