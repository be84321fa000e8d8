// All-to-all benchmark in the manner of nccl-tests: for each message size, the same bytes moved
// three ways, each timed and each verified:
//   uoe    Communicator::all_to_all_v (typed spans, packed by peer)
//   raw    MPI_Alltoallv on the same communicator, same counts (the baseline)
//   exch   MpiExchange::to_owner: the project's expert exchange, rows landing expert-major on the
//          owner (what the model's backward does with output gradients)
// Traffic: `even` (every rank sends size/n to each rank) and `hot` (every rank sends (n+1)/(2n) of
// its bytes to rank 0 and 1/(2n) to each other rank). Data moves as rows of --width floats; each
// destination's rows are spread over --experts-per-rank experts.
//
// size = bytes one rank sends in total. time = median over --iters of the slowest rank's time
// (each repeat starts at a barrier). algbw = bytes / time and busbw = algbw·(n−1)/n, where bytes is
// `size` for even traffic and the busiest rank's bytes (max of sent and received over the ranks)
// for hot traffic. #wrong = elements that differ from the expected values, summed over the ranks.
//
//   mpirun -np 2 build/bin/bench-alltoall [--min-bytes 1024] [--max-bytes 67108864] [--csv out.csv]
#include <mpi.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "parallel/comm.hpp"
#include "parallel/mpi_exchange.hpp"
#include "runtime/cli.hpp"

namespace {

namespace po = boost::program_options;
using uoe::MpiCommunicator;
using uoe::MpiExchange;

struct Options {
  int64_t min_bytes = 1024, max_bytes = 64 << 20;
  int factor = 2, warmup = 5, iters = 20, width = 128, experts_per_rank = 2;
  std::string csv;
};

// Element c of source row i on rank s: an integer below 2^24, exact in float, never negative.
float row_value(int s, int64_t i, int c) {
  return static_cast<float>((s * 1000003LL + i * 131 + c) % 16777213);
}

enum class Pattern { even, hot };
const char* pattern_name(Pattern p) { return p == Pattern::even ? "even" : "hot"; }

// Rows a rank sends to each destination (the same on every source rank).
std::vector<int> rows_per_destination(int64_t rows, int n, Pattern p) {
  std::vector<int> to(n);
  if (p == Pattern::even) {
    for (int q = 0; q < n; ++q) to[q] = static_cast<int>(rows / n + (q < rows % n));
    return to;
  }
  for (int q = 1; q < n; ++q) to[q] = static_cast<int>(rows / (2 * n));
  to[0] = static_cast<int>(rows - (n - 1) * (rows / (2 * n)));  // (n+1)/(2n) of the rows, plus the rounding
  return to;
}

struct Timing {
  double median = 0, min = 0;  // seconds, slowest rank per repeat
};

// Times the operations interleaved (repeat i runs each of them once, in turn), so that a machine
// whose speed drifts during the run shifts all columns alike instead of favouring one.
template <class... Ops>
std::vector<Timing> time_ops(MPI_Comm comm, const Options& o, Ops&... ops) {
  for (int i = 0; i < o.warmup; ++i) (ops(), ...);
  constexpr size_t K = sizeof...(Ops);
  std::vector<std::vector<double>> t(K);
  auto once = [&](auto& op, std::vector<double>& into) {
    UOE_CHECK_MPI(MPI_Barrier(comm));
    const double t0 = MPI_Wtime();
    op();
    double dt = MPI_Wtime() - t0;
    UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, comm));
    into.push_back(dt);
  };
  for (int i = 0; i < o.iters; ++i) {
    size_t k = 0;
    (once(ops, t[k++]), ...);
  }
  std::vector<Timing> out;
  for (auto& v : t) {
    std::sort(v.begin(), v.end());
    out.push_back({v[v.size() / 2], v.front()});
  }
  return out;
}

int64_t count_wrong(const std::vector<float>& got, const std::vector<float>& want, MPI_Comm comm) {
  int64_t wrong = 0;
  for (size_t i = 0; i < got.size(); ++i) wrong += got[i] != want[i];
  UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT64_T, MPI_SUM, comm));
  return wrong;
}

struct Result {
  const char* op;
  Timing t;
  int64_t wrong;
};

