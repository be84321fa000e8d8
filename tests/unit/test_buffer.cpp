// runtime/tensor.hpp's Buffer: the allocation is reused while it is big enough, a buffer that
// outgrows it takes an eighth more than asked (so rows per expert creeping up by a few rows a step
// do not reallocate every step), contents survive neither a regrowth nor resize's zero-fill, and
// high_water() — what the step's memory accounting counts — is the largest size asked, never the
// headroom.
#include <gtest/gtest.h>

#include <cstdint>

#include "runtime/tensor.hpp"

namespace uoe {
namespace {

TEST(Buffer, ReusesItsAllocationAndGrowsWithAnEighthOfHeadroom) {
  FloatBuffer b;
  b.resize_uninit(1000);
  EXPECT_EQ(b.capacity(), 1000u);  // the first allocation is exact
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
  float* first = b.data();
  b.resize_uninit(600);  // smaller: the same allocation
  EXPECT_EQ(b.data(), first);
  EXPECT_EQ(b.size(), 600u);
  EXPECT_EQ(b.capacity(), 1000u);
  b.resize_uninit(1040);  // outgrown by a few rows: an eighth more than asked
  EXPECT_EQ(b.size(), 1040u);
  EXPECT_EQ(b.capacity(), 1040u + 1040u / 8);
  const float* grown = b.data();
  b.resize_uninit(1100);  // within the headroom: no new allocation
  EXPECT_EQ(b.data(), grown);
  EXPECT_EQ(b.capacity(), 1040u + 1040u / 8);
  EXPECT_EQ(b.high_water(), 1100u);
  b.resize_uninit(500);
  EXPECT_EQ(b.high_water(), 1100u);  // the largest size asked, not the headroom
}

TEST(Buffer, ResizeZeroFillsWhatItHoldsAndMovesKeepTheAccounting) {
  FloatBuffer b;
  b.resize(64);
  for (size_t i = 0; i < b.size(); ++i) b[i] = 1.0f + static_cast<float>(i);
  b.resize(80);  // regrows: every element zero again
  size_t nonzero = 0;
  for (float v : b) nonzero += v != 0.0f;
  EXPECT_EQ(nonzero, 0u);
  FloatBuffer moved(std::move(b));
  EXPECT_EQ(moved.size(), 80u);
  EXPECT_EQ(moved.high_water(), 80u);
  EXPECT_EQ(b.high_water(), 0u);  // NOLINT(bugprone-use-after-move): a moved-from buffer is empty
  EXPECT_EQ(b.data(), nullptr);
}

}  // namespace
}  // namespace uoe
