// The files of a checkpoint directory (shard_io.hpp), and the step and shard names and roles of checkpoint.hpp.
#include "checkpoints/shard_io.hpp"

#include <cstdio>
#include <filesystem>
#include <system_error>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/common.hpp"
#include "runtime/error.hpp"

namespace uoe {

namespace ckpt {
namespace fs = std::filesystem;

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
  for (const std::string& f : m.shard_files) shard_check_present(path, f);
}

void shard_check_present(const std::string& path, const std::string& file) {
  std::error_code ec;
  if (!fs::exists(join_path(path, file), ec))
    fail("checkpoint ", path, ": shard file ", file, " listed in manifest.h5 is missing");
}

}  // namespace ckpt

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

}  // namespace uoe
