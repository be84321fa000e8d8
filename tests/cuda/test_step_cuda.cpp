// The one step over the CUDA backend (layers/step_cuda.hpp) against it over the CPU backend: one
// forward_backward of a small model from the same weights on the same batch, for the UoE blocks and
// both baselines (dense, moe), then a dropless evaluation.
//
// Tolerances: the two steps share the routing code, the row bodies and the combine order, but cuBLAS
// and OpenBLAS sum GEMMs in different orders and nvcc contracts a·b + c into FMAs, so values differ
// in the last bits after each GEMM. Through 2 layers and back that stays far below 1e-3 relative for
// the O(1e-3…1) gradients here; atol covers entries that cancel to ~0 (1e-3 of the tensor's largest
// entry). Routing must be identical: the GPU decides by the CPU router's bodies
// (layers/router_select.hpp) on scores within rounding of the CPU's, and a random model of this size has no near-ties (if this ever fails, print the top-2 probability
// gaps of the differing patch before relaxing anything).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <string>
#include <tuple>
#include <memory>
#include <vector>

#include "gpu_test.hpp"
#include "layers/cpu_backend.hpp"
#include "layers/step_cuda.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/router.hpp"
#include "layers/router_select.hpp"
#include "layers/train_step.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_sync.hpp"
#include "runtime/cuda/check.cuh"
#include "runtime/error.hpp"
#include "runtime/sum_squares.hpp"
#include "parallel/exchange.hpp"

namespace uoe::gpu_test {
namespace {

using StepCudaGpu = Gpu;

ModelSpec small_spec(BlockType t) {
  ModelSpec s;
  s.block_type = t;
  s.layers = 2;
  s.d = 64;
  s.heads = 4;
  s.attn_experts = 4;
  s.attn_topk = 2;
  s.experts = 4;
  s.topk = 2;
  s.d_ff = 256;
  s.vocab = 64;
  s.seq_len = 32;
  s.capacity_factor = 1.25;
  s.aux_loss = 0.01;
  s.z_loss = 0.001;
  return model_spec_resolve(s);
}

std::vector<int32_t> tokens(int n, int V, uint64_t stream) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<int32_t>(rng_below(5, stream, static_cast<uint64_t>(i), V));
  return v;
}

void expect_step_matches(BlockType type) {
  const ModelSpec spec = small_spec(type);
  LocalExchange ex_cpu, ex_host;
  Model cpu_model(spec, 7, &ex_cpu), host(spec, 7, &ex_host);
  CpuStep cpu(cpu_model);
  const std::unique_ptr<ModelStep> gpu = make_cuda_step(host, CudaStepOptions{});  // every expert here
  ModelStep& dev = *gpu;
  const int B = 4, N = B * spec.seq_len;
  const auto in = tokens(N, spec.vocab, 1), tg = tokens(N, spec.vocab, 2);

  std::vector<int> hooked;
  dev.set_backward_hook([&hooked](int b) { hooked.push_back(b); });
  ForwardStats sc, sg;
  cpu.forward_backward(in.data(), tg.data(), B, 0.5f, &sc);
  dev.forward_backward(in.data(), tg.data(), B, 0.5f, &sg);
  dev.state_to_host(nullptr);  // the gradients stay on the GPU until asked for

  for (int b = 0; b < 2 * spec.layers; ++b) {
    EXPECT_EQ(dev.routing(b).choice, cpu.routing(b).choice) << "block " << b;
    EXPECT_EQ(dev.routing(b).kept, cpu.routing(b).kept) << "block " << b;
  }
  EXPECT_EQ(sg.tokens, sc.tokens);
  EXPECT_NEAR(sg.ce_sum, sc.ce_sum, 1e-5 * std::fabs(sc.ce_sum));
  EXPECT_NEAR(sg.aux_loss, sc.aux_loss, 1e-4 * std::fabs(sc.aux_loss) + 1e-9);
  EXPECT_DOUBLE_EQ(sg.flops, sc.flops);  // counted from the (identical) routing

  const ParamStore& pc = cpu_model.params();
  const ParamStore& pg = host.params();
  for (size_t i = 0; i < pc.count(); ++i) {
    const int t = static_cast<int>(i);
    const size_t n = pc.info(t).size;
    std::vector<float> gc(pc.grad(t), pc.grad(t) + n), gg(pg.grad(t), pg.grad(t) + n);
    float peak = 0;
    for (float v : gc) peak = std::max(peak, std::fabs(v));
    expect_close(gg, gc, 1e-3 * peak, 1e-3, pc.info(t).name.c_str());
  }
  // The hook saw every block, last first, then the embedding (−1).
  std::vector<int> want;
  for (int b = 2 * spec.layers - 1; b >= -1; --b) want.push_back(b);
  EXPECT_EQ(hooked, want);

  // Dropless evaluation of the same batch.
  ForwardStats ec, eg;
  cpu.forward_eval(in.data(), tg.data(), B, &ec);
  dev.forward_eval(in.data(), tg.data(), B, &eg);
  EXPECT_NEAR(eg.ce_sum, ec.ce_sum, 1e-5 * std::fabs(ec.ce_sum));
}

// A stand-in for a world of two identical replicas, on one GPU: the all-reduce sums two copies of
// the data (doubles it, exactly), in host memory or (device) in device memory; every other
// collective is refused. Lets one GPU run the step's gradient all-reduce path — the GradientSync
// rebased onto the device arena, buckets reduced in place or packed by device copies.
class TwoReplicas final : public Communicator {
 public:
  explicit TwoReplicas(bool device) : device_(device) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void barrier() override {}
  int reductions = 0;

