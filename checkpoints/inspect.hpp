// What a checkpoint holds, for uoe-ckpt (launcher/uoe_ckpt.hpp): the manifest, the tensor table of
// each group with the dtype its shard stores, and where a user's path leads (a step directory, or
// a checkpoint directory through its `latest`). Verifying is checkpoint.hpp's
// checkpoint_verify_report; formats in checkpoints/README.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoints/manifest.hpp"

namespace uoe {

// The step directory `path` means: `path` itself when it holds a manifest.h5, else the directory
// its `latest` file names. Throws uoe::Error naming `path` when it is neither (not a checkpoint).
std::string checkpoint_step_dir(const std::string& path);

// Whether `path` is a checkpoint directory (a run's --checkpoint-dir: `latest` and step_* inside)
// rather than one step: it holds no manifest.h5.
bool checkpoint_is_run_dir(const std::string& path);

struct CheckpointShardInfo {
  std::string file;    // name, as the manifest lists it
  int64_t bytes = -1;  // size on disk; -1 when missing
};

struct CheckpointSlabInfo {
  int64_t shard = 0;
  int64_t begin = 0, end = 0;  // rows [begin, end) of dimension 0
  int64_t elements = 0;
};

struct CheckpointTensorInfo {
  std::string group;                  // "/model", "/optim/m" or "/optim/v"
  std::string name;                   // "layers.0.mlp.w1"
  std::vector<int64_t> global_shape;
  std::string dtype;                  // as the shards store it ("float32"); "?" when not readable
  int64_t elements = 0;               // of the whole tensor
  int64_t bytes = 0;                  // elements × the size of float32, the element type of every tensor
  std::vector<CheckpointSlabInfo> slabs;  // in row order
};

struct CheckpointInfo {
  std::string path;  // the step directory
  Manifest manifest;
  std::vector<CheckpointShardInfo> shards;
  std::vector<CheckpointTensorInfo> tensors;  // by group (/model, /optim/m, /optim/v), then by name
  std::vector<std::string> notes;             // what could not be read (the rest is shown; verify says more)
};

// Reads the manifest of step directory `path` (a uoe::Error naming the file when it cannot be read
// or is of another format version) and the metadata of each shard's datasets, never their data.
CheckpointInfo checkpoint_inspect(const std::string& path);

// "[2, 8, 16]".
std::string checkpoint_shape_text(const std::vector<int64_t>& shape);

}  // namespace uoe
