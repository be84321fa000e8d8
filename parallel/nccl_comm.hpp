// NCCL implementation of the Communicator interface (parallel/comm.hpp) for the GPU path: the same
// typed-span collectives, counts in ELEMENTS of the span's type, but every span points to DEVICE
// memory (a host pointer is refused with an error naming the call). Host data — the per-peer row
// counts a step exchanges first — keeps travelling over an MpiCommunicator.
//
// Bootstrap over MPI: every rank of `parent` picks its GPU from its node-local rank (ProcessGroups'
// node_rank, parallel/comm.hpp), the ranks agree that all of them succeeded, rank 0 calls
// ncclGetUniqueId and MPI_Bcast's it, and all call ncclCommInitRankConfig.
//
// all_to_all_v is ncclSend/ncclRecv pairs inside ncclGroupStart/End (NCCL has no alltoallv); the
// PeerBlocks form packs the blocks into contiguous staging first (device-to-device copies) because
// NCCL matches a send with one receive of the same size. all_reduce_sum is ncclAllReduce(ncclSum),
// broadcast ncclBroadcast, barrier a one-element all-reduce.
//
// Completion: by default each call returns once its result is in the buffer (the Communicator
// contract; the host waits on an event of the communication stream). Inside a stream-ordered scope
// (stream_ordered(), used by the StreamScheduler) calls return once queued, requests complete at
// once, and ordering is the stream's: work queued after them on the communication stream, or on a
// stream that waits on its events, sees the results, and the host never waits.
//
// No hangs (docs/architecture.md, Contracts): the communicator is created non-blocking (NCCL ≥ 2.14), and every host
// wait polls ncclCommGetAsyncError and the stream's event against a deadline (timeout_seconds). An
// NCCL error or a missed deadline — a dead or stuck peer — aborts the communicator (ncclCommAbort,
// which also frees peers' pending operations to fail) and throws uoe::Error naming this rank, its
// GPU and the operation. Every NCCL call goes through UOE_CHECK_NCCL or the same check.
//
// Nothing here has run yet: no machine the project is built on has a GPU (docs/gpu.md).
#pragma once
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <memory>
#include <string>

#include "parallel/comm.hpp"
#include "parallel/exchange.hpp"
#include "runtime/cuda/memory.cuh"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 7, 0)
#error "uoe needs NCCL >= 2.7 (ncclSend/ncclRecv)"
#endif