 protected:
  void do_all_to_all_v(const void*, const Displaced&, void*, const Displaced&, DType) override { refuse(); }
  Request do_ialltoallv(const void*, Displaced, void*, Displaced, DType) override { refuse(); }
  void do_all_to_all_blocks(const void*, const PeerBlocks&, void*, const PeerBlocks&, DType) override { refuse(); }
  void do_all_to_all(const void*, void*, int, DType) override { refuse(); }
  void do_all_reduce_sum(void* data, int count, DType t) override {
    if (t != DType::f32) refuse();
    ++reductions;
    std::vector<float> v(count);
    if (device_) UOE_CHECK_CUDA(cudaMemcpy(v.data(), data, sizeof(float) * count, cudaMemcpyDeviceToHost));
    else std::copy_n(static_cast<const float*>(data), count, v.data());
    for (float& x : v) x += x;
    if (device_) UOE_CHECK_CUDA(cudaMemcpy(data, v.data(), sizeof(float) * count, cudaMemcpyHostToDevice));
    else std::copy_n(v.data(), count, static_cast<float*>(data));
  }
  Request do_iallreduce_sum(void*, int, DType) override { refuse(); }
  void do_broadcast(void*, int, DType, int) override { refuse(); }

 private:
  [[noreturn]] static void refuse() { fail("TwoReplicas: only the float all-reduce"); }
  bool device_;
};

// Three training steps as the trainer runs them (zero, forward + backward, all-reduce, Σ g², AdamW
// with clipping), the update side on the GPU's arenas: the parameters after them within the same
// tolerance as one step's gradients (AdamW's update is lr-sized per step, so they stay close), the
// Σ g² within 1e-3 relative, and the GPU backend moved no arena across in the second and third
// steps (only metadata and the loss: less than half a parameter arena's bytes over both).
// With `replicas`, over a world of two identical replicas (TwoReplicas): the all-reduce runs on the
// device arena through the CUDA backend's device communicator, the CPU's on the host.
void expect_training_matches(BlockType type, bool replicas = false) {
  const ModelSpec spec = small_spec(type);
  LocalExchange ex_cpu, ex_host;
  Model cpu_model(spec, 7, &ex_cpu), host(spec, 7, &ex_host);
  CpuStep cpu(cpu_model);
  SelfCommunicator self;
  TwoReplicas world_host(false), world_device(true);
  CudaStepOptions o;
  if (replicas) o.grad_world = &world_device;
  const std::unique_ptr<ModelStep> gpu = make_cuda_step(host, o);
  Communicator& world = replicas ? static_cast<Communicator&>(world_host) : self;
  GradientSync sync_c(grad_tensors(cpu_model.params()), model_gradient_buckets(cpu_model), world, self, world),
      sync_g(grad_tensors(host.params()), model_gradient_buckets(host), world, self, world);
  AdamW opt_c(cpu_model.params(), AdamWSpec{}), opt_g(host.params(), AdamWSpec{});
  const int B = 2, N = B * spec.seq_len;
  CudaTransferBytes before;
  for (int it = 1; it <= 3; ++it) {
    if (it == 2) before = cuda_step_transfer_bytes(*gpu);  // the first step took the arenas from the host
    const auto in = tokens(N, spec.vocab, 10 + it), tg = tokens(N, spec.vocab, 20 + it);
    double sq[2];
    int at = 0;
    for (auto [s, sync, opt] : {std::tuple<ModelStep*, GradientSync*, AdamW*>{&cpu, &sync_c, &opt_c},
                                std::tuple<ModelStep*, GradientSync*, AdamW*>{gpu.get(), &sync_g, &opt_g}}) {
      s->zero_gradients();
      ForwardStats st;
      s->forward_backward(in.data(), tg.data(), B, 1.0f, &st);
      s->reduce_gradients(*sync, -1);
      sq[at] = s->gradient_sum_squares(sync);
      s->optimizer_update(*opt, 1e-3, it, clip_scale(0.5 * std::sqrt(sq[at]), std::sqrt(sq[at])));
      ++at;
    }
    EXPECT_NEAR(sq[1], sq[0], 1e-3 * sq[0]) << "step " << it;
  }
  const CudaTransferBytes after = cuda_step_transfer_bytes(*gpu);
  const size_t arena = host.params().total() * sizeof(float);
  // bench/gpu/device-kit quotes this line.
  std::printf("host-device bytes per step (%s, steps 2-3): to GPU %zu, to host %zu; parameter arena %zu\n",
              type == BlockType::uoe ? (replicas ? "uoe, device all-reduce" : "uoe") : "moe", (after.to_device - before.to_device) / 2,
              (after.to_host - before.to_host) / 2, arena);
  EXPECT_LT(after.to_device - before.to_device, arena / 2) << "bytes to the GPU in two steps";
  EXPECT_LT(after.to_host - before.to_host, arena / 2) << "bytes to the host in two steps";
  // Metadata only, to the byte bound (one micro-batch a step, every expert here): down, the loss,
  // per routed block its counts — rows [E + 1], chosen [E], experts per token [k + 1] — three
  // figures and the source rows' cells [B, E]; per unrouted block its cells [B]; one double per
  // tensor for Σ g². Up, the tokens and targets, each block's row offsets [E + 1] and an unrouted
  // block's two. A row table (two ints per kept row) would exceed it.
  size_t down_max = sizeof(double) * (1 + host.params().count()), up_max = 2 * sizeof(int32_t) * N;
  for (int b = 0; b < 2 * spec.layers; ++b) {
    const size_t E = spec.block_experts(b), k = spec.block_topk(b);
    down_max += spec.block_routed(b) ? sizeof(int) * (3 * E + k + 2 + B * E) + 3 * sizeof(double) : sizeof(int) * B;
    up_max += sizeof(int) * (E + 1) + (spec.block_routed(b) ? 0 : 2 * sizeof(int));
  }
  EXPECT_LE((after.to_host - before.to_host) / 2, down_max) << "bytes to the host per step";
  EXPECT_LE((after.to_device - before.to_device) / 2, up_max) << "bytes to the GPU per step";
  if (replicas) {  // one collective per bucket (or packed part), on each side
    EXPECT_GT(world_device.reductions, 0);
    EXPECT_EQ(world_device.reductions, world_host.reductions);
  }
  gpu->state_to_host(&opt_g);
  const ParamStore& pc = cpu_model.params();
  const ParamStore& pg = host.params();
  for (size_t i = 0; i < pc.count(); ++i) {
    const int t = static_cast<int>(i);
    const size_t n = pc.info(t).size;
    std::vector<float> vc(pc.value(t), pc.value(t) + n), vg(pg.value(t), pg.value(t) + n);
    float peak = 0;
    for (float v : vc) peak = std::max(peak, std::fabs(v));
    expect_close(vg, vc, 1e-3 * peak, 1e-3, pc.info(t).name.c_str());
  }
}

TEST_F(StepCudaGpu, UoeTrainingStepsMatchCpu) { expect_training_matches(BlockType::uoe); }
TEST_F(StepCudaGpu, MoeTrainingStepsMatchCpu) { expect_training_matches(BlockType::moe); }
TEST_F(StepCudaGpu, TrainingStepsReduceGradientsOnTheDevice) { expect_training_matches(BlockType::uoe, true); }

// The router's device parts against their CPU twins (layers/router.hpp): bitwise (the same
// per-element arithmetic, no contraction); Σ g² within 1e-12 relative.
TEST_F(StepCudaGpu, RouterPartsAndSumSquaresMatchTheirCpuTwins) {
  const int P = 37, ps = 3, d = 24, E = 8;
  std::vector<float> xn(static_cast<size_t>(P) * ps * d), b(E), dl(static_cast<size_t>(P) * E), dxm(static_cast<size_t>(P) * d);
  for (size_t i = 0; i < xn.size(); ++i) xn[i] = rng_normal(1, 0, i);
  for (int e = 0; e < E; ++e) b[e] = rng_normal(1, 1, e);
  for (size_t i = 0; i < dl.size(); ++i) dl[i] = rng_normal(1, 2, i);
  for (size_t i = 0; i < dxm.size(); ++i) dxm[i] = rng_normal(1, 3, i);
  std::vector<float> xm(dxm.size()), logits(dl.size()), db(b), dxn(xn.size(), 0.5f);
  router_patch_means(xm.data(), xn.data(), P, ps, d);
  router_bias_rows(logits.data(), b.data(), P, E);
  router_bias_grad(db.data(), dl.data(), P, E);
  router_patch_means_backward(dxn.data(), dxm.data(), P, ps, d);
  auto xn_d = up(xn), b_d = up(b), dl_d = up(dl), dxm_d = up(dxm), db_d = up(b), dxn_d = up(std::vector<float>(xn.size(), 0.5f));
  cuda::DeviceBuffer<float> xm_d, logits_d;
  xm_d.resize(xm.size());
  logits_d.resize(logits.size());
  cuda::router_patch_means(xm_d.data(), xn_d.data(), P, ps, d, s());
  cuda::router_bias_rows(logits_d.data(), b_d.data(), P, E, s());
  cuda::router_bias_grad(db_d.data(), dl_d.data(), P, E, s());
  cuda::router_patch_means_backward(dxn_d.data(), dxm_d.data(), P, ps, d, s());
  EXPECT_EQ(down(xm_d), xm);
  EXPECT_EQ(down(logits_d), logits);
  EXPECT_EQ(down(db_d), db);
  EXPECT_EQ(down(dxn_d), dxn);
  cuda::DeviceBuffer<double> out, shares;
  out.resize(1);
  shares.resize(cuda::kSumShares);
  cuda::grad_sum_squares(out.data(), shares.data(), xn_d.data(), xn.size(), s());
  const double want = grad_sum_squares(xn.data(), xn.size());
  EXPECT_NEAR(down(out)[0], want, 1e-12 * want);
}

// Capacity selection and row tables on the device against the CPU twin (router_select, itself
// held to router_decide by tests/unit/test_router_select.cpp): bitwise, with ties (repeated patches)
// and drops, limited and dropless.
TEST_F(StepCudaGpu, RouterSelectMatchesItsCpuTwin) {
  const int P = 96, E = 8, k = 2, d = 16;
  RouterSpec rs;
  rs.experts = E;
  rs.topk = k;
  rs.capacity_factor = 1.0;
  std::vector<float> xn(static_cast<size_t>(P) * d), w(static_cast<size_t>(d) * E), b(E, 0.0f);
  for (int p = 0; p < P; ++p)
    for (int c = 0; c < d; ++c) xn[static_cast<size_t>(p) * d + c] = rng_normal(2, p % 5, c);  // 5 distinct: ties
  for (size_t i = 0; i < w.size(); ++i) w[i] = rng_normal(2, 9, i);
  for (bool dropless : {false, true}) {
    SCOPED_TRACE(dropless ? "dropless" : "capacity 1.0");
    Routing r;
    router_forward(r, rs, xn.data(), w.data(), b.data(), P, d, dropless);
    if (!dropless) {
      EXPECT_GT(r.dropped, 0);
    }
    std::vector<uint8_t> kept_init(static_cast<size_t>(P) * k, 9);
    std::vector<int> rows_init(static_cast<size_t>(P) * k, -1), offsets_init(E + 1, -1);
    auto choice_d = up(r.choice);
    auto probs_d = up(r.probs);
    auto kept_d = up(kept_init);
    auto offsets_d = up(offsets_init), patch_d = up(rows_init), slot_d = up(rows_init);
    cuda::router_select(kept_d.data(), offsets_d.data(), patch_d.data(), slot_d.data(), choice_d.data(),
                        probs_d.data(), P, E, k, r.capacity, s());
    EXPECT_EQ(down(kept_d), r.kept);
    EXPECT_EQ(down(offsets_d), r.row_offsets);
    std::vector<int> patch = down(patch_d), slot = down(slot_d);
    patch.resize(r.row_patch.size());
    slot.resize(r.row_slot.size());
    EXPECT_EQ(patch, r.row_patch);
    EXPECT_EQ(slot, r.row_slot);
  }
}

// |got − want| ≤ rtol·|want| + atol, element by element; the first few misses named.
void expect_near_rel(const std::vector<float>& got, const std::vector<float>& want, double rtol, double atol,
                     const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int misses = 0;
  for (size_t i = 0; i < want.size() && misses < 5; ++i)
    if (!(std::abs(static_cast<double>(got[i]) - want[i]) <= rtol * std::abs(static_cast<double>(want[i])) + atol)) {
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i];
      ++misses;
    }
}

