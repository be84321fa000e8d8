// One training step for every backend (docs/architecture.md, One step): Step<Backend> runs a Model's
// forward and backward pass — embedding, then per block norm → route → source rows → chunked
// exchange → experts → combine, the final norm, the tied head, the loss — and the evaluation pass
// that generation uses, as calls into a Backend. The CPU backend (layers/cpu_backend.hpp) is the
// production CPU path; the CUDA backend (layers/step_cuda.cu) is the GPU path; the pipeline —
// which rows go where, what accumulates and what overwrites, the order of every sum — is written
// once, here, and every CPU test exercises it.
//
// The Model (layers/model.hpp) is what is model: the spec, the parameters and their layout, which
// experts live on this rank. The Step is what runs it: activations, caches, the backend's buffers.
//
// A backend says where it differs by policy, and keeps its fusions private (as ggml keeps fusion
// inside one backend):
//   kHostMemory        its buffers are host memory and it computes in the ParamStore's arenas in
//                      place: no arena copies, gradients final block by block (the backward hook
//                      runs per block, letting the all-reduce start early); otherwise the backend
//                      keeps its own arenas, and state_to_host / state_from_host move them;
//   kBatchedMetadata   every chunk's counts and row metadata travel in one collective before any
//                      row moves (saves host synchronisations on a GPU); otherwise each chunk's
//                      metadata travels with its rows (the CPU: batching measured 1–3% slower
//                      there, as it delays the first chunk's rows).
// The operations are checked by the StepBackend concept below: a missing one is a compile error
// naming it.
#pragma once
#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "layers/expert_kinds.hpp"
#include "layers/memory.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/router.hpp"
#include "layers/step_figures.hpp"
#include "parallel/exchange.hpp"
#include "runtime/bf16.hpp"
#include "runtime/error.hpp"
#include "runtime/tensor.hpp"

namespace uoe {

class GradientSync;

// What the trainer, evaluation, generation and the benches drive: one backend's Step behind a
// virtual interface, so the backend is chosen at run time (--device) in one place.
class ModelStep {
 public:
  virtual ~ModelStep() = default;
  // One micro-batch of B sequences: inputs/targets [B·T]. Adds into model().params().grads() the
  // gradient of loss_scale · (mean CE + router losses).
  virtual void forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale,
                                ForwardStats* stats) = 0;
  // Forward only, dropless (evaluation): stats with the CE sum and tokens. B may be 0 on a rank
  // with no batch left: it still takes part in the collective exchanges.
  virtual void forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats) = 0;
  // Called after block b's gradients are final for this micro-batch (last block first) and with
  // b = −1 once the embedding's and final norm's are: lets the gradient all-reduce start early.
  virtual void set_backward_hook(std::function<void(int block)> hook) = 0;
  // Block b's routing of the last forward pass (an unrouted block: every token to expert 0).
  virtual const Routing& routing(int b) const = 0;
  // Output probabilities [N, V] of the last forward_eval (the softmax of the logits), on the host.
  virtual const float* probs() = 0;
  // Seconds the expert exchanges were busy and the compute waited for them, since the last call
  // (the backend's exchange queue: a communication thread or stream).
  virtual void take_exchange_seconds(double* busy, double* exposed) = 0;
  // "CPU" or "GPU 0 of 8: NVIDIA H200 (sm_90)" — for the start-up log.
  virtual std::string describe() const = 0;
  // Frees what is collective to free (an NCCL communicator): call at the end of a run.
  virtual void close() {}
  // The wall seconds of each block's forward and backward pass and the exchange seconds in them,
  // appended to *log while it is set (bench/overlap's per-pass bound).
  struct PhaseTime {
    int block;
    bool backward;
    double seconds, exchange_seconds;
  };
  virtual void set_phase_log(std::vector<PhaseTime>* log) = 0;

  // The update side of a training step, where the backend keeps the gradients and the optimizer
  // state (the CPU backend: the host arenas; the CUDA backend: its device arenas):
  // the gradient all-reduce (one bucket, or every bucket in order), the Σ g² of the global
  // gradient (through `sync`) or of this rank's (without), and AdamW with the clip scale.
  virtual void reduce_gradients(GradientSync& sync, int bucket) = 0;  // bucket −1: all of them
  virtual double gradient_sum_squares(GradientSync* sync) = 0;
  virtual void optimizer_update(AdamW& opt, double lr, int step, float clip_scale) = 0;
  // Where the backend keeps its own copies of the arenas (kHostMemory false: device memory): zeroes
  // its gradients (a step's start); copies its parameters and gradients, and opt's moments when
  // given, into the host arenas (before a checkpoint is written or the host reads them); and takes
  // the host arenas and moments again at its next use (after a checkpoint was read). The CPU
  // backend computes in the host arenas: the first zeroes them, the others do nothing.
  virtual void zero_gradients() = 0;
  virtual void state_to_host(AdamW* opt) = 0;
  virtual void state_from_host() = 0;

  // The step's log figures where the backend computes them (layers/step_figures.hpp; docs/gpu.md,
  // Log figures). A backend with its own memory (kHostMemory false) adds each training
  // micro-batch's loss and routed blocks' figures into slot `slot` (of `slots`, each layout.size()
  // doubles, zeroed here) until figures_end; the host's ForwardStats then lacks them (ce_sum, and
  // per routed block the losses, entropy, chosen and experts per token). false: the backend keeps
  // none, ForwardStats has them all (the CPU backend).
  virtual bool figures_begin(const StepFigureLayout& /*layout*/, int /*slot*/, int /*slots*/) { return false; }
  virtual void figures_end() {}
  // Slot `slot`'s loss (its first figure): one double crosses.
  virtual double figures_loss(int /*slot*/) { return 0; }
  // Slots [0, n) into host (n · layout.size() doubles): one copy.
  virtual void figures_fetch(std::span<double> /*host*/, int /*n*/) {}
  // train_step's bookkeeping of the figures still in the backend (layers/train_step.cpp): per step
  // since the last log line, the host's part summed over the ranks; and the steps whose slots were
  // fetched early, complete.
  std::vector<std::vector<double>> figures_pending, figures_drained;
  // The slot count the pending steps' slots were laid out with (a changed --log-every drains them
  // first: the backend's slot buffer may be reallocated for the new count).
  int figures_slots = 0;

  Model& model() { return *model_; }
  const Model& model() const { return *model_; }
  // A hash of every block's routing decisions (choices and capacity drops) of the last forward
  // pass: lets tests check that a perturbation did not change which experts were used.
  uint64_t routing_fingerprint() const;

 protected:
  explicit ModelStep(Model& m) : model_(&m) {}
  Model* model_;
};

