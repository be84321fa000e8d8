// DeviceModel (layers/device_model.hpp): Model::forward_backward step for step, on the GPU.
// Each section names the CPU code it mirrors in layers/model.cpp. Compiled, never run (no GPU here).
#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "layers/device_model.hpp"
#include "layers/router.hpp"
#include "parallel/comm.hpp"
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

template <class T>
std::span<const T> span_of(const std::vector<T>& v) {
  return std::span<const T>(v.data(), v.size());
}

}  // namespace

// One block's device state (Model::BlockCache's counterpart; chunks = 1, identity exchange).
struct DeviceBlock {
  bool attention = false, routed = true;
  RouterSpec router;
  cuda::DeviceBuffer<float> hin, xn, mean, rstd;  // [N, d], [N, d], [N], [N]
  std::vector<float> xn_host;                     // routed: the router's input, on the host
  Routing routing;
  SourceRows src;
  std::vector<float> row_gate;                    // [R] gate weight of each source row (host)
  cuda::DeviceBuffer<int32_t> token;              // [R] src.token
  cuda::DeviceBuffer<float> gate;                 // [R] row_gate
  cuda::ScatterPlan by_token;                     // source rows grouped by token, ascending
  cuda::DeviceExpertRows rows;                    // the experts' input rows (source order)
  cuda::DeviceBuffer<float> y;                    // [R, d] expert outputs
  cuda::DeviceMlpCache mlp;
  cuda::DeviceAttnCache attn;
};

struct DeviceModel::Impl {
  Model& host;
  ModelSpec spec;
  int device = 0;
  cuda::Stream stream;
  cuda::Blas blas;
  cuda::DeviceBuffer<float> values, grads;  // the ParamStore's arenas, same layout
  cuda::PinnedBuffer<float> grads_host;     // download staging
  std::vector<std::unique_ptr<DeviceBlock>> blocks;  // [2L] (not movable: owns streams' uploaders)
  cuda::DeviceBuffer<int32_t> tokens, targets;
  cuda::ScatterPlan embed_plan;
  cuda::DeviceBuffer<float> h, hf, fmean, frstd, logits, row_loss;
  cuda::DeviceBuffer<double> loss_sum;
  cuda::DeviceBuffer<float> dhf, dh, dy, dx, dxn, ln_scratch, rowdot;
  cuda::DeviceBuffer<int> all_rows;  // {0, N}: the output bias as one "expert" over every token
  std::vector<float> rowdot_host, dgate_host, dxn_host;
  std::function<void(int)> hook;

  explicit Impl(Model& m) : host(m), spec(m.spec()), device(pick_device()), stream(), blas(stream.get()) {
    if (!host.all_experts_local())
      fail("--device cuda: this rank holds only part of the experts (--ep > 1); the GPU path runs with --ep 1 "
           "for now (expert parallelism on the device, over NCCL, is not wired: docs/gpu.md)");
    const int nb = 2 * spec.layers;
    for (int b = 0; b < nb; ++b) {
      auto c = std::make_unique<DeviceBlock>();
      c->attention = b % 2 == 0;
      c->routed = spec.block_routed(b);
      c->router = block_router_spec(spec, b);
      blocks.push_back(std::move(c));
    }
    grads_host.resize(host.params().total());
  }

  cudaStream_t s() const { return stream.get(); }
  const float* val(int i) const { return values.data() + host.params().info(i).offset; }
  float* grad(int i) { return grads.data() + host.params().info(i).offset; }

  void upload_params() {
    const FloatBuffer& v = host.params().values();
    values.upload(std::span<const float>(v.data(), host.params().total()), s());
  }

  void layernorm_backward(float* dx_acc, int scale, int bias, const float* dout, const float* x, const float* mean,
                          const float* rstd, int N) {
    const int d = spec.d, rows = std::max(1, std::min(N, 256));
    ln_scratch.resize(static_cast<size_t>(2) * rows * d);
    cuda::layernorm_backward(dx_acc, grad(scale), grad(bias), dout, x, val(scale), mean, rstd, N, d,
                             ln_scratch.data(), rows, s());
  }

