#include "runtime/cpu_features.hpp"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>
#include <utility>
#include <vector>

#include "runtime/error.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define UOE_X86 1
#endif

namespace uoe {
namespace {

constexpr const char* kGuard = "UOE_BLAS_REEXEC";           // "PICKED>TARGET" in the re-executed process
constexpr const char* kTestCore = "UOE_TEST_BLAS_CORENAME";  // test hook: the library's pick, pretended

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

const char* isa_name(VectorIsa isa) {
  switch (isa) {
    case VectorIsa::avx512_bf16: return "AVX-512 + BF16";
    case VectorIsa::avx512: return "AVX-512";
    case VectorIsa::avx2_fma: return "AVX2 + FMA";
    case VectorIsa::avx: return "AVX";
    case VectorIsa::baseline: break;
  }
  return "SSE";
}

// For sgemm, BF16 adds nothing (it only changes OpenBLAS's sbgemm, which uoe does not call): a
// SkylakeX pick on a CPU with BF16 runs the same sgemm kernels as Cooperlake and is kept.
VectorIsa sgemm_class(VectorIsa isa) { return isa == VectorIsa::avx512_bf16 ? VectorIsa::avx512 : isa; }

// A pick's sgemm standing: its class, and within AVX2 + FMA, Zen below Haswell. OpenBLAS 0.3.21's
// Zen and Haswell cores share the AVX2 sgemm microkernel but not its blocking, and on the expert
// GEMMs' shapes Haswell's measured faster on an AMD EPYC Zen 3: +8-10% on the d 128 NN and NT
// products (1024×128×128), +0-2% on the rest, best of 40, 1 and 2 threads, 3 alternations each
// (bench-sgemm_shapes, bench/README.md). So a Zen pick is not kept; a Haswell one is.
int sgemm_rank(const std::string& core, VectorIsa isa) {
  const int rank = 2 * static_cast<int>(sgemm_class(isa));
  return lower(core) == "zen" ? rank - 1 : rank;
}

#ifdef UOE_X86
uint64_t read_xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

// What blas_kernels_select found, for blas_kernels_summary.
struct SelectState {
  bool ran = false;
  bool reexecuted = false;
  std::string picked;        // the library's pick before the re-exec (or the pretended one)
  bool simulated = false;    // the pick came from UOE_TEST_BLAS_CORENAME
  KernelDecision decision;
  std::string exec_error;    // set when execv failed
};
// A function's static, not a global: blas_kernels_select may run from another file's static
// initializer (the unit tests' binary), before this file's globals are constructed.
SelectState& select_state() {
  static SelectState s;
  return s;
}

}  // namespace

CpuFeatures cpu_features_detect() {
  CpuFeatures f;
#ifdef UOE_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  f.vendor = vendor;
  __get_cpuid(1, &a, &b, &c, &d);
  const unsigned base_family = (a >> 8) & 0xf, base_model = (a >> 4) & 0xf;
  f.family = static_cast<int>(base_family == 0xf ? base_family + ((a >> 20) & 0xff) : base_family);
  f.model = static_cast<int>(base_family == 6 || base_family == 0xf ? base_model + (((a >> 16) & 0xf) << 4) : base_model);
  f.sse3 = c & 1u;
  const bool osxsave = c & (1u << 27);
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  // The OS saves XMM and YMM (bits 1, 2); opmask, upper ZMM halves and ZMM16-31 (5, 6, 7); AMX
  // tile config and data (17, 18).
  const bool os_avx = (xcr0 & 0x6) == 0x6, os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;
  f.avx = os_avx && (c & (1u << 28));
  f.fma = f.avx && (c & (1u << 12));
  if (max_leaf >= 7) {
    unsigned a7 = 0, b7 = 0, c7 = 0, d7 = 0;
    __get_cpuid_count(7, 0, &a7, &b7, &c7, &d7);
    f.avx2 = f.avx && (b7 & (1u << 5));
    f.avx512f = os_avx512 && (b7 & (1u << 16));
    f.avx512dq = f.avx512f && (b7 & (1u << 17));
    f.avx512bw = f.avx512f && (b7 & (1u << 30));
    f.avx512vl = f.avx512f && (b7 & (1u << 31));
    f.amx_bf16 = os_amx && (d7 & (1u << 22));
    f.amx_tile = os_amx && (d7 & (1u << 24));
    if (a7 >= 1) {
      unsigned a71 = 0, b71 = 0, c71 = 0, d71 = 0;
      __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71);
      f.avx512_bf16 = f.avx512f && (a71 & (1u << 5));
    }
  }
  if (__get_cpuid(0x80000000, &a, &b, &c, &d) && a >= 0x80000004) {
    unsigned regs[12];
    for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002 + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2], &regs[4 * i + 3]);
    char brand[49] = {};
    std::memcpy(brand, regs, 48);
    std::string s = brand;
    const size_t first = s.find_first_not_of(' '), last = s.find_last_not_of(' ');
    f.model_name = first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
  }
