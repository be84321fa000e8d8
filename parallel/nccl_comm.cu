// NCCL communicator (parallel/nccl_comm.hpp). Compiled only; see docs/gpu.md.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "parallel/nccl_comm.hpp"
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/kernels.cuh"
#include "runtime/gpu_binding.hpp"

namespace uoe {

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
#define UOE_NCCL_NONBLOCKING 1  // ncclCommInitRankConfig(blocking = 0), ncclCommFinalize
#else
#define UOE_NCCL_NONBLOCKING 0
#endif

void nccl_fail(ncclResult_t code, const char* call, const char* file, int line) {
  std::string detail;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 13, 0)
  if (const char* last = ncclGetLastError(nullptr); last && *last) detail = std::string(" (") + last + ")";
#endif
  fail(call, " failed on rank ", process_rank(), " at ", file, ":", line, ": ", ncclGetErrorString(code), detail);
}

// parallel/mpi_version.cpp's NCCL half (its GPU build): the library this process loaded, no GPU needed.
std::string nccl_library_version() {
  int code = 0;
  if (ncclGetVersion(&code) != ncclSuccess) return "";
  // NCCL's code is major·10000 + minor·100 + patch since 2.9 (major·1000 + … before).
  const int major = code >= 10000 ? code / 10000 : code / 1000;
  const int minor = code >= 10000 ? code % 10000 / 100 : code % 1000 / 100;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(code % 100);
}

ncclDataType_t nccl_datatype(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u64: return ncclUint64;
    case DType::u8: return ncclUint8;
    case DType::u16: return ncclBfloat16;  // bf16 rows: moved, never reduced
  }
  UOE_ASSERT(false, "unknown DType ", static_cast<int>(t));
}

ncclUniqueId nccl_unique_id_over_mpi(MPI_Comm comm, int rank, const char* who) {
  struct {
    int ok;
    ncclUniqueId id;
  } boot{};
  if (rank == 0) boot.ok = ncclGetUniqueId(&boot.id) == ncclSuccess ? 1 : 0;
  // The id is an opaque blob: MPI_BYTE is the honest type for it.
  UOE_CHECK_MPI(MPI_Bcast(&boot, static_cast<int>(sizeof boot), MPI_BYTE, 0, comm));
  if (!boot.ok) fail(who, " on rank ", rank, ": ncclGetUniqueId failed on rank 0");
  return boot.id;
}

namespace {
using Clock = std::chrono::steady_clock;

// The communicator's checks, with the call's text and site (aborts the communicator on error).
#define UOE_NCCL_QUEUE(call) check((call), #call, __FILE__, __LINE__)

// Every rank learns whether all ranks got past a local step; a failed rank throws its own
// message, the others name the lowest failed rank. Keeps a local failure from becoming a hang in
// the next collective.
void agree_or_throw(MPI_Comm comm, int rank, const std::string& local_error, const char* step) {
  int first_failed = local_error.empty() ? INT_MAX : rank;
  UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &first_failed, 1, MPI_INT, MPI_MIN, comm));
  if (!local_error.empty()) fail("NcclCommunicator on rank ", rank, ": ", step, ": ", local_error);
  if (first_failed != INT_MAX)
    fail("NcclCommunicator on rank ", rank, ": ", step, " failed on rank ", first_failed, " (see its message)");
}
}  // namespace

// ---- set-up and teardown ----------------------------------------------------------------------

NcclCommunicator::NcclCommunicator(MPI_Comm parent, double timeout_seconds)
    : NcclCommunicator(parent, node_ranks(parent), timeout_seconds) {}

NcclCommunicator::NcclCommunicator(MPI_Comm parent, NodeRanks node, double timeout_seconds)
    : timeout_(timeout_seconds) {
  try {
    init(parent, node);
  } catch (...) {
    // A constructor that throws runs no destructor: release what init got this far.
    if (comm_) (void)ncclCommAbort(comm_);
    comm_ = nullptr;
    if (mpi_ != MPI_COMM_NULL && mpi_active()) MPI_Comm_free(&mpi_);
    throw;
  }
}

