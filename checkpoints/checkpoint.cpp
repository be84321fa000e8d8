#include "checkpoints/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <system_error>
#include <thread>

#include "checkpoints/h5.hpp"
#include "checkpoints/manifest.hpp"
#include "parallel/mpi_version.hpp"
#include "runtime/clock.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/rng.hpp"
#include "runtime/version.hpp"

namespace uoe {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The three arenas a checkpoint holds, as the groups of a shard file.
constexpr const char* kGroups[3] = {"/model", "/optim/m", "/optim/v"};

std::string shape_text(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

std::string join_path(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// parse_step_name (step directory names) is in manifest.cpp, where the fuzz target reaches it.

// Committed checkpoint directories in `dir`, oldest first.
std::vector<std::pair<int64_t, std::string>> list_committed(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::optional<int64_t> step = parse_step_name(name);
    if (step && e.is_directory(ec)) out.emplace_back(*step, name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Writes `text` to `path` and fsyncs it (POSIX, so that a failure to persist is seen).
void write_file_durably(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot create ", path, ": ", std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      fail("cannot write ", path, ": ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  const int rc = ::fsync(fd);
  const int err = errno;
  if (::close(fd) != 0 || rc != 0) fail("cannot write ", path, " durably: ", std::strerror(rc ? err : errno));
}

void rename_or_fail(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) fail("cannot rename ", from, " to ", to, ": ", ec.message());
}

void broadcast_string(Communicator& world, std::string& s, int root = 0) {
  int64_t len = static_cast<int64_t>(s.size());
  world.broadcast(std::span<int64_t>(&len, 1), root);
  s.resize(static_cast<size_t>(len));
  if (len) world.broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(s.data()), s.size()), root);
}

// Which ranks failed, from every rank's flag (one all-reduce; collective).
struct Failures {
  int count = 0;
  int first = -1;     // lowest failing rank
  std::string ranks;  // "rank 1" or "ranks 0, 1"
};
Failures failures_from_flags(const std::vector<double>& failed) {
  Failures f;
  std::ostringstream list;
  for (size_t r = 0; r < failed.size(); ++r)
    if (failed[r] != 0) {
      list << (f.count++ ? ", " : "") << r;
      if (f.first < 0) f.first = static_cast<int>(r);
    }
  f.ranks = (f.count > 1 ? "ranks " : "rank ") + list.str();
  return f;
}

// After every rank has learnt which ranks failed: the lowest failing rank's reason, sent to every
// rank (collective), so that each rank's message carries it. Under mpirun the first rank to exit
// may end the job before the others print anything, so no message may say only "see rank r".
std::string first_reason(Communicator& world, const Failures& f, const std::string& local_error) {
  std::string reason = world.rank() == f.first ? local_error : std::string();
  broadcast_string(world, reason, f.first);
  return reason;
}

// Every rank passes its own error ("" = none). Collective; if any rank failed, throws
// CollectiveError on every rank: the failing ranks with their own message, the others with `what`,
// the failing ranks and the first one's reason.
void agree_on_errors(Communicator& world, const std::string& local_error, const std::string& what) {
  std::vector<double> failed(static_cast<size_t>(world.size()), 0.0);
  failed[static_cast<size_t>(world.rank())] = local_error.empty() ? 0.0 : 1.0;
  world.all_reduce_sum(std::span<double>(failed));
  const Failures f = failures_from_flags(failed);
  if (f.count == 0) return;
  const std::string reason = first_reason(world, f, local_error);
  if (!local_error.empty()) throw CollectiveError(local_error);
  throw CollectiveError(what + " failed on " + f.ranks + "; rank " + std::to_string(f.first) + ": " + reason);
}

// What `<dir>/latest` names, for messages after a failed checkpoint: "<dir>/latest still names
// step_X", or that there is none. Reads at most one short line (the file may be anything).
std::string latest_note(const std::string& dir) {
  const std::string latest = join_path(dir, "latest");
  std::ifstream in(latest);
  if (!in) return "no checkpoint of this directory was committed before (" + latest + " does not exist)";
  char buf[64] = {0};
  in.read(buf, sizeof buf - 1);
  std::string name(buf, static_cast<size_t>(in.gcount()));
  name = name.substr(0, name.find_first_of("\r\n "));
  return latest + " still names " + name + ", the last committed checkpoint, untouched";
}

// ---- shard files ---------------------------------------------------------------------------------

// Slab dims: rows [begin, end) of dimension 0, the rest whole.
std::vector<int64_t> slab_dims(const std::vector<int64_t>& global_shape, int64_t begin, int64_t end) {
  std::vector<int64_t> d = global_shape;
  d[0] = end - begin;
  return d;
}

int64_t row_elems(const std::vector<int64_t>& global_shape) {
  int64_t n = 1;
  for (size_t i = 1; i < global_shape.size(); ++i) n *= global_shape[i];
  return n;
}

// Opens a shard file for reading and checks it belongs to the checkpoint of `step`, as shard
// `shard` of `shards` (its /state says which it is: a shard of a run with another layout is refused).
h5::File shard_open(const std::string& path, int64_t step, int64_t shard, int64_t shards) {
  h5::File f = h5::file_open(path);
  h5::Group state = h5::group_open(f.get(), "/state", path);
  const int64_t version = h5::attr_read_i64(state.get(), "format_version", path, "/state");
  if (version != kCheckpointFormatVersion)
    fail(path, ": shard format version ", version, ", but this build of uoe reads version ", kCheckpointFormatVersion);
  const int64_t s = h5::attr_read_i64(state.get(), "step", path, "/state");
  if (s != step)
    fail(path, ": shard is from step ", s, " but the manifest is for step ", step,
         " (files of different checkpoints mixed in one directory?)");
  const int64_t is = h5::attr_read_i64(state.get(), "shard", path, "/state");
  const int64_t of = h5::attr_read_i64(state.get(), "shards", path, "/state");
  if (is != shard || of != shards)
    fail(path, ": /state says this is shard ", is, " of ", of, ", but the manifest lists it as shard ", shard, " of ",
         shards, " (a shard of a run with another world size or --ep?)");
  return f;
}

// The manifest's layout must be one a run could have written: ep shard files (one per ep
// position), a world size that ep divides. Checked before any shard is opened.
void manifest_check_layout(const Manifest& m, const std::string& where) {
  const int64_t files = static_cast<int64_t>(m.shard_files.size());
  if (m.ep < 1 || m.world < 1 || m.world > (int64_t{1} << 24) || m.world % m.ep != 0)
    fail(where, ": world ", m.world, " and ep ", m.ep, " are not a layout a run can have (1 <= ep, ep divides world)");
  if (files != m.ep)
    fail(where, ": lists ", files, " shard files for ep ", m.ep, " (a checkpoint has one shard file per ep position)");
  for (int64_t i = 0; i < files; ++i) {
    const std::string want = checkpoint_shard_name(static_cast<int>(i), static_cast<int>(files));
    if (m.shard_files[static_cast<size_t>(i)] != want)
      fail(where, ": shard file ", i, " is named ", m.shard_files[static_cast<size_t>(i)], ", expected ", want);
  }
}

// Opens <group>/<name> of a shard and checks that it holds rows [begin, end) of a float32 tensor of
// `global_shape`, as the manifest says.
h5::Dataset slab_open(hid_t file, const std::string& path, const char* group, const std::string& name,
                      const std::vector<int64_t>& global_shape, int64_t begin, int64_t end) {
  const std::string where = std::string(group) + "/" + name;
  h5::Dataset d = h5::dataset_open(file, where, path);
  h5::dataset_check_type(d.get(), h5::Elem::f32, path, where);
  const std::vector<int64_t> dims = h5::dataset_dims(d.get(), path, where);
  const std::vector<int64_t> want = slab_dims(global_shape, begin, end);
  if (dims != want)
    fail(path, ": dataset ", where, " has shape ", shape_text(dims), ", expected ", shape_text(want), " (rows [", begin,
         ", ", end, ") of global shape ", shape_text(global_shape), ")");
  const std::vector<int64_t> gs = h5::attr_read_i64s(d.get(), "global_shape", path, where);
  const int64_t b = h5::attr_read_i64(d.get(), "slab_begin", path, where);
  const int64_t e = h5::attr_read_i64(d.get(), "slab_end", path, where);
  if (gs != global_shape || b != begin || e != end)
    fail(path, ": dataset ", where, " says it holds rows [", b, ", ", e, ") of global shape ", shape_text(gs),
         ", the manifest says rows [", begin, ", ", end, ") of ", shape_text(global_shape));
  // The manifest's shapes are bounded (kCheckpointMaxTensorElements), so this cannot overflow.
  const int64_t offset = h5::attr_read_i64(d.get(), "global_offset", path, where);
  if (offset != begin * row_elems(global_shape))
    fail(path, ": dataset ", where, " has global_offset ", offset, ", expected ", begin * row_elems(global_shape),
         " (row ", begin, " of global shape ", shape_text(global_shape), ")");
  h5::dataset_check_stored(d.get(), h5::Elem::f32, dims, path, where);
  return d;
}

// /rng and /data_cursor must restate the step (and seed) of /state.
void shard_check_cursors(hid_t file, const std::string& path, int64_t step, uint64_t seed) {
  h5::Dataset rng = h5::dataset_open(file, "/rng", path);
  h5::dataset_check_type(rng.get(), h5::Elem::u64, path, "/rng");
  if (h5::dataset_dims(rng.get(), path, "/rng") != std::vector<int64_t>{2}) fail(path, ": /rng is not uint64 [2]");
  uint64_t r[2];
  h5::dataset_read(rng.get(), h5::Elem::u64, r, path, "/rng");
  h5::Dataset cur = h5::dataset_open(file, "/data_cursor", path);
  h5::dataset_check_type(cur.get(), h5::Elem::i64, path, "/data_cursor");
  if (h5::dataset_dims(cur.get(), path, "/data_cursor") != std::vector<int64_t>{1})
    fail(path, ": /data_cursor is not int64 [1]");
  int64_t c = 0;
  h5::dataset_read(cur.get(), h5::Elem::i64, &c, path, "/data_cursor");
  if (r[0] != seed || static_cast<int64_t>(r[1]) != step || c != step)
    fail(path, ": /rng (seed ", r[0], ", step ", r[1], ") or /data_cursor (", c, ") disagree with seed ", seed,
         " and step ", step, " of the checkpoint");
}

std::string checkpoint_dir_check(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("checkpoint ", path, ": no such directory");
  if (!fs::is_directory(path, ec)) fail("checkpoint ", path, ": not a directory");
  const std::string manifest = join_path(path, "manifest.h5");
  if (!fs::exists(manifest, ec)) fail("checkpoint ", path, " has no manifest.h5 (not a checkpoint, or not committed)");
  return manifest;
}

void shards_check_present(const Manifest& m, const std::string& path) {
  std::error_code ec;
  for (const std::string& f : m.shard_files)
    if (!fs::exists(join_path(path, f), ec))
      fail("checkpoint ", path, ": shard file ", f, " listed in manifest.h5 is missing");
}

}  // namespace

// ---- names and roles ---------------------------------------------------------------------------------

std::string checkpoint_step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string checkpoint_shard_name(int shard, int shards) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard_%05d_of_%05d.h5", shard, shards);
  return buf;
}

