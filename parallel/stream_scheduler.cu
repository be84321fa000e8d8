// StreamScheduler (parallel/stream_scheduler.hpp). Compiled only; see docs/gpu.md.
#include "parallel/nccl_comm.hpp"
#include "parallel/stream_scheduler.hpp"
#include "runtime/cuda/check.cuh"

namespace uoe {

StreamScheduler::StreamScheduler(cudaStream_t compute, cudaStream_t comm, NcclCommunicator* nccl)
    : compute_(compute), comm_(comm), nccl_(nccl) {
  UOE_ASSERT(compute != comm, "the StreamScheduler needs two different streams to overlap anything");
}

cuda::Event& StreamScheduler::take_event() {
  if (used_ == pool_.size()) pool_.push_back(std::make_unique<cuda::Event>(/*timing=*/true));
  return *pool_[used_++];
}

StreamScheduler::Ticket StreamScheduler::submit(const std::function<void(cudaStream_t)>& fn) {
  // The exchange reads what the compute stream has queued so far (e.g. the chunk's gathered rows,
  // or its expert outputs): order it after that work.
  cuda::Event& ready = take_event();
  ready.record(compute_);
  ready.wait_in(comm_);
  cuda::Event& start = take_event();
  cuda::Event& end = take_event();
  start.record(comm_);
  if (nccl_) {
    auto scope = nccl_->stream_ordered();
    fn(comm_);
  } else {
    fn(comm_);
  }
  end.record(comm_);
  spans_.emplace_back(&start, &end);
  return ++submitted_;
}

void StreamScheduler::wait(Ticket t) {
  UOE_ASSERT(t >= 1 && t <= submitted_, "wait for ticket ", t, " of ", submitted_);
  if (t <= waited_) return;  // stream order already covers it
  cuda::Event& before = take_event();
  cuda::Event& after = take_event();
  before.record(compute_);
  spans_[t - 1].second->wait_in(compute_);
  after.record(compute_);
  stalls_.emplace_back(&before, &after);
  waited_ = t;
}

void StreamScheduler::wait_all() {
  if (submitted_ > 0) wait(submitted_);
}

void StreamScheduler::synchronize() {
  if (nccl_) nccl_->synchronize("StreamScheduler::synchronize (communication stream)");
  else UOE_CHECK_CUDA(cudaStreamSynchronize(comm_));
  UOE_CHECK_CUDA(cudaStreamSynchronize(compute_));
  for (const auto& [s, e] : spans_) busy_ += e->ms_since(*s) * 1e-3;
  for (const auto& [b, a] : stalls_) exposed_ += a->ms_since(*b) * 1e-3;
  spans_.clear();
  stalls_.clear();
  used_ = 0;
  submitted_ = waited_ = 0;
}

}  // namespace uoe
