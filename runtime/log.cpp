#include "runtime/log.hpp"

#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdlib>
#include <cstring>

namespace uoe {
namespace {
int g_rank = 0;
int g_world = 1;
std::atomic<int> g_process_rank{-1};  // read by error paths on any thread
bool g_status_shown = false;  // a status line is on the terminal and must be cleared first
FILE* g_info = nullptr;       // where log_info writes (null: stdout)

void clear_status() {
  if (!g_status_shown) return;
  fputs("\r\033[K", stdout);
  fflush(stdout);
  g_status_shown = false;
}

void vlog(FILE* f, const char* level, const char* fmt, va_list ap) {
  char buf[4096];
  vsnprintf(buf, sizeof buf, fmt, ap);
  clear_status();
  // Progress (level "") comes from rank 0 only and needs no prefix; warnings and errors name the rank.
  if (g_world > 1 && level[0] != '\0')
    fprintf(f, "%s[rank %d] %s\n", level, g_rank, buf);
  else
    fprintf(f, "%s%s\n", level, buf);
  fflush(f);
}
}  // namespace

void log_set_rank(int rank, int world) {
  g_rank = rank;
  g_world = world;
}
int log_rank() { return g_rank; }
bool log_is_root() { return g_rank == 0; }

void set_process_rank(int rank) { g_process_rank.store(rank, std::memory_order_relaxed); }
int process_rank() { return g_process_rank.load(std::memory_order_relaxed); }

void log_info(const char* fmt, ...) {
  if (g_rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  vlog(g_info ? g_info : stdout, "", fmt, ap);
  va_end(ap);
}
void log_info_to_stderr() { g_info = stderr; }
bool log_status_enabled() {
  static const bool enabled = [] {
    const char* mode = std::getenv("UOE_PROGRESS");
    if (mode && std::strcmp(mode, "plain") == 0) return false;
    if (mode && std::strcmp(mode, "live") == 0) return true;
    // Under a launcher stdout may be a pseudo-terminal that ends in a log file (Open MPI gives
    // ranks one): only a launcher that knows (uoe-launch sets UOE_PROGRESS) turns the line on.
    for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID"})
      if (std::getenv(var)) return false;
    return isatty(STDOUT_FILENO) == 1;
  }();
  return g_rank == 0 && enabled;
}

void log_status(const char* fmt, ...) {
  if (!log_status_enabled()) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(stdout, "\r%s\033[K", buf);
  fflush(stdout);
  g_status_shown = true;
}

void log_warn(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(stderr, "warning: ", fmt, ap);
  va_end(ap);
}
void log_error(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(stderr, "error: ", fmt, ap);
  va_end(ap);
}

}  // namespace uoe
