// The stream scheduler's chunked pipeline without NCCL (single GPU): "dispatch" and "return" are
// device copies on the communication stream, the "expert" a GELU on the compute stream. The result
// must equal the CPU's GELU of every chunk, whatever the overlap; the accounting must see the
// exchanges (busy > 0). No timing is asserted (docs/architecture.md, Conventions).
#include "gpu_test.hpp"
#include "parallel/stream_scheduler.hpp"
#include "runtime/cuda/kernels.cuh"
#include "runtime/kernels.hpp"

namespace uoe::gpu_test {
namespace {

using StreamSchedulerGpu = Gpu;

TEST_F(StreamSchedulerGpu, ChunkedPipelineMatchesSerial) {
  const int chunks = 6, rows = 1000, C = 64;
  const size_t chunk_elems = static_cast<size_t>(rows) * C, n = chunk_elems * chunks;
  const auto x = random_vector(n, 1, 2.0f);
  std::vector<float> y(n);
  gelu_forward(y.data(), x.data(), static_cast<int64_t>(n));

  // The fixture's stream is the communication stream (it also carries uploads and downloads).
  cuda::Stream compute;
  auto src = up(x);
  cuda::DeviceBuffer<float> owner(n), owner_out(n), result(n);
  StreamScheduler sched(compute.get(), s(), nullptr);
  auto dispatch = [&](int c) {
    return sched.submit([&, c](cudaStream_t comm) {
      UOE_CHECK_CUDA(cudaMemcpyAsync(owner.data() + c * chunk_elems, src.data() + c * chunk_elems,
                                     chunk_elems * sizeof(float), cudaMemcpyDeviceToDevice, comm));
    });
  };
  StreamScheduler::Ticket next = dispatch(0);
  for (int c = 0; c < chunks; ++c) {
    sched.wait(next);
    if (c + 1 < chunks) next = dispatch(c + 1);
    cuda::gelu_forward(owner_out.data() + c * chunk_elems, owner.data() + c * chunk_elems,
                       static_cast<int64_t>(chunk_elems), compute.get());
    sched.submit([&, c](cudaStream_t comm) {
      UOE_CHECK_CUDA(cudaMemcpyAsync(result.data() + c * chunk_elems, owner_out.data() + c * chunk_elems,
                                     chunk_elems * sizeof(float), cudaMemcpyDeviceToDevice, comm));
    });
  }
  sched.wait_all();
  sched.synchronize();
  EXPECT_GT(sched.busy_seconds(), 0.0);
  EXPECT_GE(sched.exposed_seconds(), 0.0);
  expect_close(down(result), y, 1e-6, 1e-6, "pipelined GELU");
}

}  // namespace
}  // namespace uoe::gpu_test
