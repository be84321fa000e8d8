#include "runtime/config.hpp"

#include <boost/program_options.hpp>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "runtime/cli.hpp"
#include "runtime/error.hpp"

namespace uoe {
namespace {

namespace po = boost::program_options;

// Help shows defaults with %g: Boost's own rendering of 0.1 is "0.10000000000000001".
std::string format_short(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// %.17g: enough digits for every double to read back bitwise equal.
std::string format_exact(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// An option bound to a Config field, with the field's current value as the default shown in help.
template <class T>
po::typed_value<T>* bound(T* field) {
  return po::value<T>(field)->default_value(*field);
}
po::typed_value<double>* bound(double* field) {
  return po::value<double>(field)->default_value(*field, format_short(*field));
}
po::typed_value<std::string>* bound(std::string* field) {
  // An empty default means "not set"; Boost would print it as "(=)".
  if (field->empty()) return po::value<std::string>(field);
  return po::value<std::string>(field)->default_value(*field);
}

// The option groups in the order --help prints them. Everything except "General" may also come
// from the --config file. The seed is read as text because Boost's lexical_cast turns "-1" into
// 2^64 - 1 for unsigned types; seed_parse() reads it strictly.
struct OptionGroups {
  static constexpr unsigned kHelpWidth = 100;  // columns of --help; descriptions start at most halfway
  po::options_description data{"Data", kHelpWidth, kHelpWidth / 2};
  po::options_description model{"Model", kHelpWidth, kHelpWidth / 2};
  po::options_description training{"Training", kHelpWidth, kHelpWidth / 2};
  po::options_description evaluation{"Evaluation and logging", kHelpWidth, kHelpWidth / 2};
  po::options_description checkpointing{"Checkpoints and reliability", kHelpWidth, kHelpWidth / 2};
  po::options_description parallelism{"Parallelism", kHelpWidth, kHelpWidth / 2};
  po::options_description general{"General", kHelpWidth, kHelpWidth / 2};

  OptionGroups(Config& c, std::string& seed_text) {
    data.add_options()
      ("data", bound(&c.data), "training text file (default: the built-in corpus)")
      ("val-data", bound(&c.val_data), "validation text file (default: the last --val-fraction of --data)")
      ("val-fraction", bound(&c.val_fraction), "share of --data held out for validation, in (0, 1)")
      ("tokenizer", bound(&c.tokenizer), "byte | word");
    model.add_options()
      ("layers", bound(&c.layers), "transformer blocks L")
      ("d-model", bound(&c.d_model), "model width d (divisible by --heads)")
      ("heads", bound(&c.heads), "attention heads H (divisible by --attn-experts; d/H even)")
      ("attn-experts", bound(&c.attn_experts), "attention experts E_a")
      ("attn-topk", bound(&c.attn_topk), "attention experts per patch k_a, 1..E_a")
      ("experts", bound(&c.experts), "MLP experts E (divide --d-ff)")
      ("topk", bound(&c.topk), "MLP experts per patch k, 1..E")
      ("d-ff", bound(&c.d_ff), "dense MLP hidden width F, cut into E experts")
      ("capacity-factor", bound(&c.capacity_factor), "expert capacity factor (0 = dropless)")
      ("patch-size", bound(&c.patch_size), "tokens per routed patch (divides --seq-len)")
      ("gate", bound(&c.gate), "gate weights: renorm (k·p/Σp) | sum (1) | prob (p, as Switch)")
      ("aux-loss", bound(&c.aux_loss), "load-balance loss weight alpha")
      ("z-loss", bound(&c.z_loss), "router z-loss weight")
      ("block-type", bound(&c.block_type),
       "uoe | dense (the transformer UoE is cut from) | moe (token-choice MoE MLP, dense attention)")
      ("expert-d-ff", bound(&c.expert_d_ff), "hidden width of each moe expert (0 = d-ff / experts)");
    training.add_options()
      ("seq-len", bound(&c.seq_len), "sequence length T")
      ("batch-size", bound(&c.batch_size), "sequences B per rank micro-batch")
      ("micro-batches", bound(&c.micro_batches), "micro-batches M accumulated per step")
      ("steps", bound(&c.steps), "optimizer steps")
      ("lr", bound(&c.lr), "peak learning rate")
      ("min-lr", bound(&c.min_lr), "learning rate reached by the cosine at the last step")
      ("warmup", bound(&c.warmup), "linear warm-up steps")
      ("weight-decay", bound(&c.weight_decay), "AdamW weight decay (matrices only)")
      ("clip", bound(&c.clip), "global gradient-norm clip (0 = off)")
      ("seed", po::value<std::string>(&seed_text)->default_value(seed_text), "random seed");
    evaluation.add_options()
      ("eval-every", bound(&c.eval_every), "steps between evaluations (0 = only at the end)")
      ("eval-batches", bound(&c.eval_batches), "batches per evaluation (0 = the whole split)")
      ("log-every", bound(&c.log_every), "steps between progress lines")
      ("metrics", bound(&c.metrics), "JSON-lines metrics file (default: none)")
      ("metrics-grads", bound(&c.metrics_grads)->implicit_value(true),
       "add each tensor's gradient fingerprint (sum of squares, checksum) to the metrics lines (for the "
       "equivalence tests: one pass over the gradients per line)");
    checkpointing.add_options()
      ("checkpoint-dir", bound(&c.checkpoint_dir), "directory for sharded HDF5 checkpoints (default: none)")
      ("checkpoint-every", bound(&c.checkpoint_every), "steps between checkpoints (0 = only at the end)")
      ("keep-last", bound(&c.keep_last), "committed checkpoints to keep (0 = all)")
      ("checkpoint-writer-share", bound(&c.checkpoint_share),
       "share of one core the background checkpoint writer may use while training runs (1 = unpaced)")
      ("resume", bound(&c.resume), "auto (newest valid checkpoint in --checkpoint-dir) or a checkpoint path")
      ("collective-timeout", bound(&c.collective_timeout),
       "seconds an exchange may wait before the job is aborted with a report")
      ("max-bad-steps", bound(&c.max_bad_steps), "consecutive non-finite steps skipped before stopping");
    parallelism.add_options()
      ("ep", bound(&c.ep), "ranks per expert-parallel group")
      ("threads", bound(&c.threads), "BLAS threads per rank (0 = cores / local ranks)")
      ("device", bound(&c.device), "cpu | cuda (cuda: see docs/gpu.md for what runs today)")
      ("overlap-chunks", bound(&c.overlap_chunks),
       "chunks per block, exchanges pipelined on a communication thread (cuda: stream); 1 = in line, no overlap")
      ("sim-link-gbps", bound(&c.sim_link_gbps),
       "emulate a network link of this many Gbit/s per rank (0 = off; see parallel/sim_link.hpp)")
      ("sim-link-latency-us", bound(&c.sim_link_latency_us),
       "emulated per-message latency in microseconds (with --sim-link-gbps)");
    cli_add_help_and_version(general);
    general.add_options()
      ("config", bound(&c.config_file),
       "INI file of `name = value` lines, names as above without dashes; the command line overrides it");
  }

  po::options_description for_file() const {
    po::options_description all;
    all.add(data).add(model).add(training).add(evaluation).add(checkpointing).add(parallelism);
    return all;
  }
  po::options_description for_command_line() const {
    po::options_description all(kHelpWidth, kHelpWidth / 2);
    all.add(data).add(model).add(training).add(evaluation).add(checkpointing).add(parallelism).add(general);
    return all;
  }
};

uint64_t seed_parse(const std::string& text) {
  uint64_t seed = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, seed);
  if (ec != std::errc() || ptr != end || text.empty())
    fail("--seed '", text, "': expected an integer in [0, 2^64)");
  return seed;
}

// A file the run reads: it must exist, be a regular readable file and (unless allow_empty) hold
// at least one byte. `option` names where the path came from.
void input_file_check(const std::string& path, const char* option, bool allow_empty) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found) fail(option, " '", path, "': no such file");
  if (ec) fail(option, " '", path, "': ", ec.message());
  if (!fs::is_regular_file(st)) fail(option, " '", path, "': not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(option, " '", path, "': cannot be opened for reading");
  if (!allow_empty && in.peek() == std::ifstream::traits_type::eof())
    fail(option, " '", path, "': file is empty");
}

void require_positive(int v, const char* option) {
  if (v <= 0) fail(option, " ", v, ": expected a positive integer");
}
void require_non_negative(int v, const char* option) {
  if (v < 0) fail(option, " ", v, ": expected an integer >= 0");
}
// Written as !(v >= 0) so that NaN fails too.
void require_non_negative(double v, const char* option) {
  if (!(v >= 0) || !std::isfinite(v)) fail(option, " ", v, ": expected a finite number >= 0");
}
void require_divisible(int a, const char* a_option, int b, const char* b_option, const char* why) {
  if (a % b != 0) fail(a_option, " ", a, " is not divisible by ", b_option, " ", b, " (", why, ")");
}
void require_in_range(int v, const char* option, int hi, const char* hi_option) {
  if (v < 1 || v > hi)
    fail(option, " ", v, ": expected 1 <= ", option, " <= ", hi_option, " (", hi, ")");
}

}  // namespace

ConfigParse config_parse(int argc, const char* const* argv, std::string* help_out) {
  ConfigParse out;
  Config& c = out.config;
  std::string seed_text = std::to_string(c.seed);
  const OptionGroups groups(c, seed_text);
  const po::options_description cmdline_options = groups.for_command_line();

  po::variables_map vm;
  cli_parse(argc, argv, cmdline_options, vm, /*notify=*/false);  // the --config file is stored next

  if (vm.count("help")) {
    if (help_out) {
      std::ostringstream os;
      os << "Usage: uoe-train [options]\n" << cmdline_options;
      *help_out = os.str();
    }
    out.exit_now = true;
    return out;
  }
  if (vm.count("version")) {
    out.version = out.exit_now = true;
    return out;
  }

  // Values stored first win, so the file only fills what the command line left unset.
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    input_file_check(path, "--config", /*allow_empty=*/true);
    std::ifstream in(path);
    try {
      po::store(po::parse_config_file(in, groups.for_file()), vm);
    } catch (po::error& e) {
      fail("--config file '", path, "': ", cli_error_message(e));
    }
  }
  try {
    po::notify(vm);
  } catch (po::error& e) {
    fail(cli_error_message(e));
  }

