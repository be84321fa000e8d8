// The GPU counterparts of runtime/kernels.hpp's CPU loops: the same names and arguments in
// namespace uoe::cuda, pointers to DEVICE memory, plus the stream the work is queued on. Each kernel
// is a launch wrapper around the very UOE_HD row body the CPU loop calls, so the arithmetic the CPU
// tests exercise is the arithmetic the GPU runs; only launch shape and memory movement are GPU-only.
//
// Launch shape: the shared bodies loop serially over a row (that is what makes their summation
// order the CPU's), so a row runs on ONE thread; rows spread over threads and blocks. Element-wise
// work (GELU, AdamW, gathers, scatter columns) runs one element per thread. This is the
// correctness-first mapping: a warp-per-row variant would sum in a different order and would be a
// separate, tolerance-tested kernel. No kernel uses floating-point atomics: every result is
// deterministic for a given input and launch.
//
// Nothing here has run on a GPU yet (docs/gpu.md): the code is compiled in the cuda preset, and the
// tests in tests/cuda compare each kernel with its CPU loop when a GPU is present.
//
// Host-only declarations: g++ and nvcc can both include this header.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "runtime/cuda/memory.cuh"
#include "runtime/kernels.hpp"

namespace uoe::cuda {

// out/x [N, C]; mean/rstd [N].
void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int N, int C, cudaStream_t stream);
// dx += LN'ᵀ dout; dweight/dbias += Σ rows. The per-row parameter gradients go to `scratch`
// ([2, scratch_rows, C], device) and are then summed column by column in row order into
// dweight/dbias (no atomics: the same order as the CPU's row loop). Rows are processed in chunks
// of scratch_rows (≥ 1).
void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int N, int C, float* scratch,
                        int scratch_rows, cudaStream_t stream);
void gelu_forward(float* out, const float* x, int64_t n, cudaStream_t stream);
void gelu_backward(float* dx, const float* x, const float* dout, int64_t n, cudaStream_t stream);
// x [N, n] softmaxed in place per row; lse [N] (may be null).
void softmax_rows(float* x, float* lse, int N, int n, cudaStream_t stream);
// idx [N, k]: the router's top-k per row (ties → lower index).
void topk_rows(int* idx, const float* x, int N, int n, int k, cudaStream_t stream);
// RoPE on `heads` head vectors per row (see kernels.hpp rope_rows); pos [R], tables on the device.
void rope_rows(float* x, const int32_t* pos, const float* cos_table, const float* sin_table, int R, int heads, int dh,
               int ld, bool inverse, cudaStream_t stream);

// Cross-entropy. The CPU version returns the loss sum; returning it here would force a host sync,
// so the sum goes to *loss_sum (device double), formed from row_loss ([N] device workspace, each
// row's −log p) by a fixed-shape tree in double: deterministic, and within float rounding of the CPU's
// row-order double sum (the per-row losses themselves may differ by an ulp: device logf).
void crossentropy_forward_backward(double* loss_sum, float* row_loss, float* logits, const int32_t* targets, int N,
                                   int V, float grad_scale, cudaStream_t stream);
void crossentropy_forward(double* loss_sum, float* row_loss, float* logits, const int32_t* targets, int N, int V,
                          cudaStream_t stream);

// ---- permute / unpermute in dispatch order ----
// out[i, :] = table[ids[i], :]  (permute: tokens → routed rows).
void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C, cudaStream_t stream);

// The destinations of a scatter-add, grouped: built once per id list, reused by every scatter with
// those ids (forward combine, backward dx return, embedding gradient).
//
// Determinism without atomics: a STABLE radix sort of (ids[i], i) by id (cub::DeviceRadixSort,
// which is stable) lists, for each destination row, its source rows in ascending i; run-length
// encoding then gives each distinct destination one run. The scatter kernel gives each run one
// block whose threads own columns and add the run's sources in ascending i, i.e. exactly the order
// of the CPU's `for i` loop, so each element's additions happen in the CPU's order.
class ScatterPlan {
 public:
  // ids [N] on the device, each in [0, table_rows). Queued on `stream`; no host synchronisation.
  void build(const int32_t* ids, int N, int table_rows, cudaStream_t stream);
  int rows() const { return n_; }