ShardRole shard_role(const ProcessGroups& g) {
  ShardRole r;
  r.world_rank = g.world->rank();
  r.world_size = g.world->size();
  r.ep = g.ep;
  r.ep_rank = g.ep_rank;
  r.dp_rank = g.dp_rank;
  return r;
}

ShardRole shard_role_single() { return ShardRole{}; }

// ---- writer ------------------------------------------------------------------------------------------

// Who writes which slab of which tensor, agreed by every rank at the first save.
struct CheckpointWriter::Layout {
  uint64_t signature = 0;            // of the tensors' names and global shapes (same on every rank)
  std::vector<ManifestTensor> index; // the manifest's tensor index
  std::vector<std::string> shard_files;
  std::vector<int> mine;             // indices (ParamStore order) of the tensors this rank writes
  int shard = -1;                    // this rank's shard file, -1 when it writes none
};

// One checkpoint between snapshot and commit. Owned by the training thread; the background thread
// reads everything but `error`, `write_seconds` and `bytes`, which only it writes, and only until
// it is joined.
struct CheckpointWriter::Job {
  struct Tensor {
    std::string name;
    std::vector<int64_t> global_shape;
    int64_t begin = 0, end = 0;  // rows along dimension 0
    size_t packed = 0, size = 0; // offset and element count in the snapshot buffers
  };
  int64_t step = 0;
  TrainState state;
  std::string tmp_dir, final_dir;
  std::string shard_path;            // "" when this rank writes no shard
  int shard = -1, shards = 0;
  std::vector<Tensor> tensors;
  // Snapshot, tensors packed back to back, each vector one element longer than the tensors: the
  // writer borrows the 4 bytes after each chunk (h5::dataset_write_in_place).
  std::vector<float> values, m, v;
  size_t elements = 0;               // of the tensors (the vectors hold one more)
  std::optional<Manifest> manifest;  // world rank 0 only
  double snapshot_seconds = 0;
  double share = 1.0;                // of one core the writer may use until `hurry` (see Pacer)
  std::atomic<bool> hurry{false};    // set by wait(): write at full speed from now on
  // Written by the background thread.
  std::atomic<bool> done{false};     // set last, after everything else the thread writes
  std::string error;
  double write_seconds = 0;
  double bytes = 0;
};

