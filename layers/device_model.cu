// DeviceModel (layers/device_model.hpp): DeviceStep (layers/device_step.hpp) over the GPU backend
// below — each backend call is the cuda:: twin of the CPU kernel DeviceStep's CPU tests use.
// Compiled, never run (no GPU here).
#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "layers/device_model.hpp"
#include "layers/device_step.hpp"
#include "layers/router.hpp"
#include "parallel/comm.hpp"
#include "parallel/mpi_exchange.hpp"
#include "parallel/nccl_comm.hpp"
#include "parallel/stream_scheduler.hpp"
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/experts.cuh"
#include "runtime/cuda/gemm.cuh"
#include "runtime/cuda/kernels.cuh"
#include "runtime/cuda/memory.cuh"
#include "runtime/error.hpp"

namespace uoe {
namespace {

// The GPU of this rank: node-local MPI rank mod the GPUs of the node (several ranks may share one:
// this path talks over MPI, not NCCL, which would need one GPU per rank).
int pick_device() {
  int count = 0;
  UOE_CHECK_CUDA(cudaGetDeviceCount(&count));
  if (count <= 0) fail("--device cuda: no GPU found on this node");
  int local = 0, initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Comm node;
    UOE_CHECK_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    UOE_CHECK_MPI(MPI_Comm_rank(node, &local));
    UOE_CHECK_MPI(MPI_Comm_free(&node));
  }
  const int device = local % count;
  UOE_CHECK_CUDA(cudaSetDevice(device));
  return device;
}

}  // namespace

// The GPU backend of DeviceStep (layers/device_step.hpp): every call is queued on one stream.
struct CudaStepBackend {
  template <class T>
  using Buffer = cuda::DeviceBuffer<T>;
  using Rows = cuda::DeviceExpertRows;
  using MlpCache = cuda::DeviceMlpCache;
  using AttnCache = cuda::DeviceAttnCache;
  using Scatter = cuda::ScatterPlan;

  cuda::Stream stream;
  cuda::Blas blas{stream.get()};
  cuda::DeviceBuffer<float> ln_scratch;
  cuda::DeviceBuffer<int> all_rows;  // {0, N}: the output bias as one "expert" over every token
  cuda::DeviceBuffer<double> loss_sum;
  cuda::DeviceBuffer<float> row_loss;
  int all_rows_n = -1;

  cudaStream_t s() const { return stream.get(); }

  // Exchanges (ep > 1): the StreamScheduler on the NCCL communicator's stream, ordered against the
  // compute stream by events; the host does not wait for them inside a step (end_step does).
  using Ticket = StreamScheduler::Ticket;
  std::unique_ptr<StreamScheduler> sched;  // null while every expert is on this rank (nothing travels)
  Ticket submit(const std::function<void()>& fn) {
    UOE_ASSERT(sched != nullptr, "device step: an exchange without a communication stream");
    return sched->submit([&fn](cudaStream_t) { fn(); });
  }
  void wait(Ticket t) { sched->wait(t); }
  void wait_all() { sched->wait_all(); }
  void end_step() {
    if (sched) sched->synchronize();
  }
  template <class T>
  void upload(Buffer<T>& b, std::span<const T> host) { b.upload(host, s()); }
  template <class T>
  void download(const Buffer<T>& b, std::span<T> host) { b.download(host, s()); }
  template <class T>
  void zero(Buffer<T>& b) { b.zero(s()); }
  void synchronize() { stream.synchronize(); }

