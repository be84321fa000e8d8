#include "runtime/watchdog.hpp"

#include "runtime/error.hpp"
#include "runtime/log.hpp"

namespace uoe {
namespace {
std::atomic<Watchdog*> g_active{nullptr};
}

Watchdog::Watchdog(double timeout_s, std::function<void(const std::string&)> on_timeout, double grace_s)
    : timeout_s_(timeout_s), grace_s_(grace_s), on_timeout_(std::move(on_timeout)) {
  UOE_ASSERT(timeout_s > 0 && g_active.load() == nullptr, "one watchdog per process");
  thread_ = std::thread([this] { run(); });
  g_active.store(this);
}

Watchdog::~Watchdog() {
  g_active.store(nullptr);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Watchdog* Watchdog::active() { return g_active.load(); }

uint64_t Watchdog::enter(const std::string& where) {
  std::lock_guard<std::mutex> lock(mu_);
  open_.push_back({++next_id_, where, std::chrono::steady_clock::now()});
  return next_id_;
}

void Watchdog::leave(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < open_.size(); ++i)
    if (open_[i].id == id) {
      open_.erase(open_.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
}

void Watchdog::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::seconds(1));
    if (stop_ || open_.empty()) continue;
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - open_.front().since).count();
    if (waited < timeout_s_) continue;
    char report[512];
    std::snprintf(report, sizeof report,
                  "collective timeout: waited %.0f s (--collective-timeout %.0f) in %s; another rank is stuck, dead "
                  "or far behind. Aborting the job.",
                  waited, timeout_s_, open_.front().where.c_str());
    log_error("%s", report);
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::duration<double>(grace_s_));
    on_timeout_(report);
    lock.lock();
  }
}

WatchScope::WatchScope(const std::string& where) : dog_(Watchdog::active()) {
  if (dog_) id_ = dog_->enter(where);
}
WatchScope::~WatchScope() {
  if (dog_) dog_->leave(id_);
}

}  // namespace uoe