namespace {

using Job = CheckpointWriter::Job;

// Keeps the background writer's CPU time within job.share of its wall time: called between
// datasets, it sleeps (in slices, so that a wait() that sets `hurry` is noticed within ~10 ms)
// until CPU / share seconds have passed since the job started. Uses the thread's measured CPU
// time, so kernel copies into the page cache count too; time blocked in fsync does not.
class Pacer {
 public:
  explicit Pacer(const Job& job) : job_(job), t0_(Clock::now()), cpu0_(thread_cpu_seconds()) {}
  void operator()() const {
    if (job_.share >= 1.0) return;
    const double due = (thread_cpu_seconds() - cpu0_) / job_.share;  // wall seconds the CPU used so far needs
    while (!job_.hurry.load(std::memory_order_relaxed)) {
      const double left = due - seconds_since(t0_);
      if (left <= 0) return;
      std::this_thread::sleep_for(std::chrono::duration<double>(std::min(left, 0.01)));
    }
  }

 private:
  const Job& job_;
  Clock::time_point t0_;
  double cpu0_;
};

// Verifies datasets of the shard while the writer thread writes the next ones: each dataset's raw
// chunks are read back with pread on a descriptor of its own and compared with the snapshot
// (h5::dataset_verify_chunks_pread: only the chunk lookup takes HDF5's lock, so the reads and
// compares run beside the writer's HDF5 calls); the chunk index and filter masks are checked
// after reopening, in shard_verify.
// Used when the writer is not paced (share 1): a paced writer has time, not cores, to spare.
class ConcurrentVerifier {
 public:
  explicit ConcurrentVerifier(const std::string& path) : path_(path), fd_(open_read(path)) {
    try {
      thread_ = std::thread([this] { run(); });
    } catch (...) {
      ::close(fd_);  // a throwing constructor runs no destructor
      throw;
    }
  }
  // Stops and joins without reporting (the writer is already failing when this runs first).
  ~ConcurrentVerifier() {
    stop();
    ::close(fd_);
  }
  ConcurrentVerifier(const ConcurrentVerifier&) = delete;
  ConcurrentVerifier& operator=(const ConcurrentVerifier&) = delete;

  // Dataset `name` of group `group` (an open hid_t that outlives finish()), shape `dims`, must hold
  // `data` (which nobody writes until finish()).
  void add(hid_t group, std::string name, std::vector<int64_t> dims, const float* data) {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(Task{group, std::move(name), std::move(dims), data});
    }
    cv_.notify_one();
  }
  // Verifies what is queued, stops the thread, and rethrows the first failure.
  void finish() {
    stop();
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  void stop() {
    {
      const std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }
  struct Task {
    hid_t group;
    std::string name;
    std::vector<int64_t> dims;
    const float* data;
  };
  void run() {
    h5::init_thread();
    for (;;) {
      Task t;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return closing_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        t = std::move(tasks_.front());
        tasks_.pop_front();
      }
      if (error_) continue;  // drain after a failure; the first one is reported
      try {
        h5::Dataset d = h5::dataset_open(t.group, t.name, path_);
        h5::dataset_verify_chunks_pread(d.get(), fd_, h5::Elem::f32, t.dims, t.data, path_, t.name);
      } catch (...) {
        error_ = std::current_exception();
      }
    }
  }
  static int open_read(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open ", path, " to verify it: ", std::strerror(errno));
    return fd;
  }
  const std::string path_;
  const int fd_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;
  bool closing_ = false;
  std::exception_ptr error_;  // written by the thread, read after join
  std::thread thread_;
};

// Writes this rank's shard; with verify_concurrently, each dataset's data is verified by a
// ConcurrentVerifier while the next ones are written.
void shard_write(Job& job, const Pacer& pace, bool verify_concurrently) {
  const std::string& path = job.shard_path;
  h5::File f = h5::file_create(path);
  const hid_t file = f.get();
  {
    h5::Group state = h5::group_create(file, "/state", path);
    h5::attr_write_i64(state.get(), "format_version", kCheckpointFormatVersion, path, "/state");
    h5::attr_write_i64(state.get(), "step", job.step, path, "/state");
    h5::attr_write_u64(state.get(), "seed", job.state.seed, path, "/state");
    h5::attr_write_f64(state.get(), "lr", job.state.lr, path, "/state");
    h5::attr_write_i64(state.get(), "shard", job.shard, path, "/state");
    h5::attr_write_i64(state.get(), "shards", job.shards, path, "/state");
    state.close(path, "/state");
  }
  {
    const uint64_t rng[2] = {job.state.seed, static_cast<uint64_t>(job.step)};
    h5::Dataset d = h5::dataset_write(file, "/rng", {2}, h5::Elem::u64, rng, path);
    h5::attr_write_str(d.get(), "fields", "seed, step: the RNG is counter-based, keyed by (seed, step)", path, "/rng");
    d.close(path, "/rng");
    const int64_t cursor = job.step;
    h5::Dataset c = h5::dataset_write(file, "/data_cursor", {1}, h5::Elem::i64, &cursor, path);
    h5::attr_write_str(c.get(), "meaning", "training windows are keyed by step; the next step is data_cursor + 1",
                       path, "/data_cursor");
    c.close(path, "/data_cursor");
  }
  h5::Group model = h5::group_create(file, "/model", path);
  h5::Group optim = h5::group_create(file, "/optim", path);
  h5::Group gm = h5::group_create(file, "/optim/m", path);
  h5::Group gv = h5::group_create(file, "/optim/v", path);
  const hid_t groups[3] = {model.get(), gm.get(), gv.get()};
  float* sources[3] = {job.values.data(), job.m.data(), job.v.data()};
  constexpr double kWritebackBytes = 32.0 * (1 << 20);  // start the device on every ~32 MiB written
  double unsynced = 0;
  std::optional<ConcurrentVerifier> verifier;  // destroyed (joined) before the groups it reads
  if (verify_concurrently) verifier.emplace(path);
  for (const Job::Tensor& t : job.tensors) {
    const std::vector<int64_t> dims = slab_dims(t.global_shape, t.begin, t.end);
    unsynced += 3.0 * static_cast<double>(t.size) * sizeof(float);
    if (unsynced >= kWritebackBytes) {
      h5::start_writeback(file, path);
      unsynced = 0;
    }
    for (int g = 0; g < 3; ++g) {
      pace();
      const std::string where = std::string(kGroups[g]) + "/" + t.name;
      h5::Dataset d = h5::dataset_write_in_place(groups[g], t.name, dims, h5::Elem::f32, sources[g] + t.packed, path);
      h5::attr_write_i64s(d.get(), "global_shape", t.global_shape, path, where);
      h5::attr_write_i64(d.get(), "slab_begin", t.begin, path, where);
      h5::attr_write_i64(d.get(), "slab_end", t.end, path, where);
      h5::attr_write_i64(d.get(), "global_offset", t.begin * row_elems(t.global_shape), path, where);
      d.close(path, where);
      if (verifier) verifier->add(groups[g], t.name, dims, sources[g] + t.packed);
    }
  }
  if (verifier) verifier->finish();
  gv.close(path, "/optim/v");
  gm.close(path, "/optim/m");
  optim.close(path, "/optim");
  model.close(path, "/model");
  f.close(path, "");
}

// Reads the shard back (shapes, attributes; every chunk raw) and compares it bitwise with the snapshot
// and the checksums it must carry.
void shard_verify(const Job& job, const Pacer& pace, h5::ChunkCheck check) {
  const std::string& path = job.shard_path;
  h5::File f = shard_open(path, job.step, job.shard, job.shards);
  shard_check_cursors(f.get(), path, job.step, job.state.seed);
  const float* sources[3] = {job.values.data(), job.m.data(), job.v.data()};
  for (const Job::Tensor& t : job.tensors)
    for (int g = 0; g < 3; ++g) {
      pace();
      const std::string where = std::string(kGroups[g]) + "/" + t.name;
      h5::Dataset d = slab_open(f.get(), path, kGroups[g], t.name, t.global_shape, t.begin, t.end);
      h5::dataset_verify_chunks(d.get(), h5::Elem::f32, slab_dims(t.global_shape, t.begin, t.end),
                                sources[g] + t.packed, path, where, check);
    }
}

void manifest_verify(const std::string& path, const Manifest& want) {
  const Manifest got = manifest_read(path);
  bool same = got.step == want.step && got.seed == want.seed && got.lr == want.lr &&
              got.config_ini == want.config_ini && got.world == want.world && got.ep == want.ep &&
              got.shard_files == want.shard_files && got.tensors.size() == want.tensors.size();
  std::map<std::string, const ManifestTensor*> by_name;
  for (const ManifestTensor& t : got.tensors) by_name[t.name] = &t;
  for (const ManifestTensor& t : want.tensors) {
    const auto it = by_name.find(t.name);
    same = same && it != by_name.end() && it->second->global_shape == t.global_shape &&
           it->second->slabs.size() == t.slabs.size() &&
           std::equal(t.slabs.begin(), t.slabs.end(), it->second->slabs.begin(),
                      [](const ManifestSlab& a, const ManifestSlab& b) {
                        return a.shard == b.shard && a.begin == b.begin && a.end == b.end;
                      });
  }
  if (!same) fail(path, ": manifest reads back different from what was written");
}

// The background thread's work: this rank's shard (and on rank 0 the manifest), written, made
// durable, read back and verified. File I/O only; never MPI, never the logger.
void job_run(Job& job) noexcept {
  const auto t0 = Clock::now();
  try {
    h5::init_thread();
    if (!job.shard_path.empty()) {
      // Verified from the page cache while the device writes (start_writeback), then made durable:
      // nothing is committed unless both succeed.
      // Unpaced, the data is verified while the next datasets are written and the reopened file's
      // chunk index afterwards; paced, everything is verified after writing, on this thread.
      const Pacer pace(job);
      const bool concurrent = job.share >= 1.0;
      shard_write(job, pace, concurrent);
      shard_verify(job, pace, concurrent ? h5::ChunkCheck::index : h5::ChunkCheck::all);
      h5::fsync_path(job.shard_path, false);
      job.bytes += 3.0 * static_cast<double>(job.elements) * sizeof(float);
    }
    if (job.manifest) {
      const std::string path = join_path(job.tmp_dir, "manifest.h5");
      manifest_write(path, *job.manifest);
      h5::fsync_path(path, false);
      manifest_verify(path, *job.manifest);
    }
  } catch (const std::exception& e) {
    job.error = e.what();
  } catch (...) {
    job.error = "unknown exception while writing checkpoint step " + std::to_string(job.step);
  }
  job.write_seconds = seconds_since(t0);
}

// Names, global shapes and kinds of the tensors, hashed: every rank must hold the same list.
uint64_t layout_signature(const ParamStore& params) {
  std::ostringstream os;
  for (const ParamInfo& p : params.infos()) {
    os << p.name << (p.expert_sharded ? "|s|" : "|r|");
    for (int64_t d : p.global_shape) os << d << ",";
    os << ";";
  }
  return rng_stream(os.str());
}

}  // namespace

