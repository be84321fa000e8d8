// bench-checkpoint: checkpoint write throughput against the raw throughput of the same directory,
// and the cost of an asynchronous checkpoint write to the training steps that run while it is in
// flight (the acceptance criteria of the checkpoint issue: writing reaches >= 70% of raw write
// throughput; a write in flight costs <= 10% of training throughput). Method and results:
// bench/README-checkpoint.md.
//
//   build/bin/bench-checkpoint [--csv FILE] [--dir DIR] [--repeats R] [--rounds K] [--threads LIST]
//                              [--window X] [--shares LIST] [--drop-caches] [--no-train]
//                              [uoe-train model options…]
//
// One process, a world of one rank (a one-rank Communicator, as tests/unit/test_checkpoint.cpp).
// With no model options it runs two configurations: d 1024 (4 layers, 16 heads, d_ff 4096, batch 4:
// about 608 MB of checkpoint, parameters + both AdamW moments) and the reference config of the
// trainer issue (d 128, about 10 MB). For each, R repeats, alternating:
//   raw         the checkpoint's byte count written with write(2) in 8 MiB blocks to one new file
//               in DIR, fsync, close ("write+fsync"), then reopened, read back and compared
//               ("+read-back": what the writer does after its fsync);
//   checkpoint  CheckpointWriter::save + wait into DIR (one writer, reused as the trainer reuses
//               it): save() (the snapshot), background write + fsync + read-back verify (until
//               write_done()), commit (wait()); MB/s = bytes of the committed directory / (save
//               start -> commit).
// Before each timed part: sync(2); with --drop-caches also `echo 3 > /proc/sys/vm/drop_caches`
// (root only; it makes the next write slower and disturbs every other process, so it is off).
// Then, for the first configuration only (unless --no-train), per BLAS thread count in LIST
// (default: all cores, then 1) and writer share in LIST (CheckpointWriter::set_background_share;
// default 1 and the trainer's default share), K rounds of two windows of N train steps: one with
// nothing in flight, one started right after save() returned (see bench_train). DIR defaults to
// build/bench-checkpoint; everything written there is removed.
#include "bench/bench_config.hpp"
#include "checkpoints/checkpoint.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "layers/train_step.hpp"
#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "parallel/exchange.hpp"
#include "runtime/config.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/rng.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }


// ---- page cache ----------------------------------------------------------------------------------

