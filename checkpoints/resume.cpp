// Resolving --resume (checkpoints/README.md, "--resume"): `latest` if it verifies, else the newest
// committed step that verifies.
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/common.hpp"
#include "checkpoints/manifest.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

namespace uoe {
namespace fs = std::filesystem;
using namespace ckpt;

ResumeChoice checkpoint_choose_auto(const std::string& checkpoint_dir,
                                    const std::function<std::string(const std::string&)>& verify) {
  ResumeChoice c;
  const auto note = [&](bool warning, std::string text) { c.notes.push_back({warning, std::move(text)}); };
  std::error_code ec;
  if (!fs::is_directory(checkpoint_dir, ec)) {
    note(false, "--resume auto: " + checkpoint_dir + " does not exist yet, starting from scratch");
    return c;
  }
  std::string tried;
  const std::string latest = join_path(checkpoint_dir, "latest");
  if (fs::exists(latest, ec)) {
    const std::string name = read_latest(latest);
    if (!parse_step_name(name)) {
      note(true, latest + " holds '" + name + "', not a step_* name; ignoring it");
    } else {
      ++c.candidates;
      tried = name;
      const std::string path = join_path(checkpoint_dir, name);
      const std::string why = verify(path);
      if (why.empty()) {
        note(false, "--resume auto: resuming from " + path + " (named by " + latest + ")");
        c.path = path;
        return c;
      }
      note(true, latest + " names " + path + ", which does not verify: " + why + "; trying older checkpoints");
    }
  } else {
    note(false, "--resume auto: no " + latest + "; looking for step_* directories");
  }
  std::vector<std::pair<int64_t, std::string>> committed = list_committed(checkpoint_dir);
  for (auto it = committed.rbegin(); it != committed.rend(); ++it) {
    if (it->second == tried) continue;
    ++c.candidates;
    const std::string path = join_path(checkpoint_dir, it->second);
    const std::string why = verify(path);
    if (why.empty()) {
      note(false, "--resume auto: resuming from " + path + ", the newest committed checkpoint that verifies");
      c.path = path;
      return c;
    }
    note(true, path + " does not verify: " + why + "; skipping it");
  }
  if (c.candidates == 0) note(false, "--resume auto: no checkpoint in " + checkpoint_dir + ", starting from scratch");
  return c;
}

std::string checkpoint_resolve(const std::string& resume, const std::string& checkpoint_dir) {
  if (resume.empty()) return "";
  std::error_code ec;
  if (resume != "auto") {
    if (!fs::is_directory(resume, ec))
      fail("--resume '", resume, "': no such checkpoint directory (give a step_* directory, or 'auto')");
    return resume;
  }
  const ResumeChoice c = checkpoint_choose_auto(checkpoint_dir, [](const std::string& path) -> std::string {
    try {
      checkpoint_verify(path);
      return "";
    } catch (const std::exception& e) {
      return e.what();
    }
  });
  for (const auto& [warning, text] : c.notes) {
    if (warning)
      log_warn("checkpoint: %s", text.c_str());
    else
      log_info("checkpoint: %s", text.c_str());
  }
  if (c.path.empty() && c.candidates > 0)
    fail("--resume auto: none of the ", c.candidates, " checkpoints in ", checkpoint_dir,
         " verifies (see the warnings above); refusing to start from scratch over them: move them away or give "
         "--resume a directory");
  return c.path;
}

std::string checkpoint_resolve(const std::string& resume, const std::string& checkpoint_dir, Communicator& world) {
  std::string path, err;
  if (world.rank() == 0) {
    try {
      path = checkpoint_resolve(resume, checkpoint_dir);
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  broadcast_string(world, err);
  if (!err.empty()) throw Error(err);
  broadcast_string(world, path);
  return path;
}

}  // namespace uoe