CheckpointWriter::CheckpointWriter(std::string checkpoint_dir, int keep_last, Communicator& world, ShardRole role)
    : dir_(std::move(checkpoint_dir)), keep_last_(keep_last), world_(world), role_(role) {}

CheckpointWriter::~CheckpointWriter() {
  if (job_) job_->hurry.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
  if (job_)
    log_warn("checkpoint: step %lld was written but never committed (no wait() before the writer was destroyed); "
             "%s is ignored and will be removed by the next commit",
             static_cast<long long>(job_->step), job_->tmp_dir.c_str());
}

void CheckpointWriter::prepare() {
  // World rank 0 creates the directory; every rank learns its outcome (and reason).
  std::string err;
  if (world_.rank() == 0) {
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) err = "cannot create the checkpoint directory " + dir_ + ": " + ec.message();
    else if (!fs::is_directory(dir_, ec)) err = "the checkpoint directory " + dir_ + " is not a directory";
  }
  broadcast_string(world_, err, 0);
  if (!err.empty()) throw CollectiveError(err + (world_.rank() == 0 ? "" : " (found by world rank 0)"));
  // Every rank that will write a file there creates and removes one now: an unwritable directory,
  // or one another node does not see, fails here rather than at the first checkpoint.
  std::string local;
  if (role_.writer_of_experts() || role_.writer_of_replicated()) {
    const std::string probe = join_path(dir_, ".write-test.rank" + std::to_string(world_.rank()));
    try {
      write_file_durably(probe, "uoe-train checks that it can write here; safe to delete\n");
    } catch (const std::exception& e) {
      local = e.what();
    }
    std::error_code ec;
    fs::remove(probe, ec);
    if (local.empty() && ec) local = "cannot remove " + probe + ": " + ec.message();
    if (!local.empty())
      local = "the checkpoint directory " + dir_ + " is not writable from rank " + std::to_string(world_.rank()) + ": " +
              local;
  }
  agree_on_errors(world_, local, "checking the checkpoint directory " + dir_);
}

