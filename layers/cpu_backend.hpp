// The CPU backend of the step (layers/step.hpp): the production CPU path. Buffers are host memory,
// the parameters and gradients are the ParamStore's arenas used in place, the GEMMs are the BLAS
// library's (runtime/gemm.hpp) and the rest are the kernels of runtime/kernels.hpp and
// layers/experts.hpp. Its private fusions (the pipeline does not know them):
//   - the combine is one pass over each token: its residual + bias, then its rows (at most k, in
//     row order) summed into it while it is in cache — the same additions in the same order as a
//     residual pass followed by a scatter-add by row;
//   - the combine backward forms a row's output gradient and its gate's gradient in one pass;
//   - routing, its backward and the row tables need no copies: the router reads the normalised
//     rows where the step wrote them.
// Exchanges run on a CommScheduler (parallel/scheduler.hpp): a communication thread, or in line.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "layers/experts.hpp"
#include "layers/model.hpp"
#include "layers/router.hpp"
#include "layers/step.hpp"
#include "parallel/scheduler.hpp"
#include "runtime/bf16.hpp"
#include "runtime/tensor.hpp"

namespace uoe {

class CpuBackend {
 public:
  static constexpr bool kHostMemory = true;
  static constexpr bool kBatchedMetadata = false;

  // Grow-only host buffers; resize leaves the contents undefined (the step zeroes what it accumulates into).
  template <class T>
  class Buffer {
   public:
    void resize(size_t n) { b_.resize_uninit(n); }
    T* data() { return b_.data(); }
    const T* data() const { return b_.data(); }
    size_t size() const { return b_.size(); }
    size_t capacity() const { return b_.capacity(); }
    size_t high_water() const { return b_.high_water(); }

   private:
    uoe::Buffer<T> b_;
  };
  using Rows = ExpertRows;
  using MlpCache = MlpExpertCache;
  using AttnCache = AttnExpertCache;
  struct RouteCache {};  // the router reads the step's own buffers
  // A block's rows as the combine sees them: pointers into the step's host tables, and each token's
  // rows (CSR, ascending) once combine_prepare has built them.
  struct CombineTables {
    const SourceRows* src = nullptr;
    const Routing* routing = nullptr;
    std::vector<int> first, rows;  // [N + 1], [R]
    int B = 0, T = 0, C = 1;
  };

  // The bytes a buffer, a chunk's rows, an expert cache, a block's row tables hold (their
  // allocations; a host buffer's at its largest size, its untouched headroom aside): Step::held_bytes.
  template <class T>
  static double bytes_of(const Buffer<T>& b) {
    return static_cast<double>(sizeof(T) * b.high_water());
  }
  static double bytes_of(const Rows& r);
  static double bytes_of(const MlpCache& c);
  static double bytes_of(const AttnCache& c);
  static double bytes_of(const CombineTables& t);

  // Exchanges: on `sched` (the trainer's communication thread), in line by default.
  using Ticket = CommScheduler::Ticket;
  void set_scheduler(CommScheduler* sched) { sched_ = sched ? sched : &in_line_; }
  Ticket submit(std::function<void()> fn) { return sched_->submit(std::move(fn)); }
  void wait(Ticket t) { sched_->wait(t); }
  void wait_all() { sched_->wait_all(); }
  double exchange_busy_seconds() const { return sched_->busy_seconds(); }
  void take_exchange_seconds(double* busy, double* exposed);
  std::string describe() const { return "CPU"; }
  void close() {}

  template <class T>
  void upload(Buffer<T>& b, std::span<const T> host) {
    b.resize(host.size());
    std::copy(host.begin(), host.end(), b.data());
  }
  template <class T>
  void download(const Buffer<T>& b, std::span<T> host) {
    std::copy(b.data(), b.data() + host.size(), host.begin());
  }
  template <class T>
  void zero(Buffer<T>& b) {
    std::fill(b.data(), b.data() + b.size(), T{});
  }
  void synchronize() {}

