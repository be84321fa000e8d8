// uoe-ckpt convert: a dense checkpoint as UoE (upcycling), or a UoE checkpoint as the dense
// transformer it was cut from (docs/model.md, Experts by equivalent decomposition).
//
//   uoe-ckpt convert CKPT --to dense|uoe --out DIR [--attn-experts N --experts N] [--attn-topk K]
//                    [--topk K] [--capacity-factor C] [--gate G] [--check] [--keep-step] [--threads N]
//
// CKPT is a checkpoint (a step_N directory) or a run's --checkpoint-dir (then `latest`, or the newest
// that verifies). It is loaded on this one process whatever the ranks that wrote it (resharding),
// with the model its stored config describes; the converted model is written as a new checkpoint
// (the project's writer, one rank, atomic commit) into DIR, which must be absent or empty, beside
// DIR/train.ini: the stored config with the new block type and expert counts, --checkpoint-dir DIR
// and --resume auto, so `uoe-train --config DIR/train.ini` continues the training. AdamW moments
// are zero, and the step 0 (a fresh warm-up and schedule) with --data-offset the source's step (the
// data go on where the source stopped), or with --keep-step the source's step.
// checkpoints/README.md, "Converting", has the details.
#include <boost/program_options.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "checkpoints/manifest.hpp"
#include "launcher/ckpt_convert.hpp"
#include "layers/model.hpp"
#include "parallel/comm.hpp"
#include "parallel/exchange.hpp"
#include "runtime/cli.hpp"
#include "runtime/config.hpp"
#include "runtime/cpu_affinity.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/error.hpp"
#include "runtime/gemm.hpp"
#include "runtime/log.hpp"
#include "parallel/mpi_version.hpp"
#include "runtime/version.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

struct ConvertArgs {
  std::string checkpoint, to, out, gate;
  int attn_experts = 0, experts = 0, attn_topk = 0, topk = 0, threads = 0;
  double capacity_factor = -1;  // < 0: the checkpoint's
  bool check = false, keep_step = false;
};

constexpr const char* kUsage =
    "Usage: uoe-ckpt convert CKPT --to dense|uoe --out DIR [--attn-experts N --experts N] [--attn-topk K] "
    "[--topk K] [--check] [--keep-step]\n";

// Parses the command line (CKPT first, then options); returns false after --help or --version.
// Throws uoe::Error naming the option.
bool parse(int argc, char** argv, ConvertArgs& a) {
  po::options_description desc("Options", 100, 50);
  desc.add_options()
      ("to", po::value(&a.to), "dense (a UoE checkpoint as the dense model it was cut from) or uoe (a dense one cut into experts)")
      ("out", po::value(&a.out), "checkpoint directory to write (absent or empty); DIR/train.ini continues the training")
      ("attn-experts", po::value(&a.attn_experts), "--to uoe: attention experts (divides the heads)")
      ("experts", po::value(&a.experts), "--to uoe: MLP experts (divides d-ff)")
      ("attn-topk", po::value(&a.attn_topk), "--to uoe: attention experts per token (default: the checkpoint's)")
      ("topk", po::value(&a.topk), "--to uoe: MLP experts per token (default: the checkpoint's)")
      ("capacity-factor", po::value(&a.capacity_factor), "--to uoe: expert capacity (default: the checkpoint's; 0 = dropless)")
      ("gate", po::value(&a.gate), "--to uoe: renorm | sum | prob (default: the checkpoint's)")
      ("check", po::bool_switch(&a.check), "compare both models' output probabilities in the equivalence limit before writing")
      ("keep-step", po::bool_switch(&a.keep_step), "keep the source's step (its schedule) instead of step 0; moments are reset either way")
      ("threads", po::value(&a.threads)->default_value(0), "compute threads (0 = every core)");
  uoe::cli_add_help_and_version(desc);
  // CKPT is the first argument; the rest are options (runtime/cli.hpp takes no positionals).
  std::vector<char*> rest = {argv[0]};
  int first = 1;
  if (argc > 1 && argv[1][0] != '-') {
    a.checkpoint = argv[1];
    first = 2;
  }
  for (int i = first; i < argc; ++i) rest.push_back(argv[i]);
  po::variables_map vm;
  uoe::cli_parse(static_cast<int>(rest.size()), rest.data(), desc, vm);
  if (vm.count("version")) {
    std::fputs(uoe::version_report("uoe-ckpt", uoe::comm_library_versions()).c_str(), stdout);
    return false;
  }
  if (vm.count("help")) {
    std::fputs(kUsage, stdout);
    std::fputs("\nConverts a checkpoint between a dense transformer and the union of experts cut from it\n"
               "(docs/model.md, Experts by equivalent decomposition): the weights are permuted, not retrained.\n"
               "Writes a new checkpoint into DIR with zeroed AdamW moments at step 0 (or the source's, --keep-step)\n"
               "and DIR/train.ini; `uoe-train --config DIR/train.ini` continues from it, on the training windows the\n"
               "source run would have drawn next (train.ini's --data-offset, or the kept step).\n\n",
               stdout);
    std::cout << desc;
    return false;
  }
  if (a.checkpoint.empty())
    uoe::fail("CKPT is required first: ", kUsage, "(CKPT: a step_N directory or a run's --checkpoint-dir)");
  if (a.to != "dense" && a.to != "uoe") uoe::fail("--to must be dense or uoe, got '", a.to, "'");
  if (a.out.empty()) uoe::fail("--out DIR is required (the checkpoint directory to write)");
  if (a.to == "dense")
    for (const char* o : {"attn-experts", "experts", "attn-topk", "topk", "capacity-factor", "gate"})
      if (vm.count(o)) uoe::fail("--", o, " applies to --to uoe only (a dense block has one expert and no router)");
  if (a.to == "uoe" && (a.attn_experts == 0 || a.experts == 0))
    uoe::fail("--to uoe needs the expert counts: --attn-experts N (divides the heads) and --experts N (divides d-ff)");
  for (const auto& [o, v] : {std::pair{"attn-experts", a.attn_experts}, std::pair{"experts", a.experts},
                             std::pair{"attn-topk", a.attn_topk}, std::pair{"topk", a.topk}})
    if (vm.count(o) && v < 1) uoe::fail("--", o, " must be at least 1, got ", v);
  if (a.threads < 0) uoe::fail("--threads must be at least 0, got ", a.threads);
  return true;
}

