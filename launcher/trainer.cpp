#include "launcher/trainer.hpp"

#include <mpi.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/common.hpp"
#include "launcher/make_step.hpp"
#include "layers/memory.hpp"
#include "parallel/exchange.hpp"
#include "parallel/grad_sync.hpp"
#include "parallel/mpi_exchange.hpp"
#include "parallel/mpi_version.hpp"
#include "parallel/scheduler.hpp"
#include "parallel/sim_link.hpp"
#include "runtime/bf16.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/device.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/log.hpp"
#include "runtime/token_file.hpp"
#include "runtime/tokenizer.hpp"
#include "runtime/version.hpp"
#include "runtime/watchdog.hpp"

namespace uoe {
namespace {

// Where this rank sits on its node (make_step and step_memory_limit need it).
StepSetup memory_setup(const ProcessGroups& groups) {
  StepSetup setup;
  setup.node_rank = groups.node_rank;
  setup.node_size = groups.node_size;
  setup.node_visible_devices = groups.node_visible_devices;
  return setup;
}

// Preemption: SIGTERM (what schedulers send before killing a job) and SIGUSR1 (Slurm's warning
// signal, --signal=USR1@120) ask the run to stop at the end of the current step with a checkpoint.
volatile sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

}  // namespace

// ---- set-up ------------------------------------------------------------------------------------

// Fault injection for the reliability and equivalence tests (never set in normal use):
// UOE_FAULT=KIND:RANK:STEP makes world rank RANK (-1: every rank), at the start of step STEP,
// either die (kill: SIGKILL, as a lost node), hang (stall: sleep forever, as a stuck rank), receive
// a preemption signal (term: SIGTERM), or, from step STEP on, see a non-finite loss (nan), send
// twice its gradient into the all-reduce (gradx2: one replica's gradient scaled by 2; on every
// rank, a constant factor, as a sum where a mean belongs), or keep expert-sharded gradients ep
// times too large (expert_group: each expert slab's gradient averaged over its replica group, dp
// ranks, where every rank's tokens reached it: it needs the world's mean, P = ep·dp ranks). The
// gradient faults exist so the equivalence tests can prove they catch such bugs.
Trainer::Fault Trainer::fault_from_env() {
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

Trainer::Trainer(const Config& cfg) : cfg_(cfg), t_start_(Clock::now()) {
  // A file-size limit (ulimit -f) must not kill the run with SIGXFSZ in the middle of a write:
  // ignored, the write fails with EFBIG, and the checkpoint or metrics writer reports it, naming
  // the file (a checkpoint write that fails leaves the previous checkpoint intact).
  std::signal(SIGXFSZ, SIG_IGN);
  start_ranks();
  build_model();
  measure_peaks();
  describe();
  open_checkpoints();
}

Trainer::~Trainer() = default;

void Trainer::start_ranks() {
  const Config& cfg = cfg_;
  groups_ = make_process_groups(MPI_COMM_WORLD, cfg.ep);
  world_rank_ = groups_.world->rank();
  world_size_ = groups_.world->size();
  log_set_rank(world_rank_, world_size_);
  // First, so that every log (a failed start's too) names the code and libraries that ran.
  log_info("build: %s", build_info(comm_library_versions()).c_str());
  fault_ = fault_from_env();
  on_gpu_ = device_parse(cfg.device) == Device::cuda;
  if (on_gpu_) device_require(Device::cuda);  // no usable GPU: a clear error naming why
  // A stuck exchange ends the job: every rank's watchdog reports where it waits, then aborts.
  watchdog_ = std::make_unique<Watchdog>(cfg.collective_timeout,
                                         [](const std::string&) { MPI_Abort(MPI_COMM_WORLD, 3); });
  // Threads from the CPUs each rank may run on (runtime/cpu_affinity.hpp): how many of the node's
  // ranks share each CPU, summed over the node; a rank bound to its own cores takes them all.
  const std::vector<int> mine = affinity_cpus();
  std::vector<int> ranks_on_cpu(CPU_SETSIZE, 0);
  for (const int c : mine)
    if (c < CPU_SETSIZE) ranks_on_cpu[c] = 1;
  groups_.node_group->all_reduce_sum(std::span<int>(ranks_on_cpu));
  cores_ = node_cpus(ranks_on_cpu);
  threads_ = cfg.threads > 0 ? cfg.threads : default_threads(mine, ranks_on_cpu);
  gemm_set_threads(threads_);
  // Where every rank runs, on rank 0's log: multi-host placements are checked from it.
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "?");
  const std::vector<std::string> places = all_gather_text(
      *groups_.world, std::string(host) + ": local rank " + std::to_string(groups_.node_rank) + " of " +
                          std::to_string(groups_.node_size) + ", " + std::to_string(mine.size()) + " CPUs, " +
                          std::to_string(threads_) + " threads");
  for (std::size_t r = 0; r < places.size(); ++r) log_info("placement: rank %zu on %s", r, places[r].c_str());
}

void Trainer::build_model() {
  const Config& cfg = cfg_;
  ProcessGroups& groups = groups_;
  {
    const auto t_data = Clock::now();
    data_ = data_load(cfg);
    data_load_seconds_ = seconds_since(t_data);
  }
  const int V = data_.vocab.size();
  spec_ = model_spec_from_config(cfg, V);
  // A run that cannot fit is refused here, before the model, its optimizer and its activations are
  // allocated (docs/architecture.md, Memory): every rank checks its own limit, the ranks agree,
  // and every rank ends with the error (its own, or the first refusing rank's), which names the
  // estimate's items and what would fit.
  {
    const MemoryRun run = memory_run_from_config(cfg, world_size_);
    const int64_t data_tokens = static_cast<int64_t>(data_.train.size() + data_.val.size());
    const MemoryEstimate mem = memory_estimate(spec_, run, data_tokens);
    const std::string refusal =
        memory_refusal(mem, step_memory_limit(cfg, memory_setup(groups)), spec_, run, data_tokens);
    ckpt::agree_on_errors(*groups.world, refusal, "the memory check");
  }
  // Simulated links: the model's traffic (expert exchanges, gradient all-reduce) goes through
  // decorators that make it take as long as it would on the emulated network.
  Communicator* world_link = groups.world.get();
  Communicator* ep_link = groups.ep_group.get();
  Communicator* dp_link = groups.dp_group.get();
  if (cfg.sim_link_gbps > 0) {
    sim_world_ = std::make_unique<SimulatedLinkCommunicator>(*world_link, cfg.sim_link_gbps, cfg.sim_link_latency_us);
    sim_ep_ = std::make_unique<SimulatedLinkCommunicator>(*ep_link, cfg.sim_link_gbps, cfg.sim_link_latency_us);
    sim_dp_ = std::make_unique<SimulatedLinkCommunicator>(*dp_link, cfg.sim_link_gbps, cfg.sim_link_latency_us);
    world_link = sim_world_.get();
    ep_link = sim_ep_.get();
    dp_link = sim_dp_.get();
  }
  if (groups.ep > 1) exchange_ = std::make_unique<MpiExchange>(*ep_link);
  else exchange_ = std::make_unique<LocalExchange>();
  model_ = std::make_unique<Model>(spec_, cfg.seed, exchange_.get());
  Model& model = *model_;
  if (cfg.overlap_chunks > 1) {
    // Only the communication thread calls MPI during a step, the training thread only between
    // steps (ordered by the scheduler's queue): MPI_THREAD_SERIALIZED is what that needs.
    int level = MPI_THREAD_SINGLE;
    UOE_CHECK_MPI(MPI_Query_thread(&level));
    if (level < MPI_THREAD_SERIALIZED)
      fail("--overlap-chunks ", cfg.overlap_chunks, " needs an MPI library with MPI_THREAD_SERIALIZED; this one provides "
           "level ", level, " (use --overlap-chunks 1)");
  }
  scheduler_ = std::make_unique<CommScheduler>(/*threaded=*/cfg.overlap_chunks > 1);
  StepSetup setup = memory_setup(groups);
  setup.scheduler = scheduler_.get();
  setup.ep_group = groups.ep_group.get();
  setup.world = groups.world.get();
  setup.dp_group = groups.dp_group.get();
  step_ = make_step(cfg, model, setup);
  AdamWSpec aspec;
  aspec.weight_decay = cfg.weight_decay;
  opt_ = std::make_unique<AdamW>(model.params(), aspec);
  sync_ = std::make_unique<GradientSync>(grad_tensors(model.params()), model_gradient_buckets(model), *world_link,
                                         *ep_link, *dp_link);
  StepRanks& ranks = ranks_;
  ranks.world = groups.world.get();
  ranks.sync = sync_.get();
  ranks.scheduler = scheduler_.get();
  ranks.step = step_.get();
  ranks.world_rank = world_rank_;
  ranks.world_size = world_size_;
  byte_level_ = data_.vocab.kind == TokenizerKind::byte;
}

void Trainer::measure_peaks() {
  // Two peaks per rank, on its own compute threads (under mpirun every rank of a node measures at
  // the same time, so each gets its share of the node): the BLAS's sgemm rate, and the hardware's
  // FMA rate (runtime/fma_peak.hpp). Utilisation is quoted against the FMA peak: with generic
  // kernels the sgemm peak is itself crippled, and a share of it hides that. The probe goes first:
  // after a GEMM, OpenBLAS's idle threads spin for a while on the cores the probe needs.
  fma_ = fma_peak_measure(cpu_features_detect(), threads_);
  peaks_.sgemm = gemm_measure_gflops(512, 5);
  // The probe keeps each thread's best interval, a whole core's rate: with more threads on the node
  // than cores (an oversubscribed run), a rank's peak is its share of the node's cores.
  node_threads_ = groups_.node_size * threads_;  // cores_: the node's CPUs its ranks may use (start_ranks)
  peaks_.fma = fma_.gflops * std::min(1.0, static_cast<double>(cores_) / node_threads_);
}

void Trainer::describe() const {
  const Config& cfg = cfg_;
  const ModelSpec& spec = spec_;
  const ProcessGroups& groups = groups_;
  const int world_rank = world_rank_, world_size = world_size_, V = spec.vocab;
  const int node_threads = node_threads_, cores = cores_;
  const double peak = peaks_.fma, sgemm_peak = peaks_.sgemm;
  // A rank not running the kernels it chose (exec failed, core not in this OpenBLAS) says so itself.
  if (blas_kernels_as_chosen()) log_info("cpu: %s", blas_kernels_summary().c_str());
  else log_warn("cpu: %s", blas_kernels_summary().c_str());
  log_info("uoe-train: data %s (%s, V=%d, %zu train / %zu val tokens)", data_.source.c_str(),
           tokenizer_kind_name(data_.vocab.kind), V, data_.train.size(), data_.val.size());
  if (const DocumentWindows* docs = data_.train.documents())  // --windows-within-documents (runtime/data.hpp)
    log_info("data: training windows kept inside documents: %llu of %llu documents hold a window of %d + 1 tokens, "
             "%llu windows; %llu shorter documents skipped (%llu tokens, %.2f%% of the training split)",
             static_cast<unsigned long long>(docs->first.size()), static_cast<unsigned long long>(docs->documents),
             docs->T, static_cast<unsigned long long>(docs->total()), static_cast<unsigned long long>(docs->skipped),
             static_cast<unsigned long long>(docs->skipped_tokens),
             data_.train.empty() ? 0.0 : 100.0 * static_cast<double>(docs->skipped_tokens) / data_.train.size());
  log_info("model: %s blocks, %d layers, d %d, %d heads in %d attention experts (top-%d), %d MLP experts of %d (top-%d), "
           "capacity %g, patch %d, gate %s; %zu parameters on rank 0",
           block_type_name(spec.block_type), spec.layers, spec.d, spec.heads, spec.attn_experts, spec.attn_topk, spec.experts, spec.expert_ff(),
           spec.topk, spec.capacity_factor, spec.patch_size, cfg.gate.c_str(), model_->params().total());
  log_info("ranks: %d (ep %d × dp %d), %d compute threads each (%s), sgemm peak %.1f GFLOP/s per rank", world_size,
           groups.ep, groups.dp, threads_, gemm_describe().c_str(), sgemm_peak);
  if (precision_parse(cfg.precision) == Precision::bf16)
    log_info("precision bf16: %s; expert rows exchanged as bf16, gradients reduced in fp32",
             device_parse(cfg.device) == Device::cuda ? "cuBLAS GEMMs on bf16 inputs, fp32 accumulation"
                                                      : gemm_bf16_describe().c_str());
  // In bf16 on a CPU with bf16 units (oneDNN's path) the GEMMs run on them, not on the fp32 FMAs the
  // probe measures: the share is still quoted against the fp32 peak, and says so.
  const bool bf16_units = !on_gpu_ && precision_parse(cfg.precision) == Precision::bf16 &&
                          gemm_bf16_path() == Bf16GemmPath::onednn;
  log_info("FMA peak %.1f GFLOP/s per rank: %s%s; utilisation = model FLOP/s per rank against it (sgemm reaches "
           "%.0f%% of the probe's rate)%s", peak, fma_peak_describe(fma_).c_str(),
           node_threads > cores ? (", × " + std::to_string(cores) + " cores / " + std::to_string(node_threads) +
                                   " threads on this node").c_str()
                                : "",
           100.0 * sgemm_peak / fma_.gflops,
           bf16_units ? "; in bf16 the GEMMs run on the CPU's bf16 units, whose peak this fp32 probe does not "
                        "measure: the share is of the fp32 peak and can pass 100%"
                      : "");
  if (on_gpu_)
    log_info("device: rank 0 computes on %s; parameters, gradients and AdamW stay on the GPU, the gradient "
             "all-reduce goes through the host (docs/gpu.md)", step_->describe().c_str());
  if (cfg.overlap_chunks > 1 && on_gpu_)
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
    const MemoryEstimate mem = memory_estimate(spec, memory_run_from_config(cfg, world_size),
                                               static_cast<int64_t>(data_.train.heap_ids() + data_.val.heap_ids()));
    const MemoryLimit limit = step_memory_limit(cfg, memory_setup(groups));
    log_info("memory estimate per rank (--recompute %s): %s; may use %.1f MiB (%s)", recompute_name(mem.recompute),
             mem.summary().c_str(), limit.bytes / 1048576.0, limit.source.c_str());
    if (world_rank == 0) {  // itemised, one line each
      const std::string table = mem.table();
      for (size_t a = 0, b; a < table.size(); a = b + 1) {
        b = table.find('\n', a);
        if (b == std::string::npos) b = table.size();
        log_info("%s", table.substr(a, b - a).c_str());
      }
    }
  }
}