  const int32_t* source_order() const { return order_.data(); }  // [N] sources, grouped by destination
  const int32_t* run_dest() const { return run_dest_.data(); }    // [N] destination of run r (r < runs)
  const int32_t* run_begin() const { return run_begin_.data(); }  // [N] first position of run r in source_order
  const int32_t* run_length() const { return run_len_.data(); }   // [N]
  const int32_t* runs() const { return runs_.data(); }            // [1] number of runs (device)

 private:
  int n_ = 0;
  DeviceBuffer<int32_t> iota_, keys_sorted_, order_, run_dest_, run_len_, run_begin_, runs_;
  DeviceBuffer<unsigned char> temp_;
};

// table[ids[i], :] += scale · row_scale[i] · src[i, :] for the plan's ids, in ascending i per
// destination (deterministic). row_scale may be null (1): with it, this is the gate-weighted combine
// h[token] += w · y of the model's forward.
void scatter_add_rows(float* table, const float* src, const ScatterPlan& plan, int C, float scale,
                      const float* row_scale, cudaStream_t stream);

// AdamW over n elements, one thread per element, kernels.hpp's adamw_update_elem.
void adamw_update(float* w, float* m, float* v, const float* g, const float* decay_mask, size_t n,
                  const AdamWScalars& s, cudaStream_t stream);

// Causal attention over packed segments (see kernels.hpp attn_causal_forward). seg_begin
// [nseg + 1] and att_offset [nseg + 1] are DEVICE arrays. One block per (segment, head), one thread
// per query row (forward, backward query pass) or key row (backward key pass).
void attn_causal_forward(float* o, float* att, const float* qkv, const int* seg_begin, const int64_t* att_offset,
                         int nseg, int g, int dh, cudaStream_t stream);
void attn_causal_backward(float* dqkv, float* ds, const float* d_o, const float* att, const float* qkv,
                          const int* seg_begin, const int64_t* att_offset, int nseg, int g, int dh,
                          cudaStream_t stream);

// The combine of a block (layers/model.cpp's loops, element for element): out = x + bias (then
// scatter_add_rows with the rows' gates as row_scale); out[i] = row_scale[i] · table[ids[i]] (the
// output gradient of each expert row); out[i] = <a[a_ids[i]], b[i]> in dot_lanes' order (the
// gate gradient of each row; one thread per row).
void residual_bias_rows(float* out, const float* x, const float* bias, int N, int C, cudaStream_t stream);
// x [n] rounded in place to the nearest bf16 (runtime/bf16.hpp's body; --precision bf16).
void bf16_round(float* x, int64_t n, cudaStream_t stream);
// out [n] = the bf16 bits of in [n] (the bf16 GEMMs' inputs, rows for the wire), and back.
void bf16_pack(uint16_t* out, const float* in, int64_t n, cudaStream_t stream);
void bf16_unpack(float* out, const uint16_t* in, int64_t n, cudaStream_t stream);
void gather_rows_scaled(float* out, const float* table, const int32_t* ids, const float* row_scale, int N, int C,
                        cudaStream_t stream);
void row_dots(float* out, const float* a, const int32_t* a_ids, const float* b, int N, int C, cudaStream_t stream);

// Small helpers the expert path needs.
// y[r, :] = bias[e(r), :] for rows r of expert e (rows [offsets[e], offsets[e+1])); offsets on the device.
void broadcast_expert_bias(float* y, const float* bias, const int* offsets, int n_experts, int rows, int C,
                           cudaStream_t stream);
// db[e, c] += Σ_{r in expert e} dh[r, c], rows in order (one thread per (expert, column)).
void accumulate_expert_bias_grad(float* db, const float* dh, const int* offsets, int n_experts, int C,
                                 cudaStream_t stream);

}  // namespace uoe::cuda
