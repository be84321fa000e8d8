// The CUDA backend of the step (layers/step_cuda.hpp explains the design): every call is queued on
// one stream; each is the cuda:: twin of the CPU backend's operation of the same name.
// Compiled, never run (no GPU here).
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/router.hpp"
#include "layers/step_cuda.hpp"
#include "parallel/stream_scheduler.hpp"
#include "runtime/cuda/check.cuh"
#include "runtime/cuda/experts.cuh"
#include "runtime/cuda/gemm.cuh"
#include "runtime/cuda/kernels.cuh"
#include "runtime/cuda/memory.cuh"
#include "runtime/error.hpp"

namespace uoe {
class CudaBackend {
 public:
  static constexpr bool kHostMemory = false;
  static constexpr bool kBatchedMetadata = true;

  template <class T>
  using Buffer = cuda::DeviceBuffer<T>;
  using Rows = cuda::DeviceExpertRows;
  using MlpCache = cuda::DeviceMlpCache;
  using AttnCache = cuda::DeviceAttnCache;
  // Routing on the host: the block's normalised input and router weights, copied down.
  struct RouteCache {
    std::vector<float> xn, w, b;
  };
  // A block's rows on the device (token and gate of each source row) and one scatter plan per chunk
  // (sources ascending within a destination: each token's rows in row order).
  struct CombineTables {
    const SourceRows* src = nullptr;
    Buffer<int32_t> token;
    Buffer<float> gate, rowdot;
    std::vector<float> gate_host, rowdot_host;
    std::vector<std::unique_ptr<cuda::ScatterPlan>> plan;  // [chunks]
    int B = 0, T = 0, C = 1;
  };

  CudaBackend(int device, NcclCommunicator* nccl, cudaStream_t comm_stream) : device_(set_device(device)) {
    if (comm_stream) sched = std::make_unique<StreamScheduler>(s(), comm_stream, nccl);
  }

  cudaStream_t s() const { return stream.get(); }

  // Exchanges (ep > 1): the StreamScheduler on the NCCL communicator's stream, ordered against the
  // compute stream by events; the host does not wait for them inside a step (end_step does).
  using Ticket = StreamScheduler::Ticket;
  Ticket submit(const std::function<void()>& fn) {
    UOE_ASSERT(sched != nullptr, "step: an exchange without a communication stream");
    return sched->submit([&fn](cudaStream_t) { fn(); });
  }
  void wait(Ticket t) { sched->wait(t); }
  void wait_all() {
    if (sched) sched->wait_all();
  }
  double exchange_busy_seconds() const { return sched ? sched->busy_seconds() : 0.0; }
  void take_exchange_seconds(double* busy, double* exposed) {
    *busy = *exposed = 0;
    if (!sched) return;  // every expert on this rank: nothing travels
    *busy = sched->busy_seconds();
    *exposed = sched->exposed_seconds();
    sched->reset_counters();
  }
  std::string describe() const {
    int count = 0;
    UOE_CHECK_CUDA(cudaGetDeviceCount(&count));
    cudaDeviceProp prop{};
    UOE_CHECK_CUDA(cudaGetDeviceProperties(&prop, device_));
    return "GPU " + std::to_string(device_) + " of " + std::to_string(count) + ": " + prop.name + " (sm_" +
           std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  }
  void close() {}

  template <class T>
  void upload(Buffer<T>& b, std::span<const T> host) { b.upload(host, s()); }
  template <class T>
  void download(const Buffer<T>& b, std::span<T> host) { b.download(host, s()); }
  template <class T>
  void zero(Buffer<T>& b) { b.zero(s()); }
  void synchronize() { stream.synchronize(); }

