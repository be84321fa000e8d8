// uoe-ckpt export: a checkpoint's parameters as one safetensors file plus config.json, for
// PyTorch, Hugging Face or anything else that reads the format (checkpoints/README.md, "Exporting").
//
//   uoe-ckpt export CKPT --out DIR [--format safetensors] [--eval-logits N] [--threads N]
//
// CKPT is loaded on this one process whatever world size and --ep wrote it (resharding), so every
// tensor is written whole. DIR (absent or empty) receives model.safetensors (the tensors under the
// checkpoint's names, F32, metadata {"format": "pt"}), config.json (launcher/ckpt_export.hpp) and,
// with --eval-logits N, eval_logits.safetensors: N fixed token sequences ("tokens", I32 [N, T]) and
// the model's evaluation output on them ("log_probs", F32 [N, T, V]: the logits less their
// log-sum-exp, from forward_eval: dropless, the model's own top-k and gates), which
// bench/torch_uoe.py --check-export compares against its own forward pass. Each file is written
// atomically; on any error DIR is left as it was found.
#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/inspect.hpp"
#include "checkpoints/manifest.hpp"
#include "checkpoints/safetensors.hpp"
#include "launcher/ckpt_convert.hpp"
#include "launcher/ckpt_export.hpp"
#include "launcher/uoe_ckpt.hpp"
#include "layers/model.hpp"
#include "parallel/communicator.hpp"
#include "parallel/exchange.hpp"
#include "runtime/atomic_file.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/cli.hpp"
#include "runtime/config.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/log.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace uoe {
namespace {

struct ExportOptions {
  std::string checkpoint, format, out;
  int eval_logits = 0, threads = 0;
};

constexpr const char* kUsage = "uoe-ckpt export CKPT --out DIR [--format safetensors] [--eval-logits N]";

bool parse(int argc, char** argv, ExportOptions& o) {
  po::options_description desc(
      "Writes the parameters of CKPT (a step directory, or a --checkpoint-dir: the step its 'latest' names),\n"
      "gathered whole from every shard, as DIR/model.safetensors, and the model's spec as DIR/config.json.\n"
      "`uoe-ckpt import DIR` reads them back; bench/torch_uoe.py --check-export DIR loads them in PyTorch.\n\n"
      "Options",
      100, 50);
  desc.add_options()
      ("out", po::value(&o.out), "directory to write (absent or empty)")
      ("format", po::value(&o.format)->default_value("safetensors"), "safetensors (the one format)")
      ("eval-logits", po::value(&o.eval_logits)->default_value(0),
       "also write DIR/eval_logits.safetensors: N fixed sequences and the model's evaluation log-probabilities")
      ("threads", po::value(&o.threads)->default_value(0), "BLAS threads for --eval-logits (0 = every core)");
  po::variables_map vm;
  if (!ckpt_parse(argc, argv, kUsage, desc, {{"CKPT", &o.checkpoint}}, vm)) return false;
  if (o.out.empty()) fail("command line: --out DIR is required (usage: ", kUsage, ")");
  if (o.format != "safetensors") fail("command line: --format ", o.format, ": the one format is safetensors");
  if (o.eval_logits < 0) fail("command line: --eval-logits must be at least 0, got ", o.eval_logits);
  if (o.threads < 0) fail("command line: --threads must be at least 0, got ", o.threads);
  return true;
}

int run(const ExportOptions& o) {
  log_info_to_stderr();
  gemm_set_threads(o.threads > 0 ? o.threads : default_threads());
  // Everything is read and computed before anything is written.
  const std::string path = checkpoint_step_dir(o.checkpoint);
  const Manifest manifest = manifest_read((fs::path(path) / "manifest.h5").string());
  const Config stored = config_from_ini(manifest.config_ini, path + "/manifest.h5 (the stored config)");
  int vocab = 0;
  for (const ManifestTensor& t : manifest.tensors)
    if (t.name == "embed" && !t.global_shape.empty()) vocab = static_cast<int>(t.global_shape[0]);
  if (vocab <= 0) fail(path, ": the checkpoint has no embedding tensor 'embed' to take the vocabulary from");
  const ModelSpec spec = model_spec_from_config(stored, vocab);
  const bool out_existed = out_dir_check_new(o.out);

  LocalExchange exchange;
  SelfCommunicator self;
  Model model(spec, stored.seed, &exchange);
  const TrainState st = checkpoint_load_params(path, stored, model.params(), self);
  const std::vector<SafetensorsTensor> tensors = model_tensors(model);
  const std::string config_json =
      export_config_json(stored, spec, ExportSource{path, st.step, st.world, st.ep, st.build});
  std::vector<SafetensorsTensor> logits;
  if (o.eval_logits > 0) {
    const int B = o.eval_logits, T = spec.seq_len;
    const std::vector<int32_t> tokens = check_tokens(B, T, vocab);
    const std::vector<float> probs = model_output_probs(model, tokens, B);
    SafetensorsTensor tok{"tokens", "I32", {B, T}, std::vector<char>(tokens.size() * sizeof(int32_t))};
    std::memcpy(tok.data.data(), tokens.data(), tok.data.size());
    std::vector<float> log_probs(probs.size());
    for (size_t i = 0; i < probs.size(); ++i) log_probs[i] = static_cast<float>(std::log(static_cast<double>(probs[i])));
    SafetensorsTensor lp{"log_probs", "F32", {B, T, vocab}, std::vector<char>(log_probs.size() * sizeof(float))};
    std::memcpy(lp.data.data(), log_probs.data(), lp.data.size());
    logits = {std::move(tok), std::move(lp)};
  }

  int64_t bytes = 0;
  try {
    fs::create_directories(o.out);
    const fs::path dir(o.out);
    safetensors_write((dir / "model.safetensors").string(), tensors, {{"format", "pt"}});
    atomic_write_file((dir / "config.json").string(), config_json);
    if (!logits.empty())
      safetensors_write((dir / "eval_logits.safetensors").string(), logits,
                        {{"format", "pt"}, {"what", "uoe-ckpt export --eval-logits: forward_eval log-probabilities"}});
    bytes = static_cast<int64_t>(fs::file_size(dir / "model.safetensors"));
  } catch (...) {
    out_dir_restore(o.out, out_existed);
    throw;
  }
  std::printf("uoe-ckpt export: %s (step %lld, written by %d rank%s, ep %d): %s, %zu tensors\n", path.c_str(),
              static_cast<long long>(st.step), st.world, st.world == 1 ? "" : "s", st.ep,
              block_type_name(spec.block_type), tensors.size());
  std::printf("uoe-ckpt export: wrote %s (%lld bytes) and %s\n", (fs::path(o.out) / "model.safetensors").c_str(),
              static_cast<long long>(bytes), (fs::path(o.out) / "config.json").c_str());
  if (!logits.empty())
    std::printf("uoe-ckpt export: wrote %s: %d sequences of %d tokens and their evaluation log-probabilities\n",
                (fs::path(o.out) / "eval_logits.safetensors").c_str(), o.eval_logits, spec.seq_len);
  return 0;
}

}  // namespace

int ckpt_export_main(int argc, char** argv) {
  ExportOptions o;
  return cli_main("uoe-ckpt export", [&] { return parse(argc, argv, o); }, [&] { return run(o); });
}

}  // namespace uoe
