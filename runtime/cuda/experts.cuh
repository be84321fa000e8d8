// The expert computation of layers/experts.hpp on the GPU: the same steps, in the same order, with
// cuBLAS expert GEMMs (Blas::gemm_experts) in place of the per-expert cblas loop and the kernels of
// runtime/cuda/kernels.cuh in place of the CPU loops. Compiled only (docs/gpu.md); tests/cuda
// compares each function with its CPU twin.
//
// Host-only declarations: g++ and nvcc can both include this header.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "runtime/cuda/gemm.cuh"
#include "runtime/cuda/memory.cuh"

namespace uoe::cuda {

// ExpertRows on the device. Row ranges and segment ids stay on the host as well: cuBLAS takes its
// shapes from the host, and the count/metadata exchange (over MPI, the one host synchronisation a
// step allows) delivers them there anyway.
struct DeviceExpertRows {
  int n_experts = 0;
  std::vector<int> offsets;      // host [n_experts + 1] row ranges
  std::vector<int32_t> seg;      // host [R] segment ids (attention experts only)
  std::vector<int32_t> pos;      // host [R] true positions (attention experts only; may be empty: pos_dev alone)
  int positions = 0;             // a bound on the positions when pos is not on the host (0: from pos)
  DeviceBuffer<int> offsets_dev; // device copy of offsets
  DeviceBuffer<float> x;         // [R, d] inputs
  DeviceBuffer<int32_t> pos_dev; // device copy of pos
  int rows() const { return offsets.empty() ? 0 : offsets.back(); }
};

struct DeviceMlpCache {
  DeviceBuffer<float> h, a, dh;  // [R, f] pre-activation, GELU(h), backward workspace
};
// Twins of mlp_experts_forward / _backward_data / _backward_weights (same arguments, device
// pointers, plus the Blas whose stream everything is queued on).
void mlp_experts_forward(float* y, DeviceMlpCache& cache, const DeviceExpertRows& rows, const float* W1,
                         const float* b1, const float* W2, int d, int f, Blas& blas);
void mlp_experts_backward_data(float* dx, const float* dy, DeviceMlpCache& cache, const DeviceExpertRows& rows,
                               const float* W1, const float* W2, int d, int f, Blas& blas);
void mlp_experts_backward_weights(float* dW1, float* db1, float* dW2, const float* dy, const DeviceMlpCache& cache,
                                  const DeviceExpertRows& rows, int d, int f, Blas& blas);

struct DeviceAttnCache {
  DeviceBuffer<float> qkv;             // [R, 3·g·dh] after RoPE on q and k
  DeviceBuffer<float> o;               // [R, g·dh]
  DeviceBuffer<float> att;             // per (segment, head) [L, L] probabilities
  DeviceBuffer<float> d_o, d_qkv, ds;  // backward workspaces ([R, g·dh], [R, 3·g·dh], like att)
  std::vector<int> seg_begin;          // host [segments + 1]
  std::vector<int64_t> att_offset;     // host [segments + 1]
  DeviceBuffer<int> seg_begin_dev;
  DeviceBuffer<int64_t> att_offset_dev;
  DeviceBuffer<float> rope_cos, rope_sin;  // [positions, dh/2]
  int rope_positions = 0, rope_half = 0;
  Uploader uploader;
};
void attn_experts_forward(float* y, DeviceAttnCache& cache, const DeviceExpertRows& rows, const float* Wqkv,
                          const float* Wo, int d, int g, int dh, Blas& blas);
void attn_experts_backward_data(float* dx, const float* dy, DeviceAttnCache& cache, const DeviceExpertRows& rows,
                                const float* Wqkv, const float* Wo, int d, int g, int dh, Blas& blas);
void attn_experts_backward_weights(float* dWqkv, float* dWo, const float* dy, const DeviceAttnCache& cache,
                                   const DeviceExpertRows& rows, int d, int g, int dh, Blas& blas);

}  // namespace uoe::cuda
