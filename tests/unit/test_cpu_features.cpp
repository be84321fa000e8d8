// The BLAS kernel choice (runtime/cpu_features.hpp) by table: CPUID feature sets of Intel and AMD
// CPUs, with and without AVX-512, the core OpenBLAS picked and the user's OPENBLAS_CORETYPE → keep,
// re-execute with OPENBLAS_CORETYPE = X, or respect the user. The logic is tested here on every
// machine, not only on the one whose model the BLAS happens not to know. Changing any row's
// expectation (or the mapping under it) fails a named row.
#include <gtest/gtest.h>

#include <ostream>
#include <string>
#include <vector>

#include "runtime/cpu_features.hpp"
#include "runtime/error.hpp"
#include "runtime/fma_peak.hpp"

namespace uoe {
namespace {

CpuFeatures sse_only(const char* vendor, int family, int model) {
  CpuFeatures f;
  f.vendor = vendor;
  f.family = family;
  f.model = model;
  f.sse3 = true;
  return f;
}
CpuFeatures avx_only(const char* vendor, int family, int model) {
  CpuFeatures f = sse_only(vendor, family, model);
  f.avx = true;
  return f;
}
CpuFeatures avx2(const char* vendor, int family, int model) {
  CpuFeatures f = avx_only(vendor, family, model);
  f.avx2 = f.fma = true;
  return f;
}
CpuFeatures avx512(const char* vendor, int family, int model, bool bf16) {
  CpuFeatures f = avx2(vendor, family, model);
  f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = true;
  f.avx512_bf16 = bf16;
  return f;
}

const CpuFeatures kSapphireRapids = [] {  // Intel family 6 model 207 (Emerald Rapids) / 143
  CpuFeatures f = avx512("GenuineIntel", 6, 207, true);
  f.amx_tile = f.amx_bf16 = true;
  return f;
}();
const CpuFeatures kSkylakeX = avx512("GenuineIntel", 6, 85, false);
const CpuFeatures kZen3 = avx2("AuthenticAMD", 25, 1);
const CpuFeatures kZen4 = avx512("AuthenticAMD", 25, 17, true);
const CpuFeatures kCore2 = sse_only("GenuineIntel", 6, 15);
const CpuFeatures kSandyBridge = avx_only("GenuineIntel", 6, 42);
const CpuFeatures kKnightsLanding = [] {  // AVX-512 F without BW/VL/DQ: not enough for SkylakeX kernels
  CpuFeatures f = avx2("GenuineIntel", 6, 87);
  f.avx512f = true;
  return f;
}();

struct Row {
  const char* name;
  CpuFeatures cpu;
  const char* picked;  // openblas_get_corename()
  const char* user;    // OPENBLAS_CORETYPE, or null
  KernelAction action;
  const char* coretype;  // what runs: the target, the user's, or the library's pick
};

const std::vector<Row>& rows() {
  static const std::vector<Row> r = {
      // The case: OpenBLAS 0.3.21 does not know the model and falls back to SSE3.
      {"intel_spr_bf16_prescott", kSapphireRapids, "Prescott", nullptr, KernelAction::set_coretype, "Cooperlake"},
      {"intel_spr_already_sapphirerapids", kSapphireRapids, "SapphireRapids", nullptr, KernelAction::keep, "SapphireRapids"},
      {"intel_spr_already_cooperlake", kSapphireRapids, "Cooperlake", nullptr, KernelAction::keep, "Cooperlake"},
      // BF16 changes sbgemm only: SkylakeX's sgemm is Cooperlake's, no re-exec for nothing.
      {"intel_spr_skylakex_kept", kSapphireRapids, "SkylakeX", nullptr, KernelAction::keep, "SkylakeX"},
      {"intel_spr_haswell_upgraded", kSapphireRapids, "Haswell", nullptr, KernelAction::set_coretype, "Cooperlake"},
      {"intel_skx_prescott", kSkylakeX, "Prescott", nullptr, KernelAction::set_coretype, "SkylakeX"},
      {"intel_skx_already_skylakex", kSkylakeX, "SkylakeX", nullptr, KernelAction::keep, "SkylakeX"},
      {"intel_skx_haswell_upgraded", kSkylakeX, "Haswell", nullptr, KernelAction::set_coretype, "SkylakeX"},
      // AMD Zen 3 (this project's developer machines): AVX2 only. Zen's sgemm is Haswell's kernel
      // with other blocking, measured slower on the expert GEMMs (bench/README.md): Haswell.
      {"amd_zen3_zen_to_haswell", kZen3, "Zen", nullptr, KernelAction::set_coretype, "Haswell"},
      {"amd_zen3_haswell_kept", kZen3, "Haswell", nullptr, KernelAction::keep, "Haswell"},
      {"amd_zen3_single_target_build", kZen3, "HASWELL", nullptr, KernelAction::keep, "HASWELL"},
      {"amd_zen3_prescott", kZen3, "Prescott", nullptr, KernelAction::set_coretype, "Haswell"},
      {"amd_zen3_generic", kZen3, "Generic", nullptr, KernelAction::set_coretype, "Haswell"},
      // AMD Zen 4: AVX-512 with BF16.
      {"amd_zen4_cooperlake_kept", kZen4, "Cooperlake", nullptr, KernelAction::keep, "Cooperlake"},
      {"amd_zen4_zen_upgraded", kZen4, "Zen", nullptr, KernelAction::set_coretype, "Cooperlake"},
      {"amd_zen4_prescott", kZen4, "Prescott", nullptr, KernelAction::set_coretype, "Cooperlake"},
      {"intel_knl_avx512f_only", kKnightsLanding, "Prescott", nullptr, KernelAction::set_coretype, "Haswell"},
      // Nothing better to run: the library's pick stands.
      {"old_sse_only", kCore2, "Core2", nullptr, KernelAction::keep, "Core2"},
      {"old_sse_prescott", kCore2, "Prescott", nullptr, KernelAction::keep, "Prescott"},
      {"avx_without_avx2", kSandyBridge, "Prescott", nullptr, KernelAction::keep, "Prescott"},
      {"unknown_core_name", kSapphireRapids, "FutureLake", nullptr, KernelAction::keep, "FutureLake"},
      // The user's OPENBLAS_CORETYPE is theirs, whatever it is (an empty one counts as unset).
      {"user_prescott_on_spr", kSapphireRapids, "Prescott", "Prescott", KernelAction::respect_user, "Prescott"},
      {"user_skylakex_on_spr", kSapphireRapids, "Prescott", "SkylakeX", KernelAction::respect_user, "SkylakeX"},
      {"user_haswell_on_zen3", kZen3, "Zen", "Haswell", KernelAction::respect_user, "Haswell"},
      {"user_skylakex_on_zen3", kZen3, "Zen", "SkylakeX", KernelAction::respect_user, "SkylakeX"},
      {"user_empty_is_unset", kSkylakeX, "Prescott", "", KernelAction::set_coretype, "SkylakeX"},
  };
  return r;
}

void PrintTo(const Row& r, std::ostream* os) { *os << r.name; }

class KernelChoice : public ::testing::TestWithParam<Row> {};

TEST_P(KernelChoice, MapsFeaturesToDecision) {
  const Row& r = GetParam();
  const KernelDecision d = blas_kernels_decide(r.cpu, r.picked, r.user);
  EXPECT_EQ(static_cast<int>(d.action), static_cast<int>(r.action)) << r.name << ": " << d.reason;
  EXPECT_EQ(d.coretype, r.coretype) << r.name << ": " << d.reason;
  EXPECT_FALSE(d.reason.empty()) << r.name;
}

INSTANTIATE_TEST_SUITE_P(Table, KernelChoice, ::testing::ValuesIn(rows()),
                         [](const ::testing::TestParamInfo<Row>& info) { return std::string(info.param.name); });

TEST(KernelChoice, ReasonsNameTheUsersChoiceAndTheRisk) {
  // Respected, and said so; a core the CPU cannot run is warned about, a weaker one named against
  // what uoe would choose.
  const KernelDecision risky = blas_kernels_decide(kZen3, "Zen", "SkylakeX");
  EXPECT_NE(risky.reason.find("is the user's"), std::string::npos) << risky.reason;
  EXPECT_NE(risky.reason.find("illegal-instruction"), std::string::npos) << risky.reason;
  const KernelDecision weaker = blas_kernels_decide(kSapphireRapids, "Prescott", "Prescott");
  EXPECT_NE(weaker.reason.find("uoe would choose Cooperlake"), std::string::npos) << weaker.reason;
  const KernelDecision upgrade = blas_kernels_decide(kSapphireRapids, "Prescott", nullptr);
  EXPECT_NE(upgrade.reason.find("Prescott"), std::string::npos) << upgrade.reason;
}

// The bf16 GEMM path (gemm_mixed in bf16, runtime/gemm.hpp) by table: oneDNN where the CPU has
// bf16 instructions (AVX512-BF16 or AMX-BF16), emulated elsewhere; the user's UOE_BF16_GEMM forces
// either on any CPU. Whether oneDNN can run it here is checked after (tests/unit/test_bf16.cpp).
const CpuFeatures kCooperLake = avx512("GenuineIntel", 6, 85, true);  // AVX512-BF16, no AMX
const CpuFeatures kAmxWithoutBf16 = [] {  // tile state without the bf16 tile instructions
  CpuFeatures f = kSkylakeX;
  f.amx_tile = true;
  return f;
}();

struct Bf16Row {
  const char* name;
  CpuFeatures cpu;
  const char* user;  // UOE_BF16_GEMM, or null
  Bf16GemmPath path;
  bool forced;
  const char* reason_has;  // a piece of the reason
};

const std::vector<Bf16Row>& bf16_rows() {
  static const std::vector<Bf16Row> r = {
      {"intel_spr_amx_bf16", kSapphireRapids, nullptr, Bf16GemmPath::onednn, false, "AMX-BF16"},
      {"intel_cooperlake_avx512_bf16", kCooperLake, nullptr, Bf16GemmPath::onednn, false, "AVX512-BF16"},
      {"intel_skx_no_bf16", kSkylakeX, nullptr, Bf16GemmPath::emulated, false, "no bf16 instructions"},
      {"intel_amx_tile_without_bf16", kAmxWithoutBf16, nullptr, Bf16GemmPath::emulated, false, "no bf16 instructions"},
      {"amd_zen4_avx512_bf16", kZen4, nullptr, Bf16GemmPath::onednn, false, "AVX512-BF16"},
      {"amd_zen3_avx2", kZen3, nullptr, Bf16GemmPath::emulated, false, "no bf16 instructions"},
      {"intel_knl_avx512f_only", kKnightsLanding, nullptr, Bf16GemmPath::emulated, false, "no bf16 instructions"},
      {"old_sse_only", kCore2, nullptr, Bf16GemmPath::emulated, false, "no bf16 instructions"},
      {"user_auto_is_unset", kZen4, "auto", Bf16GemmPath::onednn, false, "AVX512-BF16"},
      {"user_empty_is_unset", kZen3, "", Bf16GemmPath::emulated, false, "no bf16 instructions"},
      {"user_emulated_on_spr", kSapphireRapids, "emulated", Bf16GemmPath::emulated, true, "UOE_BF16_GEMM=emulated"},
      {"user_onednn_on_zen3", kZen3, "onednn", Bf16GemmPath::onednn, true, "UOE_BF16_GEMM=onednn"},
  };
  return r;
}

void PrintTo(const Bf16Row& r, std::ostream* os) { *os << r.name; }

class Bf16GemmChoice : public ::testing::TestWithParam<Bf16Row> {};

TEST_P(Bf16GemmChoice, MapsFeaturesToPath) {
  const Bf16Row& r = GetParam();
  const Bf16GemmDecision d = bf16_gemm_decide(r.cpu, r.user);
  EXPECT_STREQ(bf16_gemm_path_name(d.path), bf16_gemm_path_name(r.path)) << r.name << ": " << d.reason;
  EXPECT_EQ(d.forced, r.forced) << r.name << ": " << d.reason;
  EXPECT_NE(d.reason.find(r.reason_has), std::string::npos) << r.name << ": " << d.reason;
}

INSTANTIATE_TEST_SUITE_P(Table, Bf16GemmChoice, ::testing::ValuesIn(bf16_rows()),
                         [](const ::testing::TestParamInfo<Bf16Row>& info) { return std::string(info.param.name); });

TEST(Bf16GemmChoice, RefusesAnUnknownUserChoiceNamingTheVariable) {
  for (const char* bad : {"fast", "oneDNN", "bf16"}) {
    try {
      bf16_gemm_decide(kZen4, bad);
      ADD_FAILURE() << "UOE_BF16_GEMM=" << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("UOE_BF16_GEMM='") + bad + "'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("onednn, emulated or auto"), std::string::npos) << e.what();
    }
  }
}

TEST(CpuFeatures, VectorIsaNeedsAllFourAvx512Subsets) {
  EXPECT_EQ(cpu_vector_isa(kSapphireRapids), VectorIsa::avx512_bf16);
  EXPECT_EQ(cpu_vector_isa(kSkylakeX), VectorIsa::avx512);
  EXPECT_EQ(cpu_vector_isa(kKnightsLanding), VectorIsa::avx2_fma);
  EXPECT_EQ(cpu_vector_isa(kZen3), VectorIsa::avx2_fma);
  EXPECT_EQ(cpu_vector_isa(kSandyBridge), VectorIsa::avx);
  EXPECT_EQ(cpu_vector_isa(kCore2), VectorIsa::baseline);
  CpuFeatures no_dq = kSkylakeX;
  no_dq.avx512dq = false;
  EXPECT_EQ(cpu_vector_isa(no_dq), VectorIsa::avx2_fma);
  CpuFeatures avx2_no_fma = kZen3;
  avx2_no_fma.fma = false;
  EXPECT_EQ(cpu_vector_isa(avx2_no_fma), VectorIsa::avx);
  EXPECT_EQ(cpu_isa_describe(kSapphireRapids), "AVX-512 + BF16, AMX-BF16");
}

TEST(CpuFeatures, DetectionOnThisMachineIsConsistent) {
  // Each subset implies the base it extends (detection masks by the OS's XGETBV state too).
  const CpuFeatures f = cpu_features_detect();
#if defined(__x86_64__)
  EXPECT_FALSE(f.vendor.empty());
  EXPECT_GT(f.family, 0);
#endif
  EXPECT_TRUE(!f.avx2 || f.avx);
  EXPECT_TRUE(!f.fma || f.avx);
  EXPECT_TRUE(!(f.avx512bw || f.avx512vl || f.avx512dq || f.avx512_bf16) || f.avx512f);
  EXPECT_TRUE(!f.avx512f || f.avx);
  // The decision for this machine's own pick never targets a class the CPU lacks.
  const KernelDecision d = blas_kernels_decide(f, "Prescott", nullptr);
  if (d.action == KernelAction::set_coretype) {
    VectorIsa target;
    ASSERT_TRUE(blas_core_isa(d.coretype, &target)) << d.coretype;
    EXPECT_LE(static_cast<int>(target), static_cast<int>(cpu_vector_isa(f))) << d.coretype;
  }
}

TEST(FmaPeak, MeasuresAPlausibleRate) {
  // Not a timing threshold: the probe's own arithmetic must hold (rate = threads × FMA/cycle ×
  // lanes × 2 × clock) and the figures must be finite and positive on x86.
  const FmaPeak p = fma_peak_measure(cpu_features_detect(), 1);
#if defined(__x86_64__)
  ASSERT_GT(p.gflops, 0.0);
  ASSERT_GT(p.ghz, 0.0);
  EXPECT_NEAR(p.gflops, p.threads * p.fma_per_cycle * p.lanes * 2 * p.ghz, 1e-6 * p.gflops);
  EXPECT_TRUE(p.lanes == 4 || p.lanes == 8 || p.lanes == 16) << p.lanes;
  EXPECT_NE(fma_peak_describe(p).find("GFLOP/s"), std::string::npos);
#endif
  EXPECT_EQ(p.threads, 1);
}

}  // namespace
}  // namespace uoe