// The source rows laid out on the device (cuda::source_rows_cells / _place, layers/source_rows.hpp's
// bodies) against their CPU twins (layers/model.hpp, held to the definition by
// tests/unit/test_source_rows.cpp): integer tables, so equal, with patches, capacity drops and more
// chunks than sequences (an empty chunk).
TEST_F(StepCudaGpu, SourceRowsMatchTheirCpuTwins) {
  const int E = 6, k = 2, d = 8, T = 16, B = 3;
  for (int ps : {1, 2, 4})
    for (int C : {1, 2, 4}) {
      SCOPED_TRACE("patch " + std::to_string(ps) + ", chunks " + std::to_string(C));
      RouterSpec rs;
      rs.experts = E;
      rs.topk = k;
      rs.patch_size = ps;
      rs.capacity_factor = 1.0;
      const int N = B * T;
      std::vector<float> xn(static_cast<size_t>(N) * d), w(static_cast<size_t>(d) * E), b(E, 0.0f);
      for (size_t i = 0; i < xn.size(); ++i) xn[i] = rng_normal(41, 0, i);
      for (size_t i = 0; i < w.size(); ++i) w[i] = rng_normal(42, 0, i);
      Routing r;
      router_forward(r, rs, xn.data(), w.data(), b.data(), N, d, false);
      EXPECT_GT(r.dropped, 0);
      const int rows = r.row_offsets[E];
      SourceRows want;
      source_rows_build(want, r, B, T, C);
      const int R = want.rows();
      auto offsets_d = up(r.row_offsets);
      auto patch_d = up(r.row_patch), slot_d = up(r.row_slot);
      auto cells_d = up(std::vector<int>(static_cast<size_t>(B) * E, -1));
      cuda::source_rows_cells(cells_d.data(), offsets_d.data(), patch_d.data(), B, E, ps, T, s());
      EXPECT_EQ(down(cells_d), want.cells);
      const std::vector<int32_t> poison(std::max(R, 1), -1);
      auto token_d = up(poison), gate_d = up(poison), seg_d = up(poison), pos_d = up(poison);
      const std::vector<int> cell_poison(want.cells.size(), -1);
      auto first_src_d = up(cell_poison), first_route_d = up(cell_poison);
      auto begin_d = up(std::vector<int>(C + 1, -1));
      auto chunk_off_d = up(std::vector<int>(static_cast<size_t>(C) * (E + 1), -1));
      cuda::source_rows_place(token_d.data(), gate_d.data(), seg_d.data(), pos_d.data(), first_src_d.data(),
                              first_route_d.data(), begin_d.data(), chunk_off_d.data(), cells_d.data(),
                              offsets_d.data(), patch_d.data(), slot_d.data(), rows, B, E, k, ps, T, C, s());
      auto first = [R](std::vector<int32_t> v) {
        v.resize(R);
        return v;
      };
      EXPECT_EQ(first(down(token_d)), want.token);
      EXPECT_EQ(first(down(gate_d)), want.gate);
      EXPECT_EQ(first(down(seg_d)), want.seg);
      EXPECT_EQ(first(down(pos_d)), want.pos);
      EXPECT_EQ(down(first_src_d), want.first_src);
      EXPECT_EQ(down(first_route_d), want.first_route);
      EXPECT_EQ(down(begin_d), want.chunk_begin);
      std::vector<int> flat;
      for (const auto& o : want.chunk_offsets) flat.insert(flat.end(), o.begin(), o.end());
      EXPECT_EQ(down(chunk_off_d), flat);
    }
}

