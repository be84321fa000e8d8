#include "launcher/train.hpp"

#include <mpi.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <limits>
#include <csignal>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "layers/device_model.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "parallel/comm.hpp"
#include "parallel/exchange.hpp"
#include "parallel/grad_sync.hpp"
#include "parallel/mpi_exchange.hpp"
#include "parallel/mpi_version.hpp"
#include "parallel/scheduler.hpp"
#include "parallel/sim_link.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/data.hpp"
#include "runtime/device.hpp"
#include "runtime/error.hpp"
#include "runtime/fma_peak.hpp"
#include "runtime/gemm.hpp"
#include "runtime/log.hpp"
#include "runtime/memory.hpp"
#include "runtime/metrics.hpp"
#include "runtime/version.hpp"
#include "runtime/watchdog.hpp"

namespace uoe {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string format_duration(double s) {
  char buf[32];
  const int t = static_cast<int>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", t / 60, t % 60);
  return buf;
}

// Sums a vector of doubles over the world (identity on one process).
void sum_over_ranks(std::vector<double>& v, const StepRanks& ranks, const char* what) {
  if (!ranks.world || ranks.world_size == 1) return;
  WatchScope watch(what);
  ranks.world->all_reduce_sum(std::span<double>(v));
}

// Preemption: SIGTERM (what schedulers send before killing a job) and SIGUSR1 (Slurm's warning
// signal, --signal=USR1@120) ask the run to stop at the end of the current step with a checkpoint.
volatile sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// Fault injection for the reliability and equivalence tests (never set in normal use):
// UOE_FAULT=KIND:RANK:STEP makes world rank RANK (-1: every rank), at the start of step STEP,
// either die (kill: SIGKILL, as a lost node), hang (stall: sleep forever, as a stuck rank), receive
// a preemption signal (term: SIGTERM), or, from step STEP on, see a non-finite loss (nan), send
// twice its gradient into the all-reduce (gradx2: one replica's gradient scaled by 2; on every
// rank, a constant factor, as a sum where a mean belongs), or keep expert-sharded gradients ep
// times too large (expert_group: each expert slab's gradient averaged over its replica group, dp
// ranks, where every rank's tokens reached it: it needs the world's mean, P = ep·dp ranks). The
// gradient faults exist so the equivalence tests can prove they catch such bugs.
struct Fault {
  std::string kind;
  int rank = -2, step = -1;
  bool on(int world_rank) const { return rank == -1 || rank == world_rank; }
};
Fault fault_from_env() {
  Fault f;
  const char* v = std::getenv("UOE_FAULT");
  if (!v) return f;
  char kind[16] = {0};
  const std::string k = std::sscanf(v, "%15[a-z0-9_]:%d:%d", kind, &f.rank, &f.step) == 3 ? kind : "";
  if ((k != "kill" && k != "stall" && k != "term" && k != "nan" && k != "gradx2" && k != "expert_group") ||
      f.rank < -1)
    fail("UOE_FAULT='", v, "': expected kill|stall|term|nan|gradx2|expert_group:RANK:STEP, RANK -1 for every rank "
         "(a test-only fault injection)");
  f.kind = k;
  return f;
}

// Multiplies the gradients of `tensors` by s (fault injection only).
void scale_grads(ParamStore& params, const std::vector<int>& tensors, float s) {
  for (int i : tensors) {
    float* g = params.grad(i);
    for (size_t j = 0; j < params.info(i).size; ++j) g[j] *= s;
  }
}

struct EvalResult {
  double loss = 0;  // mean nats per token
  int64_t tokens = 0;
};

// Validation: consecutive windows of T with stride T (the targets tile the split), dropless, in
// batches of up to B windows; eval_batches = 0 evaluates the whole split. Batch j goes to world
// rank j mod P; every rank runs the same number of forward passes (an empty one when it has no
// batch left) because the expert exchanges inside are collective.
EvalResult evaluate(Model& model, const Dataset& data, const Config& cfg, const StepRanks& ranks) {
  const int T = cfg.seq_len, B = cfg.batch_size, P = ranks.world_size;
  int64_t windows = data_val_window_count(data.val.size(), T);
  if (cfg.eval_batches > 0) windows = std::min<int64_t>(windows, static_cast<int64_t>(cfg.eval_batches) * B);
  const int64_t batches = (windows + B - 1) / B;
  const int64_t rounds = (batches + P - 1) / P;
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(static_cast<size_t>(B) * T);
  std::vector<double> sums = {0.0, 0.0};  // CE, tokens
  ForwardStats st;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t batch = round * P + ranks.world_rank;
    const int64_t first = batch * B;
    const int n = first < windows ? static_cast<int>(std::min<int64_t>(B, windows - first)) : 0;
    if (n) data_val_windows(data.val, T, first, n, in.data(), tg.data());
    if (ranks.device) ranks.device->forward_eval(in.data(), tg.data(), n, &st);
    else model.forward_eval(in.data(), tg.data(), n, &st);
    sums[0] += st.ce_sum;
    sums[1] += static_cast<double>(st.tokens);
  }
  sum_over_ranks(sums, ranks, "evaluation: loss all-reduce");
  return {sums[1] > 0 ? sums[0] / sums[1] : 0.0, static_cast<int64_t>(sums[1])};
}

}  // namespace