// The backend contract. Shapes: N tokens, d model width, V vocabulary, R source rows; pointers are
// the backend's memory unless named _host. Semantics are those of the CPU kernels of the same
// names (runtime/kernels.hpp, layers/experts.hpp, layers/router.hpp); CpuBackend documents each.
template <class Be>
concept StepBackend = requires(Be& be, typename Be::template Buffer<float>& fbuf,
                               typename Be::template Buffer<int32_t>& ibuf, float* f, const float* cf,
                               const int32_t* ci, int n, bool flag, ParamStore& ps, Routing& r, const Routing& cr,
                               const RouterSpec& rs, typename Be::RouteCache& rc, typename Be::Rows& rows,
                               const typename Be::Rows& crows, typename Be::MlpCache& mc, typename Be::AttnCache& ac,
                               typename Be::CombineTables& tab, SourceRows& src, const std::vector<int>& offsets,
                               std::function<void()> task, typename Be::Ticket ticket, GradientSync& sync,
                               AdamW& opt) {
  { Be::kHostMemory } -> std::convertible_to<bool>;
  { Be::kBatchedMetadata } -> std::convertible_to<bool>;
  // Buffers: grow-only, contents undefined after growth.
  fbuf.resize(size_t{});
  { fbuf.data() } -> std::convertible_to<float*>;
  { ibuf.data() } -> std::convertible_to<int32_t*>;
  be.upload(ibuf, std::span<const int32_t>{});
  be.download(fbuf, std::span<float>{});
  be.zero(fbuf);
  // The parameter and gradient arenas (ParamStore layout) for one pass, and back.
  be.begin_step(ps, flag);
  be.end_step(ps, flag);
  { be.values() } -> std::convertible_to<float*>;
  { be.grads() } -> std::convertible_to<float*>;
  // Dense kernels.
  be.layernorm_forward(f, f, f, cf, cf, cf, n, n);
  be.layernorm_backward(f, f, f, cf, cf, cf, cf, cf, n, n);
  be.gather_rows(f, cf, ci, n, n);
  be.residual_bias_rows(f, cf, cf, n, n);
  be.bias_grad(f, cf, n, n);
  be.gemm(flag, flag, n, n, n, 1.0f, cf, n, cf, n, 0.0f, f, n);
  be.round_bf16(f, size_t{});  // in place, to the nearest bf16 (runtime/bf16.hpp)
  { be.cross_entropy(flag, f, ci, n, n, 1.0f) } -> std::convertible_to<double>;
  be.embedding_backward(f, cf, ibuf, n, n, n);
  // Routing: decided in fp32 by the rule of layers/router.hpp; dgate is on the host (a backend that
  // decides on the device keeps the routing and dgate there, in rc, and fills the host's Routing
  // with the counts only: Step::routing asks for the rest, routing_to_host; row_tables then lays the
  // rows out there and fills the host's SourceRows with the counts, layers/model.hpp).
  be.route(r, rc, rs, cf, cf, cf, n, n, flag);
  be.route_backward(cr, rc, rs, cf, cf, cf, f, f, f, 1.0f);
  // Rows and the combine.
  be.row_tables(tab, src, r, rc, n, n, n);  // builds src (the host's part of it: layers/model.hpp)
  be.gather_source_rows(f, cf, tab, n, n, n);
  be.set_rows(rows, offsets, ci, ci, n, n);  // pos may be null: owner_positions then receives them
  // Where the rows' positions are, source side and owner side (kHostMemory false: the backend's
  // memory, moved by ExpertExchange::positions_to_owner, never through the host).
  { be.source_positions(tab) } -> std::convertible_to<const int32_t*>;
  { be.owner_positions(rows, n, n) } -> std::convertible_to<int32_t*>;
  be.set_source_rows(rows, tab, n, n);
  be.combine_prepare(tab, n, n, n, n);
  be.combine_chunk(f, cf, cf, cf, tab, n, n);
  be.combine_backward(f, f, cf, tab, cf, n, n, flag, flag, n);
  be.combine_backward_inputs(f, cf, tab, n);
  // Experts (layers/expert_kinds.hpp calls these).
  be.mlp_forward(f, mc, crows, cf, cf, cf, n, n);
  be.mlp_backward_data(f, cf, mc, crows, cf, cf, n, n);
  be.mlp_backward_weights(f, f, f, cf, mc, crows, n, n);
  be.attn_forward(f, ac, crows, cf, cf, n, n, n);
  be.attn_backward_data(f, cf, ac, crows, cf, cf, n, n, n);
  be.attn_backward_weights(f, f, cf, ac, crows, n, n, n);
  // The exchange queue (parallel/scheduler.hpp's contract).
  { be.submit(task) } -> std::same_as<typename Be::Ticket>;
  be.wait(ticket);
  be.wait_all();
  { be.exchange_busy_seconds() } -> std::convertible_to<double>;
  // The update side (ModelStep::reduce_gradients, gradient_sum_squares, optimizer_update).
  be.reduce_gradients(sync, ps, n);
  { be.gradient_sum_squares(&sync, ps) } -> std::convertible_to<double>;
  be.adamw_update(opt, ps, 1.0, n, 1.0f);
  be.zero_grads(ps);
  be.to_host(ps, &opt);
  be.from_host(ps);
};