// The router's losses and figures as a parallel reduction (one block, each thread a strided set of
// patches in order, then a fixed tree) on many more patches than threads: within 1e-9 relative of
// the CPU twins' serial sums (only the order of double additions differs, and device log from
// host log by an ulp), experts per token exact, and bitwise the same on a second run.
TEST_F(StepCudaGpu, RouterFiguresReduceInAFixedOrder) {
  const int P = 5000, E = 16, k = 2, ps = 2;
  std::vector<float> probs(static_cast<size_t>(P) * E), lse(P), gate(static_cast<size_t>(P) * k);
  for (size_t i = 0; i < probs.size(); ++i) probs[i] = 3.0f * rng_normal(11, 0, i);
  std::vector<int> choice(static_cast<size_t>(P) * k), chosen(E), offsets(E + 1), rpatch(P * k), rslot(P * k), ept(k + 1);
  std::vector<uint8_t> kept(static_cast<size_t>(P) * k);
  router_decide_rows(probs.data(), lse.data(), choice.data(), gate.data(), P, E, k, GateMode::renorm);
  router_chosen(chosen.data(), choice.data(), P, E, k);
  router_select(kept.data(), offsets.data(), rpatch.data(), rslot.data(), choice.data(), probs.data(), P, E, k,
                static_cast<int>(expert_capacity(P, k, E, 1.0)));
  double fig[3];
  router_losses(fig, probs.data(), lse.data(), chosen.data(), P, E, k, 0.01, 1e-3);
  router_figures(fig + 2, ept.data(), probs.data(), kept.data(), P, E, k, ps);
  auto probs_d = up(probs);
  auto lse_d = up(lse);
  auto chosen_d = up(chosen);
  auto kept_d = up(kept);
  cuda::DeviceBuffer<double> fig_d;
  cuda::DeviceBuffer<int> ept_d;
  fig_d.resize(3);
  ept_d.resize(k + 1);
  std::vector<double> first;
  for (int run = 0; run < 2; ++run) {
    cuda::router_losses_and_figures(fig_d.data(), ept_d.data(), probs_d.data(), lse_d.data(), chosen_d.data(),
                                    kept_d.data(), P, E, k, ps, 0.01, 1e-3, s());
    const std::vector<double> gf = down(fig_d);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(gf[i], fig[i], 1e-9 * std::abs(fig[i])) << "figure " << i;
    EXPECT_EQ(down(ept_d), ept);
    if (run == 0) first = gf;
    else
      for (int i = 0; i < 3; ++i) EXPECT_EQ(std::memcmp(&gf[i], &first[i], sizeof(double)), 0) << "figure " << i;
  }
}

