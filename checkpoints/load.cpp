// Loading and resharding (checkpoints/README.md, "Loading and resharding"), and verifying a
// checkpoint without loading it.
#include <algorithm>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/common.hpp"
#include "checkpoints/h5.hpp"
#include "checkpoints/manifest.hpp"
#include "checkpoints/shard_io.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

namespace uoe {
using namespace ckpt;

namespace {

struct LoadResult {
  TrainState state;
  std::vector<std::string> warnings;
};

// opt null: the parameters only (the moments are neither read nor needed).
LoadResult load_local(const std::string& path, const Config& current, ParamStore& params, OptimizerMoments* opt) {
  const std::string manifest_path = checkpoint_dir_check(path);
  const Manifest m = manifest_read(manifest_path);
  manifest_check_layout(m, manifest_path);
  LoadResult out;
  out.warnings = config_check_compatible(m.config_ini, config_to_ini(current), manifest_path);
  shards_check_present(m, path);
  manifest_check_coverage(m, manifest_path);

  // Same tensors, same global shapes: all problems in one message.
  std::map<std::string, const ManifestTensor*> by_name;
  for (const ManifestTensor& t : m.tensors) by_name[t.name] = &t;
  std::vector<std::string> problems;
  std::vector<const ManifestTensor*> stored(params.count(), nullptr);
  for (size_t i = 0; i < params.count(); ++i) {
    const ParamInfo& p = params.info(static_cast<int>(i));
    const auto it = by_name.find(p.name);
    if (it == by_name.end()) {
      problems.push_back("tensor " + p.name + " is missing from the checkpoint");
      continue;
    }
    if (it->second->global_shape != p.global_shape)
      problems.push_back("tensor " + p.name + ": global shape " + shape_text(it->second->global_shape) +
                         " in the checkpoint, " + shape_text(p.global_shape) + " in this model");
    stored[i] = it->second;
    by_name.erase(it);
  }
  for (const auto& [name, t] : by_name)
    problems.push_back("the checkpoint holds tensor " + name + ", which this model does not have");
  if (!problems.empty()) {
    std::ostringstream os;
    const size_t shown = std::min<size_t>(problems.size(), 8);
    for (size_t i = 0; i < shown; ++i) os << (i ? "; " : "") << problems[i];
    if (shown < problems.size()) os << "; and " << problems.size() - shown << " more";
    fail(manifest_path, ": the checkpoint does not match this model (", problems.size(), " problem",
         problems.size() > 1 ? "s" : "", "): ", os.str(), " (different model options or vocabulary?)");
  }
  UOE_ASSERT(!opt || (opt->m().size() == params.total() && opt->v().size() == params.total()),
             "AdamW moments of ", opt ? opt->m().size() : 0, " elements for ", params.total(), " parameters");

  // Each rank reads only the rows it holds, from whichever shards hold them; shards are opened on
  // first use and checked to be of this step.
  std::map<int64_t, h5::File> shards;
  const auto shard = [&](int64_t s) -> std::pair<hid_t, std::string> {
    const std::string file = join_path(path, m.shard_files[static_cast<size_t>(s)]);
    auto it = shards.find(s);
    if (it == shards.end())
      it = shards.emplace(s, shard_open(file, m.step, s, static_cast<int64_t>(m.shard_files.size()))).first;
    return {it->second.get(), file};
  };
  float* arenas[3] = {params.values().data(), opt ? opt->m().data() : nullptr, opt ? opt->v().data() : nullptr};
  const int groups = opt ? 3 : 1;  // kGroups: /model, then /optim/m and /optim/v
  for (size_t i = 0; i < params.count(); ++i) {
    const ParamInfo& p = params.info(static_cast<int>(i));
    const int64_t lb = p.expert_sharded ? p.expert_begin : 0;
    const int64_t le = p.expert_sharded ? p.expert_end : p.global_shape[0];
    const int64_t row = row_elems(p.global_shape);
    for (const ManifestSlab& s : stored[i]->slabs) {
      const int64_t a = std::max(lb, s.begin), b = std::min(le, s.end);
      if (a >= b) continue;
      const auto [file, file_path] = shard(s.shard);
      for (int g = 0; g < groups; ++g) {
        h5::Dataset d = slab_open(file, file_path, kGroups[g], p.name, p.global_shape, s.begin, s.end);
        float* dst = arenas[g] + p.offset + static_cast<size_t>((a - lb) * row);
        h5::dataset_read_rows(d.get(), h5::Elem::f32, a - s.begin, b - s.begin, dst, file_path,
                              std::string(kGroups[g]) + "/" + p.name);
      }
    }
  }
  // The random and data state, restated in every shard: check it in one this rank opened.
  if (!shards.empty()) {
    const auto [file, file_path] = shard(shards.begin()->first);
    shard_check_cursors(file, file_path, m.step, m.seed);
  }

  out.state.step = m.step;
  out.state.seed = m.seed;
  out.state.lr = m.lr;
  out.state.config_ini = m.config_ini;
  out.state.build = m.build;
  out.state.tokenizer = m.tokenizer;
  out.state.tokenizer_blob = m.tokenizer_blob;
  out.state.tokenizer_hash = m.tokenizer_hash;
  out.state.world = static_cast<int>(m.world);
  out.state.ep = static_cast<int>(m.ep);
  return out;
}

}  // namespace

namespace {

TrainState load_agreed(const std::string& path, const Config& current, ParamStore& params, OptimizerMoments* opt,
                       Communicator& world) {
  h5::init_thread();
  const auto t0 = Clock::now();
  LoadResult r;
  std::string err;
  try {
    r = load_local(path, current, params, opt);
  } catch (const std::exception& e) {
    err = e.what();
  }
  agree_on_errors(world, err, "loading checkpoint " + path);
  if (world.rank() == 0)
    for (const std::string& w : r.warnings)
      log_warn("checkpoint %s: model option differs (allowed, but the resumed run is not a continuation): %s",
               path.c_str(), w.c_str());
  log_info("checkpoint: loaded step %lld from %s (written by %d ranks, ep %d) in %.2f s",
           static_cast<long long>(r.state.step), path.c_str(), r.state.world, r.state.ep, seconds_since(t0));
  return r.state;
}

}  // namespace

TrainState checkpoint_load(const std::string& path, const Config& current, ParamStore& params, OptimizerMoments& opt,
                           Communicator& world) {
  return load_agreed(path, current, params, &opt, world);
}

TrainState checkpoint_load_params(const std::string& path, const Config& current, ParamStore& params,
                                  Communicator& world) {
  return load_agreed(path, current, params, nullptr, world);
}

namespace {

// checkpoint_verify's walk (checkpoints/README.md, "Loading and resharding": the loader's checks,
// with every dataset read in full). Each problem goes to `problem`, which either throws
// (checkpoint_verify: the first problem ends it) or records it, and then the walk goes on with
// whatever can still be checked: the other tensors' coverage, the other shards, the other datasets.
void verify_walk(const std::string& path, const std::function<void(const std::string&)>& problem) {
  h5::init_thread();
  const auto check = [&](const auto& step) {
    try {
      step();
      return true;
    } catch (const std::exception& e) {
      problem(e.what());
      return false;
    }
  };
  // Without a manifest that reads and describes a possible layout, nothing else can be checked.
  std::string manifest_path;
  Manifest m;
  if (!check([&] {
        manifest_path = checkpoint_dir_check(path);
        m = manifest_read(manifest_path);
        manifest_check_layout(m, manifest_path);
      }))
    return;
  for (const ManifestTensor& t : m.tensors) check([&] { manifest_check_tensor_coverage(m, t, manifest_path); });
  std::vector<float> buf;
  for (size_t s = 0; s < m.shard_files.size(); ++s) {
    const std::string file = join_path(path, m.shard_files[s]);
    h5::File f;
    if (!check([&] {
          shard_check_present(path, m.shard_files[s]);
          f = shard_open(file, m.step, static_cast<int64_t>(s), static_cast<int64_t>(m.shard_files.size()));
        }))
      continue;
    check([&] { shard_check_cursors(f.get(), file, m.step, m.seed); });
    for (const ManifestTensor& t : m.tensors)
      for (const ManifestSlab& sl : t.slabs) {
        if (sl.shard != static_cast<int64_t>(s)) continue;
        for (const char* g : kGroups)
          check([&] {
            // slab_open checks the shape, and that the file really stores that much, before the
            // buffer is sized by it.
            h5::Dataset d = slab_open(f.get(), file, g, t.name, t.global_shape, sl.begin, sl.end);
            buf.resize(static_cast<size_t>((sl.end - sl.begin) * row_elems(t.global_shape)));
            h5::dataset_read(d.get(), h5::Elem::f32, buf.data(), file, std::string(g) + "/" + t.name);
          });
      }
    // A tensor the manifest does not give this shard would be a second copy of rows another shard
    // holds (or a tensor outside the index): every element is stored exactly once.
    for (const char* g : kGroups)
      check([&] {
        h5::Group group = h5::group_open(f.get(), g, file);
        for (const std::string& name : h5::group_members(group.get(), file, g)) {
          const auto listed = std::find_if(m.tensors.begin(), m.tensors.end(), [&](const ManifestTensor& t) {
            return t.name == name && std::any_of(t.slabs.begin(), t.slabs.end(), [&](const ManifestSlab& sl) {
                     return sl.shard == static_cast<int64_t>(s);
                   });
          });
          if (listed == m.tensors.end())
            fail(file, ": dataset ", g, "/", name, " is not in the manifest's index for this shard (",
                 manifest_path, "): a tensor the checkpoint does not list, or a second copy of rows another "
                 "shard holds");
        }
      });
  }
}

}  // namespace

void checkpoint_verify(const std::string& path) {
  verify_walk(path, [](const std::string& what) { throw Error(what); });
}

std::vector<std::string> checkpoint_verify_report(const std::string& path) {
  std::vector<std::string> problems;
  verify_walk(path, [&](const std::string& what) { problems.push_back(what); });
  return problems;
}

}  // namespace uoe
