#include "layers/generate.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "parallel/exchange.hpp"
#include "runtime/error.hpp"
#include "runtime/rng.hpp"

namespace uoe {

int sample_token(const float* p, int V, double temperature, int top_k, double u) {
  if (!(temperature >= 0)) fail("sampling: the temperature must be at least 0, got ", temperature);
  if (top_k < 0) fail("sampling: top-k must be at least 0 (0 = every token), got ", top_k);
  // A non-finite entry counts as 0, so the order below stays a strict weak ordering.
  const auto prob = [p](int i) { return std::isfinite(p[i]) && p[i] > 0 ? static_cast<double>(p[i]) : 0.0; };
  // Tokens by descending probability, ties by id: the order the cumulative distribution runs in.
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  const auto before = [&prob](int a, int b) { return prob(a) != prob(b) ? prob(a) > prob(b) : a < b; };
  const int k = top_k > 0 ? std::min(top_k, V) : V;
  std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
  if (!(prob(order[0]) > 0)) fail("sampling: no token has a finite positive probability (is the model's output finite?)");
  if (temperature == 0 || k == 1) return order[0];
  // p^(1/t) relative to the largest, in double: exp((log p − log p_max) / t).
  std::vector<double> w(k);
  const double log_max = std::log(prob(order[0]));
  double total = 0;
  for (int i = 0; i < k; ++i) {
    const double pi = prob(order[i]);
    w[i] = pi > 0 ? std::exp((std::log(pi) - log_max) / temperature) : 0.0;
    total += w[i];
  }
  const double target = u * total;
  double acc = 0;
  int last = 0;
  for (int i = 0; i < k; ++i) {
    if (w[i] <= 0) continue;
    acc += w[i];
    last = i;
    if (acc >= target) return order[i];
  }
  return order[last];  // rounding left the target a hair above the sum
}

int generation_window(const std::vector<int32_t>& context, int seq_len, int patch_size, int32_t pad, int32_t* inputs) {
  UOE_ASSERT(!context.empty() && patch_size > 0 && seq_len % patch_size == 0);
  const int len = static_cast<int>(std::min<size_t>(context.size(), static_cast<size_t>(seq_len)));
  std::fill(inputs, inputs + seq_len, pad);
  if (len < patch_size) {  // shorter than a patch: left-padded to one
    std::copy(context.end() - len, context.end(), inputs + (patch_size - len));
    return patch_size;
  }
  const int W = len / patch_size * patch_size;
  std::copy(context.end() - W, context.end(), inputs);
  return W;
}

std::vector<int32_t> generate(ModelStep& step, std::vector<int32_t> prompt, int n, const SampleOptions& o, int32_t pad,
                              const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) fail("generate: the prompt must hold at least one token");
  const Model& model = step.model();
  if (!model.exchange() || !model.exchange()->identity())
    fail("generate: the model must hold every expert (one rank, a LocalExchange)");
  const ModelSpec& s = model.spec();
  const int T = s.seq_len, V = s.vocab;
  std::vector<int32_t> inputs(T), targets(T, 0);
  const uint64_t stream = rng_stream("sample");
  ForwardStats stats;
  for (int i = 0; i < n; ++i) {
    const int W = generation_window(prompt, T, s.patch_size, pad, inputs.data());
    step.forward_eval(inputs.data(), targets.data(), 1, &stats);
    const float* p = step.probs() + static_cast<size_t>(W - 1) * V;
    const int token = sample_token(p, V, o.temperature, o.top_k, rng_uniform(o.seed, stream, static_cast<uint64_t>(i)));
    prompt.push_back(token);
    if (on_token) on_token(token);
  }
  return prompt;
}

}  // namespace uoe