// A step directory as is; a run's checkpoint directory through `latest` (or the newest that verifies).
std::string checkpoint_path(const std::string& arg) {
  if (fs::exists(fs::path(arg) / "manifest.h5")) return arg;
  if (!fs::is_directory(arg)) uoe::fail("CKPT '", arg, "' is not a checkpoint: no such directory");
  const std::string resolved = uoe::checkpoint_resolve("auto", arg);
  if (resolved.empty())
    uoe::fail("CKPT '", arg, "' is not a checkpoint: it holds no manifest.h5 (a step_N directory) and no committed "
              "step_N (a run's --checkpoint-dir)");
  return resolved;
}

// "uoe, 4 attention experts of 1 head, 4 MLP experts of 128 units (2 layers, d 128, 4 heads, d-ff 512)",
// or "dense (...)".
std::string describe(const uoe::ModelSpec& s) {
  std::string t = uoe::block_type_name(s.block_type);
  if (s.block_type == uoe::BlockType::uoe)
    t += ", " + std::to_string(s.attn_experts) + " attention experts of " + std::to_string(s.heads_per_expert()) +
         (s.heads_per_expert() == 1 ? " head, " : " heads, ") + std::to_string(s.experts) + " MLP experts of " +
         std::to_string(s.expert_ff()) + " units";
  return t + " (" + std::to_string(s.layers) + " layers, d " + std::to_string(s.d) + ", " + std::to_string(s.heads) +
         " heads, d-ff " + std::to_string(s.d_ff) + ")";
}