template <StepBackend Be>
class Step final : public ModelStep {
 public:
  // `exchange` moves the routed rows when this rank does not hold every expert (null: the Model's
  // own exchange, whose payload is host memory); the backend is built from `args`.
  template <class... Args>
  explicit Step(Model& model, ExpertExchange* exchange = nullptr, Args&&... args)
      : ModelStep(model), be_(std::forward<Args>(args)...), spec_(model.spec()) {
    ExpertExchange* rows_exchange = exchange ? exchange : model.exchange();
    for (int b = 0; b < 2 * spec_.layers; ++b) {
      auto c = std::make_unique<Block>();
      c->kind = block_expert_kind(spec_, b);
      c->routed = spec_.block_routed(b);
      c->router = block_router_spec(spec_, b);
      // Routed blocks exchange rows when the Model's exchange is not the identity (ep > 1);
      // otherwise, and in unrouted blocks, rows stay in this rank's buffers.
      c->exchange = c->routed && !model.exchange()->identity() ? rows_exchange : nullptr;
      blocks_.push_back(std::move(c));
    }
  }

  Be& backend() { return be_; }
  // Each block's rows are exchanged and computed in `chunks` pieces (the same rows and the same
  // order of every sum at any count; docs/model.md, Chunks).
  void set_chunks(int chunks) {
    if (chunks < 1) fail("step: chunks must be at least 1, got ", chunks);
    chunks_ = chunks;
  }
  // What each block keeps for its backward pass (layers/memory.hpp, Recompute): the same
  // gradients, bit for bit, in every mode.
  void set_recompute(Recompute r) { recompute_ = r; }

  // The bytes the step holds after a pass (tests/unit/test_memory_items.cpp holds layers/memory.hpp's
  // estimate to them): each block's own buffers, the scratch block they share, the step's own.
  // A backend that can size its buffers (bytes_of) only.
  struct HeldBytes {
    std::vector<double> block;  // [2L] buffers, routing and row tables a block keeps
    double scratch = 0;         // the scratch block (recomputation; one block's dropped buffers)
    double step = 0;            // residual stream, logits, backward workspaces
  };
  template <class B = Be>
  HeldBytes held_bytes() const {
    const B& be = be_;
    auto block = [&be](const Block& c) {
      const Routing& r = c.routing;
      const SourceRows& src = c.src;
      double n = be.bytes_of(c.hin) + be.bytes_of(c.xn) + be.bytes_of(c.mean) + be.bytes_of(c.rstd) +
                 be.bytes_of(c.x_src) + be.bytes_of(c.y) + be.bytes_of(c.tables);
      n += 4.0 * (r.xm.capacity() + r.probs.capacity() + r.lse.capacity() + r.choice.capacity() +
                  r.gate.capacity() + r.row_patch.capacity() + r.row_slot.capacity()) + r.kept.capacity();
      n += 4.0 * (src.token.capacity() + src.gate.capacity() + src.seg.capacity() + src.pos.capacity());
      for (const auto& k : c.chunk)
        n += be.bytes_of(k->rows) + be.bytes_of(k->mlp) + be.bytes_of(k->attn) + be.bytes_of(k->y_owner) +
             be.bytes_of(k->dy_owner) + be.bytes_of(k->dx_owner);
      return n;
    };
    HeldBytes h;
    for (const auto& c : blocks_) h.block.push_back(block(*c));
    if (scratch_) h.scratch = block(*scratch_);
    h.step = be.bytes_of(tokens_) + be.bytes_of(h_) + be.bytes_of(hf_) + be.bytes_of(fmean_) + be.bytes_of(frstd_) +
             be.bytes_of(logits_) + be.bytes_of(dhf_) + be.bytes_of(dh_) + be.bytes_of(dy_) + be.bytes_of(dx_) +
             be.bytes_of(dxn_) + 4.0 * dgate_.high_water();
    return h;
  }