void CheckpointWriter::gather_layout(const ParamStore& params) {
  // Two all-reduces of per-rank slots (an all-gather): first each rank's role and tensor list
  // signature, then each rank's rows of every tensor. Every rank then computes the same index and
  // the same verdict, so a bad layout throws everywhere, never on one rank alone.
  const int W = world_.size(), me = world_.rank();
  constexpr int H = 7;
  std::vector<int64_t> head(static_cast<size_t>(W) * H, 0);
  int64_t* mine = head.data() + static_cast<size_t>(me) * H;
  const uint64_t sig = layout_signature(params);
  mine[0] = static_cast<int64_t>(params.count());
  std::memcpy(&mine[1], &sig, sizeof sig);
  mine[2] = role_.world_rank;
  mine[3] = role_.world_size;
  mine[4] = role_.ep;
  mine[5] = role_.ep_rank;
  mine[6] = role_.dp_rank;
  world_.all_reduce_sum(std::span<int64_t>(head));

  const auto h = [&](int r, int k) { return head[static_cast<size_t>(r) * H + k]; };
  const int ep = static_cast<int>(h(0, 4));
  std::vector<int> writer_of_shard(static_cast<size_t>(std::max(ep, 1)), -1);
  for (int r = 0; r < W; ++r) {
    if (h(r, 0) != h(0, 0) || h(r, 1) != h(0, 1))
      fail("checkpoint: rank ", r, " holds a different list of tensors than rank 0 (", h(r, 0), " vs ", h(0, 0),
           " tensors, or different names or shapes)");
    if (h(r, 2) != r || h(r, 3) != W || h(r, 4) != ep || h(r, 5) < 0 || h(r, 5) >= ep || h(r, 6) < 0)
      fail("checkpoint: rank ", r, " has an inconsistent ShardRole (world rank ", h(r, 2), " of ", h(r, 3), ", ep ",
           h(r, 4), ", ep_rank ", h(r, 5), ", dp_rank ", h(r, 6), ") in a world of ", W, " ranks, ep ", ep);
    if (h(r, 6) == 0) {
      int& w = writer_of_shard[static_cast<size_t>(h(r, 5))];
      if (w >= 0) fail("checkpoint: ranks ", w, " and ", r, " both have ep_rank ", h(r, 5), " and dp_rank 0");
      w = r;
    }
  }
  for (int s = 0; s < ep; ++s)
    if (writer_of_shard[static_cast<size_t>(s)] < 0) fail("checkpoint: no rank has ep_rank ", s, " and dp_rank 0");
  if (h(0, 6) != 0) fail("checkpoint: world rank 0 must have dp_rank 0 (it writes the replicated tensors)");

  const size_t n = params.count();
  std::vector<int64_t> rows(static_cast<size_t>(W) * n * 2, 0);
  for (size_t i = 0; i < n; ++i) {
    const ParamInfo& p = params.info(static_cast<int>(i));
    int64_t* slot = rows.data() + (static_cast<size_t>(me) * n + i) * 2;
    slot[0] = p.expert_sharded ? p.expert_begin : 0;
    slot[1] = p.expert_sharded ? p.expert_end : p.global_shape.at(0);
  }
  world_.all_reduce_sum(std::span<int64_t>(rows));

  auto layout = std::make_unique<Layout>();
  layout->signature = sig;
  for (int s = 0; s < ep; ++s) layout->shard_files.push_back(checkpoint_shard_name(s, ep));
  for (size_t i = 0; i < n; ++i) {
    const ParamInfo& p = params.info(static_cast<int>(i));
    UOE_ASSERT(!p.global_shape.empty() && !p.name.empty() && p.name.find('/') == std::string::npos, p.name);
    ManifestTensor t;
    t.name = p.name;
    t.global_shape = p.global_shape;
    bool written_here = false;
    for (int r = 0; r < W; ++r) {
      const int64_t b = rows[(static_cast<size_t>(r) * n + i) * 2], e = rows[(static_cast<size_t>(r) * n + i) * 2 + 1];
      const bool writes = p.expert_sharded ? (h(r, 6) == 0 && e > b) : r == 0;
      if (!writes) continue;
      t.slabs.push_back({h(r, 5), b, e});
      written_here |= r == me;
    }
    if (written_here) layout->mine.push_back(static_cast<int>(i));
    layout->index.push_back(std::move(t));
  }
  Manifest probe;
  probe.shard_files = layout->shard_files;
  probe.tensors = layout->index;
  try {
    manifest_check_coverage(probe, "checkpoint layout of this run");
  } catch (const Error& e) {
    fail(e.what(), " (the ranks' expert ranges do not tile the experts)");
  }
  if (role_.writer_of_experts() || role_.writer_of_replicated()) layout->shard = role_.ep_rank;
  layout_ = std::move(layout);
}

void CheckpointWriter::save(const ParamStore& params, OptimizerMoments& opt, const TrainState& state) {
  wait();
  h5::init_thread();
  if (!layout_) gather_layout(params);
  UOE_ASSERT(layout_signature(params) == layout_->signature, "the model's tensors changed between checkpoints");
  UOE_ASSERT(opt.m().size() == params.total() && opt.v().size() == params.total(), "AdamW moments of ",
             opt.m().size(), " elements for ", params.total(), " parameters");

  auto job = std::make_unique<Job>();
  if (spare_) {  // reuse the snapshot buffers of the previous checkpoint
    job->values = std::move(spare_->values);
    job->m = std::move(spare_->m);
    job->v = std::move(spare_->v);
    spare_.reset();
  }
  job->step = state.step;
  job->share = share_;
  job->state = state;
  job->state.world = role_.world_size;
  job->state.ep = role_.ep;
  job->tmp_dir = join_path(dir_, checkpoint_step_name(state.step) + ".tmp");
  job->final_dir = join_path(dir_, checkpoint_step_name(state.step));

  // Rank 0 makes a fresh step_N.tmp (a leftover of a crash may be there); the others must not write
  // into it before that, and must all stop if it failed: the broadcast does both.
  std::string err;
  if (world_.rank() == 0) {
    try {
      std::error_code ec;
      fs::create_directories(dir_, ec);
      if (ec) fail("cannot create checkpoint directory ", dir_, ": ", ec.message());
      fs::remove_all(job->tmp_dir, ec);
      if (ec) fail("cannot remove the stale ", job->tmp_dir, ": ", ec.message());
      fs::create_directory(job->tmp_dir, ec);
      if (ec) fail("cannot create ", job->tmp_dir, ": ", ec.message());
    } catch (const Error& e) {
      err = e.what();
    }
  }
  broadcast_string(world_, err, 0);  // every rank fails with rank 0's reason, or none does
  if (!err.empty())
    throw CollectiveError("checkpoint step " + std::to_string(state.step) + " was not written: " +
                          (world_.rank() == 0 ? "" : "on world rank 0: ") + err + "; " + latest_note(dir_));

  // Snapshot: this rank's tensors, packed. The only part the training step waits for. A failure
  // here (out of memory) must not throw on this rank alone, the others would carry on into the
  // next collective: it becomes the job's error, which wait() shares with every rank.
  job_ = std::move(job);
  try {
    snapshot(params, opt, state);
  } catch (const std::exception& e) {
    job_->error = "checkpoint snapshot on rank " + std::to_string(world_.rank()) + ": " + e.what();
    return;
  }
  if (job_->shard_path.empty() && !job_->manifest) return;  // nothing to write on this rank
  // A library that is not thread-safe cannot be used from a second thread at all: write now. The
  // same if no thread can be started.
  static const bool threadsafe = h5::library_threadsafe();
  Job* j = job_.get();
  if (threadsafe) {
    try {
      thread_ = std::thread([j] {
        job_run(*j);
        j->done.store(true, std::memory_order_release);
      });
      return;
    } catch (const std::system_error& e) {
      log_warn("checkpoint: cannot start the writer thread (%s); writing synchronously", e.what());
    }
  }
  job_run(*j);
  j->done.store(true, std::memory_order_release);
}

