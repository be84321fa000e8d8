// GoogleTest under MPI: every rank must run the same tests in the same order (they make the same
// collective calls), so with --gtest_shuffle (or GTEST_SHUFFLE=1) all ranks shuffle with one seed.
// GoogleTest picks a time-based seed when none is given (--gtest_random_seed=0, the default), which
// can differ between ranks and deadlock the first collective; rank 0's choice is broadcast instead.
// Call after InitGoogleTest, before RUN_ALL_TESTS.
#pragma once
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace uoe_test {

inline void agree_on_shuffle_seed(MPI_Comm comm = MPI_COMM_WORLD) {
  int seed = GTEST_FLAG_GET(random_seed);
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  if (rank == 0 && seed == 0) {
    // GoogleTest's own rule for seed 0: the clock, folded into [1, 99999].
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch()).count();
    seed = static_cast<int>(ms % 99999) + 1;
  }
  MPI_Bcast(&seed, 1, MPI_INT, 0, comm);
  GTEST_FLAG_SET(random_seed, seed);
  if (rank == 0 && GTEST_FLAG_GET(shuffle)) std::printf("shuffled with --gtest_random_seed=%d on every rank\n", seed);
}

// Non-root ranks print only their failures, tagged with the rank (rank 0 keeps gtest's printer).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  // The test's name is taken here: gtest holds its lock during OnTestPartResult, so asking for
  // current_test_info() there would deadlock.
  void OnTestStart(const ::testing::TestInfo& t) override { name_ = std::string(t.test_suite_name()) + "." + t.name(); }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: Failure\n%s\n", rank_, name_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }

 private:
  int rank_;
  std::string name_;
};

}  // namespace uoe_test