  void forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale,
                        ForwardStats* stats) override {
    if (B <= 0) fail("step: empty micro-batch");
    Model& m = *model_;
    const int N = B * spec_.seq_len, d = spec_.d, V = spec_.vocab, nb = 2 * spec_.layers;
    be_.begin_step(m.params(), /*with_grads=*/true);
    if constexpr (!Be::kHostMemory) be_.defer_figures = fig_slot_ >= 0;
    forward(inputs, B, /*dropless=*/false, stats);
    // Loss = mean CE: dlogits = (softmax − onehot) · loss_scale / N.
    stats->ce_sum = be_.cross_entropy(/*backward=*/true, logits_.data(), targets, N, V,
                                      loss_scale / static_cast<float>(N));
    if constexpr (!Be::kHostMemory)
      if (fig_slot_ >= 0) {  // the micro-batch's loss and router figures stay in the backend
        be_.figures_add_loss(fig_slot_, static_cast<double>(N));
        for (int b = 0; b < nb; ++b)
          if (blocks_[b]->routed)
            be_.figures_add_block(fig_slot_, blocks_[b]->route, step_figure_block(fig_layout_, b, blocks_[b]->routing.k));
        be_.figures_add_aux(fig_slot_);
      }
    // LM head (tied): logits = hf · Wembᵀ.
    const int embed = m.embed_index();
    be_.gemm(true, false, V, d, N, 1.0f, logits_.data(), V, hf_.data(), d, 1.0f, grad(embed), d);
    dhf_.resize(static_cast<size_t>(N) * d);
    be_.gemm(false, false, N, d, V, 1.0f, logits_.data(), V, val(embed), d, 0.0f, dhf_.data(), d);
    dh_.resize(static_cast<size_t>(N) * d);
    be_.zero(dh_);  // accumulated into
    be_.layernorm_backward(dh_.data(), grad(m.final_norm_scale_index()), grad(m.final_norm_bias_index()),
                           dhf_.data(), h_.data(), val(m.final_norm_scale_index()), fmean_.data(), frstd_.data(), N,
                           d);
    for (int b = nb - 1; b >= 0; --b) timed_phase(b, true, [&] { block_backward(b, N, loss_scale); });
    be_.embedding_backward(grad(embed), dh_.data(), tokens_, N, V, d);
    be_.end_step(m.params(), /*with_grads=*/true);
    if (hook_) {
      if constexpr (!Be::kHostMemory)  // the backend's gradients are final only now
        for (int b = nb - 1; b >= 0; --b) hook_(b);
      hook_(-1);
    }
  }

  void forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats) override {
    const int N = B * spec_.seq_len;
    if (N == 0 && !exchanges()) {  // no batch left, and nothing collective inside to take part in
      stats->blocks.assign(2 * spec_.layers, BlockStats{});
      stats->ce_sum = 0;
      stats->tokens = 0;
      stats->aux_loss = stats->flops = 0;
      return;
    }
    be_.begin_step(model_->params(), /*with_grads=*/false);
    if constexpr (!Be::kHostMemory) be_.defer_figures = false;  // evaluation's figures come down
    forward(inputs, B, /*dropless=*/true, stats);
    be_.end_step(model_->params(), /*with_grads=*/false);
    stats->ce_sum = N == 0 ? 0.0  // took part in the exchanges with nothing of its own
                           : be_.cross_entropy(/*backward=*/false, logits_.data(), targets, N, spec_.vocab, 1.0f);
    probs_rows_ = N;
  }

  void set_backward_hook(std::function<void(int)> hook) override { hook_ = std::move(hook); }
  const Routing& routing(int b) const override {
    const Block& c = *blocks_.at(b);
    if constexpr (!Be::kHostMemory)  // the backend kept the decisions: they come down now (not inside a step)
      if (c.routed) const_cast<Be&>(be_).routing_to_host(const_cast<Routing&>(c.routing), const_cast<Block&>(c).route);
    return c.routing;
  }
  const float* probs() override {
    if constexpr (Be::kHostMemory) {
      return logits_.data();
    } else {
      probs_host_.resize(static_cast<size_t>(probs_rows_) * spec_.vocab);
      be_.download(logits_, std::span<float>(probs_host_.data(), probs_host_.size()));
      be_.synchronize();
      return probs_host_.data();
    }
  }
  void take_exchange_seconds(double* busy, double* exposed) override { be_.take_exchange_seconds(busy, exposed); }
  std::string describe() const override { return be_.describe(); }
  void close() override { be_.close(); }
  void set_phase_log(std::vector<PhaseTime>* log) override { phase_log_ = log; }
  void reduce_gradients(GradientSync& sync, int bucket) override {
    be_.reduce_gradients(sync, model_->params(), bucket);
  }
  double gradient_sum_squares(GradientSync* sync) override { return be_.gradient_sum_squares(sync, model_->params()); }
  void optimizer_update(AdamW& opt, double lr, int step, float clip_scale) override {
    be_.adamw_update(opt, model_->params(), lr, step, clip_scale);
  }
  void zero_gradients() override { be_.zero_grads(model_->params()); }
  void state_to_host(AdamW* opt) override { be_.to_host(model_->params(), opt); }
  void state_from_host() override { be_.from_host(model_->params()); }
  bool figures_begin(const StepFigureLayout& layout, int slot, int slots) override {
    if constexpr (Be::kHostMemory) {
      return false;
    } else {
      fig_layout_ = layout;
      fig_slot_ = slot;
      be_.figures_zero(slot, slots, layout.size());
      return true;
    }
  }
  void figures_end() override {
    if constexpr (!Be::kHostMemory) be_.defer_figures = false;
    fig_slot_ = -1;
  }
  double figures_loss(int slot) override {
    if constexpr (Be::kHostMemory) return 0;
    else return be_.figures_loss(slot);
  }
  void figures_fetch(std::span<double> host, int n) override {
    if constexpr (!Be::kHostMemory) be_.figures_fetch(host, n);
  }

 private:
  template <class T>
  using Buf = typename Be::template Buffer<T>;

  // The owner side of one chunk of a block: what reached this rank's experts, and their caches.
  struct Chunk {
    typename Be::Rows rows;  // the experts' input rows: source order, or owner order when rows travel
    typename Be::MlpCache mlp;
    typename Be::AttnCache attn;
    ExchangePlan plan;                       // rows travel: the chunk's plan (host)
    ExpertRows owner_meta;                   // batched metadata: what reaches this rank's experts (no x)
    Buf<float> y_owner, dy_owner, dx_owner;  // rows travel: [R_dst, d] outputs, output / input gradients
  };

  // Everything one block keeps from forward for backward.
  struct Block {
    ExpertKind kind = ExpertKind::mlp;
    bool routed = true;                  // false: dense attention / dense MLP (routing_all_to_one)
    RouterSpec router;
    ExpertExchange* exchange = nullptr;  // null: every expert of the block is here, nothing travels
    Buf<float> hin, xn, mean, rstd;      // [N, d] residual stream entering the block, normalised; [N], [N]
    typename Be::RouteCache route;       // what the backend keeps of routing for its backward
    Routing routing;
    SourceRows src;                      // the routed rows, chunk-major (row_tables; the host's part on a device)
    typename Be::CombineTables tables;   // the rows' tokens and gates, and the combine's order
    Buf<float> x_src;                    // rows travel: [R, d] rows to send, source order
    Buf<float> y;                        // [R, d] expert outputs, source order
    std::vector<std::unique_ptr<Chunk>> chunk;  // [≥ chunks] (chunks own non-movable device state)
  };

  bool exchanges() const {
    for (const auto& c : blocks_)
      if (c->exchange) return true;
    return false;
  }
  const float* val(int i) { return be_.values() + model_->params().info(i).offset; }
  float* grad(int i) { return be_.grads() + model_->params().info(i).offset; }

  template <class Pass>
  void timed_phase(int b, bool backward, Pass&& pass) {
    if (!phase_log_) {
      pass();
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const double busy0 = be_.exchange_busy_seconds();
    pass();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    phase_log_->push_back({b, backward, wall, be_.exchange_busy_seconds() - busy0});
  }

  // The chunks of block c, each with its plan's name for the collective watchdog's report.
  void ensure_chunks(Block& c, int b) {
    const int C = chunks_;
    if (recompute_ != Recompute::none) {
      if (!scratch_) scratch_ = std::make_unique<Block>();
      while (static_cast<int>(scratch_->chunk.size()) < C) scratch_->chunk.push_back(std::make_unique<Chunk>());
    }
    while (static_cast<int>(c.chunk.size()) < C) c.chunk.push_back(std::make_unique<Chunk>());
    for (int ch = 0; ch < C; ++ch) {
      std::string& where = c.chunk[ch]->plan.where;
      where = "layer ";
      where += std::to_string(b / 2);
      where += c.kind == ExpertKind::attention ? " attention (block " : " MLP (block ";
      where += std::to_string(b);
      where += "), chunk ";
      where += std::to_string(ch + 1);
      where += " of ";
      where += std::to_string(C);
    }
  }

  // Embedding, blocks (block b writes block b+1's input, so every block's input stays for
  // backward without a copy), final norm, logits.
  void forward(const int32_t* inputs, int B, bool dropless, ForwardStats* stats) {
    const Model& m = *model_;
    const int N = B * spec_.seq_len, d = spec_.d, V = spec_.vocab, nb = 2 * spec_.layers;
    for (int i = 0; i < N; ++i)
      if (inputs[i] < 0 || inputs[i] >= V) fail("token id ", inputs[i], " out of range [0, ", V, ")");
    tokens_.resize(N);
    be_.upload(tokens_, std::span<const int32_t>(inputs, N));
    h_.resize(static_cast<size_t>(N) * d);
    for (auto& c : blocks_) c->hin.resize(static_cast<size_t>(N) * d);
    be_.gather_rows(nb > 0 ? blocks_[0]->hin.data() : h_.data(), val(m.embed_index()), tokens_.data(), N, d);
    stats->blocks.assign(nb, BlockStats{});
    stats->aux_loss = 0;
    stats->flops = 0;
    for (int b = 0; b < nb; ++b) {
      timed_phase(b, false, [&] {
        block_forward(b, b + 1 < nb ? blocks_[b + 1]->hin.data() : h_.data(), B, dropless, &stats->blocks[b]);
      });
      stats->aux_loss += stats->blocks[b].balance_loss + stats->blocks[b].z_loss;
      stats->flops += stats->blocks[b].flops;
    }
    stats->flops += flops_head_forward(spec_, N);
    hf_.resize(static_cast<size_t>(N) * d);
    fmean_.resize(N);
    frstd_.resize(N);
    be_.layernorm_forward(hf_.data(), fmean_.data(), frstd_.data(), h_.data(), val(m.final_norm_scale_index()),
                          val(m.final_norm_bias_index()), N, d);
    logits_.resize(static_cast<size_t>(N) * V);
    be_.gemm(false, true, N, V, d, 1.0f, hf_.data(), d, val(m.embed_index()), d, 0.0f, logits_.data(), V);
    stats->tokens = N;
  }

  // Block b: out = hin + b_out + Σ_kept w_e · expert_e(LayerNorm(hin)).
  void block_forward(int b, float* out, int B, bool dropless, BlockStats* bs) {
    Block& c = *blocks_[b];
    const BlockParams& bp = model_->blocks()[b];
    const int d = spec_.d, T = spec_.seq_len, N = B * T, C = chunks_;
    const float* hin = c.hin.data();
    ensure_chunks(c, b);
    Block& nh = norm_home(c);  // where xn, mean, rstd and the rows to send live (recomputation: scratch)
    nh.xn.resize(static_cast<size_t>(N) * d);
    nh.mean.resize(N);
    nh.rstd.resize(N);
    be_.layernorm_forward(nh.xn.data(), nh.mean.data(), nh.rstd.data(), hin, val(bp.norm_scale), val(bp.norm_bias), N,
                          d);
    // 1. Route (an unrouted block: every token to its one expert).
    Routing& r = c.routing;
    if (c.routed)
      be_.route(r, c.route, c.router, nh.xn.data(), val(bp.router_w), val(bp.router_b), N, d, dropless);
    else
      routing_all_to_one(r, N, d);
    // 2. Source rows: kept patches expanded to tokens, chunk-major, then by global expert.
    be_.row_tables(c.tables, c.src, r, c.route, B, T, C);
    const int R = c.src.rows();
    y_home(c).resize(static_cast<size_t>(R) * d);
    const bool travel = c.exchange != nullptr;

    // 3. The pipeline: chunk c's experts run while the rows of chunks c+1.. travel to their owners
    //    and chunk c−1's outputs travel back. Every chunk's rows are queued at once, ahead of any
    //    return: a forward pass moves as many bytes as a backward pass for about half its compute,
    //    so it is exchange-bound and its link must not wait for the compute (dispatching one chunk
    //    ahead left the link idle between a chunk's return and the next dispatch: bench-overlap_layer
    //    at ratio 1, 4 chunks, 60% → 73% hidden).
    arrived_.assign(C, typename Be::Ticket{});
    if (travel) {
      nh.x_src.resize(static_cast<size_t>(R) * d);
      be_.gather_source_rows(nh.x_src.data(), nh.xn.data(), c.tables, 0, R, d);
      const float* x_src = nh.x_src.data();
      if constexpr (Be::kBatchedMetadata) {
        // Every chunk's counts and sequences in one collective each, then the rows alone. The rows'
        // positions go with the sequences from the host, or, where the backend has its own memory,
        // with the rows from there (they never come down).
        constexpr bool apart = !Be::kHostMemory;
        meta_.resize(C);
        for (int ch = 0; ch < C; ++ch) {
          const int r0 = c.src.chunk_begin[ch];
          meta_[ch] = {&c.chunk[ch]->plan, &c.src.chunk_offsets[ch], c.src.seg.data() + r0,
                       apart ? nullptr : c.src.pos.data() + r0, &c.chunk[ch]->owner_meta, apart};
        }
        c.exchange->dispatch_metadata_chunks(meta_);
        const int32_t* pos_src = apart ? be_.source_positions(c.tables) : nullptr;
        for (int ch = 0; ch < C; ++ch) {
          Chunk& k = *c.chunk[ch];
          const int n = k.owner_meta.rows();
          be_.set_rows(k.rows, k.owner_meta.offsets, k.owner_meta.seg.data(),
                       apart ? nullptr : k.owner_meta.pos.data(), n, d);
          int32_t* pos_owner = apart ? be_.owner_positions(k.rows, n, T) : nullptr;
          work_home(c, ch).y_owner.resize(static_cast<size_t>(n) * d);
          const size_t r0 = c.src.chunk_begin[ch];
          arrived_[ch] = be_.submit([&c, &k, x_src, pos_src, pos_owner, r0, d] {
            if (pos_owner) c.exchange->positions_to_owner(k.plan, pos_src + r0, pos_owner);
            c.exchange->to_owner(k.plan, x_src + r0 * d, k.rows.x.data(), d);
          });
        }
      } else {
        // Each chunk's counts and metadata travel with its rows (the exchange fills the rows' tables).
        for (int ch = 0; ch < C; ++ch) {
          const size_t r0 = c.src.chunk_begin[ch];
          arrived_[ch] = be_.submit([&c, ch, x_src, r0, d] {
            c.exchange->dispatch(c.chunk[ch]->plan, c.src.chunk_offsets[ch], x_src + r0 * d,
                                 c.src.seg.data() + r0, c.src.pos.data() + r0, d, c.chunk[ch]->rows);
          });
        }
      }
    }
    // While the rows are on the wire: what needs no expert output — the combine's order, the block's
    // figures and, when rows travel, the residual + bias part of the combine (otherwise the backend
    // may fuse it into the combine, one pass over the output).
    be_.combine_prepare(c.tables, N, B, T, C);
    const float* bias = val(bp.b_out);
    if (travel) be_.residual_bias_rows(out, hin, bias, N, d);
    if (bs) block_stats_from_routing(bs, spec_, b, r, T, c.kind == ExpertKind::attention, c.routed);
    returned_.assign(C, typename Be::Ticket{});
    const ExpertWeights w = expert_weights(bp);
    float* y_src = y_home(c).data();
    for (int ch = 0; ch < C; ++ch) {
      Chunk& k = rows_home(c, ch);
      Chunk& out = work_home(c, ch);
      float* y;
      if (travel) {
        be_.wait(arrived_[ch]);
        if constexpr (!Be::kBatchedMetadata) out.y_owner.resize(static_cast<size_t>(k.rows.rows()) * d);
        y = out.y_owner.data();
      } else {
        const int r0 = c.src.chunk_begin[ch];
        gather_rows_here(c, ch, nh.xn.data());
        y = y_src + static_cast<size_t>(r0) * d;
      }
      ExpertSite site{k.rows, out.mlp, out.attn};
      visit_expert_kind(c.kind, [&](auto kind) { kind.forward(be_, y, site, w, spec_); });
      round_rows(y, k.rows.rows());
      if (travel) {
        const size_t r0 = c.src.chunk_begin[ch];
        returned_[ch] = be_.submit([&c, &k, &out, y_src, r0, d] {
          c.exchange->to_source(k.plan, out.y_owner.data(), y_src + r0 * d, d);
        });
      }
    }
    // 4. Combine: out = hin + bias + Σ_kept w_e · y_e, each token's rows in ascending row order
    //    (expert order: deterministic whatever the chunk count), chunk by chunk as the rows return —
    //    the earlier chunks' combine runs while the last chunk's return is still on the wire.
    for (int ch = 0; ch < C; ++ch) {
      if (travel) be_.wait(returned_[ch]);
      be_.combine_chunk(out, travel ? nullptr : hin, bias, y_src, c.tables, ch, d);
    }
    be_.wait_all();
  }

  // Block b's backward; dh_ is the residual stream's gradient (in and out).
  void block_backward(int b, int N, float loss_scale) {
    Block& c = *blocks_[b];
    const BlockParams& bp = model_->blocks()[b];
    const int d = spec_.d, R = c.src.rows(), C = chunks_;
    const Routing& r = c.routing;
    const bool travel = c.exchange != nullptr;
    const float* dh = dh_.data();
    Block& nh = norm_home(c);
    const float* y = nullptr;  // the experts' outputs, source order (formed again first when they are dropped)
    // Combine backward: dy = w·dh[token] and dgate += <dh[token], y> (rows in ascending order).
    // Workspaces shared by every block (backward runs one block at a time): allocated once.
    dgate_.resize(static_cast<size_t>(r.P) * r.k);  // host, accumulated into: zeroed
    dy_.resize(static_cast<size_t>(R) * d);
    dx_.resize(static_cast<size_t>(R) * d);
    // The same pipeline in reverse: output gradients travel to the owners chunk by chunk; each
    // chunk's input gradient is formed first and sent back at once, and its weight gradients are
    // computed while that return (and the next chunk's dispatch) is on the wire. Only the first
    // chunk's output gradients are needed before its send; the rest of the combine backward, the
    // bias gradient and the router's backward (no expert result needed) fill the wait for it.
    auto send = [this, &c, d](int ch) {
      Chunk& k = *c.chunk[ch];
      Chunk& work = work_home(c, ch);
      const size_t r0 = c.src.chunk_begin[ch];
      return be_.submit(
          [this, &c, &k, &work, r0, d] { c.exchange->to_owner(k.plan, dy_.data() + r0 * d, work.dy_owner.data(), d); });
    };
    typename Be::Ticket next{};
    if (!travel) {
      recompute_block(b, N);  // the experts' outputs are among what it forms again
      y = y_home(c).data();
      be_.combine_backward(dy_.data(), dgate_.data(), dh, c.tables, y, 0, R, true, c.routed, d);
    } else {
      for (int ch = 0; ch < C; ++ch) {
        Chunk& work = work_home(c, ch);
        const size_t owner_n = static_cast<size_t>(c.chunk[ch]->rows.rows()) * d;
        work.dy_owner.resize(owner_n);
        work.dx_owner.resize(owner_n);
      }
      const int first_end = c.src.chunk_begin[1];
      y = c.y.data();  // returned to this rank: kept in every mode
      be_.combine_backward(dy_.data(), dgate_.data(), dh, c.tables, y, 0, first_end, true, false, d);
      next = send(0);
      recompute_block(b, N);  // while the first chunk's output gradients travel
      be_.combine_backward(dy_.data(), dgate_.data(), dh, c.tables, y, 0, first_end, false, c.routed, d);
      be_.combine_backward(dy_.data(), dgate_.data(), dh, c.tables, y, first_end, R, true, c.routed, d);
    }
    be_.bias_grad(grad(bp.b_out), dh, N, d);
    dxn_.resize(static_cast<size_t>(N) * d);
    be_.zero(dxn_);  // accumulated into
    if (c.routed)
      be_.route_backward(r, c.route, c.router, dgate_.data(), nh.xn.data(), val(bp.router_w), dxn_.data(),
                         grad(bp.router_w), grad(bp.router_b), loss_scale);
    // The experts' backward on the rows they computed (owner order when rows travelled).
    const ExpertWeights w = expert_weights(bp);
    ExpertWeightGrads gw = expert_weight_grads(bp);
    for (int ch = 0; ch < C; ++ch) {
      Chunk& k = rows_home(c, ch);
      Chunk& work = work_home(c, ch);
      const size_t r0 = c.src.chunk_begin[ch];
      const float* dy = dy_.data() + r0 * d;
      float* dx = dx_.data() + r0 * d;
      if (travel) {
        be_.wait(next);
        if (ch + 1 < C) next = send(ch + 1);
        dy = work.dy_owner.data();
        dx = work.dx_owner.data();
      }
      ExpertSite site{k.rows, work.mlp, work.attn};
      visit_expert_kind(c.kind, [&](auto kind) { kind.backward_data(be_, dx, dy, site, w, spec_); });
      round_rows(dx, k.rows.rows());
      if (travel)
        be_.submit([this, &c, &k, &work, r0, d] {
          c.exchange->to_source(k.plan, work.dx_owner.data(), dx_.data() + r0 * d, d);
        });
      visit_expert_kind(c.kind, [&](auto kind) { kind.backward_weights(be_, gw, dy, site, spec_); });
    }
    be_.wait_all();
    be_.combine_backward_inputs(dxn_.data(), dx_.data(), c.tables, d);
    // LayerNorm backward into the residual stream's gradient.
    be_.layernorm_backward(dh_.data(), grad(bp.norm_scale), grad(bp.norm_bias), dxn_.data(), c.hin.data(),
                           val(bp.norm_scale), nh.mean.data(), nh.rstd.data(), N, d);
    if constexpr (Be::kHostMemory)
      if (hook_) hook_(b);
  }

  // Recomputation (layers/memory.hpp, Recompute): where each of block c's buffers lives. What a
  // mode drops lives in the scratch block every block shares (a block's backward runs alone) and is
  // formed again by recompute_block. What crossed the network stays with the block in every mode
  // (the rows its experts received, Chunk::rows, and the outputs returned to it, Block::y): forming
  // it again would repeat the block's exchanges, two all-to-alls that cost the link what they cost
  // in forward, to save two [R, d] buffers.
  // The experts' outputs before their return, their caches, and the owner-side gradients.
  Chunk& work_home(Block& c, int ch) { return recompute_ == Recompute::none ? *c.chunk[ch] : *scratch_->chunk[ch]; }
  // The normalised input, its statistics and the rows to send.
  Block& norm_home(Block& c) { return recompute_ == Recompute::blocks ? *scratch_ : c; }
  // The experts' input rows and their outputs in source order, when they did not travel.
  Chunk& rows_home(Block& c, int ch) {
    return recompute_ == Recompute::blocks && !c.exchange ? *scratch_->chunk[ch] : *c.chunk[ch];
  }
  Buf<float>& y_home(Block& c) { return recompute_ == Recompute::blocks && !c.exchange ? scratch_->y : c.y; }
  // What an expert kind reads and writes (layers/expert_kinds.hpp): the rows, and the caches, which
  // may live in different chunks.
  struct ExpertSite {
    const typename Be::Rows& rows;
    typename Be::MlpCache& mlp;
    typename Be::AttnCache& attn;
  };

  // Untravelled rows: chunk ch's rows gathered from the normalised input (source order).
  void gather_rows_here(Block& c, int ch, const float* xn) {
    Chunk& k = rows_home(c, ch);
    const int r0 = c.src.chunk_begin[ch], n = c.src.chunk_begin[ch + 1] - r0;
    be_.set_source_rows(k.rows, c.tables, ch, spec_.d);
    be_.gather_source_rows(k.rows.x.data(), xn, c.tables, r0, n, spec_.d);
  }

  // Block b's backward forms again what its forward dropped (nothing with --recompute none): the
  // norm of its input (blocks), the rows its experts read when they did not travel (blocks), and
  // every chunk's expert caches, by running the experts' forward on the same rows with the same
  // weights — the same operations in the same order, so the same bits. The routing is the one its
  // forward decided (kept: the rows and their order depend on it).
  void recompute_block(int b, int N) {
    if (recompute_ == Recompute::none) return;
    Block& c = *blocks_[b];
    const BlockParams& bp = model_->blocks()[b];
    const int d = spec_.d;
    Block& nh = norm_home(c);
    if (recompute_ == Recompute::blocks) {
      nh.xn.resize(static_cast<size_t>(N) * d);
      nh.mean.resize(N);
      nh.rstd.resize(N);
      be_.layernorm_forward(nh.xn.data(), nh.mean.data(), nh.rstd.data(), c.hin.data(), val(bp.norm_scale),
                            val(bp.norm_bias), N, d);
    }
    // The outputs: with rows kept in source order, where the combine backward reads them (blocks) or
    // the scratch (experts: the block's own are kept); at the owner, the scratch's.
    Buf<float>& ys = c.exchange || recompute_ == Recompute::blocks ? y_home(c) : scratch_->y;
    if (!c.exchange) ys.resize(static_cast<size_t>(c.src.rows()) * d);
    const ExpertWeights w = expert_weights(bp);
    for (int ch = 0; ch < chunks_; ++ch) {
      Chunk& k = rows_home(c, ch);
      Chunk& work = work_home(c, ch);
      float* y;
      if (c.exchange) {
        work.y_owner.resize(static_cast<size_t>(k.rows.rows()) * d);
        y = work.y_owner.data();
      } else {
        if (recompute_ == Recompute::blocks) gather_rows_here(c, ch, nh.xn.data());
        y = ys.data() + static_cast<size_t>(c.src.chunk_begin[ch]) * d;
      }
      ExpertSite site{k.rows, work.mlp, work.attn};
      visit_expert_kind(c.kind, [&](auto kind) { kind.forward(be_, y, site, w, spec_); });
      round_rows(y, k.rows.rows());
    }
  }

  // --precision bf16 (runtime/bf16.hpp): the experts' outputs and input gradients, `rows` rows of
  // d, rounded to bf16 where they are formed, on every layout: rows that travel as bf16
  // (parallel/mpi_exchange.hpp) then lose nothing more on the wire, and every layout rounds the same
  // values the same way (layouts still differ by fp32 reassociation: docs/architecture.md,
  // Contracts). (The rows the experts read and their output gradients need no rounding here: the
  // experts' GEMMs round their inputs.)
  void round_rows(float* p, int rows) {
    if (compute_precision() == Precision::bf16) be_.round_bf16(p, static_cast<size_t>(rows) * spec_.d);
  }

  ExpertWeights expert_weights(const BlockParams& bp) {
    return {val(bp.w_in), bp.b_in >= 0 ? val(bp.b_in) : nullptr, val(bp.w_out)};
  }
  ExpertWeightGrads expert_weight_grads(const BlockParams& bp) {
    return {grad(bp.w_in), bp.b_in >= 0 ? grad(bp.b_in) : nullptr, grad(bp.w_out)};
  }

  Be be_;
  ModelSpec spec_;
  std::vector<std::unique_ptr<Block>> blocks_;  // [2L] (blocks own non-movable device state)
  int chunks_ = 1;
  Recompute recompute_ = Recompute::none;
  std::unique_ptr<Block> scratch_;  // what recomputation drops, shared by every block (its chunks: [≥ chunks])
  std::function<void(int)> hook_;
  std::vector<PhaseTime>* phase_log_ = nullptr;
  Buf<int32_t> tokens_;                          // [N]
  Buf<float> h_, hf_, fmean_, frstd_, logits_;   // [N, d] after the last block, final-normed; [N]; [N, V]
  Buf<float> dhf_, dh_, dy_, dx_, dxn_;          // backward workspaces, reused by every block and step
  FloatBuffer dgate_;                            // [P, k] on the host
  std::vector<typename Be::Ticket> arrived_, returned_;  // [chunks] forward: rows at the owners, back
  std::vector<ChunkMetadata> meta_;              // [chunks] batched metadata
  std::vector<float> probs_host_;
  int probs_rows_ = 0;
  StepFigureLayout fig_layout_;  // figures_begin .. figures_end: where the backend adds the figures
  int fig_slot_ = -1;
};

}  // namespace uoe
