// uoe-ckpt info CKPT [--json]: what a checkpoint holds (checkpoints/inspect.hpp), for people or,
// with --json, for scripts.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

#include "checkpoints/inspect.hpp"
#include "checkpoints/manifest.hpp"
#include "launcher/uoe_ckpt.hpp"
#include "runtime/cli.hpp"

namespace po = boost::program_options;

namespace uoe {
namespace {

struct InfoOptions {
  std::string checkpoint;
  bool json = false;
};

constexpr const char* kUsage = "uoe-ckpt info CKPT [--json]";

bool parse(int argc, char** argv, InfoOptions& o) {
  po::options_description desc("Prints a checkpoint's manifest (format version, step, world size, ep, the build that "
                               "wrote it),\nthe run's options and the tensor table of /model, /optim/m and /optim/v. "
                               "CKPT: a step directory,\nor a --checkpoint-dir (the step its 'latest' names).\n\n"
                               "Options",
                               100, 50);
  desc.add_options()("json", po::bool_switch(&o.json), "print one JSON object instead (for scripts)");
  po::variables_map vm;
  return ckpt_parse(argc, argv, kUsage, desc, {{"CKPT", &o.checkpoint}}, vm);
}

std::string bytes_text(int64_t n) {
  char buf[32];
  if (n < 1024)
    std::snprintf(buf, sizeof buf, "%lld B", static_cast<long long>(n));
  else if (n < (int64_t{1} << 20))
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(n) / 1024);
  else if (n < (int64_t{1} << 30))
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(n) / (1 << 20));
  else
    std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(n) / (1 << 30));
  return buf;
}

std::string slabs_text(const CheckpointTensorInfo& t) {
  std::ostringstream os;
  for (size_t i = 0; i < t.slabs.size(); ++i)
    os << (i ? "  " : "") << t.slabs[i].shard << ": [" << t.slabs[i].begin << ", " << t.slabs[i].end << ")";
  return os.str();
}

const char* group_meaning(const std::string& g) {
  if (g == "/model") return "parameters";
  if (g == "/optim/m") return "AdamW first moments";
  if (g == "/optim/v") return "AdamW second moments";
  return "";
}

void print_text(const CheckpointInfo& c) {
  const Manifest& m = c.manifest;
  std::printf("checkpoint      %s\n", c.path.c_str());
  std::printf("format version  %lld\n", static_cast<long long>(m.format_version));
  std::printf("step            %lld\n", static_cast<long long>(m.step));
  std::printf("seed            %llu\n", static_cast<unsigned long long>(m.seed));
  std::printf("lr              %.9g (of that step)\n", m.lr);
  std::printf("world size      %lld ranks, ep %lld (%lld shard files, one per ep position)\n",
              static_cast<long long>(m.world), static_cast<long long>(m.ep), static_cast<long long>(m.shard_files.size()));
  std::printf("written by      %s\n", m.build.empty() ? "(not recorded: written before checkpoints stored it)" : m.build.c_str());
  for (size_t s = 0; s < c.shards.size(); ++s)
    std::printf("%-15s %s  %s\n", s ? "" : "shard files", c.shards[s].file.c_str(),
                c.shards[s].bytes < 0 ? "MISSING" : bytes_text(c.shards[s].bytes).c_str());
  std::printf("\noptions (the run's config as stored):\n");
  for (const auto& [key, value] : config_ini_entries(m.config_ini)) std::printf("  %s = %s\n", key.c_str(), value.c_str());

  size_t name_w = 6, shape_w = 5, slab_w = 19;
  for (const CheckpointTensorInfo& t : c.tensors) {
    name_w = std::max(name_w, t.name.size());
    shape_w = std::max(shape_w, checkpoint_shape_text(t.global_shape).size());
    slab_w = std::max(slab_w, slabs_text(t).size());
  }
  std::string group;
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const CheckpointTensorInfo& t = c.tensors[i];
    if (t.group != group) {
      group = t.group;
      int64_t count = 0, elements = 0, bytes = 0;
      for (const CheckpointTensorInfo& u : c.tensors)
        if (u.group == group) ++count, elements += u.elements, bytes += u.bytes;
      std::printf("\n%s (%s): %lld tensors, %lld elements, %s\n", group.c_str(), group_meaning(group),
                  static_cast<long long>(count), static_cast<long long>(elements), bytes_text(bytes).c_str());
      std::printf("  %-*s  %-*s  %-8s  %-*s  %s\n", static_cast<int>(name_w), "tensor", static_cast<int>(shape_w),
                  "shape", "dtype", static_cast<int>(slab_w), "slabs (shard: rows)", "bytes");
    }
    std::printf("  %-*s  %-*s  %-8s  %-*s  %lld\n", static_cast<int>(name_w), t.name.c_str(), static_cast<int>(shape_w),
                checkpoint_shape_text(t.global_shape).c_str(), t.dtype.c_str(), static_cast<int>(slab_w),
                slabs_text(t).c_str(), static_cast<long long>(t.bytes));
  }
  if (!c.notes.empty()) {
    std::printf("\nnot readable (uoe-ckpt verify says more):\n");
    for (const std::string& n : c.notes) std::printf("  %s\n", n.c_str());
  }
}

