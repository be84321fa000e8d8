// A second backend for the one step (layers/step.hpp), for the tests: CPU kernels, but the policies
// and memory discipline of the CUDA backend (layers/step_cuda.cu) — the parameter and gradient
// arenas are copies uploaded and downloaded around each pass, gradients reach the host (and the
// backward hook runs) only at the end, every chunk's metadata travels in one collective before the
// rows, routing copies its inputs to the host and its gradients back, and the combine is a residual
// pass then scatter-adds by chunk instead of the CPU backend's fused per-token pass. Buffers are
// poisoned with NaN (ids with −1) whenever they are resized, so a step that reads what it did not
// write, or accumulates into what it did not zero, fails the bitwise comparison with CpuBackend
// (test_step_backends.cpp; tests/mpi/test_exchange_mpi.cpp with expert parallelism). What this
// cannot check — the CUDA kernels against these CPU kernels — is what the gpu.* tests do on a
// machine with a GPU.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/experts.hpp"
#include "layers/model.hpp"
#include "layers/router.hpp"
#include "layers/step.hpp"
#include "parallel/scheduler.hpp"
#include "runtime/gemm.hpp"
#include "runtime/kernels.hpp"

namespace uoe {

// The kernels, experts and exchange queue are CpuBackend's (inherited); what differs is below.
class DeviceLikeBackend : public CpuBackend {
 public:
  static constexpr bool kHostMemory = false;
  static constexpr bool kBatchedMetadata = true;

  template <class T>
  class Buffer {
   public:
    void resize(size_t n) {
      v_.resize(n);
      if constexpr (std::is_floating_point_v<T>) std::fill(v_.begin(), v_.end(), std::numeric_limits<T>::quiet_NaN());
      else std::fill(v_.begin(), v_.end(), static_cast<T>(-1));
    }
    T* data() { return v_.data(); }
    const T* data() const { return v_.data(); }
    size_t size() const { return v_.size(); }

   private:
    std::vector<T> v_;
  };
  struct RouteCache {
    std::vector<float> xn, w, b;
  };
  struct CombineTables {
    const SourceRows* src = nullptr;
    Buffer<int32_t> token;
    Buffer<float> gate, rowdot;
    int B = 0, T = 0, C = 1;
  };

  int uploads = 0, downloads = 0;  // transfers the GPU path would make (the tests count them)

  std::string describe() const { return "CPU, device-like"; }

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

  void begin_step(ParamStore& ps, bool with_grads) {
    upload(values_, std::span<const float>(ps.values().data(), ps.total()));
    if (with_grads) upload(grads_, std::span<const float>(ps.grads().data(), ps.total()));
  }
  void end_step(ParamStore& ps, bool with_grads) {
    wait_all();
    if (with_grads) download(grads_, std::span<float>(ps.grads().data(), ps.total()));
  }
  float* values() { return values_.data(); }
  float* grads() { return grads_.data(); }

  double cross_entropy(bool backward, float* logits, const int32_t* targets_host, int N, int V, float grad_scale) {
    upload(targets_, std::span<const int32_t>(targets_host, N));
    return backward ? crossentropy_forward_backward(logits, targets_.data(), N, V, grad_scale)
                    : crossentropy_forward(logits, targets_.data(), N, V);
  }
  void embedding_backward(float* dtable, const float* dh, const Buffer<int32_t>& tokens, int N, int, int d) {
    scatter_add_rows(dtable, dh, tokens.data(), N, d, 1.0f);
  }

  void route(Routing& r, RouteCache& rc, const RouterSpec& spec, const float* xn, const float* w, const float* b, int N,
             int d, bool dropless) {
    rc.xn.assign(xn, xn + static_cast<size_t>(N) * d);
    rc.w.assign(w, w + static_cast<size_t>(d) * spec.experts);
    rc.b.assign(b, b + spec.experts);
    downloads += 3;
    router_forward(r, spec, rc.xn.data(), rc.w.data(), rc.b.data(), N, d, dropless);
  }
  void route_backward(const Routing& r, RouteCache& rc, const RouterSpec& spec, const float* dgate_host,
                      const float*, const float*, float* dxn, float* dw, float* db, float loss_scale) {
    const int E = spec.experts, d = r.d;
    std::vector<float> dxn_host(static_cast<size_t>(r.N) * d, 0.0f), dw_host(dw, dw + static_cast<size_t>(d) * E),
        db_host(db, db + E);
    downloads += 2;
    router_backward(r, spec, dgate_host, rc.xn.data(), rc.w.data(), dxn_host.data(), dw_host.data(), db_host.data(),
                    loss_scale);
    std::copy(dxn_host.begin(), dxn_host.end(), dxn);
    std::copy(dw_host.begin(), dw_host.end(), dw);
    std::copy(db_host.begin(), db_host.end(), db);
    uploads += 3;
  }