std::vector<std::vector<int>> model_gradient_buckets(const Model& model) {
  const int blocks = 2 * model.spec().layers;
  std::vector<std::vector<int>> buckets;
  for (int b = blocks - 1; b >= 0; --b) {
    const BlockParams& p = model.blocks()[b];
    std::vector<int> list;
    // An unrouted block (dense, moe) has no router and no SMHA b_in: index -1.
    for (int i : {p.norm_scale, p.norm_bias, p.router_w, p.router_b, p.w_in, p.w_out, p.b_out, p.b_in})
      if (i >= 0) list.push_back(i);
    buckets.push_back(std::move(list));
  }
  buckets.push_back({model.embed_index(), model.final_norm_scale_index(), model.final_norm_bias_index()});
  return buckets;
}

StepFigures train_step(Model& model, AdamW& opt, const Config& cfg, const std::vector<int32_t>& train_tokens,
                       int step, const StepRanks& ranks) {
  const int T = cfg.seq_len, B = cfg.batch_size, M = cfg.micro_batches;
  const int blocks = 2 * model.spec().layers;
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(static_cast<size_t>(B) * T);
  // Global figures travel in one vector: loss, aux, flops, tokens, then per block dropped,
  // assignments, router entropy and patches, then per block the tokens processed by 0..K experts
  // (K the largest top-k), then per block the patches choosing each expert.
  const ModelSpec& spec = model.spec();
  const int K = std::max(spec.topk, spec.attn_topk);
  std::vector<int> experts_of(blocks);
  size_t load_size = 0;
  for (int b = 0; b < blocks; ++b) {
    experts_of[b] = spec.block_experts(b);
    load_size += experts_of[b];
  }
  const size_t at_hist = 4 + 4 * static_cast<size_t>(blocks);
  const size_t at_load = at_hist + static_cast<size_t>(blocks) * (K + 1);
  std::vector<double> sums(at_load + load_size, 0.0);
  model.params().zero_grads();
  ForwardStats st;
  const float loss_scale = 1.0f / static_cast<float>(M * ranks.world_size);
  // On the last micro-batch each block's gradient bucket is reduced as soon as backward finishes
  // it, behind the backward of the blocks below (on the communication thread when overlapping).
  auto reduce_when_done = [&](int block) {
    const size_t bucket = block < 0 ? static_cast<size_t>(blocks) : static_cast<size_t>(blocks - 1 - block);
    ranks.scheduler->submit([&ranks, &model, bucket, block] {
      std::string where = "gradient all-reduce of ";
      if (block < 0) where += "embedding and final norm";
      else where += "block " + std::to_string(block);
      if (ranks.fault_grad_scale != 1.0f)
        scale_grads(model.params(), model_gradient_buckets(model)[bucket], ranks.fault_grad_scale);
      WatchScope watch(where);
      ranks.sync->reduce_bucket(bucket);
    });
  };
  const bool bucketed = ranks.sync && ranks.scheduler && ranks.world_size > 1;
  auto set_hook = [&](std::function<void(int)> hook) {
    if (ranks.device) ranks.device->set_backward_hook(std::move(hook));
    else model.set_backward_hook(std::move(hook));
  };
  for (int m = 0; m < M; ++m) {
    const uint64_t slot = static_cast<uint64_t>(ranks.world_rank) * M + m;
    if (bucketed && m == M - 1) set_hook(reduce_when_done);
    data_sample_batch(train_tokens, T, B, cfg.seed, static_cast<uint64_t>(step), slot, in.data(), tg.data());
    if (ranks.device) ranks.device->forward_backward(in.data(), tg.data(), B, loss_scale, &st);
    else model.forward_backward(in.data(), tg.data(), B, loss_scale, &st);
    sums[0] += st.ce_sum / static_cast<double>(st.tokens);
    sums[1] += st.aux_loss;
    sums[2] += 3.0 * st.flops;
    sums[3] += static_cast<double>(st.tokens);
    size_t at = at_load;
    for (int b = 0; b < blocks; ++b) {
      const BlockStats& bs = st.blocks[b];
      sums[4 + b] += bs.dropped;
      sums[4 + blocks + b] += static_cast<double>(bs.patches) * bs.k;
      sums[4 + 2 * blocks + b] += bs.entropy_sum;
      sums[4 + 3 * blocks + b] += bs.patches;
      for (size_t j = 0; j < bs.experts_per_token.size() && j <= static_cast<size_t>(K); ++j)
        sums[at_hist + static_cast<size_t>(b) * (K + 1) + j] += static_cast<double>(bs.experts_per_token[j]);
      for (int e = 0; e < experts_of[b]; ++e) sums[at + e] += bs.chosen[e];
      at += experts_of[b];
    }
  }
  set_hook(nullptr);
  double sq;
  StepFigures fig;
  ParamStore& ps = model.params();
  if (ranks.sync) {
    if (bucketed) {
      ranks.scheduler->wait_all();
    } else {
      if (ranks.fault_grad_scale != 1.0f)
        for (const std::vector<int>& b : model_gradient_buckets(model)) scale_grads(ps, b, ranks.fault_grad_scale);
      ranks.sync->all_reduce();
    }
    if (ranks.fault_expert_scale != 1.0f)
      for (int i = 0; i < static_cast<int>(ps.count()); ++i)
        if (ps.info(i).expert_sharded) scale_grads(ps, {i}, ranks.fault_expert_scale);
    sq = ranks.sync->global_sum_squares();
  } else {
    sq = grad_sum_squares(ps.grads().data(), ps.total());
  }
  // The fingerprint of what the optimizer receives (before clipping, which scales every tensor by
  // one factor that grad_norm determines), on the steps that write a metrics line.
  if (cfg.metrics_grads && (step % cfg.log_every == 0 || step == cfg.steps)) {
    if (ranks.sync) {
      fig.grad_fingerprint = ranks.sync->global_fingerprint();
    } else {
      std::vector<double>& f = fig.grad_fingerprint;
      f.resize(2 * ps.count());
      for (int i = 0; i < static_cast<int>(ps.count()); ++i)
        tensor_grad_fingerprint(grad_tensor(ps, i), &f[2 * i], &f[2 * i + 1]);
    }
  }
  if (ranks.inject_nan) sums[0] = std::numeric_limits<double>::quiet_NaN();
  sum_over_ranks(sums, ranks, "step figures: all-reduce");

  const double micro = static_cast<double>(M) * ranks.world_size;
  fig.loss = sums[0] / micro;
  fig.aux = sums[1] / micro;
  fig.flops = sums[2];
  fig.tokens = static_cast<int64_t>(sums[3]);
  fig.grad_norm = std::sqrt(sq);
  fig.dropped.resize(blocks);
  fig.assignments.resize(blocks);
  fig.load_max_over_mean.resize(blocks);
  fig.router_entropy.assign(blocks, 0.0);
  fig.experts_per_token.assign(K + 1, std::vector<double>(blocks, 0.0));
  size_t at = at_load;
  for (int b = 0; b < blocks; ++b) {
    const double patches = sums[4 + 3 * blocks + b];
    if (spec.block_routed(b) && patches > 0) fig.router_entropy[b] = sums[4 + 2 * blocks + b] / patches;
    double tokens_b = 0;
    for (int j = 0; j <= K; ++j) tokens_b += sums[at_hist + static_cast<size_t>(b) * (K + 1) + j];
    for (int j = 0; j <= K && tokens_b > 0; ++j)
      fig.experts_per_token[j][b] = sums[at_hist + static_cast<size_t>(b) * (K + 1) + j] / tokens_b;
    fig.dropped[b] = static_cast<int64_t>(sums[4 + b]);
    fig.assignments[b] = static_cast<int64_t>(sums[4 + blocks + b]);
    const double mx = *std::max_element(sums.begin() + at, sums.begin() + at + experts_of[b]);
    const double mean = sums[4 + blocks + b] / experts_of[b];
    fig.load_max_over_mean[b] = mean > 0 ? mx / mean : 0.0;
    at += experts_of[b];
  }
  // Every rank sees the same global loss and norm, so every rank skips (or not) together.
  if (!std::isfinite(fig.loss) || !std::isfinite(fig.grad_norm)) {
    fig.skipped = true;
    // Name the first tensor backward reached with a non-finite gradient (buckets are in backward
    // order, last block first): that is where the fault entered, the rest inherited it.
    for (const std::vector<int>& bucket : model_gradient_buckets(model))
      for (int i : bucket) {
        const float* g = ps.grad(i);
        for (size_t j = 0; j < ps.info(i).size && fig.bad_tensor.empty(); ++j)
          if (!std::isfinite(g[j])) fig.bad_tensor = ps.info(i).name;
        if (!fig.bad_tensor.empty()) return fig;
      }
    return fig;
  }
  opt.update(model.params(), lr_at_step(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr), step,
             clip_scale(cfg.clip, fig.grad_norm));
  return fig;
}

