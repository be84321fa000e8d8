// bf16 (bfloat16: fp32's sign and 8 exponent bits, 7 stored mantissa bits) and the run's compute
// precision (docs/architecture.md, Precision). The conversion is written once as UOE_HD bodies, so
// the CPU path, its tests and the GPU path's kernels round the same way: round to nearest, ties to
// even; a NaN stays a NaN (quietened), infinities stay infinite, finite values beyond bf16's range
// round to ±inf as IEEE rounding does.
//
// The compute precision is one process-wide setting (--precision, set once at start-up by
// make_step): fp32 computes everything in fp32; bf16 rounds the inputs of the model's GEMMs
// (weights and activations, gemm_mixed in runtime/gemm.hpp) to bf16 and accumulates in fp32. The
// parameters, AdamW's moments, norms, softmax, the router and losses stay fp32 in both.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "runtime/rng.hpp"  // UOE_HD

namespace uoe {

// The bf16 bit pattern nearest x (ties to even); NaN → a quiet NaN of the same sign.
UOE_HD inline uint16_t bf16_from_float(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
UOE_HD inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
// x rounded to the nearest bf16, as an fp32 (exact: every bf16 is an fp32).
UOE_HD inline float bf16_round(float x) { return bf16_to_float(bf16_from_float(x)); }

enum class Precision { fp32, bf16 };
Precision precision_parse(const std::string& s);  // "fp32" | "bf16"; throws uoe::Error otherwise
const char* precision_name(Precision p);

// The process's compute precision (fp32 until set).
void compute_precision_set(Precision p);
Precision compute_precision();

// Sets the compute precision for a scope and restores the previous one (tests).
class ScopedPrecision {
 public:
  explicit ScopedPrecision(Precision p) : saved_(compute_precision()) { compute_precision_set(p); }
  ~ScopedPrecision() { compute_precision_set(saved_); }
  ScopedPrecision(const ScopedPrecision&) = delete;
  ScopedPrecision& operator=(const ScopedPrecision&) = delete;

 private:
  Precision saved_;
};

// Host loops over the bodies above, in AVX-512 or AVX2 registers where the build has them (the same
// integer arithmetic lane by lane: the same bits as the scalar bodies, NaNs, infinities and
// subnormals included — not the CPU's own bf16 conversion, which reads subnormals as zero).
// bf16_round_inplace splits over the compute threads (element-wise: the same bits on any thread
// count); the others run on the calling thread (the expert exchange calls pack and unpack on the
// communication thread, beside the compute threads' work; the GEMMs' input copies call the row
// forms inside their own thread split).
void bf16_round_inplace(float* x, size_t n);
void bf16_pack(uint16_t* out, const float* in, size_t n);
void bf16_unpack(float* out, const uint16_t* in, size_t n);
// out[i] = bf16_round(in[i]) for i < n (out may equal in).
void bf16_round_copy(float* out, const float* in, size_t n);

}  // namespace uoe
