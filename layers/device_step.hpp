// The device training step, written once over a backend (layers/device_model.hpp explains the
// design). DeviceStep<Backend> is Model::forward_backward / forward_eval expressed as calls into a
// Backend, with the Model's chunks (set_chunks): each block's source rows are cut into the same
// chunks, and the experts run chunk by chunk in the same order, so the results are the Model's bit
// for bit at the same chunk count. With ep > 1 the routed rows travel between ranks through an
// ExpertExchange: plan and metadata over MPI from the host (every chunk's, before the block's rows
// move: the one host-side exchange per block), rows in the backend's memory (on GPUs an MpiExchange
// with an NCCL payload communicator; in the CPU tests the MPI one), as scheduled exchanges — the
// scheduler issue's pipeline: chunk c's experts run while chunk c+1's rows travel to their owners
// and chunk c−1's outputs travel back, in forward and (output / input gradients) in backward.
//   - CudaStepBackend (layers/device_model.cu): cuda:: kernels, cuBLAS, device buffers — the GPU path;
//   - tests/unit/step_backend_cpu.hpp: the CPU kernels on host buffers — so that this orchestration
//     (which rows go where, what accumulates and what overwrites, the order of every sum) runs in
//     the CPU tests against the CPU Model (test_device_step.cpp), not only on a GPU.
//
// A Backend provides:
//   template <class T> Buffer      resize(n) (grow-only, contents undefined after growth), data(), size()
//   Rows, MlpCache, AttnCache      the experts' input rows and caches
//   Scatter                        a plan for scatter-adds by destination (sources in ascending order)
//   upload(Buffer&, span), download(const Buffer&, span), zero(Buffer&), synchronize()
//   layernorm_forward/_backward, gather_rows, gather_rows_scaled, row_dots, residual_bias_rows,
//   scatter_plan, scatter_add, bias_grad, cross_entropy (returns the loss sum), gemm,
//   set_rows (the experts' row tables: offsets per expert, sequence and position of each row; x
//   sized for the rows), mlp_/attn_ forward, backward_data, backward_weights
// with the semantics of the CPU kernels of the same names (runtime/kernels.hpp, layers/experts.hpp),
// and the exchange schedule of parallel/scheduler.hpp:
//   Ticket                                a type naming a queued exchange
//   submit(std::function<void()>)         queues an exchange (it reads what compute queued before it)
//   wait(Ticket), wait_all()              compute goes on only once that exchange is complete
//   end_step()                            everything of the step finished (timings, error checks)
// (the CPU backend: a CommScheduler — a communication thread or in line; the CUDA backend: the
// StreamScheduler — a communication stream ordered against the compute stream by events).
#pragma once
#include <algorithm>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "layers/model.hpp"
#include "layers/router.hpp"
#include "parallel/exchange.hpp"
#include "runtime/error.hpp"
#include "runtime/kernels.hpp"

namespace uoe {

template <class Be>
class DeviceStep {
 public:
  // `host` keeps the master parameters (see layers/device_model.hpp). `exchange` moves the routed
  // rows when this rank does not hold every expert: the host Model's plan and metadata logic with
  // its payload in the backend's memory (on a GPU: an MpiExchange whose payload communicator is
  // NCCL); null takes the host Model's own exchange (host memory: the CPU backend).
  DeviceStep(Model& host, Be& be, ExpertExchange* exchange = nullptr)
      : host_(host), be_(be), spec_(host.spec()) {
    ExpertExchange* rows_exchange = exchange ? exchange : host_.exchange();
    is_router_.assign(host_.params().count(), false);
    for (int b = 0; b < 2 * spec_.layers; ++b) {
      for (int i : {host_.blocks()[b].router_w, host_.blocks()[b].router_b})
        if (i >= 0) is_router_[i] = true;
      auto c = std::make_unique<Block>();
      c->attention = b % 2 == 0;
      c->routed = spec_.block_routed(b);
      c->router = block_router_spec(spec_, b);
      // Routed blocks exchange rows when the host Model's exchange is not the identity (ep > 1);
      // otherwise, and in unrouted blocks, rows stay in this rank's buffers.
      c->exchange = c->routed && !host_.exchange()->identity() ? rows_exchange : nullptr;
      blocks_.push_back(std::move(c));
    }
  }

