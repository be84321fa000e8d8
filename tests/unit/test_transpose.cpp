// runtime/kernels.hpp's transpose: every element moved to its place, and nothing else written,
// for shapes with and without whole 8 × 8 blocks and padded leading dimensions.
#include <gtest/gtest.h>

#include <vector>

#include "runtime/kernels.hpp"

namespace uoe {
namespace {

TEST(Transpose, MovesEveryElementAndWritesNothingElse) {
  for (int rows : {1, 7, 8, 9, 16, 23, 40, 45, 64, 70})
    for (int cols : {1, 5, 8, 13, 32, 40}) {
      const int ldi = cols + 3, ldo = rows + 5;
      std::vector<float> in(static_cast<size_t>(rows) * ldi), out(static_cast<size_t>(cols) * ldo, -1.0f);
      for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i) + 0.5f;
      transpose(out.data(), ldo, in.data(), ldi, rows, cols);
      size_t bad = 0;
      for (int c = 0; c < cols; ++c)
        for (int r = 0; r < ldo; ++r) {
          const float want = r < rows ? in[static_cast<size_t>(r) * ldi + c] : -1.0f;
          bad += out[static_cast<size_t>(c) * ldo + r] != want;
        }
      EXPECT_EQ(bad, 0u) << rows << " x " << cols;
    }
}

}  // namespace
}  // namespace uoe
