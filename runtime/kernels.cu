// Launch wrappers around kernels.hpp's shared row bodies (declared in runtime/cuda/kernels.cuh,
// which explains the launch shapes and the determinism rules). Compiled only; see docs/gpu.md.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cmath>

#include "runtime/cuda/check.cuh"
#include "runtime/cuda/kernels.cuh"
#include "runtime/bf16.hpp"
#include "runtime/kernels.hpp"

namespace uoe::cuda {
namespace {

constexpr int kRowThreads = 128;   // threads per block for one-row-per-thread kernels
constexpr int kElemThreads = 256;  // threads per block for element-wise kernels

// Blocks for n threads' worth of work (x grids reach 2^31 − 1 blocks; the element-wise kernels
// also stride over the grid, so they stay correct whatever this returns).
unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(b, 1), 2147483647LL));
}

// ---- layernorm ----
__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                         const float* bias, int N, int C) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  layernorm_row_forward(out + static_cast<int64_t>(i) * C, mean + i, rstd + i, x + static_cast<int64_t>(i) * C,
                        weight, bias, C);
}

// Row i of the chunk [r0, r0 + n): dx accumulates in place; this row's dweight/dbias contributions
// go to its own scratch rows (zeroed first), so no two threads write the same address.
__global__ void layernorm_backward_rows_kernel(float* dx, float* pw, float* pb, const float* dout, const float* x,
                                               const float* weight, const float* mean, const float* rstd, int r0, int n,
                                               int C) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  const int64_t i = r0 + j;
  float* w = pw + static_cast<int64_t>(j) * C;
  float* b = pb + static_cast<int64_t>(j) * C;
  for (int c = 0; c < C; ++c) w[c] = b[c] = 0.0f;
  layernorm_row_backward(dx + i * C, w, b, dout + i * C, x + i * C, weight, mean[i], rstd[i], C);
}

// dweight[c] += Σ_j pw[j, c] in row order (the CPU's order), one thread per column.
__global__ void column_accumulate_kernel(float* dweight, float* dbias, const float* pw, const float* pb, int n, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float w = dweight[c], b = dbias[c];
  for (int j = 0; j < n; ++j) {
    w += pw[static_cast<int64_t>(j) * C + c];
    b += pb[static_cast<int64_t>(j) * C + c];
  }
  dweight[c] = w;
  dbias[c] = b;
}

// ---- element-wise ----
__global__ void gelu_forward_kernel(float* out, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = gelu(x[i]);
}
__global__ void gelu_backward_kernel(float* dx, const float* x, const float* dout, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dx[i] = dout[i] * gelu_grad(x[i]);
}
__global__ void adamw_kernel(float* w, float* m, float* v, const float* g, const float* mask, size_t n, AdamWScalars s) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    adamw_update_elem(w[i], m[i], v[i], g[i], mask[i], s);
}

// ---- rows ----
__global__ void softmax_rows_kernel(float* x, float* lse, int N, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const float l = softmax_row(x + static_cast<int64_t>(i) * n, n);
  if (lse) lse[i] = l;
}
__global__ void topk_rows_kernel(int* idx, const float* x, int N, int n, int k) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  topk_row(idx + static_cast<int64_t>(i) * k, x + static_cast<int64_t>(i) * n, n, k);
}
// One thread per (row, head).
__global__ void rope_rows_kernel(float* x, const int32_t* pos, const float* ct, const float* st, int R, int heads,
                                 int dh, int ld, bool inverse) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= static_cast<int64_t>(R) * heads) return;
  const int r = static_cast<int>(t / heads), h = static_cast<int>(t % heads);
  const int half = dh / 2;
  rope_row(x + static_cast<int64_t>(r) * ld + static_cast<int64_t>(h) * dh, half,
           ct + static_cast<int64_t>(pos[r]) * half, st + static_cast<int64_t>(pos[r]) * half, inverse);
}
__global__ void crossentropy_rows_kernel(float* row_loss, float* logits, const int32_t* targets, int N, int V,
                                         float grad_scale, bool backward) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  float* row = logits + static_cast<int64_t>(i) * V;
  row_loss[i] = backward ? crossentropy_row_forward_backward(row, V, targets[i], grad_scale)
                         : crossentropy_row_forward(row, V, targets[i]);
}
// One block of kSumThreads: thread t sums rows t, t + kSumThreads, … in double, then a fixed tree.
// The shape never depends on the data, so the result is reproducible.
constexpr int kSumThreads = 512;
__global__ void sum_rows_double_kernel(double* out, const float* v, int N) {
  __shared__ double part[kSumThreads];
  double s = 0.0;
  for (int i = threadIdx.x; i < N; i += kSumThreads) s += static_cast<double>(v[i]);
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = kSumThreads / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = part[0];
}