  void set_backward_hook(std::function<void(int)> hook) { hook_ = std::move(hook); }
  // Model::set_schedule's chunk count: each block's rows are exchanged and computed in `chunks`
  // pieces (the Model's chunks: same rows, same order of every sum at the same count).
  void set_chunks(int chunks) {
    if (chunks < 1) fail("device step: chunks must be at least 1, got ", chunks);
    chunks_ = chunks;
  }
  const Routing& routing(int b) const { return blocks_.at(b)->routing; }

  // Model::forward_backward's contract: adds the gradient of loss_scale · (mean CE + router losses)
  // into host.params().grads(), in the Model's order (the device continues from the host's values).
  void forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale, ForwardStats* stats) {
    if (B <= 0) fail("device step: empty micro-batch");
    const int N = B * spec_.seq_len, d = spec_.d, V = spec_.vocab, nb = 2 * spec_.layers;
    const size_t total = host_.params().total();
    upload_params();
    // The device gradients continue from the host's (earlier micro-batches of the step), so every
    // sum runs in the CPU model's order; only the routers' gradients accumulate on the host.
    grads_.resize(total);
    be_.upload(grads_, std::span<const float>(host_.params().grads().data(), total));
    forward(inputs, B, /*dropless=*/false, stats);
    // Loss = mean CE: dlogits = (softmax − onehot) · loss_scale / N.
    be_.upload(targets_, std::span<const int32_t>(targets, N));
    stats->ce_sum = be_.cross_entropy(/*backward=*/true, logits_.data(), targets_.data(), N, V,
                                      loss_scale / static_cast<float>(N));
    const int embed = host_.embed_index();
    be_.gemm(true, false, V, d, N, 1.0f, logits_.data(), V, hf_.data(), d, 1.0f, grad(embed), d);
    dhf_.resize(static_cast<size_t>(N) * d);
    be_.gemm(false, false, N, d, V, 1.0f, logits_.data(), V, val(embed), d, 0.0f, dhf_.data(), d);
    dh_.resize(static_cast<size_t>(N) * d);
    be_.zero(dh_);
    be_.layernorm_backward(dh_.data(), grad(host_.final_norm_scale_index()), grad(host_.final_norm_bias_index()),
                           dhf_.data(), h_.data(), val(host_.final_norm_scale_index()), fmean_.data(), frstd_.data(),
                           N, d);
    for (int b = nb - 1; b >= 0; --b) block_backward(b, N, loss_scale);
    be_.scatter_plan(embed_plan_, tokens_.data(), N, V);
    be_.scatter_add(grad(embed), dh_.data(), embed_plan_, d, nullptr);
    // The gradients come back to the host's arena, all but the routers' (accumulated there directly;
    // their device copies are stale).
    grads_host_.resize(total);
    be_.download(grads_, std::span<float>(grads_host_.data(), total));
    be_.end_step();
    be_.synchronize();
    ParamStore& ps = host_.params();
    for (size_t i = 0; i < ps.count(); ++i) {
      const int t = static_cast<int>(i);
      if (is_router_[i]) continue;
      std::copy_n(grads_host_.data() + ps.info(t).offset, ps.info(t).size, ps.grad(t));
    }
    if (hook_) {
      for (int b = nb - 1; b >= 0; --b) hook_(b);
      hook_(-1);
    }
  }

  // Model::forward_eval's contract (dropless; ce_sum and tokens).
  void forward_eval(const int32_t* inputs, const int32_t* targets, int B, ForwardStats* stats) {
    const int N = B * spec_.seq_len;
    if (N == 0 && !exchanges()) {  // no batch left, and nothing collective inside to take part in
      stats->blocks.assign(2 * spec_.layers, BlockStats{});
      stats->ce_sum = 0;
      stats->tokens = 0;
      stats->aux_loss = stats->flops = 0;
      return;
    }
    upload_params();
    forward(inputs, B, /*dropless=*/true, stats);
    be_.end_step();
    if (N == 0) {  // took part in the exchanges with nothing of its own
      stats->ce_sum = 0;
      return;
    }
    be_.upload(targets_, std::span<const int32_t>(targets, N));
    stats->ce_sum = be_.cross_entropy(/*backward=*/false, logits_.data(), targets_.data(), N, spec_.vocab, 1.0f);
  }

