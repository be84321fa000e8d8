#include "runtime/profile.hpp"

#include <chrono>

#include "runtime/error.hpp"

namespace uoe {

struct ProfileState {
  static constexpr int kDepth = 32;
  std::array<Phase, kDepth> stack{};
  int depth = 0;  // stack[depth - 1] is the phase being charged
  std::chrono::steady_clock::time_point last;
  PhaseSeconds totals;

  void charge(std::chrono::steady_clock::time_point now) {
    totals.seconds[static_cast<int>(stack[depth - 1])] += std::chrono::duration<double>(now - last).count();
    last = now;
  }
};

thread_local ProfileState* t_profile = nullptr;
namespace {
thread_local ProfileState t_state;
}

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::gemm: return "GEMM";
    case Phase::attention: return "attention";
    case Phase::routing: return "routing";
    case Phase::exchange: return "exchange";
    case Phase::optimizer: return "optimizer";
    case Phase::other: break;
  }
  return "other";
}

double PhaseSeconds::total() const {
  double s = 0;
  for (double x : seconds) s += x;
  return s;
}

void profile_start() {
  t_state = ProfileState{};
  t_state.stack[0] = Phase::other;
  t_state.depth = 1;
  t_state.last = std::chrono::steady_clock::now();
  t_profile = &t_state;
}

PhaseSeconds profile_stop() {
  if (!t_profile) return {};
  t_state.charge(std::chrono::steady_clock::now());
  t_profile = nullptr;
  return t_state.totals;
}

void profile_enter(Phase p) {
  ProfileState& s = *t_profile;
  UOE_ASSERT(s.depth < ProfileState::kDepth);
  s.charge(std::chrono::steady_clock::now());
  s.stack[s.depth++] = p;
}

void profile_leave() {
  if (!t_profile) return;  // recording stopped inside the scope: nothing to charge
  ProfileState& s = *t_profile;
  UOE_ASSERT(s.depth > 1);
  s.charge(std::chrono::steady_clock::now());
  --s.depth;
}

}  // namespace uoe
