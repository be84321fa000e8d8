// The CPU's vector instructions, read from CPUID feature bits (never from a table of CPU models),
// and the BLAS kernels chosen from them.
//
// Debian's OpenBLAS 0.3.21 picks its kernels from a table of CPU models: on a model it does not know
// (an Intel Xeon family 6 model 207, Sapphire Rapids class) it falls back to its SSE3 "Prescott"
// kernels, 3-4x slower than its AVX-512 ones on the same cores. OpenBLAS reads OPENBLAS_CORETYPE
// once, when it is loaded (before main), so the fix is to re-execute the process once with the
// variable set (blas_kernels_select). The decision itself (blas_kernels_decide) is a pure function
// of the CPU's features, the core OpenBLAS picked and the user's own OPENBLAS_CORETYPE, so it is
// tested by table on any machine (tests/unit/test_cpu_features.cpp).
#pragma once
#include <string>

namespace uoe {

struct CpuFeatures {
  std::string vendor;      // CPUID leaf 0: "GenuineIntel", "AuthenticAMD", …
  std::string model_name;  // the brand string (leaves 0x80000002-4), e.g. "AMD EPYC 7B13"
  int family = 0, model = 0;  // display family and model (extended fields folded in)
  // Instruction-set bits; each AVX one only counts when the OS saves the registers it needs
  // (XGETBV: XMM|YMM for AVX, plus opmask|ZMM for AVX-512, plus tile state for AMX).
  bool sse3 = false, avx = false, avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512_bf16 = false;
  bool amx_tile = false, amx_bf16 = false;
};

// This CPU's features (CPUID + XGETBV). Off x86 everything is false.
CpuFeatures cpu_features_detect();

// The widest vector FMA class the features allow, in increasing order.
enum class VectorIsa { baseline, avx, avx2_fma, avx512, avx512_bf16 };
VectorIsa cpu_vector_isa(const CpuFeatures& f);
// "AVX-512 (F/BW/VL/DQ) + BF16", "AVX2 + FMA", … for the start-up line; with ", AMX" when present.
std::string cpu_isa_describe(const CpuFeatures& f);

// The vector class of an OpenBLAS core name ("Prescott", "Haswell", "Zen", "SkylakeX", …; case
// ignored); false for a name this table does not know (then nothing is overridden).
bool blas_core_isa(const std::string& core, VectorIsa* isa);

enum class KernelAction {
  keep,         // the library's pick already uses the CPU's widest vectors (or nothing better exists)
  set_coretype, // re-execute with OPENBLAS_CORETYPE = coretype
  respect_user  // the user set OPENBLAS_CORETYPE: theirs stands
};
struct KernelDecision {
  KernelAction action = KernelAction::keep;
  std::string coretype;  // set_coretype: the target; respect_user: the user's; keep: the library's
  std::string reason;    // why, for the start-up line
};
// The pure decision. `blas_core` is what openblas_get_corename() reports; `user_coretype` is the
// user's OPENBLAS_CORETYPE (null or empty: not set). Targets, by features: AVX-512 F+BW+VL+DQ with
// BF16 → Cooperlake, without → SkylakeX, AVX2+FMA → Haswell; a pick of the same class is kept
// (SapphireRapids, Cooperlake or SkylakeX on an AVX-512 CPU: one sgemm), except Zen on an AVX2
// CPU: its sgemm is Haswell's microkernel with other blocking, measured 8-10% slower on the expert
// GEMMs' d 128 shapes on an AMD Zen 3 (bench/README.md), so it becomes Haswell.
KernelDecision blas_kernels_decide(const CpuFeatures& f, const std::string& blas_core, const char* user_coretype);

// At the top of main, before MPI_Init and before any thread starts: when blas_kernels_decide says
// set_coretype, re-executes this process (execv /proc/self/exe, same arguments) with
// OPENBLAS_CORETYPE set, once (the guard variable UOE_BLAS_REEXEC stops a loop); in the
// re-executed process it puts the environment back as the user had it, so the programs it starts
// decide for themselves. Returns normally when nothing is to be done or when the exec failed (then
// the library's kernels run, and the start-up line says so).
// UOE_TEST_BLAS_CORENAME=NAME pretends the library picked NAME (a test hook: the re-exec path can
// be exercised on a CPU whose model the library knows).
void blas_kernels_select();

// One line for the start-up log: CPU model, vendor/family/model, ISA, the kernels running and why.
// blas_kernels_select must have run first in this process (otherwise the line says so).
std::string blas_kernels_summary();
// False when this process runs other kernels than it chose (the re-exec failed, or this OpenBLAS
// build ignored the OPENBLAS_CORETYPE it was given): every rank checks its own and warns.
bool blas_kernels_as_chosen();

// How the bf16 GEMMs run on the CPU (runtime/gemm.hpp, gemm_mixed): through oneDNN's bf16 matmul
// where the CPU has bf16 instructions (AVX512-BF16's dot products or AMX-BF16 tiles), emulated
// elsewhere (inputs rounded to bf16, the fp32 GEMM). The user's UOE_BF16_GEMM overrides: "onednn"
// or "emulated" on any CPU (tests force each path), "auto" or unset chooses.
enum class Bf16GemmPath { emulated, onednn };
const char* bf16_gemm_path_name(Bf16GemmPath p);  // "emulated" | "onednn"
struct Bf16GemmDecision {
  Bf16GemmPath path = Bf16GemmPath::emulated;
  bool forced = false;  // the user's UOE_BF16_GEMM chose
  std::string reason;   // why, for the start-up line
};
// The pure decision from the features (never from a table of models) and the user's UOE_BF16_GEMM
// (null or empty: not set). Throws uoe::Error naming UOE_BF16_GEMM for a value it does not know.
// Whether oneDNN can run a bf16 matmul here is the caller's check (runtime/onednn_gemm.hpp).
Bf16GemmDecision bf16_gemm_decide(const CpuFeatures& f, const char* user_choice);

}  // namespace uoe
