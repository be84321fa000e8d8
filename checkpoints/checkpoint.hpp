// Sharded HDF5 checkpoints: atomic, verified, bitwise resume, loadable on another world size.
//
//   <checkpoint_dir>/step_00001200/        committed by rename from step_00001200.tmp
//       manifest.h5                        format version, step, config, world, ep, tensor index
//       shard_00000_of_00004.h5            /model/<tensor>, /optim/m/<tensor>, /optim/v/<tensor>,
//       ...                                /state, /rng, /data_cursor
//   <checkpoint_dir>/latest                one line: the directory name of the newest commit
//
// Who writes what: replicated tensors once (world rank 0); an expert-sharded tensor's slab
// [expert_begin, expert_end) by the rank with dp_rank 0 of its ep position. So there are ep shard
// files (shard i = the ranks' ep_rank), every global element is written exactly once, and ranks
// with dp_rank > 0 write nothing. Formats, the commit protocol and the threading rules are in
// checkpoints/README.md.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "parallel/comm.hpp"
#include "runtime/config.hpp"
#include "runtime/param_store.hpp"

namespace uoe {

// What a resumed run needs besides the tensors. The RNG is counter-based, keyed by (seed, step), and
// training windows are keyed by step, so (seed, step) is the whole random and data state.
struct TrainState {
  int64_t step = 0;        // last completed optimizer step
  uint64_t seed = 0;
  double lr = 0;           // learning rate of that step (information; the schedule recomputes it)
  std::string config_ini;  // config_to_ini() of the run; loading checks its model-shape options
  std::string build;       // the writing binary's build_info() (filled by checkpoint_load; "" in old checkpoints)
  // The run's vocabulary (manifest.hpp, /tokenizer): kind "" for byte level (and old checkpoints).
  std::string tokenizer, tokenizer_blob;
  uint64_t tokenizer_hash = 0;
  int world = 1, ep = 1;   // layout of the writing run (filled by checkpoint_load; save uses ShardRole)
};

// This rank's place in the ep × dp grid (docs/model.md, Expert parallelism), as far as checkpoints care.
struct ShardRole {
  int world_rank = 0, world_size = 1;
  int ep = 1, ep_rank = 0, dp_rank = 0;
  // Writes its expert slabs (and so a shard file): the first replica of each ep position.
  bool writer_of_experts() const { return dp_rank == 0; }
  // Writes the replicated tensors, and the manifest.
  bool writer_of_replicated() const { return world_rank == 0; }
};
ShardRole shard_role(const ProcessGroups& g);
ShardRole shard_role_single();  // one rank, ep 1

// Name of the directory of step `step` ("step_00001200") and of its shard files.
std::string checkpoint_step_name(int64_t step);
std::string checkpoint_shard_name(int shard, int shards);

// Asynchronous, collective checkpoint writer. Every rank of `world` constructs one and calls save()
// and wait() at the same points.
//
// save() first wait()s for the previous checkpoint, copies this rank's share of the parameters and
// AdamW moments into host buffers (the only part on the training step's critical path), and hands
// them to a background thread that writes and verifies this rank's shard file. The background
// thread does file I/O only, never MPI: the agreement that every rank succeeded, the commit
// (rename, `latest`) and pruning happen on the calling thread in wait().
class CheckpointWriter {
 public:
  // keep_last > 0 keeps only the newest keep_last committed checkpoints (pruned after each commit);
  // keep_last <= 0 keeps all. `world` must outlive the writer.
  CheckpointWriter(std::string checkpoint_dir, int keep_last, Communicator& world, ShardRole role);
  // Joins an in-flight write but does not commit it (that needs every rank, in wait()): its
  // step_N.tmp stays behind, ignored by checkpoint_resolve and removed by the next commit.
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Collective, optional (the trainer calls it at start-up). Creates the checkpoint directory and
  // checks that every rank that writes a shard can create a file in it, so a directory that cannot
  // be written fails before any training, on every rank (CollectiveError naming the directory and
  // the OS's reason), not at the first checkpoint.
  void prepare();
  // Collective. Snapshot at `state.step` and start writing; returns once the snapshot is taken.
  // Throws CollectiveError on every rank, with world rank 0's reason, if step_N.tmp cannot be made.
  // `opt` is not modified (non-const only because OptimizerMoments has no const accessors).
  void save(const ParamStore& params, OptimizerMoments& opt, const TrainState& state);
  // Collective. Waits for the in-flight write, agrees across ranks that every shard was written
  // and verified, then (rank 0) commits and prunes. If any rank failed, rank 0 removes the partial
  // step_N.tmp and every rank throws CollectiveError (a failing rank with its own reason, the
  // others naming the failing ranks and the first one's reason, all saying what `latest` still
  // names); the previous checkpoint and `latest` are untouched. No-op when nothing is in flight.
  void wait();

