// bench-model_flops: the planning figures of a model, from the same options uoe-train takes:
// parameters and the analytic FLOPs per token (layers/flops.hpp: dropless, every patch routed k
// times, attention segments of the average length). bench/quality sets its step counts from these.
//
//   build/bin/bench-model_flops [uoe-train model options…]
//   → {"block_type":"uoe","params":…,"forward_flops_per_token":…,"training_flops_per_token":…}
//
// Byte-level vocabulary (V = 256) unless --tokenizer word or sentencepiece, which load --data to size it.
#include <cstdio>
#include <string>

#include "layers/flops.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"

int main(int argc, char** argv) {
  try {
    std::string help;
    const uoe::ConfigParse parsed = uoe::config_parse(argc, argv, &help);
    if (parsed.exit_now) {
      std::printf("bench-model_flops: parameters and analytic FLOPs per token of a model\n%s", help.c_str());
      return 0;
    }
    const uoe::Config& cfg = parsed.config;
    const bool sized_by_data = cfg.tokenizer == "word" || cfg.tokenizer == "sentencepiece";
    const int vocab = sized_by_data ? uoe::data_load(cfg).vocab.size() : 256;
    const uoe::ModelSpec spec = uoe::model_spec_from_config(cfg, vocab);
    uoe::LocalExchange exchange;  // every expert here: the global parameter count
    const uoe::Model model(spec, cfg.seed, &exchange);
    std::printf("{\"block_type\":\"%s\",\"params\":%zu,\"forward_flops_per_token\":%.17g,"
                "\"training_flops_per_token\":%.17g}\n",
                uoe::block_type_name(spec.block_type), model.params().total(),
                uoe::flops_expected_forward_per_token(spec), uoe::flops_expected_training_per_token(spec));
    return 0;
  } catch (const uoe::Error& e) {
    std::fprintf(stderr, "bench-model_flops: %s\n", e.what());
    return 2;
  }
}