  void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int N,
                         int C) {
    cuda::layernorm_forward(out, mean, rstd, x, w, b, N, C, s());
  }
  void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                          const float* mean, const float* rstd, int N, int C) {
    const int rows = std::max(1, std::min(N, 256));
    ln_scratch.resize(static_cast<size_t>(2) * rows * C);
    cuda::layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C, ln_scratch.data(), rows, s());
  }
  void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C) {
    cuda::gather_rows(out, table, ids, N, C, s());
  }
  void gather_rows_scaled(float* out, const float* table, const int32_t* ids, const float* scale, int N, int C) {
    cuda::gather_rows_scaled(out, table, ids, scale, N, C, s());
  }
  void row_dots(float* out, const float* a, const int32_t* ids, const float* b, int N, int C) {
    cuda::row_dots(out, a, ids, b, N, C, s());
  }
  void residual_bias_rows(float* out, const float* x, const float* bias, int N, int C) {
    cuda::residual_bias_rows(out, x, bias, N, C, s());
  }
  void scatter_plan(Scatter& plan, const int32_t* ids, int N, int table_rows) { plan.build(ids, N, table_rows, s()); }
  void scatter_add(float* table, const float* src, const Scatter& plan, int C, const float* row_scale) {
    cuda::scatter_add_rows(table, src, plan, C, 1.0f, row_scale, s());
  }
  void bias_grad(float* db, const float* dh, int N, int C) {
    if (all_rows_n != N) {
      const int range[2] = {0, N};
      all_rows.upload(std::span<const int>(range, 2), s());
      all_rows_n = N;
    }
    cuda::accumulate_expert_bias_grad(db, dh, all_rows.data(), 1, C, s());
  }
  double cross_entropy(bool backward, float* logits, const int32_t* targets, int N, int V, float grad_scale) {
    row_loss.resize(std::max(N, 1));
    loss_sum.resize(1);
    if (backward)
      cuda::crossentropy_forward_backward(loss_sum.data(), row_loss.data(), logits, targets, N, V, grad_scale, s());
    else
      cuda::crossentropy_forward(loss_sum.data(), row_loss.data(), logits, targets, N, V, s());
    double sum = 0;
    loss_sum.download(std::span<double>(&sum, 1), s());
    synchronize();
    return sum;
  }
  void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
            float beta, float* C, int ldc) {
    blas.gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  // The experts' row tables (host, and device copies of the offsets and positions); x sized for
  // the n rows (gathered by the step, or filled by the exchange over NCCL).
  void set_rows(Rows& rows, const std::vector<int>& offsets, const int32_t* seg, const int32_t* pos, int n, int d) {
    rows.n_experts = static_cast<int>(offsets.size()) - 1;
    rows.offsets = offsets;
    rows.seg.assign(seg, seg + n);
    rows.pos.assign(pos, pos + n);
    rows.offsets_dev.upload(std::span<const int>(rows.offsets), s());
    rows.pos_dev.upload(std::span<const int32_t>(rows.pos), s());
    rows.x.resize(static_cast<size_t>(n) * d);
  }
  void mlp_forward(float* y, MlpCache& c, const Rows& r, const float* W1, const float* b1, const float* W2, int d,
                   int f) {
    cuda::mlp_experts_forward(y, c, r, W1, b1, W2, d, f, blas);
  }
  void mlp_backward_data(float* dx, const float* dy, MlpCache& c, const Rows& r, const float* W1, const float* W2,
                         int d, int f) {
    cuda::mlp_experts_backward_data(dx, dy, c, r, W1, W2, d, f, blas);
  }
  void mlp_backward_weights(float* dW1, float* db1, float* dW2, const float* dy, const MlpCache& c, const Rows& r,
                            int d, int f) {
    cuda::mlp_experts_backward_weights(dW1, db1, dW2, dy, c, r, d, f, blas);
  }
  void attn_forward(float* y, AttnCache& c, const Rows& r, const float* Wqkv, const float* Wo, int d, int g, int dh) {
    cuda::attn_experts_forward(y, c, r, Wqkv, Wo, d, g, dh, blas);
  }
  void attn_backward_data(float* dx, const float* dy, AttnCache& c, const Rows& r, const float* Wqkv,
                          const float* Wo, int d, int g, int dh) {
    cuda::attn_experts_backward_data(dx, dy, c, r, Wqkv, Wo, d, g, dh, blas);
  }
  void attn_backward_weights(float* dWqkv, float* dWo, const float* dy, const AttnCache& c, const Rows& r, int d,
                             int g, int dh) {
    cuda::attn_experts_backward_weights(dWqkv, dWo, dy, c, r, d, g, dh, blas);
  }
};

// Expert parallelism on GPUs: the rows' communicator (NCCL over the expert-parallel group), or
// null when every expert is on this rank.
std::unique_ptr<NcclCommunicator> rows_communicator(const Model& host, MpiCommunicator* ep_group) {
  if (host.exchange()->identity()) return nullptr;
  if (!ep_group) fail("--device cuda: expert parallelism needs the expert-parallel group");
  return std::make_unique<NcclCommunicator>(ep_group->handle());
}

struct DeviceModel::Impl {
  int device;
  CudaStepBackend be;
  std::unique_ptr<NcclCommunicator> nccl;  // ep > 1: rows GPU to GPU
  std::unique_ptr<MpiExchange> exchange;   // ep > 1: counts and metadata over MPI, rows over nccl
  DeviceStep<CudaStepBackend> step;
  Impl(Model& host, MpiCommunicator* ep_group, int chunks)
      : device(pick_device()),
        be(),
        nccl(rows_communicator(host, ep_group)),
        exchange(nccl ? std::make_unique<MpiExchange>(*ep_group, nccl.get()) : nullptr),
        step(host, be, exchange.get()) {
    if (nccl) be.sched = std::make_unique<StreamScheduler>(be.s(), nccl->stream(), nccl.get());
    step.set_chunks(chunks);
  }
};

DeviceModel::DeviceModel(Model& host, MpiCommunicator* ep_group, int chunks)
    : impl_(std::make_unique<Impl>(host, ep_group, chunks)) {}

void DeviceModel::take_exchange_seconds(double* busy, double* exposed) {
  StreamScheduler* sched = impl_->be.sched.get();
  *busy = *exposed = 0;
  if (!sched) return;  // every expert on this rank: nothing travels
  *busy = sched->busy_seconds();
  *exposed = sched->exposed_seconds();
  sched->reset_counters();
}

void DeviceModel::close() {
  if (impl_->nccl) impl_->nccl->close();
}
DeviceModel::~DeviceModel() = default;

void DeviceModel::forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale,
                                   ForwardStats* stats) {
  impl_->step.forward_backward(inputs, targets, B, loss_scale, stats);
}

void DeviceModel::forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats) {
  impl_->step.forward_eval(inputs, targets, B, stats);
}

void DeviceModel::set_backward_hook(std::function<void(int block)> hook) { impl_->step.set_backward_hook(std::move(hook)); }

const Routing& DeviceModel::routing(int b) const { return impl_->step.routing(b); }

std::string DeviceModel::describe() const {
  int count = 0;
  UOE_CHECK_CUDA(cudaGetDeviceCount(&count));
  cudaDeviceProp prop{};
  UOE_CHECK_CUDA(cudaGetDeviceProperties(&prop, impl_->device));
  return "GPU " + std::to_string(impl_->device) + " of " + std::to_string(count) + ": " + prop.name + " (sm_" +
         std::to_string(prop.major) + std::to_string(prop.minor) + ")";
}

}  // namespace uoe