#endif
  return f;
}

VectorIsa cpu_vector_isa(const CpuFeatures& f) {
  // OpenBLAS's SkylakeX kernels use F, BW, VL and DQ instructions: all four or none.
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) return f.avx512_bf16 ? VectorIsa::avx512_bf16 : VectorIsa::avx512;
  if (f.avx2 && f.fma) return VectorIsa::avx2_fma;
  if (f.avx) return VectorIsa::avx;
  return VectorIsa::baseline;
}

std::string cpu_isa_describe(const CpuFeatures& f) {
  std::string s = isa_name(cpu_vector_isa(f));
  if (f.amx_tile) s += f.amx_bf16 ? ", AMX-BF16" : ", AMX";
  return s;
}

bool blas_core_isa(const std::string& core, VectorIsa* isa) {
  // OpenBLAS's x86 core names (driver/others/dynamic.c's corename[], and the uppercase target names
  // of a build for one core) by the widest vectors their sgemm kernels use.
  static const std::pair<const char*, VectorIsa> table[] = {
      {"sapphirerapids", VectorIsa::avx512_bf16}, {"cooperlake", VectorIsa::avx512_bf16},
      {"skylakex", VectorIsa::avx512},
      {"haswell", VectorIsa::avx2_fma}, {"zen", VectorIsa::avx2_fma}, {"skylake", VectorIsa::avx2_fma},
      {"sandybridge", VectorIsa::avx}, {"bulldozer", VectorIsa::avx}, {"piledriver", VectorIsa::avx},
      {"steamroller", VectorIsa::avx}, {"excavator", VectorIsa::avx},
      {"prescott", VectorIsa::baseline}, {"katmai", VectorIsa::baseline}, {"coppermine", VectorIsa::baseline},
      {"northwood", VectorIsa::baseline}, {"banias", VectorIsa::baseline}, {"atom", VectorIsa::baseline},
      {"core2", VectorIsa::baseline}, {"penryn", VectorIsa::baseline}, {"dunnington", VectorIsa::baseline},
      {"nehalem", VectorIsa::baseline}, {"athlon", VectorIsa::baseline}, {"opteron", VectorIsa::baseline},
      {"opteron_sse3", VectorIsa::baseline}, {"barcelona", VectorIsa::baseline}, {"nano", VectorIsa::baseline},
      {"bobcat", VectorIsa::baseline}, {"generic", VectorIsa::baseline}, {"unknown", VectorIsa::baseline},
  };
  const std::string key = lower(core);
  for (const auto& [name, cls] : table)
    if (key == name) {
      *isa = cls;
      return true;
    }
  return false;
}

