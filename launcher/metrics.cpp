#include "launcher/metrics.hpp"

#include <cmath>
#include <string>
#include <vector>

namespace uoe {

JsonLine metrics_step_line(int step, double tokens_per_step, double lr, const StepWindow& w, const WindowComm& comm,
                           double tokens_per_s, double share, const PeakRates& peaks, const StepFigures& fig,
                           const ParamStore& params, bool on_gpu) {
  const int blocks = w.blocks;
  const double n = w.steps;
  JsonLine j;
  j.add("step", step).add("tokens", step * tokens_per_step);
  j.add("train_loss", w.loss / n).add("lr", lr).add("tokens_per_s", tokens_per_s);
  j.add("aux_loss", w.aux / n);
  if (on_gpu) j.add("model_flops_per_s", w.flops / w.time);
  else j.add("flops_share_of_peak", share).add("fma_peak_gflops", peaks.fma).add("sgemm_peak_gflops", peaks.sgemm);
  j.add("grad_norm", fig.grad_norm);
  if (!fig.grad_fingerprint.empty()) {  // this step's, by global tensor name: [Σ g², Σ g·w]
    JsonLine grads;
    for (size_t i = 0; i < params.count(); ++i)
      grads.add(params.info(static_cast<int>(i)).name.c_str(),
                std::vector<double>{fig.grad_fingerprint[2 * i], fig.grad_fingerprint[2 * i + 1]});
    j.add("grads", grads);
    j.add("routing_check", fig.routing_check);
  }
  j.add("a2a_bytes", w.bytes / n).add("a2a_payload_bytes", w.payload_bytes / n).add("comm_s", comm.busy / n).add("compute_s", (w.time - comm.exposed) / n);
  j.add("a2a_link_bytes", comm.link_bytes / n);
  j.add("comm_exposed_s", comm.exposed / n).add("comm_cpu_s", comm.cpu / n);
  std::vector<double> drops(blocks);
  for (int b = 0; b < blocks; ++b)
    drops[b] = w.assignments[b] ? static_cast<double>(w.dropped[b]) / w.assignments[b] : 0;
  j.add("load_max_over_mean", w.load_max).add("dropped_share", drops);
  std::vector<double> entropy = w.entropy;
  for (double& h : entropy) h /= n;
  j.add("router_entropy", entropy);
  for (size_t jj = 0; jj < w.ept.size(); ++jj) {
    std::vector<double> share_j = w.ept[jj];
    for (double& v : share_j) v /= n;
    j.add(("experts_per_token_" + std::to_string(jj)).c_str(), share_j);
  }
  return j;
}

JsonLine metrics_eval_line(int step, double tokens_per_step, const EvalResult& eval, bool byte_level) {
  JsonLine j;
  j.add("step", step).add("tokens", step * tokens_per_step).add("val_loss", eval.loss);
  if (eval.bpb >= 0) j.add("val_bpb", eval.bpb);
  if (!byte_level) j.add("val_ppl", std::exp(eval.loss));
  return j;
}

JsonLine metrics_final_line(int steps, const EvalResult& last_eval, bool byte_level, double tokens_per_s,
                            double total_flops, int64_t total_tokens) {
  JsonLine j;
  j.add("final", true).add("step", steps).add("val_loss", last_eval.loss);
  if (last_eval.bpb >= 0) j.add("val_bpb", last_eval.bpb);
  if (!byte_level) j.add("val_ppl", std::exp(last_eval.loss));
  j.add("tokens_per_s", tokens_per_s);
  // Executed training FLOPs per token (3 × forward, counted from the tokens routed).
  j.add("flops_per_token", total_tokens > 0 ? total_flops / static_cast<double>(total_tokens) : 0.0);
  return j;
}

}  // namespace uoe