  // Model::block_forward with chunks = 1 and an identity exchange.
  void block_forward(int b, float* out, int B, bool dropless, BlockStats* bs) {
    DeviceBlock& c = *blocks[b];
    const BlockParams& bp = host.blocks()[b];
    const int d = spec.d, T = spec.seq_len, N = B * T;
    c.xn.resize(static_cast<size_t>(N) * d);
    c.mean.resize(N);
    c.rstd.resize(N);
    cuda::layernorm_forward(c.xn.data(), c.mean.data(), c.rstd.data(), c.hin.data(), val(bp.norm_scale),
                            val(bp.norm_bias), N, d, s());
    // 1. Route on the host with the CPU router (its parameters are the host's master copy).
    Routing& r = c.routing;
    if (c.routed) {
      c.xn_host.resize(static_cast<size_t>(N) * d);
      c.xn.download(std::span<float>(c.xn_host), s());
      stream.synchronize();
      router_forward(r, c.router, c.xn_host.data(), host.params().value(bp.router_w),
                     host.params().value(bp.router_b), N, d, dropless);
    } else {
      routing_all_to_one(r, N, d);
    }
    // 2. Source rows (shared with the CPU model), their tables to the device.
    source_rows_build(c.src, r, B, T, 1);
    const int R = c.src.rows();
    c.row_gate.resize(R);
    for (int i = 0; i < R; ++i) c.row_gate[i] = r.gate[c.src.gate[i]];
    c.token.upload(span_of(c.src.token), s());
    c.gate.upload(span_of(c.row_gate), s());
    c.rows.n_experts = r.E;
    c.rows.offsets = c.src.chunk_offsets[0];
    c.rows.seg = c.src.seg;
    c.rows.pos = c.src.pos;
    c.rows.offsets_dev.upload(span_of(c.rows.offsets), s());
    c.rows.pos_dev.upload(span_of(c.rows.pos), s());
    c.rows.x.resize(static_cast<size_t>(R) * d);
    cuda::gather_rows(c.rows.x.data(), c.xn.data(), c.token.data(), R, d, s());
    // 3. Experts, outputs in source order.
    c.y.resize(static_cast<size_t>(R) * d);
    if (c.attention)
      cuda::attn_experts_forward(c.y.data(), c.attn, c.rows, val(bp.w_in), val(bp.w_out), d, spec.heads_per_expert(),
                                 spec.head_dim(), blas);
    else
      cuda::mlp_experts_forward(c.y.data(), c.mlp, c.rows, val(bp.w_in), val(bp.b_in), val(bp.w_out), d,
                                spec.expert_ff(), blas);
    // 4. Combine: out = hin + bias, then each token's rows in ascending row order, gate-weighted.
    cuda::residual_bias_rows(out, c.hin.data(), val(bp.b_out), N, d, s());
    c.by_token.build(c.token.data(), R, N, s());
    cuda::scatter_add_rows(out, c.y.data(), c.by_token, d, 1.0f, c.gate.data(), s());
    if (bs) block_stats_from_routing(bs, spec, b, r, T, c.attention, c.routed);
  }