KernelDecision blas_kernels_decide(const CpuFeatures& f, const std::string& blas_core, const char* user_coretype) {
  KernelDecision d;
  const VectorIsa cpu = cpu_vector_isa(f);
  const char* target = cpu == VectorIsa::avx512_bf16 ? "Cooperlake"
                       : cpu == VectorIsa::avx512    ? "SkylakeX"
                       : cpu == VectorIsa::avx2_fma  ? "Haswell"
                                                     : nullptr;
  if (user_coretype != nullptr && *user_coretype != '\0') {
    d.action = KernelAction::respect_user;
    d.coretype = user_coretype;
    d.reason = std::string("OPENBLAS_CORETYPE=") + user_coretype + " is the user's: respected";
    VectorIsa wanted;
    if (blas_core_isa(user_coretype, &wanted) && sgemm_class(wanted) > sgemm_class(cpu))
      d.reason += std::string(" (it asks for ") + isa_name(wanted) + " kernels on a CPU with " + isa_name(cpu) +
                  ": expect an illegal-instruction fault, or OpenBLAS choosing for itself)";
    else if (target != nullptr && (!blas_core_isa(user_coretype, &wanted) || sgemm_class(wanted) < sgemm_class(cpu)))
      d.reason += std::string(" (uoe would choose ") + target + ")";
    return d;
  }
  d.coretype = blas_core;
  if (target == nullptr) {
    d.reason = std::string("no AVX2 + FMA on this CPU: the library's pick stands");
    return d;
  }
  VectorIsa picked;
  if (!blas_core_isa(blas_core, &picked)) {
    d.reason = "core '" + blas_core + "' is not in uoe's table of OpenBLAS cores: left as the library picked it";
    return d;
  }
  if (sgemm_rank(blas_core, picked) >= sgemm_rank(target, sgemm_class(cpu))) {
    d.reason = std::string("the library's pick uses ") + isa_name(sgemm_class(cpu)) + " like the CPU allows: kept";
    return d;
  }
  d.action = KernelAction::set_coretype;
  d.coretype = target;
  d.reason = "OpenBLAS picked " + blas_core + " (" + isa_name(picked) + ") on a CPU with " + isa_name(cpu);
  if (sgemm_class(picked) == sgemm_class(cpu))
    d.reason += ": " + std::string(target) + "'s sgemm blocking measured faster on the expert GEMMs";
  return d;
}

void blas_kernels_select() {
  SelectState& g_state = select_state();
  g_state = SelectState{};
  g_state.ran = true;
  const CpuFeatures f = cpu_features_detect();
  if (const char* guard = std::getenv(kGuard)) {
    // The re-executed process: OpenBLAS has loaded with our OPENBLAS_CORETYPE. Put the environment
    // back as the user had it (no OPENBLAS_CORETYPE: otherwise there would have been no re-exec),
    // so that what this process starts decides for itself and never takes ours for the user's.
    const std::string g = guard;
    const size_t sep = g.find('>');
    g_state.reexecuted = true;
    g_state.picked = g.substr(0, sep);
    g_state.simulated = std::getenv(kTestCore) != nullptr;
    g_state.decision.action = KernelAction::set_coretype;
    g_state.decision.coretype = sep == std::string::npos ? std::string() : g.substr(sep + 1);
    g_state.decision.reason = blas_kernels_decide(f, g_state.picked, nullptr).reason;
    unsetenv(kGuard);
    unsetenv("OPENBLAS_CORETYPE");
    return;
  }
  const char* simulated = std::getenv(kTestCore);
  g_state.simulated = simulated != nullptr && *simulated != '\0';
  g_state.picked = g_state.simulated ? simulated : openblas_get_corename();
  g_state.decision = blas_kernels_decide(f, g_state.picked, std::getenv("OPENBLAS_CORETYPE"));
  if (g_state.decision.action != KernelAction::set_coretype) return;

  // The arguments as the kernel passed them (main's argv may have been changed by then).
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<char*> args;
  std::vector<std::string> words;
  for (size_t i = 0; i < cmdline.size();) {
    const size_t end = cmdline.find('\0', i);
    words.push_back(cmdline.substr(i, end == std::string::npos ? std::string::npos : end - i));
    if (end == std::string::npos) break;
    i = end + 1;
  }
  for (std::string& w : words) args.push_back(w.data());
  args.push_back(nullptr);
  setenv("OPENBLAS_CORETYPE", g_state.decision.coretype.c_str(), 1);
  setenv(kGuard, (g_state.picked + ">" + g_state.decision.coretype).c_str(), 1);
  // The binary's own path, not /proc/self/exe: the kernel names the new image after the file it
  // ran, and "exe" would replace "uoe-train" in ps, top, pkill and the soak bench's rank lookup.
  // /proc/self/exe only where the link cannot be read or its file is gone (rebuilt meanwhile).
  std::error_code ec;
  std::string self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  if (ec || self.empty() || access(self.c_str(), X_OK) != 0) self = "/proc/self/exe";
  if (!words.empty()) execv(self.c_str(), args.data());
  // Only reached when the exec failed: run on with the library's kernels and say so.
  g_state.exec_error = words.empty() ? std::string("/proc/self/cmdline unreadable") : std::strerror(errno);
  unsetenv(kGuard);
  unsetenv("OPENBLAS_CORETYPE");
}