// The converted run's config: the stored one with the new block type and expert counts, the data
// order continued from `source_step` (the source checkpoint's step), writing to and resuming from
// --out. Throws uoe::Error naming the option when the counts cannot cut the shape.
uoe::Config converted_config(const uoe::Config& stored, int64_t source_step, const ConvertArgs& a,
                             std::vector<std::string>& notes) {
  uoe::Config c = stored;
  c.block_type = a.to;
  if (a.to == "uoe") {
    if (stored.heads % a.attn_experts != 0)
      uoe::fail("--attn-experts ", a.attn_experts, " does not divide the checkpoint's ", stored.heads,
                " heads (--heads): each attention expert owns heads/attn-experts whole heads");
    if (stored.d_ff % a.experts != 0)
      uoe::fail("--experts ", a.experts, " does not divide the checkpoint's d-ff ", stored.d_ff,
                " (--d-ff): each MLP expert owns d-ff/experts hidden units");
    c.attn_experts = a.attn_experts;
    c.experts = a.experts;
    if (a.attn_topk > 0) c.attn_topk = a.attn_topk;
    if (a.topk > 0) c.topk = a.topk;
    if (a.capacity_factor >= 0) c.capacity_factor = a.capacity_factor;
    if (!a.gate.empty()) c.gate = a.gate;
    if (c.attn_topk > c.attn_experts)
      uoe::fail("--attn-topk ", c.attn_topk, a.attn_topk > 0 ? "" : " (the checkpoint's)", " exceeds --attn-experts ",
                c.attn_experts, ": give --attn-topk K with 1 <= K <= ", c.attn_experts);
    if (c.topk > c.experts)
      uoe::fail("--topk ", c.topk, a.topk > 0 ? "" : " (the checkpoint's)", " exceeds --experts ", c.experts,
                ": give --topk K with 1 <= K <= ", c.experts);
    if (c.experts % c.ep != 0 || c.attn_experts % c.ep != 0) {
      notes.push_back("--ep " + std::to_string(c.ep) + " of the source run does not divide the new expert counts: "
                      "train.ini says --ep 1 (any --ep dividing both counts works)");
      c.ep = 1;
    }
  }
  // The data continue where the source stopped: at step 0 (a fresh schedule) the windows of the
  // source's next steps, through --data-offset; with --keep-step the kept step itself draws them.
  if (!a.keep_step) {
    const int64_t offset = stored.data_offset + source_step;
    if (offset > std::numeric_limits<int>::max())
      uoe::fail("the checkpoint's step ", source_step, " (+ its --data-offset ", stored.data_offset,
                ") is too large for --data-offset; use --keep-step");
    c.data_offset = static_cast<int>(offset);
  }
  c.checkpoint_dir = fs::absolute(a.out).lexically_normal().string();  // train.ini works from any directory
  c.resume = "auto";
  c.config_file.clear();
  try {
    uoe::config_validate(c);
  } catch (const uoe::Error& e) {
    uoe::fail("the converted model's options: ", e.what());
  }
  return c;
}

std::string join(const std::vector<std::string>& v, size_t most) {
  std::string t;
  for (size_t i = 0; i < v.size() && i < most; ++i) t += (i ? ", " : "") + v[i];
  if (v.size() > most) t += ", ... (" + std::to_string(v.size()) + " tensors)";
  return t;
}

