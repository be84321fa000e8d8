// Compiled into both library variants (CMakeLists.txt, uoe_variant_sources): with UOE_HAVE_CUDA it
// can build the GPU step; without, --device cuda is refused here (uoe-train refuses it earlier, in
// device_require, with the same reason).
#include "launcher/make_step.hpp"

#include <string>

#include "layers/cpu_backend.hpp"
#include "runtime/bf16.hpp"
#include "runtime/device.hpp"
#include "runtime/error.hpp"
#ifdef UOE_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "layers/step_cuda.hpp"
#include "parallel/comm.hpp"
#include "parallel/mpi_exchange.hpp"
#include "parallel/nccl_comm.hpp"
#include "runtime/cuda/check.cuh"
#include "runtime/gpu_binding.hpp"
#endif

namespace uoe {
namespace {

#ifdef UOE_HAVE_CUDA
// The GPU step with the communicators it moves rows through (ep > 1): NCCL over the expert-parallel
// group for the rows, MPI over it for counts and metadata. Forwards everything to the step.
class GpuStep final : public ModelStep {
 public:
  GpuStep(Model& model, const Config& cfg, const StepSetup& setup) : ModelStep(model) {
    int count = 0;
    UOE_CHECK_CUDA(cudaGetDeviceCount(&count));
    if (count <= 0) fail("--device cuda: no GPU found on this node");
    const GpuChoice gpu = gpu_choose(count, setup.node_rank, setup.node_size, setup.node_visible_devices);
    if (gpu.device < 0) fail("--device cuda: ", gpu.error);
    CudaStepOptions o;
    o.device = gpu.device;
    o.chunks = cfg.overlap_chunks;
    o.recompute = recompute_parse(cfg.recompute);
    UOE_CHECK_CUDA(cudaSetDevice(o.device));
    if (!model.exchange()->identity()) {
      if (!setup.ep_group) fail("--device cuda: expert parallelism needs the expert-parallel group");
      // The node placement of the world (ProcessGroups), not of the ep group: with dp > 1 on a node
      // the ep group does not hold every rank of it, and its own split would give two ranks one GPU.
      nccl_ = std::make_unique<NcclCommunicator>(setup.ep_group->handle(),
                                                 NodeRanks{setup.node_rank, setup.node_size, setup.node_visible_devices});
      exchange_ = std::make_unique<MpiExchange>(*setup.ep_group, nccl_.get());
      exchange_->set_row_narrowing(nccl_.get());  // bf16 rows over NCCL (--precision bf16)
      o.rows_exchange = exchange_.get();
      o.nccl = nccl_.get();
      o.comm_stream = nccl_->stream();
    }
    // Several ranks: the gradient all-reduce on device buffers, over NCCL communicators of the
    // GradientSync's groups (the world; with ep > 1 and dp > 1 the data-parallel group too).
    const NodeRanks node{setup.node_rank, setup.node_size, setup.node_visible_devices};
    if (setup.world && setup.world->size() > 1) {
      grad_world_ = std::make_unique<NcclCommunicator>(setup.world->handle(), node);
      o.grad_world = grad_world_.get();
      const bool ep = setup.ep_group && setup.ep_group->size() > 1;
      if (ep && setup.dp_group && setup.dp_group->size() > 1) {
        grad_dp_ = std::make_unique<NcclCommunicator>(setup.dp_group->handle(), node);
        o.grad_dp = grad_dp_.get();
      }
    }
    step_ = make_cuda_step(model, o);
  }
  void forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale,
                        ForwardStats* stats) override {
    step_->forward_backward(inputs, targets, B, loss_scale, stats);
  }
  void forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats) override {
    step_->forward_eval(inputs, targets, B, stats);
  }
  void set_backward_hook(std::function<void(int)> hook) override { step_->set_backward_hook(std::move(hook)); }
  const Routing& routing(int b) const override { return step_->routing(b); }
  const float* probs() override { return step_->probs(); }
  void take_exchange_seconds(double* busy, double* exposed) override { step_->take_exchange_seconds(busy, exposed); }
  std::string describe() const override { return step_->describe(); }
  void set_phase_log(std::vector<PhaseTime>* log) override { step_->set_phase_log(log); }
  void reduce_gradients(GradientSync& sync, int bucket) override { step_->reduce_gradients(sync, bucket); }
  double gradient_sum_squares(GradientSync* sync) override { return step_->gradient_sum_squares(sync); }
  void optimizer_update(AdamW& opt, double lr, int step, float clip_scale) override {
    step_->optimizer_update(opt, lr, step, clip_scale);
  }
  void zero_gradients() override { step_->zero_gradients(); }
  void state_to_host(AdamW* opt) override { step_->state_to_host(opt); }
  void state_from_host() override { step_->state_from_host(); }
  // Frees the NCCL communicator (collective over the expert-parallel group); without it the
  // destructor aborts NCCL (local).
  void close() override {
    step_->close();
    if (nccl_) nccl_->close();
    if (grad_dp_) grad_dp_->close();
    if (grad_world_) grad_world_->close();
  }

 private:
  std::unique_ptr<NcclCommunicator> nccl_;  // ep > 1: rows GPU to GPU
  std::unique_ptr<MpiExchange> exchange_;   // ep > 1: counts and metadata over MPI, rows over nccl_
  std::unique_ptr<NcclCommunicator> grad_world_, grad_dp_;  // several ranks: the gradient all-reduce
  std::unique_ptr<ModelStep> step_;
};
#endif

}  // namespace

std::unique_ptr<ModelStep> make_step(const Config& cfg, Model& model, const StepSetup& setup) {
  compute_precision_set(precision_parse(cfg.precision));  // the process's (runtime/bf16.hpp)
  if (device_parse(cfg.device) == Device::cuda) {
#ifdef UOE_HAVE_CUDA
    return std::make_unique<GpuStep>(model, cfg, setup);
#else
    fail("--device cuda: built without CUDA (reconfigure with -DUOE_CUDA=ON)");
#endif
  }
  auto step = std::make_unique<CpuStep>(model);
  step->backend().set_scheduler(setup.scheduler);
  step->set_chunks(cfg.overlap_chunks);
  step->set_recompute(recompute_parse(cfg.recompute));
  return step;
}

MemoryLimit step_memory_limit(const Config& cfg, const StepSetup& setup) {
  if (device_parse(cfg.device) != Device::cuda || cfg.memory_limit != "auto")
    return memory_limit(cfg.memory_limit, setup.node_size);
  MemoryLimit lim;
#ifdef UOE_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count <= 0) return lim;
  const GpuChoice gpu = gpu_choose(count, setup.node_rank, setup.node_size, setup.node_visible_devices);
  if (gpu.device < 0) return lim;
  size_t free_bytes = 0, total_bytes = 0;
  UOE_CHECK_CUDA(cudaSetDevice(gpu.device));
  UOE_CHECK_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
  lim.bytes = static_cast<double>(free_bytes);
  lim.source = "free memory of GPU " + std::to_string(gpu.device) + " (" +
               std::to_string(free_bytes >> 20) + " of " + std::to_string(total_bytes >> 20) + " MiB)";
#endif
  return lim;
}

}  // namespace uoe
