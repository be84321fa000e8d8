// bench-gpu-alltoall: NCCL all-to-all bandwidth in the manner of nccl-tests (alltoall_perf), one GPU
// per MPI rank, through the project's NcclCommunicator and, for comparison, a bare grouped
// ncclSend/ncclRecv loop. Never run on a GPU (bench/gpu/README.md); without one it exits 77.
//
// For each message size (bytes per peer, --min-bytes … --max-bytes, ×--factor) every rank sends
// `size / 4` floats to every rank (itself included, as nccl-tests does), three ways:
//   uoe      NcclCommunicator::all_to_all_v, blocking (the Communicator contract: the call returns
//            when the result is in the buffer; the host waits on an event under the watchdog)
//   uoe-q    the same call inside stream_ordered() (what the StreamScheduler uses): calls return once
//            queued; one synchronize() after the batch
//   raw      ncclGroupStart; ncclSend + ncclRecv per peer; ncclGroupEnd on a second communicator of
//            the same GPUs (no pointer checks, no events): the floor the wrapper adds to
// Each is verified once per size (receive buffer poisoned with NaN; every element must be the value
// its sender wrote for this rank; #wrong = mismatches summed over the ranks), then timed like
// nccl-tests: MPI barrier, host clock around --iters back-to-back operations and the final wait;
// time = the slowest rank's batch time / iters; the median of --runs batches is reported.
//
// Columns: size = bytes one rank sends in total (per-peer × ranks, nccl-tests' "size"), count = its
// floats, algbw = size / time, busbw = algbw · (n − 1) / n (nccl-tests' all-to-all bus bandwidth).
//
//   mpirun -np 2 build/bin/bench-gpu-alltoall [--min-bytes 1024] [--max-bytes 268435456] [--csv FILE]
// Each rank takes GPU (node-local rank mod GPUs), as NcclCommunicator's bootstrap does.
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/gpu/common.cuh"
#include "parallel/comm.hpp"
#include "parallel/nccl_comm.hpp"
#include "runtime/cuda/memory.cuh"

namespace {

using namespace uoe;
using namespace uoe::bench_gpu;
using cuda::DeviceBuffer;

constexpr const char* kProg = "bench-gpu-alltoall";

// Element i that rank src sends to rank dst: an integer below 2^24, exact in float.
__host__ __device__ inline float a2a_value(int src, int dst, int64_t i) {
  return static_cast<float>((src * 1000003LL + dst * 7919LL + i) % 16777213);
}

__global__ void fill_send_kernel(float* p, int me, int n, int64_t count) {
  const size_t total = static_cast<size_t>(n) * count;
  for (size_t k = blockIdx.x * size_t{blockDim.x} + threadIdx.x; k < total; k += size_t{gridDim.x} * blockDim.x)
    p[k] = a2a_value(me, static_cast<int>(k / count), static_cast<int64_t>(k % count));
}

__global__ void check_recv_kernel(const float* p, int me, int n, int64_t count, unsigned long long* wrong) {
  const size_t total = static_cast<size_t>(n) * count;
  unsigned long long local = 0;
  for (size_t k = blockIdx.x * size_t{blockDim.x} + threadIdx.x; k < total; k += size_t{gridDim.x} * blockDim.x)
    local += !(p[k] == a2a_value(static_cast<int>(k / count), me, static_cast<int64_t>(k % count)));
  if (local) atomicAdd(wrong, local);
}

// A second NCCL communicator over the same ranks and GPUs (the device is already set by the
// NcclCommunicator), for the bare send/recv loop. Blocking init, as nccl-tests does.
class RawNccl {
 public:
  RawNccl(MPI_Comm world, int rank, int size, double timeout) : rank_(rank), size_(size), timeout_(timeout) {
    const ncclUniqueId id = nccl_unique_id_over_mpi(world, rank, "raw NCCL communicator");
    UOE_CHECK_NCCL(ncclCommInitRank(&comm_, size, id, rank));
  }
  ~RawNccl() {
    if (comm_) (void)ncclCommAbort(comm_);
  }
  RawNccl(const RawNccl&) = delete;
  RawNccl& operator=(const RawNccl&) = delete;
  void close() {
    if (comm_) UOE_CHECK_NCCL(ncclCommDestroy(comm_));
    comm_ = nullptr;
  }
  cudaStream_t stream() const { return stream_.get(); }

