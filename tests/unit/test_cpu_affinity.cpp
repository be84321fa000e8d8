// Threads from the CPU affinity mask (runtime/cpu_affinity.hpp): the rank's share of its CPUs, by
// table (bound and unbound ranks, hosts of different sizes, uneven splits), and the mask itself as
// sched_getaffinity reports it. The CLI side (uoe-train under taskset, ranks on hosts with different
// slot counts) is CTest's multihost.threads_* (tests/multihost/multihost_test.py).
#include <gtest/gtest.h>
#include <sched.h>

#include <numeric>
#include <vector>

#include "runtime/cpu_affinity.hpp"

namespace uoe {
namespace {

std::vector<int> range(int from, int to) {  // [from, to)
  std::vector<int> v(to - from);
  std::iota(v.begin(), v.end(), from);
  return v;
}

// ranks_on_cpu for `ranks` unbound ranks on `cpus` CPUs, or bound ones (each on its own block).
std::vector<int> shared(int cpus, int ranks) { return std::vector<int>(cpus, ranks); }

TEST(CpuAffinity, UnboundRanksSplitTheirCpus) {
  EXPECT_EQ(default_threads(range(0, 8), shared(8, 1)), 8);
  EXPECT_EQ(default_threads(range(0, 8), shared(8, 2)), 4);
  EXPECT_EQ(default_threads(range(0, 8), shared(8, 3)), 2);  // 8/3 rounded down
  EXPECT_EQ(default_threads(range(0, 2), shared(2, 4)), 1);  // oversubscribed: at least 1
}

TEST(CpuAffinity, BoundRanksTakeTheirOwnCpus) {
  // 2 ranks bound to 4 cores each of an 8-core host, and a rank bound to 1 core (taskset -c 5).
  std::vector<int> on(8, 1);
  EXPECT_EQ(default_threads(range(0, 4), on), 4);
  EXPECT_EQ(default_threads(range(4, 8), on), 4);
  std::vector<int> one(8, 0);
  one[5] = 1;
  EXPECT_EQ(default_threads({5}, one), 1);
}

TEST(CpuAffinity, PartlySharedCpusCountTheirShare) {
  // Rank A on CPUs 0-3 alone, rank B on 2-5: A owns 0,1 and half of 2,3 → 3; B half of 2,3 and 4,5 → 3.
  std::vector<int> on = {1, 1, 2, 2, 1, 1};
  EXPECT_EQ(default_threads(range(0, 4), on), 3);
  EXPECT_EQ(default_threads(range(2, 6), on), 3);
  // Three ranks sharing 3 CPUs: exactly one each (3 × 1/3 must not round down to 0).
  EXPECT_EQ(default_threads(range(0, 3), shared(3, 3)), 1);
  EXPECT_EQ(default_threads(range(0, 6), shared(6, 3)), 2);
}

TEST(CpuAffinity, CpusBeyondTheTableCountAsOwn) {
  EXPECT_EQ(default_threads({0, 1, 7}, {1, 1}), 3);
}

TEST(CpuAffinity, NodeCpusAreTheUsedOnes) {
  EXPECT_EQ(node_cpus({1, 1, 0, 2}), 3);
  EXPECT_EQ(node_cpus({0, 0}), 1);
  EXPECT_EQ(node_cpus(shared(16, 4)), 16);
}

TEST(CpuAffinity, MaskIsWhatSchedGetaffinitySays) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const std::vector<int> cpus = affinity_cpus();
  ASSERT_EQ(static_cast<int>(cpus.size()), CPU_COUNT(&set));
  for (const int c : cpus) EXPECT_TRUE(CPU_ISSET(c, &set)) << c;
  EXPECT_EQ(default_threads(), CPU_COUNT(&set));
  // Narrow the mask to one CPU: the count follows it (and is restored after).
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpus.front(), &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  EXPECT_EQ(affinity_cpus(), std::vector<int>{cpus.front()});
  EXPECT_EQ(default_threads(), 1);
  ASSERT_EQ(sched_setaffinity(0, sizeof set, &set), 0);
}

}  // namespace
}  // namespace uoe