// ---- permute / unpermute ----
__global__ void gather_rows_kernel(float* out, const float* table, const int32_t* ids, int N, int C) {
  const int64_t total = static_cast<int64_t>(N) * C;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / C, c = e % C;
    out[e] = table[static_cast<int64_t>(ids[i]) * C + c];
  }
}
__global__ void iota_kernel(int32_t* v, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) v[i] = i;
}
// Block b owns run b (if b < *runs): its threads own columns and add the run's sources in order.
__global__ void scatter_add_runs_kernel(float* table, const float* src, const int32_t* order, const int32_t* run_dest,
                                        const int32_t* run_begin, const int32_t* run_len, const int32_t* runs, int C,
                                        float scale, const float* row_scale) {
  const int b = blockIdx.x;
  if (b >= *runs) return;
  float* t = table + static_cast<int64_t>(run_dest[b]) * C;
  const int p0 = run_begin[b], p1 = p0 + run_len[b];
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    for (int p = p0; p < p1; ++p) {
      const int i = order[p];
      scatter_add_row(t + c, src + static_cast<int64_t>(i) * C + c, 1, row_scale ? scale * row_scale[i] : scale);
    }
}

// ---- attention: block = (segment, head), thread = row ----
__global__ void attn_forward_kernel(float* o, float* att, const float* qkv, const int* seg_begin,
                                    const int64_t* att_offset, int g, int dh, float scale) {
  const int s = blockIdx.x / g, h = blockIdx.x % g;
  const int gd = g * dh, W3 = 3 * gd;
  const int r0 = seg_begin[s], L = seg_begin[s + 1] - r0;
  float* P = att + att_offset[s] + static_cast<int64_t>(h) * L * L;
  const float* q = qkv + static_cast<int64_t>(r0) * W3 + h * dh;
  for (int i = threadIdx.x; i < L; i += blockDim.x)
    attn_row_forward(o + static_cast<int64_t>(r0 + i) * gd + h * dh, P + static_cast<int64_t>(i) * L,
                     q + static_cast<int64_t>(i) * W3, q + gd, q + 2 * gd, W3, i, L, dh, scale);
}
__global__ void attn_backward_query_kernel(float* dqkv, float* ds, const float* d_o, const float* att, const float* qkv,
                                           const int* seg_begin, const int64_t* att_offset, int g, int dh, float scale) {
  const int s = blockIdx.x / g, h = blockIdx.x % g;
  const int gd = g * dh, W3 = 3 * gd;
  const int r0 = seg_begin[s], L = seg_begin[s + 1] - r0;
  const int64_t tile = att_offset[s] + static_cast<int64_t>(h) * L * L;
  const float* q = qkv + static_cast<int64_t>(r0) * W3 + h * dh;
  const float* dOh = d_o + static_cast<int64_t>(r0) * gd + h * dh;
  float* dq = dqkv + static_cast<int64_t>(r0) * W3 + h * dh;
  for (int i = threadIdx.x; i < L; i += blockDim.x)
    attn_row_backward_query(dq + static_cast<int64_t>(i) * W3, ds + tile + static_cast<int64_t>(i) * L,
                            dOh + static_cast<int64_t>(i) * gd, att + tile + static_cast<int64_t>(i) * L, q + gd,
                            q + 2 * gd, W3, i, L, dh, scale);
}
__global__ void attn_backward_key_kernel(float* dqkv, const float* ds, const float* d_o, const float* att,
                                         const float* qkv, const int* seg_begin, const int64_t* att_offset, int g,
                                         int dh) {
  const int s = blockIdx.x / g, h = blockIdx.x % g;
  const int gd = g * dh, W3 = 3 * gd;
  const int r0 = seg_begin[s], L = seg_begin[s + 1] - r0;
  const int64_t tile = att_offset[s] + static_cast<int64_t>(h) * L * L;
  const float* q = qkv + static_cast<int64_t>(r0) * W3 + h * dh;
  const float* dOh = d_o + static_cast<int64_t>(r0) * gd + h * dh;
  float* dq = dqkv + static_cast<int64_t>(r0) * W3 + h * dh;
  for (int j = threadIdx.x; j < L; j += blockDim.x)
    attn_row_backward_key(dq + static_cast<int64_t>(j) * W3 + gd, dq + static_cast<int64_t>(j) * W3 + 2 * gd,
                          ds + tile, att + tile, q, dOh, W3, gd, j, L, dh);
}

