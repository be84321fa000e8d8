// The manifest of a checkpoint (manifest.h5, written by world rank 0): what was saved and where
// each part of each tensor lies. Loading reads it first and checks it before touching any shard.
//
// File layout (h5dump -A manifest.h5 shows it):
//   / attributes     format_version, step, seed, lr, world, ep (int64 / uint64 / float64),
//                    config_ini (the run's config as INI text), shard_files (file names, in shard order),
//                    build (the writing binary's build_info(): version, commit, libraries; information
//                    only, and absent from checkpoints written before it was added: not required)
//   /tokenizer       uint8 [bytes]: the run's vocabulary (runtime/tokenizer.hpp, tokenizer_blob: the word
//                    vocabulary file's text, or the SentencePiece .model file), so uoe-sample needs
//                    nothing else; attributes kind ("word" | "sentencepiece") and hash (uint64, the
//                    token files' vocab_hash). Absent for byte level and in checkpoints written before
//                    it was added (not required)
//   /index/<tensor>  int64 [slabs, 3] rows (shard, slab_begin, slab_end): shard `shard` holds rows
//                    [slab_begin, slab_end) along dimension 0 of the tensor, in /model, /optim/m and
//                    /optim/v alike; attribute global_shape (int64 array)
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace uoe {

// Bumped whenever the layout of manifest or shard files changes incompatibly; loading refuses any
// other version.
inline constexpr int64_t kCheckpointFormatVersion = 1;

// The most elements a checkpointed tensor may have (2^48, a petabyte of float32: far beyond any
// run). Bounding it keeps every element and byte count derived from a manifest's shapes (slab rows
// × row elements × 8) inside int64, so a hostile manifest cannot make them overflow.
inline constexpr int64_t kCheckpointMaxTensorElements = int64_t{1} << 48;

struct ManifestSlab {
  int64_t shard = 0;             // index into Manifest::shard_files
  int64_t begin = 0, end = 0;    // rows [begin, end) along dimension 0
};

struct ManifestTensor {
  std::string name;                   // global tensor name, e.g. "layers.0.mlp.w1"
  std::vector<int64_t> global_shape;  // the whole tensor
  std::vector<ManifestSlab> slabs;    // together they must cover dimension 0 exactly once
};

struct Manifest {
  int64_t format_version = kCheckpointFormatVersion;
  int64_t step = 0;
  uint64_t seed = 0;
  double lr = 0;
  std::string config_ini;
  std::string build;                     // runtime/version.hpp's build_info() of the writer ("" if absent)
  int64_t world = 1, ep = 1;              // layout of the run that wrote it (information only)
  std::string tokenizer;                 // "" (byte level, or an older checkpoint), "word", "sentencepiece"
  std::string tokenizer_blob;            // tokenizer_blob() of the run's vocabulary (runtime/tokenizer.hpp)
  uint64_t tokenizer_hash = 0;           // its vocab_hash (runtime/token_file.hpp)
  std::vector<std::string> shard_files;  // names relative to the checkpoint directory
  std::vector<ManifestTensor> tensors;   // in no particular order (read back in name order)
};

// Writes `path` (which must not exist). Throws uoe::Error naming the file on failure.
void manifest_write(const std::string& path, const Manifest& m);
// A shape as errors print it: "[4, 3]".
std::string shape_text(const std::vector<int64_t>& s);

// Reads `path`. Checks the format version first (any other version: a uoe::Error saying which
// version was found and which this build reads) and the structure of every entry; does NOT check
// coverage (manifest_check_coverage).
Manifest manifest_read(const std::string& path);

// The checks manifest_read makes on one /index entry before reading its rows (pure, so tests and the
// fuzz target can reach it): `index_dims` (the dims of /index/<tensor>) must be [slabs, 3] with
// 1 <= slabs <= shard_files (a shard file holds at most one slab of a tensor), and `global_shape`
// non-empty with every dimension > 0 and at most kCheckpointMaxTensorElements elements in all.
// Throws uoe::Error naming `path`, `where` (the entry) and what is wrong.
void manifest_check_index_entry(const std::string& path, const std::string& where,
                                const std::vector<int64_t>& index_dims, const std::vector<int64_t>& global_shape,
                                size_t shard_files);

// "step_00001200" → 1200: "step_" and 1 to 18 decimal digits (so the value fits int64); anything
// else (step_5.tmp, latest, step_x, step_) → nullopt. Names of checkpoint directories and the
// contents of `latest` pass through it.
std::optional<int64_t> parse_step_name(const std::string& name);

// Throws uoe::Error unless, for every tensor, its slabs cover rows [0, global_shape[0]) exactly
// once (no gap, no overlap, none outside the tensor) and each names an existing shard. `where`
// names the manifest file in the message.
void manifest_check_coverage(const Manifest& m, const std::string& where);
// The same for one tensor `t` of `m` (uoe-ckpt verify reports each tensor's problem).
void manifest_check_tensor_coverage(const Manifest& m, const ManifestTensor& t, const std::string& where);

// Model-shape options (INI keys) that must be equal between a checkpoint and the run loading it:
// they fix the shapes and the meaning of the parameters. The rows of the option table
// (runtime/options.hpp) marked OnResume::shape, in table order.
const std::vector<std::string>& config_shape_keys();
// Options that change what the model computes but not its shapes (top-k, capacity, gates, router
// losses): a difference is allowed (fine-tuning) but reported. The rows marked OnResume::behaviour.
const std::vector<std::string>& config_behaviour_keys();

// `key = value` lines of an INI text ('#' comments and blank lines skipped, spaces trimmed).
std::vector<std::pair<std::string, std::string>> config_ini_entries(const std::string& ini);

// Compares the stored and the current config INI: throws uoe::Error listing every shape key that
// differs (or is missing from the stored one) as "--key stored vs current"; returns the list of
// behaviour keys that differ (for a warning). `where` names the checkpoint.
std::vector<std::string> config_check_compatible(const std::string& stored_ini, const std::string& current_ini,
                                                 const std::string& where);

}  // namespace uoe
