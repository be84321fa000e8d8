// The CUDA backend of the step (layers/step_cuda.hpp explains the design): every call is queued on
// one stream; each is the cuda:: twin of the CPU backend's operation of the same name.
// Compiled, never run (no GPU here).
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/optimizer.hpp"
#include "layers/router.hpp"
#include "layers/router_select.hpp"
#include "layers/step_figures.hpp"
#include "layers/source_rows.hpp"
#include "parallel/grad_sync.hpp"
#include "layers/step_cuda.hpp"
#include "parallel/stream_scheduler.hpp"
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/experts.cuh"
#include "runtime/cuda/gemm.cuh"
#include "runtime/cuda/kernels.cuh"
#include "runtime/cuda/memory.cuh"
#include "runtime/error.hpp"

namespace uoe {
namespace cuda {
namespace {

constexpr int kThreads = 256;
unsigned grid_for(int64_t n) { return static_cast<unsigned>(std::max<int64_t>(1, (n + kThreads - 1) / kThreads)); }

// The router's parts (layers/router.hpp), element for element the CPU loops of the same names.
__global__ void router_patch_means_kernel(float* xm, const float* xn, int P, int ps, int d, float inv) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(P) * d) return;
  const int64_t p = i / d, c = i % d;
  float m = 0.0f;
  for (int t = 0; t < ps; ++t) m = __fadd_rn(m, xn[(p * ps + t) * d + c]);
  xm[i] = __fmul_rn(m, inv);
}
__global__ void router_bias_rows_kernel(float* logits, const float* b, int P, int E) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < static_cast<int64_t>(P) * E) logits[i] = b[i % E];
}
__global__ void router_bias_grad_kernel(float* db, const float* dlogits, int P, int E) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= E) return;
  float s = db[e];
  for (int p = 0; p < P; ++p) s = __fadd_rn(s, dlogits[static_cast<int64_t>(p) * E + e]);
  db[e] = s;
}
__global__ void router_patch_means_backward_kernel(float* dxn, const float* dxm, int P, int ps, int d, float inv) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(P) * ps * d) return;
  const int64_t token = i / d, c = i % d;
  dxn[i] = __fadd_rn(dxn[i], __fmul_rn(dxm[(token / ps) * d + c], inv));
}
// Capacity selection and row tables (layers/router_select.hpp): one thread per assignment (keeps,
// places), one per expert (its row count), one thread for the prefix sums — the bodies the CPU twin
// router_select runs in loops.
__global__ void router_keeps_kernel(uint8_t* kept, const int* choice, const float* probs, int P, int E, int k,
                                    int capacity) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(P) * k) return;
  kept[i] = router_keeps(choice, probs, P, E, k, capacity, static_cast<int>(i / k), static_cast<int>(i % k));
}
__global__ void router_row_counts_kernel(int* row_offsets, const int* choice, const uint8_t* kept, int P, int E,
                                         int k) {
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e < E) row_offsets[e + 1] = router_kept_before(choice, kept, k, e, P);
}
__global__ void router_row_offsets_kernel(int* row_offsets, int E) {
  row_offsets[0] = 0;
  for (int e = 0; e < E; ++e) row_offsets[e + 1] += row_offsets[e];
}
__global__ void router_place_rows_kernel(int* row_patch, int* row_slot, const int* row_offsets, const int* choice,
                                         const uint8_t* kept, int P, int k) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<int64_t>(P) * k) return;
  router_place_row(row_patch, row_slot, row_offsets, choice, kept, k, static_cast<int>(i / k), static_cast<int>(i % k));
}
// Σ g² in double: each of kSumThreads threads sums a strided share in index order, one thread adds
// the shares in thread order. Deterministic; within double rounding of grad_sum_squares (its twin:
// the same terms, summed in 8 lanes).
constexpr int kSumBlocks = kSumShares / kThreads;
__global__ void sum_squares_shares_kernel(double* shares, const float* g, size_t n) {
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  double s = 0;
  for (size_t i = tid; i < n; i += stride) s += static_cast<double>(g[i]) * g[i];
  shares[tid] = s;
}
__global__ void sum_shares_kernel(double* out, const double* shares, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += shares[i];
  *out = s;
}

