// The checkpoint writer's background thread (writer_job.hpp): writes this rank's shard, paced to a
// share of one core while training runs, reads it back and verifies it against the snapshot, and
// fsyncs it; on world rank 0 the manifest too (checkpoints/README.md, "Saving").
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "checkpoints/common.hpp"
#include "checkpoints/h5.hpp"
#include "checkpoints/shard_io.hpp"
#include "checkpoints/writer_job.hpp"
#include "runtime/atomic_file.hpp"
#include "runtime/clock.hpp"
#include "runtime/error.hpp"

namespace uoe::ckpt {

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
}  // namespace

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
      fsync_file(job.shard_path);
      job.bytes += 3.0 * static_cast<double>(job.elements) * sizeof(float);
    }
    if (job.manifest) {
      const std::string path = join_path(job.tmp_dir, "manifest.h5");
      manifest_write(path, *job.manifest);
      fsync_file(path);
      manifest_verify(path, *job.manifest);
    }
  } catch (const std::exception& e) {
    job.error = e.what();
  } catch (...) {
    job.error = "unknown exception while writing checkpoint step " + std::to_string(job.step);
  }
  job.write_seconds = seconds_since(t0);
}

}  // namespace uoe::ckpt