void NcclCommunicator::init(MPI_Comm parent, NodeRanks node) {
  UOE_CHECK_MPI(MPI_Comm_dup(parent, &mpi_));
  UOE_CHECK_MPI(MPI_Comm_set_errhandler(mpi_, MPI_ERRORS_RETURN));
  UOE_CHECK_MPI(MPI_Comm_rank(mpi_, &rank_));
  UOE_CHECK_MPI(MPI_Comm_size(mpi_, &size_));

  // 1. This rank's GPU (gpu_choose, runtime/gpu_binding.hpp): device node.rank when the node's
  //    ranks share its GPUs, device 0 when each rank was given its own (CUDA_VISIBLE_DEVICES per
  //    rank); two ranks on one GPU (NCCL refuses them) are refused here rather than inside init.
  local_rank_ = node.rank;
  std::string err;
  int count = 0;
  if (const cudaError_t rc = cudaGetDeviceCount(&count); rc != cudaSuccess) {
    err = std::string("no usable GPU: ") + cudaGetErrorString(rc);
  } else {
    const GpuChoice choice = gpu_choose(count, node.rank, node.size, node.visible_devices);
    if (choice.device < 0) {
      err = choice.error;
    } else {
      device_ = choice.device;
      if (const cudaError_t rc = cudaSetDevice(device_); rc != cudaSuccess)
        err = "cudaSetDevice(" + std::to_string(device_) + "): " + cudaGetErrorString(rc);
    }
  }
  agree_or_throw(mpi_, rank_, err, "selecting a GPU");
  stream_ = std::make_unique<cuda::Stream>();
  done_ = std::make_unique<cuda::Event>();
  barrier_word_.resize(1);

  // 2. The unique id: rank 0 creates it, everyone receives it with rank 0's status.
  const ncclUniqueId id = nccl_unique_id_over_mpi(mpi_, rank_, "NcclCommunicator");

  // 3. The communicator, watched: a rank that never arrives ends init at the deadline.
#if UOE_NCCL_NONBLOCKING
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  UOE_NCCL_QUEUE(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config));
#else
  UOE_NCCL_QUEUE(ncclCommInitRank(&comm_, size_, id, rank_));
#endif
  wait_ready("ncclCommInitRank");
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_) (void)ncclCommAbort(comm_);
  if (mpi_ != MPI_COMM_NULL && mpi_active()) MPI_Comm_free(&mpi_);
}

void NcclCommunicator::close() {
  if (comm_) {
#if UOE_NCCL_NONBLOCKING
    UOE_NCCL_QUEUE(ncclCommFinalize(comm_));
    wait_ready("ncclCommFinalize");
#else
    synchronize("close");
#endif
    UOE_CHECK_NCCL(ncclCommDestroy(comm_));
    comm_ = nullptr;
  }
  if (mpi_ != MPI_COMM_NULL && mpi_active()) UOE_CHECK_MPI(MPI_Comm_free(&mpi_));
  mpi_ = MPI_COMM_NULL;
}

void NcclCommunicator::abort(const std::string& why) {
  if (comm_) (void)ncclCommAbort(comm_);
  comm_ = nullptr;
  if (aborted_.empty()) aborted_ = why;
}

void NcclCommunicator::fail_and_abort(const std::string& why) {
  abort(why);
  fail(why);
}

// ---- checks and waits ---------------------------------------------------------------------------

void NcclCommunicator::check(ncclResult_t rc, const char* call, const char* file, int line) {
  if (rc == ncclSuccess || rc == ncclInProgress) return;
  const std::string detail = comm_ ? std::string(ncclGetErrorString(rc)) : std::string("no communicator");
  fail_and_abort(std::string(call) + " failed on rank " + std::to_string(rank_) + " (GPU " + std::to_string(device_) +
                 ") at " + file + ":" + std::to_string(line) + ": " + detail + "; communicator aborted");
}

void NcclCommunicator::wait_ready(const char* what) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_);
  for (;;) {
    ncclResult_t state = ncclSuccess;
    UOE_CHECK_NCCL(ncclCommGetAsyncError(comm_, &state));
    if (state == ncclSuccess) return;
    if (state != ncclInProgress)
      fail_and_abort(std::string(what) + " failed on rank " + std::to_string(rank_) + " (GPU " +
                     std::to_string(device_) + "): " + ncclGetErrorString(state) + "; communicator aborted");
    if (Clock::now() > deadline)
      fail_and_abort(std::string(what) + " on rank " + std::to_string(rank_) + " did not complete within " +
                     std::to_string(timeout_) + " s (a peer is dead or stuck); communicator aborted");
    std::this_thread::yield();
  }
}