// sync(2); with `drop`, then drop the clean page cache if this process may (root, writable
// /proc/sys/vm). Returns whether the cache was dropped.
bool settle_caches(bool drop) {
  ::sync();
  if (!drop) return false;
  FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w");
  if (!f) return false;
  const bool ok = std::fputs("3\n", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

// ---- raw I/O -------------------------------------------------------------------------------------

constexpr size_t kBlock = size_t{8} << 20;

struct RawTimes {
  double write = 0;        // s: create, write (into the page cache)
  double write_fsync = 0;  // s: create, write, fsync, close
  double read_back = 0;    // s: open, read, compare, close
};

void check_io(bool ok, const char* what, const std::string& path) {
  if (!ok) uoe::fail("bench-checkpoint: ", what, " ", path, ": ", std::strerror(errno));
}

RawTimes raw_write(const std::string& path, const std::vector<unsigned char>& src) {
  RawTimes t;
  std::error_code ec;
  fs::remove(path, ec);
  auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  check_io(fd >= 0, "cannot create", path);
  for (size_t done = 0; done < src.size();) {
    const ssize_t n = ::write(fd, src.data() + done, std::min(kBlock, src.size() - done));
    if (n < 0 && errno == EINTR) continue;
    check_io(n > 0, "cannot write", path);
    done += static_cast<size_t>(n);
  }
  t.write = since(t0);
  check_io(::fsync(fd) == 0, "cannot fsync", path);
  check_io(::close(fd) == 0, "cannot close", path);
  t.write_fsync = since(t0);

  t0 = Clock::now();
  fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check_io(fd >= 0, "cannot open", path);
  std::vector<unsigned char> block(kBlock);
  for (size_t done = 0; done < src.size();) {
    const ssize_t n = ::read(fd, block.data(), std::min(kBlock, src.size() - done));
    if (n < 0 && errno == EINTR) continue;
    check_io(n > 0, "cannot read", path);
    if (std::memcmp(block.data(), src.data() + done, static_cast<size_t>(n)) != 0)
      uoe::fail("bench-checkpoint: ", path, " reads back different");
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  t.read_back = since(t0);
  fs::remove(path, ec);
  return t;
}

// ---- checkpoint ----------------------------------------------------------------------------------

struct CkptTimes {
  double save = 0;     // s: save() (snapshot into host buffers; what the training thread waits for)
  double written = 0;  // s: save start → write_done() (snapshot + background write + fsync + verify)
  double commit = 0;   // s: wait() (join, commit: fsyncs and renames)
  double total = 0;    // s: save start → commit
  double cpu = 0;      // CPU s (user + system) of the process from save start to commit
  uint64_t bytes = 0;  // bytes of the committed directory (sum of its files)
};

uint64_t dir_bytes(const std::string& dir) {
  uint64_t n = 0;
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

uoe::TrainState state_at(const uoe::Config& c, int64_t step) {
  uoe::TrainState s;
  s.step = step;
  s.seed = c.seed;
  s.lr = c.lr;
  s.config_ini = uoe::config_to_ini(c);
  return s;
}

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// Polls write_done() every `poll` (the background thread sets it when its shard is verified).
void wait_written(const uoe::CheckpointWriter& w, std::chrono::microseconds poll) {
  while (w.in_flight() && !w.write_done()) std::this_thread::sleep_for(poll);
}

// One checkpoint of `step` by `w` (keep_last 0: it prunes nothing), removed again after timing. The
// writer is reused, as the trainer's is, so its snapshot buffers are too (only the first save of
// a writer allocates them).
CkptTimes checkpoint_write(uoe::CheckpointWriter& w, const uoe::Config& cfg, const uoe::ParamStore& params,
                           uoe::AdamW& opt, int64_t step) {
  CkptTimes t;
  const double c0 = cpu_seconds();
  const auto t0 = Clock::now();
  w.save(params, opt, state_at(cfg, step));
  t.save = since(t0);
  wait_written(w, std::chrono::microseconds(500));
  t.written = since(t0);
  const auto t1 = Clock::now();
  w.wait();
  t.commit = since(t1);
  t.total = since(t0);
  t.cpu = cpu_seconds() - c0;
  t.bytes = dir_bytes(w.last_committed());
  std::error_code ec;
  fs::remove_all(w.last_committed(), ec);
  return t;
}

// ---- statistics ----------------------------------------------------------------------------------

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
double best(const std::vector<double>& v) { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }
double least(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// ---- one configuration -----------------------------------------------------------------------------

struct Trainee {
  uoe::LocalExchange exchange;
  std::unique_ptr<uoe::Model> model;
  std::unique_ptr<uoe::AdamW> opt;
  explicit Trainee(const uoe::Config& c) {
    model = std::make_unique<uoe::Model>(uoe::model_spec_from_config(c, 256), c.seed, &exchange);
    opt = std::make_unique<uoe::AdamW>(model->params(), uoe::AdamWSpec{});
    // Non-zero moments, as after some training (all-zero ones would be an untypical payload).
    for (size_t j = 0; j < opt->m().size(); ++j) {
      opt->m()[j] = 1e-3f * uoe::rng_normal(c.seed, 11, j);
      opt->v()[j] = 1e-6f * uoe::rng_uniform(c.seed, 12, j);
    }
  }
};

struct WriteRow {
  std::string config;
  int64_t params = 0;
  uint64_t bytes = 0;    // of the committed checkpoint's files
  uint64_t payload = 0;  // parameters + both moments, 4 bytes each
  // Per repeat. MB/s: raw write+fsync, raw write+fsync+read-back, checkpoint (file bytes).
  std::vector<double> raw_w, raw_wr, ck;
  // Seconds: raw write() into the page cache, its fsync, its read-back; checkpoint save(),
  // background write+fsync+verify (save returned → write_done()), commit (wait()).
  std::vector<double> raw_cache_s, raw_fsync_s, raw_read_s, ck_save_s, ck_bg_s, ck_commit_s, ck_cpu_s;
};

WriteRow bench_write(const std::string& name, const uoe::Config& cfg, Trainee& tr, const std::string& dir, int repeats,
                     uoe::Communicator& comm, bool drop, bool& dropped) {
  WriteRow row;
  row.config = name;
  row.params = static_cast<int64_t>(tr.model->params().total());
  row.payload = 3 * sizeof(float) * static_cast<uint64_t>(row.params);
  std::error_code ec;
  fs::remove_all(dir + "/ckpt", ec);
  uoe::CheckpointWriter w(dir + "/ckpt", 0, comm, uoe::shard_role_single());
  // One untimed checkpoint: learns the byte count, gathers the layout, allocates the snapshot buffers.
  row.bytes = checkpoint_write(w, cfg, tr.model->params(), *tr.opt, 1).bytes;
  std::vector<unsigned char> src(row.bytes);
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < src.size(); i += 8) {  // xorshift: incompressible, not a repeated block
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(src.data() + i, &x, std::min<size_t>(8, src.size() - i));
  }
  raw_write(dir + "/raw.bin", src);  // untimed, as the first checkpoint
  const double mb = static_cast<double>(row.bytes) / 1e6;
  dropped = drop;
  for (int r = 0; r < repeats; ++r) {
    dropped = settle_caches(drop) && dropped;
    const RawTimes raw = raw_write(dir + "/raw.bin", src);
    row.raw_w.push_back(mb / raw.write_fsync);
    row.raw_wr.push_back(mb / (raw.write_fsync + raw.read_back));
    row.raw_cache_s.push_back(raw.write);
    row.raw_fsync_s.push_back(raw.write_fsync - raw.write);
    row.raw_read_s.push_back(raw.read_back);
    dropped = settle_caches(drop) && dropped;
    const CkptTimes ck = checkpoint_write(w, cfg, tr.model->params(), *tr.opt, 2 + r);
    if (ck.bytes != row.bytes) uoe::fail("bench-checkpoint: checkpoint size changed between repeats");
    row.ck.push_back(mb / ck.total);
    row.ck_save_s.push_back(ck.save);
    row.ck_bg_s.push_back(ck.written - ck.save);
    row.ck_commit_s.push_back(ck.commit);
    row.ck_cpu_s.push_back(ck.cpu);
    std::fprintf(stderr,
                 "  [%s %d/%d] raw: write %.2f s + fsync %.2f s + read-back %.2f s = %.0f / %.0f MB/s; "
                 "checkpoint: save %.2f s + write,fsync,verify %.2f s + commit %.3f s = %.0f MB/s, %.2f CPU s\n",
                 name.c_str(), r + 1, repeats, raw.write, raw.write_fsync - raw.write, raw.read_back, row.raw_w.back(),
                 row.raw_wr.back(), ck.save, ck.written - ck.save, ck.commit, row.ck.back(), ck.cpu);
  }
  fs::remove_all(dir + "/ckpt", ec);
  return row;
}

struct TrainRow {
  int threads = 0;
  double share = 1;  // CheckpointWriter::set_background_share
  int steps = 0;  // train steps per window
  // Per round: tokens/s of a window of `steps` steps with nothing in flight and of one started
  // right after save() returned; the write's duration seen from the training thread (save()
  // returned -> write_done()); the window's extra time; save() itself.
  std::vector<double> idle_tps, window_tps, write_s, extra_s, slowdown, save_s;
};

// Times `n` train steps; returns seconds and adds their tokens to `tok`.
double train_window(const uoe::Config& cfg, Trainee& tr, const uoe::TokenStream& tokens, int n, int& step,
                    int64_t& tok) {
  const auto t0 = Clock::now();
  for (int s = 0; s < n; ++s) tok += uoe::train_step(*tr.model, *tr.opt, cfg, tokens, ++step).tokens;
  return since(t0);
}

// The cost of a write in flight to the training steps that run meanwhile. Each round times two
// windows of the same number of steps: one with nothing in flight (T0), one started as soon as
// save() returns (T1), in alternating order (ABBA) so drift in the machine's load cancels. The
// window is long enough (--window times the write alone, default 3) that the write ends inside
// it, so T1 - T0 is all the time the write cost the steps, and the slowdown while in flight is
// (T1 - T0) / W, W the write's duration (measured by a thread polling write_done(), started after
// save() returned and joined before wait(): the writer is only read, never changed, while it
// runs). save() (the snapshot, on the training thread) is reported apart.
TrainRow bench_train(const uoe::Config& cfg, Trainee& tr, const uoe::TokenStream& tokens, const std::string& dir,
                     int threads, double share, int rounds, double write_alone_s, double window_factor,
                     uoe::Communicator& comm, int& step) {
  uoe::gemm_set_threads(threads);
  TrainRow row;
  row.threads = uoe::gemm_get_threads();
  row.share = share;
  std::error_code ec;
  fs::remove_all(dir + "/train", ec);
  uoe::CheckpointWriter w(dir + "/train", 1, comm, uoe::shard_role_single());
  w.set_background_share(share);
  int64_t tok = 0;
  train_window(cfg, tr, tokens, 1, step, tok);  // warm-up
  tok = 0;
  const double t_step = train_window(cfg, tr, tokens, 2, step, tok) / 2;
  w.save(tr.model->params(), *tr.opt, state_at(cfg, step));  // first save: allocates the snapshot buffers
  w.wait();
  // A paced write lasts about its CPU time (≈ the unpaced write) / share.
  row.steps = std::clamp(static_cast<int>(std::ceil(window_factor * write_alone_s / std::min(1.0, share) / t_step)), 3, 80);
  for (int k = 0; k < rounds; ++k) {
    double idle = 0, window = 0, written = 0, save_s = 0;
    int64_t tok_idle = 0, tok_window = 0;
    for (int part = 0; part < 2; ++part) {
      ::sync();
      if ((part == 0) == (k % 2 == 0)) {
        idle = train_window(cfg, tr, tokens, row.steps, step, tok_idle);
        continue;
      }
      const auto ts = Clock::now();
      w.save(tr.model->params(), *tr.opt, state_at(cfg, step));
      save_s = since(ts);
      const auto t0 = Clock::now();
      std::thread monitor([&] {
        wait_written(w, std::chrono::microseconds(500));
        written = since(t0);
      });
      window = train_window(cfg, tr, tokens, row.steps, step, tok_window);
      monitor.join();
      w.wait();
    }
    row.idle_tps.push_back(static_cast<double>(tok_idle) / idle);
    row.window_tps.push_back(static_cast<double>(tok_window) / window);
    row.write_s.push_back(written);
    row.extra_s.push_back(window - idle);
    row.slowdown.push_back(100.0 * (window - idle) / written);
    row.save_s.push_back(save_s);
    std::fprintf(stderr,
                 "  [train %d threads, writer share %.2f, round %d/%d] %d steps: %.2f s idle, %.2f s with the "
                 "write in flight (write %.2f s, %.1f%% slower while in flight%s); save %.3f s\n",
                 row.threads, share, k + 1, rounds, row.steps, idle, window, written, row.slowdown.back(),
                 written > window ? ", but the write outlasted the window" : "", save_s);
  }
  fs::remove_all(dir + "/train", ec);
  return row;
}

// The comma-separated items of `s`, each converted by `convert`.
template <class T, class F>
std::vector<T> parse_list(const char* s, F convert) {
  std::vector<T> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(convert(item));
  return out;
}

int parse_threads(const std::string& item) { return std::atoi(item.c_str()); }

double parse_share(const std::string& item) {
  const double v = std::atof(item.c_str());
  if (!(v > 0 && v <= 1)) uoe::fail("--shares: '", item, "' is not a share of one core in (0, 1]");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  uoe::blas_kernels_select();  // the training it times runs the BLAS kernels for this CPU's ISA
  try {
    std::string csv, dir = "build/bench-checkpoint";
    int repeats = 3, rounds = 3;
    std::vector<double> shares = {1.0, uoe::Config{}.checkpoint_share};  // unpaced, and the trainer's default
    double window = 3;
    bool train = true, drop = false;
    std::vector<int> threads;
    std::vector<const char*> rest = {argv[0]};
    for (int i = 1; i < argc; ++i) {
      if (!std::strcmp(argv[i], "--csv") && i + 1 < argc)
        csv = argv[++i];
      else if (!std::strcmp(argv[i], "--dir") && i + 1 < argc)
        dir = argv[++i];
      else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc)
        repeats = std::max(1, std::atoi(argv[++i]));
      else if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc)
        rounds = std::max(1, std::atoi(argv[++i]));
      else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc)
        threads = parse_list<int>(argv[++i], parse_threads);
      else if (!std::strcmp(argv[i], "--shares") && i + 1 < argc)
        shares = parse_list<double>(argv[++i], parse_share);
      else if (!std::strcmp(argv[i], "--no-train"))
        train = false;
      else if (!std::strcmp(argv[i], "--drop-caches"))
        drop = true;
      else if (!std::strcmp(argv[i], "--window") && i + 1 < argc)
        window = std::max(1.0, std::atof(argv[++i]));
      else
        rest.push_back(argv[i]);
    }
    const int cores = uoe::default_threads();
    if (threads.empty()) threads = cores > 1 ? std::vector<int>{cores, 1} : std::vector<int>{1};

    std::vector<std::pair<std::string, uoe::Config>> configs;
    uoe::Config base;
    if (rest.size() > 1) {
      const std::optional<uoe::Config> custom = uoe::bench::model_config(rest);
      if (!custom) return 0;
      configs.push_back({"custom", *custom});
    } else {
      uoe::Config big = base;
      big.d_model = 1024;
      big.heads = 16;
      big.attn_experts = 4;
      big.d_ff = 4096;
      big.batch_size = 4;  // 512 tokens a step: short steps against one checkpoint write
      uoe::config_validate(big);
      configs.push_back({"d1024", big});
      configs.push_back({"reference d128", base});  // the Config defaults are the reference config
    }
    fs::create_directories(dir);
    uoe::SelfCommunicator comm;
    const uoe::TokenStream tokens =
        uoe::data_from_text(uoe::data_builtin_corpus(), nullptr, 0.1, uoe::TokenizerKind::byte,
                            configs.front().second.seq_len, "built-in corpus")
            .train;
    uoe::gemm_set_threads(cores);

    std::printf("# bench-checkpoint: dir %s, %d repeats, %d cores, load average at start %s\n", dir.c_str(), repeats,
                cores, load_average().c_str());
    std::vector<WriteRow> wrows;
    std::vector<TrainRow> trows;
    bool dropped = false;
    for (size_t c = 0; c < configs.size(); ++c) {
      const auto& [name, cfg] = configs[c];
      Trainee tr(cfg);
      wrows.push_back(bench_write(name, cfg, tr, dir, repeats, comm, drop, dropped));
      if (c == 0 && train) {
        int step = 100;
        for (int t : threads)
          for (double sh : shares)
            trows.push_back(
                bench_train(cfg, tr, tokens, dir, t, sh, rounds, median(wrows.back().ck_bg_s), window, comm, step));
      }
    }
    std::printf("# page cache: %s before each timed write\n", dropped ? "sync + drop_caches"
                                                              : drop  ? "sync only (drop_caches not permitted)"
                                                                      : "sync only");
    std::printf(
        "# write throughput: MB/s (1e6 bytes) of the committed checkpoint's file bytes, median / best of "
        "%d; ratio = checkpoint / raw, of the medians / of the bests\n",
        repeats);
    std::printf("%-15s %9s %7s %15s %15s %15s %15s %15s %7s %7s %8s %7s\n", "config", "params", "MB", "raw write+fsync",
                "raw +read-back", "checkpoint", "ratio to w+f", "ratio to +rb", "save s", "bg s", "commit s", "CPU s");
    for (const WriteRow& r : wrows) {
      std::printf(
          "%-15s %9lld %7.1f %7.0f /%6.0f %7.0f /%6.0f %7.0f /%6.0f %6.0f%% /%6.0f%% %6.0f%% /%6.0f%% %7.3f %7.2f "
          "%8.3f %7.2f\n",
          r.config.c_str(), static_cast<long long>(r.params), static_cast<double>(r.bytes) / 1e6, median(r.raw_w),
          best(r.raw_w), median(r.raw_wr), best(r.raw_wr), median(r.ck), best(r.ck),
          100 * median(r.ck) / median(r.raw_w), 100 * best(r.ck) / best(r.raw_w), 100 * median(r.ck) / median(r.raw_wr),
          100 * best(r.ck) / best(r.raw_wr), median(r.ck_save_s), median(r.ck_bg_s), median(r.ck_commit_s),
          median(r.ck_cpu_s));
    }
    std::printf("# raw parts, median / least s: write() into the page cache, fsync, read-back+compare\n");
    for (const WriteRow& r : wrows)
      std::printf("%-15s %6.3f /%6.3f %6.3f /%6.3f %6.3f /%6.3f\n", r.config.c_str(), median(r.raw_cache_s),
                  least(r.raw_cache_s), median(r.raw_fsync_s), least(r.raw_fsync_s), median(r.raw_read_s),
                  least(r.raw_read_s));
    if (!trows.empty()) {
      const uoe::Config& cfg = configs.front().second;
      std::printf(
          "# training with a write in flight: %s, %d tokens a step; windows of N steps idle and right after "
          "save(); slowdown = extra window time / write time; median / best of %d rounds\n",
          configs.front().first.c_str(), cfg.batch_size * cfg.seq_len, rounds);
      std::printf("%-7s %5s %4s %17s %17s %15s %15s %17s %9s\n", "threads", "share", "N", "tokens/s idle",
                  "tokens/s window", "write s", "extra s", "slowdown %", "save s");
      for (const TrainRow& r : trows)
        std::printf("%-7d %5.2f %4d %8.0f /%7.0f %8.0f /%7.0f %7.2f /%6.2f %7.2f /%6.2f %8.1f /%7.1f %9.3f\n",
                    r.threads, r.share, r.steps, median(r.idle_tps), best(r.idle_tps), median(r.window_tps), best(r.window_tps),
                    median(r.write_s), least(r.write_s), median(r.extra_s), least(r.extra_s), median(r.slowdown),
                    least(r.slowdown), median(r.save_s));
    }
    std::printf("# load average at end %s\n", load_average().c_str());

    if (!csv.empty()) {
      FILE* f = std::fopen(csv.c_str(), "w");
      if (!f) uoe::fail("cannot write --csv file '", csv, "'");
      std::fprintf(f,
                   "kind,config,threads,repeat,file_bytes,payload_bytes,raw_write_s,raw_fsync_s,raw_readback_s,"
                   "raw_write_fsync_mbs,raw_write_fsync_readback_mbs,ckpt_save_s,ckpt_background_s,ckpt_commit_s,"
                   "ckpt_cpu_s,ckpt_mbs,tokens_per_s_idle,tokens_per_s_window,write_in_flight_s,window_extra_s,"
                   "slowdown_pct,window_steps,writer_share\n");
      for (const WriteRow& r : wrows)
        for (size_t i = 0; i < r.ck.size(); ++i)
          std::fprintf(f, "write,%s,,%zu,%llu,%llu,%.4f,%.4f,%.4f,%.1f,%.1f,%.4f,%.4f,%.4f,%.3f,%.1f,,,,,,,1\n",
                       r.config.c_str(), i, static_cast<unsigned long long>(r.bytes),
                       static_cast<unsigned long long>(r.payload), r.raw_cache_s[i], r.raw_fsync_s[i], r.raw_read_s[i],
                       r.raw_w[i], r.raw_wr[i], r.ck_save_s[i], r.ck_bg_s[i], r.ck_commit_s[i], r.ck_cpu_s[i], r.ck[i]);
      for (const TrainRow& r : trows)
        for (size_t i = 0; i < r.idle_tps.size(); ++i)
          std::fprintf(f, "train,%s,%d,%zu,,,,,,,,%.4f,,,,,%.1f,%.1f,%.4f,%.4f,%.2f,%d,%.3f\n",
                       configs.front().first.c_str(), r.threads, i, r.save_s[i], r.idle_tps[i], r.window_tps[i],
                       r.write_s[i], r.extra_s[i], r.slowdown[i], r.steps, r.share);
      std::fclose(f);
    }
    std::error_code ec;
    fs::remove(dir, ec);  // only if empty: the benchmark removed what it wrote
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
