// The communication scheduler of parallel/scheduler.hpp, mapped to CUDA streams: the GPU path's
// chunked dispatch / expert GEMM / combine pipeline. Same interface and meaning, one object per
// rank:
//
//   CommScheduler (CPU)                        StreamScheduler (GPU)
//   ------------------------------------------ ---------------------------------------------------
//   communication thread, FIFO task queue      communication stream (FIFO by construction)
//   submit(fn): queue fn for the thread        submit(fn): comm stream waits for an event of the
//                                              compute stream (the exchange's input was produced
//                                              there), fn(comm) queues NCCL calls, an event marks
//                                              the end
//   wait(t): compute thread blocks until t ran cudaStreamWaitEvent(compute, end of t): the DEVICE
//                                              waits; the host goes on queuing
//   wait_all()                                 the compute stream waits for the last ticket
//   busy / exposed seconds                     from timing events, read at synchronize():
//                                              busy = Σ exchange spans on the comm stream;
//                                              exposed = Σ spans the compute stream stalled in
//                                              wait() (events recorded just before and after it)
//
// The step's schedule then maps one to one (layers/step.hpp's block_forward, over the CUDA backend's
// submit / wait): for each chunk c,
// dispatch(c + 1) is submitted before chunk c's GEMMs are queued on the compute stream, and each
// chunk's return is submitted right after its GEMMs, so on the device chunk c's expert GEMMs overlap
// chunk c+1's dispatch and chunk c−1's return:
//
//   comm    | dispatch 0 | dispatch 1 | return 0 | dispatch 2 | return 1 | …
//   compute |            | GEMMs 0    | GEMMs 1             | GEMMs 2  | …
//                 ↑ wait(d0)    ↑ wait(d1)        each return waits for its GEMMs' event
//
// Every rank submits the same collectives in the same order (program order), which is what NCCL
// needs to match them; nothing waits on the host inside a step except the per-chunk count exchange
// (over MPI) that sizes the receive buffers, and synchronize() at the end of the step (the device
// step itself also synchronises for its host-side routing: layers/step_cuda.hpp). Exchanges run
// inside the NcclCommunicator's stream-ordered scope, so its calls return once queued.
//
// Failure: an NCCL call that fails while queuing throws from submit() (the communicator is aborted);
// a failure or a dead peer during the transfer is caught by the communicator's watchdog in
// synchronize().
//
// Compiled only; nothing here has run on a GPU (docs/gpu.md).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "runtime/cuda/memory.cuh"

namespace uoe {

class NcclCommunicator;

class StreamScheduler {
 public:
  using Ticket = uint64_t;

  // compute: where GEMMs and kernels are queued; comm: the communication stream (normally
  // nccl->stream()). nccl may be null (single rank, or exchanges that are plain copies): then no
  // stream-ordered scope is opened and synchronize() waits without a watchdog.
  StreamScheduler(cudaStream_t compute, cudaStream_t comm, NcclCommunicator* nccl);
  StreamScheduler(const StreamScheduler&) = delete;
  StreamScheduler& operator=(const StreamScheduler&) = delete;

  cudaStream_t compute_stream() const { return compute_; }
  cudaStream_t comm_stream() const { return comm_; }

  // Queues an exchange: fn(comm_stream) must only queue work (NCCL calls, copies) on that stream.
  Ticket submit(const std::function<void(cudaStream_t)>& fn);
  // The compute stream waits (on the device) until exchange t is complete. No host wait.
  void wait(Ticket t);
  void wait_all();

  // End of step: host-waits for both streams (under the communicator's watchdog when there is one)
  // and adds this step's busy/exposed times from the events; recycles the events.
  void synchronize();
  double busy_seconds() const { return busy_; }
  double exposed_seconds() const { return exposed_; }
  void reset_counters() {
    busy_ = 0;
    exposed_ = 0;
  }

 private:
  cuda::Event& take_event();  // a timing event from the pool

  cudaStream_t compute_, comm_;
  NcclCommunicator* nccl_;
  std::vector<std::unique_ptr<cuda::Event>> pool_;
  size_t used_ = 0;                                   // pool_[0, used_) are in use this step
  std::vector<std::pair<cuda::Event*, cuda::Event*>> spans_;  // [ticket − 1] exchange start, end
  std::vector<std::pair<cuda::Event*, cuda::Event*>> stalls_;  // compute-stream waits: before, after
  Ticket submitted_ = 0;
  Ticket waited_ = 0;  // the compute stream already waits for tickets ≤ waited_
  double busy_ = 0, exposed_ = 0;
};

}  // namespace uoe
