// bench-overlap_layer: how much of the expert exchange the scheduler hides, on one UoE layer
// (SMHA + UoME blocks) forward + backward, expert-parallel over the ranks of the run (use 2),
// under simulated links (parallel/sim_link.hpp) chosen so that exchange / compute ≈ the given
// ratios.
//
//   mpirun -np 2 build/bin/bench-overlap_layer [--ratios 0.5,1,2] [--chunks 4,8] [--latency-us 5]
//                                              [--repeats 10] [--csv FILE] [uoe-train model options]
//
// Procedure: (1) time the layer with serial exchanges and no simulated link: compute = step time −
// exchange time; payload bytes per step come from the exchange's counters. (2) For each ratio r,
// a link of bandwidth bytes / (r · compute) (plus the latency per message) is emulated; the layer
// is timed serially (chunks 1, exchanges in line) and pipelined (each chunk count, exchanges on
// the communication thread). Reported per row: serial time, overlapped time, the ideal
// max(exchange, compute), the exchange time, the exposed exchange time and hidden % =
// 1 − exposed / exchange. Medians over the repeats. The figures are the critical rank's: the one
// with the most compute (routing leaves the ranks unequal loads, and the step waits for the heaviest);
// "all" is 1 − Σ exposed / Σ exchange over every rank, whose lighter ranks also wait out the
// imbalance, which no schedule can hide. Each pipelined row is followed by its processor time
// (the compute thread's and the exchange tasks', thread CPU clocks) and the bound that sets when
// the node's ranks share its cores: no step under (Σ compute + Σ exchange processor time) / cores.
// Every timed run's loss is checked against the serial run's (they must agree).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_config.hpp"
#include "layers/cpu_backend.hpp"
#include "layers/model.hpp"
#include "parallel/comm.hpp"
#include "parallel/mpi_exchange.hpp"
#include "parallel/scheduler.hpp"
#include "parallel/sim_link.hpp"
#include "runtime/clock.hpp"
#include "runtime/config.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"

namespace {

using Clock = std::chrono::steady_clock;

std::vector<double> parse_list(const std::string& s) {
  std::vector<double> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stod(item));
  return v;
}

struct Timing {
  double step = 0, exchange = 0, exposed = 0, bytes = 0, loss = 0;
  double cpu_compute = 0, cpu_exchange = 0;  // processor seconds: the compute's, the exchanges' tasks
  std::vector<uoe::ModelStep::PhaseTime> phases;  // each block pass's wall and exchange seconds
};

// Median over `repeats` forward+backward passes of one micro-batch (after 2 warm-ups).
Timing time_layer(const uoe::Config& cfg, uoe::Communicator& ep, const uoe::TokenStream& tokens, int chunks,
                  int repeats) {
  uoe::MpiExchange exchange(ep);
  uoe::Model model(uoe::model_spec_from_config(cfg, 256), cfg.seed, &exchange);
  uoe::CommScheduler sched(chunks > 1);
  uoe::CpuStep step(model);
  step.backend().set_scheduler(&sched);
  step.set_chunks(chunks);
  const int B = cfg.batch_size, T = cfg.seq_len;
  std::vector<int32_t> in(static_cast<size_t>(B) * T), tg(in.size());
  uoe::data_sample_batch(tokens, T, B, cfg.seed, 1, static_cast<uint64_t>(ep.rank()), in.data(), tg.data());
  std::vector<Timing> runs;
  uoe::ForwardStats st;
  for (int rep = 0; rep < 2 + repeats; ++rep) {
    model.params().zero_grads();
    exchange.reset_counters();
    sched.reset_counters();
    std::vector<uoe::ModelStep::PhaseTime> phases;
    step.set_phase_log(&phases);
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = Clock::now();
    const double c0 = uoe::thread_cpu_seconds();
    step.forward_backward(in.data(), tg.data(), B, 1.0f, &st);
    Timing t;
    t.step = std::chrono::duration<double>(Clock::now() - t0).count();
    t.cpu_exchange = sched.cpu_seconds();
    t.cpu_compute = uoe::thread_cpu_seconds() - c0 - (sched.threaded() ? 0.0 : t.cpu_exchange);
    t.exchange = sched.busy_seconds();
    t.exposed = sched.exposed_seconds();
    t.bytes = exchange.bytes_sent();
    t.loss = st.ce_sum;
    t.phases = std::move(phases);
    if (rep >= 2) runs.push_back(t);
  }
  std::sort(runs.begin(), runs.end(), [](const Timing& a, const Timing& b) { return a.step < b.step; });
  return runs[runs.size() / 2];
}