 private:
  template <class T>
  using Buf = typename Be::template Buffer<T>;

  // One chunk of a block's rows as its experts see them (Model::ExpertChunk's counterpart).
  struct Chunk {
    typename Be::Rows rows;  // the experts' input rows: source order, or owner order when rows travel
    typename Be::MlpCache mlp;
    typename Be::AttnCache attn;
    // Expert parallelism (ep > 1): the chunk's exchange plan and row metadata on the host, its rows
    // at the owner in the backend's memory.
    ExchangePlan plan;
    ExpertRows owner_meta;                   // what reaches this rank's experts: offsets, seg, pos (no x)
    Buf<float> y_owner, dy_owner, dx_owner;  // [R_dst, d] expert outputs, output / input gradients
  };

  // One block's state (Model::BlockCache's counterpart).
  struct Block {
    bool attention = false, routed = true;
    RouterSpec router;
    Buf<float> hin, xn, mean, rstd;  // [N, d], [N, d], [N], [N]
    std::vector<float> xn_host;      // routed: the router's input on the host
    Routing routing;
    SourceRows src;
    std::vector<float> row_gate;     // [R] gate weight of each source row
    Buf<int32_t> token;              // [R] src.token
    Buf<float> gate;                 // [R] row_gate
    typename Be::Scatter by_token;   // source rows by token, ascending
    Buf<float> y;                    // [R, d] expert outputs, source order
    std::vector<std::unique_ptr<Chunk>> chunk;  // [≥ chunks] (chunks own non-movable device state)
    ExpertExchange* exchange = nullptr;  // null: every expert of the block is here
    Buf<float> x_src;                    // ep > 1: [R, d] rows to send, source order
  };

  bool exchanges() const {
    for (const auto& c : blocks_)
      if (c->exchange) return true;
    return false;
  }
  const float* val(int i) const { return values_.data() + host_.params().info(i).offset; }
  float* grad(int i) { return grads_.data() + host_.params().info(i).offset; }
  void upload_params() {
    const size_t total = host_.params().total();
    values_.resize(total);
    be_.upload(values_, std::span<const float>(host_.params().values().data(), total));
  }

  // The chunks of block c, each with its plan's name for the collective watchdog's report.
  void ensure_chunks(Block& c, int b) {
    const int C = chunks_;
    while (static_cast<int>(c.chunk.size()) < C) c.chunk.push_back(std::make_unique<Chunk>());
    for (int ch = 0; ch < C; ++ch)
      c.chunk[ch]->plan.where = "layer " + std::to_string(b / 2) + (c.attention ? " attention (block " : " MLP (block ") +
                                std::to_string(b) + "), chunk " + std::to_string(ch + 1) + " of " +
                                std::to_string(C) + ", device step";
  }