bool CheckpointWriter::write_done() const { return job_ && job_->done.load(std::memory_order_acquire); }

void CheckpointWriter::snapshot(const ParamStore& params, OptimizerMoments& opt, const TrainState& state) {
  Job* job = job_.get();
  const auto t0 = Clock::now();
  size_t total = 0;
  for (int i : layout_->mine) {
    const ParamInfo& p = params.info(i);
    Job::Tensor t;
    t.name = p.name;
    t.global_shape = p.global_shape;
    t.begin = p.expert_sharded ? p.expert_begin : 0;
    t.end = p.expert_sharded ? p.expert_end : p.global_shape[0];
    t.packed = total;
    t.size = p.size;
    total += p.size;
    job->tensors.push_back(std::move(t));
  }
  job->elements = total;
  job->values.resize(total + 1);
  job->m.resize(total + 1);
  job->v.resize(total + 1);
  for (size_t k = 0; k < job->tensors.size(); ++k) {
    const ParamInfo& p = params.info(layout_->mine[k]);
    const size_t at = job->tensors[k].packed, bytes = p.size * sizeof(float);
    std::memcpy(job->values.data() + at, params.value(layout_->mine[k]), bytes);
    std::memcpy(job->m.data() + at, opt.m().data() + p.offset, bytes);
    std::memcpy(job->v.data() + at, opt.v().data() + p.offset, bytes);
  }
  job->snapshot_seconds = seconds_since(t0);
  if (layout_->shard >= 0) {
    job->shard = layout_->shard;
    job->shards = role_.ep;
    job->shard_path = join_path(job->tmp_dir, layout_->shard_files[static_cast<size_t>(layout_->shard)]);
  }
  if (role_.writer_of_replicated()) {
    Manifest m;
    m.step = state.step;
    m.seed = state.seed;
    m.lr = state.lr;
    m.config_ini = state.config_ini;
    m.build = build_info(comm_library_versions());
    m.world = role_.world_size;
    m.ep = role_.ep;
    m.shard_files = layout_->shard_files;
    m.tensors = layout_->index;
    job->manifest = std::move(m);
  }
}

void CheckpointWriter::set_background_share(double share) {
  if (!(share > 0)) fail("checkpoint writer share must be positive (1 = unpaced), got ", share);
  share_ = share;
}

void CheckpointWriter::wait() {
  if (!job_) return;
  job_->hurry.store(true, std::memory_order_relaxed);
  if (thread_.joinable()) thread_.join();
  std::unique_ptr<Job> job = std::move(job_);
  h5::init_thread();

  // Agreement: did every rank write and verify its shard? Per rank: failed, seconds, bytes.
  const int W = world_.size(), me = world_.rank();
  std::vector<double> info(static_cast<size_t>(W) * 3, 0.0);
  info[static_cast<size_t>(me) * 3] = job->error.empty() ? 0.0 : 1.0;
  info[static_cast<size_t>(me) * 3 + 1] = job->write_seconds;
  info[static_cast<size_t>(me) * 3 + 2] = job->bytes;
  world_.all_reduce_sum(std::span<double>(info));
  int n_failed = 0;
  double slowest = 0, bytes = 0;
  for (int r = 0; r < W; ++r) {
    if (info[static_cast<size_t>(r) * 3] != 0) ++n_failed;
    slowest = std::max(slowest, info[static_cast<size_t>(r) * 3 + 1]);
    bytes += info[static_cast<size_t>(r) * 3 + 2];
  }
  if (n_failed) {
    // Every rank has joined its writer (the all-reduce is after the join), so the directory is
    // idle: rank 0 removes the partial step_N.tmp, and says what `latest` still names. Its note is
    // broadcast after the removal, so no rank goes on (and ends the job) before that is done.
    std::string note;
    if (me == 0) {
      std::error_code ec;
      fs::remove_all(job->tmp_dir, ec);
      note = ec ? "; the partial " + job->tmp_dir + " could not be removed (" + ec.message() +
                      "): --resume ignores it and the next commit removes it"
                : "; the partial " + job->tmp_dir + " was removed";
      note += "; " + latest_note(dir_);
    }
    broadcast_string(world_, note, 0);
    std::vector<double> flags(static_cast<size_t>(W));
    for (int r = 0; r < W; ++r) flags[static_cast<size_t>(r)] = info[static_cast<size_t>(r) * 3];
    const Failures f = failures_from_flags(flags);
    const std::string reason = first_reason(world_, f, job->error);
    spare_ = std::move(job);
    const std::string head = "checkpoint step " + std::to_string(spare_->step) + " was not committed: ";
    if (!spare_->error.empty()) throw CollectiveError(head + spare_->error + note);
    throw CollectiveError(head + "writing it failed on " + f.ranks + "; rank " + std::to_string(f.first) + ": " +
                          reason + note);
  }

  std::string err;
  if (me == 0) {
    try {
      commit(*job);
    } catch (const std::exception& e) {
      err = e.what() + ("; " + latest_note(dir_));
    }
  }
  broadcast_string(world_, err, 0);
  if (!err.empty()) {
    spare_ = std::move(job);
    throw CollectiveError("checkpoint step " + std::to_string(spare_->step) + " was written but could not be committed" +
                          (me == 0 ? ": " : " by world rank 0: ") + err);
  }
  last_committed_ = job->final_dir;
  log_info("checkpoint: step %lld committed to %s (%.1f MB; snapshot %.0f ms, write + verify %.2f s on the slowest rank)",
           static_cast<long long>(job->step), job->final_dir.c_str(), bytes / 1e6, 1e3 * job->snapshot_seconds,
           slowest);
  if (me == 0) prune(job->step);
  spare_ = std::move(job);
}