// The decisions (layers/router_select.hpp's bodies; the CPU twins are loops over the same bodies):
// one thread per patch, per expert, per row run; the figures' sums as fixed-order reductions.
__global__ void router_decide_rows_kernel(float* probs, float* lse, int* choice, float* gate, int P, int E, int k,
                                          GateMode mode) {
  const int p = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (p >= P) return;
  lse[p] = router_decide_row(probs + static_cast<int64_t>(p) * E, choice + static_cast<int64_t>(p) * k,
                             gate + static_cast<int64_t>(p) * k, E, k, mode);
}
__global__ void router_chosen_kernel(int* chosen, const int* choice, int P, int E, int k) {
  const int e = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (e < E) chosen[e] = router_chosen_count(choice, P, k, e);
}
// The losses and figures (router_losses, router_figures: the same terms) as parallel reductions in
// a fixed order: one block of kFigureThreads threads; thread t sums the terms of patches t, t + T,
// t + 2T, … in ascending order, then a fixed tree adds the threads' sums (t += t + stride, stride
// halving) — the same bits every run, O(P·E / T) per thread. Each expert's probability mass for
// the balance loss is such a reduction, the experts then combined on thread 0 in order. The terms
// are the CPU's; only the order of the double sums differs from its serial loops, so the figures
// equal the CPU twin's to double rounding (tests/cuda/test_step_cuda.cpp: 1e-6 relative, which also
// covers device log against host log). experts_per_token: integer counts (exact in any order).
constexpr int kFigureThreads = 256;
constexpr int kMaxFigureK = 64;  // top-k of the counts' shared array
__device__ double block_sum_fixed(double* shared, double v) {
  const int t = static_cast<int>(threadIdx.x);
  shared[t] = v;
  __syncthreads();
  for (int stride = kFigureThreads / 2; stride > 0; stride /= 2) {
    if (t < stride) shared[t] += shared[t + stride];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();  // shared is reused by the next reduction
  return total;
}
__global__ void __launch_bounds__(kFigureThreads)
    router_figures_kernel(double* out, int* experts_per_token, const float* probs, const float* lse, const int* chosen,
                          const uint8_t* kept, int P, int E, int k, int patch, double aux_weight, double z_weight) {
  __shared__ double shared[kFigureThreads];
  __shared__ int counts[kMaxFigureK + 1];
  const int t = static_cast<int>(threadIdx.x);
  for (int j = t; j <= k; j += kFigureThreads) counts[j] = 0;
  __syncthreads();
  double bal = 0.0;
  for (int e = 0; e < E; ++e) {
    double pe = 0.0;
    for (int p = t; p < P; p += kFigureThreads) pe += probs[static_cast<int64_t>(p) * E + e];
    pe = block_sum_fixed(shared, pe);
    if (t == 0 && P > 0) bal += (static_cast<double>(chosen[e]) / (static_cast<double>(P) * k)) * (pe / P);
  }
  double z = 0.0, h = 0.0;
  for (int p = t; p < P; p += kFigureThreads) {
    z += static_cast<double>(lse[p]) * lse[p];
    h += router_entropy_row(probs + static_cast<int64_t>(p) * E, E);
    int n = 0;
    for (int j = 0; j < k; ++j) n += kept[p * k + j];
    atomicAdd(&counts[n], patch);
  }
  z = block_sum_fixed(shared, z);
  h = block_sum_fixed(shared, h);
  if (t == 0) {
    out[0] = P > 0 ? aux_weight * E * bal : 0.0;
    out[1] = P > 0 ? z_weight * z / P : 0.0;
    out[2] = h;
  }
  for (int j = t; j <= k; j += kFigureThreads) experts_per_token[j] = counts[j];
}
__global__ void router_backward_logits_kernel(float* dlogits, const float* probs, const float* lse, const int* choice,
                                              const uint8_t* kept, const float* dgate, const int* chosen, int P, int E,
                                              int k, GateMode mode, double aux_scale, double aux_weight, float zscale) {
  const int p = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (p >= P) return;
  const int64_t pk = static_cast<int64_t>(p) * k;
  float* dl = dlogits + static_cast<int64_t>(p) * E;
  router_backward_logits_row(dl, dl, probs + static_cast<int64_t>(p) * E, choice + pk, kept + pk, dgate + pk, lse[p],
                             chosen, P, E, k, mode, aux_scale, aux_weight, zscale);
}
__global__ void router_gate_grads_kernel(float* dgate, const int32_t* slot, const float* rowdot, int i0, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) router_gate_grad_run(dgate, slot, rowdot, i0, n, i0 + i);
}
__global__ void fill_kernel(float* x, float v, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) x[i] = v;
}
// The source rows (layers/source_rows.hpp's bodies; the CPU twins, layers/model.cpp, are loops over
// them): one thread per cell, one for the layout (O(S·E)), one per routing row.
__global__ void source_rows_cells_kernel(int* cells, const int* row_offsets, const int* row_patch, int S, int E, int ps,
                                         int T) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < static_cast<int64_t>(S) * E)
    cells[i] = source_rows_cell(row_offsets, row_patch, ps, T, static_cast<int>(i / E), static_cast<int>(i % E));
}
__global__ void source_rows_layout_kernel(int* first_src, int* first_route, int* chunk_begin, int* chunk_offsets,
                                          const int* cells, const int* row_offsets, int S, int E, int C, int ps) {
  source_rows_layout(first_src, first_route, chunk_begin, chunk_offsets, cells, row_offsets, S, E, C, ps);
}
__global__ void source_rows_place_kernel(int32_t* token, int32_t* gate, int32_t* seg, int32_t* pos,
                                         const int* first_src, const int* first_route, const int* row_offsets,
                                         const int* row_patch, const int* row_slot, int rows, int E, int k, int ps,
                                         int T) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < rows)
    source_row_place(token, gate, seg, pos, first_src, first_route, row_offsets, row_patch, row_slot, E, k, ps, T, i);
}
// An unrouted block's row tables (routing_all_to_one): row i is patch i, slot 0.
__global__ void identity_rows_kernel(int* row_patch, int* row_slot, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  row_patch[i] = i;
  row_slot[i] = 0;
}

}  // namespace

void router_decide_rows(float* probs, float* lse, int* choice, float* gate, int P, int E, int k, GateMode mode,
                        cudaStream_t s) {
  if (P == 0) return;
  router_decide_rows_kernel<<<grid_for(P), kThreads, 0, s>>>(probs, lse, choice, gate, P, E, k, mode);
  UOE_CHECK_LAUNCH("router_decide_rows_kernel");
}
void router_chosen(int* chosen, const int* choice, int P, int E, int k, cudaStream_t s) {
  router_chosen_kernel<<<grid_for(E), kThreads, 0, s>>>(chosen, choice, P, E, k);
  UOE_CHECK_LAUNCH("router_chosen_kernel");
}
void router_losses_and_figures(double* out, int* experts_per_token, const float* probs, const float* lse,
                               const int* chosen, const uint8_t* kept, int P, int E, int k, int patch,
                               double aux_weight, double z_weight, cudaStream_t s) {
  UOE_ASSERT(k <= kMaxFigureK, "router figures: top-k ", k, " over ", kMaxFigureK);
  router_figures_kernel<<<1, kFigureThreads, 0, s>>>(out, experts_per_token, probs, lse, chosen, kept, P, E, k, patch,
                                                     aux_weight, z_weight);
  UOE_CHECK_LAUNCH("router_figures_kernel");
}
void router_backward_logits_rows(float* dlogits, const float* probs, const float* lse, const int* choice,
                                 const uint8_t* kept, const float* dgate, const int* chosen, int P, int E, int k,
                                 GateMode mode, double aux_scale, double aux_weight, double z_weight, cudaStream_t s) {
  if (P == 0) return;
  const float zscale = static_cast<float>(aux_scale * z_weight * 2.0 / P);  // the twin's, on the host
  router_backward_logits_kernel<<<grid_for(P), kThreads, 0, s>>>(dlogits, probs, lse, choice, kept, dgate, chosen, P,
                                                                 E, k, mode, aux_scale, aux_weight, zscale);
  UOE_CHECK_LAUNCH("router_backward_logits_kernel");
}
void fill(float* x, float v, int n, cudaStream_t s) {
  if (n <= 0) return;
  fill_kernel<<<grid_for(n), kThreads, 0, s>>>(x, v, n);
  UOE_CHECK_LAUNCH("fill_kernel");
}
void source_rows_cells(int* cells, const int* row_offsets, const int* row_patch, int S, int E, int ps, int T,
                       cudaStream_t s) {
  if (S == 0 || E == 0) return;
  source_rows_cells_kernel<<<grid_for(static_cast<int64_t>(S) * E), kThreads, 0, s>>>(cells, row_offsets, row_patch,
                                                                                       S, E, ps, T);
  UOE_CHECK_LAUNCH("source_rows_cells_kernel");
}
void source_rows_place(int32_t* token, int32_t* gate, int32_t* seg, int32_t* pos, int* first_src, int* first_route,
                       int* chunk_begin, int* chunk_offsets, const int* cells, const int* row_offsets,
                       const int* row_patch, const int* row_slot, int rows, int S, int E, int k, int ps, int T, int C,
                       cudaStream_t s) {
  source_rows_layout_kernel<<<1, 1, 0, s>>>(first_src, first_route, chunk_begin, chunk_offsets, cells, row_offsets, S,
                                            E, C, ps);
  UOE_CHECK_LAUNCH("source_rows_layout_kernel");
  if (rows == 0) return;
  source_rows_place_kernel<<<grid_for(rows), kThreads, 0, s>>>(token, gate, seg, pos, first_src, first_route,
                                                               row_offsets, row_patch, row_slot, rows, E, k, ps, T);
  UOE_CHECK_LAUNCH("source_rows_place_kernel");
}
void identity_rows(int* row_patch, int* row_slot, int n, cudaStream_t s) {
  if (n <= 0) return;
  identity_rows_kernel<<<grid_for(n), kThreads, 0, s>>>(row_patch, row_slot, n);
  UOE_CHECK_LAUNCH("identity_rows_kernel");
}
void router_gate_grads(float* dgate, const int32_t* slot, const float* rowdot, int i0, int n, cudaStream_t s) {
  if (n <= 0) return;
  router_gate_grads_kernel<<<grid_for(n), kThreads, 0, s>>>(dgate, slot, rowdot, i0, n);
  UOE_CHECK_LAUNCH("router_gate_grads_kernel");
}