int train_run(const Config& cfg) {
  const auto t_start = Clock::now();
  // A file-size limit (ulimit -f) must not kill the run with SIGXFSZ in the middle of a write:
  // ignored, the write fails with EFBIG, and the checkpoint or metrics writer reports it, naming
  // the file (a checkpoint write that fails leaves the previous checkpoint intact).
  std::signal(SIGXFSZ, SIG_IGN);
  ProcessGroups groups = make_process_groups(MPI_COMM_WORLD, cfg.ep);
  const int world_rank = groups.world->rank(), world_size = groups.world->size();
  log_set_rank(world_rank, world_size);
  // First, so that every log (a failed start's too) names the code and libraries that ran.
  log_info("build: %s", build_info(comm_library_versions()).c_str());
  const Fault fault = fault_from_env();
  const bool on_gpu = device_parse(cfg.device) == Device::cuda;
  if (on_gpu) device_require(Device::cuda);  // no usable GPU: a clear error naming why
  // A stuck exchange ends the job: every rank's watchdog reports where it waits, then aborts.
  Watchdog watchdog(cfg.collective_timeout, [](const std::string&) { MPI_Abort(MPI_COMM_WORLD, 3); });
  const int threads = cfg.threads > 0 ? cfg.threads
                                      : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / groups.node_size);
  gemm_set_threads(threads);

  Dataset data = data_load(cfg);
  const int V = data.vocab.size();
  const ModelSpec spec = model_spec_from_config(cfg, V);
  // Simulated links: the model's traffic (expert exchanges, gradient all-reduce) goes through
  // decorators that make it take as long as it would on the emulated network.
  Communicator* world_link = groups.world.get();
  Communicator* ep_link = groups.ep_group.get();
  Communicator* dp_link = groups.dp_group.get();
  std::unique_ptr<SimulatedLinkCommunicator> sim_world, sim_ep, sim_dp;
  if (cfg.sim_link_gbps > 0) {
    sim_world = std::make_unique<SimulatedLinkCommunicator>(*world_link, cfg.sim_link_gbps, cfg.sim_link_latency_us);
    sim_ep = std::make_unique<SimulatedLinkCommunicator>(*ep_link, cfg.sim_link_gbps, cfg.sim_link_latency_us);
    sim_dp = std::make_unique<SimulatedLinkCommunicator>(*dp_link, cfg.sim_link_gbps, cfg.sim_link_latency_us);
    world_link = sim_world.get();
    ep_link = sim_ep.get();
    dp_link = sim_dp.get();
  }
  std::unique_ptr<ExpertExchange> exchange;
  if (groups.ep > 1) exchange = std::make_unique<MpiExchange>(*ep_link);
  else exchange = std::make_unique<LocalExchange>();
  Model model(spec, cfg.seed, exchange.get());
  std::unique_ptr<DeviceModel> device_model;
  if (on_gpu) device_model = std::make_unique<DeviceModel>(model, groups.ep_group.get(), cfg.overlap_chunks);
  if (cfg.overlap_chunks > 1) {
    // Only the communication thread calls MPI during a step, the training thread only between
    // steps (ordered by the scheduler's queue): MPI_THREAD_SERIALIZED is what that needs.
    int level = MPI_THREAD_SINGLE;
    UOE_CHECK_MPI(MPI_Query_thread(&level));
    if (level < MPI_THREAD_SERIALIZED)
      fail("--overlap-chunks ", cfg.overlap_chunks, " needs an MPI library with MPI_THREAD_SERIALIZED; this one provides "
           "level ", level, " (use --overlap-chunks 1)");
  }
  CommScheduler scheduler(/*threaded=*/cfg.overlap_chunks > 1);
  model.set_schedule(&scheduler, cfg.overlap_chunks);
  AdamWSpec aspec;
  aspec.weight_decay = cfg.weight_decay;
  AdamW opt(model.params(), aspec);
  GradientSync sync(grad_tensors(model.params()), model_gradient_buckets(model), *world_link, *ep_link, *dp_link);
  StepRanks ranks;
  ranks.world = groups.world.get();
  ranks.sync = &sync;
  ranks.scheduler = &scheduler;
  ranks.device = device_model.get();
  ranks.world_rank = world_rank;
  ranks.world_size = world_size;
  const bool byte_level = data.vocab.kind == TokenizerKind::byte;

  // Two peaks per rank, on its own BLAS threads (under mpirun every rank of a node measures at
  // the same time, so each gets its share of the node): the BLAS's sgemm rate, and the hardware's
  // FMA rate (runtime/fma_peak.hpp). Utilisation is quoted against the FMA peak: with generic
  // kernels the sgemm peak is itself crippled, and a share of it hides that. The probe goes first:
  // after a GEMM, OpenBLAS's idle threads spin for a while on the cores the probe needs.
  const FmaPeak fma = fma_peak_measure(cpu_features_detect(), threads);
  const double sgemm_peak = gemm_measure_gflops(512, 5);
  // The probe keeps each thread's best interval, a whole core's rate: with more threads on the node
  // than cores (an oversubscribed run), a rank's peak is its share of the node's cores.
  const int node_threads = groups.node_size * threads;
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const double peak = fma.gflops * std::min(1.0, static_cast<double>(cores) / node_threads);
  // A rank not running the kernels it chose (exec failed, core not in this OpenBLAS) says so itself.
  if (blas_kernels_as_chosen()) log_info("cpu: %s", blas_kernels_summary().c_str());
  else log_warn("cpu: %s", blas_kernels_summary().c_str());
  log_info("uoe-train: data %s (%s, V=%d, %zu train / %zu val tokens)", data.source.c_str(),
           byte_level ? "byte" : "word", V, data.train.size(), data.val.size());
  log_info("model: %s blocks, %d layers, d %d, %d heads in %d attention experts (top-%d), %d MLP experts of %d (top-%d), "
           "capacity %g, patch %d, gate %s; %zu parameters on rank 0",
           block_type_name(spec.block_type), spec.layers, spec.d, spec.heads, spec.attn_experts, spec.attn_topk, spec.experts, spec.expert_ff(),
           spec.topk, spec.capacity_factor, spec.patch_size, cfg.gate.c_str(), model.params().total());
  log_info("ranks: %d (ep %d × dp %d), %d BLAS threads each (%s), sgemm peak %.1f GFLOP/s per rank", world_size,
           groups.ep, groups.dp, threads, gemm_describe().c_str(), sgemm_peak);
  log_info("FMA peak %.1f GFLOP/s per rank: %s%s; utilisation = model FLOP/s per rank against it (sgemm reaches "
           "%.0f%% of the probe's rate)", peak, fma_peak_describe(fma).c_str(),
           node_threads > cores ? (", × " + std::to_string(cores) + " cores / " + std::to_string(node_threads) +
                                   " threads on this node").c_str()
                                : "",
           100.0 * sgemm_peak / fma.gflops);
  if (device_model)
    log_info("device: rank 0 computes on %s; parameters, optimizer and gradient all-reduce stay on the host "
             "(layers/device_model.hpp)", device_model->describe().c_str());
  if (cfg.overlap_chunks > 1 && device_model)
    log_info("overlap: %d chunks per block; expert exchanges on the GPU's communication stream, gradient all-reduce "
             "on a communication thread", cfg.overlap_chunks);
  else if (cfg.overlap_chunks > 1)
    log_info("overlap: %d chunks per block; exchanges and gradient all-reduce run on a communication thread",
             cfg.overlap_chunks);
  if (cfg.overlap_chunks > cfg.batch_size && world_rank == 0)  // the same on every rank: said once
    log_warn("--overlap-chunks %d exceeds --batch-size %d: a chunk holds whole sequences, so %d chunks of every "
             "block stay empty (they still cost an exchange each)", cfg.overlap_chunks, cfg.batch_size,
             cfg.overlap_chunks - cfg.batch_size);
  if (cfg.sim_link_gbps > 0)
    log_info("simulated links: %g Gbit/s, %g us per message", cfg.sim_link_gbps, cfg.sim_link_latency_us);
  log_info("run: %d steps of %d ranks × %d micro-batches × %d × %d tokens, lr %g → %g, warmup %d, seed %llu",
           cfg.steps, world_size, cfg.micro_batches, cfg.batch_size, cfg.seq_len, cfg.lr, cfg.min_lr, cfg.warmup,
           static_cast<unsigned long long>(cfg.seed));
  {
    const MemoryEstimate mem = memory_estimate(cfg, V, world_size,
                                               static_cast<int64_t>(data.train.size() + data.val.size()));
    log_info("memory estimate per rank: %s", mem.summary().c_str());
  }

  // Checkpoints: the directory is checked first (an unwritable one fails now, on every rank, not
  // at the first save), then resume (every rank loads the slabs it holds, whatever world size
  // wrote them), then save every --checkpoint-every steps and at the end, asynchronously. A save
  // that fails (full disk, file-size limit, directory gone) ends the run on every rank with the
  // reason, the previous checkpoint intact: see checkpoints/README.md, "When a save fails".
  std::unique_ptr<CheckpointWriter> writer;
  if (!cfg.checkpoint_dir.empty()) {
    writer = std::make_unique<CheckpointWriter>(cfg.checkpoint_dir, cfg.keep_last, *groups.world, shard_role(groups));
    writer->set_background_share(cfg.checkpoint_share);
    writer->prepare();
  }
  int start_step = 1;
  const std::string resume_path = checkpoint_resolve(cfg.resume, cfg.checkpoint_dir, *groups.world);
  if (!resume_path.empty()) {
    const TrainState st = checkpoint_load(resume_path, cfg, model.params(), opt, *groups.world);
    if (st.step >= std::numeric_limits<int>::max())
      fail("checkpoint ", resume_path, " is of step ", st.step, ", beyond any --steps this build can run");
    start_step = static_cast<int>(st.step) + 1;
    log_info("resumed from %s: step %lld (written by %d ranks, ep %d)", resume_path.c_str(),
             static_cast<long long>(st.step), st.world, st.ep);
    if (start_step > cfg.steps) log_info("the checkpoint is at or past --steps %d: nothing left to train", cfg.steps);
  } else if (cfg.resume == "auto") {
    log_info("resume auto: no checkpoint in %s yet, starting from step 1", cfg.checkpoint_dir.c_str());
  }
  auto save_checkpoint = [&](int step) {
    if (!writer) return;
    TrainState st;
    st.step = step;
    st.seed = cfg.seed;
    st.lr = lr_at_step(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr);
    st.config_ini = config_to_ini(cfg);
    writer->save(model.params(), opt, st);  // waits for (and commits) the previous one first
  };
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGUSR1, on_stop_signal);

  MetricsWriter metrics(world_rank == 0 ? cfg.metrics : std::string(), /*append=*/start_step > 1);
  const int blocks = 2 * spec.layers;

  // Figures accumulated between log lines.
  double win_loss = 0, win_aux = 0, win_time = 0, win_flops = 0, win_comm = 0, win_exposed = 0, win_bytes = 0;
  double win_comm_cpu = 0;
  int64_t win_tokens = 0;
  int win_steps = 0;
  double total_train_time = 0, total_flops = 0;
  int64_t total_tokens = 0;
  std::vector<double> load_max(blocks, 0.0);  // max over the window of (max/mean load) per block
  std::vector<double> win_entropy(blocks, 0.0);  // Σ over the window of mean router entropy per block
  std::vector<std::vector<double>> win_ept;      // Σ over the window of experts_per_token [K+1][2L]
  std::vector<int64_t> dropped(blocks, 0), assignments(blocks, 0);
  EvalResult last_eval;
  int bad_steps = 0;  // consecutive skipped steps
  Clock::time_point last_status = Clock::now();

  // Tokens one step trains on, all ranks together (what train_step reports as fig.tokens).
  const double tokens_per_step = static_cast<double>(cfg.batch_size) * cfg.seq_len * cfg.micro_batches * world_size;
  auto eta_seconds = [&](int step) { return (cfg.steps - step) * (total_train_time / (step - start_step + 1)); };
  auto run_eval = [&](int step) {
    const auto t0 = Clock::now();
    last_eval = evaluate(model, data, cfg, ranks);
    const double secs = seconds_since(t0);
    if (byte_level)
      log_info("eval  step %6d | val_loss %.4f | val_bpb %.4f | %lld tokens in %.1fs", step, last_eval.loss,
               last_eval.loss / std::log(2.0), static_cast<long long>(last_eval.tokens), secs);
    else
      log_info("eval  step %6d | val_loss %.4f | val_ppl %.2f | %lld tokens in %.1fs", step, last_eval.loss,
               std::exp(last_eval.loss), static_cast<long long>(last_eval.tokens), secs);
    JsonLine j;
    j.add("step", step).add("tokens", step * tokens_per_step).add("val_loss", last_eval.loss);
    if (byte_level) j.add("val_bpb", last_eval.loss / std::log(2.0));
    else j.add("val_ppl", std::exp(last_eval.loss));
    metrics.write(j);
  };

  int last_step = start_step - 1;
  bool preempted = false;
  for (int step = start_step; step <= cfg.steps; ++step) {
    if (fault.on(world_rank) && fault.step == step) {
      if (fault.kind == "kill") raise(SIGKILL);
      if (fault.kind == "term") raise(SIGTERM);
      if (fault.kind == "stall")
        for (;;) pause();
    }
    const bool faulty = fault.on(world_rank) && step >= fault.step;
    ranks.inject_nan = faulty && fault.kind == "nan";
    ranks.fault_grad_scale = faulty && fault.kind == "gradx2" ? 2.0f : 1.0f;
    ranks.fault_expert_scale = faulty && fault.kind == "expert_group" ? static_cast<float>(groups.ep) : 1.0f;
    const auto t0 = Clock::now();
    exchange->reset_counters();
    scheduler.reset_counters();
    if (device_model) {  // what evaluation exchanged is not this step's
      double busy, exposed;
      device_model->take_exchange_seconds(&busy, &exposed);
    }
    const StepFigures fig = train_step(model, opt, cfg, data.train, step, ranks);
    const double dt = seconds_since(t0);
    if (fig.skipped) {
      // Non-finite loss or gradient: the update was skipped. A few such steps can be survived (a
      // bad batch); a run of them means the model has diverged.
      ++bad_steps;
      const std::string where = fig.bad_tensor.empty() ? std::string("the loss") : "tensor " + fig.bad_tensor;
      log_warn("step %d: non-finite loss (%g) or gradient norm (%g), first seen in %s; update skipped (%d of at most "
               "%d in a row)", step, fig.loss, fig.grad_norm, where.c_str(), bad_steps, cfg.max_bad_steps);
      if (bad_steps >= cfg.max_bad_steps)
        fail(bad_steps, " consecutive steps with a non-finite loss or gradient (last at step ", step, ", in ", where,
             "); stopping without saving: the last committed checkpoint is intact. Lower --lr or check the data.");
      continue;
    }
    bad_steps = 0;
    const double lr = lr_at_step(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr);
    for (int b = 0; b < blocks; ++b) {
      load_max[b] = std::max(load_max[b], fig.load_max_over_mean[b]);
      dropped[b] += fig.dropped[b];
      assignments[b] += fig.assignments[b];
    }
    // Exchange time (the tasks' run time on the communication thread, or in line), exposed time (the
    // training thread waiting for them) and compute time (the rest of the step).
    double comm_s = scheduler.busy_seconds(), exposed_s = scheduler.exposed_seconds();
    const double comm_cpu_s = scheduler.cpu_seconds();  // processor time of the host's exchanges
    if (device_model) {  // the expert exchanges ran on the GPU's communication stream
      double busy = 0, exposed = 0;
      device_model->take_exchange_seconds(&busy, &exposed);
      comm_s += busy;
      exposed_s += exposed;
    }
    const double a2a_bytes = exchange->bytes_sent();

    win_loss += fig.loss;
    win_aux += fig.aux;
    win_time += dt;
    win_flops += fig.flops;
    win_tokens += fig.tokens;
    win_comm += comm_s;
    win_exposed += exposed_s;
    win_comm_cpu += comm_cpu_s;
    win_bytes += a2a_bytes;
    for (int b = 0; b < blocks; ++b) win_entropy[b] += fig.router_entropy[b];
    if (win_ept.empty()) win_ept.assign(fig.experts_per_token.size(), std::vector<double>(blocks, 0.0));
    for (size_t jj = 0; jj < win_ept.size(); ++jj)
      for (int b = 0; b < blocks; ++b) win_ept[jj][b] += fig.experts_per_token[jj][b];
    total_flops += fig.flops;
    ++win_steps;
    total_train_time += dt;
    total_tokens += fig.tokens;

    // On a terminal, a live line between the logged ones (at most ~4 updates a second).
    if (log_status_enabled() && seconds_since(last_status) > 0.25 && step % cfg.log_every != 0) {
      last_status = Clock::now();
      log_status("step %6d/%d | loss %.4f | %8.0f tok/s | ETA %s", step, cfg.steps, fig.loss, win_tokens / win_time,
                 format_duration(eta_seconds(step)).c_str());
    }
    if (step % cfg.log_every == 0 || step == cfg.steps) {
      // The exchange figures are each rank's own and differ (a lighter rank also waits out the
      // routing imbalance): the line and the metrics show their mean over the ranks.
      std::array<double, 3> comm = {win_comm, win_exposed, win_comm_cpu};
      groups.world->all_reduce_sum(std::span<double>(comm));
      for (double& x : comm) x /= world_size;
      const auto [mean_comm, mean_exposed, mean_comm_cpu] = comm;
      const double tps = win_tokens / win_time;
      // Per rank against its FMA peak: the ranks' mean model FLOP/s over rank 0's peak, which is its
      // threads' share of the node (all ranks probe at once), so this is also node FLOP/s over the
      // node's peak when the ranks are alike.
      const double share = win_flops / world_size / win_time * 1e-9 / peak;
      const double eta = eta_seconds(step);
      double worst_load = 0;
      int64_t drop_n = 0, assign_n = 0;
      for (int b = 0; b < blocks; ++b) {
        worst_load = std::max(worst_load, load_max[b]);
        drop_n += dropped[b];
        assign_n += assignments[b];
      }
      const double drop_pct = assign_n ? 100.0 * drop_n / assign_n : 0.0;
      // The FMA peak is the host CPU's: on the GPU path the model FLOP/s are shown as they are.
      char rate[40];
      if (device_model) std::snprintf(rate, sizeof rate, "%.2f model TFLOP/s", win_flops / win_time * 1e-12);
      else std::snprintf(rate, sizeof rate, "%4.1f%% of FMA peak", 100.0 * share);
      log_info("step %6d/%d | loss %.4f | lr %.3e | %8.0f tok/s | %s | load max/mean %.2f | "
               "dropped %4.1f%% | comm %4.1f%% of step, %3.0f%% hidden | ETA %s",
               step, cfg.steps, win_loss / win_steps, lr, tps, rate, worst_load, drop_pct,
               100.0 * mean_comm / win_time, mean_comm > 0 ? 100.0 * (1.0 - mean_exposed / mean_comm) : 0.0,
               format_duration(eta).c_str());
      // Per-step figures are means over the steps since the last line; "tokens" counts every token
      // trained on by all ranks since step 1 (the same on a resumed run).
      const double n = win_steps;
      JsonLine j;
      j.add("step", step).add("tokens", step * tokens_per_step);
      j.add("train_loss", win_loss / n).add("lr", lr).add("tokens_per_s", tps);
      j.add("aux_loss", win_aux / n);
      if (device_model) j.add("model_flops_per_s", win_flops / win_time);
      else j.add("flops_share_of_peak", share).add("fma_peak_gflops", peak).add("sgemm_peak_gflops", sgemm_peak);
      j.add("grad_norm", fig.grad_norm);
      if (!fig.grad_fingerprint.empty()) {  // this step's, by global tensor name: [Σ g², Σ g·w]
        JsonLine grads;
        for (size_t i = 0; i < model.params().count(); ++i)
          grads.add(model.params().info(static_cast<int>(i)).name.c_str(),
                    std::vector<double>{fig.grad_fingerprint[2 * i], fig.grad_fingerprint[2 * i + 1]});
        j.add("grads", grads);
      }
      j.add("a2a_bytes", win_bytes / n).add("comm_s", mean_comm / n).add("compute_s", (win_time - mean_exposed) / n);
      j.add("comm_exposed_s", mean_exposed / n).add("comm_cpu_s", mean_comm_cpu / n);
      std::vector<double> drops(blocks);
      for (int b = 0; b < blocks; ++b) drops[b] = assignments[b] ? static_cast<double>(dropped[b]) / assignments[b] : 0;
      j.add("load_max_over_mean", load_max).add("dropped_share", drops);
      for (double& h : win_entropy) h /= n;
      j.add("router_entropy", win_entropy);
      for (size_t jj = 0; jj < win_ept.size(); ++jj) {
        for (double& v : win_ept[jj]) v /= n;
        j.add(("experts_per_token_" + std::to_string(jj)).c_str(), win_ept[jj]);
      }
      metrics.write(j);
      win_loss = win_aux = win_time = win_flops = win_comm = win_exposed = win_bytes = win_comm_cpu = 0;
      win_tokens = 0;
      win_steps = 0;
      std::fill(win_entropy.begin(), win_entropy.end(), 0.0);
      win_ept.clear();
      std::fill(load_max.begin(), load_max.end(), 0.0);
      std::fill(dropped.begin(), dropped.end(), 0);
      std::fill(assignments.begin(), assignments.end(), 0);
    }
    last_step = step;
    if (cfg.eval_every > 0 && step % cfg.eval_every == 0 && step != cfg.steps) run_eval(step);
    // Between steps, all ranks agree on two things (one small all-reduce): a stop signal, which
    // may reach only some ranks, and whether every rank has finished writing the in-flight
    // checkpoint, which is then committed at once (a collective) instead of at the next save.
    std::vector<double> agree = {g_stop_signal ? 1.0 : 0.0, writer && writer->write_done() ? 1.0 : 0.0};
    sum_over_ranks(agree, ranks, "step boundary: all-reduce");
    if (agree[1] == world_size) writer->wait();
    if (agree[0] > 0 && step < cfg.steps) {
      log_info("stop signal received: finishing at step %d with a checkpoint", step);
      save_checkpoint(step);
      preempted = true;
      break;
    }
    if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step != cfg.steps) save_checkpoint(step);
  }
  if (preempted) {
    if (writer) {
      writer->wait();
      log_info("preempted: checkpoint %s committed; resume with --resume auto", writer->last_committed().c_str());
    } else {
      log_info("preempted at step %d (no --checkpoint-dir, so nothing was saved)", last_step);
    }
    if (device_model) device_model->close();
    groups.close();
    return 0;
  }
  if (last_step == cfg.steps && start_step <= cfg.steps) save_checkpoint(cfg.steps);
  run_eval(cfg.steps);  // always evaluate at the end (the loop skips the last step)
  if (writer) {
    writer->wait();
    if (!writer->last_committed().empty()) log_info("checkpoint: %s", writer->last_committed().c_str());
  }

  const double tps = total_train_time > 0 ? total_tokens / total_train_time : 0.0;
  JsonLine j;
  j.add("final", true).add("step", cfg.steps).add("val_loss", last_eval.loss);
  if (byte_level) j.add("val_bpb", last_eval.loss / std::log(2.0));
  else j.add("val_ppl", std::exp(last_eval.loss));
  j.add("tokens_per_s", tps);
  // Executed training FLOPs per token (3 × forward, counted from the tokens routed).
  j.add("flops_per_token", total_tokens > 0 ? total_flops / static_cast<double>(total_tokens) : 0.0);
  metrics.write(j);
  log_info("done: %d steps in %s, %.0f tokens/s, final val_loss %.4f", cfg.steps,
           format_duration(seconds_since(t_start)).c_str(), tps, last_eval.loss);
  struct rusage usage {};
  if (getrusage(RUSAGE_SELF, &usage) == 0)  // ru_maxrss is in KiB on Linux
    log_info("peak memory (RSS) of rank 0: %.1f MiB", static_cast<double>(usage.ru_maxrss) / 1024.0);
  if (!cfg.metrics.empty()) log_info("metrics: %s", cfg.metrics.c_str());
  if (device_model) device_model->close();
  groups.close();
  return 0;
}

}  // namespace uoe
