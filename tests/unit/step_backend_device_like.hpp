// A second backend for the one step (layers/step.hpp), for the tests: CPU kernels, but the policies
// and memory discipline of the CUDA backend (layers/step_cuda.cu) — the parameter and gradient
// arenas (and AdamW's moments) are the backend's own copies, taken from the host once and given
// back only on request (state_to_host); the update side (all-reduce, Σ g², AdamW) runs on them;
// routing computes its scores where the block's input and router weights are and brings only the
// scores [P, E] to the host (and their gradients back); gradients reach the backward hook only at
// the end; every chunk's metadata travels in one collective before the rows; and the combine is a
// residual pass then scatter-adds by chunk instead of the CPU backend's fused per-token pass.
// Buffers are poisoned with NaN (ids with −1) whenever they are resized, so a step that reads what
// it did not write, or accumulates into what it did not zero, fails the bitwise comparison with
// CpuBackend (test_step_backends.cpp; tests/mpi/test_exchange_mpi.cpp with expert parallelism).
// Every host↔device copy the GPU path would make is RECORDED (`transfers`: direction, what, bytes),
// so a test can check that a step moves no arena across. What this cannot check — the CUDA kernels
// against these CPU kernels — is what the gpu.* tests do on a machine with a GPU.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "layers/cpu_backend.hpp"
#include "layers/experts.hpp"
#include "layers/model.hpp"
#include "layers/router.hpp"
#include "layers/optimizer.hpp"
#include "layers/step.hpp"
#include "parallel/grad_sync.hpp"
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
    Buffer<float> xm, logits, dlogits, dxm;  // [P, d] patch means; [P, E] scores, their gradients; [P, d]
  };
  struct CombineTables {
    const SourceRows* src = nullptr;
    Buffer<int32_t> token;
    Buffer<float> gate, rowdot;
    int B = 0, T = 0, C = 1;
  };

  // One host↔device copy the GPU path would make: what crossed, which way, how many bytes.
  enum class Traffic { arena, activations, metadata, loss };
  struct Transfer {
    bool to_device;
    Traffic what;
    std::string name;
    size_t bytes;
  };
  std::vector<Transfer> transfers;
  // Copies within the device's memory (the all-reduce's packing) and waits for them: not transfers.
  size_t device_copies = 0, fences = 0;
  size_t bytes(Traffic what) const {
    size_t n = 0;
    for (const Transfer& t : transfers) n += t.what == what ? t.bytes : 0;
    return n;
  }

  std::string describe() const { return "CPU, device-like"; }

  // The step's own copies: tokens (ints) are metadata, floats (the probabilities of forward_eval) activations.
  template <class T>
  void upload(Buffer<T>& b, std::span<const T> host) {
    put(b, host, std::is_floating_point_v<T> ? Traffic::activations : Traffic::metadata, "step input");
  }
  template <class T>
  void download(const Buffer<T>& b, std::span<T> host) {
    get(host, b.data(), std::is_floating_point_v<T> ? Traffic::activations : Traffic::metadata, "step output");
  }
  template <class T>
  void zero(Buffer<T>& b) {
    std::fill(b.data(), b.data() + b.size(), T{});
  }

  // The arenas are taken from the host at the first pass (or after from_host) and stay here.
  void begin_step(ParamStore& ps, bool /*with_grads*/) { take_arenas(ps); }
  void end_step(ParamStore&, bool) { wait_all(); }
  float* values() { return values_.data(); }
  float* grads() { return grads_.data(); }

  double cross_entropy(bool backward, float* logits, const int32_t* targets_host, int N, int V, float grad_scale) {
    put(targets_, std::span<const int32_t>(targets_host, N), Traffic::metadata, "targets");
    const double sum = backward ? crossentropy_forward_backward(logits, targets_.data(), N, V, grad_scale)
                                : crossentropy_forward(logits, targets_.data(), N, V);
    record(false, Traffic::loss, "loss", sizeof(double));
    return sum;
  }
  void embedding_backward(float* dtable, const float* dh, const Buffer<int32_t>& tokens, int N, int, int d) {
    scatter_add_rows(dtable, dh, tokens.data(), N, d, 1.0f);
  }

  // Routing: the scores x̄·W + b formed here (router_forward's parts, layers/router.hpp), only they
  // go to the host, which decides (top-k, capacity, gates) as the CPU router does.
  void route(Routing& r, RouteCache& rc, const RouterSpec& spec, const float* xn, const float* w, const float* b, int N,
             int d, bool dropless) {
    router_begin(r, spec, N, d);
    const int P = r.P, E = r.E;
    const float* x = xn;
    if (r.patch > 1) {
      rc.xm.resize(static_cast<size_t>(P) * d);
      router_patch_means(rc.xm.data(), xn, P, r.patch, d);
      x = rc.xm.data();
    }
    r.xm.clear();  // kept here, in rc.xm
    rc.logits.resize(static_cast<size_t>(P) * E);
    router_bias_rows(rc.logits.data(), b, P, E);
    uoe::gemm(false, false, P, E, d, 1.0f, x, d, w, E, 1.0f, rc.logits.data(), E);
    r.probs.resize(static_cast<size_t>(P) * E);
    get(std::span<float>(r.probs), rc.logits.data(), Traffic::metadata, "router scores");
    router_decide(r, spec, dropless);
  }
  // The scores' gradients are formed on the host (from the routing there) and go up; the router's
  // GEMMs and its weight gradients stay here.
  void route_backward(const Routing& r, RouteCache& rc, const RouterSpec& spec, const float* dgate_host,
                      const float* xn, const float* w, float* dxn, float* dw, float* db, float loss_scale) {
    const int P = r.P, E = r.E, d = r.d, ps = r.patch;
    std::vector<float> dlogits(static_cast<size_t>(P) * E);
    router_backward_logits(dlogits.data(), r, spec, dgate_host, loss_scale);
    put(rc.dlogits, std::span<const float>(dlogits), Traffic::metadata, "router score gradients");
    const float* x = ps > 1 ? rc.xm.data() : xn;
    uoe::gemm(true, false, d, E, P, 1.0f, x, d, rc.dlogits.data(), E, 1.0f, dw, E);
    router_bias_grad(db, rc.dlogits.data(), P, E);
    if (ps == 1) {
      uoe::gemm(false, true, P, d, E, 1.0f, rc.dlogits.data(), E, w, E, 1.0f, dxn, d);
    } else {
      rc.dxm.resize(static_cast<size_t>(P) * d);
      uoe::gemm(false, true, P, d, E, 1.0f, rc.dlogits.data(), E, w, E, 0.0f, rc.dxm.data(), d);
      router_patch_means_backward(dxn, rc.dxm.data(), P, ps, d);
    }
  }

  void row_tables(CombineTables& t, const SourceRows& src, const Routing& r) {
    t.src = &src;
    const int R = src.rows();
    std::vector<float> gate(R);
    for (int i = 0; i < R; ++i) gate[i] = r.gate[src.gate[i]];
    put(t.token, std::span<const int32_t>(src.token), Traffic::metadata, "row tokens");
    put(t.gate, std::span<const float>(gate), Traffic::metadata, "row gates");
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
      get(std::span<float>(host), t.rowdot.data(), Traffic::metadata, "gate gradients");
      for (int i = 0; i < n; ++i) dgate_host[t.src->gate[i0 + i]] += host[i];
    }
  }
  void combine_backward_inputs(float* dxn, const float* dx, const CombineTables& t, int d) {
    for (int ch = 0; ch < t.C; ++ch)
      for (int i = t.src->chunk_begin[ch]; i < t.src->chunk_begin[ch + 1]; ++i)
        scatter_add_row(dxn + static_cast<size_t>(t.token.data()[i]) * d, dx + static_cast<size_t>(i) * d, d, 1.0f);
  }

  // The update side on this backend's arenas: the host's GradientSync moved onto them (the same
  // buckets, order and communicators; "device" memory is host memory here, and buckets that are not
  // one span are packed in this backend's own buffer by its own copies, GradientMemory — the CUDA
  // backend's device copies and NCCL in its place), AdamW's element update with its moments here.
  void reduce_gradients(GradientSync& sync, ParamStore& ps, int bucket) {
    GradientSync& here = local_sync(sync, ps);
    if (bucket < 0) here.all_reduce();
    else here.reduce_bucket(static_cast<size_t>(bucket));
  }
  double gradient_sum_squares(GradientSync* sync, ParamStore& ps) {
    take_arenas(ps);
    return sync ? local_sync(*sync, ps).global_sum_squares() : grad_sum_squares(grads_.data(), ps.total());
  }
  void adamw_update(AdamW& opt, ParamStore& ps, double lr, int step, float clip_scale) {
    take_arenas(ps);
    if (!moments_here_) {
      const size_t n = ps.total();
      put(m_, std::span<const float>(opt.m().data(), n), Traffic::arena, "AdamW m");
      put(v_, std::span<const float>(opt.v().data(), n), Traffic::arena, "AdamW v");
      put(decay_, std::span<const float>(opt.decay_mask().data(), n), Traffic::arena, "weight-decay mask");
      moments_here_ = true;
    }
    uoe::adamw_update(values_.data(), m_.data(), v_.data(), grads_.data(), decay_.data(), ps.total(),
                      opt.scalars(lr, step, clip_scale));
  }
  void zero_grads(ParamStore& ps) {
    take_arenas(ps);
    zero(grads_);
  }
  void to_host(ParamStore& ps, AdamW* opt) {
    if (host_newer_) return;  // nothing computed here since the host's copy
    const size_t n = ps.total();
    get(std::span<float>(ps.values().data(), n), values_.data(), Traffic::arena, "parameters");
    get(std::span<float>(ps.grads().data(), n), grads_.data(), Traffic::arena, "gradients");
    if (opt && moments_here_) {
      get(std::span<float>(opt->m().data(), n), m_.data(), Traffic::arena, "AdamW m");
      get(std::span<float>(opt->v().data(), n), v_.data(), Traffic::arena, "AdamW v");
    }
  }
  void from_host(ParamStore&) { host_newer_ = true; moments_here_ = false; }

 private:
  void record(bool to_device, Traffic what, const char* name, size_t n) { transfers.push_back({to_device, what, name, n}); }
  template <class T>
  void put(Buffer<T>& b, std::span<const T> host, Traffic what, const char* name) {
    b.resize(host.size());
    std::copy(host.begin(), host.end(), b.data());
    record(true, what, name, host.size_bytes());
  }
  template <class T>
  void get(std::span<T> host, const T* dev, Traffic what, const char* name) {
    std::copy(dev, dev + host.size(), host.begin());
    record(false, what, name, host.size_bytes());
  }
  void take_arenas(ParamStore& ps) {
    if (!host_newer_) return;
    const size_t n = ps.total();
    put(values_, std::span<const float>(ps.values().data(), n), Traffic::arena, "parameters");
    put(grads_, std::span<const float>(ps.grads().data(), n), Traffic::arena, "gradients");
    host_newer_ = false;
    sync_.reset();  // the arena may have moved
  }
  GradientSync& local_sync(GradientSync& sync, ParamStore& ps) {
    take_arenas(ps);
    if (!sync_ || sync_of_ != &sync) {
      GradientMemory memory;
      memory.buffer = [this](size_t n) {
        if (pack_.size() < n) pack_.resize(n);  // poisoned: a collective over what was not packed shows
        return pack_.data();
      };
      memory.copy = [this](float* dst, const float* src, size_t n) {
        std::copy(src, src + n, dst);
        ++device_copies;
      };
      memory.fence = [this] { ++fences; };
      sync_ = std::make_unique<GradientSync>(
          sync.rebased(ps.grads().data(), grads_.data(), nullptr, nullptr, std::move(memory)));
      sync_of_ = &sync;
    }
    return *sync_;
  }

  Buffer<float> values_, grads_, m_, v_, decay_, pack_;
  bool host_newer_ = true;     // the host arenas are to be taken at the next use
  bool moments_here_ = false;  // m_, v_, decay_ hold AdamW's state
  std::unique_ptr<GradientSync> sync_;
  const GradientSync* sync_of_ = nullptr;

  Buffer<int32_t> targets_;
};

}  // namespace uoe