  // Model::block_forward.
  void block_forward(int b, float* out, int B, bool dropless, BlockStats* bs) {
    Block& c = *blocks_[b];
    const BlockParams& bp = host_.blocks()[b];
    const int d = spec_.d, T = spec_.seq_len, N = B * T, C = chunks_;
    c.xn.resize(static_cast<size_t>(N) * d);
    c.mean.resize(N);
    c.rstd.resize(N);
    be_.layernorm_forward(c.xn.data(), c.mean.data(), c.rstd.data(), c.hin.data(), val(bp.norm_scale),
                          val(bp.norm_bias), N, d);
    // 1. Route on the host with the CPU router (on the host's master router weights).
    Routing& r = c.routing;
    if (c.routed) {
      c.xn_host.resize(static_cast<size_t>(N) * d);
      be_.download(c.xn, std::span<float>(c.xn_host));
      be_.synchronize();
      router_forward(r, c.router, c.xn_host.data(), host_.params().value(bp.router_w),
                     host_.params().value(bp.router_b), N, d, dropless);
    } else {
      routing_all_to_one(r, N, d);
    }
    // 2. Source rows, chunk-major (the CPU model's code), and their tables on the device.
    source_rows_build(c.src, r, B, T, C);
    const int R = c.src.rows();
    c.row_gate.resize(R);
    for (int i = 0; i < R; ++i) c.row_gate[i] = r.gate[c.src.gate[i]];
    c.token.resize(R);
    c.gate.resize(R);
    be_.upload(c.token, std::span<const int32_t>(c.src.token));
    be_.upload(c.gate, std::span<const float>(c.row_gate));
    c.y.resize(static_cast<size_t>(R) * d);
    ensure_chunks(c, b);
    const bool travel = c.exchange != nullptr;
    if (travel) {
      // Every chunk's counts and row metadata over MPI from the host (one collective each for all the
      // chunks), then the rows to send; each chunk's owner-side tables and buffers are sized before
      // any exchange is queued.
      meta_.resize(C);
      for (int ch = 0; ch < C; ++ch) {
        const int r0 = c.src.chunk_begin[ch];
        meta_[ch] = {&c.chunk[ch]->plan, &c.src.chunk_offsets[ch], c.src.seg.data() + r0, c.src.pos.data() + r0,
                     &c.chunk[ch]->owner_meta};
      }
      c.exchange->dispatch_metadata_chunks(meta_);
      for (int ch = 0; ch < C; ++ch) {
        Chunk& k = *c.chunk[ch];
        be_.set_rows(k.rows, k.owner_meta.offsets, k.owner_meta.seg.data(), k.owner_meta.pos.data(),
                     k.owner_meta.rows(), d);
        k.y_owner.resize(static_cast<size_t>(k.owner_meta.rows()) * d);
      }
      c.x_src.resize(static_cast<size_t>(R) * d);
      be_.gather_rows(c.x_src.data(), c.xn.data(), c.token.data(), R, d);
    }
    // 3. The pipeline: chunk c's experts run while chunks c+1.. travel to their owners and chunk
    //    c−1's outputs travel back (with every expert here, nothing travels).
    auto dispatch = [this, &c, d](int ch) {
      Chunk& k = *c.chunk[ch];
      const size_t r0 = c.src.chunk_begin[ch];
      return be_.submit([&c, &k, r0, d] { c.exchange->to_owner(k.plan, c.x_src.data() + r0 * d, k.rows.x.data(), d); });
    };
    // Every chunk's rows queued at once, ahead of the returns (Model::block_forward says why).
    arrived_.assign(C, typename Be::Ticket{});
    if (travel)
      for (int ch = 0; ch < C; ++ch) arrived_[ch] = dispatch(ch);
    for (int ch = 0; ch < C; ++ch) {
      Chunk& k = *c.chunk[ch];
      const int r0 = c.src.chunk_begin[ch], n = c.src.chunk_begin[ch + 1] - r0;
      float* y = c.y.data() + static_cast<size_t>(r0) * d;
      if (travel) {
        be_.wait(arrived_[ch]);
        y = k.y_owner.data();
      } else {
        be_.set_rows(k.rows, c.src.chunk_offsets[ch], c.src.seg.data() + r0, c.src.pos.data() + r0, n, d);
        be_.gather_rows(k.rows.x.data(), c.xn.data(), c.token.data() + r0, n, d);
      }
      if (c.attention)
        be_.attn_forward(y, k.attn, k.rows, val(bp.w_in), val(bp.w_out), d, spec_.heads_per_expert(),
                         spec_.head_dim());
      else
        be_.mlp_forward(y, k.mlp, k.rows, val(bp.w_in), val(bp.b_in), val(bp.w_out), d, spec_.expert_ff());
      if (travel)
        be_.submit([&c, &k, r0, d] {
          c.exchange->to_source(k.plan, k.y_owner.data(), c.y.data() + static_cast<size_t>(r0) * d, d);
        });
    }
    // 4. Combine: out = hin + bias, then each token's rows in ascending row order, gate-weighted.
    be_.residual_bias_rows(out, c.hin.data(), val(bp.b_out), N, d);
    be_.scatter_plan(c.by_token, c.token.data(), R, N);
    if (bs) block_stats_from_routing(bs, spec_, b, r, T, c.attention, c.routed);
    if (travel) be_.wait_all();
    be_.scatter_add(out, c.y.data(), c.by_token, d, c.gate.data());
  }

