// The rows an expert exchange delivers to this rank's experts (the OWNER side), packed
// expert-major. Rows of one expert are ordered so that the tokens of one sequence are contiguous
// and in position order (a "segment"); seg[r] identifies the sequence (unique per source rank and
// sequence), pos[r] is the token's true position. parallel/ fills it (ExpertExchange::dispatch),
// layers/ computes on it (layers/experts.hpp); it lives here because parallel/ knows no model.
#pragma once
#include <cstdint>
#include <vector>

#include "runtime/tensor.hpp"

namespace uoe {

struct ExpertRows {
  int n_experts = 0;           // local experts
  std::vector<int> offsets;    // [n_experts + 1] row ranges
  FloatBuffer x;               // [R, d] inputs (normalised activations)
  std::vector<int32_t> seg;    // [R] segment (sequence) id
  std::vector<int32_t> pos;    // [R] true position in the sequence
  int rows() const { return offsets.empty() ? 0 : offsets.back(); }
};

}  // namespace uoe
