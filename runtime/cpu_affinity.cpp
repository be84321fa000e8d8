// Threads from the CPU affinity mask (cpu_affinity.hpp).
#include "runtime/cpu_affinity.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace uoe {

std::vector<int> affinity_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.empty()) {
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    for (int c = 0; c < std::max(1L, online); ++c) cpus.push_back(c);
  }
  return cpus;
}

int default_threads() { return std::max(1, static_cast<int>(affinity_cpus().size())); }

int default_threads(const std::vector<int>& mine, const std::vector<int>& ranks_on_cpu) {
  double share = 0;
  for (const int c : mine) {
    const int n = c >= 0 && c < static_cast<int>(ranks_on_cpu.size()) ? ranks_on_cpu[c] : 1;
    share += 1.0 / std::max(1, n);
  }
  // 3 × (1/3) is 0.999…9 in floating point: a whole CPU's worth must count as one.
  return std::max(1, static_cast<int>(std::floor(share + 1e-9)));
}

int node_cpus(const std::vector<int>& ranks_on_cpu) {
  const auto used = std::count_if(ranks_on_cpu.begin(), ranks_on_cpu.end(), [](int n) { return n > 0; });
  return std::max(1, static_cast<int>(used));
}

}  // namespace uoe
