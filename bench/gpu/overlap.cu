// bench-gpu-overlap: the GPU counterpart of bench/overlap_layer — how much of the expert exchange
// the StreamScheduler hides behind the expert GEMMs, on 2+ ranks, one GPU each. Never run on a GPU
// (bench/gpu/README.md); without one it exits 77.
//
// What it models: the expert part of ONE UoME (MLP) block's forward pass, expert-parallel over the
// ranks (`--experts-per-rank` experts on each, E in all, each d_ff / E wide, the UoE cut), pipelined
// in C chunks exactly as docs/gpu.md and parallel/stream_scheduler.hpp describe:
//   dispatch  NcclCommunicator::all_to_all_v (PeerBlocks form: rows leave packed by destination and
//             land expert-major on their owner), on the communication stream, via submit()
//   experts   cuda::mlp_experts_forward (bias, gemm_experts, GELU, gemm_experts) on the compute
//             stream, after wait(dispatch ticket)
//   combine   the same exchange back (expert-major blocks → packed by source), via submit()
// chunk c's GEMMs overlapping chunk c+1's dispatch and chunk c−1's return. NOT included: the router
// (softmax, top-k, capacity), the gather/scatter of tokens into per-expert rows and the
// gate-weighted combine, the per-chunk count exchange over MPI (counts here are known in advance:
// every source sends rows/E rows to every expert — even traffic), the attention block, backward.
//
// Per chunk count: the step (first dispatch to last return, CUDA events on the compute stream), the
// exchange time (Σ exchange spans on the communication stream) and the exposed exchange time (Σ
// compute-stream stalls in wait()), both from the StreamScheduler's own accounting. Each repeat
// takes the slowest rank's figure; the median over --repeats is reported. serial = 1 chunk (each
// stage waits for the previous one); compute = the experts alone on the 1-chunk rows (no exchange);
// ideal = max(serial exchange, compute); hidden = 1 − exposed / exchange.
//
// Checked, untimed, for every chunk count: each rank's returned rows (receive buffer poisoned with
// NaN first) against the same experts computed locally without any exchange (every rank holds all
// E experts' weights for this check); "rel diff" = max |out − ref| / max |ref| over the ranks. A
// value above 1e-2 means rows went to the wrong place, and the run fails.
//
//   mpirun -np 2 build/bin/bench-gpu-overlap [--rows 16384] [--d 1024] [--d-ff 4096] [--chunks 2,4,8]
#include <memory>
#include <string>
#include <vector>

#include "bench/gpu/common.cuh"
#include "parallel/comm.hpp"
#include "parallel/nccl_comm.hpp"
#include "parallel/stream_scheduler.hpp"
#include "runtime/cuda/experts.cuh"
#include "runtime/cuda/gemm.cuh"
#include "runtime/cuda/memory.cuh"

namespace {

using namespace uoe;
using namespace uoe::bench_gpu;
using cuda::DeviceBuffer;

constexpr const char* kProg = "bench-gpu-overlap";

struct Options {
  int64_t rows = 16384;
  int d = 1024, d_ff = 4096, experts_per_rank = 2, warmup = 3, repeats = 10;
  std::vector<int64_t> chunks = {2, 4, 8};
  bool tf32 = false;
  double timeout = 120;
  std::string csv;
};

// The routing of one step, the same on every source (even traffic). Rows of a source in canonical
// order: expert-major over the E global experts, expert e's rows j = 0 … per_expert[e] − 1. In a
// C-chunk step, chunk c carries rows j ∈ [lo[c][e], lo[c][e] + cnt[c][e]) of every expert e; the
// source's send buffer holds chunk after chunk, each expert-major (destination-major, since
// expert e lives on rank e / El).
struct Routing {
  int n = 0, El = 0, E = 0, C = 0, d = 0;
  std::vector<int> per_expert;             // [E]
  std::vector<int64_t> canon_base;         // [E + 1] prefix sums of per_expert
  std::vector<std::vector<int>> cnt, lo;   // [C][E]
  std::vector<int64_t> chunk_base;         // [C + 1] first send row of each chunk

