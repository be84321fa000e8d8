// The hardware's FMA peak, measured: the rate the model's FLOP/s are quoted against.
//
// A short loop of independent vector FMAs (enough accumulators to cover FMA latency × units) for
// the CPU's widest FMA ISA, run on each of the rank's compute threads at once. The kernels are
// compiled for their ISA with target attributes, so one binary runs on CPUs without it (only the
// kernel the CPU's features allow is called). The BLAS's own sgemm rate (gemm_measure_gflops) is a
// floor under this, not the peak: a BLAS with generic kernels reports a generic rate.
#pragma once
#include <string>

#include "runtime/cpu_features.hpp"

namespace uoe {

struct FmaPeak {
  double gflops = 0;         // all threads together: Σ over threads of each thread's best interval
  int threads = 0;
  int lanes = 0;             // fp32 lanes per vector: 16 (AVX-512), 8 (AVX2), 4 (SSE: mul + add)
  const char* isa = "";      // "AVX-512 FMA", "AVX2 FMA", "SSE mul+add"
  double ghz = 0;            // core clock, measured on one thread by a dependent imul chain (3 cycles each)
  double fma_per_cycle = 0;  // vector FMAs per cycle per thread, measured (the FMA units, as run)
  double seconds = 0;        // the probe's own wall time
};

// Measures on `threads` threads (at least 1), all at once, for about 6 ms (more on a loaded machine).
FmaPeak fma_peak_measure(const CpuFeatures& f, int threads);
// "2 threads × 2.0 FMA/cycle × 8 lanes × 2 flop × 3.2 GHz (AVX2 FMA) = 206.1 GFLOP/s"
std::string fma_peak_describe(const FmaPeak& p);

}  // namespace uoe