int run(const ConvertArgs& a) {
  uoe::log_info_to_stderr();
  uoe::gemm_set_threads(a.threads > 0 ? a.threads : uoe::default_threads());
  // Every check before anything is written.
  const std::string path = checkpoint_path(a.checkpoint);
  const uoe::Manifest manifest = uoe::manifest_read((fs::path(path) / "manifest.h5").string());
  const uoe::Config stored = uoe::config_from_ini(manifest.config_ini, path + "/manifest.h5 (the stored config)");
  int vocab = 0;
  for (const uoe::ManifestTensor& t : manifest.tensors)
    if (t.name == "embed" && !t.global_shape.empty()) vocab = static_cast<int>(t.global_shape[0]);
  if (vocab <= 0) uoe::fail(path, ": the checkpoint has no embedding tensor 'embed' to take the vocabulary from");
  const uoe::ModelSpec src_spec = uoe::model_spec_from_config(stored, vocab);
  if (src_spec.block_type == uoe::BlockType::moe)
    uoe::fail(path, " is a moe checkpoint: its experts are independent FFNs, not cut from a dense layer; "
                    "only dense and uoe convert into each other");
  std::vector<std::string> notes;
  const uoe::Config cfg = converted_config(stored, manifest.step, a, notes);
  const uoe::ModelSpec dst_spec = uoe::model_spec_from_config(cfg, vocab);
  const bool out_existed = uoe::out_dir_check_new(a.out);

  // Both models are built in the equivalence limit: the spec's routing options change no parameter,
  // and --check runs them so (the written config keeps the converted run's own top-k and gates).
  uoe::LocalExchange src_exchange, dst_exchange;
  uoe::SelfCommunicator self;
  uoe::Model src(uoe::equivalence_limit(src_spec), stored.seed, &src_exchange);
  const uoe::TrainState st = uoe::checkpoint_load_params(path, stored, src.params(), self);
  uoe::Model dst(uoe::equivalence_limit(dst_spec), cfg.seed, &dst_exchange);
  const uoe::WeightTransfer transfer = uoe::convert_weights(src, dst);
  std::printf("uoe-ckpt convert: %s (step %lld): %s\n", path.c_str(), static_cast<long long>(st.step),
              describe(src_spec).c_str());
  std::printf("uoe-ckpt convert: converted to %s\n", describe(dst_spec).c_str());
  if (!transfer.dropped.empty())
    std::printf("uoe-ckpt convert: routers dropped (%s): %s\n",
                dst_spec.block_type == uoe::BlockType::dense ? "a dense block has none"
                                                             : "experts cut anew get fresh routers",
                join(transfer.dropped, 4).c_str());
  if (!transfer.initialised.empty())
    std::printf("uoe-ckpt convert: routers initialised as `uoe-train --seed %llu` initialises them (the same seed "
                "rule: each element drawn from (seed, tensor name, element index)): %s\n",
                static_cast<unsigned long long>(cfg.seed), join(transfer.initialised, 4).c_str());
  for (const std::string& n : notes) std::printf("uoe-ckpt convert: %s\n", n.c_str());

  if (a.check) {
    const int B = 2;
    const std::vector<int32_t> tokens = uoe::check_tokens(B, src_spec.seq_len, vocab);
    const std::vector<float> ref = uoe::model_output_probs(src, tokens, B);
    const std::vector<float> got = uoe::model_output_probs(dst, tokens, B);
    const uoe::ProbsComparison c = uoe::compare_probs(ref, got, uoe::kConvertCheckRtol, uoe::kConvertCheckAtol);
    const size_t row = c.worst / vocab;
    std::printf("uoe-ckpt convert: check (every expert selected, dropless, sum gates; %d sequences of %d tokens): "
                "max |difference| %.3g over %zu probabilities, %.3g of the bound %g·|p| + %g at token %zu, id %zu "
                "(%.9g vs %.9g)\n",
                B, src_spec.seq_len, c.max_abs_diff, c.elements, c.max_ratio, uoe::kConvertCheckRtol,
                uoe::kConvertCheckAtol, row, c.worst % vocab, c.ref, c.got);
    if (!c.ok)
      uoe::fail("--check failed: the converted model's output probabilities differ from the source's by up to ",
                c.max_abs_diff, " (", c.max_ratio, "× the bound, at token ", row, ", id ", c.worst % vocab,
                ": ", c.got, " vs ", c.ref, "); nothing written");
    std::printf("uoe-ckpt convert: check passed\n");
  }

  // Written by the project's writer, one rank: step_N.tmp, verified, renamed, `latest`.
  uoe::TrainState out;
  out.step = a.keep_step ? st.step : 0;
  out.seed = cfg.seed;
  out.lr = a.keep_step ? st.lr : 0.0;
  out.config_ini = uoe::config_to_ini(cfg);
  out.tokenizer = st.tokenizer;  // the vocabulary travels with the model (uoe-sample)
  out.tokenizer_blob = st.tokenizer_blob;
  out.tokenizer_hash = st.tokenizer_hash;
  const std::string committed = uoe::write_fresh_checkpoint(
      a.out, out_existed, dst.params(), out,
      "uoe-ckpt convert " + path + " --to " + a.to + ": `uoe-train --config " +
          (fs::path(a.out) / "train.ini").string() + "` continues the training");
  std::printf("uoe-ckpt convert: wrote %s\n", committed.c_str());
  if (cfg.data_offset != stored.data_offset)
    std::printf("uoe-ckpt convert: data order continued: train.ini says --data-offset %d, so step s draws the "
                "training windows of the source's step s + %d (the ones the source run would have drawn next)\n",
                cfg.data_offset, cfg.data_offset);
  if (a.keep_step)
    std::printf("uoe-ckpt convert: step %lld kept: `uoe-train --resume` continues at step %lld of the old schedule "
                "(--steps %d, --warmup %d); the AdamW moments are reset all the same (zero), so Adam starts without "
                "its averages\n",
                static_cast<long long>(out.step), static_cast<long long>(out.step + 1), cfg.steps, cfg.warmup);
  else
    std::printf("uoe-ckpt convert: step 0, AdamW moments zero: `uoe-train --resume` starts at step 1 with a fresh "
                "warm-up (--warmup %d) and learning-rate schedule\n", cfg.warmup);
  std::printf("uoe-ckpt convert: continue with: uoe-train --config %s (add --steps N, --ep N, ... as needed)\n",
              (fs::path(a.out) / "train.ini").string().c_str());
  return 0;
}

}  // namespace

int ckpt_convert_main(int argc, char** argv) {
  ConvertArgs a;
  return uoe::cli_main("uoe-ckpt convert", [&] { return parse(argc, argv, a); }, [&] { return run(a); });
}