  Routing(int64_t rows, int n_, int El_, int C_, int d_) : n(n_), El(El_), E(n_ * El_), C(C_), d(d_) {
    per_expert.resize(E);
    canon_base.assign(E + 1, 0);
    for (int e = 0; e < E; ++e) {
      per_expert[e] = static_cast<int>(rows / E + (e < rows % E));
      canon_base[e + 1] = canon_base[e] + per_expert[e];
    }
    cnt.assign(C, std::vector<int>(E));
    lo.assign(C, std::vector<int>(E));
    chunk_base.assign(C + 1, 0);
    for (int c = 0; c < C; ++c) {
      chunk_base[c + 1] = chunk_base[c];
      for (int e = 0; e < E; ++e) {
        const int64_t a = int64_t{per_expert[e]} * c / C, b = int64_t{per_expert[e]} * (c + 1) / C;
        lo[c][e] = static_cast<int>(a);
        cnt[c][e] = static_cast<int>(b - a);
        chunk_base[c + 1] += cnt[c][e];
      }
    }
  }
  // Elements chunk c sends to each peer (packed by destination).
  std::vector<int> send_counts(int c) const {
    std::vector<int> s(n, 0);
    for (int e = 0; e < E; ++e) s[e / El] += cnt[c][e] * d;
    return s;
  }
  // Owner `me`: rows of its local expert j in chunk c, from all sources; [El + 1] prefix sums.
  std::vector<int> owner_offsets(int c, int me) const {
    std::vector<int> off(El + 1, 0);
    for (int j = 0; j < El; ++j) off[j + 1] = off[j] + n * cnt[c][me * El + j];
    return off;
  }
  // Owner side of chunk c: source p's rows for local expert j land at offsets[j] + p · cnt.
  PeerBlocks owner_layout(int c, int me) const {
    const std::vector<int> off = owner_offsets(c, me);
    PeerBlocks b;
    b.first.resize(n + 1);
    for (int p = 0; p < n; ++p) {
      b.first[p] = p * El;
      for (int j = 0; j < El; ++j) {
        const int k = cnt[c][me * El + j];
        b.offset.push_back((off[j] + p * k) * d);
        b.count.push_back(k * d);
      }
    }
    b.first[n] = n * El;
    return b;
  }
};

// Copies rows between the canonical order and the C-chunk send order (to_chunks) or back.
void reorder_rows(const Routing& r, float* dst, const float* src, bool to_chunks, cudaStream_t s) {
  for (int c = 0; c < r.C; ++c) {
    int64_t at = r.chunk_base[c];
    for (int e = 0; e < r.E; ++e) {
      const int64_t canon = r.canon_base[e] + r.lo[c][e];
      const size_t bytes = static_cast<size_t>(r.cnt[c][e]) * r.d * sizeof(float);
      const int64_t d_row = to_chunks ? at : canon, s_row = to_chunks ? canon : at;
      if (bytes)
        UOE_CHECK_CUDA(cudaMemcpyAsync(dst + d_row * r.d, src + s_row * r.d, bytes, cudaMemcpyDeviceToDevice, s));
      at += r.cnt[c][e];
    }
  }
}

struct Weights {
  DeviceBuffer<float> W1, b1, W2;  // all E experts: [E, d, f], [E, f], [E, f, d]
};

// One chunk count's buffers and schedule.
class Pipeline {
 public:
  Pipeline(const Routing& r, int me, NcclCommunicator& nccl, cudaStream_t compute, cuda::Blas& blas,
           const Weights& w, int f)
      : r_(r), me_(me), nccl_(nccl), compute_(compute), blas_(blas), w_(w), f_(f),
        sched_(compute, nccl.stream(), &nccl), rows_(r.C), cache_(r.C), y_(r.C) {
    const size_t R = static_cast<size_t>(r.chunk_base[r.C]);
    send_.resize(R * r.d);
    out_.resize(R * r.d);
    for (int c = 0; c < r.C; ++c) {
      send_counts_.push_back(r.send_counts(c));
      source_layout_.push_back(PeerBlocks::contiguous(send_counts_.back()));
      owner_layout_.push_back(r.owner_layout(c, me));
      rows_[c].n_experts = r.El;
      rows_[c].offsets = r.owner_offsets(c, me);
      rows_[c].offsets_dev.upload(std::span<const int>(rows_[c].offsets), compute);
      rows_[c].x.resize(static_cast<size_t>(rows_[c].rows()) * r.d);
      y_[c].resize(rows_[c].x.size());
    }
    UOE_CHECK_CUDA(cudaStreamSynchronize(compute));  // the offsets uploads read host vectors
  }

