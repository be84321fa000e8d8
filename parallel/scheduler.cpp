#include "parallel/scheduler.hpp"

#include <chrono>

#include "runtime/clock.hpp"
#include "runtime/profile.hpp"

namespace uoe {
namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }
}  // namespace

CommScheduler::CommScheduler(bool threaded) : threaded_(threaded) {
  if (threaded_) worker_ = std::thread([this] { run_worker(); });
}

CommScheduler::~CommScheduler() {
  if (!threaded_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  worker_.join();
}

CommScheduler::Ticket CommScheduler::submit(std::function<void()> fn) {
  if (!threaded_) {
    const Ticket t = ++submitted_;
    if (!failure_) {
      const auto t0 = Clock::now();
      const double c0 = thread_cpu_seconds();
      try {
        const ProfileScope profile(Phase::exchange);
        fn();
      } catch (...) {
        failure_ = std::current_exception();
        failed_at_ = t;
      }
      const double cpu = thread_cpu_seconds() - c0;  // read inside the wall interval: cpu ≤ dt
      const double dt = since(t0);
      busy_ += dt;
      cpu_ += cpu;
      exposed_ += dt;  // the caller waited for all of it
    }
    completed_ = t;
    rethrow_if_failed(t);
    return t;
  }
  Ticket t;
  {
    std::lock_guard<std::mutex> lock(mu_);
    t = ++submitted_;
    queue_.emplace_back(t, std::move(fn));
  }
  cv_.notify_all();
  return t;
}

void CommScheduler::run_worker() {
  for (;;) {
    std::pair<Ticket, std::function<void()>> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop requested and nothing left
      task = std::move(queue_.front());
      queue_.pop_front();
      if (failure_) {  // skip: see submit()
        completed_ = task.first;
        cv_.notify_all();
        continue;
      }
    }
    const auto t0 = Clock::now();
    const double c0 = thread_cpu_seconds();
    std::exception_ptr err;
    try {
      task.second();
    } catch (...) {
      err = std::current_exception();
    }
    const double cpu = thread_cpu_seconds() - c0;  // read inside the wall interval: cpu ≤ dt
    const double dt = since(t0);
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ += dt;
      cpu_ += cpu;
      if (err && !failure_) {
        failure_ = err;
        failed_at_ = task.first;
      }
      completed_ = task.first;
    }
    cv_.notify_all();
  }
}

void CommScheduler::rethrow_if_failed(Ticket upto) {
  if (failure_ && failed_at_ <= upto) std::rethrow_exception(failure_);
}

void CommScheduler::wait(Ticket t) {
  if (!threaded_) {
    rethrow_if_failed(t);
    return;
  }
  const auto t0 = Clock::now();
  const ProfileScope profile(Phase::exchange);  // the exchange's exposed time
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return completed_ >= t; });
  exposed_ += since(t0);
  rethrow_if_failed(t);
}

void CommScheduler::wait_all() {
  Ticket t;
  {
    std::lock_guard<std::mutex> lock(mu_);
    t = submitted_;
  }
  wait(t);
}

double CommScheduler::busy_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return busy_;
}

double CommScheduler::cpu_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cpu_;
}

void CommScheduler::reset_counters() {
  std::lock_guard<std::mutex> lock(mu_);
  busy_ = 0;
  exposed_ = 0;
  cpu_ = 0;
}

}  // namespace uoe
