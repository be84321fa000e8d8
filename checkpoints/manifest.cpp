#include "checkpoints/manifest.hpp"

#include <algorithm>
#include <map>
#include <sstream>
#include <string_view>

#include "checkpoints/h5.hpp"
#include "runtime/error.hpp"
#include "runtime/options.hpp"

namespace uoe {

std::string shape_text(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// The INI keys of the options whose on_resume is `on_resume`, in table order (runtime/options.hpp).
std::vector<std::string> keys_on_resume(OnResume on_resume) {
  std::vector<std::string> keys;
  for (const Option& o : config_options())
    if (o.on_resume == on_resume) keys.push_back(o.name);
  return keys;
}

}  // namespace

void manifest_write(const std::string& path, const Manifest& m) {
  h5::init_thread();
  h5::File f = h5::file_create(path);
  const hid_t root = f.get();
  h5::attr_write_i64(root, "format_version", m.format_version, path, "/");
  h5::attr_write_i64(root, "step", m.step, path, "/");
  h5::attr_write_u64(root, "seed", m.seed, path, "/");
  h5::attr_write_f64(root, "lr", m.lr, path, "/");
  h5::attr_write_i64(root, "world", m.world, path, "/");
  h5::attr_write_i64(root, "ep", m.ep, path, "/");
  h5::attr_write_str(root, "config_ini", m.config_ini, path, "/");
  h5::attr_write_str(root, "build", m.build, path, "/");
  UOE_ASSERT(!m.shard_files.empty(), "manifest without shard files");
  h5::attr_write_strs(root, "shard_files", m.shard_files, path, "/");
  if (!m.tokenizer.empty()) {
    UOE_ASSERT(!m.tokenizer_blob.empty(), "tokenizer ", m.tokenizer, " without its blob");
    h5::Dataset d = h5::dataset_write(root, "tokenizer", {static_cast<int64_t>(m.tokenizer_blob.size())}, h5::Elem::u8,
                                      m.tokenizer_blob.data(), path);
    h5::attr_write_str(d.get(), "kind", m.tokenizer, path, "/tokenizer");
    h5::attr_write_u64(d.get(), "hash", m.tokenizer_hash, path, "/tokenizer");
    d.close(path, "/tokenizer");
  }
  {
    h5::Group index = h5::group_create(root, "index", path);
    h5::attr_write_str(index.get(), "columns", "shard, slab_begin, slab_end", path, "/index");
    for (const ManifestTensor& t : m.tensors) {
      UOE_ASSERT(t.name.find('/') == std::string::npos && !t.name.empty() && t.name != "." && !t.slabs.empty(),
                 "tensor name '", t.name, "'");
      std::vector<int64_t> rows;
      for (const ManifestSlab& s : t.slabs) rows.insert(rows.end(), {s.shard, s.begin, s.end});
      const std::string name = "/index/" + t.name;
      h5::Dataset d = h5::dataset_write(index.get(), t.name, {static_cast<int64_t>(t.slabs.size()), 3},
                                        h5::Elem::i64, rows.data(), path);
      h5::attr_write_i64s(d.get(), "global_shape", t.global_shape, path, name);
      d.close(path, name);
    }
    index.close(path, "/index");
  }
  f.close(path, "");
}

Manifest manifest_read(const std::string& path) {
  h5::init_thread();
  h5::File f = h5::file_open(path);
  const hid_t root = f.get();
  Manifest m;
  // The version first: everything else may mean something else in another version.
  m.format_version = h5::attr_read_i64(root, "format_version", path, "/");
  if (m.format_version != kCheckpointFormatVersion)
    fail(path, ": checkpoint format version ", m.format_version, ", but this build of uoe reads version ",
         kCheckpointFormatVersion);
  m.step = h5::attr_read_i64(root, "step", path, "/");
  m.seed = h5::attr_read_u64(root, "seed", path, "/");
  m.lr = h5::attr_read_f64(root, "lr", path, "/");
  m.world = h5::attr_read_i64(root, "world", path, "/");
  m.ep = h5::attr_read_i64(root, "ep", path, "/");
  m.config_ini = h5::attr_read_str(root, "config_ini", path, "/");
  if (h5::attr_exists(root, "build", path, "/")) m.build = h5::attr_read_str(root, "build", path, "/");
  m.shard_files = h5::attr_read_strs(root, "shard_files", path, "/");
  if (m.step < 0) fail(path, ": step ", m.step, " is negative");
  for (const std::string& s : m.shard_files)
    if (s.empty() || s.find('/') != std::string::npos || s == "." || s == "..")
      fail(path, ": shard file name '", s, "' is not a plain file name");

  if (h5::link_exists(root, "tokenizer", path)) {
    h5::Dataset d = h5::dataset_open(root, "tokenizer", path);
    h5::dataset_check_type(d.get(), h5::Elem::u8, path, "/tokenizer");
    const std::vector<int64_t> dims = h5::dataset_dims(d.get(), path, "/tokenizer");
    if (dims.size() != 1 || dims[0] < 1 || dims[0] > (int64_t{1} << 32))
      fail(path, ": /tokenizer has shape ", shape_text(dims), ", expected [bytes] with 1 to 2^32 bytes");
    h5::dataset_check_stored(d.get(), h5::Elem::u8, dims, path, "/tokenizer");
    m.tokenizer = h5::attr_read_str(d.get(), "kind", path, "/tokenizer");
    m.tokenizer_hash = h5::attr_read_u64(d.get(), "hash", path, "/tokenizer");
    m.tokenizer_blob.resize(static_cast<size_t>(dims[0]));
    h5::dataset_read(d.get(), h5::Elem::u8, m.tokenizer_blob.data(), path, "/tokenizer");
  }
  h5::Group index = h5::group_open(root, "index", path);
  for (const std::string& name : h5::group_members(index.get(), path, "/index")) {
    const std::string where = "/index/" + name;
    h5::Dataset d = h5::dataset_open(index.get(), name, path);
    h5::dataset_check_type(d.get(), h5::Elem::i64, path, where);
    const std::vector<int64_t> dims = h5::dataset_dims(d.get(), path, where);
    ManifestTensor t;
    t.name = name;
    t.global_shape = h5::attr_read_i64s(d.get(), "global_shape", path, where);
    // Before allocating: the slab count comes from the file.
    manifest_check_index_entry(path, where, dims, t.global_shape, m.shard_files.size());
    std::vector<int64_t> rows(static_cast<size_t>(dims[0]) * 3);
    h5::dataset_read(d.get(), h5::Elem::i64, rows.data(), path, where);
    for (size_t i = 0; i < static_cast<size_t>(dims[0]); ++i)
      t.slabs.push_back({rows[3 * i], rows[3 * i + 1], rows[3 * i + 2]});
    m.tensors.push_back(std::move(t));
  }
  return m;
}

void manifest_check_index_entry(const std::string& path, const std::string& where,
                                const std::vector<int64_t>& index_dims, const std::vector<int64_t>& global_shape,
                                size_t shard_files) {
  if (index_dims.size() != 2 || index_dims[1] != 3 || index_dims[0] < 1)
    fail(path, ": ", where, " has shape ", shape_text(index_dims), ", expected [slabs, 3] with at least one slab");
  if (static_cast<uint64_t>(index_dims[0]) > shard_files)
    fail(path, ": ", where, " lists ", index_dims[0], " slabs but the manifest has ", shard_files,
         " shard files (a shard file holds at most one slab of a tensor)");
  if (global_shape.empty()) fail(path, ": ", where, " has an empty global_shape");
  int64_t elements = 1;
  for (int64_t s : global_shape) {
    if (s <= 0) fail(path, ": ", where, " has global_shape ", shape_text(global_shape), " with a dimension <= 0");
    if (s > kCheckpointMaxTensorElements / elements)
      fail(path, ": ", where, " has global_shape ", shape_text(global_shape), ", more than 2^48 elements");
    elements *= s;
  }
}

std::optional<int64_t> parse_step_name(const std::string& name) {
  constexpr std::string_view prefix = "step_";
  if (!name.starts_with(prefix) || name.size() == prefix.size() || name.size() > prefix.size() + 18) return std::nullopt;
  int64_t step = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

void manifest_check_coverage(const Manifest& m, const std::string& where) {
  for (const ManifestTensor& t : m.tensors) manifest_check_tensor_coverage(m, t, where);
}

void manifest_check_tensor_coverage(const Manifest& m, const ManifestTensor& t, const std::string& where) {
  const int64_t shards = static_cast<int64_t>(m.shard_files.size());
  UOE_ASSERT(!t.global_shape.empty(), t.name);
  const int64_t rows = t.global_shape[0];
  const auto slab_text = [&](const ManifestSlab& s) {
    std::ostringstream os;
    os << "[" << s.begin << ", " << s.end << ") in shard " << s.shard;
    if (s.shard >= 0 && s.shard < shards) os << " (" << m.shard_files[static_cast<size_t>(s.shard)] << ")";
    return os.str();
  };
  std::vector<ManifestSlab> slabs = t.slabs;
  for (const ManifestSlab& s : slabs) {
    if (s.shard < 0 || s.shard >= shards)
      fail(where, ": tensor ", t.name, ": slab ", slab_text(s), " names shard ", s.shard, " but the manifest lists ",
           shards, " shard files");
    if (!(0 <= s.begin && s.begin < s.end && s.end <= rows))
      fail(where, ": tensor ", t.name, ": slab ", slab_text(s), " is empty or outside rows [0, ", rows,
           ") of global shape ", shape_text(t.global_shape));
  }
  std::sort(slabs.begin(), slabs.end(), [](const ManifestSlab& a, const ManifestSlab& b) { return a.begin < b.begin; });
  int64_t covered = 0;  // rows [0, covered) are held exactly once so far
  const ManifestSlab* prev = nullptr;
  for (const ManifestSlab& s : slabs) {
    if (s.begin < covered)
      fail(where, ": tensor ", t.name, ": slabs ", slab_text(*prev), " and ", slab_text(s), " overlap in rows [",
           s.begin, ", ", std::min(covered, s.end), "): every element must be stored exactly once");
    if (s.begin > covered)
      fail(where, ": tensor ", t.name, ": no shard holds rows [", covered, ", ", s.begin, ") of ", rows,
           " (gap in the slabs)");
    covered = s.end;
    prev = &s;
  }
  if (covered != rows)
    fail(where, ": tensor ", t.name, ": no shard holds rows [", covered, ", ", rows, ") of ", rows,
         " (gap in the slabs)");
}

const std::vector<std::string>& config_shape_keys() {
  static const std::vector<std::string> keys = keys_on_resume(OnResume::shape);
  return keys;
}

const std::vector<std::string>& config_behaviour_keys() {
  static const std::vector<std::string> keys = keys_on_resume(OnResume::behaviour);
  return keys;
}

std::vector<std::pair<std::string, std::string>> config_ini_entries(const std::string& ini) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(ini);
  std::string line;
  while (std::getline(in, line)) {
    const std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    const size_t eq = t.find('=');
    if (eq == std::string::npos) continue;
    out.emplace_back(trim(t.substr(0, eq)), trim(t.substr(eq + 1)));
  }
  return out;
}

std::vector<std::string> config_check_compatible(const std::string& stored_ini, const std::string& current_ini,
                                                 const std::string& where) {
  std::map<std::string, std::string> stored, current;
  for (auto& [k, v] : config_ini_entries(stored_ini)) stored[k] = v;
  for (auto& [k, v] : config_ini_entries(current_ini)) current[k] = v;
  const auto value = [](const std::map<std::string, std::string>& m, const std::string& k) -> std::string {
    const auto it = m.find(k);
    return it == m.end() ? "(absent)" : it->second;
  };
  std::ostringstream mismatches;
  int n = 0;
  for (const std::string& k : config_shape_keys()) {
    if (stored.count(k) && current.count(k) && stored[k] == current[k]) continue;
    mismatches << (n++ ? "; " : "") << "--" << k << " " << value(stored, k) << " in the checkpoint, "
               << value(current, k) << " in this run";
  }
  if (n)
    fail(where, ": checkpoint is incompatible with this run's model: ", mismatches.str(),
         " (model shape options must match; training options such as ", option_flag(&Config::lr), " or ",
         option_flag(&Config::steps), " may differ)");
  std::vector<std::string> differ;
  for (const std::string& k : config_behaviour_keys())
    if (value(stored, k) != value(current, k))
      differ.push_back("--" + k + " " + value(stored, k) + " in the checkpoint, " + value(current, k) + " now");
  return differ;
}

}  // namespace uoe