void CheckpointWriter::commit(const Job& job) {
  // Order matters for crash safety: the shard and manifest files are already fsync'ed by their
  // writers; persist the tmp directory's entries, rename it (atomic), persist that rename, and only
  // then point `latest` at it (written aside, fsync'ed, renamed over: atomic too).
  h5::fsync_path(job.tmp_dir, true);
  std::error_code ec;
  std::string displaced;
  if (fs::exists(job.final_dir, ec)) {
    // Saving a step that already exists (e.g. the step a run resumed from): replace it. rename(2)
    // will not replace a non-empty directory, so move the old one aside first.
    displaced = job.final_dir + ".old";
    fs::remove_all(displaced, ec);
    rename_or_fail(job.final_dir, displaced);
  }
  try {
    rename_or_fail(job.tmp_dir, job.final_dir);
  } catch (const Error&) {
    if (!displaced.empty()) fs::rename(displaced, job.final_dir, ec);  // put the old one back
    throw;
  }
  h5::fsync_path(dir_, true);
  const std::string latest = join_path(dir_, "latest"), latest_tmp = latest + ".tmp";
  write_file_durably(latest_tmp, checkpoint_step_name(job.step) + "\n");
  rename_or_fail(latest_tmp, latest);
  h5::fsync_path(dir_, true);
  if (!displaced.empty()) fs::remove_all(displaced, ec);
}

void CheckpointWriter::prune(int64_t committed_step) {
  // Runs after the commit, so a failure here loses nothing: it is reported, not thrown. Besides old
  // checkpoints it removes leftovers of crashed or failed writes (step_*.tmp, step_*.old): no
  // write is in flight now, so none of them is in use.
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    for (const char* suffix : {".tmp", ".old"})
      if (name.ends_with(suffix) && parse_step_name(name.substr(0, name.size() - std::strlen(suffix)))) {
        std::error_code rec;
        fs::remove_all(e.path(), rec);
        if (rec) log_warn("checkpoint: cannot remove leftover %s: %s", e.path().c_str(), rec.message().c_str());
      }
  }
  if (keep_last_ <= 0) return;
  // Keep the one just committed (even if a higher-numbered one lingers from an abandoned run) and
  // the newest keep_last - 1 others.
  std::vector<std::pair<int64_t, std::string>> committed = list_committed(dir_);
  std::erase_if(committed, [&](const auto& c) { return c.first == committed_step; });
  const size_t keep_others = static_cast<size_t>(keep_last_ - 1);
  if (committed.size() <= keep_others) return;
  for (size_t i = 0; i < committed.size() - keep_others; ++i) {
    const std::string path = join_path(dir_, committed[i].second);
    std::error_code rec;
    fs::remove_all(path, rec);
    if (rec)
      log_warn("checkpoint: cannot remove old checkpoint %s: %s", path.c_str(), rec.message().c_str());
    else
      log_info("checkpoint: removed %s (--keep-last %d)", path.c_str(), keep_last_);
  }
}

// ---- loading -----------------------------------------------------------------------------------------

namespace {

struct LoadResult {
  TrainState state;
  std::vector<std::string> warnings;
};

// opt null: the parameters only (the moments are neither read nor needed).
LoadResult load_local(const std::string& path, const Config& current, ParamStore& params, OptimizerMoments* opt) {
  const std::string manifest_path = checkpoint_dir_check(path);
  const Manifest m = manifest_read(manifest_path);
  manifest_check_layout(m, manifest_path);
  LoadResult out;
  out.warnings = config_check_compatible(m.config_ini, config_to_ini(current), manifest_path);
  shards_check_present(m, path);
  manifest_check_coverage(m, manifest_path);

  // Same tensors, same global shapes: all problems in one message.
  std::map<std::string, const ManifestTensor*> by_name;
  for (const ManifestTensor& t : m.tensors) by_name[t.name] = &t;
  std::vector<std::string> problems;
  std::vector<const ManifestTensor*> stored(params.count(), nullptr);
  for (size_t i = 0; i < params.count(); ++i) {
    const ParamInfo& p = params.info(static_cast<int>(i));
    const auto it = by_name.find(p.name);
    if (it == by_name.end()) {
      problems.push_back("tensor " + p.name + " is missing from the checkpoint");
      continue;
    }
    if (it->second->global_shape != p.global_shape)
      problems.push_back("tensor " + p.name + ": global shape " + shape_text(it->second->global_shape) +
                         " in the checkpoint, " + shape_text(p.global_shape) + " in this model");
    stored[i] = it->second;
    by_name.erase(it);
  }
  for (const auto& [name, t] : by_name)
    problems.push_back("the checkpoint holds tensor " + name + ", which this model does not have");
  if (!problems.empty()) {
    std::ostringstream os;
    const size_t shown = std::min<size_t>(problems.size(), 8);
    for (size_t i = 0; i < shown; ++i) os << (i ? "; " : "") << problems[i];
    if (shown < problems.size()) os << "; and " << problems.size() - shown << " more";
    fail(manifest_path, ": the checkpoint does not match this model (", problems.size(), " problem",
         problems.size() > 1 ? "s" : "", "): ", os.str(), " (different model options or vocabulary?)");
  }
  UOE_ASSERT(!opt || (opt->m().size() == params.total() && opt->v().size() == params.total()),
             "AdamW moments of ", opt ? opt->m().size() : 0, " elements for ", params.total(), " parameters");

  // Each rank reads only the rows it holds, from whichever shards hold them; shards are opened on
  // first use and checked to be of this step.
  std::map<int64_t, h5::File> shards;
  const auto shard = [&](int64_t s) -> std::pair<hid_t, std::string> {
    const std::string file = join_path(path, m.shard_files[static_cast<size_t>(s)]);
    auto it = shards.find(s);
    if (it == shards.end())
      it = shards.emplace(s, shard_open(file, m.step, s, static_cast<int64_t>(m.shard_files.size()))).first;
    return {it->second.get(), file};
  };
  float* arenas[3] = {params.values().data(), opt ? opt->m().data() : nullptr, opt ? opt->v().data() : nullptr};
  const int groups = opt ? 3 : 1;  // kGroups: /model, then /optim/m and /optim/v
  for (size_t i = 0; i < params.count(); ++i) {
    const ParamInfo& p = params.info(static_cast<int>(i));
    const int64_t lb = p.expert_sharded ? p.expert_begin : 0;
    const int64_t le = p.expert_sharded ? p.expert_end : p.global_shape[0];
    const int64_t row = row_elems(p.global_shape);
    for (const ManifestSlab& s : stored[i]->slabs) {
      const int64_t a = std::max(lb, s.begin), b = std::min(le, s.end);
      if (a >= b) continue;
      const auto [file, file_path] = shard(s.shard);
      for (int g = 0; g < groups; ++g) {
        h5::Dataset d = slab_open(file, file_path, kGroups[g], p.name, p.global_shape, s.begin, s.end);
        float* dst = arenas[g] + p.offset + static_cast<size_t>((a - lb) * row);
        h5::dataset_read_rows(d.get(), h5::Elem::f32, a - s.begin, b - s.begin, dst, file_path,
                              std::string(kGroups[g]) + "/" + p.name);
      }
    }
  }
  // The random and data state, restated in every shard: check it in one this rank opened.
  if (!shards.empty()) {
    const auto [file, file_path] = shard(shards.begin()->first);
    shard_check_cursors(file, file_path, m.step, m.seed);
  }

  out.state.step = m.step;
  out.state.seed = m.seed;
  out.state.lr = m.lr;
  out.state.config_ini = m.config_ini;
  out.state.build = m.build;
  out.state.world = static_cast<int>(m.world);
  out.state.ep = static_cast<int>(m.ep);
  return out;
}

}  // namespace