  // The loop every NCCL all-to-all is: one send and one receive per peer in one group.
  void all_to_all(const float* send, float* recv, size_t count) {
    UOE_CHECK_NCCL(ncclGroupStart());
    for (int p = 0; p < size_; ++p) {
      UOE_CHECK_NCCL(ncclSend(send + p * count, count, ncclFloat32, p, comm_, stream()));
      UOE_CHECK_NCCL(ncclRecv(recv + p * count, count, ncclFloat32, p, comm_, stream()));
    }
    UOE_CHECK_NCCL(ncclGroupEnd());
  }
  // Host wait for the stream, polling NCCL's asynchronous error against a deadline (no hangs).
  void synchronize(const char* what) {
    done_.record(stream());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_);
    while (!done_.done()) {
      ncclResult_t state = ncclSuccess;
      UOE_CHECK_NCCL(ncclCommGetAsyncError(comm_, &state));
      if (state != ncclSuccess && state != ncclInProgress)
        fail("raw NCCL ", what, " on rank ", rank_, ": ", ncclGetErrorString(state));
      if (std::chrono::steady_clock::now() > deadline)
        fail("raw NCCL ", what, " on rank ", rank_, " did not complete within ", timeout_, " s");
      std::this_thread::yield();
    }
  }

 private:
  ncclComm_t comm_ = nullptr;
  int rank_ = 0, size_ = 1;
  double timeout_ = 120;
  cuda::Stream stream_;
  cuda::Event done_;
};

struct Options {
  int64_t min_bytes = 1024, max_bytes = int64_t{256} << 20;
  int factor = 2, warmup = 5, iters = 20, runs = 5;
  double timeout = 120;
  std::string csv;
};

