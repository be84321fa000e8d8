// uoe-ckpt verify CKPT [--all]: checkpoint_verify_report (checkpoints/checkpoint.hpp: the loader's
// own checks, every dataset read in full) on one checkpoint, or on every committed step of a
// --checkpoint-dir with what `--resume auto` would take (checkpoint_choose_auto).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <system_error>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/inspect.hpp"
#include "checkpoints/manifest.hpp"
#include "launcher/uoe_ckpt.hpp"
#include "runtime/cli.hpp"
#include "runtime/error.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace uoe {
namespace {

struct VerifyOptions {
  std::string checkpoint;
  bool all = false;
};

constexpr const char* kUsage = "uoe-ckpt verify CKPT [--all]";

bool parse(int argc, char** argv, VerifyOptions& o) {
  po::options_description desc(
      "Reads every dataset of every shard (each chunk's Fletcher32 checksum), and checks each against the\n"
      "manifest's index: dtype, shape, slab attributes, and that the slabs cover every tensor exactly once.\n"
      "Names every problem (file, dataset, what was expected); exit 1 if there is any. CKPT: a step directory,\n"
      "or a --checkpoint-dir (the step its 'latest' names).\n\n"
      "Options",
      100, 50);
  desc.add_options()("all", po::bool_switch(&o.all),
                     "CKPT is a --checkpoint-dir: verify every committed step_* in it, and say which one "
                     "`uoe-train --resume auto` would take");
  po::variables_map vm;
  return ckpt_parse(argc, argv, kUsage, desc, {{"CKPT", &o.checkpoint}}, vm);
}

// Prints the verdict on one step directory; returns its problems.
std::vector<std::string> verify_one(const std::string& path, const char* indent) {
  const std::vector<std::string> problems = checkpoint_verify_report(path);
  if (problems.empty()) {
    std::printf("%s%s: ok (every dataset read, checksums, shapes, dtypes and coverage as the manifest says)\n", indent,
                path.c_str());
  } else {
    std::printf("%s%s: %zu problem%s\n", indent, path.c_str(), problems.size(), problems.size() > 1 ? "s" : "");
    for (const std::string& p : problems) std::printf("%s  - %s\n", indent, p.c_str());
  }
  std::fflush(stdout);
  return problems;
}

int verify_all(const std::string& dir) {
  if (!checkpoint_is_run_dir(dir)) {
    checkpoint_step_dir(dir);  // a clear error when dir is missing or not a directory
    fail("--all: ", dir, " is one checkpoint (it holds manifest.h5); --all takes a --checkpoint-dir, the directory "
         "holding step_* and latest (verify ", dir, " without --all)");
  }
  std::vector<std::pair<int64_t, std::string>> steps;
  std::vector<std::string> uncommitted;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory(ec)) continue;
    if (const auto step = parse_step_name(name))
      steps.emplace_back(*step, name);
    else if (name.starts_with("step_") && (name.ends_with(".tmp") || name.ends_with(".old")))
      uncommitted.push_back(name);
  }
  if (ec) fail(dir, ": cannot list the directory: ", ec.message());
  std::sort(steps.begin(), steps.end());
  std::sort(uncommitted.begin(), uncommitted.end());
  std::printf("%s: %zu committed checkpoint%s\n", dir.c_str(), steps.size(), steps.size() == 1 ? "" : "s");
  std::map<std::string, std::vector<std::string>> reports;  // by path
  size_t bad = 0;
  for (const auto& [step, name] : steps) {
    const std::string path = (fs::path(dir) / name).string();
    reports[path] = verify_one(path, "  ");
    bad += !reports[path].empty();
  }
  for (const std::string& name : uncommitted)
    std::printf("  %s: not committed (a write a crash or a failed save left; --resume ignores it, the next commit "
                "removes it)\n", (fs::path(dir) / name).string().c_str());
  // What --resume auto would take: its own logic, fed the reports above (a `latest` naming a
  // directory not listed above is verified here).
  const ResumeChoice choice = checkpoint_choose_auto(dir, [&](const std::string& path) -> std::string {
    auto it = reports.find(path);
    if (it == reports.end()) it = reports.emplace(path, checkpoint_verify_report(path)).first;
    return it->second.empty() ? "" : it->second.front();
  });
  std::printf("\nhow uoe-train --resume auto decides (its own logic, on the results above):\n");
  for (const auto& [warning, text] : choice.notes) std::printf("  %s%s\n", warning ? "warning: " : "", text.c_str());
  if (!choice.path.empty())
    std::printf("uoe-train --resume auto would take %s\n", choice.path.c_str());
  else if (choice.candidates > 0)
    std::printf("uoe-train --resume auto would refuse to start: none of the %d checkpoints verifies\n", choice.candidates);
  else
    std::printf("uoe-train --resume auto would start from scratch: no checkpoint in %s\n", dir.c_str());
  std::fflush(stdout);
  if (steps.empty()) fail(dir, " holds no committed checkpoint (step_* directory)");
  if (bad) fail(bad, " of the ", steps.size(), " checkpoints in ", dir, " do not verify (problems above)");
  return 0;
}

int run(const VerifyOptions& o) {
  if (o.all) return verify_all(o.checkpoint);
  const std::string path = checkpoint_step_dir(o.checkpoint);
  const std::vector<std::string> problems = verify_one(path, "");
  if (!problems.empty())
    fail("checkpoint ", path, " does not verify: ", problems.size(), " problem", problems.size() > 1 ? "s" : "",
         " (above)");
  return 0;
}

}  // namespace

int ckpt_verify_main(int argc, char** argv) {
  VerifyOptions o;
  return cli_main("uoe-ckpt verify", [&] { return parse(argc, argv, o); }, [&] { return run(o); });
}

}  // namespace uoe