void Trainer::open_checkpoints() {
  const Config& cfg = cfg_;
  // Checkpoints: the directory is checked first (an unwritable one fails now, on every rank, not
  // at the first save), then resume (every rank loads the slabs it holds, whatever world size
  // wrote them), then save every --checkpoint-every steps and at the end, asynchronously. A save
  // that fails (full disk, file-size limit, directory gone) ends the run on every rank with the
  // reason, the previous checkpoint intact: see checkpoints/README.md, "When a save fails".
  if (!cfg.checkpoint_dir.empty()) {
    writer_ = std::make_unique<CheckpointWriter>(cfg.checkpoint_dir, cfg.keep_last, *groups_.world, shard_role(groups_));
    writer_->set_background_share(cfg.checkpoint_share);
    writer_->prepare();
  }
  start_step_ = 1;
  const std::string resume_path = checkpoint_resolve(cfg.resume, cfg.checkpoint_dir, *groups_.world);
  if (!resume_path.empty()) {
    const TrainState st = checkpoint_load(resume_path, cfg, model_->params(), *opt_, *groups_.world);
    if (st.step >= std::numeric_limits<int>::max())
      fail("checkpoint ", resume_path, " is of step ", st.step, ", beyond any --steps this build can run");
    // Every rank read the same data, so every rank refuses alike.
    if (!st.tokenizer.empty() && st.tokenizer_hash != vocab_hash(data_.vocab))
      fail("checkpoint ", resume_path, " was trained with another vocabulary (", st.tokenizer, ", hash ",
           st.tokenizer_hash, ") than this run's data ", data_.source, " (", tokenizer_kind_name(data_.vocab.kind),
           ", hash ", vocab_hash(data_.vocab), "): its token ids would mean other text");
    start_step_ = static_cast<int>(st.step) + 1;
    step_->state_from_host();  // the step takes the loaded parameters and moments at its next use
    log_info("resumed from %s: step %lld (written by %d ranks, ep %d)", resume_path.c_str(),
             static_cast<long long>(st.step), st.world, st.ep);
    if (start_step_ > cfg.steps) log_info("the checkpoint is at or past --steps %d: nothing left to train", cfg.steps);
  } else if (cfg.resume == "auto") {
    log_info("resume auto: no checkpoint in %s yet, starting from step 1", cfg.checkpoint_dir.c_str());
  }
}