  // Pacing of the background writer: while training runs, it uses at most `share` of one core
  // (CPU time of its thread over wall time since it started, both measured; it sleeps between
  // datasets to stay under), so that a write in flight slows the training threads it shares cores
  // with by little (bench/README-checkpoint.md). wait(), and so the next save() and the end of a
  // run, lifts the limit for the write it waits for. 1 (or more) = never paced. Applies from the
  // next save(). Throws uoe::Error unless 0 < share.
  void set_background_share(double share);

  bool in_flight() const { return job_ != nullptr; }
  // Local: this rank's shard of the in-flight checkpoint is written and verified (so wait() would
  // not block on this rank). The trainer agrees on it across ranks each step and then commits, so
  // a checkpoint is committed within a step of being written, not only at the next save.
  bool write_done() const;
  // Directory of the last checkpoint committed by this writer ("" before the first).
  const std::string& last_committed() const { return last_committed_; }

  struct Job;  // one checkpoint between snapshot and commit (defined in writer_job.hpp)

 private:
  struct Layout;
  void gather_layout(const ParamStore& params);
  void snapshot(const ParamStore& params, OptimizerMoments& opt, const TrainState& state);  // into job_
  void commit(const Job& job);  // rank 0 only
  void prune(int64_t committed_step);

  std::string dir_;
  int keep_last_;
  Communicator& world_;
  ShardRole role_;
  std::unique_ptr<Layout> layout_;  // who writes which slab; gathered at the first save
  double share_ = 1.0;              // set_background_share
  std::unique_ptr<Job> job_;        // in flight (written or being written, not yet committed)
  std::unique_ptr<Job> spare_;      // the last finished job, whose snapshot buffers save() reuses
  std::thread thread_;
  std::string last_committed_;
};

// Collective over `world`. Loads the checkpoint directory `path` into already-constructed params
// and opt, whose layout (expert ranges) may differ from the writer's: each rank reads exactly the
// rows it holds, from whichever shards hold them (resharding). Checks, each failure a uoe::Error
// naming file, tensor, and expected vs found: format version; model-shape options of the stored
// config against `current` (other model options may differ, with a warning); coverage of every
// tensor by the manifest's slabs (before reading any data); every tensor present, shape, float32,
// slab attributes; every shard file listed present and from the same step; checksums (Fletcher32)
// of every chunk read. If any rank fails, every rank throws. Returns the saved TrainState.
TrainState checkpoint_load(const std::string& path, const Config& current, ParamStore& params, OptimizerMoments& opt,
                           Communicator& world);
// The same for the parameters alone (sampling, evaluation): the AdamW moments are not read.
TrainState checkpoint_load_params(const std::string& path, const Config& current, ParamStore& params,
                                  Communicator& world);

// Local. Reads all of a checkpoint (manifest, coverage, every shard file, every dataset with its
// checksums, shapes and attributes; no shard holding a tensor the index does not give it) without
// loading it; throws uoe::Error on the first problem.
void checkpoint_verify(const std::string& path);
// Local. The same checks, going on past each problem wherever the rest can still be checked (the
// other tensors' coverage, the other shards, the other datasets): every problem found, each a
// message naming the file, the dataset or attribute, and what was expected. Empty: it verifies.
// Only a missing or unreadable manifest ends the walk at once (uoe-ckpt verify).
std::vector<std::string> checkpoint_verify_report(const std::string& path);

// What `--resume auto` takes in `checkpoint_dir`: the directory `latest` names if it verifies, else
// the newest committed step_* that verifies (step_*.tmp never). `verify(path)` says whether a
// directory verifies: "" if it does, else why not (checkpoint_resolve runs checkpoint_verify;
// uoe-ckpt verify --all the report it has already made).
struct ResumeChoice {
  std::string path;  // "" = none: there is no checkpoint (candidates 0), or none verifies
  int candidates = 0;  // directories tried
  std::vector<std::pair<bool, std::string>> notes;  // (is a warning, text): what was tried and why, in order
};
ResumeChoice checkpoint_choose_auto(const std::string& checkpoint_dir,
                                    const std::function<std::string(const std::string&)>& verify);

// Local. Resolves --resume: "auto" = <checkpoint_dir>/latest if it verifies, else the newest
// committed step_* that verifies (step_*.tmp are never considered), logging which and why; returns
// "" when there is none. Anything else is an explicit checkpoint directory, returned as is after
// checking it exists (checkpoint_load checks the rest). "" (no --resume) returns "".
std::string checkpoint_resolve(const std::string& resume, const std::string& checkpoint_dir);
// Collective: world rank 0 resolves, the others receive its answer (or its error, thrown on every
// rank), so all ranks load the same checkpoint and the files are read once.
std::string checkpoint_resolve(const std::string& resume, const std::string& checkpoint_dir, Communicator& world);

}  // namespace uoe