  float* send() { return send_.data(); }
  float* out() { return out_.data(); }
  size_t elements() const { return send_.size(); }

  struct Step {
    double step = 0, exchange = 0, exposed = 0;  // seconds
  };
  // One step: dispatch → experts → combine over C chunks; host-waits at the end.
  Step step() {
    const int C = r_.C;
    const size_t d = static_cast<size_t>(r_.d);
    auto dispatch = [&](int c) {
      return sched_.submit([&, c](cudaStream_t) {
        const size_t n_send = static_cast<size_t>(r_.chunk_base[c + 1] - r_.chunk_base[c]) * d;
        nccl_.all_to_all_v<float>(std::span<const float>(send_.data() + r_.chunk_base[c] * d, n_send),
                                  source_layout_[c], std::span<float>(rows_[c].x.data(), rows_[c].x.size()),
                                  owner_layout_[c]);
      });
    };
    auto combine = [&](int c) {
      sched_.submit([&, c](cudaStream_t) {
        const size_t n_back = static_cast<size_t>(r_.chunk_base[c + 1] - r_.chunk_base[c]) * d;
        nccl_.all_to_all_v<float>(std::span<const float>(y_[c].data(), y_[c].size()), owner_layout_[c],
                                  std::span<float>(out_.data() + r_.chunk_base[c] * d, n_back), source_layout_[c]);
      });
    };
    sched_.reset_counters();
    start_.record(compute_);
    std::vector<StreamScheduler::Ticket> t(C);
    t[0] = dispatch(0);
    for (int c = 0; c < C; ++c) {
      sched_.wait(t[c]);
      if (c + 1 < C) t[c + 1] = dispatch(c + 1);
      experts(c);
      combine(c);
    }
    sched_.wait_all();
    end_.record(compute_);
    sched_.synchronize();
    return {end_.ms_since(start_) * 1e-3, sched_.busy_seconds(), sched_.exposed_seconds()};
  }
  // The experts of chunk c on the compute stream.
  void experts(int c) {
    const size_t local = static_cast<size_t>(me_) * r_.El;
    cuda::mlp_experts_forward(y_[c].data(), cache_[c], rows_[c], w_.W1.data() + local * r_.d * f_,
                              w_.b1.data() + local * f_, w_.W2.data() + local * f_ * r_.d, r_.d, f_, blas_);
  }

