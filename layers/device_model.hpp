// The training step on a GPU (--device cuda): the forward and backward pass of a host Model computed
// on this rank's GPU with the CUDA twins of the CPU kernels (runtime/cuda/*.cuh), cuBLAS for every
// GEMM and the grouped/strided expert GEMMs.
//
// The host Model stays the master copy of the training state: its ParamStore holds the parameters
// that AdamW updates, that GradientSync all-reduces over MPI and that checkpoints save and resume,
// so all of that runs unchanged (and tested) with --device cuda. Each forward_backward uploads the
// parameter and gradient arenas, computes on the GPU (the gradients continuing from the host's, so
// micro-batches accumulate in the CPU model's order), and copies the gradients back — "optimizer on
// the host" in the manner of ZeRO-offload, chosen because it reuses the tested optimizer, all-reduce
// and checkpoint code; the cost is three arena copies over PCIe per micro-batch.
//
// The step itself is layers/device_step.hpp's DeviceStep over the CUDA backend; its CPU tests run the
// same orchestration over CPU kernels and match the CPU Model bit for bit (test_device_step.cpp).
//
// Routing runs on the host with the CPU router (layers/router.cpp): each routed block copies its
// normalised input [N, d] to the host, routes, and uploads the row tables; in backward the gate
// gradients (one float per row) come back and the router's input gradient [N, d] goes up. These are
// the step's host synchronisations besides the two arena copies. Row bookkeeping (source rows,
// combine order) is layers/model.hpp's shared code, so the GPU combines in the CPU's order.
//
// Expert parallelism: with --ep > 1 the routed rows travel GPU to GPU over NCCL (an MpiExchange
// whose payload communicator is an NcclCommunicator; counts and row metadata over MPI from the
// host, as on the CPU path), scheduled by the StreamScheduler (parallel/stream_scheduler.hpp): rows
// move on the NCCL stream while the compute stream runs the experts, chunk by chunk with
// --overlap-chunks (the CPU path's pipeline), ordered by events; the host waits for the exchanges
// only at the end of the step. Per routed block the host still synchronises for routing (the
// normalised input down, the gate gradients down) and exchanges every chunk's counts over MPI.
// STATUS: compiled, never run — no machine this project is built on has a GPU. See docs/gpu.md.
// Host-only declarations (no CUDA headers): launcher/train.cpp includes this with g++.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "layers/model.hpp"

namespace uoe {

class MpiCommunicator;

class DeviceModel {
 public:
  // `host` must outlive this. Picks the GPU node-local MPI rank mod the number of GPUs. With
  // expert parallelism (the host's exchange is not the identity) `ep_group` is the expert-parallel
  // group: counts and row metadata travel over it (MPI), the rows over an NCCL communicator built
  // on it (collective over the group; one GPU per rank).
  // `chunks`: Model::set_schedule's chunk count (the same rows and sums as the CPU path at that count).
  DeviceModel(Model& host, MpiCommunicator* ep_group, int chunks = 1);
  ~DeviceModel();
  DeviceModel(const DeviceModel&) = delete;
  DeviceModel& operator=(const DeviceModel&) = delete;

  // Model::forward_backward's contract, computed on the GPU: adds the gradient of
  // loss_scale · (mean CE + router losses) into host.params().grads().
  void forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale, ForwardStats* stats);
  // Model::forward_eval's contract (dropless; ce_sum and tokens in stats).
  void forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats);
  // As Model::set_backward_hook: called for every block (last first), then with −1, once the
  // gradients of the call are in the host arena.
  void set_backward_hook(std::function<void(int block)> hook);
  // Seconds the expert exchanges ran on the communication stream (busy) and the compute stream
  // stalled waiting for them (exposed) since the last call; zero without expert parallelism.
  void take_exchange_seconds(double* busy, double* exposed);
  // Block b's routing of the last forward pass.
  const Routing& routing(int b) const;
  // "GPU 0 of 8: NVIDIA H200 (sm_90)" — for the start-up log.
  std::string describe() const;
  // Frees the NCCL communicator, if any (collective over the expert-parallel group): call at the
  // end of a run, before the MPI groups are freed. Without it the destructor aborts NCCL (local).
  void close();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace uoe