// What no schedule can hide, from a serial run's passes (exchange E and compute C = wall − E each):
// a block's forward pass cannot overlap anything but itself (the next block's routing needs all of
// its output, and its own dispatch needs its routing), so each forward pass but the last exposes at
// least max(0, E − C). Per-block pipelines (the scheduler here) also keep each backward pass, the
// last forward pass and the head (the compute outside blocks) apart: bound `per_block`. A schedule
// free to run the last forward block, the head and every backward pass as one wavefront (only the
// routing barriers kept) could pool them: bound `wavefront`. Both as the largest hidden share,
// 1 − exposed / exchange; generous (fills and drains, and the router's own time, are not counted).
struct Bounds {
  double per_block = 0, wavefront = 0;              // largest hidden share
  double step_per_block = 0, step_wavefront = 0;    // smallest step: compute + what stays exposed
  std::string phases;  // "fwd0 E/C …" in ms, for the log
};

Bounds hidden_bounds(const Timing& serial) {
  Bounds out;
  double e_all = 0, c_blocks = 0, block_wall = 0, exposed_block = 0, exposed_wave = 0, pool_e = 0, pool_c = 0;
  int last_forward = -1;
  for (const auto& p : serial.phases)
    if (!p.backward) last_forward = std::max(last_forward, p.block);
  char buf[96];
  for (const auto& p : serial.phases) {
    const double e = p.exchange_seconds, c = p.seconds - e;
    e_all += e;
    block_wall += p.seconds;
    c_blocks += c;
    exposed_block += std::max(0.0, e - c);
    if (!p.backward && p.block != last_forward) {
      exposed_wave += std::max(0.0, e - c);
    } else {
      pool_e += e;
      pool_c += c;
    }
    std::snprintf(buf, sizeof buf, "%s%s%d %.1f/%.1f", out.phases.empty() ? "" : ", ", p.backward ? "bwd" : "fwd",
                  p.block, e * 1e3, c * 1e3);
    out.phases += buf;
  }
  const double head_c = std::max(0.0, serial.step - block_wall - (serial.exchange - e_all));
  std::snprintf(buf, sizeof buf, ", head 0/%.1f", head_c * 1e3);
  out.phases += buf;
  pool_c += head_c;
  exposed_wave += std::max(0.0, pool_e - pool_c);
  if (e_all > 0) {
    out.per_block = 1.0 - exposed_block / e_all;
    out.wavefront = 1.0 - exposed_wave / e_all;
  }
  const double compute = c_blocks + head_c;
  out.step_per_block = compute + exposed_block;
  out.step_wavefront = compute + exposed_wave;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  uoe::blas_kernels_select();  // the BLAS kernels for this CPU's ISA: before MPI_Init (may re-execute)
  uoe::MpiSession mpi(&argc, &argv);
  try {
    std::vector<double> ratios = {0.5, 1, 2}, chunk_list = {4, 8};
    double latency_us = 5;
    int repeats = 10;
    std::string csv;
    std::vector<const char*> rest = {argv[0]};
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--ratios" && i + 1 < argc) ratios = parse_list(argv[++i]);
      else if (a == "--chunks" && i + 1 < argc) chunk_list = parse_list(argv[++i]);
      else if (a == "--latency-us" && i + 1 < argc) latency_us = std::stod(argv[++i]);
      else if (a == "--repeats" && i + 1 < argc) repeats = std::max(1, std::atoi(argv[++i]));
      else if (a == "--csv" && i + 1 < argc) csv = argv[++i];
      else rest.push_back(argv[i]);
    }
    const std::optional<uoe::Config> parsed = uoe::bench::model_config(rest);
    if (!parsed) return 0;
    uoe::Config cfg = *parsed;
    cfg.layers = 1;  // one UoE layer: an SMHA block and a UoME block
    uoe::ProcessGroups groups = uoe::make_process_groups(MPI_COMM_WORLD, mpi.world_size());
    uoe::gemm_set_threads(1);  // one core per rank: the second is the other rank's
    const uoe::TokenStream tokens =
        uoe::data_from_text(uoe::data_builtin_corpus(), nullptr, 0.1, uoe::TokenizerKind::byte, cfg.seq_len, "built-in")
            .train;
    // (1) Compute time and bytes, serial, no simulated link.
    const Timing base = time_layer(cfg, *groups.ep_group, tokens, 1, repeats);
    const double compute = base.step - base.exchange;
    // The critical rank (most compute) reports, and its link calibration decides for everyone.
    struct {
      double value;
      int rank;
    } mine{compute, mpi.world_rank()}, heaviest{};
    MPI_Allreduce(&mine, &heaviest, 1, MPI_DOUBLE_INT, MPI_MAXLOC, MPI_COMM_WORLD);
    const int critical = heaviest.rank;
    // The ranks on this node and its cores (for the processor-time bound).
    const int node_ranks = groups.node_size;
    const int cores = uoe::default_threads();
    const bool root = mpi.world_rank() == critical;
    if (root)
      std::printf("# bench-overlap_layer: %d ranks, d %d, B %d × T %d, 1 layer; compute %.2f ms, payload %.2f MB "
                  "sent per rank per fwd+bwd (exchanges without a link: %.2f ms, %.2f ms of processor time), link "
                  "latency %g us; figures of rank %d (the most compute)\n",
                  mpi.world_size(), cfg.d_model, cfg.batch_size, cfg.seq_len, compute * 1e3, base.bytes / 1e6,
                  base.exchange * 1e3, base.cpu_exchange * 1e3, latency_us, critical);
    if (root)
      std::printf("%6s %9s %7s %11s %11s %11s %11s %11s %8s %8s %9s\n", "ratio", "Gbit/s", "chunks", "serial ms",
                  "overlap ms", "ideal ms", "exchange ms", "exposed ms", "hidden", "all", "vs ideal");
    FILE* out = root && !csv.empty() ? std::fopen(csv.c_str(), "w") : nullptr;
    if (out)
      std::fprintf(out, "ratio,gbps,chunks,serial_ms,overlap_ms,ideal_ms,exchange_ms,exposed_ms,hidden,hidden_all_ranks,overlap_over_ideal\n");
    for (double r : ratios) {
      // The link: the serial run's measured exchange time must come to r · compute. It is
      // latency per message, the real exchange's own time, and bytes / bandwidth: a first link
      // with bytes / bandwidth = r · compute measures the rest (a), a second one takes it off.
      // The critical rank's figures decide, so every rank emulates the same link.
      double gbps = base.bytes * 8.0 / (r * compute) / 1e9;
      Timing serial;
      std::unique_ptr<uoe::SimulatedLinkCommunicator> link_owner;
      for (int pass = 0; pass < 2; ++pass) {
        MPI_Bcast(&gbps, 1, MPI_DOUBLE, critical, MPI_COMM_WORLD);
        link_owner = std::make_unique<uoe::SimulatedLinkCommunicator>(*groups.ep_group, gbps, latency_us);
        serial = time_layer(cfg, *link_owner, tokens, 1, repeats);
        if (pass == 0) {
          const double rest = serial.exchange - base.bytes * 8.0 / (gbps * 1e9);
          const double wire = std::max(0.25 * r * compute, r * compute - rest);  // keep a real link if rest dominates
          gbps = base.bytes * 8.0 / wire / 1e9;
        } else if (root) {
          std::printf("# ratio %g: link %.3f Gbit/s; serial run: exchange %.2f ms against compute %.2f ms "
                      "(measured ratio %.2f); link model charged %.2f ms per fwd+bwd\n",
                      r, gbps, serial.exchange * 1e3, compute * 1e3, serial.exchange / compute,
                      link_owner->modeled_seconds() / (2 + repeats) * 1e3);
          const Bounds bd = hidden_bounds(serial);
          std::printf("#   per pass, exchange/compute ms: %s\n", bd.phases.c_str());
          const double ideal = std::max(serial.exchange, compute);
          std::printf("#   largest share any schedule could hide: %.1f%% with per-block pipelines, %.1f%% with a "
                      "wavefront from the last forward block through the backward (shortest steps %.2fx and "
                      "%.2fx the ideal)\n",
                      100 * bd.per_block, 100 * bd.wavefront, bd.step_per_block / ideal, bd.step_wavefront / ideal);
        }
      }
      uoe::SimulatedLinkCommunicator& link = *link_owner;
      for (double ch : chunk_list) {
        const Timing piped = time_layer(cfg, link, tokens, static_cast<int>(ch), repeats);
        if (std::fabs(piped.loss - serial.loss) > 1e-5 * std::fabs(serial.loss))
          uoe::fail("pipelined loss ", piped.loss, " differs from serial ", serial.loss);
        const double ideal = std::max(serial.exchange, compute);
        const double hidden = piped.exchange > 0 ? 1.0 - piped.exposed / piped.exchange : 0.0;
        double sums[2] = {piped.exposed, piped.exchange};
        MPI_Allreduce(MPI_IN_PLACE, sums, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        const double hidden_all = sums[1] > 0 ? 1.0 - sums[0] / sums[1] : 0.0;
        // Processor time: the node's ranks share its cores, so no schedule can finish a step before
        // all their compute and exchange work has had a core (the exchanges' share is MPI copying
        // rows between the processes, and polling while a peer is late; a NIC would do the copies).
        double node_cpu = piped.cpu_compute + piped.cpu_exchange;
        groups.node_group->all_reduce_sum(std::span<double>(&node_cpu, 1));
        const double cpu_bound = node_cpu / cores;
        if (root) {
          std::printf("%6.2f %9.3f %7d %11.2f %11.2f %11.2f %11.2f %11.2f %7.1f%% %7.1f%% %8.2fx\n", r, gbps,
                      static_cast<int>(ch), serial.step * 1e3, piped.step * 1e3, ideal * 1e3, piped.exchange * 1e3,
                      piped.exposed * 1e3, 100 * hidden, 100 * hidden_all, piped.step / ideal);
          std::printf("#   processor time: compute %.1f ms, exchanges %.1f ms on this rank; the node's %d ranks "
                      "need %.1f ms on %d cores: no step under %.1f ms (%.2fx the ideal)\n",
                      piped.cpu_compute * 1e3, piped.cpu_exchange * 1e3, node_ranks, node_cpu * 1e3, cores,
                      cpu_bound * 1e3, cpu_bound / ideal);
          if (out)
            std::fprintf(out, "%g,%.4f,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f\n", r, gbps, static_cast<int>(ch),
                         serial.step * 1e3, piped.step * 1e3, ideal * 1e3, piped.exchange * 1e3, piped.exposed * 1e3,
                         hidden, hidden_all, piped.step / ideal);
        }
      }
    }
    if (out) std::fclose(out);
    groups.close();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: [rank %d] %s\n", mpi.world_rank(), e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}