int run(const Options& o, const MpiSession& mpi) {
  const MPI_Comm world = MPI_COMM_WORLD;
  const bool root = mpi.world_rank() == 0;
  if (!gpu_usable_on_every_rank(kProg, world)) return kSkipped;

  NcclCommunicator nccl(world, o.timeout);
  const int n = nccl.size(), me = nccl.rank();
  RawNccl raw(world, me, n, o.timeout);
  const cudaStream_t s = nccl.stream();

  // Banner: every rank's host and GPU.
  {
    char host[MPI_MAX_PROCESSOR_NAME] = {};
    int len = 0;
    UOE_CHECK_MPI(MPI_Get_processor_name(host, &len));
    char line[512] = {};
    std::snprintf(line, sizeof line, "rank %d: %s (node-local rank %d), %s", me, host, nccl.local_rank(),
                  device_banner(nccl.device()).c_str());
    std::vector<char> all(root ? sizeof line * n : 1);
    UOE_CHECK_MPI(MPI_Gather(line, static_cast<int>(sizeof line), MPI_CHAR, all.data(), static_cast<int>(sizeof line),
                             MPI_CHAR, 0, world));
    if (root) {
      std::printf("# %s: %d ranks, float32, %d warm-up + %d x %d timed operations (median of %d batches)\n", kProg,
                  n, o.warmup, o.runs, o.iters, o.runs);
      for (int r = 0; r < n; ++r) std::printf("# %s\n", all.data() + r * sizeof line);
    }
  }

  // Largest per-peer size whose send + receive buffers fit in 80% of every rank's free memory.
  int64_t max_bytes = o.max_bytes;
  {
    size_t free_b = 0, total_b = 0;
    UOE_CHECK_CUDA(cudaMemGetInfo(&free_b, &total_b));
    int64_t fits = o.min_bytes;
    for (int64_t b = o.min_bytes; b <= o.max_bytes; b *= o.factor)
      if (2.0 * n * static_cast<double>(b) <= 0.8 * static_cast<double>(free_b)) fits = b;
    UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &fits, 1, MPI_INT64_T, MPI_MIN, world));
    int64_t largest = o.min_bytes;
    for (int64_t b = o.min_bytes; b <= o.max_bytes; b *= o.factor) largest = b;
    if (fits < largest && root)
      std::printf("# note: sizes above %lld B per peer do not fit in device memory on every rank; stopping there\n",
                  static_cast<long long>(fits));
    max_bytes = std::min(largest, fits);
  }
  const size_t max_count = static_cast<size_t>(max_bytes / 4);
  DeviceBuffer<float> send(std::max<size_t>(n * max_count, 1)), recv(send.size());
  DeviceBuffer<unsigned long long> wrong_dev(1);

  std::unique_ptr<FILE, int (*)(FILE*)> csv(root ? open_csv(kProg, o.csv) : nullptr, &std::fclose);
  if (csv) std::fprintf(csv.get(), "ranks,bytes,count,bytes_per_peer,op,time_us,algbw_GBps,busbw_GBps,wrong\n");
  if (root) {
    std::printf("# %12s %11s %11s |", "", "", "");
    for (const char* t : {"uoe: all_to_all_v, blocking", "uoe-q: all_to_all_v, queued", "raw: send/recv group"})
      std::printf(" %-37s |", t);
    std::printf("\n# %12s %11s %11s |", "size", "count", "per peer");
    for (int k = 0; k < 3; ++k) std::printf(" %9s %8s %8s %8s |", "time(us)", "algbw", "busbw", "#wrong");
    std::printf("\n# %12s %11s %11s |", "(B)", "(elements)", "(B)");
    for (int k = 0; k < 3; ++k) std::printf(" %9s %8s %8s %8s |", "", "(GB/s)", "(GB/s)", "");
    std::printf("\n");
  }

  const double bus = n > 1 ? (n - 1.0) / n : 0.0;
  int64_t total_wrong = 0;
  for (int64_t per_peer = o.min_bytes; per_peer <= max_bytes; per_peer *= o.factor) {
    const size_t count = static_cast<size_t>(per_peer / 4);
    if (count == 0) continue;
    if (n * count > static_cast<size_t>(INT32_MAX))
      fail(kProg, ": ", per_peer, " B per peer on ", n, " ranks exceeds the int element counts of all_to_all_v");
    fill_send_kernel<<<grid_for(n * count, 256), 256, 0, s>>>(send.data(), me, n, static_cast<int64_t>(count));
    UOE_CHECK_LAUNCH("fill_send_kernel");
    nccl.synchronize("fill");

    const std::vector<int> counts(n, static_cast<int>(count));
    const std::span<const float> send_span(send.data(), n * count);
    const std::span<float> recv_span(recv.data(), n * count);
    auto op_uoe = [&] { nccl.all_to_all_v<float>(send_span, counts, recv_span, counts); };
    auto op_queued = [&] {
      auto scope = nccl.stream_ordered();
      nccl.all_to_all_v<float>(send_span, counts, recv_span, counts);
    };
    auto op_raw = [&] { raw.all_to_all(send.data(), recv.data(), count); };
    auto wait_uoe = [&] { nccl.synchronize("all_to_all_v"); };
    auto wait_raw = [&] { raw.synchronize("send/recv group"); };

    // Verification: poison, run once, count mismatches on the device, sum over the ranks.
    auto verify = [&](auto&& op, auto&& wait, cudaStream_t st) {
      UOE_CHECK_CUDA(cudaMemsetAsync(recv.data(), 0xff, n * count * sizeof(float), st));
      op();
      wait();
      UOE_CHECK_CUDA(cudaMemsetAsync(wrong_dev.data(), 0, sizeof(unsigned long long), st));
      check_recv_kernel<<<grid_for(n * count, 256), 256, 0, st>>>(recv.data(), me, n, static_cast<int64_t>(count),
                                                                   wrong_dev.data());
      UOE_CHECK_LAUNCH("check_recv_kernel");
      unsigned long long w = 0;
      UOE_CHECK_CUDA(cudaMemcpyAsync(&w, wrong_dev.data(), sizeof w, cudaMemcpyDeviceToHost, st));
      UOE_CHECK_CUDA(cudaStreamSynchronize(st));
      int64_t wrong = static_cast<int64_t>(w);
      UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT64_T, MPI_SUM, world));
      return wrong;
    };
    // nccl-tests timing: barrier, host clock around `iters` operations and the wait, slowest rank.
    auto time_op = [&](auto&& op, auto&& wait) {
      for (int i = 0; i < o.warmup; ++i) op();
      wait();
      std::vector<double> per_op;
      for (int r = 0; r < o.runs; ++r) {
        UOE_CHECK_MPI(MPI_Barrier(world));
        const double t0 = MPI_Wtime();
        for (int i = 0; i < o.iters; ++i) op();
        wait();
        double dt = (MPI_Wtime() - t0) / o.iters;
        UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, world));
        per_op.push_back(dt);
      }
      return median(per_op);
    };
    const int64_t wrong[3] = {verify(op_uoe, wait_uoe, s), verify(op_queued, wait_uoe, s),
                              verify(op_raw, wait_raw, raw.stream())};
    const double t[3] = {time_op(op_uoe, wait_uoe), time_op(op_queued, wait_uoe), time_op(op_raw, wait_raw)};
    const char* names[3] = {"uoe", "uoe-q", "raw"};
    const double bytes = static_cast<double>(n) * per_peer;
    if (root) {
      std::printf("  %12.0f %11zu %11lld |", bytes, n * count, static_cast<long long>(per_peer));
      for (int k = 0; k < 3; ++k) {
        const double algbw = bytes / t[k] / 1e9;
        std::printf(" %9.1f %8.2f %8.2f %8lld |", t[k] * 1e6, algbw, algbw * bus, static_cast<long long>(wrong[k]));
        if (csv)
          std::fprintf(csv.get(), "%d,%.0f,%zu,%lld,%s,%.3f,%.4f,%.4f,%lld\n", n, bytes, n * count,
                       static_cast<long long>(per_peer), names[k], t[k] * 1e6, algbw, algbw * bus,
                       static_cast<long long>(wrong[k]));
      }
      std::printf("\n");
      std::fflush(stdout);
    }
    total_wrong += wrong[0] + wrong[1] + wrong[2];
  }
  raw.close();
  nccl.close();
  if (root && csv) std::printf("# results in %s\n", o.csv.c_str());
  if (total_wrong) {
    if (root) std::fprintf(stderr, "%s: %lld element(s) arrived wrong (see #wrong)\n", kProg,
                           static_cast<long long>(total_wrong));
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  const bool root = mpi.world_rank() == 0;
  Options o;
  try {
    Args a(kProg, "mpirun -np N bench-gpu-alltoall [options]\n\nNCCL all-to-all algbw/busbw per message size "
                  "(nccl-tests columns), one GPU per rank:\nNcclCommunicator::all_to_all_v (blocking and "
                  "stream-ordered) and a bare ncclSend/ncclRecv group.\nExits 77 when a rank has no usable GPU.");
    a.option("min-bytes", "B", "smallest message, bytes per peer", "1024");
    a.option("max-bytes", "B", "largest message, bytes per peer (capped by device memory)", "268435456");
    a.option("factor", "F", "size multiplier between steps", "2");
    a.option("warmup", "N", "untimed operations per size and method", "5");
    a.option("iters", "N", "operations per timed batch", "20");
    a.option("runs", "N", "timed batches (the median is reported)", "5");
    a.option("timeout", "S", "seconds before a stuck exchange aborts the run (watchdog)", "120");
    a.option("csv", "FILE", "also write the rows to this CSV file (rank 0)");
    a.parse(argc, argv);
    if (a.help()) {
      if (root) a.print_help();
      return 0;
    }
    o.min_bytes = a.integer("min-bytes", 4);
    o.max_bytes = a.integer("max-bytes", o.min_bytes);
    o.factor = static_cast<int>(a.integer("factor", 2));
    o.warmup = static_cast<int>(a.integer("warmup", 0));
    o.iters = static_cast<int>(a.integer("iters", 1));
    o.runs = static_cast<int>(a.integer("runs", 1));
    o.timeout = a.real("timeout");
    if (o.timeout <= 0) fail(kProg, ": --timeout must be positive");
    o.csv = a.str("csv");
  } catch (const std::exception& e) {
    // Same arguments on every rank, so every rank ends here; rank 0 says why.
    if (root) std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  try {
    return run(o, mpi);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: rank %d: %s\n", kProg, mpi.world_rank(), e.what());
    // A rank that fails alone would leave the others in a collective: end the whole job.
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
