#include "runtime/threads.hpp"

#include <algorithm>
#include <exception>
#include <mutex>

namespace uoe {
namespace {
int g_threads = 1;
thread_local bool t_inside = false;
}  // namespace

void threads_set(int n) { g_threads = std::max(1, n); }
int threads_count() { return g_threads; }
bool threads_inside() { return t_inside; }

void parallel_ranges(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  const int64_t parts = std::min<int64_t>(g_threads, n / std::max<int64_t>(1, grain));
  if (parts <= 1 || t_inside) {
    fn(0, n);
    return;
  }
  std::exception_ptr error;
  std::mutex error_mutex;
  // One part per thread of a team of exactly `parts` (serial without OpenMP, CMakeLists.txt).
#pragma omp parallel for num_threads(static_cast<int>(parts)) schedule(static, 1)
  for (int64_t p = 0; p < parts; ++p) {
    t_inside = true;
    try {
      fn(n * p / parts, n * (p + 1) / parts);
    } catch (...) {
      const std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
    t_inside = false;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace uoe
