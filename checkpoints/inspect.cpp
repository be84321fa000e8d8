// What a checkpoint holds (inspect.hpp), for uoe-ckpt info.
#include "checkpoints/inspect.hpp"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <system_error>

#include "checkpoints/common.hpp"
#include "checkpoints/h5.hpp"
#include "checkpoints/shard_io.hpp"
#include "runtime/error.hpp"

namespace uoe {
namespace fs = std::filesystem;
using namespace ckpt;

bool checkpoint_is_run_dir(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && !fs::exists(join_path(path, "manifest.h5"), ec);
}

std::string checkpoint_step_dir(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, ": no such checkpoint directory");
  if (!fs::is_directory(path, ec)) fail(path, ": not a directory (give a step_* directory or a --checkpoint-dir)");
  if (fs::exists(join_path(path, "manifest.h5"), ec)) return path;
  const std::string latest = join_path(path, "latest");
  if (!fs::exists(latest, ec))
    fail(path, " is not a checkpoint: it holds neither a manifest.h5 (a step_* directory) nor a 'latest' file "
         "(a --checkpoint-dir)");
  const std::string name = read_latest(latest);
  if (!parse_step_name(name)) fail(latest, " holds '", name, "', not a step_* name");
  const std::string step = join_path(path, name);
  if (!fs::is_directory(step, ec)) fail(latest, " names ", name, ", which is not a directory in ", path);
  return step;
}

std::string checkpoint_shape_text(const std::vector<int64_t>& shape) { return shape_text(shape); }

CheckpointInfo checkpoint_inspect(const std::string& path) {
  h5::init_thread();
  CheckpointInfo info;
  info.path = path;
  const std::string manifest_path = checkpoint_dir_check(path);
  info.manifest = manifest_read(manifest_path);
  const Manifest& m = info.manifest;

  std::vector<std::optional<h5::File>> files(m.shard_files.size());
  for (size_t s = 0; s < m.shard_files.size(); ++s) {
    const std::string file = join_path(path, m.shard_files[s]);
    std::error_code ec;
    const auto bytes = fs::file_size(file, ec);
    info.shards.push_back({m.shard_files[s], ec ? -1 : static_cast<int64_t>(bytes)});
    try {
      files[s] = h5::file_open(file);
    } catch (const std::exception& e) {
      info.notes.push_back(e.what());
    }
  }

  std::vector<const ManifestTensor*> by_name;
  for (const ManifestTensor& t : m.tensors) by_name.push_back(&t);
  std::sort(by_name.begin(), by_name.end(), [](const auto* a, const auto* b) { return a->name < b->name; });
  for (const char* g : kGroups)
    for (const ManifestTensor* t : by_name) {
      CheckpointTensorInfo ti;
      ti.group = g;
      ti.name = t->name;
      ti.global_shape = t->global_shape;
      ti.elements = 1;
      for (int64_t d : t->global_shape) ti.elements *= d;  // bounded by manifest_read (2^48)
      ti.bytes = ti.elements * static_cast<int64_t>(sizeof(float));
      const int64_t row = row_elems(t->global_shape);
      for (const ManifestSlab& s : t->slabs) ti.slabs.push_back({s.shard, s.begin, s.end, (s.end - s.begin) * row});
      std::sort(ti.slabs.begin(), ti.slabs.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
      // The element type as stored, slab by slab (they should all say float32; verify checks it).
      std::vector<std::string> dtypes;
      for (const CheckpointSlabInfo& s : ti.slabs) {
        const size_t shard = static_cast<size_t>(s.shard);
        if (s.shard < 0 || shard >= files.size() || !files[shard]) continue;
        const std::string file = join_path(path, m.shard_files[shard]);
        const std::string where = std::string(g) + "/" + t->name;
        try {
          const hid_t f = files[shard]->get();
          h5::Dataset d = h5::dataset_open(f, where, file);
          const std::string dtype = h5::dataset_type_name(d.get(), file, where);
          if (std::find(dtypes.begin(), dtypes.end(), dtype) == dtypes.end()) dtypes.push_back(dtype);
        } catch (const std::exception& e) {
          info.notes.push_back(e.what());
        }
      }
      for (size_t i = 0; i < dtypes.size(); ++i) ti.dtype += (i ? "/" : "") + dtypes[i];
      if (ti.dtype.empty()) ti.dtype = "?";
      info.tensors.push_back(std::move(ti));
    }
  return info;
}

}  // namespace uoe