void router_patch_means(float* xm, const float* xn, int P, int ps, int d, cudaStream_t s) {
  router_patch_means_kernel<<<grid_for(static_cast<int64_t>(P) * d), kThreads, 0, s>>>(xm, xn, P, ps, d,
                                                                                     1.0f / static_cast<float>(ps));
  UOE_CHECK_LAUNCH("router_patch_means_kernel");
}
void router_bias_rows(float* logits, const float* b, int P, int E, cudaStream_t s) {
  router_bias_rows_kernel<<<grid_for(static_cast<int64_t>(P) * E), kThreads, 0, s>>>(logits, b, P, E);
  UOE_CHECK_LAUNCH("router_bias_rows_kernel");
}
void router_bias_grad(float* db, const float* dlogits, int P, int E, cudaStream_t s) {
  router_bias_grad_kernel<<<grid_for(E), kThreads, 0, s>>>(db, dlogits, P, E);
  UOE_CHECK_LAUNCH("router_bias_grad_kernel");
}
void router_patch_means_backward(float* dxn, const float* dxm, int P, int ps, int d, cudaStream_t s) {
  router_patch_means_backward_kernel<<<grid_for(static_cast<int64_t>(P) * ps * d), kThreads, 0, s>>>(
      dxn, dxm, P, ps, d, 1.0f / static_cast<float>(ps));
  UOE_CHECK_LAUNCH("router_patch_means_backward_kernel");
}
void router_select(uint8_t* kept, int* row_offsets, int* row_patch, int* row_slot, const int* choice,
                   const float* probs, int P, int E, int k, int capacity, cudaStream_t s) {
  const int64_t n = static_cast<int64_t>(P) * k;
  router_keeps_kernel<<<grid_for(n), kThreads, 0, s>>>(kept, choice, probs, P, E, k, capacity);
  UOE_CHECK_LAUNCH("router_keeps_kernel");
  router_row_counts_kernel<<<grid_for(E), kThreads, 0, s>>>(row_offsets, choice, kept, P, E, k);
  UOE_CHECK_LAUNCH("router_row_counts_kernel");
  router_row_offsets_kernel<<<1, 1, 0, s>>>(row_offsets, E);
  UOE_CHECK_LAUNCH("router_row_offsets_kernel");
  router_place_rows_kernel<<<grid_for(n), kThreads, 0, s>>>(row_patch, row_slot, row_offsets, choice, kept, P, k);
  UOE_CHECK_LAUNCH("router_place_rows_kernel");
}
// *out (device) = Σ g² of g [n] (device); shares: kSumBlocks · 256 doubles of workspace.
// The step's log figures (layers/step_figures.hpp's bodies, one thread: a handful of additions).
__global__ void step_figures_add_loss_kernel(double* sums, const double* ce_sum, double tokens, double* aux) {
  uoe::step_figures_add_loss(sums, ce_sum, tokens);
  *aux = 0;
}
__global__ void step_figures_add_block_kernel(double* sums, double* aux, const double* figures,
                                              const int* experts_per_token, const int* chosen, StepFigureBlock blk) {
  uoe::step_figures_add_block(sums, aux, figures, experts_per_token, chosen, blk);
}
__global__ void step_figures_add_aux_kernel(double* sums, const double* aux) { uoe::step_figures_add_aux(sums, aux); }

void step_figures_add_loss(double* sums, const double* ce_sum, double tokens, double* aux, cudaStream_t s) {
  step_figures_add_loss_kernel<<<1, 1, 0, s>>>(sums, ce_sum, tokens, aux);
  UOE_CHECK_LAUNCH("step_figures_add_loss_kernel");
}
void step_figures_add_block(double* sums, double* aux, const double* figures, const int* experts_per_token,
                            const int* chosen, StepFigureBlock blk, cudaStream_t s) {
  step_figures_add_block_kernel<<<1, 1, 0, s>>>(sums, aux, figures, experts_per_token, chosen, blk);
  UOE_CHECK_LAUNCH("step_figures_add_block_kernel");
}
void step_figures_add_aux(double* sums, const double* aux, cudaStream_t s) {
  step_figures_add_aux_kernel<<<1, 1, 0, s>>>(sums, aux);
  UOE_CHECK_LAUNCH("step_figures_add_aux_kernel");
}

void grad_sum_squares(double* out, double* shares, const float* g, size_t n, cudaStream_t s) {
  sum_squares_shares_kernel<<<kSumBlocks, kThreads, 0, s>>>(shares, g, n);
  UOE_CHECK_LAUNCH("sum_squares_shares_kernel");
  sum_shares_kernel<<<1, 1, 0, s>>>(out, shares, kSumShares);
  UOE_CHECK_LAUNCH("sum_shares_kernel");
}

}  // namespace cuda

class CudaBackend {
 public:
  static constexpr bool kHostMemory = false;
  static constexpr bool kBatchedMetadata = true;