// ---- the combine of a block (kernels.hpp's residual_bias_row, scatter_add_row, scale_row, dot_lanes) ----
__global__ void residual_bias_rows_kernel(float* out, const float* x, const float* bias, int N, int C) {
  const int64_t total = static_cast<int64_t>(N) * C;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    residual_bias_row(out + e, x + e, bias + e % C, 1);
}
__global__ void bf16_round_kernel(float* x, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[e] = ::uoe::bf16_round(x[e]);
}
__global__ void bf16_pack_kernel(uint16_t* out, const float* in, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[e] = ::uoe::bf16_from_float(in[e]);
}
__global__ void bf16_unpack_kernel(float* out, const uint16_t* in, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[e] = ::uoe::bf16_to_float(in[e]);
}
__global__ void gather_rows_scaled_kernel(float* out, const float* table, const int32_t* ids, const float* row_scale,
                                          int N, int C) {
  const int64_t total = static_cast<int64_t>(N) * C;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / C, c = e % C;
    scale_row(out + e, table + static_cast<int64_t>(ids[i]) * C + c, 1, row_scale[i]);
  }
}
__global__ void row_dots_kernel(float* out, const float* a, const int32_t* a_ids, const float* b, int N, int C) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  out[i] = dot_lanes(a + static_cast<int64_t>(a_ids[i]) * C, b + static_cast<int64_t>(i) * C, C);
}

// ---- expert helpers ----
__global__ void broadcast_expert_bias_kernel(float* y, const float* bias, const int* offsets, int E, int rows, int C) {
  const int64_t total = static_cast<int64_t>(rows) * C;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(t / C), c = static_cast<int>(t % C);
    int lo = 0, hi = E;  // the expert e with offsets[e] ≤ r < offsets[e+1] (binary search)
    while (hi - lo > 1) {
      const int mid = (lo + hi) / 2;
      if (offsets[mid] <= r) lo = mid; else hi = mid;
    }
    y[t] = bias[static_cast<int64_t>(lo) * C + c];
  }
}
__global__ void accumulate_expert_bias_grad_kernel(float* db, const float* dh, const int* offsets, int E, int C) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= static_cast<int64_t>(E) * C) return;
  const int e = static_cast<int>(t / C), c = static_cast<int>(t % C);
  float s = db[t];
  for (int r = offsets[e]; r < offsets[e + 1]; ++r) s += dh[static_cast<int64_t>(r) * C + c];
  db[t] = s;
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight, const float* bias,
                       int N, int C, cudaStream_t stream) {
  if (N <= 0) return;
  layernorm_forward_kernel<<<blocks_for(N, kRowThreads), kRowThreads, 0, stream>>>(out, mean, rstd, x, weight, bias, N, C);
  UOE_CHECK_LAUNCH("layernorm_forward_kernel");
}

void layernorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                        const float* weight, const float* mean, const float* rstd, int N, int C, float* scratch,
                        int scratch_rows, cudaStream_t stream) {
  UOE_ASSERT(scratch_rows >= 1, "layernorm_backward needs scratch for at least one row");
  float* pw = scratch;
  float* pb = scratch + static_cast<int64_t>(scratch_rows) * C;
  for (int r0 = 0; r0 < N; r0 += scratch_rows) {
    const int n = std::min(scratch_rows, N - r0);
    layernorm_backward_rows_kernel<<<blocks_for(n, kRowThreads), kRowThreads, 0, stream>>>(dx, pw, pb, dout, x, weight,
                                                                                          mean, rstd, r0, n, C);
    UOE_CHECK_LAUNCH("layernorm_backward_rows_kernel");
    column_accumulate_kernel<<<blocks_for(C, kRowThreads), kRowThreads, 0, stream>>>(dweight, dbias, pw, pb, n, C);
    UOE_CHECK_LAUNCH("column_accumulate_kernel");
  }
}

void gelu_forward(float* out, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  gelu_forward_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(out, x, n);
  UOE_CHECK_LAUNCH("gelu_forward_kernel");
}

void gelu_backward(float* dx, const float* x, const float* dout, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  gelu_backward_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(dx, x, dout, n);
  UOE_CHECK_LAUNCH("gelu_backward_kernel");
}

void softmax_rows(float* x, float* lse, int N, int n, cudaStream_t stream) {
  if (N <= 0) return;
  softmax_rows_kernel<<<blocks_for(N, kRowThreads), kRowThreads, 0, stream>>>(x, lse, N, n);
  UOE_CHECK_LAUNCH("softmax_rows_kernel");
}

void topk_rows(int* idx, const float* x, int N, int n, int k, cudaStream_t stream) {
  if (N <= 0) return;
  topk_rows_kernel<<<blocks_for(N, kRowThreads), kRowThreads, 0, stream>>>(idx, x, N, n, k);
  UOE_CHECK_LAUNCH("topk_rows_kernel");
}

void rope_rows(float* x, const int32_t* pos, const float* cos_table, const float* sin_table, int R, int heads, int dh,
               int ld, bool inverse, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(R) * heads;
  if (n <= 0) return;
  rope_rows_kernel<<<blocks_for(n, kRowThreads), kRowThreads, 0, stream>>>(x, pos, cos_table, sin_table, R, heads, dh,
                                                                          ld, inverse);
  UOE_CHECK_LAUNCH("rope_rows_kernel");
}

namespace {
void crossentropy(double* loss_sum, float* row_loss, float* logits, const int32_t* targets, int N, int V,
                  float grad_scale, bool backward, cudaStream_t stream) {
  if (N > 0) {
    crossentropy_rows_kernel<<<blocks_for(N, kRowThreads), kRowThreads, 0, stream>>>(row_loss, logits, targets, N, V,
                                                                                    grad_scale, backward);
    UOE_CHECK_LAUNCH("crossentropy_rows_kernel");
  }
  sum_rows_double_kernel<<<1, kSumThreads, 0, stream>>>(loss_sum, row_loss, N);
  UOE_CHECK_LAUNCH("sum_rows_double_kernel");
}
}  // namespace

void crossentropy_forward_backward(double* loss_sum, float* row_loss, float* logits, const int32_t* targets, int N,
                                   int V, float grad_scale, cudaStream_t stream) {
  crossentropy(loss_sum, row_loss, logits, targets, N, V, grad_scale, true, stream);
}

