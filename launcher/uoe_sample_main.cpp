// uoe-sample: text from a trained checkpoint.
//
//   uoe-sample --checkpoint DIR [--prompt TEXT] [--tokens 256] [--temperature 0.8] [--top-k 0]
//              [--seed 1] [--data FILE] [--threads N]
//
// DIR is a checkpoint (a step_N directory) or a run's --checkpoint-dir (then the checkpoint its
// `latest` file names). The model's options come from the checkpoint; it is loaded on this one
// process whatever the number of ranks that wrote it (resharding, as a resume on another world size
// does) and runs dropless (layers/generate.hpp). The vocabulary (word list or SentencePiece model) is
// the one stored in the checkpoint (checkpoints/manifest.hpp, /tokenizer), so nothing else is needed.
// Checkpoints written before it was stored: a word-level model's vocabulary is rebuilt from its
// training data: the run's --data and --val-data (stored in the checkpoint), or the files given here
// if they moved (the vocabulary comes from the training split, which --val-data decides).
// The prompt and the generated text go to stdout as they are drawn; everything else to stderr.
// Exit codes: 0 success (or --help, --version), 2 bad command line, 1 any other failure (checkpoint, data).
#include <boost/program_options.hpp>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/manifest.hpp"
#include "layers/cpu_backend.hpp"
#include "layers/generate.hpp"
#include "layers/model.hpp"
#include "parallel/comm.hpp"
#include "parallel/exchange.hpp"
#include "parallel/mpi_version.hpp"
#include "runtime/config.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/cli.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/log.hpp"
#include "runtime/token_file.hpp"
#include "runtime/tokenizer.hpp"
#include "runtime/version.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

struct SampleArgs {
  std::string checkpoint, prompt = "\n", data, val_data;
  int tokens = 256, threads = 0;
  uoe::SampleOptions sample;
};

// Parses the command line; returns false after --help or --version. Throws uoe::Error naming the option.
bool parse(int argc, char** argv, SampleArgs& a) {
  po::options_description desc("Options", 100, 50);
  desc.add_options()
      ("checkpoint", po::value(&a.checkpoint), "a checkpoint (step_N directory) or a run's --checkpoint-dir (its latest)")
      ("prompt", po::value(&a.prompt)->default_value("\n", "newline"), "text the generation continues")
      ("tokens", po::value(&a.tokens)->default_value(256), "tokens to generate")
      ("temperature", po::value(&a.sample.temperature)->default_value(0.8, "0.8"), "sharpens (< 1) or flattens (> 1) the model's distribution; 0 = always the most probable token")
      ("top-k", po::value(&a.sample.top_k)->default_value(0), "draw among the k most probable tokens only (0 = all)")
      ("seed", po::value(&a.sample.seed)->default_value(1), "random seed of the draws (same seed, same text)")
      ("data", po::value(&a.data), "word-level models of checkpoints without a stored vocabulary: the run's --data, if not where the run read it")
      ("val-data", po::value(&a.val_data), "the same: the run's --val-data, if it had one and it moved")
      ("threads", po::value(&a.threads)->default_value(0), "compute threads (0 = every core)");
  uoe::cli_add_help_and_version(desc);
  po::variables_map vm;
  uoe::cli_parse(argc, argv, desc, vm);
  if (vm.count("version")) {
    std::cout << uoe::version_report("uoe-sample", uoe::comm_library_versions());
    return false;
  }
  if (vm.count("help")) {
    std::cout << "Usage: uoe-sample --checkpoint DIR [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] "
                 "[--seed S]\n\n"
                 "Continues a prompt with a trained model: loads the checkpoint on this one process (whatever\n"
                 "the ranks that wrote it) and writes the prompt and the generated text to stdout.\n\n"
              << desc;
    return false;
  }
  if (a.checkpoint.empty()) uoe::fail("--checkpoint DIR is required (a step_N directory or a run's --checkpoint-dir)");
  if (a.tokens < 0) uoe::fail("--tokens must be at least 0, got ", a.tokens);
  if (!(a.sample.temperature >= 0)) uoe::fail("--temperature must be at least 0, got ", a.sample.temperature);
  if (a.sample.top_k < 0) uoe::fail("--top-k must be at least 0 (0 = every token), got ", a.sample.top_k);
  if (a.threads < 0) uoe::fail("--threads must be at least 0, got ", a.threads);
  return true;
}