  // Model::block_backward with chunks = 1 and an identity exchange; dh is the residual gradient.
  void block_backward(int b, int N, float loss_scale) {
    DeviceBlock& c = *blocks[b];
    const BlockParams& bp = host.blocks()[b];
    const int d = spec.d, R = c.src.rows();
    const Routing& r = c.routing;
    if (all_rows.size() != 2 || last_n_ != N) {
      const std::vector<int> range = {0, N};
      all_rows.upload(span_of(range), s());
      last_n_ = N;
    }
    cuda::accumulate_expert_bias_grad(grad(bp.b_out), dh.data(), all_rows.data(), 1, d, s());
    // Combine backward: dy = w·dh[token]; the gate gradients <dh[token], y> go to the host router.
    dy.resize(static_cast<size_t>(R) * d);
    dx.resize(static_cast<size_t>(R) * d);
    cuda::gather_rows_scaled(dy.data(), dh.data(), c.token.data(), c.gate.data(), R, d, s());
    dxn.resize(static_cast<size_t>(N) * d);
    if (c.routed) {
      rowdot.resize(R);
      cuda::row_dots(rowdot.data(), dh.data(), c.token.data(), c.y.data(), R, d, s());
      rowdot_host.resize(R);
      rowdot.download(std::span<float>(rowdot_host), s());
      stream.synchronize();
      dgate_host.assign(static_cast<size_t>(r.P) * r.k, 0.0f);
      for (int i = 0; i < R; ++i) dgate_host[c.src.gate[i]] += rowdot_host[i];  // the CPU's order
      dxn_host.assign(static_cast<size_t>(N) * d, 0.0f);
      router_backward(r, c.router, dgate_host.data(), c.xn_host.data(), host.params().value(bp.router_w),
                      dxn_host.data(), host.params().grad(bp.router_w), host.params().grad(bp.router_b), loss_scale);
      dxn.upload(span_of(dxn_host), s());
    } else {
      dxn.zero(s());
    }
    if (c.attention) {
      cuda::attn_experts_backward_data(dx.data(), dy.data(), c.attn, c.rows, val(bp.w_in), val(bp.w_out), d,
                                       spec.heads_per_expert(), spec.head_dim(), blas);
      cuda::attn_experts_backward_weights(grad(bp.w_in), grad(bp.w_out), dy.data(), c.attn, c.rows, d,
                                          spec.heads_per_expert(), spec.head_dim(), blas);
    } else {
      cuda::mlp_experts_backward_data(dx.data(), dy.data(), c.mlp, c.rows, val(bp.w_in), val(bp.w_out), d,
                                      spec.expert_ff(), blas);
      cuda::mlp_experts_backward_weights(grad(bp.w_in), grad(bp.b_in), grad(bp.w_out), dy.data(), c.mlp, c.rows, d,
                                         spec.expert_ff(), blas);
    }
    cuda::scatter_add_rows(dxn.data(), dx.data(), c.by_token, d, 1.0f, nullptr, s());
    layernorm_backward(dh.data(), bp.norm_scale, bp.norm_bias, dxn.data(), c.hin.data(), c.mean.data(),
                       c.rstd.data(), N);
  }

  // Model::forward: embedding, blocks (block b writes block b+1's input), final norm, logits.
  void forward(const int32_t* inputs, int B, bool dropless, ForwardStats* stats) {
    const int N = B * spec.seq_len, d = spec.d, V = spec.vocab, nb = 2 * spec.layers;
    for (int i = 0; i < N; ++i)
      if (inputs[i] < 0 || inputs[i] >= V) fail("token id ", inputs[i], " out of range [0, ", V, ")");
    tokens.upload(std::span<const int32_t>(inputs, N), s());
    h.resize(static_cast<size_t>(N) * d);
    for (auto& c : blocks) c->hin.resize(static_cast<size_t>(N) * d);
    cuda::gather_rows(nb > 0 ? blocks[0]->hin.data() : h.data(), val(host.embed_index()), tokens.data(), N, d, s());
    stats->blocks.assign(nb, BlockStats{});
    stats->aux_loss = 0;
    stats->flops = 0;
    for (int b = 0; b < nb; ++b) {
      block_forward(b, b + 1 < nb ? blocks[b + 1]->hin.data() : h.data(), B, dropless, &stats->blocks[b]);
      stats->aux_loss += stats->blocks[b].balance_loss + stats->blocks[b].z_loss;
      stats->flops += stats->blocks[b].flops;
    }
    stats->flops += flops_head_forward(spec, N);
    hf.resize(static_cast<size_t>(N) * d);
    fmean.resize(N);
    frstd.resize(N);
    cuda::layernorm_forward(hf.data(), fmean.data(), frstd.data(), h.data(), val(host.final_norm_scale_index()),
                            val(host.final_norm_bias_index()), N, d, s());
    logits.resize(static_cast<size_t>(N) * V);
    blas.gemm(false, true, N, V, d, 1.0f, hf.data(), d, val(host.embed_index()), d, 0.0f, logits.data(), V);
    stats->tokens = N;
  }

  double loss(const int32_t* targets_host, int N, bool backward, float grad_scale) {
    const int V = spec.vocab;
    targets.upload(std::span<const int32_t>(targets_host, N), s());
    row_loss.resize(std::max(N, 1));
    loss_sum.resize(1);
    if (backward)
      cuda::crossentropy_forward_backward(loss_sum.data(), row_loss.data(), logits.data(), targets.data(), N, V,
                                          grad_scale, s());
    else
      cuda::crossentropy_forward(loss_sum.data(), row_loss.data(), logits.data(), targets.data(), N, V, s());
    double sum = 0;
    loss_sum.download(std::span<double>(&sum, 1), s());
    stream.synchronize();
    return sum;
  }