// ---- the loop ----------------------------------------------------------------------------------

int Trainer::run() {
  const Config& cfg = cfg_;
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGUSR1, on_stop_signal);
  metrics_ = std::make_unique<MetricsWriter>(world_rank_ == 0 ? cfg.metrics : std::string(),
                                             /*resume_step=*/start_step_ - 1);
  window_ = StepWindow(2 * spec_.layers);
  last_status_ = Clock::now();
  tokens_per_step_ = static_cast<double>(cfg.batch_size) * cfg.seq_len * cfg.micro_batches * world_size_;

  int last_step = start_step_ - 1;
  for (int step = start_step_; step <= cfg.steps; ++step) {
    inject_faults(step);
    double dt = 0;
    const StepFigures fig = timed_step(step, &dt);
    if (fig.skipped) {
      skip_step(step, fig);
      continue;
    }
    bad_steps_ = 0;
    account_step(step, fig, dt);
    last_step = step;
    if (step_boundary(step)) return finish_preempted(last_step);
  }
  if (last_step == cfg.steps && start_step_ <= cfg.steps) save_checkpoint(cfg.steps);
  return finish();
}

void Trainer::inject_faults(int step) {
  const Fault& fault = fault_;
  const int world_rank = world_rank_;
  StepRanks& ranks = ranks_;
  if (fault.on(world_rank) && fault.step == step) {
    if (fault.kind == "kill") raise(SIGKILL);
    if (fault.kind == "term") raise(SIGTERM);
    if (fault.kind == "stall")
      for (;;) pause();
  }
  const bool faulty = fault.on(world_rank) && step >= fault.step;
  ranks.inject_nan = faulty && fault.kind == "nan";
  ranks.fault_grad_scale = faulty && fault.kind == "gradx2" ? 2.0f : 1.0f;
  ranks.fault_expert_scale = faulty && fault.kind == "expert_group" ? static_cast<float>(groups_.ep) : 1.0f;
}