  void row_tables(CombineTables& t, const SourceRows& src, const Routing& r) {
    t.src = &src;
    const int R = src.rows();
    std::vector<float> gate(R);
    for (int i = 0; i < R; ++i) gate[i] = r.gate[src.gate[i]];
    upload(t.token, std::span<const int32_t>(src.token));
    upload(t.gate, std::span<const float>(gate));
  }
  void gather_source_rows(float* out, const float* xn, const CombineTables& t, int r0, int n, int d) {
    uoe::gather_rows(out, xn, t.token.data() + r0, n, d);
  }
  void set_rows(Rows& rows, const std::vector<int>& offsets, const int32_t* seg, const int32_t* pos, int n, int d) {
    rows.n_experts = static_cast<int>(offsets.size()) - 1;
    rows.offsets = offsets;
    rows.seg.assign(seg, seg + n);
    rows.pos.assign(pos, pos + n);
    rows.x.resize_uninit(static_cast<size_t>(n) * d);
    std::fill(rows.x.begin(), rows.x.end(), std::numeric_limits<float>::quiet_NaN());
  }
  void combine_prepare(CombineTables& t, int, int B, int T, int C) {
    t.B = B;
    t.T = T;
    t.C = C;
  }
  // The chunk's residual rows (when not done yet), then its rows scatter-added in row order.
  void combine_chunk(float* out, const float* hin, const float* bias, const float* y, const CombineTables& t, int ch,
                     int d) {
    if (hin) {
      const int t0 = chunk_first_token(ch, t.B, t.T, t.C), t1 = chunk_first_token(ch + 1, t.B, t.T, t.C);
      residual_bias_rows(out + static_cast<size_t>(t0) * d, hin + static_cast<size_t>(t0) * d, bias, t1 - t0, d);
    }
    for (int i = t.src->chunk_begin[ch]; i < t.src->chunk_begin[ch + 1]; ++i)
      scatter_add_row(out + static_cast<size_t>(t.token.data()[i]) * d, y + static_cast<size_t>(i) * d, d,
                      t.gate.data()[i]);
  }
  void combine_backward(float* dy, float* dgate_host, const float* dh, CombineTables& t, const float* y, int i0,
                        int i1, bool output, bool gate, int d) {
    const int n = i1 - i0;
    if (n <= 0) return;
    if (output)
      for (int i = i0; i < i1; ++i)
        scale_row(dy + static_cast<size_t>(i) * d, dh + static_cast<size_t>(t.token.data()[i]) * d, d, t.gate.data()[i]);
    if (gate) {
      t.rowdot.resize(n);
      for (int i = i0; i < i1; ++i)
        t.rowdot.data()[i - i0] =
            dot_lanes(dh + static_cast<size_t>(t.token.data()[i]) * d, y + static_cast<size_t>(i) * d, d);
      std::vector<float> host(n);
      download(t.rowdot, std::span<float>(host));
      for (int i = 0; i < n; ++i) dgate_host[t.src->gate[i0 + i]] += host[i];
    }
  }
  void combine_backward_inputs(float* dxn, const float* dx, const CombineTables& t, int d) {
    for (int ch = 0; ch < t.C; ++ch)
      for (int i = t.src->chunk_begin[ch]; i < t.src->chunk_begin[ch + 1]; ++i)
        scatter_add_row(dxn + static_cast<size_t>(t.token.data()[i]) * d, dx + static_cast<size_t>(i) * d, d, 1.0f);
  }

 private:
  Buffer<float> values_, grads_;
  Buffer<int32_t> targets_;
};

}  // namespace uoe
