// runtime/profile.hpp: the phase timers bench-step's breakdown comes from. Time is exclusive (a
// nested scope pauses the outer one), so the phases partition the recorded wall time; only the
// thread that started recording records; with recording off a scope records nothing.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "runtime/clock.hpp"
#include "runtime/profile.hpp"

namespace uoe {
namespace {

void spin_cpu(double seconds) {  // at least `seconds` of this thread's processor time
  const double t0 = thread_cpu_seconds();
  while (thread_cpu_seconds() - t0 < seconds) {
  }
}

TEST(Profile, NestedScopesAreExclusiveAndPartitionTheWallTime) {
  const auto w0 = std::chrono::steady_clock::now();
  profile_start();
  spin_cpu(1e-3);  // other
  {
    const ProfileScope attention(Phase::attention);
    spin_cpu(2e-3);
    {
      const ProfileScope gemm(Phase::gemm);
      spin_cpu(3e-3);
    }
  }
  {
    const ProfileScope opt(Phase::optimizer);
    spin_cpu(1e-3);
  }
  const PhaseSeconds p = profile_stop();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  EXPECT_GE(p.seconds[static_cast<int>(Phase::gemm)], 3e-3);
  EXPECT_GE(p.seconds[static_cast<int>(Phase::attention)], 2e-3);
  EXPECT_GE(p.seconds[static_cast<int>(Phase::optimizer)], 1e-3);
  EXPECT_GE(p.seconds[static_cast<int>(Phase::other)], 1e-3);
  EXPECT_EQ(p.seconds[static_cast<int>(Phase::routing)], 0.0);
  EXPECT_EQ(p.seconds[static_cast<int>(Phase::exchange)], 0.0);
  // Counting the nested GEMM in attention too would exceed the wall time by its 3 ms.
  EXPECT_LE(p.total(), wall);
  EXPECT_GE(p.total(), 7e-3);
}

TEST(Profile, OnlyTheRecordingThreadRecords) {
  profile_start();
  std::thread other([] {
    const ProfileScope gemm(Phase::gemm);  // not recording on this thread: a no-op
    spin_cpu(2e-3);
  });
  other.join();
  const PhaseSeconds p = profile_stop();
  EXPECT_EQ(p.seconds[static_cast<int>(Phase::gemm)], 0.0);
  {
    const ProfileScope gemm(Phase::gemm);  // recording stopped: nothing happens
  }
  EXPECT_EQ(profile_stop().total(), 0.0);
  EXPECT_STREQ(phase_name(Phase::gemm), "GEMM");
  EXPECT_STREQ(phase_name(Phase::other), "other");
}

}  // namespace
}  // namespace uoe