Options parse(int argc, char** argv, bool root, bool* help) {
  Options o;
  po::options_description d("bench-alltoall options");
  d.add_options()("help,h", "show this help")
      ("min-bytes", po::value(&o.min_bytes)->default_value(o.min_bytes), "smallest size (bytes sent per rank)")
      ("max-bytes", po::value(&o.max_bytes)->default_value(o.max_bytes), "largest size")
      ("factor", po::value(&o.factor)->default_value(o.factor), "size multiplier between steps")
      ("warmup", po::value(&o.warmup)->default_value(o.warmup), "untimed repeats per size and operation")
      ("iters", po::value(&o.iters)->default_value(o.iters), "timed repeats (the median is reported)")
      ("width", po::value(&o.width)->default_value(o.width), "floats per row (the model width d)")
      ("experts-per-rank", po::value(&o.experts_per_rank)->default_value(o.experts_per_rank),
       "experts each rank owns (rows land expert-major)")
      ("csv", po::value(&o.csv), "also write the results to this CSV file");
  po::variables_map vm;
  uoe::cli_parse(argc, argv, d, vm);  // no guessing, stray tokens named, safe messages
  *help = vm.count("help") > 0;
  if (*help && root) std::cout << d;
  if (o.min_bytes < 1 || o.max_bytes < o.min_bytes) uoe::fail("--min-bytes/--max-bytes: need 1 ≤ min ≤ max");
  if (o.factor < 2) uoe::fail("--factor ", o.factor, " must be at least 2");
  if (o.iters < 1 || o.warmup < 0) uoe::fail("--iters must be ≥ 1 and --warmup ≥ 0");
  if (o.width < 1 || o.experts_per_rank < 1) uoe::fail("--width and --experts-per-rank must be ≥ 1");
  return o;
}