  c.seed = seed_parse(seed_text);
  config_validate(c);
  if (!c.data.empty()) input_file_check(c.data, "--data", /*allow_empty=*/false);
  if (!c.val_data.empty()) input_file_check(c.val_data, "--val-data", /*allow_empty=*/false);
  return out;
}

void config_validate(const Config& c) {
  // Sizes and counts first, so the relations below never divide by zero.
  require_positive(c.layers, "--layers");
  require_positive(c.d_model, "--d-model");
  require_positive(c.heads, "--heads");
  require_positive(c.attn_experts, "--attn-experts");
  require_positive(c.attn_topk, "--attn-topk");
  require_positive(c.experts, "--experts");
  require_positive(c.topk, "--topk");
  require_positive(c.d_ff, "--d-ff");
  require_positive(c.patch_size, "--patch-size");
  require_positive(c.seq_len, "--seq-len");
  require_positive(c.batch_size, "--batch-size");
  require_positive(c.micro_batches, "--micro-batches");
  require_positive(c.steps, "--steps");
  require_positive(c.log_every, "--log-every");
  require_positive(c.ep, "--ep");
  require_non_negative(c.warmup, "--warmup");
  require_non_negative(c.eval_every, "--eval-every");
  require_non_negative(c.eval_batches, "--eval-batches");
  require_non_negative(c.threads, "--threads");
  require_non_negative(c.checkpoint_every, "--checkpoint-every");
  require_non_negative(c.keep_last, "--keep-last");
  if (!(c.checkpoint_share > 0 && c.checkpoint_share <= 1))
    fail("--checkpoint-writer-share ", c.checkpoint_share, ": expected a share of one core in (0, 1]");
  require_positive(c.max_bad_steps, "--max-bad-steps");
  if (!(c.collective_timeout > 0) || !std::isfinite(c.collective_timeout))
    fail("--collective-timeout ", c.collective_timeout, ": expected a finite number of seconds > 0");
  if (!c.resume.empty() && c.resume == "auto" && c.checkpoint_dir.empty())
    fail("--resume auto needs --checkpoint-dir (where to look for checkpoints)");
  if (c.block_type != "uoe" && c.block_type != "dense" && c.block_type != "moe")
    fail("--block-type '", c.block_type, "': expected uoe, dense or moe");
  require_non_negative(c.expert_d_ff, "--expert-d-ff");
  require_positive(c.overlap_chunks, "--overlap-chunks");
  if (c.device != "cpu" && c.device != "cuda") fail("--device '", c.device, "': expected cpu or cuda");
  if (!(c.sim_link_gbps >= 0) || !std::isfinite(c.sim_link_gbps))
    fail("--sim-link-gbps ", c.sim_link_gbps, ": expected 0 (off) or a finite bandwidth > 0");
  if (!(c.sim_link_latency_us >= 0) || !std::isfinite(c.sim_link_latency_us))
    fail("--sim-link-latency-us ", c.sim_link_latency_us, ": expected a finite latency >= 0");
  if (c.sim_link_latency_us > 0 && c.sim_link_gbps == 0)
    fail("--sim-link-latency-us ", c.sim_link_latency_us, " needs --sim-link-gbps (the link to delay)");

  // Shapes (docs/model.md, Notation).
  require_divisible(c.d_model, "--d-model", c.heads, "--heads", "each head gets d-model/heads dimensions");
  if ((c.d_model / c.heads) % 2 != 0)
    fail("--d-model ", c.d_model, " / --heads ", c.heads, " gives head dimension ", c.d_model / c.heads,
         ": expected an even head dimension (RoPE rotates pairs)");
  // Block types (layers/model.hpp): uoe routes attention and MLP; moe only the MLP (dense
  // attention); dense nothing. Expert options of an unrouted part are ignored, so not checked.
  const bool attn_routed = c.block_type == "uoe", mlp_routed = c.block_type != "dense";
  if (c.expert_d_ff != 0 && c.block_type != "moe")
    fail("--expert-d-ff ", c.expert_d_ff, " applies to --block-type moe only (this is --block-type ", c.block_type,
         "; uoe cuts --d-ff into --experts experts)");
  if (attn_routed) {
    require_divisible(c.heads, "--heads", c.attn_experts, "--attn-experts",
                      "each attention expert owns heads/attn-experts heads");
    require_in_range(c.attn_topk, "--attn-topk", c.attn_experts, "--attn-experts");
  }
  if (mlp_routed) {
    require_in_range(c.topk, "--topk", c.experts, "--experts");
    if (c.expert_d_ff == 0)
      require_divisible(c.d_ff, "--d-ff", c.experts, "--experts",
                        c.block_type == "moe" ? "moe experts are d-ff/experts wide unless --expert-d-ff is given"
                                              : "each MLP expert owns d-ff/experts hidden units");
  }
  require_divisible(c.seq_len, "--seq-len", c.patch_size, "--patch-size", "a patch never crosses a sequence");
  // Every rank of an expert-parallel group owns the same number of experts of each kind (dense
  // attention and the dense MLP are replicated on every rank instead).
  if (mlp_routed)
    require_divisible(c.experts, "--experts", c.ep, "--ep",
                      "each rank of an expert-parallel group owns experts/ep MLP experts");
  if (attn_routed)
    require_divisible(c.attn_experts, "--attn-experts", c.ep, "--ep",
                      "each rank of an expert-parallel group owns attn-experts/ep attention experts");
  if (!(c.capacity_factor >= 0) || !std::isfinite(c.capacity_factor))
    fail("--capacity-factor ", c.capacity_factor, ": expected 0 (dropless) or a finite number > 0");
  if (c.gate != "renorm" && c.gate != "sum" && c.gate != "prob")
    fail("--gate '", c.gate, "': expected renorm, sum or prob");
  require_non_negative(c.aux_loss, "--aux-loss");
  require_non_negative(c.z_loss, "--z-loss");

  // Data.
  if (c.tokenizer != "byte" && c.tokenizer != "word")
    fail("--tokenizer '", c.tokenizer, "': expected byte or word");
  if (!(c.val_fraction > 0 && c.val_fraction < 1))
    fail("--val-fraction ", c.val_fraction, ": expected a number strictly between 0 and 1");

  // Optimisation.
  if (!(c.lr > 0) || !std::isfinite(c.lr)) fail("--lr ", c.lr, ": expected a finite number > 0");
  if (!(c.min_lr >= 0 && c.min_lr <= c.lr))
    fail("--min-lr ", c.min_lr, ": expected 0 <= --min-lr <= --lr (", c.lr, ")");
  require_non_negative(c.weight_decay, "--weight-decay");
  require_non_negative(c.clip, "--clip");
}

