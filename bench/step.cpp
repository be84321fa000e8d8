// bench-step: time of one training step (forward + backward + AdamW) of a UoE model, in tokens/s,
// in model FLOP/s as a share of this machine's FMA peak measured in the same run (runtime/fma_peak;
// the sgemm peak beside it), and where the step's time goes: GEMM / attention / routing / exchange
// / optimizer / other (runtime/profile.hpp's scoped timers, exclusive: a GEMM inside attention is
// GEMM; per phase the median over the timed steps). One process: the exchange is local (no MPI), so
// its time is the routed rows' gathering only.
//
//   build/bin/bench-step [--csv FILE] [--threads N] [--repeats R] [--ab KNOB] [--gemm-kinds] [uoe-train model options…]
//
// --ab KNOB: an A/B comparison inside one process, where a VM's speed drifting over minutes hits
// both sides alike: the timed steps alternate between the knob off (A) and on (B) in the order
// A B B A A B …, and each side's median step, the B/A speed ratio of the medians and the spread of
// the per-pair ratios are printed (instead of the breakdown). Knobs: expert-rows (layers/experts.hpp,
// experts_set_row_parts), own-deep (runtime/gemm.hpp, gemm_set_own_deep: NN/NT products of depth
// 257-512 in uoe's AVX-512 kernel), whole-weights (layers/experts.hpp,
// experts_set_whole_weights: the experts' weight gradients as whole products per thread), balanced
// (experts_set_balanced: the threads' shares of the experts' rows and attention segments), touch-tn
// (runtime/gemm.hpp, gemm_set_touch_tn: the TN products' A read in address order before the product).
//
// --gemm-kinds: after the timed steps, R more steps timing every product by kind (NN, NT, TN, narrow)
// and R more running each product a second time at once on the same operands (runtime/gemm.hpp,
// gemm_observe): the products' rate in the step against their rate with the operands in cache.
//
// With no model options it runs two configurations: the reference config of the trainer issue
// (4 layers, d 128) and the same model at d 512 (heads 8, d_ff 2048). Reported: min and median
// step time over R timed steps after 3 warm-up steps; FLOPs are those the step executed (routed
// rows and attended segments, backward = 2× forward), so dropped tokens are not counted.
#include <algorithm>
#include <array>
#include <optional>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_config.hpp"
#include "layers/cpu_backend.hpp"
#include "layers/experts.hpp"
#include "layers/params.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_sync.hpp"
#include "layers/router.hpp"
#include "layers/train_step.hpp"
#include "parallel/exchange.hpp"
#include "runtime/bf16.hpp"
#include "runtime/config.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/fma_peak.hpp"
#include "runtime/gemm.hpp"
#include "runtime/profile.hpp"

