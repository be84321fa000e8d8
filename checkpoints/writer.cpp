// CheckpointWriter: the collective side of saving (checkpoints/README.md, "Saving"): the layout
// agreed at the first save, the snapshot, the agreement that every shard was written, the commit
// and pruning. The background thread's file I/O is in paced_writer.cpp.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <sstream>
#include <system_error>
#include <thread>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/common.hpp"
#include "checkpoints/h5.hpp"
#include "checkpoints/manifest.hpp"
#include "parallel/mpi_version.hpp"
#include "checkpoints/writer_job.hpp"
#include "runtime/atomic_file.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/rng.hpp"
#include "runtime/version.hpp"

namespace uoe {
namespace fs = std::filesystem;
using namespace ckpt;

// Who writes which slab of which tensor, agreed by every rank at the first save.
struct CheckpointWriter::Layout {
  uint64_t signature = 0;            // of the tensors' names and global shapes (same on every rank)
  std::vector<ManifestTensor> index; // the manifest's tensor index
  std::vector<std::string> shard_files;
  std::vector<int> mine;             // indices (ParamStore order) of the tensors this rank writes
  int shard = -1;                    // this rank's shard file, -1 when it writes none
};

namespace {

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
      atomic_write_file(probe, "uoe-train checks that it can write here; safe to delete\n");
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
    m.tokenizer = state.tokenizer;
    m.tokenizer_blob = state.tokenizer_blob;
    m.tokenizer_hash = state.tokenizer_hash;
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
  // writers; persist the tmp directory's entries, rename it (atomic) and persist that rename, and
  // only then point `latest` at it (runtime/atomic_file.hpp: written aside, fsync'ed, renamed over,
  // the directory fsync'ed).
  fsync_directory(job.tmp_dir);
  std::error_code ec;
  std::string displaced;
  if (fs::exists(job.final_dir, ec)) {
    // Saving a step that already exists (e.g. the step a run resumed from): replace it. rename(2)
    // will not replace a non-empty directory, so move the old one aside first.
    displaced = job.final_dir + ".old";
    fs::remove_all(displaced, ec);
    rename_durably(job.final_dir, displaced);
  }
  try {
    rename_durably(job.tmp_dir, job.final_dir);
  } catch (const Error&) {
    if (!displaced.empty()) fs::rename(displaced, job.final_dir, ec);  // put the old one back
    throw;
  }
  atomic_write_file(join_path(dir_, "latest"), checkpoint_step_name(job.step) + "\n");
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

}  // namespace uoe
