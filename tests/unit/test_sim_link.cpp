// The simulated link's delays (parallel/sim_link.hpp): a collective over it never completes sooner
// than the model says. Only a lower bound is checked — sleep_until never wakes before its deadline
// on the steady clock, so the bound holds however loaded the machine is; how much later the call
// returns depends on the scheduler and is deliberately not tested. The charged (modelled) time is
// arithmetic and is checked exactly.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <span>
#include <vector>

#include "parallel/comm.hpp"
#include "parallel/sim_link.hpp"

namespace {

// Rank 0 of a pretend world of `size` ranks whose collectives move nothing and return at once: the
// simulated link's delay is then all the time a call takes.
class PretendWorld final : public uoe::Communicator {
 public:
  explicit PretendWorld(int size) : size_(size) {}
  int rank() const override { return 0; }
  int size() const override { return size_; }
  void barrier() override {}

 protected:
  void do_all_to_all_v(const void*, const Displaced&, void*, const Displaced&, uoe::DType) override {}
  uoe::Request do_ialltoallv(const void*, Displaced, void*, Displaced, uoe::DType) override { return {}; }
  void do_all_to_all_blocks(const void*, const uoe::PeerBlocks&, void*, const uoe::PeerBlocks&,
                            uoe::DType) override {}
  void do_all_to_all(const void*, void*, int, uoe::DType) override {}
  void do_all_reduce_sum(void*, int, uoe::DType) override {}
  uoe::Request do_iallreduce_sum(void*, int, uoe::DType) override { return {}; }
  void do_broadcast(void*, int, uoe::DType, int) override {}

 private:
  int size_;
};

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// 0.1 Gbit/s and 2 ms: a 25 000-byte message costs 2 ms + 2 ms, large against clock granularity.
constexpr double kGbps = 0.1, kLatencyUs = 2000;
constexpr double kBytesPerS = kGbps * 1e9 / 8, kLatencyS = kLatencyUs * 1e-6;

TEST(SimLink, AllToAllVTakesAtLeastTheSlowerDirection) {
  PretendWorld world(4);
  uoe::SimulatedLinkCommunicator link(world, kGbps, kLatencyUs);
  // Out: 6250 floats (25 000 B) to peer 1, 2500 (10 000 B) to peer 3; in: 1000 floats from peer 2.
  // Rows kept for itself (peer 0) cost nothing.
  const std::vector<int> out{500, 6250, 0, 2500}, in{500, 0, 1000, 0};
  std::vector<float> send(9250), recv(1500);
  const double t_out = 2 * kLatencyS + (25000.0 + 10000.0) / kBytesPerS;  // 9.0 ms
  const double t_in = kLatencyS + 4000.0 / kBytesPerS;                    // 2.32 ms
  const auto t0 = Clock::now();
  link.all_to_all_v(std::span<const float>(send), std::span<const int>(out), std::span<float>(recv),
                    std::span<const int>(in));
  EXPECT_GE(seconds_since(t0), t_out);
  EXPECT_NEAR(link.modeled_seconds(), std::max(t_out, t_in), 1e-12);
}

TEST(SimLink, NonBlockingAllToAllVWaitsOutTheModelInWait) {
  PretendWorld world(2);
  uoe::SimulatedLinkCommunicator link(world, kGbps, kLatencyUs);
  const std::vector<int> out{0, 6250}, in{0, 6250};
  std::vector<float> send(6250), recv(6250);
  const double t = kLatencyS + 25000.0 / kBytesPerS;  // 4 ms
  const auto t0 = Clock::now();
  uoe::Request r = link.ialltoallv(std::span<const float>(send), std::span<const int>(out), std::span<float>(recv),
                                   std::span<const int>(in));
  r.wait();
  EXPECT_GE(seconds_since(t0), t);
  EXPECT_NEAR(link.modeled_seconds(), t, 1e-12);
}

TEST(SimLink, AllReduceIsARingOfTwoPMinusOneSteps) {
  PretendWorld world(4);
  uoe::SimulatedLinkCommunicator link(world, kGbps, kLatencyUs);
  std::vector<float> data(10000);  // 40 000 B: 6 steps of 10 000 B
  const double t = 6 * (kLatencyS + 10000.0 / kBytesPerS);  // 6 × 2.8 ms
  auto t0 = Clock::now();
  link.all_reduce_sum(std::span<float>(data));
  EXPECT_GE(seconds_since(t0), t);
  t0 = Clock::now();
  uoe::Request r = link.iallreduce_sum(std::span<float>(data));
  r.wait();
  EXPECT_GE(seconds_since(t0), t);
  EXPECT_NEAR(link.modeled_seconds(), 2 * t, 1e-12);
}

TEST(SimLink, BroadcastAndBarrierClimbABinomialTree) {
  PretendWorld world(5);  // ⌈log2 5⌉ = 3 levels
  uoe::SimulatedLinkCommunicator link(world, kGbps, kLatencyUs);
  std::vector<double> data(1250);  // 10 000 B
  const double t_bcast = 3 * (kLatencyS + 10000.0 / kBytesPerS), t_barrier = 3 * kLatencyS;
  auto t0 = Clock::now();
  link.broadcast(std::span<double>(data), 0);
  EXPECT_GE(seconds_since(t0), t_bcast);
  t0 = Clock::now();
  link.barrier();
  EXPECT_GE(seconds_since(t0), t_barrier);
  EXPECT_NEAR(link.modeled_seconds(), t_bcast + t_barrier, 1e-12);
}

TEST(SimLink, OneRankCostsNothingAndBadLinksAreRefused) {
  PretendWorld world(1);
  uoe::SimulatedLinkCommunicator link(world, kGbps, kLatencyUs);
  std::vector<float> data(1000);
  link.all_reduce_sum(std::span<float>(data));
  link.barrier();
  EXPECT_EQ(link.modeled_seconds(), 0.0);
  EXPECT_ANY_THROW(uoe::SimulatedLinkCommunicator(world, 0, 1));
  EXPECT_ANY_THROW(uoe::SimulatedLinkCommunicator(world, 1, -1));
}

}  // namespace