StepFigures Trainer::timed_step(int step, double* seconds) {
  const auto t0 = Clock::now();
  exchange_->reset_counters();
  scheduler_->reset_counters();
  {  // what evaluation exchanged is not this step's
    double busy, exposed;
    step_->take_exchange_seconds(&busy, &exposed);
  }
  const StepFigures fig = train_step(*model_, *opt_, cfg_, data_.train, step, ranks_);
  *seconds = seconds_since(t0);
  return fig;
}

void Trainer::skip_step(int step, const StepFigures& fig) {
  // Non-finite loss or gradient: the update was skipped. A few such steps can be survived (a
  // bad batch); a run of them means the model has diverged.
  ++bad_steps_;
  const std::string where = fig.bad_tensor.empty() ? std::string("the loss") : "tensor " + fig.bad_tensor;
  log_skipped_step(step, fig, where, bad_steps_, cfg_.max_bad_steps);
  if (bad_steps_ >= cfg_.max_bad_steps)
    fail(bad_steps_, " consecutive steps with a non-finite loss or gradient (last at step ", step, ", in ", where,
         "); stopping without saving: the last committed checkpoint is intact. Lower --lr or check the data.");
}

void Trainer::account_step(int step, const StepFigures& fig, double dt) {
  const Config& cfg = cfg_;
  const double lr = lr_at_step(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr);
  // Exchange time (the tasks' run time on the communication thread, or in line), exposed time (the
  // training thread waiting for them) and compute time (the rest of the step).
  double comm_s = scheduler_->busy_seconds(), exposed_s = scheduler_->exposed_seconds();
  const double comm_cpu_s = scheduler_->cpu_seconds();  // processor time of the host's exchanges
  {  // exchanges the backend ran elsewhere (a GPU's communication stream); the CPU's are above
    double busy = 0, exposed = 0;
    step_->take_exchange_seconds(&busy, &exposed);
    comm_s += busy;
    exposed_s += exposed;
  }
  const double a2a_bytes = exchange_->bytes_sent();
  window_.add(fig, dt, comm_s, exposed_s, comm_cpu_s, a2a_bytes, exchange_->payload_bytes_sent(),
               exchange_->link_bytes());
  total_flops_ += fig.flops;
  total_train_time_ += dt;
  total_tokens_ += fig.tokens;

  // On a terminal, a live line between the logged ones (at most ~4 updates a second).
  if (log_status_enabled() && seconds_since(last_status_) > 0.25 && step % cfg.log_every != 0) {
    last_status_ = Clock::now();
    log_status_line(step, cfg.steps, fig.loss, window_.tokens / window_.time, eta_seconds(step));
  }
  if (step % cfg.log_every == 0 || step == cfg.steps) report_window(step, fig, lr);
}