// Every option of the file parser, one `name = value` line each; config_parse reads it back to
// the same Config. --config itself is left out (the text is the config). Boost's INI reader trims
// values and cuts them at '#', so strings with those (e.g. such paths) do not round-trip.
std::string config_to_ini(const Config& c) {
  std::ostringstream os;
  const auto line = [&os](const char* name, const auto& value) { os << name << " = " << value << "\n"; };
  const auto real = [&line](const char* name, double value) { line(name, format_exact(value)); };

  os << "# data\n";
  line("data", c.data);
  line("val-data", c.val_data);
  real("val-fraction", c.val_fraction);
  line("tokenizer", c.tokenizer);
  os << "# model\n";
  line("layers", c.layers);
  line("d-model", c.d_model);
  line("heads", c.heads);
  line("attn-experts", c.attn_experts);
  line("attn-topk", c.attn_topk);
  line("experts", c.experts);
  line("topk", c.topk);
  line("d-ff", c.d_ff);
  real("capacity-factor", c.capacity_factor);
  line("patch-size", c.patch_size);
  line("gate", c.gate);
  real("aux-loss", c.aux_loss);
  real("z-loss", c.z_loss);
  line("block-type", c.block_type);
  line("expert-d-ff", c.expert_d_ff);
  os << "# training\n";
  line("seq-len", c.seq_len);
  line("batch-size", c.batch_size);
  line("micro-batches", c.micro_batches);
  line("steps", c.steps);
  real("lr", c.lr);
  real("min-lr", c.min_lr);
  line("warmup", c.warmup);
  real("weight-decay", c.weight_decay);
  real("clip", c.clip);
  line("seed", c.seed);
  os << "# evaluation and logging\n";
  line("eval-every", c.eval_every);
  line("eval-batches", c.eval_batches);
  line("log-every", c.log_every);
  line("metrics", c.metrics);
  line("metrics-grads", c.metrics_grads);
  os << "# checkpoints and reliability\n";
  line("checkpoint-dir", c.checkpoint_dir);
  line("checkpoint-every", c.checkpoint_every);
  line("keep-last", c.keep_last);
  real("checkpoint-writer-share", c.checkpoint_share);
  line("resume", c.resume);
  real("collective-timeout", c.collective_timeout);
  line("max-bad-steps", c.max_bad_steps);
  os << "# parallelism\n";
  line("ep", c.ep);
  line("threads", c.threads);
  line("device", c.device);
  line("overlap-chunks", c.overlap_chunks);
  real("sim-link-gbps", c.sim_link_gbps);
  real("sim-link-latency-us", c.sim_link_latency_us);
  return os.str();
}

}  // namespace uoe