void NcclCommunicator::wait_event(cuda::Event& ev, const char* what) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_);
  for (;;) {
    const cudaError_t q = cudaEventQuery(ev.get());
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) {
      abort(std::string(what) + ": CUDA error");
      UOE_CHECK_CUDA(q);
    }
    ncclResult_t state = ncclSuccess;
    UOE_CHECK_NCCL(ncclCommGetAsyncError(comm_, &state));
    if (state != ncclSuccess && state != ncclInProgress)
      fail_and_abort(std::string(what) + " failed on rank " + std::to_string(rank_) + " (GPU " +
                     std::to_string(device_) + "): " + ncclGetErrorString(state) + "; communicator aborted");
    if (Clock::now() > deadline)
      fail_and_abort(std::string(what) + " on rank " + std::to_string(rank_) + " (GPU " + std::to_string(device_) +
                     ") did not complete within " + std::to_string(timeout_) +
                     " s (a peer is dead or stuck, or counts do not match); communicator aborted");
    std::this_thread::yield();
  }
}

void NcclCommunicator::synchronize(const char* what) {
  require_live(what);
  done_->record(stream());
  wait_event(*done_, what);
}

uint16_t* NcclCommunicator::narrow_send_buffer(size_t n) {
  narrow_send_.resize(std::max<size_t>(n, 1));
  return narrow_send_.data();
}
uint16_t* NcclCommunicator::narrow_recv_buffer(size_t n) {
  narrow_recv_.resize(std::max<size_t>(n, 1));
  return narrow_recv_.data();
}
void NcclCommunicator::narrow(uint16_t* out, const float* in, size_t n) {
  require_live("bf16 rows (narrow)");
  cuda::bf16_pack(out, in, static_cast<int64_t>(n), stream());
}
void NcclCommunicator::widen(float* out, const uint16_t* in, size_t n) {
  require_live("bf16 rows (widen)");
  cuda::bf16_unpack(out, in, static_cast<int64_t>(n), stream());
  if (!stream_ordered_) synchronize("bf16 rows (widen)");
}

void NcclCommunicator::complete(const char* what) {
#if UOE_NCCL_NONBLOCKING
  wait_ready(what);  // the group's enqueue itself may still be in progress
#endif
  if (!stream_ordered_) synchronize(what);
}

void NcclCommunicator::require_live(const char* what) const {
  if (!aborted_.empty()) fail(what, " on rank ", rank_, ": the NCCL communicator was aborted earlier: ", aborted_);
  UOE_ASSERT(comm_ != nullptr, what, " on a closed NcclCommunicator");
}

void NcclCommunicator::require_device_memory(const void* p, const char* what) const {
  if (!p) return;  // an empty span
  cudaPointerAttributes a{};
  UOE_CHECK_CUDA(cudaPointerGetAttributes(&a, p));
  if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged)
    fail("NcclCommunicator::", what, " on rank ", rank_, " got a host pointer: NCCL moves device buffers "
         "(host data such as row counts goes over the MpiCommunicator)");
}

// ---- collectives ----------------------------------------------------------------------------------

class NcclPending final : public Request::Pending {
 public:
  NcclPending(NcclCommunicator& c, const char* what) : c_(c), what_(what), ev_() { ev_.record(c.stream()); }
  void wait() override { c_.wait_event(ev_, what_); }

 private:
  NcclCommunicator& c_;
  const char* what_;
  cuda::Event ev_;
};

void NcclCommunicator::send_recv(const char* send, const int* send_counts, const int* send_displs, char* recv,
                                 const int* recv_counts, const int* recv_displs, DType t) {
  const size_t es = dtype_size(t);
  const ncclDataType_t nt = nccl_datatype(t);
  // Zero counts post nothing: the contract makes both sides of a pair agree on the count, so an
  // empty pair is empty on both ends.
  UOE_NCCL_QUEUE(ncclGroupStart());
  for (int p = 0; p < size_; ++p) {
    if (send_counts[p] > 0)
      UOE_NCCL_QUEUE(ncclSend(send + static_cast<size_t>(send_displs[p]) * es, static_cast<size_t>(send_counts[p]), nt,
                              p, comm_, stream()));
    if (recv_counts[p] > 0)
      UOE_NCCL_QUEUE(ncclRecv(recv + static_cast<size_t>(recv_displs[p]) * es, static_cast<size_t>(recv_counts[p]), nt,
                              p, comm_, stream()));
  }
  UOE_NCCL_QUEUE(ncclGroupEnd());
}