int run(int argc, char** argv, const uoe::MpiSession& mpi) {
  const bool root = mpi.world_rank() == 0;
  bool help = false;
  const Options o = parse(argc, argv, root, &help);  // same arguments on every rank, so same outcome
  if (help) return 0;
  MpiCommunicator comm(MPI_COMM_WORLD);
  const int n = comm.size(), me = comm.rank(), W = o.width, El = o.experts_per_rank, E = El * n;
  MpiExchange exchange(comm);

  std::unique_ptr<FILE, int (*)(FILE*)> csv(nullptr, &std::fclose);
  if (root && !o.csv.empty()) {
    csv.reset(std::fopen(o.csv.c_str(), "w"));
    if (!csv) uoe::fail("--csv ", o.csv, ": cannot open for writing");
    std::fprintf(csv.get(), "ranks,pattern,bytes,op,time_us_median,time_us_min,algbw_GBps,busbw_GBps,wrong\n");
  }
  if (root) {
    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(lib, &len);
    const std::string first_line(lib, std::find(lib, lib + len, ','));
    std::printf("# bench-alltoall: %d ranks, rows of %d floats, %d experts per rank, %d warm-up + %d timed "
                "repeats (median)\n# %s, MPI thread level %d\n",
                n, W, El, o.warmup, o.iters, first_line.c_str(), mpi.thread_level());
  }

  for (const Pattern pattern : {Pattern::even, Pattern::hot}) {
    if (root) {
      std::printf("\n# %s traffic%s\n", pattern_name(pattern),
                  pattern == Pattern::hot ? " (rank 0 receives (n+1)/2 × size; busbw from the busiest rank)"
                                          : "");
      std::printf("# %12s %11s | %-38s | %-38s | %-38s | %6s\n", "", "", "  uoe Communicator::all_to_all_v",
                  "  raw MPI_Alltoallv", "  exch MpiExchange::to_owner", "exch/");
      std::printf("# %12s %11s |", "size", "count");
      for (int k = 0; k < 3; ++k) std::printf(" %9s %8s %8s %9s |", "time(us)", "algbw", "busbw", "#wrong");
      std::printf(" %6s\n", "raw");
      std::printf("# %12s %11s |", "(B)", "(elements)");
      for (int k = 0; k < 3; ++k) std::printf(" %9s %8s %8s %9s |", "", "(GB/s)", "(GB/s)", "");
      std::printf(" %6s\n", "busbw");
    }
    for (int64_t size = o.min_bytes; size <= o.max_bytes; size *= o.factor) {
      // Source rows, grouped by destination and within it by expert, as the model lays them out.
      const std::vector<int> to = rows_per_destination(size / (int64_t{W} * 4), n, pattern);
      std::vector<int> src_offsets(E + 1, 0);
      for (int q = 0; q < n; ++q)
        for (int j = 0; j < El; ++j)
          src_offsets[q * El + j + 1] = src_offsets[q * El + j] + to[q] / El + (j < to[q] % El);
      const int R_src = src_offsets[E];
      std::vector<float> x(static_cast<size_t>(R_src) * W);
      for (int i = 0; i < R_src; ++i)
        for (int c = 0; c < W; ++c) x[static_cast<size_t>(i) * W + c] = row_value(me, i, c);
      const std::vector<int32_t> seg(R_src, 0);
      std::vector<int32_t> pos(R_src);
      std::iota(pos.begin(), pos.end(), 0);  // the owner learns each row's source index from pos

      // Set-up (untimed): the plan, and the counts every rank receives.
      uoe::ExchangePlan plan;
      uoe::ExpertRows rows;
      exchange.dispatch(plan, src_offsets, x.data(), seg.data(), pos.data(), W, rows);
      const int R_dst = rows.rows();
      std::vector<int> sc(n), rc(n), sd(n), rd(n);
      for (int q = 0; q < n; ++q) {
        sc[q] = plan.send_rows[q] * W;
        rc[q] = plan.recv_rows[q] * W;
      }
      std::exclusive_scan(sc.begin(), sc.end(), sd.begin(), 0);
      std::exclusive_scan(rc.begin(), rc.end(), rd.begin(), 0);

      // Expected results: source-major for uoe/raw, expert-major (from the dispatched seg/pos) for exch.
      std::vector<float> want_packed(static_cast<size_t>(R_dst) * W), want_owner(want_packed.size());
      {
        // Source p sends me rows from where its rows for me begin (same pattern on every source).
        const int64_t first = std::accumulate(to.begin(), to.begin() + me, int64_t{0});
        size_t at = 0;
        for (int p = 0; p < n; ++p)
          for (int i = 0; i < plan.recv_rows[p]; ++i)
            for (int c = 0; c < W; ++c) want_packed[at++] = row_value(p, first + i, c);
        for (int r = 0; r < R_dst; ++r)
          for (int c = 0; c < W; ++c)
            want_owner[static_cast<size_t>(r) * W + c] =
                row_value(rows.seg[r] / MpiExchange::kSegmentsPerRank, rows.pos[r], c);
      }

      std::vector<float> out(want_packed.size());
      const MPI_Comm h = comm.handle();
      auto op_uoe = [&] { comm.all_to_all_v<float>(x, sc, out, rc); };
      auto op_raw = [&] {
        UOE_CHECK_MPI(MPI_Alltoallv(x.data(), sc.data(), sd.data(), MPI_FLOAT, out.data(), rc.data(), rd.data(),
                                    MPI_FLOAT, h));
      };
      auto op_exch = [&] { exchange.to_owner(plan, x.data(), out.data(), W); };
      // Verify each operation once on a poisoned buffer, then time them.
      auto verify = [&](auto&& op, const std::vector<float>& want) {
        std::fill(out.begin(), out.end(), -1.0f);
        op();
        return count_wrong(out, want, h);
      };
      const int64_t wrong[3] = {verify(op_uoe, want_packed), verify(op_raw, want_packed),
                                verify(op_exch, want_owner)};
      const std::vector<Timing> t = time_ops(h, o, op_uoe, op_raw, op_exch);
      const Result res[3] = {{"uoe", t[0], wrong[0]}, {"raw", t[1], wrong[1]}, {"exch", t[2], wrong[2]}};

      int64_t bytes = int64_t{R_src} * W * 4;
      if (pattern == Pattern::hot) {
        bytes = int64_t{std::max(R_src, R_dst)} * W * 4;
        UOE_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &bytes, 1, MPI_INT64_T, MPI_MAX, h));
      }
      const double bus = n > 1 ? (n - 1.0) / n : 0.0;
      if (root) {
        std::printf("  %12lld %11lld |", static_cast<long long>(int64_t{R_src} * W * 4),
                    static_cast<long long>(int64_t{R_src} * W));
        double busbw[3];
        for (int k = 0; k < 3; ++k) {
          const double algbw = bytes / res[k].t.median / 1e9;
          busbw[k] = algbw * bus;
          std::printf(" %9.1f %8.2f %8.2f %9lld |", res[k].t.median * 1e6, algbw, busbw[k],
                      static_cast<long long>(res[k].wrong));
          if (csv)
            std::fprintf(csv.get(), "%d,%s,%lld,%s,%.3f,%.3f,%.4f,%.4f,%lld\n", n, pattern_name(pattern),
                         static_cast<long long>(int64_t{R_src} * W * 4), res[k].op, res[k].t.median * 1e6,
                         res[k].t.min * 1e6, algbw, busbw[k], static_cast<long long>(res[k].wrong));
        }
        std::printf(" %5.0f%%\n", 100.0 * res[1].t.median / res[2].t.median);  // same bytes: time ratio
      }
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  uoe::MpiSession mpi(&argc, &argv);
  try {
    return run(argc, argv, mpi);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench-alltoall: rank %d: %s\n", mpi.world_rank(), e.what());
    // A rank that fails alone would leave the others in a collective: end the whole job.
    MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}