  // Model::block_backward; dh_ is the residual gradient.
  void block_backward(int b, int N, float loss_scale) {
    Block& c = *blocks_[b];
    const BlockParams& bp = host_.blocks()[b];
    const int d = spec_.d, R = c.src.rows(), C = chunks_;
    const Routing& r = c.routing;
    const bool travel = c.exchange != nullptr;
    // Combine backward: dy = w·dh[token]; the gate gradients <dh[token], y> go to the host router.
    dy_.resize(static_cast<size_t>(R) * d);
    dx_.resize(static_cast<size_t>(R) * d);
    be_.gather_rows_scaled(dy_.data(), dh_.data(), c.token.data(), c.gate.data(), R, d);
    // The output gradients travel to the owners chunk by chunk; each chunk's input gradients are
    // formed first and sent back at once, its weight gradients computed while they travel. The
    // first chunk's send is queued before the bias and router work, which needs no expert result.
    auto send = [this, &c, d](int ch) {
      Chunk& k = *c.chunk[ch];
      const size_t r0 = c.src.chunk_begin[ch];
      return be_.submit([this, &c, &k, r0, d] { c.exchange->to_owner(k.plan, dy_.data() + r0 * d, k.dy_owner.data(), d); });
    };
    typename Be::Ticket next{};
    if (travel) {
      for (int ch = 0; ch < C; ++ch) {
        Chunk& k = *c.chunk[ch];
        const size_t owner_n = static_cast<size_t>(k.owner_meta.rows()) * d;
        k.dy_owner.resize(owner_n);
        k.dx_owner.resize(owner_n);
      }
      next = send(0);
    }
    be_.bias_grad(grad(bp.b_out), dh_.data(), N, d);
    dxn_.resize(static_cast<size_t>(N) * d);
    if (c.routed) {
      rowdot_.resize(R);
      be_.row_dots(rowdot_.data(), dh_.data(), c.token.data(), c.y.data(), R, d);
      rowdot_host_.resize(R);
      be_.download(rowdot_, std::span<float>(rowdot_host_));
      be_.synchronize();
      dgate_host_.assign(static_cast<size_t>(r.P) * r.k, 0.0f);
      for (int i = 0; i < R; ++i) dgate_host_[c.src.gate[i]] += rowdot_host_[i];  // the CPU model's order
      dxn_host_.assign(static_cast<size_t>(N) * d, 0.0f);
      router_backward(r, c.router, dgate_host_.data(), c.xn_host.data(), host_.params().value(bp.router_w),
                      dxn_host_.data(), host_.params().grad(bp.router_w), host_.params().grad(bp.router_b),
                      loss_scale);
      be_.upload(dxn_, std::span<const float>(dxn_host_));
    } else {
      be_.zero(dxn_);
    }
    // Experts' backward on the rows they computed (owner order when rows travelled).
    for (int ch = 0; ch < C; ++ch) {
      Chunk& k = *c.chunk[ch];
      const size_t r0 = c.src.chunk_begin[ch];
      const float* dy = dy_.data() + r0 * d;
      float* dx = dx_.data() + r0 * d;
      if (travel) {
        be_.wait(next);
        if (ch + 1 < C) next = send(ch + 1);
        dy = k.dy_owner.data();
        dx = k.dx_owner.data();
      }
      if (c.attention)
        be_.attn_backward_data(dx, dy, k.attn, k.rows, val(bp.w_in), val(bp.w_out), d, spec_.heads_per_expert(),
                               spec_.head_dim());
      else
        be_.mlp_backward_data(dx, dy, k.mlp, k.rows, val(bp.w_in), val(bp.w_out), d, spec_.expert_ff());
      if (travel)
        be_.submit([this, &k, &c, r0, d] { c.exchange->to_source(k.plan, k.dx_owner.data(), dx_.data() + r0 * d, d); });
      if (c.attention)
        be_.attn_backward_weights(grad(bp.w_in), grad(bp.w_out), dy, k.attn, k.rows, d, spec_.heads_per_expert(),
                                  spec_.head_dim());
      else
        be_.mlp_backward_weights(grad(bp.w_in), grad(bp.b_in), grad(bp.w_out), dy, k.mlp, k.rows, d,
                                 spec_.expert_ff());
    }
    if (travel) be_.wait_all();
    be_.scatter_add(dxn_.data(), dx_.data(), c.by_token, d, nullptr);
    be_.layernorm_backward(dh_.data(), grad(bp.norm_scale), grad(bp.norm_bias), dxn_.data(), c.hin.data(),
                           val(bp.norm_scale), c.mean.data(), c.rstd.data(), N, d);
  }