  void forward_backward(const int32_t* inputs, const int32_t* targets_host, int B, float loss_scale,
                        ForwardStats* stats) {
    const int N = B * spec.seq_len, d = spec.d, V = spec.vocab, nb = 2 * spec.layers;
    upload_params();
    grads.resize(host.params().total());
    grads.zero(s());
    forward(inputs, B, /*dropless=*/false, stats);
    // Loss = mean CE: dlogits = (softmax − onehot) · loss_scale / N (Model::forward_backward).
    stats->ce_sum = loss(targets_host, N, /*backward=*/true, loss_scale / static_cast<float>(N));
    const int embed = host.embed_index();
    blas.gemm(true, false, V, d, N, 1.0f, logits.data(), V, hf.data(), d, 1.0f, grad(embed), d);
    dhf.resize(static_cast<size_t>(N) * d);
    blas.gemm(false, false, N, d, V, 1.0f, logits.data(), V, val(embed), d, 0.0f, dhf.data(), d);
    dh.resize(static_cast<size_t>(N) * d);
    dh.zero(s());
    layernorm_backward(dh.data(), host.final_norm_scale_index(), host.final_norm_bias_index(), dhf.data(), h.data(),
                       fmean.data(), frstd.data(), N);
    for (int b = nb - 1; b >= 0; --b) block_backward(b, N, loss_scale);
    embed_plan.build(tokens.data(), N, V, s());
    cuda::scatter_add_rows(grad(embed), dh.data(), embed_plan, d, 1.0f, nullptr, s());
    // The gradients join the host's arena (router weights were accumulated there directly; their
    // device entries are zero).
    const size_t total = host.params().total();
    grads.download(std::span<float>(grads_host.data(), total), s());
    stream.synchronize();
    float* g = host.params().grads().data();
    const float* gd = grads_host.data();
    for (size_t i = 0; i < total; ++i) g[i] += gd[i];
    if (hook) {
      for (int b = nb - 1; b >= 0; --b) hook(b);
      hook(-1);
    }
  }

  void forward_eval(const int32_t* inputs, const int32_t* targets_host, int B, ForwardStats* stats) {
    const int N = B * spec.seq_len;
    if (N == 0) {  // a rank with no evaluation batch left (ep 1: nothing collective inside)
      stats->blocks.assign(2 * spec.layers, BlockStats{});
      stats->ce_sum = 0;
      stats->tokens = 0;
      stats->aux_loss = stats->flops = 0;
      return;
    }
    upload_params();
    forward(inputs, B, /*dropless=*/true, stats);
    stats->ce_sum = loss(targets_host, N, /*backward=*/false, 1.0f);
  }

  int last_n_ = -1;
};

DeviceModel::DeviceModel(Model& host) : impl_(std::make_unique<Impl>(host)) {}
DeviceModel::~DeviceModel() = default;

void DeviceModel::forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale,
                                   ForwardStats* stats) {
  if (B == 0) fail("DeviceModel::forward_backward: empty micro-batch");
  impl_->forward_backward(inputs, targets, B, loss_scale, stats);
}

void DeviceModel::forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats) {
  impl_->forward_eval(inputs, targets, B, stats);
}

void DeviceModel::set_backward_hook(std::function<void(int block)> hook) { impl_->hook = std::move(hook); }

const Routing& DeviceModel::routing(int b) const {
  UOE_ASSERT(b >= 0 && b < static_cast<int>(impl_->blocks.size()));
  return impl_->blocks[b]->routing;
}

std::string DeviceModel::describe() const {
  int count = 0;
  UOE_CHECK_CUDA(cudaGetDeviceCount(&count));
  cudaDeviceProp prop{};
  UOE_CHECK_CUDA(cudaGetDeviceProperties(&prop, impl_->device));
  return "GPU " + std::to_string(impl_->device) + " of " + std::to_string(count) + ": " + prop.name + " (sm_" +
         std::to_string(prop.major) + std::to_string(prop.minor) + ")";
}

}  // namespace uoe
