// The NCCL communicator (parallel/nccl_comm.hpp) on every rank of MPI_COMM_WORLD: all-to-all-v
// (packed and block layouts, empty pairs included), fixed all-to-all, all-reduce, broadcast, the
// non-blocking forms, the stream-ordered scope, and the refusal of host pointers. Integer-valued
// data, so everything compares exactly. Run by CTest on 1 and 2 ranks (label gpu).
//
// Skipped — exit code 77 on every rank, which CTest reports as "Skipped" — when any rank has no
// usable GPU or its node has fewer GPUs than ranks (NCCL needs one GPU per rank).
#include <gtest/gtest.h>

#include <climits>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "parallel/comm.hpp"
#include "parallel/grad_sync.hpp"
#include "parallel/nccl_comm.hpp"
#include "runtime/cuda/memory.cuh"
#include "runtime/device.hpp"
#include "tests/common/mpi_gtest.hpp"

namespace {

using uoe::NcclCommunicator;
using uoe::PeerBlocks;
using uoe::cuda::DeviceBuffer;

NcclCommunicator* g_comm = nullptr;

template <class T>
DeviceBuffer<T> up(const std::vector<T>& v) {
  DeviceBuffer<T> b;
  b.upload(std::span<const T>(v), g_comm->stream());
  g_comm->synchronize("test upload");
  return b;
}
template <class T>
std::vector<T> down(const DeviceBuffer<T>& b) {
  std::vector<T> v(b.size());
  b.download(std::span<T>(v), g_comm->stream());
  g_comm->synchronize("test download");
  return v;
}

// Elements p sends to q: some pairs send nothing, and the last rank (when there are several) sends
// nothing at all.
int a2a_count(int p, int q, int n) { return (n > 1 && p == n - 1) ? 0 : (p + 2 * q + 1) % 4; }
// The value of element i that p sends to q.
int32_t a2a_value(int p, int q, int i) { return 10000 * p + 100 * q + i; }

TEST(Nccl, AllToAllV) {
  NcclCommunicator& c = *g_comm;
  const int n = c.size(), me = c.rank();
  std::vector<int> sc(n), rc(n);
  std::vector<int32_t> send, expect;
  for (int q = 0; q < n; ++q) {
    sc[q] = a2a_count(me, q, n);
    for (int i = 0; i < sc[q]; ++i) send.push_back(a2a_value(me, q, i));
  }
  for (int p = 0; p < n; ++p) {
    rc[p] = a2a_count(p, me, n);
    for (int i = 0; i < rc[p]; ++i) expect.push_back(a2a_value(p, me, i));
  }
  send.push_back(-1);  // never empty device buffers; the counts say what travels
  auto ds = up(send);
  DeviceBuffer<int32_t> dr(expect.size() + 1);
  c.all_to_all_v<int32_t>(std::span<const int32_t>(ds.data(), ds.size()), sc, std::span<int32_t>(dr.data(), dr.size()),
                          rc);
  auto got = down(dr);
  got.pop_back();
  EXPECT_EQ(got, expect);
}

// The block form: each side lists its per-peer data as blocks in REVERSED offset order, so packing
// and unpacking both have to move things.
TEST(Nccl, AllToAllBlocks) {
  NcclCommunicator& c = *g_comm;
  const int n = c.size(), me = c.rank();
  auto layout = [&](const std::vector<int>& counts, int total) {
    PeerBlocks b;
    b.first.resize(n + 1);
    int end = total;
    for (int p = 0; p < n; ++p) {
      b.first[p] = static_cast<int>(b.count.size());
      // Two blocks per peer (first half, second half), placed from the end of the buffer backwards.
      const int h = counts[p] / 2;
      end -= counts[p];
      b.offset.push_back(end + (counts[p] - h));
      b.count.push_back(h);
      b.offset.push_back(end);
      b.count.push_back(counts[p] - h);
    }
    b.first[n] = static_cast<int>(b.count.size());
    return b;
  };
  std::vector<int> sc(n), rc(n);
  for (int q = 0; q < n; ++q) sc[q] = a2a_count(me, q, n) + 1;
  for (int p = 0; p < n; ++p) rc[p] = a2a_count(p, me, n) + 1;
  const int st = std::accumulate(sc.begin(), sc.end(), 0), rt = std::accumulate(rc.begin(), rc.end(), 0);
  const PeerBlocks sl = layout(sc, st), rl = layout(rc, rt);
  std::vector<int32_t> send(st, -7);
  for (int q = 0; q < n; ++q) {
    int i = 0;
    for (int b = sl.first[q]; b < sl.first[q + 1]; ++b)
      for (int k = 0; k < sl.count[b]; ++k) send[sl.offset[b] + k] = a2a_value(me, q, i++);
  }
  std::vector<int32_t> expect(rt, -7);
  for (int p = 0; p < n; ++p) {
    int i = 0;
    for (int b = rl.first[p]; b < rl.first[p + 1]; ++b)
      for (int k = 0; k < rl.count[b]; ++k) expect[rl.offset[b] + k] = a2a_value(p, me, i++);
  }
  auto ds = up(send);
  DeviceBuffer<int32_t> dr(rt);
  c.all_to_all_v<int32_t>(std::span<const int32_t>(ds.data(), ds.size()), sl, std::span<int32_t>(dr.data(), dr.size()),
                          rl);
  EXPECT_EQ(down(dr), expect);
  // Both sides cut each pair's data the same way (halves of the same count), so the matched form,
  // one NCCL send/receive per block without staging, must give the same result.
  DeviceBuffer<int32_t> dm(rt);
  c.all_to_all_matched<int32_t>(std::span<const int32_t>(ds.data(), ds.size()), sl,
                                std::span<int32_t>(dm.data(), dm.size()), rl);
  EXPECT_EQ(down(dm), expect);
}

TEST(Nccl, FixedAllToAllReduceBroadcast) {
  NcclCommunicator& c = *g_comm;
  const int n = c.size(), me = c.rank();
  std::vector<int64_t> send(3 * n);
  for (int q = 0; q < n; ++q)
    for (int i = 0; i < 3; ++i) send[3 * q + i] = a2a_value(me, q, i);
  auto ds = up(send);
  DeviceBuffer<int64_t> dr(send.size());
  c.all_to_all<int64_t>(std::span<const int64_t>(ds.data(), ds.size()), std::span<int64_t>(dr.data(), dr.size()));
  const auto got = down(dr);
  for (int p = 0; p < n; ++p)
    for (int i = 0; i < 3; ++i) EXPECT_EQ(got[3 * p + i], a2a_value(p, me, i));

  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(me + 1) * static_cast<float>(i % 17);
  auto dv = up(v);
  c.all_reduce_sum<float>(std::span<float>(dv.data(), dv.size()));
  const float ranks_sum = static_cast<float>(n * (n + 1) / 2);
  const auto sum = down(dv);
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(sum[i], ranks_sum * static_cast<float>(i % 17)) << i;

  std::vector<double> b(33, me == n - 1 ? 2.5 : -1.0);
  auto db = up(b);
  c.broadcast<double>(std::span<double>(db.data(), db.size()), n - 1);
  EXPECT_EQ(down(db), std::vector<double>(33, 2.5));
  c.barrier();
}

TEST(Nccl, NonBlockingAndStreamOrdered) {
  NcclCommunicator& c = *g_comm;
  const int n = c.size();
  auto d1 = up(std::vector<int32_t>(100, 1));
  uoe::Request r = c.iallreduce_sum<int32_t>(std::span<int32_t>(d1.data(), d1.size()));
  r.wait();
  EXPECT_EQ(down(d1), std::vector<int32_t>(100, n));
  {
    // Queued only: the host waits once, at the end.
    auto scope = c.stream_ordered();
    c.all_reduce_sum<int32_t>(std::span<int32_t>(d1.data(), d1.size()));
    uoe::Request r2 = c.iallreduce_sum<int32_t>(std::span<int32_t>(d1.data(), d1.size()));
    EXPECT_FALSE(r2.pending());
  }
  c.synchronize("test");
  EXPECT_EQ(down(d1), std::vector<int32_t>(100, n * n * n));
}

// The gradient all-reduce on device buffers — the host's GradientSync rebased onto a device arena,
// its collectives over NCCL, its packing by device copies (what the CUDA step runs, layers/step_cuda.cu)
// — against the same GradientSync on the host over MPI: one bucket reduced in place (one span), one
// packed (its tensors are not adjacent), in the same order. Integer-valued: exact in any sum order.
TEST(Nccl, GradientSyncOnDeviceEqualsTheHostsOverMpi) {
  NcclCommunicator& c = *g_comm;
  uoe::MpiCommunicator world(MPI_COMM_WORLD);
  uoe::SelfCommunicator self;
  const int me = c.rank();
  std::vector<float> host(60), dev_copy;
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>((me + 1) * static_cast<int>(i % 13));
  auto tensors = [](float* arena) {
    const int cut[5] = {0, 10, 30, 45, 60};
    std::vector<uoe::GradTensor> t(4);
    for (int i = 0; i < 4; ++i) t[i].grad = std::span<float>(arena + cut[i], cut[i + 1] - cut[i]);
    return t;
  };
  const std::vector<std::vector<int>> buckets = {{1, 2}, {0, 3}};
  auto dev = up(host);
  uoe::GradientSync on_host(tensors(host.data()), buckets, world, self, world);
  uoe::cuda::DeviceBuffer<float> pack;
  uoe::GradientMemory memory;
  memory.buffer = [&pack](size_t n) {
    pack.resize(n);
    return pack.data();
  };
  memory.copy = [&c](float* dst, const float* src, size_t n) {
    UOE_CHECK_CUDA(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, c.stream()));
  };
  memory.fence = [&c] { c.synchronize("the packing copies"); };
  uoe::GradientSync on_device = on_host.rebased(host.data(), dev.data(), &c, nullptr, memory);
  on_host.all_reduce();
  for (size_t b = 0; b < on_device.buckets(); ++b) on_device.reduce_bucket(b);
  EXPECT_EQ(down(dev), host);
  const int n = c.size();
  EXPECT_EQ(host[14], static_cast<float>(n * (n + 1) / 2 * 1));  // the sums happened (element 14: 14 % 13 = 1)
}

