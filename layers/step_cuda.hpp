// The training step on a GPU (--device cuda): the one step (layers/step.hpp) over the CUDA backend
// (layers/step_cuda.cu) — the CUDA twins of the CPU kernels (runtime/cuda/*.cuh), cuBLAS for every
// GEMM and the grouped/strided expert GEMMs. The pipeline is the CPU path's, line for line; what
// differs is the backend's memory and two policies (layers/step.hpp): the parameter and gradient
// arenas and AdamW's moments live on the GPU (taken from the host once, given back by state_to_host
// for checkpoints and the host's figures), and every chunk's row metadata travels in one collective
// per block. Σ g², AdamW and, with several ranks, the bucketed gradient all-reduce run on the device
// (the all-reduce over communicators on device memory, NCCL: the host GradientSync's buckets, order
// and collectives, rebased onto the device arena; docs/gpu.md).
//
// Routing: decided on the GPU — scores x̄·W + b, softmax, top-k, capacity, gates, losses (the CPU
// router's bodies, layers/router_select.hpp), and the source rows laid out there too
// (layers/source_rows.hpp); the host receives the counts per expert, the kept patches per
// (sequence, expert) and three figures — no [P, E] array, no row table. In backward the gate gradients and the scores'
// gradients are formed on the GPU too; nothing of the router crosses.
//
// Expert parallelism: with --ep > 1 the routed rows travel GPU to GPU over NCCL (an MpiExchange
// whose payload communicator is an NcclCommunicator; counts and row metadata over MPI from the
// host), scheduled by the StreamScheduler (parallel/stream_scheduler.hpp): rows move on the NCCL
// stream while the compute stream runs the experts, chunk by chunk, ordered by events. The launcher
// builds those communicators (launcher/make_step.cpp); this layer only uses them.
// STATUS: compiled, never run — no machine this project is built on has a GPU. See docs/gpu.md.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "layers/step.hpp"