namespace uoe {

// Throws uoe::Error naming the NCCL call, NCCL's message (and its last-error detail when the
// version has one), file:line and the world rank.
[[noreturn]] void nccl_fail(ncclResult_t code, const char* call, const char* file, int line);

#define UOE_CHECK_NCCL(call)                                                                     \
  do {                                                                                           \
    const ncclResult_t uoe_nccl_rc_ = (call);                                                    \
    if (uoe_nccl_rc_ != ncclSuccess) ::uoe::nccl_fail(uoe_nccl_rc_, #call, __FILE__, __LINE__);  \
  } while (0)

// DType → NCCL's datatype (every DType has one).
ncclDataType_t nccl_datatype(DType t);
// NCCL's unique id, created by rank 0 of `comm` and broadcast to every rank over MPI (a rank-0
// failure is reported on every rank). Collective over `comm`.
ncclUniqueId nccl_unique_id_over_mpi(MPI_Comm comm, int rank, const char* who);

// Also the expert exchange's bf16 staging for rows in device memory (RowNarrowing,
// parallel/exchange.hpp): device buffers, conversions on the communication stream.
class NcclCommunicator final : public Communicator, public RowNarrowing {
 public:
  // Collective over `parent` (duplicated; the caller keeps it). Selects and sets this rank's GPU
  // (gpu_choose, runtime/gpu_binding.hpp: device node.rank, or device 0 where each rank of the node
  // has its own CUDA_VISIBLE_DEVICES; node is ProcessGroups' node_rank, node_size and
  // node_visible_devices, the world's ranks on this node, so ranks of different groups on one node
  // never share a GPU), creates the
  // communication stream, and initialises NCCL; throws on every rank if any rank fails.
  NcclCommunicator(MPI_Comm parent, NodeRanks node, double timeout_seconds = 300.0);
  // The same with node_ranks(parent): right where parent holds every rank of its nodes (the world).
  explicit NcclCommunicator(MPI_Comm parent, double timeout_seconds = 300.0);
  // Aborts the NCCL communicator if close() was not called (abort is local and safe mid-error;
  // a collective teardown could hang behind a failed peer).
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // Flushes and frees the communicator (collective; ncclCommFinalize + ncclCommDestroy). Call it
  // before MPI_Finalize; later calls are no-ops.
  void close();
  // Ends every pending operation of this communicator with an error (local); later calls throw.
  void abort(const std::string& why);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int device() const { return device_; }
  int local_rank() const { return local_rank_; }
  cudaStream_t stream() const { return stream_->get(); }
  void barrier() override;

  // While the returned guard lives, calls return once queued (see above). Not nestable.
  class StreamOrdered {
   public:
    explicit StreamOrdered(NcclCommunicator& c) : c_(&c) { c_->stream_ordered_ = true; }
    ~StreamOrdered() { c_->stream_ordered_ = false; }
    StreamOrdered(const StreamOrdered&) = delete;
    StreamOrdered& operator=(const StreamOrdered&) = delete;

   private:
    NcclCommunicator* c_;
  };
  [[nodiscard]] StreamOrdered stream_ordered() { return StreamOrdered(*this); }

  // Host-waits for everything queued so far on the communication stream, under the watchdog.
  void synchronize(const char* what);

  // RowNarrowing: staging in device memory; narrow and widen are queued on the communication
  // stream (widen completes as a transfer does: at once in stream-ordered mode, else host-waited).
  uint16_t* narrow_send_buffer(size_t n) override;
  uint16_t* narrow_recv_buffer(size_t n) override;
  void narrow(uint16_t* out, const float* in, size_t n) override;
  void widen(float* out, const uint16_t* in, size_t n) override;

 protected:
  void do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r, DType t) override;
  Request do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) override;
  void do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                            DType t) override;
  // Matched blocks need no staging: one ncclSend/ncclRecv per non-empty block inside one group
  // (NCCL matches a pair's operations in the order they are queued, as MPI does).
  void do_all_to_all_matched(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                             DType t) override;
  void do_all_to_all(const void* send, void* recv, int count, DType t) override;
  void do_all_reduce_sum(void* data, int count, DType t) override;
  Request do_iallreduce_sum(void* data, int count, DType t) override;
  void do_broadcast(void* data, int count, DType t, int root) override;

 private:
  friend class NcclPending;
  void init(MPI_Comm parent, NodeRanks node);  // the constructor's work (the constructor cleans up if it throws)
  // Accepts ncclSuccess and (non-blocking communicators) ncclInProgress, then waits for the
  // communicator to be ready; anything else aborts and throws.
  void check(ncclResult_t rc, const char* call, const char* file, int line);
  void wait_ready(const char* what);
  // Host wait for an event of the communication stream, polling NCCL's async error and the deadline.
  void wait_event(cuda::Event& ev, const char* what);
  // Finishes a queued operation: nothing in stream-ordered mode, else a watched host wait.
  void complete(const char* what);
  void require_live(const char* what) const;
  void require_device_memory(const void* p, const char* what) const;
  void send_recv(const char* send, const int* send_counts, const int* send_displs, char* recv,
                 const int* recv_counts, const int* recv_displs, DType t);
  [[noreturn]] void fail_and_abort(const std::string& why);

  MPI_Comm mpi_ = MPI_COMM_NULL;
  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 0, local_rank_ = 0, device_ = -1;
  double timeout_ = 300.0;
  bool stream_ordered_ = false;
  std::string aborted_;  // why the communicator was aborted ("" while live)
  std::unique_ptr<cuda::Stream> stream_;       // created on this rank's device
  std::unique_ptr<cuda::Event> done_;          // host waits for blocking calls
  cuda::DeviceBuffer<unsigned char> send_stage_, recv_stage_;  // PeerBlocks packing
  cuda::DeviceBuffer<int> barrier_word_;
  cuda::DeviceBuffer<uint16_t> narrow_send_, narrow_recv_;  // bf16 rows (RowNarrowing)
};

}  // namespace uoe
