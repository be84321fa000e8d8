// Shared fixture of the GPU tests: skips visibly (GTEST_SKIP with device_probe's reason) when no GPU
// is usable, so these tests build and "pass as skipped" on machines without one; with a GPU, every
// test compares a CUDA kernel with its CPU counterpart.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "runtime/cuda/memory.cuh"
#include "runtime/device.hpp"
#include "runtime/rng.hpp"

namespace uoe::gpu_test {

class Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    const DeviceProbe p = device_probe();
    if (!p.available) GTEST_SKIP() << "no GPU, skipped: " << p.message;
    stream_ = std::make_unique<cuda::Stream>();
  }
  cudaStream_t s() const { return stream_->get(); }

  template <class T>
  cuda::DeviceBuffer<T> up(const std::vector<T>& v) {
    cuda::DeviceBuffer<T> b;
    b.upload(std::span<const T>(v), s());
    return b;
  }
  // Waits for the stream, then copies the whole buffer back.
  template <class T>
  std::vector<T> down(const cuda::DeviceBuffer<T>& b) {
    std::vector<T> v(b.size());
    b.download(std::span<T>(v), s());
    stream_->synchronize();
    return v;
  }

 private:
  std::unique_ptr<cuda::Stream> stream_;
};

inline std::vector<float> random_vector(size_t n, uint64_t stream, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * rng_normal(11, stream, i);
  return v;
}
// Small integers in [−r, r]: products and sums of a few hundred stay exact in float, so GEMMs and
// scatter-adds must match bit for bit whatever the summation order.
inline std::vector<float> integer_vector(size_t n, uint64_t stream, int r) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(static_cast<int>(rng_below(11, stream, i, 2 * r + 1)) - r);
  return v;
}

// |gpu − cpu| ≤ atol + rtol·|cpu| per element; the reference must not be all zero.
inline void expect_close(const std::vector<float>& gpu, const std::vector<float>& cpu, double atol, double rtol,
                         const char* what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  double norm = 0;
  int reported = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    norm += std::fabs(cpu[i]);
    if (!(std::fabs(gpu[i] - cpu[i]) <= atol + rtol * std::fabs(cpu[i])) && reported++ < 10)
      ADD_FAILURE() << what << "[" << i << "]: gpu " << gpu[i] << " cpu " << cpu[i];
  }
  EXPECT_EQ(reported, 0) << what << ": elements out of tolerance";
  EXPECT_GT(norm, 0.0) << what << ": reference is all zero";
}
inline void expect_equal(const std::vector<float>& gpu, const std::vector<float>& cpu, const char* what) {
  expect_close(gpu, cpu, 0.0, 0.0, what);
}

}  // namespace uoe::gpu_test