std::string blas_kernels_summary() {
  const SelectState& g_state = select_state();
  const CpuFeatures f = cpu_features_detect();
  char head[256];
  std::snprintf(head, sizeof head, "CPU %s (%s family %d model %d), %s; ",
                f.model_name.empty() ? "(no brand string)" : f.model_name.c_str(), f.vendor.c_str(), f.family, f.model,
                cpu_isa_describe(f).c_str());
  std::string s = head;
  const std::string running = openblas_get_corename();
  s += "OpenBLAS " + running + " kernels";
  if (!g_state.ran) return s + " (kernel choice not run in this process)";
  const KernelDecision& d = g_state.decision;
  const std::string sim = g_state.simulated ? " [pick simulated by " + std::string(kTestCore) + "]" : "";
  if (!g_state.exec_error.empty())
    return s + ": wanted OPENBLAS_CORETYPE=" + d.coretype + " (" + d.reason + sim + ") but re-executing failed (" +
           g_state.exec_error + "); running the library's pick";
  switch (d.action) {
    case KernelAction::respect_user: return s + ": " + d.reason;
    case KernelAction::keep: return s + ": " + d.reason + sim;
    case KernelAction::set_coretype: break;
  }
  s += ", chosen by uoe (re-executed with OPENBLAS_CORETYPE=" + d.coretype + "): " + d.reason + sim;
  if (lower(running) != lower(d.coretype))
    s += "; this OpenBLAS did not take OPENBLAS_CORETYPE=" + d.coretype + " (a build without that core?)";
  return s;
}

bool blas_kernels_as_chosen() {
  const SelectState& st = select_state();
  if (!st.exec_error.empty()) return false;
  return st.decision.action != KernelAction::set_coretype || lower(openblas_get_corename()) == lower(st.decision.coretype);
}

const char* bf16_gemm_path_name(Bf16GemmPath p) { return p == Bf16GemmPath::onednn ? "onednn" : "emulated"; }

Bf16GemmDecision bf16_gemm_decide(const CpuFeatures& f, const char* user_choice) {
  Bf16GemmDecision d;
  const std::string user = user_choice == nullptr ? std::string() : std::string(user_choice);
  if (!user.empty() && user != "auto") {
    if (user == "onednn") d.path = Bf16GemmPath::onednn;
    else if (user != "emulated") fail("UOE_BF16_GEMM='", user, "': expected onednn, emulated or auto");
    d.forced = true;
    d.reason = "UOE_BF16_GEMM=" + user + " is the user's";
    return d;
  }
  // oneDNN's bf16 kernels need AVX-512 (F/BW/VL/DQ, its avx512_core) under either; AVX512-BF16
  // without them does not exist in silicon, and a CPU that reports it anyway fails oneDNN's own
  // check, which the caller makes.
  if (f.amx_tile && f.amx_bf16) {
    d.path = Bf16GemmPath::onednn;
    d.reason = "this CPU has AMX-BF16";
  } else if (f.avx512_bf16) {
    d.path = Bf16GemmPath::onednn;
    d.reason = "this CPU has AVX512-BF16";
  } else {
    d.reason = "this CPU has no bf16 instructions: neither AVX512-BF16 nor AMX-BF16";
  }
  return d;
}

}  // namespace uoe