void print_json(const CheckpointInfo& c) {
  const Manifest& m = c.manifest;
  nlohmann::ordered_json j;
  j["checkpoint"] = c.path;
  j["format_version"] = m.format_version;
  j["step"] = m.step;
  j["seed"] = m.seed;
  j["lr"] = m.lr;
  j["world"] = m.world;
  j["ep"] = m.ep;
  j["build"] = m.build;
  j["config_ini"] = m.config_ini;
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  for (const auto& [key, value] : config_ini_entries(m.config_ini)) config[key] = value;
  j["config"] = config;
  nlohmann::ordered_json shards = nlohmann::ordered_json::array();
  for (size_t s = 0; s < c.shards.size(); ++s)
    shards.push_back({{"shard", s},
                      {"file", c.shards[s].file},
                      {"bytes", c.shards[s].bytes < 0 ? nlohmann::ordered_json() : nlohmann::ordered_json(c.shards[s].bytes)}});
  j["shards"] = shards;
  nlohmann::ordered_json tensors = nlohmann::ordered_json::array();
  for (const CheckpointTensorInfo& t : c.tensors) {
    nlohmann::ordered_json slabs = nlohmann::ordered_json::array();
    for (const CheckpointSlabInfo& s : t.slabs) {
      const size_t shard = static_cast<size_t>(s.shard);
      slabs.push_back({{"shard", s.shard},
                       {"file", shard < m.shard_files.size() ? nlohmann::ordered_json(m.shard_files[shard]) : nlohmann::ordered_json()},
                       {"rows", {s.begin, s.end}},
                       {"elements", s.elements},
                       {"bytes", s.elements * static_cast<int64_t>(sizeof(float))}});
    }
    tensors.push_back({{"group", t.group},
                       {"name", t.name},
                       {"global_shape", t.global_shape},
                       {"dtype", t.dtype},
                       {"elements", t.elements},
                       {"bytes", t.bytes},
                       {"slabs", slabs}});
  }
  j["tensors"] = tensors;
  j["notes"] = c.notes;
  std::cout << j.dump(2) << "\n";
}

int run(const InfoOptions& o) {
  const CheckpointInfo c = checkpoint_inspect(checkpoint_step_dir(o.checkpoint));
  if (o.json)
    print_json(c);
  else
    print_text(c);
  return 0;
}

}  // namespace

int ckpt_info_main(int argc, char** argv) {
  InfoOptions o;
  return cli_main("uoe-ckpt info", [&] { return parse(argc, argv, o); }, [&] { return run(o); });
}

}  // namespace uoe