TEST(Nccl, HostPointerIsRefused) {
  NcclCommunicator& c = *g_comm;
  std::vector<float> host(8, 1.0f);
  try {
    c.all_reduce_sum<float>(host);
    ADD_FAILURE() << "a host buffer was accepted";
  } catch (const uoe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("host pointer"), std::string::npos) << e.what();
  }
}

}  // namespace

int main(int argc, char** argv) {
  uoe::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  uoe_test::agree_on_shuffle_seed();
  // Skip on every rank when any rank cannot have a GPU of its own.
  const uoe::DeviceProbe probe = uoe::device_probe();
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, mpi.world_rank(), MPI_INFO_NULL, &node);
  int local_size = 1;
  MPI_Comm_size(node, &local_size);
  MPI_Comm_free(&node);
  int usable = probe.available && probe.count >= local_size ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &usable, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!usable) {
    if (mpi.world_rank() == 0)
      std::printf("SKIPPED: NCCL tests need one usable GPU per rank (rank 0: %s, %d rank(s) on its node)\n",
                  probe.message.c_str(), local_size);
    return 77;
  }
  int rc = 0;
  {
    NcclCommunicator comm(MPI_COMM_WORLD, /*timeout_seconds=*/60);
    g_comm = &comm;
    rc = RUN_ALL_TESTS();
    g_comm = nullptr;
    comm.close();
  }
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return rc;
}