// A step directory as is; a checkpoint directory through its `latest` file.
std::string checkpoint_path(const std::string& arg) {
  if (fs::exists(fs::path(arg) / "manifest.h5")) return arg;
  if (!fs::is_directory(arg)) uoe::fail("--checkpoint: '", arg, "' is not a directory");
  std::ifstream latest(fs::path(arg) / "latest");
  std::string name;
  if (!latest || !std::getline(latest, name) || name.empty())
    uoe::fail("--checkpoint: '", arg, "' holds neither a checkpoint (manifest.h5) nor a 'latest' file naming one");
  const fs::path step = fs::path(arg) / name;
  if (!fs::exists(step / "manifest.h5"))
    uoe::fail("--checkpoint: '", (fs::path(arg) / "latest").string(), "' names '", name, "', which is not a checkpoint");
  return step.string();
}

// The run's model, sequence and (word level without a stored vocabulary only: the vocabulary comes
// from them) data options from the checkpoint's stored config; the rest keep their defaults (they do
// not affect a forward pass).
uoe::Config stored_config(const std::string& ini, const SampleArgs& a, bool vocab_stored) {
  const auto entries = uoe::config_ini_entries(ini);
  bool word = false;
  for (const auto& [k, v] : entries) word = word || (k == "tokenizer" && v == "word" && !vocab_stored);
  std::set<std::string> keys = {"seq-len", "seed"};
  if (word) keys.insert({"data", "val-data", "val-fraction"});
  for (const auto& k : uoe::config_shape_keys()) keys.insert(k);
  for (const auto& k : uoe::config_behaviour_keys()) keys.insert(k);
  std::vector<std::string> args = {"uoe-sample"};
  for (const auto& [k, v] : entries)
    if (keys.count(k) && !v.empty() && !(k == "data" && !a.data.empty()) && !(k == "val-data" && !a.val_data.empty())) {
      args.push_back("--" + k);
      args.push_back(v);
    }
  for (const auto& [option, value] : {std::pair{"--data", &a.data}, std::pair{"--val-data", &a.val_data}})
    if (word && !value->empty()) {
      args.push_back(option);
      args.push_back(*value);
    }
  std::vector<const char*> argv;
  for (const auto& s : args) argv.push_back(s.c_str());
  std::string help;
  try {
    return uoe::config_parse(static_cast<int>(argv.size()), argv.data(), &help).config;
  } catch (const uoe::Error& e) {
    if (!word) throw;
    uoe::fail("a word-level model's vocabulary is rebuilt from its training data: ", e.what(),
              " (give uoe-sample the run's --data, and its --val-data if it had one)");
  }
}