void crossentropy_forward(double* loss_sum, float* row_loss, float* logits, const int32_t* targets, int N, int V,
                          cudaStream_t stream) {
  crossentropy(loss_sum, row_loss, logits, targets, N, V, 1.0f, false, stream);
}

void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * C;
  if (n <= 0) return;
  gather_rows_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(out, table, ids, N, C);
  UOE_CHECK_LAUNCH("gather_rows_kernel");
}

void ScatterPlan::build(const int32_t* ids, int N, int table_rows, cudaStream_t stream) {
  n_ = N;
  const size_t n = static_cast<size_t>(N > 0 ? N : 1);
  iota_.resize(n);
  keys_sorted_.resize(n);
  order_.resize(n);
  run_dest_.resize(n);
  run_len_.resize(n);
  run_begin_.resize(n);
  runs_.resize(1);
  runs_.zero(stream);
  if (N == 0) return;
  // Sort only the bits destinations can use (fewer radix passes).
  int end_bit = 1;
  while (end_bit < 31 && (int64_t{1} << end_bit) < table_rows) ++end_bit;

  size_t sort_bytes = 0, rle_bytes = 0, scan_bytes = 0;
  UOE_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, ids, keys_sorted_.data(), iota_.data(),
                                                 order_.data(), N, 0, end_bit, stream));
  UOE_CHECK_CUDA(cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, keys_sorted_.data(), run_dest_.data(),
                                                    run_len_.data(), runs_.data(), N, stream));
  UOE_CHECK_CUDA(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, run_len_.data(), run_begin_.data(), N, stream));
  temp_.resize(std::max({sort_bytes, rle_bytes, scan_bytes, size_t{1}}));
  size_t bytes = temp_.size();

  iota_kernel<<<blocks_for(N, kElemThreads), kElemThreads, 0, stream>>>(iota_.data(), N);
  UOE_CHECK_LAUNCH("iota_kernel");
  // Stable: equal destinations keep ascending source index (the CPU's order).
  UOE_CHECK_CUDA(cub::DeviceRadixSort::SortPairs(temp_.data(), bytes, ids, keys_sorted_.data(), iota_.data(),
                                                 order_.data(), N, 0, end_bit, stream));
  // Entries of run_len past the number of runs are never read by the scatter, but the scan reads
  // all N: zero them so it reads defined memory.
  run_len_.zero(stream);
  bytes = temp_.size();
  UOE_CHECK_CUDA(cub::DeviceRunLengthEncode::Encode(temp_.data(), bytes, keys_sorted_.data(), run_dest_.data(),
                                                    run_len_.data(), runs_.data(), N, stream));
  bytes = temp_.size();
  UOE_CHECK_CUDA(cub::DeviceScan::ExclusiveSum(temp_.data(), bytes, run_len_.data(), run_begin_.data(), N, stream));
}

void scatter_add_rows(float* table, const float* src, const ScatterPlan& plan, int C, float scale,
                      const float* row_scale, cudaStream_t stream) {
  if (plan.rows() == 0 || C == 0) return;
  // One block per possible run (at most one per source row); blocks past the run count return.
  const int threads = std::min(256, ((C + 31) / 32) * 32);
  scatter_add_runs_kernel<<<static_cast<unsigned>(plan.rows()), threads, 0, stream>>>(
      table, src, plan.source_order(), plan.run_dest(), plan.run_begin(), plan.run_length(), plan.runs(), C, scale,
      row_scale);
  UOE_CHECK_LAUNCH("scatter_add_runs_kernel");
}

void adamw_update(float* w, float* m, float* v, const float* g, const float* decay_mask, size_t n,
                  const AdamWScalars& s, cudaStream_t stream) {
  if (n == 0) return;
  adamw_kernel<<<blocks_for(static_cast<int64_t>(n), kElemThreads), kElemThreads, 0, stream>>>(w, m, v, g, decay_mask,
                                                                                              n, s);
  UOE_CHECK_LAUNCH("adamw_kernel");
}

