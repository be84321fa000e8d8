// The GPU a rank uses (gpu_binding.hpp).
#include "runtime/gpu_binding.hpp"

#include <cstdlib>
#include <set>

namespace uoe {
namespace {

// The entries of a CUDA_VISIBLE_DEVICES list ("0,1", "GPU-8f3c…", "MIG-…"), spaces trimmed.
std::vector<std::string> entries(const std::string& list) {
  std::vector<std::string> out;
  std::string cur;
  auto flush = [&] {
    const auto b = cur.find_first_not_of(' ');
    if (b != std::string::npos) out.push_back(cur.substr(b, cur.find_last_not_of(' ') - b + 1));
    cur.clear();
  };
  for (const char ch : list) {
    if (ch == ',') flush();
    else cur += ch;
  }
  flush();
  return out;
}

std::string describe(const std::vector<std::optional<std::string>>& lists) {
  std::string s;
  for (std::size_t i = 0; i < lists.size(); ++i) {
    s += (i ? ", " : "") + std::string("local rank ") + std::to_string(i) + ": " +
         (lists[i] ? "\"" + *lists[i] + "\"" : std::string("unset"));
  }
  return s;
}

// Every rank of the node has its own non-empty list, and no GPU is in two lists.
bool per_rank_lists(const std::vector<std::optional<std::string>>& lists) {
  if (lists.size() < 2) return false;
  std::set<std::string> seen;
  for (const auto& l : lists) {
    if (!l) return false;
    const std::vector<std::string> e = entries(*l);
    if (e.empty()) return false;
    for (const std::string& g : e)
      if (!seen.insert(g).second) return false;
  }
  return true;
}

}  // namespace

GpuChoice gpu_choose(int visible, int local_rank, int local_size,
                     const std::vector<std::optional<std::string>>& node_visible_devices) {
  GpuChoice c;
  if (local_size < 1 || local_rank < 0 || local_rank >= local_size) {
    c.error = "node rank " + std::to_string(local_rank) + " of " + std::to_string(local_size) +
              " ranks on this node: pass ProcessGroups' node_rank and node_size";
    return c;
  }
  if (!node_visible_devices.empty() && static_cast<int>(node_visible_devices.size()) != local_size) {
    c.error = std::to_string(node_visible_devices.size()) + " CUDA_VISIBLE_DEVICES values for " +
              std::to_string(local_size) + " ranks on this node";
    return c;
  }
  if (visible <= 0) {
    c.error = "no usable GPU: 0 devices visible";
    if (!node_visible_devices.empty() && node_visible_devices[local_rank])
      c.error += " (CUDA_VISIBLE_DEVICES=\"" + *node_visible_devices[local_rank] + "\")";
    return c;
  }
  if (per_rank_lists(node_visible_devices)) {
    // Each rank was given its own GPUs: the first one it sees is its own.
    c.device = 0;
    c.per_rank = true;
    return c;
  }
  if (local_size <= visible) {
    c.device = local_rank;
    return c;
  }
  c.error = std::to_string(local_size) + " ranks on this node but " + std::to_string(visible) +
            " GPU(s) visible: NCCL needs one GPU per rank. Run at most " + std::to_string(visible) +
            " ranks per node, or give each rank its own GPU (srun --gpus-per-task=1, or CUDA_VISIBLE_DEVICES "
            "set per local rank to disjoint lists)";
  if (!node_visible_devices.empty()) c.error += "; CUDA_VISIBLE_DEVICES here: " + describe(node_visible_devices);
  return c;
}

std::optional<std::string> visible_devices_from_env() {
  const char* v = std::getenv("CUDA_VISIBLE_DEVICES");
  if (!v) return std::nullopt;
  return std::string(v);
}

}  // namespace uoe
