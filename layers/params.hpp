// The model's parameters: a ParamStore (runtime/param_store.hpp, the named-tensor registry that
// checkpoints save) and the view of its gradients that parallel/'s GradientSync takes.
#pragma once
#include <vector>

#include "parallel/grad_tensor.hpp"
#include "runtime/param_store.hpp"

namespace uoe {

// Tensor i's gradient as parallel/ takes it (GradientSync, tensor_grad_fingerprint): a view into
// the store's gradient arena and names, valid while the store lives (the arena is allocated once).
GradTensor grad_tensor(ParamStore& store, int i);
// Every tensor's, in index order.
std::vector<GradTensor> grad_tensors(ParamStore& store);

}  // namespace uoe
