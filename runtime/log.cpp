#include "runtime/log.hpp"

#include <cstdarg>

namespace uoe {
namespace {
int g_rank = 0;
int g_world = 1;

void vlog(FILE* f, const char* level, const char* fmt, va_list ap) {
  char buf[4096];
  vsnprintf(buf, sizeof buf, fmt, ap);
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

void log_info(const char* fmt, ...) {
  if (g_rank != 0) return;
  va_list ap;
  va_start(ap, fmt);
  vlog(stdout, "", fmt, ap);
  va_end(ap);
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
