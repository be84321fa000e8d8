// uoe-ckpt import: a model exported as safetensors + config.json (uoe-ckpt export, or anything
// that writes the same tensors) back into a checkpoint uoe-train continues (checkpoints/README.md,
// "Exporting").
//
//   uoe-ckpt import DIR_OR_FILE --out CKPTDIR
//
// DIR_OR_FILE is an export directory (model.safetensors and config.json in it) or the
// .safetensors file itself (config.json beside it). Every check runs before anything is written:
// the file's format (safetensors.hpp), config.json (ckpt_export.hpp), and that the tensors are
// exactly the model's, by name, shape and dtype F32. As `uoe-ckpt convert` does, the checkpoint is
// written by the project's writer (one rank, atomic commit) at step 0 with zero AdamW moments, beside
// CKPTDIR/train.ini (the exported run's config with --checkpoint-dir CKPTDIR --resume auto): a
// safetensors file holds no optimizer state, so training continues with a fresh warm-up.
#include <boost/program_options.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/safetensors.hpp"
#include "launcher/ckpt_convert.hpp"
#include "launcher/ckpt_export.hpp"
#include "launcher/uoe_ckpt.hpp"
#include "layers/model.hpp"
#include "parallel/exchange.hpp"
#include "runtime/cli.hpp"
#include "runtime/config.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace uoe {
namespace {

struct ImportOptions {
  std::string input, out;
};

constexpr const char* kUsage = "uoe-ckpt import DIR_OR_FILE --out CKPTDIR";

bool parse(int argc, char** argv, ImportOptions& o) {
  po::options_description desc(
      "Reads DIR_OR_FILE (an export directory with model.safetensors and config.json, or the .safetensors\n"
      "file with config.json beside it) into a new checkpoint in CKPTDIR at step 0 with zero AdamW moments,\n"
      "and CKPTDIR/train.ini: `uoe-train --config CKPTDIR/train.ini` continues the training (a fresh warm-up).\n\n"
      "Options",
      100, 50);
  desc.add_options()("out", po::value(&o.out), "checkpoint directory to write (absent or empty)");
  po::variables_map vm;
  if (!ckpt_parse(argc, argv, kUsage, desc, {{"DIR_OR_FILE", &o.input}}, vm)) return false;
  if (o.out.empty()) fail("command line: --out CKPTDIR is required (usage: ", kUsage, ")");
  return true;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open (", std::strerror(errno), ")");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

int run(const ImportOptions& o) {
  log_info_to_stderr();
  std::error_code ec;
  if (!fs::exists(o.input, ec)) fail(o.input, ": no such file or directory");
  const fs::path file = fs::is_directory(o.input, ec) ? fs::path(o.input) / "model.safetensors" : fs::path(o.input);
  const fs::path config_path = file.parent_path().empty() ? fs::path("config.json") : file.parent_path() / "config.json";
  if (!fs::exists(file, ec)) fail(file.string(), ": no such file (an export directory holds model.safetensors)");
  if (!fs::exists(config_path, ec))
    fail(config_path.string(), ": no such file: the model's spec (uoe-ckpt export writes it beside ",
         file.filename().string(), ")");
  int vocab = 0;
  Config cfg = config_from_export_json(read_text(config_path.string()), config_path.string(), &vocab);
  const SafetensorsFile st = safetensors_read(file.string());
  const ModelSpec spec = model_spec_from_config(cfg, vocab);
  LocalExchange exchange;
  Model model(spec, cfg.seed, &exchange);
  model_set_tensors(model, st, file.string() + " (with " + config_path.string() + ")");

  const bool out_existed = out_dir_check_new(o.out);
  cfg.checkpoint_dir = fs::absolute(o.out).lexically_normal().string();  // train.ini works from any directory
  cfg.resume = "auto";
  cfg.config_file.clear();
  TrainState state;
  state.step = 0;
  state.seed = cfg.seed;
  state.config_ini = config_to_ini(cfg);
  const std::string committed = write_fresh_checkpoint(
      o.out, out_existed, model.params(), state,
      "uoe-ckpt import " + o.input + ": `uoe-train --config " + (fs::path(o.out) / "train.ini").string() +
          "` continues the training");
  std::printf("uoe-ckpt import: %s: %s, %zu tensors (config %s)\n", file.c_str(), block_type_name(spec.block_type),
              st.tensors.size(), config_path.c_str());
  std::printf("uoe-ckpt import: wrote %s: step 0, AdamW moments zero: `uoe-train --resume` starts at step 1 with a "
              "fresh warm-up (--warmup %d) and learning-rate schedule\n",
              committed.c_str(), cfg.warmup);
  std::printf("uoe-ckpt import: continue with: uoe-train --config %s (add --steps N, --data FILE, ... as needed)\n",
              (fs::path(o.out) / "train.ini").c_str());
  return 0;
}

}  // namespace

int ckpt_import_main(int argc, char** argv) {
  ImportOptions o;
  return cli_main("uoe-ckpt import", [&] { return parse(argc, argv, o); }, [&] { return run(o); });
}

}  // namespace uoe