 private:
  const Routing& r_;
  int me_;
  NcclCommunicator& nccl_;
  cudaStream_t compute_;
  cuda::Blas& blas_;
  const Weights& w_;
  int f_;
  StreamScheduler sched_;
  DeviceBuffer<float> send_, out_;
  std::vector<cuda::DeviceExpertRows> rows_;
  std::vector<cuda::DeviceMlpCache> cache_;
  std::vector<DeviceBuffer<float>> y_;
  std::vector<std::vector<int>> send_counts_;
  std::vector<PeerBlocks> source_layout_, owner_layout_;
  cuda::Event start_{true}, end_{true};
};

struct Row {
  int chunks = 0;
  double step = 0, exchange = 0, exposed = 0, rel_diff = 0;
};

int run(const Options& o, const MpiSession& mpi) {
  const MPI_Comm world = MPI_COMM_WORLD;
  const bool root = mpi.world_rank() == 0;
  if (!gpu_usable_on_every_rank(kProg, world)) return kSkipped;
  if (mpi.world_size() < 2 && root)
    std::fprintf(stderr, "%s: warning: 1 rank: the exchange is a local copy through NCCL, nothing crosses a link "
                         "(run under mpirun -np 2 or more)\n", kProg);

  NcclCommunicator nccl(world, o.timeout);
  const int n = nccl.size(), me = nccl.rank(), El = o.experts_per_rank, E = n * El, d = o.d;
  if (o.d_ff < E) fail(kProg, ": --d-ff ", o.d_ff, " is smaller than the ", E, " experts");
  const int f = o.d_ff / E;
  int64_t max_chunks = 1;
  for (int64_t c : o.chunks) max_chunks = std::max(max_chunks, c);
  if (o.rows / E < max_chunks)
    fail(kProg, ": --rows ", o.rows, " gives fewer than ", max_chunks, " rows per expert and chunk (", E, " experts)");
  if (o.rows * d > INT32_MAX) fail(kProg, ": --rows × --d exceeds the int element counts of all_to_all_v");

  cuda::Stream compute_stream;
  const cudaStream_t cs = compute_stream.get();
  cuda::Blas blas(cs);
  blas.set_tf32(o.tf32);
  DeviceCounter counter;

  // Every expert's weights on every rank (the same seeds everywhere), this rank's canonical rows.
  Weights w;
  const size_t slab = static_cast<size_t>(d) * f, R = static_cast<size_t>(o.rows);
  w.W1.resize(E * slab);
  w.b1.resize(static_cast<size_t>(E) * f);
  w.W2.resize(E * slab);
  fill_normal(w.W1.data(), w.W1.size(), 5, 1, 1.0f / std::sqrt(static_cast<float>(d)), cs);
  fill_normal(w.b1.data(), w.b1.size(), 5, 2, 0.1f, cs);
  fill_normal(w.W2.data(), w.W2.size(), 5, 3, 1.0f / std::sqrt(static_cast<float>(f)), cs);
  DeviceBuffer<float> x(R * d), canon_out(R * d);
  fill_normal(x.data(), x.size(), 6, 100 + static_cast<uint64_t>(me), 1.0f, cs);

  // Reference: all E experts on this rank's own rows, no exchange.
  const Routing canon(o.rows, n, El, 1, d);
  DeviceBuffer<float> ref(R * d);
  {
    cuda::DeviceExpertRows rows;
    rows.n_experts = E;
    for (int64_t b : canon.canon_base) rows.offsets.push_back(static_cast<int>(b));
    rows.offsets_dev.upload(std::span<const int>(rows.offsets), cs);
    rows.x.resize(R * d);
    UOE_CHECK_CUDA(cudaMemcpyAsync(rows.x.data(), x.data(), R * d * sizeof(float), cudaMemcpyDeviceToDevice, cs));
    cuda::DeviceMlpCache cache;
    cuda::mlp_experts_forward(ref.data(), cache, rows, w.W1.data(), w.b1.data(), w.W2.data(), d, f, blas);
    UOE_CHECK_CUDA(cudaStreamSynchronize(cs));
  }

  if (root) {
    std::printf("# %s: one UoME block's experts, forward: dispatch -> experts -> combine on the StreamScheduler\n",
                kProg);
    std::printf("# %d ranks, %lld rows of d %d per rank, %d experts (%d per rank) of %d columns, %s, even traffic; "
                "%d warm-up + %d timed steps (median of the slowest rank)\n",
                n, static_cast<long long>(o.rows), d, E, El, f, o.tf32 ? "tf32" : "fp32", o.warmup, o.repeats);
  }
  {
    char host[MPI_MAX_PROCESSOR_NAME] = {};
    int len = 0;
    UOE_CHECK_MPI(MPI_Get_processor_name(host, &len));
    char line[512] = {};
    std::snprintf(line, sizeof line, "rank %d: %s, %s", me, host, device_banner(nccl.device()).c_str());
    std::vector<char> all(root ? sizeof line * n : 1);
    UOE_CHECK_MPI(MPI_Gather(line, static_cast<int>(sizeof line), MPI_CHAR, all.data(), static_cast<int>(sizeof line),
                             MPI_CHAR, 0, world));
    if (root)
      for (int r = 0; r < n; ++r) std::printf("# %s\n", all.data() + r * sizeof line);
  }

  auto max_over_ranks = [&](double v) {
    UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_DOUBLE, MPI_MAX, world));
    return v;
  };
  // Verify once (untimed), then warm up and time; returns medians of the slowest rank.
  auto measure = [&](int C, double* compute_s) {
    const Routing r(o.rows, n, El, C, d);
    Pipeline p(r, me, nccl, cs, blas, w, f);
    reorder_rows(r, p.send(), x.data(), /*to_chunks=*/true, cs);
    UOE_CHECK_CUDA(cudaMemsetAsync(p.out(), 0xff, p.elements() * sizeof(float), cs));
    UOE_CHECK_CUDA(cudaStreamSynchronize(cs));
    p.step();
    reorder_rows(r, canon_out.data(), p.out(), /*to_chunks=*/false, cs);
    Row row;
    row.chunks = C;
    row.rel_diff = counter.relative_difference(canon_out.data(), ref.data(), R * d, cs);
    if (std::isnan(row.rel_diff)) row.rel_diff = INFINITY;
    row.rel_diff = max_over_ranks(row.rel_diff);
    for (int i = 0; i < o.warmup; ++i) p.step();
    std::vector<double> step, exch, exposed;
    for (int i = 0; i < o.repeats; ++i) {
      UOE_CHECK_MPI(MPI_Barrier(world));
      const Pipeline::Step s = p.step();
      step.push_back(max_over_ranks(s.step));
      exch.push_back(max_over_ranks(s.exchange));
      exposed.push_back(max_over_ranks(s.exposed));
    }
    row.step = median(step);
    row.exchange = median(exch);
    row.exposed = median(exposed);
    if (compute_s) {  // the experts alone on the 1-chunk rows, no exchange
      cuda::Event a(true), b(true);
      std::vector<double> t;
      for (int i = 0; i < o.warmup + o.repeats; ++i) {
        a.record(cs);
        p.experts(0);
        b.record(cs);
        b.synchronize();
        if (i >= o.warmup) t.push_back(max_over_ranks(b.ms_since(a) * 1e-3));
      }
      *compute_s = median(t);
    }
    return row;
  };

  double compute = 0;
  const Row serial = measure(1, &compute);
  const double ideal = std::max(serial.exchange, compute);
  std::unique_ptr<FILE, int (*)(FILE*)> csv(root ? open_csv(kProg, o.csv) : nullptr, &std::fclose);
  if (root) {
    std::printf("# compute (experts only, 1 chunk) %.3f ms; serial exchange (dispatch + return) %.3f ms; "
                "exchange / compute %.2f; payload %.2f MB per rank per step\n",
                compute * 1e3, serial.exchange * 1e3, compute > 0 ? serial.exchange / compute : 0.0,
                2.0 * static_cast<double>(R) * d * 4 / 1e6);
    std::printf("%7s %10s %11s %9s %12s %11s %8s %9s %10s\n", "chunks", "serial ms", "overlap ms", "ideal ms",
                "exchange ms", "exposed ms", "hidden", "vs ideal", "rel diff");
    if (csv)
      std::fprintf(csv.get(), "ranks,rows,d,expert_ff,experts,precision,chunks,serial_ms,overlap_ms,ideal_ms,compute_ms,"
                              "exchange_ms,exposed_ms,hidden,overlap_over_ideal,rel_diff\n");
  }
  bool bad = false;
  auto report = [&](const Row& row) {
    const double hidden = row.exchange > 0 ? 1.0 - row.exposed / row.exchange : 0.0;
    bad = bad || !(row.rel_diff <= 1e-2);
    if (!root) return;
    std::printf("%7d %10.3f %11.3f %9.3f %12.3f %11.3f %7.1f%% %8.2fx %10.2e\n", row.chunks, serial.step * 1e3,
                row.step * 1e3, ideal * 1e3, row.exchange * 1e3, row.exposed * 1e3, 100 * hidden, row.step / ideal,
                row.rel_diff);
    std::fflush(stdout);
    if (csv)
      std::fprintf(csv.get(), "%d,%lld,%d,%d,%d,%s,%d,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.3e\n", n,
                   static_cast<long long>(o.rows), d, f, E, o.tf32 ? "tf32" : "fp32", row.chunks, serial.step * 1e3,
                   row.step * 1e3, ideal * 1e3, compute * 1e3, row.exchange * 1e3, row.exposed * 1e3, hidden,
                   row.step / ideal, row.rel_diff);
  };
  report(serial);
  for (int64_t C : o.chunks)
    if (C > 1) report(measure(static_cast<int>(C), nullptr));
  nccl.close();
  if (root && csv) std::printf("# results in %s\n", o.csv.c_str());
  if (bad) {
    if (root)
      std::fprintf(stderr, "%s: returned rows differ from the local reference by more than 1e-2 (see rel diff): "
                           "the exchange or its ordering is wrong\n", kProg);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  const bool root = mpi.world_rank() == 0;
  Options o;
  try {
    Args a(kProg, "mpirun -np N bench-gpu-overlap [options]   (N >= 2, one GPU per rank)\n\nOne UoME block's "
                  "expert forward, dispatch -> experts -> combine, serial vs chunked on the\nStreamScheduler "
                  "(NCCL on the communication stream, gemm_experts on the compute stream).\nExits 77 when a rank "
                  "has no usable GPU.");
    a.option("rows", "R", "rows each rank dispatches per step (tokens x top-k), spread evenly over all experts",
             "16384");
    a.option("d", "D", "model width", "1024");
    a.option("d-ff", "F", "MLP width, cut into the experts (each d-ff / experts wide)", "4096");
    a.option("experts-per-rank", "N", "experts each rank owns", "2");
    a.option("chunks", "LIST", "chunk counts to pipeline (1 chunk = the serial baseline, always run)", "2,4,8");
    a.option("warmup", "N", "untimed steps per chunk count", "3");
    a.option("repeats", "N", "timed steps per chunk count (the median is reported)", "10");
    a.option("tf32", "", "let cuBLAS use TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32)");
    a.option("timeout", "S", "seconds before a stuck exchange aborts the run (watchdog)", "120");
    a.option("csv", "FILE", "also write the rows to this CSV file (rank 0)");
    a.parse(argc, argv);
    if (a.help()) {
      if (root) a.print_help();
      return 0;
    }
    o.rows = a.integer("rows", 1);
    o.d = static_cast<int>(a.integer("d", 1));
    o.d_ff = static_cast<int>(a.integer("d-ff", 1));
    o.experts_per_rank = static_cast<int>(a.integer("experts-per-rank", 1));
    o.chunks = a.int_list("chunks", 1);
    o.warmup = static_cast<int>(a.integer("warmup", 0));
    o.repeats = static_cast<int>(a.integer("repeats", 1));
    o.tf32 = a.flag("tf32");
    o.timeout = a.real("timeout");
    if (o.timeout <= 0) fail(kProg, ": --timeout must be positive");
    o.csv = a.str("csv");
  } catch (const std::exception& e) {
    if (root) std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  try {
    return run(o, mpi);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: rank %d: %s\n", kProg, mpi.world_rank(), e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
