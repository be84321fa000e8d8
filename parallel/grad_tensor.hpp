// One tensor's gradient as parallel/ sees it: a named flat span, and where that span lies in the
// global tensor. parallel/ knows no model, so whoever owns the parameters describes its gradients
// this way (layers/params.hpp: grad_tensors). Kept apart from grad_sync.hpp, which pulls in MPI,
// so that layers/ can build these without including a communicator.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

namespace uoe {

struct GradTensor {
  std::string_view name;        // global name (e.g. "layers.0.mlp.w1"): the fingerprint's weights' key
  std::span<float> grad;        // this rank's elements: the whole tensor, or its expert slab
  int64_t global_offset = 0;    // global index of grad[0]
  bool expert_sharded = false;  // an expert slab: summed over its replicas (dp), over ep for the norm
};

}  // namespace uoe
