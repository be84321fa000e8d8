// Helpers shared by the checkpoint sources (common.hpp).
#include "checkpoints/common.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <sstream>
#include <system_error>

#include "checkpoints/manifest.hpp"
#include "runtime/error.hpp"

namespace uoe::ckpt {
namespace fs = std::filesystem;

std::string join_path(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

std::string read_latest(const std::string& latest_path) {
  // One short line is all `latest` ever holds: read no more than that, whatever the file is.
  std::ifstream in(latest_path, std::ios::binary);
  char buf[64] = {0};
  in.read(buf, sizeof buf - 1);
  std::string name(buf, static_cast<size_t>(in.gcount()));
  name = name.substr(0, name.find('\n'));
  while (!name.empty() && (name.back() == '\r' || name.back() == ' ')) name.pop_back();
  return name;
}

std::vector<std::pair<int64_t, std::string>> list_committed(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::optional<int64_t> step = parse_step_name(name);
    if (step && e.is_directory(ec)) out.emplace_back(*step, name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void broadcast_string(Communicator& world, std::string& s, int root) {
  int64_t len = static_cast<int64_t>(s.size());
  world.broadcast(std::span<int64_t>(&len, 1), root);
  s.resize(static_cast<size_t>(len));
  if (len) world.broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(s.data()), s.size()), root);
}

Failures failures_from_flags(const std::vector<double>& failed) {
  Failures f;
  std::ostringstream list;
  for (size_t r = 0; r < failed.size(); ++r)
    if (failed[r] != 0) {
      list << (f.count++ ? ", " : "") << r;
      if (f.first < 0) f.first = static_cast<int>(r);
    }
  f.ranks = (f.count > 1 ? "ranks " : "rank ") + list.str();
  return f;
}

std::string first_reason(Communicator& world, const Failures& f, const std::string& local_error) {
  std::string reason = world.rank() == f.first ? local_error : std::string();
  broadcast_string(world, reason, f.first);
  return reason;
}

void agree_on_errors(Communicator& world, const std::string& local_error, const std::string& what) {
  std::vector<double> failed(static_cast<size_t>(world.size()), 0.0);
  failed[static_cast<size_t>(world.rank())] = local_error.empty() ? 0.0 : 1.0;
  world.all_reduce_sum(std::span<double>(failed));
  const Failures f = failures_from_flags(failed);
  if (f.count == 0) return;
  const std::string reason = first_reason(world, f, local_error);
  if (!local_error.empty()) throw CollectiveError(local_error);
  throw CollectiveError(what + " failed on " + f.ranks + "; rank " + std::to_string(f.first) + ": " + reason);
}

}  // namespace uoe::ckpt
