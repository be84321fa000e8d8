// Resolving --resume (checkpoints/README.md, "--resume"): `latest` if it verifies, else the newest
// committed step that verifies.
#include <filesystem>
#include <fstream>
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

std::string checkpoint_resolve(const std::string& resume, const std::string& checkpoint_dir) {
  if (resume.empty()) return "";
  std::error_code ec;
  if (resume != "auto") {
    if (!fs::is_directory(resume, ec))
      fail("--resume '", resume, "': no such checkpoint directory (give a step_* directory, or 'auto')");
    return resume;
  }
  if (!fs::is_directory(checkpoint_dir, ec)) {
    log_info("checkpoint: --resume auto: %s does not exist yet, starting from scratch", checkpoint_dir.c_str());
    return "";
  }
  const auto try_verify = [](const std::string& path, std::string* why) {
    try {
      checkpoint_verify(path);
      return true;
    } catch (const std::exception& e) {
      *why = e.what();
      return false;
    }
  };
  int candidates = 0;
  std::string tried;
  const std::string latest = join_path(checkpoint_dir, "latest");
  if (fs::exists(latest, ec)) {
    // One short line is all `latest` ever holds: read no more than that, whatever the file is.
    std::ifstream in(latest, std::ios::binary);
    char buf[64] = {0};
    in.read(buf, sizeof buf - 1);
    std::string name(buf, static_cast<size_t>(in.gcount()));
    name = name.substr(0, name.find('\n'));
    while (!name.empty() && (name.back() == '\r' || name.back() == ' ')) name.pop_back();
    if (!parse_step_name(name)) {
      log_warn("checkpoint: %s holds '%s', not a step_* name; ignoring it", latest.c_str(), name.c_str());
    } else {
      ++candidates;
      tried = name;
      const std::string path = join_path(checkpoint_dir, name);
      std::string why;
      if (try_verify(path, &why)) {
        log_info("checkpoint: --resume auto: resuming from %s (named by %s)", path.c_str(), latest.c_str());
        return path;
      }
      log_warn("checkpoint: %s names %s, which does not verify: %s; trying older checkpoints", latest.c_str(),
               path.c_str(), why.c_str());
    }
  } else {
    log_info("checkpoint: --resume auto: no %s; looking for step_* directories", latest.c_str());
  }
  std::vector<std::pair<int64_t, std::string>> committed = list_committed(checkpoint_dir);
  for (auto it = committed.rbegin(); it != committed.rend(); ++it) {
    if (it->second == tried) continue;
    ++candidates;
    const std::string path = join_path(checkpoint_dir, it->second);
    std::string why;
    if (try_verify(path, &why)) {
      log_info("checkpoint: --resume auto: resuming from %s, the newest committed checkpoint that verifies",
               path.c_str());
      return path;
    }
    log_warn("checkpoint: %s does not verify: %s; skipping it", path.c_str(), why.c_str());
  }
  if (candidates > 0)
    fail("--resume auto: none of the ", candidates, " checkpoints in ", checkpoint_dir,
         " verifies (see the warnings above); refusing to start from scratch over them: move them away or give "
         "--resume a directory");
  log_info("checkpoint: --resume auto: no checkpoint in %s, starting from scratch", checkpoint_dir.c_str());
  return "";
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
