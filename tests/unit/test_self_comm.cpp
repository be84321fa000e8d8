// uoe::SelfCommunicator: a world of one rank behaves as MPI would with one rank — every exchange
// delivers the rank's own data to itself, in the receive layout; reductions are the identity.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "parallel/comm.hpp"
#include "runtime/error.hpp"

namespace {

TEST(SelfCommunicator, AllToAllVCopiesToItself) {
  uoe::SelfCommunicator c;
  ASSERT_EQ(c.size(), 1);
  std::vector<float> send = {1, 2, 3, 4}, recv(4, 0.0f);
  const std::vector<int> counts = {4};
  c.all_to_all_v<float>(send, counts, recv, counts);
  EXPECT_EQ(recv, send);
  std::vector<int32_t> s2 = {7, 8}, r2(2, 0);
  c.all_to_all<int32_t>(s2, r2);
  EXPECT_EQ(r2, s2);
}

TEST(SelfCommunicator, BlocksAreAStreamInBlockOrder) {
  uoe::SelfCommunicator c;
  std::vector<float> send(10);
  std::iota(send.begin(), send.end(), 0.0f);
  // Send blocks [6..9) then [0..4); receive into blocks of 2, 3 and 2 elements at scattered offsets.
  uoe::PeerBlocks s{{0, 2}, {6, 0}, {3, 4}};
  uoe::PeerBlocks r{{0, 3}, {8, 0, 4}, {2, 3, 2}};
  std::vector<float> recv(10, -1.0f);
  c.all_to_all_v<float>(send, s, recv, r);
  const std::vector<float> want = {8, 0, 1, -1, 2, 3, -1, -1, 6, 7};
  EXPECT_EQ(recv, want);
}

TEST(SelfCommunicator, CountsThatDisagreeAreAnError) {
  uoe::SelfCommunicator c;
  std::vector<float> send(4), recv(4);
  const std::vector<int> sc = {4}, rc = {3};
  EXPECT_THROW(c.all_to_all_v<float>(send, sc, recv, rc), uoe::Error);
}

TEST(SelfCommunicator, ReductionsAndBroadcastLeaveTheData) {
  uoe::SelfCommunicator c;
  std::vector<double> v = {1.5, -2.0};
  c.all_reduce_sum<double>(v);
  c.iallreduce_sum<double>(v).wait();
  c.broadcast<double>(v, 0);
  EXPECT_EQ(v, (std::vector<double>{1.5, -2.0}));
  EXPECT_THROW(c.broadcast<double>(v, 1), uoe::Error);
}

}  // namespace