void attn_causal_forward(float* o, float* att, const float* qkv, const int* seg_begin, const int64_t* att_offset,
                         int nseg, int g, int dh, cudaStream_t stream) {
  if (nseg <= 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  attn_forward_kernel<<<static_cast<unsigned>(nseg * g), kRowThreads, 0, stream>>>(o, att, qkv, seg_begin, att_offset,
                                                                                   g, dh, scale);
  UOE_CHECK_LAUNCH("attn_forward_kernel");
}

void attn_causal_backward(float* dqkv, float* ds, const float* d_o, const float* att, const float* qkv,
                          const int* seg_begin, const int64_t* att_offset, int nseg, int g, int dh,
                          cudaStream_t stream) {
  if (nseg <= 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  // Two launches on one stream: every query row's dS is complete before any key row reads a column.
  attn_backward_query_kernel<<<static_cast<unsigned>(nseg * g), kRowThreads, 0, stream>>>(
      dqkv, ds, d_o, att, qkv, seg_begin, att_offset, g, dh, scale);
  UOE_CHECK_LAUNCH("attn_backward_query_kernel");
  attn_backward_key_kernel<<<static_cast<unsigned>(nseg * g), kRowThreads, 0, stream>>>(dqkv, ds, d_o, att, qkv,
                                                                                        seg_begin, att_offset, g, dh);
  UOE_CHECK_LAUNCH("attn_backward_key_kernel");
}

void residual_bias_rows(float* out, const float* x, const float* bias, int N, int C, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * C;
  if (n <= 0) return;
  residual_bias_rows_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(out, x, bias, N, C);
  UOE_CHECK_LAUNCH("residual_bias_rows_kernel");
}

void bf16_round(float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  bf16_round_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(x, n);
  UOE_CHECK_LAUNCH("bf16_round_kernel");
}
void bf16_pack(uint16_t* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  bf16_pack_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(out, in, n);
  UOE_CHECK_LAUNCH("bf16_pack_kernel");
}
void bf16_unpack(float* out, const uint16_t* in, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  bf16_unpack_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(out, in, n);
  UOE_CHECK_LAUNCH("bf16_unpack_kernel");
}

void gather_rows_scaled(float* out, const float* table, const int32_t* ids, const float* row_scale, int N, int C,
                        cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(N) * C;
  if (n <= 0) return;
  gather_rows_scaled_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(out, table, ids, row_scale, N, C);
  UOE_CHECK_LAUNCH("gather_rows_scaled_kernel");
}

void row_dots(float* out, const float* a, const int32_t* a_ids, const float* b, int N, int C, cudaStream_t stream) {
  if (N <= 0) return;
  row_dots_kernel<<<blocks_for(N, kRowThreads), kRowThreads, 0, stream>>>(out, a, a_ids, b, N, C);
  UOE_CHECK_LAUNCH("row_dots_kernel");
}

void broadcast_expert_bias(float* y, const float* bias, const int* offsets, int n_experts, int rows, int C,
                           cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(rows) * C;
  if (n <= 0 || n_experts <= 0) return;
  broadcast_expert_bias_kernel<<<blocks_for(n, kElemThreads), kElemThreads, 0, stream>>>(y, bias, offsets, n_experts,
                                                                                         rows, C);
  UOE_CHECK_LAUNCH("broadcast_expert_bias_kernel");
}

void accumulate_expert_bias_grad(float* db, const float* dh, const int* offsets, int n_experts, int C,
                                 cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(n_experts) * C;
  if (n <= 0) return;
  accumulate_expert_bias_grad_kernel<<<blocks_for(n, kRowThreads), kRowThreads, 0, stream>>>(db, dh, offsets,
                                                                                             n_experts, C);
  UOE_CHECK_LAUNCH("accumulate_expert_bias_grad_kernel");
}

}  // namespace uoe::cuda
