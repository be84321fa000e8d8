#include "runtime/bf16.hpp"

#include <atomic>

#include "runtime/error.hpp"
#include "runtime/threads.hpp"

namespace uoe {
namespace {
std::atomic<Precision> g_precision{Precision::fp32};
constexpr int64_t kGrain = 1 << 14;  // elements per thread at least
}  // namespace

Precision precision_parse(const std::string& s) {
  if (s == "fp32") return Precision::fp32;
  if (s == "bf16") return Precision::bf16;
  fail("--precision '", s, "': expected fp32 or bf16");
}
const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

void compute_precision_set(Precision p) { g_precision.store(p, std::memory_order_relaxed); }
Precision compute_precision() { return g_precision.load(std::memory_order_relaxed); }

void bf16_round_inplace(float* x, size_t n) {
  parallel_ranges(static_cast<int64_t>(n), kGrain, [=](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) x[i] = bf16_round(x[i]);
  });
}
void bf16_pack(uint16_t* out, const float* in, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = bf16_from_float(in[i]);
}
void bf16_unpack(float* out, const uint16_t* in, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(in[i]);
}

}  // namespace uoe