void NcclCommunicator::do_all_to_all_v(const void* send, const Displaced& s, void* recv, const Displaced& r, DType t) {
  require_live("all_to_all_v");
  require_device_memory(send, "all_to_all_v (send)");
  require_device_memory(recv, "all_to_all_v (recv)");
  send_recv(static_cast<const char*>(send), s.counts.data(), s.displs.data(), static_cast<char*>(recv),
            r.counts.data(), r.displs.data(), t);
  complete("all_to_all_v");
}

Request NcclCommunicator::do_ialltoallv(const void* send, Displaced s, void* recv, Displaced r, DType t) {
  require_live("ialltoallv");
  require_device_memory(send, "ialltoallv (send)");
  require_device_memory(recv, "ialltoallv (recv)");
  // NCCL reads the counts while queuing, so the request needs to keep nothing but an event.
  send_recv(static_cast<const char*>(send), s.counts.data(), s.displs.data(), static_cast<char*>(recv),
            r.counts.data(), r.displs.data(), t);
#if UOE_NCCL_NONBLOCKING
  wait_ready("ialltoallv");
#endif
  if (stream_ordered_) return Request();
  return Request(std::make_unique<NcclPending>(*this, "ialltoallv"));
}

void NcclCommunicator::do_all_to_all_blocks(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                                            DType t) {
  require_live("all_to_all_v (blocks)");
  require_device_memory(send, "all_to_all_v (blocks, send)");
  require_device_memory(recv, "all_to_all_v (blocks, recv)");
  const size_t es = dtype_size(t);
  // Per-peer totals and packed displacements on both sides.
  auto packed = [&](const PeerBlocks& l, std::vector<int>& counts, std::vector<int>& displs) {
    counts.assign(size_, 0);
    displs.assign(size_, 0);
    int64_t at = 0;
    for (int p = 0; p < size_; ++p) {
      displs[p] = static_cast<int>(at);
      for (int b = l.first[p]; b < l.first[p + 1]; ++b) counts[p] += l.count[b];
      at += counts[p];
      UOE_ASSERT(at <= INT_MAX, "all-to-all staging exceeds int displacements");
    }
    return static_cast<size_t>(at);
  };
  std::vector<int> sc, sd, rc, rd;
  const size_t send_total = packed(s, sc, sd), recv_total = packed(r, rc, rd);
  send_stage_.resize(std::max<size_t>(send_total * es, 1));
  recv_stage_.resize(std::max<size_t>(recv_total * es, 1));
  // Pack: blocks in peer order, back to back (device-to-device copies on the communication stream;
  // a batched-copy kernel would cut launch overhead when experts are many).
  const char* src = static_cast<const char*>(send);
  size_t at = 0;
  for (size_t b = 0; b < s.count.size(); ++b) {
    // Blocks of peer p are first[p] .. first[p+1]-1, and peers are in order, so block order is
    // packing order.
    const size_t bytes = static_cast<size_t>(s.count[b]) * es;
    if (bytes)
      UOE_CHECK_CUDA(cudaMemcpyAsync(send_stage_.data() + at, src + static_cast<size_t>(s.offset[b]) * es, bytes,
                                     cudaMemcpyDeviceToDevice, stream()));
    at += bytes;
  }
  send_recv(reinterpret_cast<const char*>(send_stage_.data()), sc.data(), sd.data(),
            reinterpret_cast<char*>(recv_stage_.data()), rc.data(), rd.data(), t);
  char* dst = static_cast<char*>(recv);
  at = 0;
  for (size_t b = 0; b < r.count.size(); ++b) {
    const size_t bytes = static_cast<size_t>(r.count[b]) * es;
    if (bytes)
      UOE_CHECK_CUDA(cudaMemcpyAsync(dst + static_cast<size_t>(r.offset[b]) * es, recv_stage_.data() + at, bytes,
                                     cudaMemcpyDeviceToDevice, stream()));
    at += bytes;
  }
  complete("all_to_all_v (blocks)");
}