void Trainer::report_window(int step, const StepFigures& fig, double lr) {
  const StepWindow& w = window_;
  // The exchange figures are each rank's own and differ (a lighter rank also waits out the
  // routing imbalance): the line and the metrics show their mean over the ranks.
  // The link bytes are the busiest rank's (its link sets the exchange's pace): each rank's value in
  // its own slot, summed, gives every rank all of them.
  std::vector<double> comm(3 + world_size_, 0.0);
  comm[0] = w.comm, comm[1] = w.exposed, comm[2] = w.comm_cpu, comm[3 + world_rank_] = w.link_bytes;
  groups_.world->all_reduce_sum(std::span<double>(comm));
  for (int i = 0; i < 3; ++i) comm[i] /= world_size_;
  const WindowComm mean{comm[0], comm[1], comm[2], *std::max_element(comm.begin() + 3, comm.end())};
  const double tps = w.tokens / w.time;
  // Per rank against its FMA peak: the ranks' mean model FLOP/s over rank 0's peak, which is its
  // threads' share of the node (all ranks probe at once), so this is also node FLOP/s over the
  // node's peak when the ranks are alike.
  const double share = w.flops / world_size_ / w.time * 1e-9 / peaks_.fma;
  log_step_line(step, cfg_.steps, lr, w, mean, tps, share, eta_seconds(step), on_gpu_);
  metrics_->write(metrics_step_line(step, tokens_per_step_, lr, w, mean, tps, share, peaks_, fig, model_->params(),
                                    on_gpu_));
  window_.clear();
}