namespace {

TrainState load_agreed(const std::string& path, const Config& current, ParamStore& params, OptimizerMoments* opt,
                       Communicator& world) {
  h5::init_thread();
  const auto t0 = Clock::now();
  LoadResult r;
  std::string err;
  try {
    r = load_local(path, current, params, opt);
  } catch (const std::exception& e) {
    err = e.what();
  }
  agree_on_errors(world, err, "loading checkpoint " + path);
  if (world.rank() == 0)
    for (const std::string& w : r.warnings)
      log_warn("checkpoint %s: model option differs (allowed, but the resumed run is not a continuation): %s",
               path.c_str(), w.c_str());
  log_info("checkpoint: loaded step %lld from %s (written by %d ranks, ep %d) in %.2f s",
           static_cast<long long>(r.state.step), path.c_str(), r.state.world, r.state.ep, seconds_since(t0));
  return r.state;
}

}  // namespace

TrainState checkpoint_load(const std::string& path, const Config& current, ParamStore& params, OptimizerMoments& opt,
                           Communicator& world) {
  return load_agreed(path, current, params, &opt, world);
}

TrainState checkpoint_load_params(const std::string& path, const Config& current, ParamStore& params,
                                  Communicator& world) {
  return load_agreed(path, current, params, nullptr, world);
}

void checkpoint_verify(const std::string& path) {
  h5::init_thread();
  const std::string manifest_path = checkpoint_dir_check(path);
  const Manifest m = manifest_read(manifest_path);
  manifest_check_layout(m, manifest_path);
  shards_check_present(m, path);
  manifest_check_coverage(m, manifest_path);
  std::vector<float> buf;
  for (size_t s = 0; s < m.shard_files.size(); ++s) {
    const std::string file = join_path(path, m.shard_files[s]);
    h5::File f = shard_open(file, m.step, static_cast<int64_t>(s), static_cast<int64_t>(m.shard_files.size()));
    shard_check_cursors(f.get(), file, m.step, m.seed);
    for (const ManifestTensor& t : m.tensors)
      for (const ManifestSlab& sl : t.slabs) {
        if (sl.shard != static_cast<int64_t>(s)) continue;
        for (const char* g : kGroups) {
          // slab_open checks the shape, and that the file really stores that much, before the
          // buffer is sized by it.
          h5::Dataset d = slab_open(f.get(), file, g, t.name, t.global_shape, sl.begin, sl.end);
          buf.resize(static_cast<size_t>((sl.end - sl.begin) * row_elems(t.global_shape)));
          h5::dataset_read(d.get(), h5::Elem::f32, buf.data(), file, std::string(g) + "/" + t.name);
        }
      }
  }
}

// ---- resolving --resume --------------------------------------------------------------------------------

std::string checkpoint_resolve(const std::string& resume, const std::string& checkpoint_dir) {
  if (resume.empty()) return "";
  std::error_code ec;
  if (resume != "auto") {
    if (!fs::is_directory(resume, ec))
      fail("--resume '", resume, "': no such checkpoint directory (give a step_* directory, or 'auto')");
    return resume;
  }
  if (!fs::is_directory(checkpoint_dir, ec)) {
    log_info("checkpoint: --resume auto: %s does not exist yet, starting from scratch", checkpoint_dir.c_str());
    return "";
  }
  const auto try_verify = [](const std::string& path, std::string* why) {
    try {
      checkpoint_verify(path);
      return true;
    } catch (const std::exception& e) {
      *why = e.what();
      return false;
    }
  };
  int candidates = 0;
  std::string tried;
  const std::string latest = join_path(checkpoint_dir, "latest");
  if (fs::exists(latest, ec)) {
    // One short line is all `latest` ever holds: read no more than that, whatever the file is.
    std::ifstream in(latest, std::ios::binary);
    char buf[64] = {0};
    in.read(buf, sizeof buf - 1);
    std::string name(buf, static_cast<size_t>(in.gcount()));
    name = name.substr(0, name.find('\n'));
    while (!name.empty() && (name.back() == '\r' || name.back() == ' ')) name.pop_back();
    if (!parse_step_name(name)) {
      log_warn("checkpoint: %s holds '%s', not a step_* name; ignoring it", latest.c_str(), name.c_str());
    } else {
      ++candidates;
      tried = name;
      const std::string path = join_path(checkpoint_dir, name);
      std::string why;
      if (try_verify(path, &why)) {
        log_info("checkpoint: --resume auto: resuming from %s (named by %s)", path.c_str(), latest.c_str());
        return path;
      }
      log_warn("checkpoint: %s names %s, which does not verify: %s; trying older checkpoints", latest.c_str(),
               path.c_str(), why.c_str());
    }
  } else {
    log_info("checkpoint: --resume auto: no %s; looking for step_* directories", latest.c_str());
  }
  std::vector<std::pair<int64_t, std::string>> committed = list_committed(checkpoint_dir);
  for (auto it = committed.rbegin(); it != committed.rend(); ++it) {
    if (it->second == tried) continue;
    ++candidates;
    const std::string path = join_path(checkpoint_dir, it->second);
    std::string why;
    if (try_verify(path, &why)) {
      log_info("checkpoint: --resume auto: resuming from %s, the newest committed checkpoint that verifies",
               path.c_str());
      return path;
    }
    log_warn("checkpoint: %s does not verify: %s; skipping it", path.c_str(), why.c_str());
  }
  if (candidates > 0)
    fail("--resume auto: none of the ", candidates, " checkpoints in ", checkpoint_dir,
         " verifies (see the warnings above); refusing to start from scratch over them: move them away or give "
         "--resume a directory");
  log_info("checkpoint: --resume auto: no checkpoint in %s, starting from scratch", checkpoint_dir.c_str());
  return "";
}

std::string checkpoint_resolve(const std::string& resume, const std::string& checkpoint_dir, Communicator& world) {
  std::string path, err;
  if (world.rank() == 0) {
    try {
      path = checkpoint_resolve(resume, checkpoint_dir);
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  broadcast_string(world, err);
  if (!err.empty()) throw Error(err);
  broadcast_string(world, path);
  return path;
}

}  // namespace uoe
