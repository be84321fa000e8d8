// The communication scheduler: exchanges run on a dedicated communication thread, in the order
// they were submitted, while the calling (compute) thread goes on with expert GEMMs; the compute
// thread waits for an exchange only when it needs its result. Every rank submits the same
// collectives in the same order (program order), so the FIFO keeps them matched across ranks.
//
// MPI thread level: during a step only the communication thread calls MPI, and the compute thread
// calls MPI only after wait_all() (the queue's mutex orders the two), so MPI_THREAD_SERIALIZED is
// enough; MpiSession asks for it. The GPU path maps the same schedule to a communication stream.
//
// Synchronous mode (no thread) runs each task inside submit(): the serial baseline, with the same
// accounting, so the overlap can be measured against it.
//
// Accounting, per step (reset() between steps):
//   busy     — seconds the tasks took to run (the exchange time);
//   exposed  — seconds the compute thread spent blocked in wait()/wait_all() (exchange not hidden);
//   cpu      — processor seconds the tasks used (MPI's copies, and its polling while a peer is late):
//              what the exchanges take from the cores the compute runs on, when there is no spare one.
// comm hidden % = 1 − exposed / busy.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace uoe {

class CommScheduler {
 public:
  using Ticket = uint64_t;

  explicit CommScheduler(bool threaded);
  ~CommScheduler();  // finishes queued tasks, then joins the thread
  CommScheduler(const CommScheduler&) = delete;
  CommScheduler& operator=(const CommScheduler&) = delete;

  bool threaded() const { return threaded_; }
  // Queues fn (threaded) or runs it now (synchronous). After a task has failed, later tasks are
  // skipped: their peers' collectives may never come, and the failure is what must be reported.
  Ticket submit(std::function<void()> fn);
  // Blocks until task t has run; rethrows the first failure of any task up to t.
  void wait(Ticket t);
  void wait_all();

  double busy_seconds() const;
  double exposed_seconds() const { return exposed_; }
  double cpu_seconds() const;
  void reset_counters();

 private:
  void run_worker();
  void rethrow_if_failed(Ticket upto);

  const bool threaded_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<Ticket, std::function<void()>>> queue_;
  Ticket submitted_ = 0, completed_ = 0;
  Ticket failed_at_ = 0;           // ticket of the first failed task (0: none)
  std::exception_ptr failure_;
  bool stop_ = false;
  double busy_ = 0, exposed_ = 0, cpu_ = 0;
  std::thread worker_;
};

}  // namespace uoe
