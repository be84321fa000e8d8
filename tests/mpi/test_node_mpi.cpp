// Multi-rank tests of where a rank sits on its node (ProcessGroups::node_rank, node_size,
// node_group; parallel/comm.hpp) and of the rank runtime/'s error messages name. Run under mpirun
// on 2 ranks of one host (CTest mpi.node.np2); the expectations come from MPI_Get_processor_name,
// so the tests hold on any world size and any number of hosts.
//
// Every rank runs every test in the same order and makes the same collective calls, so checks are
// non-fatal (EXPECT_*) and come after a test's collectives.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "parallel/comm.hpp"
#include "runtime/log.hpp"
#include "tests/common/mpi_gtest.hpp"

namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Every rank's host name, in world-rank order.
std::vector<std::string> host_names() {
  char mine[MPI_MAX_PROCESSOR_NAME] = {0};
  int len = 0;
  MPI_Get_processor_name(mine, &len);
  const int n = world_size();
  std::vector<char> all(static_cast<size_t>(n) * MPI_MAX_PROCESSOR_NAME);
  MPI_Allgather(mine, MPI_MAX_PROCESSOR_NAME, MPI_CHAR, all.data(), MPI_MAX_PROCESSOR_NAME, MPI_CHAR, MPI_COMM_WORLD);
  std::vector<std::string> names;
  for (int r = 0; r < n; ++r) names.emplace_back(all.data() + static_cast<size_t>(r) * MPI_MAX_PROCESSOR_NAME);
  return names;
}

// What node_rank and node_size must be: the ranks on this rank's host, in world-rank order.
struct Expected {
  int rank = 0, size = 0;
  bool one_host = true;  // every rank of the world on this host
};

Expected expected_node() {
  const std::vector<std::string> names = host_names();
  const int me = world_rank();
  Expected e;
  for (int r = 0; r < static_cast<int>(names.size()); ++r) {
    if (names[r] != names[me]) {
      e.one_host = false;
      continue;
    }
    if (r < me) ++e.rank;
    ++e.size;
  }
  return e;
}

std::vector<int> gather_ints(int v) {
  std::vector<int> all(world_size());
  MPI_Allgather(&v, 1, MPI_INT, all.data(), 1, MPI_INT, MPI_COMM_WORLD);
  return all;
}

TEST(NodeRanks, ProcessGroupsPlaceEachRankOnItsNode) {
  const Expected want = expected_node();
  const int n = world_size();
  for (int ep : {1, n}) {
    SCOPED_TRACE("ep " + std::to_string(ep));
    uoe::ProcessGroups g = uoe::make_process_groups(MPI_COMM_WORLD, ep);
    const std::vector<int> ranks = gather_ints(g.node_rank);
    const int group_size = g.node_group ? g.node_group->size() : -1;
    const int group_rank = g.node_group ? g.node_group->rank() : -1;
    g.close();
    EXPECT_EQ(g.node_size, want.size);
    EXPECT_EQ(g.node_rank, want.rank);
    EXPECT_EQ(group_size, g.node_size);
    EXPECT_EQ(group_rank, g.node_rank);
    if (want.one_host) {
      // One host (how CTest runs it): every rank is on this node, numbered 0..n-1 by world rank.
      EXPECT_EQ(g.node_size, n);
      std::vector<int> in_order(n);
      for (int r = 0; r < n; ++r) in_order[r] = r;
      EXPECT_EQ(ranks, in_order);
    }
  }
}

TEST(NodeRanks, OfACommunicatorWithoutTheGroups) {
  const Expected want = expected_node();
  const uoe::NodeRanks node = uoe::node_ranks(MPI_COMM_WORLD);
  EXPECT_EQ(node.size, want.size);
  EXPECT_EQ(node.rank, want.rank);
}

TEST(NodeRanks, GatherEveryNodeRanksVisibleDevices) {
  // Each rank sets its own CUDA_VISIBLE_DEVICES (as srun --gpus-per-task=1 does; world rank r: "gpu-r",
  // and the last rank leaves it unset): the node's list holds its ranks' values in node-rank order.
  const Expected want = expected_node();
  const int me = world_rank(), n = world_size();
  const char* old = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string saved = old ? old : "";
  if (me == n - 1) unsetenv("CUDA_VISIBLE_DEVICES");
  else setenv("CUDA_VISIBLE_DEVICES", ("gpu-" + std::to_string(me)).c_str(), 1);
  uoe::ProcessGroups g = uoe::make_process_groups(MPI_COMM_WORLD, 1);
  const uoe::NodeRanks node = uoe::node_ranks(MPI_COMM_WORLD);
  // Which world ranks share this node, in order: node rank i is the i-th of them.
  const std::vector<int> node_of = gather_ints(g.node_rank);
  g.close();
  if (old) setenv("CUDA_VISIBLE_DEVICES", saved.c_str(), 1);
  else unsetenv("CUDA_VISIBLE_DEVICES");
  ASSERT_EQ(static_cast<int>(g.node_visible_devices.size()), want.size);
  EXPECT_EQ(node.visible_devices, g.node_visible_devices);
  const std::vector<std::string> hosts = host_names();
  int i = 0;
  for (int r = 0; r < n; ++r) {
    if (hosts[r] != hosts[me]) continue;
    ASSERT_EQ(node_of[r], i);
    if (r == n - 1) EXPECT_FALSE(g.node_visible_devices[i].has_value()) << "node rank " << i;
    else EXPECT_EQ(g.node_visible_devices[i], std::optional<std::string>("gpu-" + std::to_string(r))) << "node rank " << i;
    ++i;
  }
}

TEST(ProcessRank, IsTheWorldRankWhileMpiRuns) {
  // Set by MpiSession (main, below): the rank the CUDA and NCCL status checks name.
  EXPECT_EQ(uoe::process_rank(), world_rank());
}


}  // namespace

int main(int argc, char** argv) {
  int rc = 0;
  {
    uoe::MpiSession mpi(&argc, &argv);
    ::testing::InitGoogleTest(&argc, argv);
    uoe_test::agree_on_shuffle_seed();
    if (mpi.world_rank() != 0) {
      ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new uoe_test::RankFailurePrinter(mpi.world_rank()));
    }
    rc = RUN_ALL_TESTS();
    // A failure on any rank fails every rank, so mpirun's exit status cannot depend on which rank
    // it reports.
    MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  }
  // After MPI_Finalize no rank is named.
  if (uoe::process_rank() != -1) {
    std::fprintf(stderr, "process_rank() is %d after MPI_Finalize, expected -1\n", uoe::process_rank());
    rc = 1;
  }
  return rc;
}
