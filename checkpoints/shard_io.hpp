// The files of a checkpoint directory as the loader, the verifier and the writer's read-back see
// them (formats in checkpoints/README.md): slab geometry, and opening a shard or one of its slabs
// with every check the untrusted input needs before anything is read or allocated by it.
// Not part of the API (checkpoint.hpp); the names of steps and shards are.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoints/h5.hpp"
#include "checkpoints/manifest.hpp"

namespace uoe::ckpt {

// The three arenas a checkpoint holds, as the groups of a shard file.
inline constexpr const char* kGroups[3] = {"/model", "/optim/m", "/optim/v"};

// Slab dims: rows [begin, end) of dimension 0, the rest whole.
std::vector<int64_t> slab_dims(const std::vector<int64_t>& global_shape, int64_t begin, int64_t end);

// Elements of one row (dimension 0) of a tensor of `global_shape`.
int64_t row_elems(const std::vector<int64_t>& global_shape);

// Opens a shard file for reading and checks it belongs to the checkpoint of `step`, as shard
// `shard` of `shards` (its /state says which it is: a shard of a run with another layout is refused).
h5::File shard_open(const std::string& path, int64_t step, int64_t shard, int64_t shards);

// The manifest's layout must be one a run could have written: ep shard files (one per ep
// position), a world size that ep divides. Checked before any shard is opened.
void manifest_check_layout(const Manifest& m, const std::string& where);

// Opens <group>/<name> of a shard and checks that it holds rows [begin, end) of a float32 tensor of
// `global_shape`, as the manifest says.
h5::Dataset slab_open(hid_t file, const std::string& path, const char* group, const std::string& name,
                      const std::vector<int64_t>& global_shape, int64_t begin, int64_t end);

// /rng and /data_cursor must restate the step (and seed) of /state.
void shard_check_cursors(hid_t file, const std::string& path, int64_t step, uint64_t seed);

// The manifest path of checkpoint directory `path`, after checking the directory and it exist.
std::string checkpoint_dir_check(const std::string& path);

// Every shard file the manifest lists is present in `path`.
void shards_check_present(const Manifest& m, const std::string& path);
// Shard file `file` (a name the manifest lists) is present in `path`.
void shard_check_present(const std::string& path, const std::string& file);

}  // namespace uoe::ckpt