int run(const SampleArgs& a) {
  uoe::log_info_to_stderr();
  const std::string path = checkpoint_path(a.checkpoint);
  const uoe::Manifest manifest = uoe::manifest_read((fs::path(path) / "manifest.h5").string());
  const uoe::Config cfg = stored_config(manifest.config_ini, a, !manifest.tokenizer.empty());
  uoe::gemm_set_threads(a.threads > 0 ? a.threads : uoe::default_threads());
  std::fprintf(stderr, "uoe-sample: %s\n", uoe::blas_kernels_summary().c_str());

  // The vocabulary: the checkpoint's own; bytes need none; in older checkpoints words are rebuilt
  // from the training split, as the run did.
  uoe::Vocab vocab;
  const std::string where = "checkpoint '" + path + "'";
  if (!manifest.tokenizer.empty()) {
    if (manifest.tokenizer != cfg.tokenizer)
      uoe::fail(where, " stores a ", manifest.tokenizer, " vocabulary but was trained with --tokenizer ", cfg.tokenizer);
    vocab = uoe::tokenizer_from_blob(manifest.tokenizer, manifest.tokenizer_blob, where);
    if (uoe::vocab_hash(vocab) != manifest.tokenizer_hash)
      uoe::fail(where, ": the stored ", manifest.tokenizer, " vocabulary does not match its hash (a damaged checkpoint)");
    std::fprintf(stderr, "uoe-sample: %s vocabulary of %d from the checkpoint\n", manifest.tokenizer.c_str(), vocab.size());
  } else if (cfg.tokenizer == "sentencepiece") {
    uoe::fail(where, " was trained with --tokenizer sentencepiece but stores no model (/tokenizer)");
  } else if (cfg.tokenizer == "word") {
    std::fprintf(stderr, "uoe-sample: rebuilding the word vocabulary from %s\n",
                 cfg.data.empty() ? "the built-in corpus" : cfg.data.c_str());
    vocab = uoe::data_load(cfg).vocab;
  }
  const uoe::ModelSpec spec = uoe::model_spec_from_config(cfg, vocab.size());
  uoe::LocalExchange local;
  uoe::Model model(spec, cfg.seed, &local);
  uoe::SelfCommunicator self;
  const uoe::TrainState st = uoe::checkpoint_load_params(path, cfg, model.params(), self);

  const std::vector<int32_t> newline_ids = vocab.encode("\n");
  const int32_t newline = newline_ids.empty() ? 0 : newline_ids[0];
  std::vector<int32_t> prompt = vocab.encode(a.prompt);
  if (prompt.empty()) prompt = {newline};
  std::fprintf(stderr, "uoe-sample: %s (step %lld), %s model, %d layers, d %d, %d-token windows; %d tokens at "
                       "temperature %g%s, seed %llu\n",
               path.c_str(), static_cast<long long>(st.step), cfg.block_type.c_str(), spec.layers, spec.d,
               spec.seq_len, a.tokens, a.sample.temperature,
               a.sample.top_k > 0 ? (", top-k " + std::to_string(a.sample.top_k)).c_str() : "",
               static_cast<unsigned long long>(a.sample.seed));

  // Stream the text: the prompt as the model reads it, then each token as it is drawn (word level
  // decodes the whole sequence, so spacing follows the decoder's rules, and prints what is new).
  std::vector<int32_t> shown = prompt;
  std::string printed = vocab.decode(prompt.data(), prompt.size());
  std::fwrite(printed.data(), 1, printed.size(), stdout);
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  uoe::CpuStep step(model);
  uoe::generate(step, prompt, a.tokens, a.sample, newline, [&](int32_t token) {
    shown.push_back(token);
    const std::string text = vocab.decode(shown.data(), shown.size());
    // SentencePiece byte pieces can rewrite the end (a character's bytes, shown as U+FFFD each until
    // it is whole, may decode shorter): print only what extends the text already printed.
    if (text.size() <= printed.size()) return;
    std::fwrite(text.data() + printed.size(), 1, text.size() - printed.size(), stdout);
    std::fflush(stdout);
    printed = text;
  });
  if (printed.empty() || printed.back() != '\n') std::fputc('\n', stdout);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "uoe-sample: %d tokens in %.2f s (%.0f tokens/s)\n", a.tokens, secs,
               secs > 0 ? a.tokens / secs : 0.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  uoe::blas_kernels_select();  // the BLAS kernels for this CPU's ISA (may re-execute once)
  SampleArgs a;
  return uoe::cli_main("uoe-sample", [&] { return parse(argc, argv, a); }, [&] { return run(a); });
}