namespace uoe {

enum class GateMode : int;  // layers/router_select.hpp
class Communicator;
class NcclCommunicator;

struct CudaStepOptions {
  int device = 0;                         // the GPU (cudaSetDevice)
  ExpertExchange* rows_exchange = nullptr;  // ep > 1: moves rows in GPU memory; null: every expert here
  NcclCommunicator* nccl = nullptr;       // the exchange's payload communicator (its watchdog scope)
  cudaStream_t comm_stream = nullptr;     // and its stream: where the rows move
  // More than one rank: the gradient all-reduce's communicators over device memory (NCCL), over the
  // world and (ep > 1 with dp > 1) over this rank's data-parallel group — the GradientSync's groups.
  Communicator* grad_world = nullptr;
  Communicator* grad_dp = nullptr;
  int chunks = 1;                         // the step's chunk count (the CPU path's rows and sums at that count)
  Recompute recompute = Recompute::none;  // what blocks keep for backward (layers/memory.hpp)
};

// The step on GPU o.device for `model` (which must outlive it).
std::unique_ptr<ModelStep> make_cuda_step(Model& model, const CudaStepOptions& o);

// Host↔device bytes a CUDA step (a make_cuda_step result) moved so far, every copy it made counted
// (layers/step_cuda.cu, CudaBackend::Traffic).
struct CudaTransferBytes {
  size_t to_device = 0, to_host = 0;
};
CudaTransferBytes cuda_step_transfer_bytes(const ModelStep& step);

namespace cuda {
// The router's device parts: the twins of layers/router.hpp's CPU loops of the same names, element
// for element the same arithmetic (no contraction), on device pointers in stream order.
void router_patch_means(float* xm, const float* xn, int P, int ps, int d, cudaStream_t s);
void router_bias_rows(float* logits, const float* b, int P, int E, cudaStream_t s);
void router_bias_grad(float* db, const float* dlogits, int P, int E, cudaStream_t s);
void router_patch_means_backward(float* dxn, const float* dxm, int P, int ps, int d, cudaStream_t s);
// Capacity selection and row tables on the device (layers/router_select.hpp's bodies; twin: the CPU
// router_select, layers/router_select.hpp): from choice [P, k] and the softmaxed probs [P, E], kept [P, k],
// row_offsets [E + 1] (the counts that size the exchange: all the host needs), row_patch and
// row_slot [≤ P·k] — the same bits as the CPU router. capacity 0: dropless.
void router_select(uint8_t* kept, int* row_offsets, int* row_patch, int* row_slot, const int* choice,
                   const float* probs, int P, int E, int k, int capacity, cudaStream_t s);
// The decisions, twins of layers/router_select.hpp's CPU functions of the same names (loops over
// the same bodies): one thread per patch (decide, backward logits), per expert (chosen), per run of
// one gate slot's rows (gate gradients); the figures as parallel reductions in a fixed order (the same
// bits every run; the CPU twins' serial sums to double rounding).
// router_losses_and_figures: out [3] = balance, z-loss, entropy sum; experts_per_token [k + 1].
void router_decide_rows(float* probs, float* lse, int* choice, float* gate, int P, int E, int k, GateMode mode,
                        cudaStream_t s);
void router_chosen(int* chosen, const int* choice, int P, int E, int k, cudaStream_t s);
void router_losses_and_figures(double* out, int* experts_per_token, const float* probs, const float* lse,
                               const int* chosen, const uint8_t* kept, int P, int E, int k, int patch,
                               double aux_weight, double z_weight, cudaStream_t s);
void router_backward_logits_rows(float* dlogits, const float* probs, const float* lse, const int* choice,
                                 const uint8_t* kept, const float* dgate, const int* chosen, int P, int E, int k,
                                 GateMode mode, double aux_scale, double aux_weight, double z_weight, cudaStream_t s);
void router_gate_grads(float* dgate, const int32_t* slot, const float* rowdot, int i0, int n, cudaStream_t s);
void fill(float* x, float v, int n, cudaStream_t s);  // x[0, n) = v
// The source rows laid out on the device (layers/source_rows.hpp's bodies): twins of the CPU's
// source_rows_cells and source_rows_place (layers/model.hpp, the same names and arguments, less the
// stream), integer tables equal to theirs. identity_rows: an unrouted block's row tables (row i is
// patch i, slot 0), n rows.
void source_rows_cells(int* cells, const int* row_offsets, const int* row_patch, int S, int E, int ps, int T,
                       cudaStream_t s);
void source_rows_place(int32_t* token, int32_t* gate, int32_t* seg, int32_t* pos, int* first_src, int* first_route,
                       int* chunk_begin, int* chunk_offsets, const int* cells, const int* row_offsets,
                       const int* row_patch, const int* row_slot, int rows, int S, int E, int k, int ps, int T, int C,
                       cudaStream_t s);
void identity_rows(int* row_patch, int* row_slot, int n, cudaStream_t s);
// *out (device double) = Σ g² of g [n] (device), deterministic; shares: kSumShares doubles of
// workspace. Twin of runtime/sum_squares.hpp's grad_sum_squares: the same terms in another order,
// so equal to a relative 1e-12 (double rounding over ≤ 10⁹ positive terms), not bitwise.
inline constexpr int kSumShares = 64 * 256;
void grad_sum_squares(double* out, double* shares, const float* g, size_t n, cudaStream_t s);
// The step's log figures on the device (layers/step_figures.hpp's bodies, one thread each; twins:
// the CPU functions of the same names): step_figures_add_loss also zeroes the micro-batch's *aux.
void step_figures_add_loss(double* sums, const double* ce_sum, double tokens, double* aux, cudaStream_t s);
void step_figures_add_block(double* sums, double* aux, const double* figures, const int* experts_per_token,
                            const int* chosen, StepFigureBlock blk, cudaStream_t s);
void step_figures_add_aux(double* sums, const double* aux, cudaStream_t s);
}  // namespace cuda

}  // namespace uoe