bool Trainer::step_boundary(int step) {
  const Config& cfg = cfg_;
  if (cfg.eval_every > 0 && step % cfg.eval_every == 0 && step != cfg.steps) run_eval(step);
  // Between steps, all ranks agree on two things (one small all-reduce): a stop signal, which
  // may reach only some ranks, and whether every rank has finished writing the in-flight
  // checkpoint, which is then committed at once (a collective) instead of at the next save.
  std::vector<double> agree = {g_stop_signal ? 1.0 : 0.0, writer_ && writer_->write_done() ? 1.0 : 0.0};
  sum_over_ranks(agree, ranks_, "step boundary: all-reduce");
  if (agree[1] == world_size_) writer_->wait();
  if (agree[0] > 0 && step < cfg.steps) {
    log_info("stop signal received: finishing at step %d with a checkpoint", step);
    save_checkpoint(step);
    return true;
  }
  if (cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step != cfg.steps) save_checkpoint(step);
  return false;
}

double Trainer::eta_seconds(int step) const {
  return (cfg_.steps - step) * (total_train_time_ / (step - start_step_ + 1));
}

namespace {

// This process's RssAnon from /proc/self/status, in MiB (-1 where there is none).
double rss_anon_mib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("RssAnon:", 0) == 0) return std::strtod(line.c_str() + 8, nullptr) / 1024.0;  // kB
  return -1;  // not Linux
}

}  // namespace

// ---- evaluation and checkpoints ----------------------------------------------------------------

// Validation: windows of T with stride T (the targets tile the split), dropless, in batches of up
// to B windows. --eval-batches K > 0 keeps the first K·B windows (as it always has); of those, the
// budget --eval-windows N > 0 takes at most N spread evenly (data_eval_window), the same ones every
// evaluation; both 0 evaluate every window.
// Batch j goes to world rank j mod P; every rank runs the same number of forward passes (an empty
// one when it has no batch left) because the expert exchanges inside are collective.
EvalResult Trainer::evaluate() {
  const Config& cfg = cfg_;
  const Dataset& data = data_;
  const StepRanks& ranks = ranks_;
  const int T = cfg.seq_len, B = cfg.batch_size, P = ranks.world_size;
  int64_t total = data_val_window_count(data.val.size(), T);
  if (cfg.eval_batches > 0) total = std::min<int64_t>(total, static_cast<int64_t>(cfg.eval_batches) * B);
  int64_t windows = total;
  if (cfg.eval_windows > 0) windows = std::min<int64_t>(windows, cfg.eval_windows);
  const int64_t batches = (windows + B - 1) / B;
  const int64_t rounds = (batches + P - 1) / P;
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(static_cast<size_t>(B) * T);
  std::vector<double> sums = {0.0, 0.0};  // CE, tokens
  ForwardStats st;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t batch = round * P + ranks.world_rank;
    const int64_t first = batch * B;
    const int n = first < windows ? static_cast<int>(std::min<int64_t>(B, windows - first)) : 0;
    for (int k = 0; k < n; ++k)
      data_val_windows(data.val, T, data_eval_window(first + k, windows, total), 1, in.data() + static_cast<size_t>(k) * T,
                       tg.data() + static_cast<size_t>(k) * T);
    step_->forward_eval(in.data(), tg.data(), n, &st);
    sums[0] += st.ce_sum;
    sums[1] += static_cast<double>(st.tokens);
  }
  sum_over_ranks(sums, ranks, "evaluation: loss all-reduce");
  EvalResult r;
  r.loss = sums[1] > 0 ? sums[0] / sums[1] : 0.0;
  r.tokens = static_cast<int64_t>(sums[1]);
  // Bits per byte (Dataset::val_bytes): the split's tokens per byte times nats per token, in bits.
  if (data.val_bytes > 0)
    r.bpb = r.loss * (static_cast<double>(data.val.size()) / data.val_bytes) / std::log(2.0);
  return r;
}