  // Model::forward: embedding, blocks (block b writes block b+1's input), final norm, logits.
  void forward(const int32_t* inputs, int B, bool dropless, ForwardStats* stats) {
    const int N = B * spec_.seq_len, d = spec_.d, V = spec_.vocab, nb = 2 * spec_.layers;
    for (int i = 0; i < N; ++i)
      if (inputs[i] < 0 || inputs[i] >= V) fail("token id ", inputs[i], " out of range [0, ", V, ")");
    tokens_.resize(N);
    be_.upload(tokens_, std::span<const int32_t>(inputs, N));
    h_.resize(static_cast<size_t>(N) * d);
    for (auto& c : blocks_) c->hin.resize(static_cast<size_t>(N) * d);
    be_.gather_rows(nb > 0 ? blocks_[0]->hin.data() : h_.data(), val(host_.embed_index()), tokens_.data(), N, d);
    stats->blocks.assign(nb, BlockStats{});
    stats->aux_loss = 0;
    stats->flops = 0;
    for (int b = 0; b < nb; ++b) {
      block_forward(b, b + 1 < nb ? blocks_[b + 1]->hin.data() : h_.data(), B, dropless, &stats->blocks[b]);
      stats->aux_loss += stats->blocks[b].balance_loss + stats->blocks[b].z_loss;
      stats->flops += stats->blocks[b].flops;
    }
    stats->flops += flops_head_forward(spec_, N);
    hf_.resize(static_cast<size_t>(N) * d);
    fmean_.resize(N);
    frstd_.resize(N);
    be_.layernorm_forward(hf_.data(), fmean_.data(), frstd_.data(), h_.data(), val(host_.final_norm_scale_index()),
                          val(host_.final_norm_bias_index()), N, d);
    logits_.resize(static_cast<size_t>(N) * V);
    be_.gemm(false, true, N, V, d, 1.0f, hf_.data(), d, val(host_.embed_index()), d, 0.0f, logits_.data(), V);
    stats->tokens = N;
  }

  Model& host_;
  Be& be_;
  ModelSpec spec_;
  std::vector<std::unique_ptr<Block>> blocks_;  // [2L] (blocks own non-movable device state)
  Buf<float> values_, grads_;                   // the ParamStore's arenas, same layout
  std::vector<float> grads_host_;
  std::vector<bool> is_router_;                 // [tensors] router weights and biases
  Buf<int32_t> tokens_, targets_;
  typename Be::Scatter embed_plan_;
  Buf<float> h_, hf_, fmean_, frstd_, logits_;
  Buf<float> dhf_, dh_, dy_, dx_, dxn_, rowdot_;
  std::vector<float> rowdot_host_, dgate_host_, dxn_host_;
  std::function<void(int)> hook_;
  std::vector<typename Be::Ticket> arrived_;    // [chunks] forward: each chunk's rows at their owners
  std::vector<ChunkMetadata> meta_;             // [chunks] forward: the chunks' metadata exchange
  int chunks_ = 1;
};

}  // namespace uoe