  template <class T>
  using Buffer = cuda::DeviceBuffer<T>;
  using Rows = cuda::DeviceExpertRows;
  using MlpCache = cuda::DeviceMlpCache;
  using AttnCache = cuda::DeviceAttnCache;
  // What routing keeps here: patch means [P, d], scores (then probabilities) and their gradients
  // [P, E], and the decisions (Routing's arrays of the same names); on_host: the host's Routing
  // holds a copy (routing_to_host); decided: route() ran on it (an unrouted block's never does).
  struct RouteCache {
    cuda::DeviceBuffer<float> xm, logits, dlogits, dxm, lse, gate;
    cuda::DeviceBuffer<int> choice, chosen, counts, row_patch, row_slot, experts_per_token;
    cuda::DeviceBuffer<uint8_t> kept;
    cuda::DeviceBuffer<double> figures;  // [3] balance, z, entropy sum
    bool on_host = false, decided = false;
  };
  // A block's rows on the device (token and gate of each source row) and one scatter plan per chunk
  // (sources ascending within a destination: each token's rows in row order).
  struct CombineTables {
    const SourceRows* src = nullptr;
    Buffer<int32_t> token, slot, seg, pos;  // [R] each row's token, gate slot (p·k + j), sequence, position
    Buffer<int32_t> cells, first_src, first_route, chunk_begin, chunk_offsets;  // the layout (source_rows.hpp)
    Buffer<float> gate, rowdot;
    std::vector<std::unique_ptr<cuda::ScatterPlan>> plan;  // [chunks]
    int B = 0, T = 0, C = 1;
    int slots = 0;  // P·k: the gate gradients' length
  };

  CudaBackend(int device, NcclCommunicator* nccl, cudaStream_t comm_stream, Communicator* grad_world,
              Communicator* grad_dp)
      : device_(set_device(device)), grad_world_(grad_world), grad_dp_(grad_dp) {
    if (comm_stream) sched = std::make_unique<StreamScheduler>(s(), comm_stream, nccl);
  }

  cudaStream_t s() const { return stream.get(); }

  // Exchanges (ep > 1): the StreamScheduler on the NCCL communicator's stream, ordered against the
  // compute stream by events; the host does not wait for them inside a step (end_step does).
  using Ticket = StreamScheduler::Ticket;
  Ticket submit(const std::function<void()>& fn) {
    UOE_ASSERT(sched != nullptr, "step: an exchange without a communication stream");
    return sched->submit([&fn](cudaStream_t) { fn(); });
  }
  void wait(Ticket t) { sched->wait(t); }
  void wait_all() {
    if (sched) sched->wait_all();
  }
  double exchange_busy_seconds() const { return sched ? sched->busy_seconds() : 0.0; }
  void take_exchange_seconds(double* busy, double* exposed) {
    *busy = *exposed = 0;
    if (!sched) return;  // every expert on this rank: nothing travels
    *busy = sched->busy_seconds();
    *exposed = sched->exposed_seconds();
    sched->reset_counters();
  }
  std::string describe() const {
    int count = 0;
    UOE_CHECK_CUDA(cudaGetDeviceCount(&count));
    cudaDeviceProp prop{};
    UOE_CHECK_CUDA(cudaGetDeviceProperties(&prop, device_));
    return "GPU " + std::to_string(device_) + " of " + std::to_string(count) + ": " + prop.name + " (sm_" +
           std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  }
  void close() {}

  template <class T>
  void upload(Buffer<T>& b, std::span<const T> host) {
    traffic.up_bytes += host.size_bytes();
    b.upload(host, s());
  }
  template <class T>
  void download(const Buffer<T>& b, std::span<T> host) {
    traffic.down_bytes += host.size_bytes();
    b.download(host, s());
  }
  template <class T>
  void zero(Buffer<T>& b) { b.zero(s()); }
  void synchronize() { stream.synchronize(); }

  // The arenas (and AdamW's moments) live here: taken from the host at the first pass or after
  // from_host (a checkpoint read), given back by to_host (a checkpoint written, the host's figures).
  void begin_step(ParamStore& ps, bool /*with_grads*/) { take_arenas(ps); }
  void end_step(ParamStore&, bool) {
    if (sched) sched->synchronize();
    synchronize();
  }
  float* values() { return values_.data(); }
  float* grads() { return grads_.data(); }

