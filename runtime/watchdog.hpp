// The collective watchdog: a stuck exchange must end the job with a report, never hang it.
//
// Code about to wait on other ranks opens a WatchScope naming where it is (layer, block, phase,
// chunk). A watchdog thread per rank checks once a second; when one scope has been open longer
// than the timeout (--collective-timeout), it prints where this rank waits, gives the other ranks
// a moment to print theirs (each rank's watchdog fires on its own clock), and aborts the job
// through the supplied callback (MPI_Abort in uoe-train). Scopes may be opened on the training or
// the communication thread; the oldest open one is the one reported.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace uoe {

class Watchdog {
 public:
  // on_timeout receives the report and must not return (e.g. MPI_Abort); `grace` is how long to
  // wait after printing before calling it.
  Watchdog(double timeout_s, std::function<void(const std::string&)> on_timeout, double grace_s = 2.0);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // The process-wide watchdog that WatchScope reports to (null: scopes cost almost nothing).
  static Watchdog* active();

 private:
  friend class WatchScope;
  void run();
  uint64_t enter(const std::string& where);
  void leave(uint64_t id);

  double timeout_s_, grace_s_;
  std::function<void(const std::string&)> on_timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  struct Open {
    uint64_t id;
    std::string where;
    std::chrono::steady_clock::time_point since;
  };
  std::vector<Open> open_;  // scopes open now, oldest first
  uint64_t next_id_ = 0;
  std::thread thread_;
};

// RAII: "this thread now waits on other ranks, at `where`".
class WatchScope {
 public:
  explicit WatchScope(const std::string& where);
  ~WatchScope();
  WatchScope(const WatchScope&) = delete;
  WatchScope& operator=(const WatchScope&) = delete;

 private:
  Watchdog* dog_;
  uint64_t id_ = 0;
};

}  // namespace uoe
