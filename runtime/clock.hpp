// Processor-time clock shared by the code that measures or paces a thread's CPU use (the exchange
// scheduler's accounting, the checkpoint writer's pacing, the overlap benchmark).
#pragma once
#include <time.h>

namespace uoe {

// Processor seconds the calling thread has used (CLOCK_THREAD_CPUTIME_ID).
inline double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

}  // namespace uoe