void Trainer::run_eval(int step) {
  const auto t0 = Clock::now();
  last_eval_ = evaluate();
  const double secs = seconds_since(t0);
  log_eval_line(step, last_eval_, secs, byte_level_);
  metrics_->write(metrics_eval_line(step, tokens_per_step_, last_eval_, byte_level_));
}

void Trainer::save_checkpoint(int step) {
  const Config& cfg = cfg_;
  if (!writer_) return;
  TrainState st;
  st.step = step;
  st.seed = cfg.seed;
  st.lr = lr_at_step(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr);
  st.config_ini = config_to_ini(cfg);
  if (data_.vocab.kind != TokenizerKind::byte || data_.vocab.eod >= 0) {  // the vocabulary travels with the model (uoe-sample)
    st.tokenizer = tokenizer_kind_name(data_.vocab.kind);
    st.tokenizer_blob = tokenizer_blob(data_.vocab);
    st.tokenizer_hash = vocab_hash(data_.vocab);
  }
  step_->state_to_host(opt_.get());  // a step with its own arenas (the GPU's): its state, into the host's
  writer_->save(model_->params(), *opt_, st);  // waits for (and commits) the previous one first
}

// ---- the end -----------------------------------------------------------------------------------

int Trainer::finish_preempted(int last_step) {
  if (writer_) {
    writer_->wait();
    log_info("preempted: checkpoint %s committed; resume with --resume auto", writer_->last_committed().c_str());
  } else {
    log_info("preempted at step %d (no --checkpoint-dir, so nothing was saved)", last_step);
  }
  step_->close();
  groups_.close();
  return 0;
}

int Trainer::finish() {
  const Config& cfg = cfg_;
  run_eval(cfg.steps);  // always evaluate at the end (the loop skips the last step)
  if (writer_) {
    writer_->wait();
    if (!writer_->last_committed().empty()) log_info("checkpoint: %s", writer_->last_committed().c_str());
  }
  const double tps = total_train_time_ > 0 ? total_tokens_ / total_train_time_ : 0.0;
  metrics_->write(metrics_final_line(cfg.steps, last_eval_, byte_level_, tps, total_flops_, total_tokens_));
  log_done(cfg, seconds_since(t_start_), tps, last_eval_);
  {
    // Each rank's anonymous resident memory (heap, stacks: not the mapped token files, which are
    // file-backed pages in the page cache, shared by the ranks of a node). The memory test reads it.
    std::vector<double> rss(static_cast<size_t>(world_size_), 0.0);
    rss[static_cast<size_t>(world_rank_)] = rss_anon_mib();
    sum_over_ranks(rss, ranks_, "memory report: all-reduce");
    std::string per_rank;
    for (double r : rss) per_rank += (per_rank.empty() ? "" : ", ") + std::to_string(static_cast<int64_t>(std::llround(r)));
    log_info("memory: RssAnon per rank (MiB): %s; data loaded in %.3fs", per_rank.c_str(), data_load_seconds_);
  }
  step_->close();
  groups_.close();
  return 0;
}

int train_run(const Config& cfg) {
  Trainer trainer(cfg);
  return trainer.run();
}

}  // namespace uoe