  void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int N,
                         int C) {
    cuda::layernorm_forward(out, mean, rstd, x, w, b, N, C, s());
  }
  void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                          const float* mean, const float* rstd, int N, int C) {
    const int rows = std::max(1, std::min(N, 256));
    ln_scratch.resize(static_cast<size_t>(2) * rows * C);
    cuda::layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C, ln_scratch.data(), rows, s());
  }
  void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C) {
    cuda::gather_rows(out, table, ids, N, C, s());
  }
  void residual_bias_rows(float* out, const float* x, const float* bias, int N, int C) {
    cuda::residual_bias_rows(out, x, bias, N, C, s());
  }
  void bias_grad(float* db, const float* dh, int N, int C) {
    if (all_rows_n != N) {
      const int range[2] = {0, N};
      upload(all_rows, std::span<const int>(range, 2));
      all_rows_n = N;
    }
    cuda::accumulate_expert_bias_grad(db, dh, all_rows.data(), 1, C, s());
  }
  void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
            float beta, float* C, int ldc) {
    blas.gemm_mixed(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void round_bf16(float* x, size_t n) { cuda::bf16_round(x, static_cast<int64_t>(n), s()); }
  double cross_entropy(bool backward, float* logits, const int32_t* targets_host, int N, int V, float grad_scale) {
    upload(targets_, std::span<const int32_t>(targets_host, N));
    row_loss.resize(std::max(N, 1));
    loss_sum.resize(1);
    if (backward)
      cuda::crossentropy_forward_backward(loss_sum.data(), row_loss.data(), logits, targets_.data(), N, V, grad_scale,
                                          s());
    else
      cuda::crossentropy_forward(loss_sum.data(), row_loss.data(), logits, targets_.data(), N, V, s());
    if (defer_figures) return std::numeric_limits<double>::quiet_NaN();  // stays here (figures_add_loss)
    double sum = 0;
    download(loss_sum, std::span<double>(&sum, 1));
    synchronize();
    return sum;
  }
  // The step's log figures here (layers/step_figures.hpp; ModelStep::figures_begin): train_step's
  // vector in slots, added to on the device from the loss and the routing's figures, which stay
  // here while defer_figures is set (a training pass between figures_begin and figures_end).
  bool defer_figures = false;
  void figures_zero(int slot, int slots, size_t size) {
    figures_.resize(static_cast<size_t>(slots) * size);  // grow-only: the same size every step of a run
    figure_size_ = size;
    UOE_CHECK_CUDA(cudaMemsetAsync(slot_of(slot), 0, size * sizeof(double), s()));
    fig_aux_.resize(1);
  }
  void figures_add_loss(int slot, double tokens) {
    cuda::step_figures_add_loss(slot_of(slot), loss_sum.data(), tokens, fig_aux_.data(), s());
  }
  void figures_add_block(int slot, const RouteCache& rc, StepFigureBlock blk) {
    cuda::step_figures_add_block(slot_of(slot), fig_aux_.data(), rc.figures.data(), rc.experts_per_token.data(),
                                 rc.chosen.data(), blk, s());
  }
  void figures_add_aux(int slot) { cuda::step_figures_add_aux(slot_of(slot), fig_aux_.data(), s()); }
  double figures_loss(int slot) {
    double loss = 0;
    traffic.down(slot_of(slot), &loss, 1, s());
    synchronize();
    return loss;
  }
  void figures_fetch(std::span<double> host, int n) {
    traffic.down(figures_.data(), host.data(), static_cast<size_t>(n) * figure_size_, s());
    synchronize();
  }

  void embedding_backward(float* dtable, const float* dh, const Buffer<int32_t>& tokens, int N, int V, int d) {
    embed_plan.build(tokens.data(), N, V, s());
    cuda::scatter_add_rows(dtable, dh, embed_plan, d, 1.0f, nullptr, s());
  }

  // Routing decided here (router_forward's parts, layers/router.hpp, and the decision kernels over
  // layers/router_select.hpp's bodies, the CPU rule): the host receives the row counts (and the
  // chosen counts, experts per token), the row tables its source rows are built from, and three
  // figures (balance, z-loss, entropy) — no [P, E] array; one host synchronisation per block.
  void route(Routing& r, RouteCache& rc, const RouterSpec& spec, const float* xn, const float* w, const float* b,
             int N, int d, bool dropless) {
    router_begin(r, spec, N, d);
    const int P = r.P, E = r.E, k = r.k;
    const float* x = xn;
    if (r.patch > 1) {
      rc.xm.resize(static_cast<size_t>(P) * d);
      if (P > 0) cuda::router_patch_means(rc.xm.data(), xn, P, r.patch, d, s());
      x = rc.xm.data();
    }
    r.xm.clear();  // kept here, in rc.xm
    rc.logits.resize(static_cast<size_t>(P) * E);
    rc.lse.resize(P);
    rc.choice.resize(static_cast<size_t>(P) * k);
    rc.gate.resize(static_cast<size_t>(P) * k);
    rc.kept.resize(static_cast<size_t>(P) * k);
    rc.row_patch.resize(static_cast<size_t>(P) * k);
    rc.row_slot.resize(static_cast<size_t>(P) * k);
    rc.chosen.resize(E);
    rc.counts.resize(E + 1);
    rc.experts_per_token.resize(k + 1);
    rc.figures.resize(3);
    if (P > 0) {
      cuda::router_bias_rows(rc.logits.data(), b, P, E, s());
      blas.gemm(false, false, P, E, d, 1.0f, x, d, w, E, 1.0f, rc.logits.data(), E);
    }
    const bool limited = !dropless && spec.capacity_factor > 0;
    r.capacity = limited ? static_cast<int>(expert_capacity(P, k, E, spec.capacity_factor)) : 0;
    cuda::router_decide_rows(rc.logits.data(), rc.lse.data(), rc.choice.data(), rc.gate.data(), P, E, k,
                             gate_mode(spec), s());
    cuda::router_chosen(rc.chosen.data(), rc.choice.data(), P, E, k, s());
    cuda::router_select(rc.kept.data(), rc.counts.data(), rc.row_patch.data(), rc.row_slot.data(), rc.choice.data(),
                        rc.logits.data(), P, E, k, r.capacity, s());
    cuda::router_losses_and_figures(rc.figures.data(), rc.experts_per_token.data(), rc.logits.data(), rc.lse.data(),
                                    rc.chosen.data(), rc.kept.data(), P, E, k, r.patch, spec.aux_weight,
                                    spec.z_weight, s());
    r.row_offsets.resize(E + 1);
    r.chosen.resize(E);
    r.experts_per_token.resize(k + 1);
    double figures[3];
    traffic.down(rc.counts.data(), r.row_offsets.data(), r.row_offsets.size(), s());
    if (defer_figures) {  // they stay here (figures_add_block); poisoned on the host
      std::fill(r.chosen.begin(), r.chosen.end(), -1);
      std::fill(r.experts_per_token.begin(), r.experts_per_token.end(), -1);
      std::fill(figures, figures + 3, std::numeric_limits<double>::quiet_NaN());
    } else {
      traffic.down(rc.chosen.data(), r.chosen.data(), r.chosen.size(), s());
      traffic.down(rc.experts_per_token.data(), r.experts_per_token.data(), r.experts_per_token.size(), s());
      traffic.down(rc.figures.data(), figures, 3, s());
    }
    synchronize();
    const int rows = r.row_offsets[E];
    r.row_patch.clear();  // here, in rc (routing_to_host); row_tables lays the rows out here
    r.row_slot.clear();
    r.sequence_rows.clear();
    r.capacity_kept.resize(E);
    for (int e = 0; e < E; ++e) r.capacity_kept[e] = r.row_offsets[e + 1] - r.row_offsets[e];
    r.dropped = P * k - rows;
    r.balance_loss = figures[0];
    r.z_loss = figures[1];
    r.entropy_sum = figures[2];
    r.figures_only = true;
    r.probs.clear();  // on the host only when asked for (routing_to_host)
    r.lse.clear();
    r.choice.clear();
    r.gate.clear();
    r.kept.clear();
    rc.on_host = false;
    rc.decided = true;
  }
  // The rest of the routing to the host, when the host reads it (ModelStep::routing), not in a step.
  void routing_to_host(Routing& r, RouteCache& rc) {
    if (rc.on_host) return;
    const size_t pe = static_cast<size_t>(r.P) * r.E, pk = static_cast<size_t>(r.P) * r.k;
    r.probs.resize(pe);
    r.lse.resize(r.P);
    r.choice.resize(pk);
    r.gate.resize(pk);
    r.kept.resize(pk);
    r.row_patch.resize(r.row_offsets[r.E]);
    r.row_slot.resize(r.row_offsets[r.E]);
    traffic.down(rc.row_patch.data(), r.row_patch.data(), r.row_patch.size(), s());
    traffic.down(rc.row_slot.data(), r.row_slot.data(), r.row_slot.size(), s());
    traffic.down(rc.logits.data(), r.probs.data(), pe, s());
    traffic.down(rc.lse.data(), r.lse.data(), r.lse.size(), s());
    traffic.down(rc.choice.data(), r.choice.data(), pk, s());
    traffic.down(rc.gate.data(), r.gate.data(), pk, s());
    traffic.down(rc.kept.data(), r.kept.data(), pk, s());
    synchronize();
    rc.on_host = true;
    r.figures_only = false;
  }
  // The scores' gradients formed here from the routing here and the gate gradients the combine
  // backward accumulated here (dgate_; the host's dgate is not used); the router's GEMMs and its
  // weight gradients too. Nothing crosses, no host synchronisation.
  void route_backward(const Routing& r, RouteCache& rc, const RouterSpec& spec, const float* /*dgate_host*/,
                      const float* xn, const float* w, float* dxn, float* dw, float* db, float loss_scale) {
    const int P = r.P, E = r.E, d = r.d, ps = r.patch;
    if (P == 0) return;
    rc.dlogits.resize(static_cast<size_t>(P) * E);
    cuda::router_backward_logits_rows(rc.dlogits.data(), rc.logits.data(), rc.lse.data(), rc.choice.data(),
                                      rc.kept.data(), dgate_.data(), rc.chosen.data(), P, E, r.k, gate_mode(spec),
                                      loss_scale, spec.aux_weight, spec.z_weight, s());
    const float* x = ps > 1 ? rc.xm.data() : xn;
    blas.gemm(true, false, d, E, P, 1.0f, x, d, rc.dlogits.data(), E, 1.0f, dw, E);
    cuda::router_bias_grad(db, rc.dlogits.data(), P, E, s());
    if (ps == 1) {
      blas.gemm(false, true, P, d, E, 1.0f, rc.dlogits.data(), E, w, E, 1.0f, dxn, d);
    } else {
      rc.dxm.resize(static_cast<size_t>(P) * d);
      blas.gemm(false, true, P, d, E, 1.0f, rc.dlogits.data(), E, w, E, 0.0f, rc.dxm.data(), d);
      cuda::router_patch_means_backward(dxn, rc.dxm.data(), P, ps, d, s());
    }
  }

  // The source rows laid out here from the routing's row tables here (cuda::source_rows_*, the
  // bodies of the CPU's source_rows_build): only the cells [B, E] come down (one host
  // synchronisation), from which the host forms the chunks' counts and the rows' sequences
  // (source_rows_from_cells); the rows' positions stay here, and travel from here over NCCL when the
  // rows do (owner_positions). An unrouted block (routing_all_to_one, not routed here) sends up
  // its two row offsets; its tables are formed here. The rows' gates are gathered here from the
  // routing's (unrouted: 1).
  void row_tables(CombineTables& t, SourceRows& src, Routing& r, RouteCache& rc, int B, int T, int C) {
    t.src = &src;
    t.slots = r.P * r.k;
    t.T = T;
    const int E = r.E, k = r.k, ps = r.patch, routed_rows = r.row_offsets[E];
    if (!rc.decided) {
      rc.counts.resize(E + 1);
      traffic.up(rc.counts.data(), r.row_offsets.data(), E + 1, s());
      rc.row_patch.resize(std::max(routed_rows, 1));
      rc.row_slot.resize(std::max(routed_rows, 1));
      cuda::identity_rows(rc.row_patch.data(), rc.row_slot.data(), routed_rows, s());
    }
    const size_t ncells = static_cast<size_t>(B) * E;
    t.cells.resize(std::max<size_t>(ncells, 1));
    cuda::source_rows_cells(t.cells.data(), rc.counts.data(), rc.row_patch.data(), B, E, ps, T, s());
    src.cells.resize(ncells);
    traffic.down(t.cells.data(), src.cells.data(), ncells, s());
    synchronize();
    source_rows_from_cells(src, r.row_offsets, B, C, ps);
    if (rc.decided) r.sequence_rows = src.cells;  // the block's figures read them (layers/flops.cpp)
    const int R = src.rows();
    t.first_src.resize(std::max<size_t>(ncells, 1));
    t.first_route.resize(std::max<size_t>(ncells, 1));
    t.chunk_begin.resize(C + 1);
    t.chunk_offsets.resize(static_cast<size_t>(C) * (E + 1));
    t.token.resize(std::max(R, 1));
    t.slot.resize(std::max(R, 1));
    t.seg.resize(std::max(R, 1));
    t.pos.resize(std::max(R, 1));
    cuda::source_rows_place(t.token.data(), t.slot.data(), t.seg.data(), t.pos.data(), t.first_src.data(),
                            t.first_route.data(), t.chunk_begin.data(), t.chunk_offsets.data(), t.cells.data(),
                            rc.counts.data(), rc.row_patch.data(), rc.row_slot.data(), routed_rows, B, E, k, ps, T, C,
                            s());
    t.gate.resize(R);
    if (R == 0) return;
    if (rc.decided) cuda::gather_rows(t.gate.data(), rc.gate.data(), t.slot.data(), R, 1, s());
    else cuda::fill(t.gate.data(), 1.0f, R, s());
  }
  void gather_source_rows(float* out, const float* xn, const CombineTables& t, int r0, int n, int d) {
    if (n > 0) cuda::gather_rows(out, xn, t.token.data() + r0, n, d, s());
  }
  // The experts' row tables (host, and device copies of the offsets and positions); x sized for
  // the n rows (gathered by the step, or filled by the exchange over NCCL).
  void set_rows(Rows& rows, const std::vector<int>& offsets, const int32_t* seg, const int32_t* pos, int n, int d) {
    rows.n_experts = static_cast<int>(offsets.size()) - 1;
    rows.offsets = offsets;
    rows.seg.assign(seg, seg + n);
    upload(rows.offsets_dev, std::span<const int>(rows.offsets));
    if (pos) {
      rows.pos.assign(pos, pos + n);
      rows.positions = 0;  // the bound is max(pos) + 1 (runtime/cuda/experts.cuh)
      upload(rows.pos_dev, std::span<const int32_t>(rows.pos));
    }
    rows.x.resize(static_cast<size_t>(n) * d);
  }
  // The rows' positions here: the tables' on the source side; on the owner side a device buffer the
  // exchange fills over NCCL (ExpertExchange::positions_to_owner), bounded by the sequence length.
  const int32_t* source_positions(const CombineTables& t) const { return t.pos.data(); }
  int32_t* owner_positions(Rows& rows, int n, int T) {
    rows.pos.clear();
    rows.positions = T;
    rows.pos_dev.resize(std::max(n, 1));
    return rows.pos_dev.data();
  }
  // Chunk ch's rows that did not travel: the counts and sequences from the host's part; the
  // positions copied within the device from the tables (none cross).
  void set_source_rows(Rows& rows, const CombineTables& t, int ch, int d) {
    const SourceRows& src = *t.src;
    const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
    rows.n_experts = static_cast<int>(src.chunk_offsets[ch].size()) - 1;
    rows.offsets = src.chunk_offsets[ch];
    rows.seg.assign(src.seg.begin() + r0, src.seg.begin() + r0 + n);
    rows.pos.clear();
    rows.positions = t.T;
    upload(rows.offsets_dev, std::span<const int>(rows.offsets));
    rows.pos_dev.resize(std::max(n, 1));
    if (n > 0)
      UOE_CHECK_CUDA(cudaMemcpyAsync(rows.pos_dev.data(), t.pos.data() + r0, static_cast<size_t>(n) * sizeof(int32_t),
                                     cudaMemcpyDeviceToDevice, s()));
    rows.x.resize(static_cast<size_t>(n) * d);
  }
  void combine_prepare(CombineTables& t, int N, int B, int T, int C) {
    t.B = B;
    t.T = T;
    t.C = C;
    while (static_cast<int>(t.plan.size()) < C) t.plan.push_back(std::make_unique<cuda::ScatterPlan>());
    const SourceRows& src = *t.src;
    for (int ch = 0; ch < C; ++ch) {
      const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
      if (n > 0) t.plan[ch]->build(t.token.data() + r0, n, N, s());
    }
  }
  void combine_chunk(float* out, const float* hin, const float* bias, const float* y, const CombineTables& t, int ch,
                     int d) {
    const SourceRows& src = *t.src;
    if (hin) {
      const int t0 = chunk_first_token(ch, t.B, t.T, t.C), t1 = chunk_first_token(ch + 1, t.B, t.T, t.C);
      if (t1 > t0)
        cuda::residual_bias_rows(out + static_cast<size_t>(t0) * d, hin + static_cast<size_t>(t0) * d, bias, t1 - t0,
                                 d, s());
    }
    const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
    if (n > 0)
      cuda::scatter_add_rows(out, y + static_cast<size_t>(r0) * d, *t.plan[ch], d, 1.0f, t.gate.data() + r0, s());
  }
  // The gate gradients accumulate here, in dgate_ (one block's backward at a time; zeroed by the
  // block's first gate call, which starts at row 0), not in the host's dgate: nothing crosses.
  void combine_backward(float* dy, float* /*dgate_host*/, const float* dh, CombineTables& t, const float* y, int i0,
                        int i1, bool output, bool gate, int d) {
    if (gate && i0 == 0) {
      dgate_.resize(std::max(t.slots, 1));
      dgate_.zero(s());
    }
    const int n = i1 - i0;
    if (n <= 0) return;
    if (output)
      cuda::gather_rows_scaled(dy + static_cast<size_t>(i0) * d, dh, t.token.data() + i0, t.gate.data() + i0, n, d,
                               s());
    if (gate) {
      t.rowdot.resize(n);
      cuda::row_dots(t.rowdot.data(), dh, t.token.data() + i0, y + static_cast<size_t>(i0) * d, n, d, s());
      cuda::router_gate_grads(dgate_.data(), t.slot.data(), t.rowdot.data(), i0, n, s());  // the CPU path's order
    }
  }
  void combine_backward_inputs(float* dxn, const float* dx, const CombineTables& t, int d) {
    const SourceRows& src = *t.src;
    for (int ch = 0; ch < t.C; ++ch) {
      const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
      if (n > 0) cuda::scatter_add_rows(dxn, dx + static_cast<size_t>(r0) * d, *t.plan[ch], d, 1.0f, nullptr, s());
    }
  }

  void mlp_forward(float* y, MlpCache& c, const Rows& r, const float* W1, const float* b1, const float* W2, int d,
                   int f) {
    cuda::mlp_experts_forward(y, c, r, W1, b1, W2, d, f, blas);
  }
  void mlp_backward_data(float* dx, const float* dy, MlpCache& c, const Rows& r, const float* W1, const float* W2,
                         int d, int f) {
    cuda::mlp_experts_backward_data(dx, dy, c, r, W1, W2, d, f, blas);
  }
  void mlp_backward_weights(float* dW1, float* db1, float* dW2, const float* dy, const MlpCache& c, const Rows& r,
                            int d, int f) {
    cuda::mlp_experts_backward_weights(dW1, db1, dW2, dy, c, r, d, f, blas);
  }
  void attn_forward(float* y, AttnCache& c, const Rows& r, const float* Wqkv, const float* Wo, int d, int g, int dh) {
    cuda::attn_experts_forward(y, c, r, Wqkv, Wo, d, g, dh, blas);
  }
  void attn_backward_data(float* dx, const float* dy, AttnCache& c, const Rows& r, const float* Wqkv,
                          const float* Wo, int d, int g, int dh) {
    cuda::attn_experts_backward_data(dx, dy, c, r, Wqkv, Wo, d, g, dh, blas);
  }
  void attn_backward_weights(float* dWqkv, float* dWo, const float* dy, const AttnCache& c, const Rows& r, int d,
                             int g, int dh) {
    cuda::attn_experts_backward_weights(dWqkv, dWo, dy, c, r, d, g, dh, blas);
  }

  // The update side on the device arenas. The all-reduce: one rank — nothing to do; several — the
  // host GradientSync rebased onto the device arena (device_sync): the same buckets in the same
  // order, each one collective over the device communicators (NCCL) in place or on a packed device
  // buffer; no gradient crosses to the host. Σ g²: per tensor on the device, in the GradientSync's
  // order; one double per tensor comes to the host.
  void reduce_gradients(GradientSync& sync, ParamStore& ps, int bucket) {
    take_arenas(ps);
    if (sync.single_rank()) return;
    GradientSync& here = device_sync(sync, ps);
    if (bucket < 0) here.all_reduce();
    else here.reduce_bucket(static_cast<size_t>(bucket));
  }
  double gradient_sum_squares(GradientSync* sync, ParamStore& ps) {
    take_arenas(ps);
    sum_shares.resize(cuda::kSumShares);
    sum_out.resize(1);
    auto on_device = [this](const float* g, size_t n) {
      double v = 0;
      if (n == 0) return v;
      cuda::grad_sum_squares(sum_out.data(), sum_shares.data(), g, n, s());
      traffic.down(sum_out.data(), &v, 1, s());
      synchronize();
      return v;
    };
    if (!sync) return on_device(grads_.data(), ps.total());
    return sync->rebased(ps.grads().data(), grads_.data()).global_sum_squares(on_device);
  }
  void adamw_update(AdamW& opt, ParamStore& ps, double lr, int step, float clip_scale) {
    take_arenas(ps);
    const size_t n = ps.total();
    if (!moments_here_) {
      m_.resize(n);
      v_.resize(n);
      decay_.resize(n);
      traffic.up(m_.data(), opt.m().data(), n, s());
      traffic.up(v_.data(), opt.v().data(), n, s());
      traffic.up(decay_.data(), opt.decay_mask().data(), n, s());
      synchronize();
      moments_here_ = true;
    }
    cuda::adamw_update(values_.data(), m_.data(), v_.data(), grads_.data(), decay_.data(), n,
                       opt.scalars(lr, step, clip_scale), s());
  }
  void zero_grads(ParamStore& ps) {
    take_arenas(ps);
    grads_.zero(s());
  }
  // The arenas (and moments) to the host arenas, where the checkpoint writer and the host's figures
  // read them: through the pinned snapshot (cuda::StagedDownload, runtime/staged_copy.hpp's slices).
  void to_host(ParamStore& ps, AdamW* opt) {
    if (host_newer_) return;
    if (sched) sched->synchronize();
    const size_t n = ps.total();
    traffic.snapshot(snapshot_, values_.data(), ps.values().data(), n, s());
    traffic.snapshot(snapshot_, grads_.data(), ps.grads().data(), n, s());
    if (opt && moments_here_) {
      traffic.snapshot(snapshot_, m_.data(), opt->m().data(), n, s());
      traffic.snapshot(snapshot_, v_.data(), opt->v().data(), n, s());
    }
  }
  void from_host(ParamStore&) {
    host_newer_ = true;
    moments_here_ = false;
  }

  // Host↔device bytes the backend moved (every copy it makes goes through here; the step's own
  // uploads of tokens and downloads of probabilities too): bench/gpu/device-kit reads them.
  struct Traffic {
    size_t up_bytes = 0, down_bytes = 0;
    template <class T>
    void up(T* dev, const T* host, size_t n, cudaStream_t st) {
      if (n) UOE_CHECK_CUDA(cudaMemcpyAsync(dev, host, n * sizeof(T), cudaMemcpyHostToDevice, st));
      up_bytes += n * sizeof(T);
    }
    template <class T>
    void down(const T* dev, T* host, size_t n, cudaStream_t st) {
      if (n) UOE_CHECK_CUDA(cudaMemcpyAsync(host, dev, n * sizeof(T), cudaMemcpyDeviceToHost, st));
      down_bytes += n * sizeof(T);
    }
    template <class T>
    void snapshot(cuda::StagedDownload& via, const T* dev, T* host, size_t n, cudaStream_t st) {
      via.copy(host, dev, n, st);
      down_bytes += n * sizeof(T);
    }
  } traffic;

 private:
  static int set_device(int device) {
    int count = 0;
    UOE_CHECK_CUDA(cudaGetDeviceCount(&count));
    if (count <= 0) fail("--device cuda: no GPU found on this node");
    if (device < 0 || device >= count) fail("--device cuda: GPU ", device, " requested, this node has ", count);
    UOE_CHECK_CUDA(cudaSetDevice(device));
    return device;
  }
  // The host's GradientSync over the device arena and the device communicators: packing through a
  // device buffer and device-to-device copies on the compute stream, which the host waits for before
  // each collective (NCCL runs on its own stream; a collective returns with its result in place).
  GradientSync& device_sync(GradientSync& sync, ParamStore& ps) {
    if (sync_ && sync_of_ == &sync) return *sync_;
    const int world = sync.world().size();
    if (!grad_world_)
      fail("--device cuda: the gradient all-reduce over ", world, " ranks needs a communicator over device memory "
           "(CudaStepOptions::grad_world, built by make_step)");
    if (grad_world_->size() != world)
      fail("--device cuda: the gradient communicator has ", grad_world_->size(), " ranks, the world ", world);
    const bool dp_used = sync.ep_group().size() > 1 && sync.dp_group().size() > 1;
    if (dp_used && (!grad_dp_ || grad_dp_->size() != sync.dp_group().size()))
      fail("--device cuda: the expert gradients' all-reduce over the ", sync.dp_group().size(),
           " data-parallel replicas needs a device communicator of that size (CudaStepOptions::grad_dp)");
    GradientMemory memory;
    memory.buffer = [this](size_t n) {
      pack_.resize(n);  // grow-only
      return pack_.data();
    };
    memory.copy = [this](float* dst, const float* src, size_t n) {
      if (n) UOE_CHECK_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, s()));
    };
    memory.fence = [this] { synchronize(); };
    sync_ = std::make_unique<GradientSync>(
        sync.rebased(ps.grads().data(), grads_.data(), grad_world_, dp_used ? grad_dp_ : nullptr, std::move(memory)));
    sync_of_ = &sync;
    return *sync_;
  }
  void take_arenas(ParamStore& ps) {
    if (!host_newer_) return;
    const size_t n = ps.total();
    values_.resize(n);
    grads_.resize(n);
    traffic.up(values_.data(), ps.values().data(), n, s());
    traffic.up(grads_.data(), ps.grads().data(), n, s());
    synchronize();
    host_newer_ = false;
    sync_.reset();  // the arena may have moved
  }

  int device_;
  Communicator* grad_world_;  // the gradient all-reduce over device memory (several ranks)
  Communicator* grad_dp_;

 public:
  cuda::Stream stream;
  cuda::Blas blas{stream.get()};

 private:
  std::unique_ptr<StreamScheduler> sched;  // null while every expert is on this rank (nothing travels)
  Buffer<float> values_, grads_, m_, v_, decay_, ln_scratch, row_loss, pack_;
  cuda::StagedDownload snapshot_;  // to_host's pinned slices
  std::unique_ptr<GradientSync> sync_;  // the host's GradientSync over the device arena
  const GradientSync* sync_of_ = nullptr;
  Buffer<double> sum_out, sum_shares;
  bool host_newer_ = true;     // the host arenas are to be taken at the next use
  bool moments_here_ = false;  // m_, v_, decay_ hold AdamW's state
  Buffer<int32_t> targets_;
  Buffer<float> dgate_;  // [P, k] the gate gradients of the block in backward
  Buffer<int> all_rows;  // {0, N}: the output bias as one "expert" over every token
  Buffer<double> loss_sum;
  Buffer<double> figures_, fig_aux_;  // [slots, size] the step's figures; [1] a micro-batch's router losses
  size_t figure_size_ = 0;
  double* slot_of(int slot) { return figures_.data() + static_cast<size_t>(slot) * figure_size_; }
  int all_rows_n = -1;
  cuda::ScatterPlan embed_plan;
};

template class Step<CudaBackend>;

std::unique_ptr<ModelStep> make_cuda_step(Model& model, const CudaStepOptions& o) {
  auto step = std::make_unique<Step<CudaBackend>>(model, o.rows_exchange, o.device, o.nccl, o.comm_stream, o.grad_world,
                                                    o.grad_dp);
  step->set_chunks(o.chunks);
  step->set_recompute(o.recompute);
  return step;
}

CudaTransferBytes cuda_step_transfer_bytes(const ModelStep& step) {
  const auto* s = dynamic_cast<const Step<CudaBackend>*>(&step);
  UOE_ASSERT(s != nullptr, "cuda_step_transfer_bytes: not a CUDA step");
  const CudaBackend::Traffic& t = const_cast<Step<CudaBackend>*>(s)->backend().traffic;
  return {t.up_bytes, t.down_bytes};
}

}  // namespace uoe
