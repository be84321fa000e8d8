// A second backend for the one step (layers/step.hpp), for the tests: CPU kernels, but the policies
// and memory discipline of the CUDA backend (layers/step_cuda.cu) — the parameter and gradient
// arenas (and AdamW's moments) are the backend's own copies, taken from the host once and given
// back only on request (state_to_host); the update side (all-reduce, Σ g², AdamW) runs on them;
// routing is decided where the block's input and router weights are (scores, softmax, top-k,
// capacity, gates, losses, and in backward the scores' gradients, by the device's bodies,
// layers/router_select.hpp) and the source rows are laid out here too (layers/source_rows.hpp): the
// host receives only counts — rows per expert, kept patches per (sequence, expert) — and the
// figures, no row table (the rest of the routing comes down only when the host asks, ModelStep::routing);
// the gate gradients stay here too; gradients reach the backward hook only at
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
#include <cstring>
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
#include "layers/router_select.hpp"
#include "layers/optimizer.hpp"
#include "layers/step.hpp"
#include "layers/step_figures.hpp"
#include "parallel/grad_sync.hpp"
#include "parallel/scheduler.hpp"
#include "runtime/gemm.hpp"
#include "runtime/kernels.hpp"
#include "runtime/staged_copy.hpp"

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
  // The routing as the device keeps it (Routing's arrays of the same names); on_host: the host's
  // Routing holds a copy of them (routing_to_host).
  struct RouteCache {
    Buffer<float> xm, logits, dlogits, dxm;  // [P, d] patch means; [P, E] scores (then probs), their gradients; [P, d]
    Buffer<float> lse, gate;                 // [P], [P, k]
    Buffer<int32_t> choice, chosen, counts, row_patch, row_slot;  // [P, k], [E], [E + 1] row offsets, [rows]
    Buffer<uint8_t> kept;                    // [P, k]
    Buffer<double> losses;                   // [3] balance, z, entropy sum
    Buffer<int32_t> experts_per_token;       // [k + 1]
    bool on_host = false;
    bool decided = false;  // route() ran on this cache (an unrouted block's never does)
  };
  struct CombineTables {
    const SourceRows* src = nullptr;
    Buffer<int32_t> token, slot, seg, pos;  // [R] each row's token, gate slot (p·k + j), sequence, position
    Buffer<int32_t> cells, first_src, first_route, chunk_begin, chunk_offsets;  // the layout (source_rows.hpp)
    Buffer<float> gate, rowdot;
    int B = 0, T = 0, C = 1;
    int slots = 0;  // P·k: the gate gradients' length
  };

  // One host↔device copy the GPU path would make: what crossed, which way, how many bytes.
  enum class Traffic { arena, activations, metadata, loss, figures };
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
  // The gate gradients [P, k] the combine backward accumulates here and route_backward reads (the
  // twin tests set them directly).
  Buffer<float>& gate_gradients() { return dgate_; }

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
    loss_sum_.resize(1);
    loss_sum_.data()[0] = backward ? crossentropy_forward_backward(logits, targets_.data(), N, V, grad_scale)
                                   : crossentropy_forward(logits, targets_.data(), N, V);
    if (defer_figures) return std::numeric_limits<double>::quiet_NaN();  // stays here (figures_add_loss)
    double sum;
    get(std::span<double>(&sum, 1), loss_sum_.data(), Traffic::loss, "loss");
    return sum;
  }

  // The step's log figures here (layers/step_figures.hpp; ModelStep::figures_begin): train_step's
  // vector in slots, added to by the device's bodies from the loss and the routing's figures that
  // stay here while defer_figures is set (a training pass between figures_begin and figures_end).
  bool defer_figures = false;
  void figures_zero(int slot, int slots, size_t size) {
    // Growing reallocates, as a device buffer does: what the slots held is gone (Buffer::resize
    // poisons every element).
    if (figures_.size() < static_cast<size_t>(slots) * size) figures_.resize(static_cast<size_t>(slots) * size);
    figure_size_ = size;
    std::fill(slot_of(slot), slot_of(slot) + size, 0.0);
  }
  void figures_add_loss(int slot, double tokens) {
    step_figures_add_loss(slot_of(slot), loss_sum_.data(), tokens);
    aux_.resize(1);
    aux_.data()[0] = 0;
  }
  void figures_add_block(int slot, const RouteCache& rc, StepFigureBlock blk) {
    step_figures_add_block(slot_of(slot), aux_.data(), rc.losses.data(), rc.experts_per_token.data(), rc.chosen.data(),
                           blk);
  }
  void figures_add_aux(int slot) { step_figures_add_aux(slot_of(slot), aux_.data()); }
  double figures_loss(int slot) {
    double loss;
    get(std::span<double>(&loss, 1), slot_of(slot), Traffic::loss, "loss");
    return loss;
  }
  void figures_fetch(std::span<double> host, int n) {
    get(host.first(static_cast<size_t>(n) * figure_size_), figures_.data(), Traffic::figures, "step figures");
  }
  void embedding_backward(float* dtable, const float* dh, const Buffer<int32_t>& tokens, int N, int, int d) {
    scatter_add_rows(dtable, dh, tokens.data(), N, d, 1.0f);
  }

  // Routing decided here (router_forward's parts, layers/router.hpp, and the device's bodies,
  // layers/router_select.hpp): the host receives the row counts (and chosen counts, experts per
  // token) and three figures — no [P, E] array, no row table (row_tables lays the rows out here).
  bool fail_in_route = false;  // route() throws (a failure inside a training pass)
  void route(Routing& r, RouteCache& rc, const RouterSpec& spec, const float* xn, const float* w, const float* b, int N,
             int d, bool dropless) {
    if (fail_in_route) throw Error("DeviceLikeBackend: a failure injected in route()");
    router_begin(r, spec, N, d);
    const int P = r.P, E = r.E, k = r.k;
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
    rc.lse.resize(P);
    rc.choice.resize(static_cast<size_t>(P) * k);
    rc.gate.resize(static_cast<size_t>(P) * k);
    rc.kept.resize(static_cast<size_t>(P) * k);
    rc.chosen.resize(E);
    rc.counts.resize(E + 1);
    rc.row_patch.resize(static_cast<size_t>(P) * k);
    rc.row_slot.resize(static_cast<size_t>(P) * k);
    rc.losses.resize(3);
    rc.experts_per_token.resize(k + 1);
    router_decide_rows(rc.logits.data(), rc.lse.data(), rc.choice.data(), rc.gate.data(), P, E, k, gate_mode(spec));
    router_chosen(rc.chosen.data(), rc.choice.data(), P, E, k);
    const bool limited = !dropless && spec.capacity_factor > 0;
    r.capacity = limited ? static_cast<int>(expert_capacity(P, k, E, spec.capacity_factor)) : 0;
    router_select(rc.kept.data(), rc.counts.data(), rc.row_patch.data(), rc.row_slot.data(), rc.choice.data(),
                  rc.logits.data(), P, E, k, r.capacity);
    router_losses(rc.losses.data(), rc.logits.data(), rc.lse.data(), rc.chosen.data(), P, E, k, spec.aux_weight,
                  spec.z_weight);
    router_figures(rc.losses.data() + 2, rc.experts_per_token.data(), rc.logits.data(), rc.kept.data(), P, E, k,
                   r.patch);
    // What crosses: counts and the figures.
    r.row_offsets.resize(E + 1);
    r.chosen.resize(E);
    get(std::span<int>(r.row_offsets), rc.counts.data(), Traffic::metadata, "row counts");
    const int rows = r.row_offsets[E];
    r.row_patch.clear();  // here, in rc (routing_to_host)
    r.row_slot.clear();
    r.sequence_rows.clear();
    r.experts_per_token.resize(k + 1);
    double losses[3];
    if (defer_figures) {  // they stay here (figures_add_block); poisoned on the host
      std::fill(r.chosen.begin(), r.chosen.end(), -1);
      std::fill(r.experts_per_token.begin(), r.experts_per_token.end(), -1);
      std::fill(losses, losses + 3, std::numeric_limits<double>::quiet_NaN());
    } else {
      get(std::span<int>(r.chosen), rc.chosen.data(), Traffic::metadata, "chosen counts");
      get(std::span<int>(r.experts_per_token), rc.experts_per_token.data(), Traffic::metadata, "experts per token");
      get(std::span<double>(losses, 3), rc.losses.data(), Traffic::loss, "router losses and entropy");
    }
    r.capacity_kept.resize(E);
    for (int e = 0; e < E; ++e) r.capacity_kept[e] = r.row_offsets[e + 1] - r.row_offsets[e];
    r.dropped = P * k - rows;
    r.balance_loss = losses[0];
    r.z_loss = losses[1];
    r.entropy_sum = losses[2];
    r.figures_only = true;
    // Not on the host until asked for (routing_to_host).
    r.probs.clear();
    r.lse.clear();
    r.choice.clear();
    r.gate.clear();
    r.kept.clear();
    rc.on_host = false;
    rc.decided = true;
  }
  // The rest of the routing (probabilities, log-sum-exps, choices, gates, kept) to the host: only
  // when the host reads it (ModelStep::routing: tests, the metrics' routing check), not in a step.
  void routing_to_host(Routing& r, RouteCache& rc) {
    if (rc.on_host) return;
    const size_t pe = static_cast<size_t>(r.P) * r.E, pk = static_cast<size_t>(r.P) * r.k;
    r.probs.resize(pe);
    r.lse.resize(r.P);
    r.choice.resize(pk);
    r.gate.resize(pk);
    r.kept.resize(pk);
    r.row_patch.resize(r.row_offsets[r.E]);
    r.row_slot.resize(r.row_offsets[r.E]);
    get(std::span<int>(r.row_patch), rc.row_patch.data(), Traffic::metadata, "routing on request: row patches");
    get(std::span<int>(r.row_slot), rc.row_slot.data(), Traffic::metadata, "routing on request: row slots");
    get(std::span<float>(r.probs), rc.logits.data(), Traffic::metadata, "routing on request: probabilities");
    get(std::span<float>(r.lse), rc.lse.data(), Traffic::metadata, "routing on request: log-sum-exps");
    get(std::span<int>(r.choice), rc.choice.data(), Traffic::metadata, "routing on request: choices");
    get(std::span<float>(r.gate), rc.gate.data(), Traffic::metadata, "routing on request: gates");
    get(std::span<uint8_t>(r.kept), rc.kept.data(), Traffic::metadata, "routing on request: kept");
    rc.on_host = true;
    r.figures_only = false;
  }
  // The scores' gradients formed here from the routing here and the gate gradients the combine
  // backward accumulated here (dgate_; the host's dgate is not used); the router's GEMMs and its
  // weight gradients too. Nothing crosses.
  void route_backward(const Routing& r, RouteCache& rc, const RouterSpec& spec, const float* /*dgate_host*/,
                      const float* xn, const float* w, float* dxn, float* dw, float* db, float loss_scale) {
    const int P = r.P, E = r.E, d = r.d, ps = r.patch;
    rc.dlogits.resize(static_cast<size_t>(P) * E);
    router_backward_logits_rows(rc.dlogits.data(), rc.logits.data(), rc.lse.data(), rc.choice.data(), rc.kept.data(),
                                dgate_.data(), rc.chosen.data(), P, E, r.k, gate_mode(spec), loss_scale,
                                spec.aux_weight, spec.z_weight);
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
  // The source rows laid out here from the routing's row tables here (layers/source_rows.hpp, the
  // bodies of the CPU's source_rows_build): only the cells [B, E] come down, from which the host
  // forms the chunks' counts and the rows' sequences (source_rows_from_cells); the rows' positions
  // stay here, and travel from here when the rows do (owner_positions). An unrouted block
  // (routing_all_to_one, not routed here) sends up its two row offsets; its tables are formed here.
  // The rows' gates are gathered here from the routing's (unrouted: 1).
  void row_tables(CombineTables& t, SourceRows& src, Routing& r, RouteCache& rc, int B, int T, int C) {
    t.src = &src;
    t.slots = r.P * r.k;
    const int E = r.E, k = r.k, ps = r.patch, routed_rows = r.row_offsets[E];
    if (!rc.decided) {
      put(rc.counts, std::span<const int>(r.row_offsets), Traffic::metadata, "row counts");
      rc.row_patch.resize(routed_rows);
      rc.row_slot.resize(routed_rows);
      for (int i = 0; i < routed_rows; ++i) {
        rc.row_patch.data()[i] = i;
        rc.row_slot.data()[i] = 0;
      }
    }
    t.cells.resize(static_cast<size_t>(B) * E);
    source_rows_cells(t.cells.data(), rc.counts.data(), rc.row_patch.data(), B, E, ps, T);
    src.cells.resize(static_cast<size_t>(B) * E);
    get(std::span<int>(src.cells), t.cells.data(), Traffic::metadata, "source row cells");
    source_rows_from_cells(src, r.row_offsets, B, C, ps);
    if (rc.decided) r.sequence_rows = src.cells;  // the block's figures read them (layers/flops.cpp)
    const int R = src.rows();
    t.first_src.resize(static_cast<size_t>(B) * E);
    t.first_route.resize(static_cast<size_t>(B) * E);
    t.chunk_begin.resize(C + 1);
    t.chunk_offsets.resize(static_cast<size_t>(C) * (E + 1));
    t.token.resize(R);
    t.slot.resize(R);
    t.seg.resize(R);
    t.pos.resize(R);
    source_rows_place(t.token.data(), t.slot.data(), t.seg.data(), t.pos.data(), t.first_src.data(),
                      t.first_route.data(), t.chunk_begin.data(), t.chunk_offsets.data(), t.cells.data(),
                      rc.counts.data(), rc.row_patch.data(), rc.row_slot.data(), routed_rows, B, E, k, ps, T, C);
    t.gate.resize(R);
    if (rc.decided) uoe::gather_rows(t.gate.data(), rc.gate.data(), t.slot.data(), R, 1);
    else std::fill(t.gate.data(), t.gate.data() + R, 1.0f);
  }
  void gather_source_rows(float* out, const float* xn, const CombineTables& t, int r0, int n, int d) {
    uoe::gather_rows(out, xn, t.token.data() + r0, n, d);
  }
  void set_rows(Rows& rows, const std::vector<int>& offsets, const int32_t* seg, const int32_t* pos, int n, int d) {
    rows.n_experts = static_cast<int>(offsets.size()) - 1;
    rows.offsets = offsets;
    rows.seg.assign(seg, seg + n);
    if (pos) rows.pos.assign(pos, pos + n);
    else rows.pos.assign(n, -1);  // owner_positions: the exchange fills them
    rows.x.resize_uninit(static_cast<size_t>(n) * d);
    std::fill(rows.x.begin(), rows.x.end(), std::numeric_limits<float>::quiet_NaN());
  }
  // The rows' positions as the device keeps them (rows.pos stands for device memory here): the
  // tables' on the source side; the owner's, filled by ExpertExchange::positions_to_owner.
  const int32_t* source_positions(const CombineTables& t) const { return t.pos.data(); }
  int32_t* owner_positions(Rows& rows, int n, int /*T*/) {
    rows.pos.assign(n, -1);
    return rows.pos.data();
  }
  // Chunk ch's rows that did not travel: the counts and sequences from the host's part, the
  // positions from the tables here (a copy within the device).
  void set_source_rows(Rows& rows, const CombineTables& t, int ch, int d) {
    const SourceRows& src = *t.src;
    const int r0 = src.chunk_begin[ch], n = src.chunk_begin[ch + 1] - r0;
    set_rows(rows, src.chunk_offsets[ch], src.seg.data() + r0, t.pos.data() + r0, n, d);
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
  // The gate gradients accumulate here, in dgate_ (one block's backward at a time; zeroed by the
  // block's first gate call, which starts at row 0), not in the host's dgate.
  void combine_backward(float* dy, float* /*dgate_host*/, const float* dh, CombineTables& t, const float* y, int i0,
                        int i1, bool output, bool gate, int d) {
    if (gate && i0 == 0) {
      dgate_.resize(t.slots);
      zero(dgate_);
    }
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
      router_gate_grads(dgate_.data(), t.slot.data(), t.rowdot.data(), i0, n);
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
  // Through the snapshot's staging slices (runtime/staged_copy.hpp's schedule, plain memory here;
  // the CUDA backend's are pinned): `snapshot_slice` bytes each, small by default so that every
  // arena takes several.
  size_t snapshot_slice = 1000;
  size_t snapshot_slices = 0;  // slices drained so far
  void to_host(ParamStore& ps, AdamW* opt) {
    if (host_newer_) return;  // nothing computed here since the host's copy
    const size_t n = ps.total();
    snapshot(std::span<float>(ps.values().data(), n), values_.data(), "parameters");
    snapshot(std::span<float>(ps.grads().data(), n), grads_.data(), "gradients");
    if (opt && moments_here_) {
      snapshot(std::span<float>(opt->m().data(), n), m_.data(), "AdamW m");
      snapshot(std::span<float>(opt->v().data(), n), v_.data(), "AdamW v");
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
  void snapshot(std::span<float> host, const float* dev, const char* name) {
    auto* out = reinterpret_cast<unsigned char*>(host.data());
    const auto* in = reinterpret_cast<const unsigned char*>(dev);
    for (auto& b : stage_) b.assign(snapshot_slice, 0xff);  // poisoned: a slice not fetched shows
    staged_copy(
        host.size_bytes(), snapshot_slice, [&](int b, size_t at, size_t n) { std::memcpy(stage_[b].data(), in + at, n); },
        [&](int b, size_t at, size_t n) {
          std::memcpy(out + at, stage_[b].data(), n);
          std::fill(stage_[b].begin(), stage_[b].end(), 0xff);
          ++snapshot_slices;
        });
    record(false, Traffic::arena, name, host.size_bytes());
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

  std::vector<unsigned char> stage_[2];  // the snapshot's staging buffers
  double* slot_of(int slot) { return figures_.data() + static_cast<size_t>(slot) * figure_size_; }

  Buffer<int32_t> targets_;
  Buffer<float> dgate_;  // [P, k] the block's gate gradients (backward)
  Buffer<double> loss_sum_, aux_, figures_;  // [1] the last Σ CE; [1] a micro-batch's router losses; [slots, size]
  size_t figure_size_ = 0;
};

}  // namespace uoe
