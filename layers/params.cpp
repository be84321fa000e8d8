#include "layers/params.hpp"

namespace uoe {

GradTensor grad_tensor(ParamStore& store, int i) {
  const ParamInfo& info = store.info(i);
  return GradTensor{info.name, std::span<float>(store.grad(i), info.size), info.global_offset(), info.expert_sharded};
}

std::vector<GradTensor> grad_tensors(ParamStore& store) {
  std::vector<GradTensor> out;
  out.reserve(store.count());
  for (int i = 0; i < static_cast<int>(store.count()); ++i) out.push_back(grad_tensor(store, i));
  return out;
}

}  // namespace uoe