void NcclCommunicator::do_all_to_all_matched(const void* send, const PeerBlocks& s, void* recv, const PeerBlocks& r,
                                             DType t) {
  require_live("all_to_all_v (matched blocks)");
  require_device_memory(send, "all_to_all_v (matched blocks, send)");
  require_device_memory(recv, "all_to_all_v (matched blocks, recv)");
  const size_t es = dtype_size(t);
  const ncclDataType_t nt = nccl_datatype(t);
  const char* src = static_cast<const char*>(send);
  char* dst = static_cast<char*>(recv);
  // The self blocks travel through NCCL too (a send to and receive from this rank, matched in
  // order like any other pair), so no host-side pairing of differently cut blocks is needed.
  UOE_NCCL_QUEUE(ncclGroupStart());
  for (int p = 0; p < size_; ++p) {
    for (int b = s.first[p]; b < s.first[p + 1]; ++b)
      if (s.count[b] > 0)
        UOE_NCCL_QUEUE(ncclSend(src + static_cast<size_t>(s.offset[b]) * es, static_cast<size_t>(s.count[b]), nt, p,
                                comm_, stream()));
    for (int b = r.first[p]; b < r.first[p + 1]; ++b)
      if (r.count[b] > 0)
        UOE_NCCL_QUEUE(ncclRecv(dst + static_cast<size_t>(r.offset[b]) * es, static_cast<size_t>(r.count[b]), nt, p,
                                comm_, stream()));
  }
  UOE_NCCL_QUEUE(ncclGroupEnd());
  complete("all_to_all_v (matched blocks)");
}

void NcclCommunicator::do_all_to_all(const void* send, void* recv, int count, DType t) {
  require_live("all_to_all");
  require_device_memory(send, "all_to_all (send)");
  require_device_memory(recv, "all_to_all (recv)");
  std::vector<int> counts(size_, count), displs(size_);
  for (int p = 0; p < size_; ++p) displs[p] = p * count;
  send_recv(static_cast<const char*>(send), counts.data(), displs.data(), static_cast<char*>(recv), counts.data(),
            displs.data(), t);
  complete("all_to_all");
}

void NcclCommunicator::do_all_reduce_sum(void* data, int count, DType t) {
  require_live("all_reduce_sum");
  require_device_memory(data, "all_reduce_sum");
  if (count > 0)
    UOE_NCCL_QUEUE(ncclAllReduce(data, data, static_cast<size_t>(count), nccl_datatype(t), ncclSum, comm_, stream()));
  complete("all_reduce_sum");
}

Request NcclCommunicator::do_iallreduce_sum(void* data, int count, DType t) {
  require_live("iallreduce_sum");
  require_device_memory(data, "iallreduce_sum");
  if (count > 0)
    UOE_NCCL_QUEUE(ncclAllReduce(data, data, static_cast<size_t>(count), nccl_datatype(t), ncclSum, comm_, stream()));
#if UOE_NCCL_NONBLOCKING
  wait_ready("iallreduce_sum");
#endif
  if (stream_ordered_) return Request();
  return Request(std::make_unique<NcclPending>(*this, "iallreduce_sum"));
}

void NcclCommunicator::do_broadcast(void* data, int count, DType t, int root) {
  require_live("broadcast");
  require_device_memory(data, "broadcast");
  UOE_ASSERT(root >= 0 && root < size_, "broadcast root ", root, " outside ", size_, " ranks");
  if (count > 0)
    UOE_NCCL_QUEUE(ncclBroadcast(data, data, static_cast<size_t>(count), nccl_datatype(t), root, comm_, stream()));
  complete("broadcast");
}

void NcclCommunicator::barrier() {
  require_live("barrier");
  UOE_NCCL_QUEUE(ncclAllReduce(barrier_word_.data(), barrier_word_.data(), 1, ncclInt32, ncclSum, comm_, stream()));
#if UOE_NCCL_NONBLOCKING
  wait_ready("barrier");
#endif
  synchronize("barrier");  // a barrier is a host-side promise: always waited for
}

}  // namespace uoe
