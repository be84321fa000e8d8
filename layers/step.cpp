#include "layers/step.hpp"

namespace uoe {

uint64_t ModelStep::routing_fingerprint() const {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](uint64_t v) { h = (h ^ v) * 1099511628211ULL; };
  for (int b = 0; b < 2 * model_->spec().layers; ++b) {
    const Routing& r = routing(b);
    for (int v : r.choice) mix(static_cast<uint64_t>(v));
    for (uint8_t v : r.kept) mix(v);
  }
  return h;
}

}  // namespace uoe
