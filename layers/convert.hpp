// Dense ↔ UoE weight conversion (docs/model.md, Experts by equivalent decomposition): the UoE layer is
// the dense layer cut the way tensor parallelism cuts it, so the conversion is a permutation of columns/rows:
//   attention expert a owns heads [a·g, (a+1)·g): Wqkv_a = [Wq | Wk | Wv][:, heads of a], Wo_a = Wo[rows of a, :]
//   MLP expert e owns hidden units [e·f, (e+1)·f): W1_e = W1[:, units], b1_e = b1[units], W2_e = W2[units, :]
// Only the decomposed tensors change; norms, routers, biases bo/b2 and the embedding are shared.
#pragma once
#include <vector>

#include "layers/model.hpp"

namespace uoe {

struct DenseLayerWeights {
  std::vector<float> wq, wk, wv;  // [d, H·dh] each
  std::vector<float> wo;          // [H·dh, d]
  std::vector<float> w1;          // [d, F]
  std::vector<float> b1;          // [F]
  std::vector<float> w2;          // [F, d]
};

// Reads layer l of a model that holds every expert (a single-rank model) as dense weights.
DenseLayerWeights dense_from_uoe(const Model& model, int layer);
// Writes dense weights into layer l of such a model (the inverse of dense_from_uoe).
void dense_to_uoe(const DenseLayerWeights& w, Model& model, int layer);

}  // namespace uoe
