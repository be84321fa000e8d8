// Where a step's time goes: GEMM / attention / routing / exchange / optimizer / other, by scoped
// timers in the model code, recording only on a thread that called profile_start (bench-step);
// in normal training no thread has, and a scope costs one thread-local load and a branch.
//
// Time is exclusive: a scope inside another (the GEMMs of an attention expert, the router's GEMM)
// charges its own time to its phase and pauses the outer one, so the phases add up to the wall
// time between profile_start and profile_stop; "other" is what no scope covered (LayerNorm, GELU,
// embedding and loss, the combine, bookkeeping). Work that a scope's thread hands to other threads
// (OpenBLAS's, the communication thread) is counted as the caller's wall time in that scope.
#pragma once
#include <array>

namespace uoe {

enum class Phase : int { other = 0, gemm, attention, routing, exchange, optimizer };
constexpr int kPhases = 6;
const char* phase_name(Phase p);

struct PhaseSeconds {
  std::array<double, kPhases> seconds{};
  double total() const;
};

struct ProfileState;
extern thread_local ProfileState* t_profile;  // non-null while this thread records

// Starts recording on the calling thread (its time from now is "other" until a scope opens).
void profile_start();
// Stops recording and returns the seconds per phase since profile_start.
PhaseSeconds profile_stop();

void profile_enter(Phase p);
void profile_leave();

class ProfileScope {
 public:
  explicit ProfileScope(Phase p) : on_(t_profile != nullptr) {
    if (on_) profile_enter(p);
  }
  ~ProfileScope() {
    if (on_) profile_leave();
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  bool on_;
};

}  // namespace uoe
