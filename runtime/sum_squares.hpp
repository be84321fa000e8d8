// Σ g² of a float array in a fixed order: the gradient norm's building block, shared by the
// optimizer's clipping (layers/) and the gradient synchronisation's global norm (parallel/), which
// must agree bit for bit, so it lives below both.
#pragma once
#include <cstddef>

namespace uoe {

// Σ g² over a gradient arena, in double, in a fixed order (8 interleaved partial sums: deterministic).
double grad_sum_squares(const float* g, size_t n);

}  // namespace uoe