namespace {

struct Row {
  std::string name;
  double tokens_per_s, step_min_ms, step_median_ms, gflops, share;
  uoe::PhaseSeconds phases;  // median seconds of each phase over the timed steps
  std::vector<double> a_times, b_times;  // --ab: each side's timed steps, in pair order
  // --gemm-kinds: the products by kind over `kind_steps` more steps, in step (pass 1) and replayed hot (pass 2)
  std::array<uoe::GemmKindTimes, uoe::kGemmKinds> in_step{}, hot{};
  int kind_steps = 0;
};

// The runtime switches --ab can compare: set(false) is A, set(true) is B.
struct AbKnob {
  const char* name;
  void (*set)(bool);
};
const AbKnob kAbKnobs[] = {{"expert-rows", uoe::experts_set_row_parts},
                           {"own-deep", uoe::gemm_set_own_deep},
                           {"whole-weights", uoe::experts_set_whole_weights},
                           {"balanced", uoe::experts_set_balanced},
                           {"touch-tn", uoe::gemm_set_touch_tn}};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Row bench_config(const std::string& name, const uoe::Config& cfg, const uoe::TokenStream& tokens, int repeats,
                 const AbKnob* ab = nullptr, bool gemm_kinds = false) {
  uoe::LocalExchange exchange;
  uoe::Model model(uoe::model_spec_from_config(cfg, 256), cfg.seed, &exchange);
  uoe::AdamWSpec aspec;
  uoe::AdamW opt(model.params(), aspec);
  uoe::CpuStep step(model);
  // A gradient sync over one rank, as uoe-train has (Σ g² per tensor, in its buckets' order).
  uoe::SelfCommunicator self;
  uoe::GradientSync sync(uoe::grad_tensors(model.params()), uoe::model_gradient_buckets(model), self, self, self);
  uoe::StepRanks ranks;
  ranks.step = &step;
  ranks.world = &self;
  ranks.sync = &sync;
  std::vector<double> times;
  std::vector<std::vector<double>> phase_times(uoe::kPhases);
  double flops = 0;
  int64_t tok = 0;
  Row r;
  for (int s = 1; s <= 3 + repeats; ++s) {
    // --ab: A B B A A B … over the whole run (warm-up included); timed from step 5, so that every
    // timed pair (5-6, 7-8, …) holds one step of each side.
    const bool b_side = ((s - 1) / 2 + (s - 1)) % 2 == 1;
    if (ab) ab->set(b_side);
    const auto t0 = std::chrono::steady_clock::now();
    uoe::profile_start();
    const uoe::StepFigures fig = uoe::train_step(model, opt, cfg, tokens, s, ranks);
    const uoe::PhaseSeconds ph = uoe::profile_stop();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (ab && s > 4) (b_side ? r.b_times : r.a_times).push_back(dt);
    if (s > 3) {
      times.push_back(dt);
      for (int p = 0; p < uoe::kPhases; ++p) phase_times[p].push_back(ph.seconds[p]);
      flops = fig.flops;
      tok = fig.tokens;
    }
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  uoe::PhaseSeconds phases;
  for (int p = 0; p < uoe::kPhases; ++p) {
    std::sort(phase_times[p].begin(), phase_times[p].end());
    phases.seconds[p] = phase_times[p][phase_times[p].size() / 2];
  }
  if (ab) ab->set(true);
  if (gemm_kinds) {  // after the timed steps: `repeats` steps observed, then `repeats` with replays
    int s = 4 + repeats;
    for (const bool replay : {false, true}) {
      uoe::gemm_observe(true, replay);
      for (int i = 0; i < repeats; ++i, ++s) uoe::train_step(model, opt, cfg, tokens, s, ranks);
      (replay ? r.hot : r.in_step) = uoe::gemm_observed();
      uoe::gemm_observe(false, false);
    }
    r.kind_steps = repeats;
  }
  r.name = name;
  r.step_min_ms = times.front() * 1e3;
  r.step_median_ms = med * 1e3;
  r.tokens_per_s = tok / med;
  r.gflops = flops / med * 1e-9;
  r.phases = phases;
  return r;
}


// The expert GEMMs alone, as layers/experts.cpp issues them for an MLP block: per expert e with
// n_e rows, forward x·W1 [n,d]×[d,f] and a·W2 [n,f]×[f,d], backward-data dy·W2ᵀ and dh·W1ᵀ, and
// weight gradients aᵀ·dy and xᵀ·dh. `rows` holds n_e per expert; one entry = one dense GEMM set over
// all the rows with the same d and f, i.e. the same FLOPs. Returns the median seconds of `repeats`.
double time_expert_gemms(const std::vector<int>& rows, int d, int f, int repeats) {
  int total = 0;
  for (int n : rows) total += n;
  const size_t E = rows.size();
  std::vector<float> x(static_cast<size_t>(total) * d, 0.01f), a(static_cast<size_t>(total) * f, 0.02f);
  std::vector<float> y(static_cast<size_t>(total) * d), dy(static_cast<size_t>(total) * d, 0.03f);
  std::vector<float> dh(static_cast<size_t>(total) * f), dx(static_cast<size_t>(total) * d);
  std::vector<float> W1(E * d * f, 0.01f), W2(E * f * d, 0.01f), dW1(E * d * f), dW2(E * f * d);
  auto once = [&] {
    size_t r0 = 0;
    for (size_t e = 0; e < E; ++e) {
      const int n = rows[e];
      const float *xe = x.data() + r0 * d, *dye = dy.data() + r0 * d, *w1 = W1.data() + e * d * f,
                  *w2 = W2.data() + e * f * d;
      float *ae = a.data() + r0 * f, *dhe = dh.data() + r0 * f;
      uoe::gemm(false, false, n, f, d, 1.0f, xe, d, w1, f, 0.0f, ae, f);
      uoe::gemm(false, false, n, d, f, 1.0f, ae, f, w2, d, 0.0f, y.data() + r0 * d, d);
      uoe::gemm(false, true, n, f, d, 1.0f, dye, d, w2, d, 0.0f, dhe, f);
      uoe::gemm(false, true, n, d, f, 1.0f, dhe, f, w1, f, 0.0f, dx.data() + r0 * d, d);
      uoe::gemm(true, false, f, d, n, 1.0f, ae, f, dye, d, 0.0f, dW2.data() + e * f * d, d);
      uoe::gemm(true, false, d, f, n, 1.0f, xe, d, dhe, f, 0.0f, dW1.data() + e * d * f, f);
      r0 += static_cast<size_t>(n);
    }
  };
  once();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    once();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  uoe::blas_kernels_select();  // the BLAS kernels for this CPU's ISA (may re-execute once)
  try {
    std::string csv;
    int repeats = 20, threads = 0;
    bool gemm_kinds = false;
    const AbKnob* ab = nullptr;
    std::vector<const char*> rest = {argv[0]};
    for (int i = 1; i < argc; ++i) {
      if (!std::strcmp(argv[i], "--csv") && i + 1 < argc) csv = argv[++i];
      else if (!std::strcmp(argv[i], "--ab") && i + 1 < argc) {
        const std::string k = argv[++i];
        for (const AbKnob& knob : kAbKnobs)
          if (k == knob.name) ab = &knob;
        if (!ab) uoe::fail("bench-step: --ab ", k, ": unknown knob (expert-rows, own-deep, whole-weights, balanced, touch-tn)");
      }
      else if (!std::strcmp(argv[i], "--gemm-kinds")) gemm_kinds = true;
      else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = std::max(1, std::atoi(argv[++i]));
      else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
      else rest.push_back(argv[i]);
    }
    uoe::gemm_set_threads(threads > 0 ? threads : uoe::default_threads());
    const int nthreads = uoe::gemm_get_threads();
    // Peaks on the same threads: the hardware's FMA rate (what shares are quoted against) and the
    // BLAS's, the best of 512³, 1024³ and 2048³ sgemm.
    // The FMA peak is probed before and after each configuration and the best probe is the peak:
    // one ~6 ms probe can land in a slow minute of a VM (read 256 against 371 GFLOP/s here) and
    // would inflate every share quoted against it.
    std::vector<uoe::FmaPeak> probes = {uoe::fma_peak_measure(uoe::cpu_features_detect(), nthreads)};
    auto best_probe = [&probes] {
      return *std::max_element(probes.begin(), probes.end(),
                               [](const uoe::FmaPeak& a, const uoe::FmaPeak& b) { return a.gflops < b.gflops; });
    };
    double sgemm_peak = 0;
    for (int n : {512, 1024, 2048}) sgemm_peak = std::max(sgemm_peak, uoe::gemm_measure_gflops(n, 5));

    std::vector<std::pair<std::string, uoe::Config>> configs;
    uoe::Config base;
    if (rest.size() > 1) {
      const std::optional<uoe::Config> custom = uoe::bench::model_config(rest);
      if (!custom) return 0;
      if (custom->device != "cpu") uoe::fail("bench-step: --device ", custom->device, ": bench-step times the CPU step only");
      configs.push_back({"custom", *custom});
    } else {
      configs.push_back({"reference d128", base});  // the Config defaults are the reference config
      uoe::Config big = base;
      big.d_model = 512;
      big.heads = 8;
      big.attn_experts = 4;
      big.d_ff = 2048;
      configs.push_back({"d512", big});
    }
    // Windows of the built-in corpus: always present, and real enough that routing is uneven.
    uoe::Config data_cfg = configs.front().second;
    const uoe::TokenStream tokens = uoe::data_from_text(uoe::data_builtin_corpus(), nullptr, 0.1,
                                                      uoe::TokenizerKind::byte, data_cfg.seq_len, "built-in corpus")
                                      .train;

    // --precision: the process's compute precision, as uoe-train's make_step sets it.
    uoe::compute_precision_set(uoe::precision_parse(configs.front().second.precision));
    std::printf("# bench-step: %s\n", uoe::blas_kernels_summary().c_str());
    if (uoe::compute_precision() == uoe::Precision::bf16) std::printf("# precision bf16: %s\n", uoe::gemm_bf16_describe().c_str());
    if (ab) {
      std::printf("# --ab %s: timed steps alternate A (off) and B (on), A B B A …; medians of each side\n", ab->name);
      std::printf("%-16s %12s %12s %10s %22s %6s\n", "config", "A med ms", "B med ms", "B/A speed", "per-pair B/A min-max",
                  "pairs");
      for (const auto& [name, cfg] : configs) {
        const Row r = bench_config(name, cfg, tokens, std::max(repeats, 3), ab);
        const size_t pairs = std::min(r.a_times.size(), r.b_times.size());
        std::vector<double> ratio;
        for (size_t k = 0; k < pairs; ++k) ratio.push_back(r.a_times[k] / r.b_times[k]);
        std::sort(ratio.begin(), ratio.end());
        const double a = median(r.a_times), b = median(r.b_times);
        std::printf("%-16s %12.2f %12.2f %9.3fx %10.3f - %-9.3f %6zu\n", r.name.c_str(), a * 1e3, b * 1e3, a / b,
                    ratio.front(), ratio.back(), pairs);
      }
      return 0;
    }
    std::vector<Row> rows;
    for (const auto& [name, cfg] : configs) {
      rows.push_back(bench_config(name, cfg, tokens, repeats, nullptr, gemm_kinds));
      probes.push_back(uoe::fma_peak_measure(uoe::cpu_features_detect(), nthreads));
    }
    const uoe::FmaPeak fma = best_probe();
    const double peak = fma.gflops;
    std::string all;
    for (const uoe::FmaPeak& p : probes) all += (all.empty() ? "" : ", ") + std::to_string(static_cast<int>(p.gflops + 0.5));
    std::printf("# %d compute threads, FMA peak %.1f GFLOP/s (%s; the best of %zu probes, one before and one after "
                "each configuration: %s), sgemm peak %.1f GFLOP/s (best of 512/1024/2048 cubed, %.0f%% of the FMA peak)\n",
                nthreads, peak, uoe::fma_peak_describe(fma).c_str(), probes.size(), all.c_str(), sgemm_peak,
                100.0 * sgemm_peak / peak);
    if (uoe::compute_precision() == uoe::Precision::bf16)
      std::printf("# bf16: the GEMMs run on the CPU's bf16 units or emulated (line above); \"of FMA\" is still "
                  "the share of the fp32 FMA peak, which bf16 units can pass\n");
    std::printf("%-16s %6s %5s %12s %12s %12s %10s %8s\n", "config", "d", "B·T", "tokens/s", "step min ms",
                "step med ms", "GFLOP/s", "of FMA");
    for (size_t i = 0; i < rows.size(); ++i) {
      Row& r = rows[i];
      r.share = r.gflops / peak;
      std::printf("%-16s %6d %5d %12.0f %12.2f %12.2f %10.1f %7.1f%%\n", r.name.c_str(), configs[i].second.d_model,
                  configs[i].second.batch_size * configs[i].second.seq_len, r.tokens_per_s, r.step_min_ms,
                  r.step_median_ms, r.gflops, 100 * r.share);
    }
    std::printf("\n# where the time goes: median ms per step of each phase over %d steps (exclusive: a GEMM inside "
                "attention or routing is GEMM), share of their sum\n", repeats);
    std::printf("%-16s", "config");
    for (int p = 0; p < uoe::kPhases; ++p) std::printf(" %16s", uoe::phase_name(static_cast<uoe::Phase>((p + 1) % uoe::kPhases)));
    std::printf(" %9s %12s\n", "sum ms", "step med ms");
    for (const Row& r : rows) {
      std::printf("%-16s", r.name.c_str());
      const double sum = r.phases.total();
      for (int p = 0; p < uoe::kPhases; ++p) {
        const double s = r.phases.seconds[(p + 1) % uoe::kPhases];  // "other" last
        std::printf(" %8.2f (%4.1f%%)", s * 1e3, 100.0 * s / sum);
      }
      std::printf(" %9.2f %12.2f\n", sum * 1e3, r.step_median_ms);
    }
    if (gemm_kinds) {
      std::printf("\n# the products by kind (--gemm-kinds), per step over %d more steps: each thread's part as it "
                  "reached a kernel; ms are summed over the threads, GFLOP/s are per thread (of the FMA peak's %.1f); "
                  "hot: each part run again at once on its operands, then in cache (%d further steps)\n",
                  repeats, peak / nthreads, repeats);
      std::printf("%-16s %-7s %10s %11s %11s %12s %11s %12s %12s\n", "config", "kind", "calls", "GFLOP", "in-step ms",
                  "GFLOP/s", "hot ms", "GFLOP/s hot", "in-step/hot");
      for (const Row& r : rows) {
        const double n = r.kind_steps;
        for (int k = 0; k < uoe::kGemmKinds; ++k) {
          const uoe::GemmKindTimes &a = r.in_step[k], &h = r.hot[k];
          if (a.calls == 0 || h.calls == 0) continue;
          const double rate = a.flops / a.seconds * 1e-9, hot_rate = h.flops / h.hot_seconds * 1e-9;
          std::printf("%-16s %-7s %10.1f %11.3f %11.2f %12.1f %11.2f %12.1f %11.2fx\n", r.name.c_str(),
                      uoe::gemm_kind_name(static_cast<uoe::GemmKind>(k)), a.calls / n, a.flops / n * 1e-9,
                      a.seconds / n * 1e3, rate, h.hot_seconds / n * 1e3, hot_rate, hot_rate / rate);
        }
      }
    }
    if (rest.size() == 1) {
      // The MLP block of each default config: 2048 tokens × top-2 over 4 experts of f = d_ff / 4
      // (4096 rows; capacity 1.25 allows up to C = 1280 per expert): equal loads, and a skew like
      // early training's (two experts full, one at the mean, the last with the rest).
      const int C = static_cast<int>(uoe::expert_capacity(2048, 2, 4, base.capacity_factor));
      for (const int d : {128, 512}) {
        const int f = d;
        std::printf("\n# expert GEMMs alone (d %d, f %d, 4096 rows): 4 experts vs one dense GEMM set of the same FLOPs\n",
                    d, f);
        std::printf("%-28s %10s %10s %10s\n", "rows per expert", "ms", "GFLOP/s", "of dense");
        const double dense_s = time_expert_gemms({4096}, d, f, 5 * repeats);
        const double flops = 6.0 * 2.0 * 4096.0 * d * f;
        std::printf("%-28s %10.2f %10.1f %9.1f%%\n", "dense (1 x 4096)", dense_s * 1e3, flops / dense_s * 1e-9, 100.0);
        for (const auto& split : std::vector<std::vector<int>>{{1024, 1024, 1024, 1024}, {C, C, 1024, 4096 - 2 * C - 1024}}) {
          const double t = time_expert_gemms(split, d, f, 5 * repeats);
          std::string label;
          for (int n : split) {
            if (!label.empty()) label += '/';
            label += std::to_string(n);
          }
          std::printf("%-28s %10.2f %10.1f %9.1f%%\n", label.c_str(), t * 1e3, flops / t * 1e-9, 100.0 * dense_s / t);
        }
      }
    }
    if (!csv.empty()) {
      FILE* f = std::fopen(csv.c_str(), "w");
      if (!f) uoe::fail("cannot write --csv file '", csv, "'");
      // share_of_peak is against the FMA peak; the phase columns are median ms per step.
      std::fprintf(f, "config,threads,fma_peak_gflops,sgemm_peak_gflops,tokens_per_s,step_min_ms,step_median_ms,gflops,"
                      "share_of_peak,gemm_ms,attention_ms,routing_ms,exchange_ms,optimizer_ms,other_ms\n");
      for (const Row& r : rows) {
        std::fprintf(f, "%s,%d,%.3f,%.3f,%.1f,%.3f,%.3f,%.3f,%.4f", r.name.c_str(), nthreads, peak, sgemm_peak,
                     r.tokens_per_s, r.step_min_ms, r.step_median_ms, r.gflops, r.share);
        for (int p = 0; p < uoe::kPhases; ++p) std::fprintf(f, ",%.3f", r.phases.seconds[(p + 1) % uoe::kPhases] * 1e3);
        std::fprintf(f, "\n");
      }
      std::fclose(f);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
