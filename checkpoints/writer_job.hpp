// One checkpoint between snapshot and commit, shared by the collective writer (writer.cpp: snapshot,
// agreement, commit) and its background thread (paced_writer.cpp: write, read back, fsync).
// Not part of the API (checkpoint.hpp).
#pragma once
#include <atomic>
#include <optional>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/manifest.hpp"

namespace uoe {

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

namespace ckpt {

// The background thread's work: this rank's shard (and on rank 0 the manifest), written, made
// durable, read back and verified. File I/O only; never MPI, never the logger. Stores its error
// in job.error.
void job_run(CheckpointWriter::Job& job) noexcept;

}  // namespace ckpt
}  // namespace uoe