  void begin_step(ParamStore& ps, bool /*with_grads*/) { ps_ = &ps; }
  void end_step(ParamStore&, bool) {}
  float* values() { return ps_->values().data(); }
  float* grads() { return ps_->grads().data(); }

  void layernorm_forward(float* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int N,
                         int C);
  void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                          const float* mean, const float* rstd, int N, int C);
  void gather_rows(float* out, const float* table, const int32_t* ids, int N, int C);
  void residual_bias_rows(float* out, const float* x, const float* bias, int N, int C);
  void bias_grad(float* db, const float* dh, int N, int C);
  void gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
            float beta, float* C, int ldc);
  void round_bf16(float* x, size_t n) { bf16_round_inplace(x, n); }
  double cross_entropy(bool backward, float* logits, const int32_t* targets_host, int N, int V, float grad_scale);
  void embedding_backward(float* dtable, const float* dh, const Buffer<int32_t>& tokens, int N, int V, int d);

  void route(Routing& r, RouteCache&, const RouterSpec& spec, const float* xn, const float* w, const float* b, int N,
             int d, bool dropless);
  void route_backward(const Routing& r, RouteCache&, const RouterSpec& spec, const float* dgate_host, const float* xn,
                      const float* w, float* dxn, float* dw, float* db, float loss_scale);

  // The source rows built here, on the host (source_rows_build), from B sequences of T tokens in C
  // chunks.
  void row_tables(CombineTables& t, SourceRows& src, Routing& r, RouteCache&, int B, int T, int C) {
    source_rows_build(src, r, B, T, C);
    t.src = &src;
    t.routing = &r;
  }
  void gather_source_rows(float* out, const float* xn, const CombineTables& t, int r0, int n, int d);
  void set_rows(Rows& rows, const std::vector<int>& offsets, const int32_t* seg, const int32_t* pos, int n, int d);
  // The positions on both sides are the host's tables (they travel with the metadata here).
  const int32_t* source_positions(const CombineTables& t) const { return t.src->pos.data(); }
  int32_t* owner_positions(Rows& rows, int n, int /*T*/) {
    rows.pos.resize(n);
    return rows.pos.data();
  }
  // The rows of chunk ch that did not travel: its source rows' table.
  void set_source_rows(Rows& rows, const CombineTables& t, int ch, int d) {
    const SourceRows& src = *t.src;
    const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
    set_rows(rows, src.chunk_offsets[ch], src.seg.data() + r0, src.pos.data() + r0, n, d);
  }
  void combine_prepare(CombineTables& t, int N, int B, int T, int C);
  void combine_chunk(float* out, const float* hin, const float* bias, const float* y, const CombineTables& t, int ch,
                     int d);
  void combine_backward(float* dy, float* dgate_host, const float* dh, const CombineTables& t, const float* y, int i0,
                        int i1, bool output, bool gate, int d);
  void combine_backward_inputs(float* dxn, const float* dx, const CombineTables& t, int d);

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

  // The update side, on the host arenas (GradientSync holds spans of them).
  static void reduce_gradients(GradientSync& sync, ParamStore& ps, int bucket);
  static double gradient_sum_squares(GradientSync* sync, ParamStore& ps);
  static void adamw_update(AdamW& opt, ParamStore& ps, double lr, int step, float clip_scale) {
    opt.update(ps, lr, step, clip_scale);
  }
  // The arenas are the host's: nothing to copy.
  static void zero_grads(ParamStore& ps) { ps.zero_grads(); }
  static void to_host(ParamStore&, AdamW*) {}
  static void from_host(ParamStore&) {}

 private:
  ParamStore* ps_ = nullptr;
  CommScheduler in_line_{false};
  CommScheduler* sched_ = &in_line_;
};

// The production CPU step (instantiated once, in layers/cpu_backend.cpp).
extern template class Step<CpuBackend>;
using CpuStep = Step<CpuBackend>;

}  // namespace uoe
