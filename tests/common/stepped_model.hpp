// A Model with its CPU step (layers/cpu_backend.hpp): what most tests drive. The step is the
// production one — the pipeline the GPU backend runs too (layers/step.hpp) — so every test that
// trains or evaluates through this exercises it.
#pragma once
#include <cstdint>

#include "layers/cpu_backend.hpp"
#include "layers/model.hpp"

namespace uoe_test {

class SteppedModel : public uoe::Model {
 public:
  SteppedModel(const uoe::ModelSpec& spec, uint64_t seed, uoe::ExpertExchange* exchange)
      : uoe::Model(spec, seed, exchange), step(*this) {}

  void forward_backward(const int32_t* inputs, const int32_t* targets, int B, float loss_scale,
                        uoe::ForwardStats* stats) {
    step.forward_backward(inputs, targets, B, loss_scale, stats);
  }
  void forward_eval(const int32_t* inputs, const int32_t* targets, int B, uoe::ForwardStats* stats) {
    step.forward_eval(inputs, targets, B, stats);
  }
  const float* last_probs() { return step.probs(); }
  const uoe::Routing& routing(int b) const { return step.routing(b); }
  uint64_t routing_fingerprint() const { return step.routing_fingerprint(); }
  // Exchanges on `sched` (null: in line), each block in `chunks` chunks.
  void set_schedule(uoe::CommScheduler* sched, int chunks) {
    step.backend().set_scheduler(sched);
    step.set_chunks(chunks);
  }
  operator uoe::ModelStep&() { return step; }

  uoe::CpuStep step;
};

}  // namespace uoe_test
