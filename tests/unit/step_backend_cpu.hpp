// A CPU backend for DeviceStep (layers/device_step.hpp): each call is the CPU kernel the CUDA
// backend's call twins (runtime/kernels.hpp, layers/experts.hpp) on host buffers. With it the device
// step's orchestration runs here, and test_device_step.cpp holds it to the CPU Model bit for bit.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "layers/experts.hpp"
#include "layers/model.hpp"
#include "parallel/scheduler.hpp"
#include "runtime/gemm.hpp"
#include "runtime/kernels.hpp"

namespace uoe {

struct CpuStepBackend {
  template <class T>
  class Buffer {
   public:
    void resize(size_t n) { v_.resize(n); }
    T* data() { return v_.data(); }
    const T* data() const { return v_.data(); }
    size_t size() const { return v_.size(); }

   private:
    std::vector<T> v_;
  };
  using Rows = ExpertRows;
  using MlpCache = MlpExpertCache;
  using AttnCache = AttnExpertCache;
  struct Scatter {
    std::vector<int32_t> ids;  // destination of each source row; sources are added in index order
  };

  int uploads = 0, downloads = 0, syncs = 0;  // traffic the GPU path would have (for the tests)

  // Exchanges: on the communication thread of a threaded CommScheduler, or in line (the default).
  using Ticket = CommScheduler::Ticket;
  CommScheduler in_line{false};
  CommScheduler* sched = &in_line;
  Ticket submit(std::function<void()> fn) { return sched->submit(std::move(fn)); }
  void wait(Ticket t) { sched->wait(t); }
  void wait_all() { sched->wait_all(); }
  void end_step() { sched->wait_all(); }

  template <class T>
  void upload(Buffer<T>& b, std::span<const T> host) {
    b.resize(host.size());
    std::copy(host.begin(), host.end(), b.data());
    ++uploads;
  }
  template <class T>
  void download(const Buffer<T>& b, std::span<T> host) {
    std::copy(b.data(), b.data() + host.size(), host.begin());
    ++downloads;
  }
  template <class T>
  void zero(Buffer<T>& b) {
    std::fill(b.data(), b.data() + b.size(), T{});
  }
  void synchronize() { ++syncs; }

  void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int N,
                         int C) {
    uoe::layernorm_forward(out, mean, rstd, x, w, b, N, C);
  }
  void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                          const float* mean, const float* rstd, int N, int C) {
    uoe::layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, C);
  }
  void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C) {
    uoe::gather_rows(out, table, ids, N, C);
  }
  void gather_rows_scaled(float* out, const float* table, const int32_t* ids, const float* scale, int N, int C) {
    for (int i = 0; i < N; ++i)
      scale_row(out + static_cast<size_t>(i) * C, table + static_cast<size_t>(ids[i]) * C, C, scale[i]);
  }
  void row_dots(float* out, const float* a, const int32_t* ids, const float* b, int N, int C) {
    for (int i = 0; i < N; ++i)
      out[i] = dot_lanes(a + static_cast<size_t>(ids[i]) * C, b + static_cast<size_t>(i) * C, C);
  }
  void residual_bias_rows(float* out, const float* x, const float* bias, int N, int C) {
    for (int t = 0; t < N; ++t)
      residual_bias_row(out + static_cast<size_t>(t) * C, x + static_cast<size_t>(t) * C, bias, C);
  }
  void scatter_plan(Scatter& plan, const int32_t* ids, int N, int /*table_rows*/) { plan.ids.assign(ids, ids + N); }
  void scatter_add(float* table, const float* src, const Scatter& plan, int C, const float* row_scale) {
    for (size_t i = 0; i < plan.ids.size(); ++i)
      scatter_add_row(table + static_cast<size_t>(plan.ids[i]) * C, src + i * C, C, row_scale ? row_scale[i] : 1.0f);
  }
  void bias_grad(float* db, const float* dh, int N, int C) { sum_rows_into(db, dh, N, C); }
  double cross_entropy(bool backward, float* logits, const int32_t* targets, int N, int V, float grad_scale) {
    return backward ? crossentropy_forward_backward(logits, targets, N, V, grad_scale)
                    : crossentropy_forward(logits, targets, N, V);
  }
  void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
            float beta, float* C, int ldc) {
    uoe::gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
  void set_rows(Rows& rows, const std::vector<int>& offsets, const int32_t* seg, const int32_t* pos, int n, int d) {
    rows.n_experts = static_cast<int>(offsets.size()) - 1;
    rows.offsets = offsets;
    rows.seg.assign(seg, seg + n);
    rows.pos.assign(pos, pos + n);
    rows.x.resize_uninit(static_cast<size_t>(n) * d);
  }
  void mlp_forward(float* y, MlpCache& c, const Rows& r, const float* W1, const float* b1, const float* W2, int d,
                   int f) {
    mlp_experts_forward(y, c, r, W1, b1, W2, d, f);
  }
  void mlp_backward_data(float* dx, const float* dy, MlpCache& c, const Rows& r, const float* W1, const float* W2,
                         int d, int f) {
    mlp_experts_backward_data(dx, dy, c, r, W1, W2, d, f);
  }
  void mlp_backward_weights(float* dW1, float* db1, float* dW2, const float* dy, const MlpCache& c, const Rows& r,
                            int d, int f) {
    mlp_experts_backward_weights(dW1, db1, dW2, dy, c, r, d, f);
  }
  void attn_forward(float* y, AttnCache& c, const Rows& r, const float* Wqkv, const float* Wo, int d, int g, int dh) {
    attn_experts_forward(y, c, r, Wqkv, Wo, d, g, dh);
  }
  void attn_backward_data(float* dx, const float* dy, AttnCache& c, const Rows& r, const float* Wqkv,
                          const float* Wo, int d, int g, int dh) {
    attn_experts_backward_data(dx, dy, c, r, Wqkv, Wo, d, g, dh);
  }
  void attn_backward_weights(float* dWqkv, float* dWo, const float* dy, const AttnCache& c, const Rows& r, int d,
                             int g, int dh) {
    attn_experts_backward_weights(dWqkv, dWo, dy, c, r, d, g, dh);
  }
};

}  // namespace uoe