// The routing decisions on the device (softmax, top-k, gates, chosen counts, capacity, losses, log
// figures, the scores' gradients, the gate gradients) against their CPU twins on the same logits,
// with ties (repeated patches) and drops. Integers and selections: equal. Floats: the same body,
// but nvcc contracts a·b + c and device logf / log may differ by an ulp, so probabilities, lse and
// gates within 1e-6 relative, the double figures within 1e-6 relative, the logits' gradients within
// 1e-5 relative + 1e-7; the gate gradients (plain adds in row order): equal.
TEST_F(StepCudaGpu, RouterDecisionsMatchTheirCpuTwins) {
  const int P = 90, E = 8, k = 2, ps = 3;
  std::vector<float> logits(static_cast<size_t>(P) * E);
  for (int p = 0; p < P; ++p)
    for (int e = 0; e < E; ++e) logits[static_cast<size_t>(p) * E + e] = 2.0f * rng_normal(3, p % 7, e);  // ties
  const int capacity = static_cast<int>(expert_capacity(P, k, E, 1.0));
  for (GateMode mode : {GateMode::renorm, GateMode::prob}) {
    std::vector<float> probs = logits, lse(P), gate(static_cast<size_t>(P) * k);
    std::vector<int> choice(static_cast<size_t>(P) * k), chosen(E), offsets(E + 1), rpatch(P * k, -1), rslot(P * k, -1),
        ept(k + 1);
    std::vector<uint8_t> kept(static_cast<size_t>(P) * k);
    router_decide_rows(probs.data(), lse.data(), choice.data(), gate.data(), P, E, k, mode);
    router_chosen(chosen.data(), choice.data(), P, E, k);
    router_select(kept.data(), offsets.data(), rpatch.data(), rslot.data(), choice.data(), probs.data(), P, E, k,
                  capacity);
    double fig[3];
    router_losses(fig, probs.data(), lse.data(), chosen.data(), P, E, k, 0.01, 1e-3);
    router_figures(fig + 2, ept.data(), probs.data(), kept.data(), P, E, k, ps);
    EXPECT_LT(offsets[E], P * k);  // something dropped
    auto probs_d = up(logits);
    cuda::DeviceBuffer<float> lse_d, gate_d;
    cuda::DeviceBuffer<int> choice_d, chosen_d, offsets_d, rpatch_d, rslot_d, ept_d;
    cuda::DeviceBuffer<uint8_t> kept_d;
    cuda::DeviceBuffer<double> fig_d;
    lse_d.resize(P);
    gate_d.resize(gate.size());
    choice_d.resize(choice.size());
    chosen_d.resize(E);
    offsets_d.resize(E + 1);
    rpatch_d.resize(rpatch.size());
    rslot_d.resize(rslot.size());
    ept_d.resize(k + 1);
    kept_d.resize(kept.size());
    fig_d.resize(3);
    cuda::router_decide_rows(probs_d.data(), lse_d.data(), choice_d.data(), gate_d.data(), P, E, k, mode, s());
    cuda::router_chosen(chosen_d.data(), choice_d.data(), P, E, k, s());
    cuda::router_select(kept_d.data(), offsets_d.data(), rpatch_d.data(), rslot_d.data(), choice_d.data(),
                        probs_d.data(), P, E, k, capacity, s());
    cuda::router_losses_and_figures(fig_d.data(), ept_d.data(), probs_d.data(), lse_d.data(), chosen_d.data(),
                                    kept_d.data(), P, E, k, ps, 0.01, 1e-3, s());
    expect_near_rel(down(probs_d), probs, 1e-6, 0.0, "probabilities");
    expect_near_rel(down(lse_d), lse, 1e-6, 0.0, "lse");
    expect_near_rel(down(gate_d), gate, 1e-6, 0.0, "gates");
    EXPECT_EQ(down(choice_d), choice);
    EXPECT_EQ(down(chosen_d), chosen);
    EXPECT_EQ(down(kept_d), kept);
    EXPECT_EQ(down(offsets_d), offsets);
    std::vector<int> gp = down(rpatch_d), gs = down(rslot_d);
    gp.resize(offsets[E]);
    gs.resize(offsets[E]);
    rpatch.resize(offsets[E]);
    rslot.resize(offsets[E]);
    EXPECT_EQ(gp, rpatch);
    EXPECT_EQ(gs, rslot);
    EXPECT_EQ(down(ept_d), ept);
    const std::vector<double> gf = down(fig_d);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(gf[i], fig[i], 1e-6 * std::abs(fig[i])) << "figure " << i;
    // The figures' reductions have a fixed order: a second run gives the same bits.
    cuda::router_losses_and_figures(fig_d.data(), ept_d.data(), probs_d.data(), lse_d.data(), chosen_d.data(),
                                    kept_d.data(), P, E, k, ps, 0.01, 1e-3, s());
    const std::vector<double> again = down(fig_d);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(std::memcmp(&again[i], &gf[i], sizeof(double)), 0) << "figure " << i;
    // Backward: the gate gradients by row runs (two rows per slot), then the logits' gradients.
    const int R = 2 * P * k;
    std::vector<int32_t> slot(R);
    std::vector<float> rowdot(R), dgate(static_cast<size_t>(P) * k, 0.0f), dlog(logits.size());
    for (int i = 0; i < R; ++i) {
      slot[i] = i / 2;
      rowdot[i] = rng_normal(3, 50, i);
    }
    router_gate_grads(dgate.data(), slot.data(), rowdot.data(), 0, R);
    router_backward_logits_rows(dlog.data(), probs.data(), lse.data(), choice.data(), kept.data(), dgate.data(),
                                chosen.data(), P, E, k, mode, 0.5, 0.01, 1e-3);
    auto slot_d = up(slot);
    auto rowdot_d = up(rowdot);
    auto dgate_d = up(std::vector<float>(dgate.size(), 0.0f));
    cuda::DeviceBuffer<float> dlog_d;
    dlog_d.resize(dlog.size());
    cuda::router_gate_grads(dgate_d.data(), slot_d.data(), rowdot_d.data(), 0, R, s());
    EXPECT_EQ(down(dgate_d), dgate);
    cuda::router_backward_logits_rows(dlog_d.data(), probs_d.data(), lse_d.data(), choice_d.data(), kept_d.data(),
                                      dgate_d.data(), chosen_d.data(), P, E, k, mode, 0.5, 0.01, 1e-3, s());
    expect_near_rel(down(dlog_d), dlog, 1e-5, 1e-7, "logits' gradients");
  }
}

TEST_F(StepCudaGpu, UoeTrainingStepMatchesCpu) { expect_step_matches(BlockType::uoe); }
TEST_F(StepCudaGpu, DenseTrainingStepMatchesCpu) { expect_step_matches(BlockType::dense); }
TEST_F(StepCudaGpu, MoeTrainingStepMatchesCpu) { expect_step_matches(BlockType::moe); }

}  // namespace
}  // namespace uoe::gpu_test
