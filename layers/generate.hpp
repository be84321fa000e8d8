// Text generation from a trained model. docs/model.md, Causality: generation runs dropless, so the
// distribution of the next token depends only on the tokens before it in its sequence — not on
// capacity, batch size or other sequences.
//
// Each new token costs one forward pass over a window of the context: its last W tokens at positions
// 0..W−1, W the largest multiple of patch_size that is at most min(context length, seq_len), padded
// to seq_len. Causal attention and per-patch dropless routing keep the padding out of positions
// < W (whole patches only, so no patch mixes context and padding), and training windows start at
// position 0 too. A context shorter than one patch is left-padded to a patch with `pad`.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "layers/step.hpp"

namespace uoe {

struct SampleOptions {
  double temperature = 0.8;  // 0: always the most probable token
  int top_k = 0;             // draw among the k most probable tokens only (0: all)
  uint64_t seed = 1;
};

// One token from probabilities p[V]: reshaped by the temperature t (p^(1/t), renormalised; t = 0
// or top_k = 1: the most probable, lowest id on ties), restricted to the top_k most probable (0:
// all), drawn by inverting the cumulative distribution (tokens in descending probability, ties by
// id) at u ∈ (0, 1). Pure: the same arguments give the same token. Throws uoe::Error on t < 0,
// top_k < 0, or p without a positive entry.
int sample_token(const float* p, int V, double temperature, int top_k, double u);

// Writes the window for the next token of `context` (non-empty) into inputs[seq_len] and returns W:
// the output at position W − 1 predicts the next token (see above).
int generation_window(const std::vector<int32_t>& context, int seq_len, int patch_size, int32_t pad, int32_t* inputs);

// Appends n tokens to `prompt` (non-empty), drawing token i with u = rng_uniform(seed,
// rng_stream("sample"), i); calls on_token for each as it is drawn (may be empty). The model must
// hold every expert (a LocalExchange): generation is one sequence on one rank.
std::vector<int32_t> generate(ModelStep& step, std::vector<int32_t> prompt, int n, const SampleOptions& o, int32_t pad,
                              const std::function<void(int32_t)>& on_token);

}  // namespace uoe