  // The arenas: uploaded for each pass (the gradients continue from the host's, so micro-batches
  // accumulate in the CPU path's order), the gradients downloaded at its end.
  void begin_step(ParamStore& ps, bool with_grads) {
    const size_t total = ps.total();
    upload(values_, std::span<const float>(ps.values().data(), total));
    if (with_grads) upload(grads_, std::span<const float>(ps.grads().data(), total));
  }
  void end_step(ParamStore& ps, bool with_grads) {
    if (sched) sched->synchronize();
    if (with_grads) download(grads_, std::span<float>(ps.grads().data(), ps.total()));
    synchronize();
  }
  float* values() { return values_.data(); }
  float* grads() { return grads_.data(); }

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
  void residual_bias_rows(float* out, const float* x, const float* bias, int N, int C) {
    cuda::residual_bias_rows(out, x, bias, N, C, s());
  }
  void bias_grad(float* db, const float* dh, int N, int C) {
    if (all_rows_n != N) {
      const int range[2] = {0, N};
      all_rows.upload(std::span<const int>(range, 2), s());
      all_rows_n = N;
    }
    cuda::accumulate_expert_bias_grad(db, dh, all_rows.data(), 1, C, s());
  }
  void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
            float beta, float* C, int ldc) {
    blas.gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  double cross_entropy(bool backward, float* logits, const int32_t* targets_host, int N, int V, float grad_scale) {
    upload(targets_, std::span<const int32_t>(targets_host, N));
    row_loss.resize(std::max(N, 1));
    loss_sum.resize(1);
    if (backward)
      cuda::crossentropy_forward_backward(loss_sum.data(), row_loss.data(), logits, targets_.data(), N, V, grad_scale,
                                          s());
    else
      cuda::crossentropy_forward(loss_sum.data(), row_loss.data(), logits, targets_.data(), N, V, s());
    double sum = 0;
    loss_sum.download(std::span<double>(&sum, 1), s());
    synchronize();
    return sum;
  }
  void embedding_backward(float* dtable, const float* dh, const Buffer<int32_t>& tokens, int N, int V, int d) {
    embed_plan.build(tokens.data(), N, V, s());
    cuda::scatter_add_rows(dtable, dh, embed_plan, d, 1.0f, nullptr, s());
  }

  // Routing on the host with the CPU router, on the block's input and router weights copied down.
  void route(Routing& r, RouteCache& rc, const RouterSpec& spec, const float* xn, const float* w, const float* b,
             int N, int d, bool dropless) {
    const int E = spec.experts;
    rc.xn.resize(static_cast<size_t>(N) * d);
    rc.w.resize(static_cast<size_t>(d) * E);
    rc.b.resize(E);
    copy_down(rc.xn.data(), xn, rc.xn.size());
    copy_down(rc.w.data(), w, rc.w.size());
    copy_down(rc.b.data(), b, rc.b.size());
    synchronize();
    router_forward(r, spec, rc.xn.data(), rc.w.data(), rc.b.data(), N, d, dropless);
  }
  // The router's backward on the host: its weight gradients continue from the device's values and go
  // back up with the input gradient.
  void route_backward(const Routing& r, RouteCache& rc, const RouterSpec& spec, const float* dgate_host,
                      const float* /*xn*/, const float* /*w*/, float* dxn, float* dw, float* db, float loss_scale) {
    const int E = spec.experts, d = r.d, N = r.N;
    dxn_host_.assign(static_cast<size_t>(N) * d, 0.0f);
    dw_host_.resize(static_cast<size_t>(d) * E);
    db_host_.resize(E);
    copy_down(dw_host_.data(), dw, dw_host_.size());
    copy_down(db_host_.data(), db, db_host_.size());
    synchronize();
    router_backward(r, spec, dgate_host, rc.xn.data(), rc.w.data(), dxn_host_.data(), dw_host_.data(), db_host_.data(),
                    loss_scale);
    copy_up(dxn, dxn_host_.data(), dxn_host_.size());
    copy_up(dw, dw_host_.data(), dw_host_.size());
    copy_up(db, db_host_.data(), db_host_.size());
  }

  void row_tables(CombineTables& t, const SourceRows& src, const Routing& r) {
    t.src = &src;
    const int R = src.rows();
    t.gate_host.resize(R);
    for (int i = 0; i < R; ++i) t.gate_host[i] = r.gate[src.gate[i]];
    upload(t.token, std::span<const int32_t>(src.token));
    upload(t.gate, std::span<const float>(t.gate_host));
  }
  void gather_source_rows(float* out, const float* xn, const CombineTables& t, int r0, int n, int d) {
    if (n > 0) cuda::gather_rows(out, xn, t.token.data() + r0, n, d, s());
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
  void combine_prepare(CombineTables& t, int N, int B, int T, int C) {
    t.B = B;
    t.T = T;
    t.C = C;
    while (static_cast<int>(t.plan.size()) < C) t.plan.push_back(std::make_unique<cuda::ScatterPlan>());
    const SourceRows& src = *t.src;
    for (int ch = 0; ch < C; ++ch) {
      const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
      if (n > 0) t.plan[ch]->build(t.token.data() + r0, n, N, s());
    }
  }
  void combine_chunk(float* out, const float* hin, const float* bias, const float* y, const CombineTables& t, int ch,
                     int d) {
    const SourceRows& src = *t.src;
    if (hin) {
      const int t0 = chunk_first_token(ch, t.B, t.T, t.C), t1 = chunk_first_token(ch + 1, t.B, t.T, t.C);
      if (t1 > t0)
        cuda::residual_bias_rows(out + static_cast<size_t>(t0) * d, hin + static_cast<size_t>(t0) * d, bias, t1 - t0,
                                 d, s());
    }
    const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
    if (n > 0)
      cuda::scatter_add_rows(out, y + static_cast<size_t>(r0) * d, *t.plan[ch], d, 1.0f, t.gate.data() + r0, s());
  }
  void combine_backward(float* dy, float* dgate_host, const float* dh, CombineTables& t, const float* y, int i0,
                        int i1, bool output, bool gate, int d) {
    const int n = i1 - i0;
    if (n <= 0) return;
    if (output)
      cuda::gather_rows_scaled(dy + static_cast<size_t>(i0) * d, dh, t.token.data() + i0, t.gate.data() + i0, n, d,
                               s());
    if (gate) {
      t.rowdot.resize(n);
      cuda::row_dots(t.rowdot.data(), dh, t.token.data() + i0, y + static_cast<size_t>(i0) * d, n, d, s());
      t.rowdot_host.resize(n);
      download(t.rowdot, std::span<float>(t.rowdot_host));
      synchronize();
      for (int i = 0; i < n; ++i) dgate_host[t.src->gate[i0 + i]] += t.rowdot_host[i];  // the CPU path's order
    }
  }
  void combine_backward_inputs(float* dxn, const float* dx, const CombineTables& t, int d) {
    const SourceRows& src = *t.src;
    for (int ch = 0; ch < t.C; ++ch) {
      const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
      if (n > 0) cuda::scatter_add_rows(dxn, dx + static_cast<size_t>(r0) * d, *t.plan[ch], d, 1.0f, nullptr, s());
    }
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

  // The update side stays on the host for now: end_step downloaded the gradients into the host
  // arena (the master copy), the next begin_step uploads what AdamW made of the parameters.
  void reduce_gradients(GradientSync& sync, ParamStore& ps, int bucket) {
    CpuBackend::reduce_gradients(sync, ps, bucket);
  }
  double gradient_sum_squares(GradientSync* sync, ParamStore& ps) { return CpuBackend::gradient_sum_squares(sync, ps); }
  void adamw_update(AdamW& opt, ParamStore& ps, double lr, int step, float clip_scale) {
    CpuBackend::adamw_update(opt, ps, lr, step, clip_scale);
  }

 private:
  static int set_device(int device) {
    int count = 0;
    UOE_CHECK_CUDA(cudaGetDeviceCount(&count));
    if (count <= 0) fail("--device cuda: no GPU found on this node");
    if (device < 0 || device >= count) fail("--device cuda: GPU ", device, " requested, this node has ", count);
    UOE_CHECK_CUDA(cudaSetDevice(device));
    return device;
  }
  void copy_down(float* host, const float* dev, size_t n) {
    if (n) UOE_CHECK_CUDA(cudaMemcpyAsync(host, dev, n * sizeof(float), cudaMemcpyDeviceToHost, s()));
  }
  void copy_up(float* dev, const float* host, size_t n) {
    if (n) UOE_CHECK_CUDA(cudaMemcpyAsync(dev, host, n * sizeof(float), cudaMemcpyHostToDevice, s()));
    synchronize();  // the host vectors are reused by the next block
  }

  int device_;

 public:
  cuda::Stream stream;
  cuda::Blas blas{stream.get()};

 private:
  std::unique_ptr<StreamScheduler> sched;  // null while every expert is on this rank (nothing travels)
  Buffer<float> values_, grads_, ln_scratch, row_loss;
  Buffer<int32_t> targets_;
  Buffer<int> all_rows;  // {0, N}: the output bias as one "expert" over every token
  Buffer<double> loss_sum;
  int all_rows_n = -1;
  cuda::ScatterPlan embed_plan;
  std::vector<float> dxn_host_, dw_host_, db_host_;
};

template class Step<CudaBackend>;

std::unique_ptr<ModelStep> make_cuda_step(Model& model, const CudaStepOptions& o) {
  auto step = std::make_unique<Step<CudaBackend>>(model, o.rows_exchange, o.device, o.nccl, o.comm_stream);
  step->set_chunks(o.chunks);
  step->set_recompute(o.recompute);
  return step;
}

}  // namespace uoe
