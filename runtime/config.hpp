// Configuration of a run: one struct, read from an INI file (--config) with command-line
// overrides (Boost.Program_options), validated before any work. Each member is set by one option of
// the table in runtime/options.cpp (its name, topic, help, and what a difference on resume means);
// the member's initialiser here is the option's default.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace uoe {

struct Config {
  // --- data ---
  std::string config_file;      // INI file; command-line options override it
  std::string data;             // training text; empty = built-in corpus
  std::string val_data;         // validation text; empty = last --val-fraction of --data
  double val_fraction = 0.1;    // share of --data held out for validation, (0, 1)
  std::string tokenizer = "byte";  // byte | word | sentencepiece
  bool windows_within_documents = false;  // training windows never cross a document boundary

  // --- model ---
  int layers = 4;               // L
  int d_model = 128;            // d
  int heads = 4;                // H (d % H == 0)
  int attn_experts = 4;         // E_a (H % E_a == 0)
  int attn_topk = 2;            // k_a (1..E_a)
  int experts = 4;              // E MLP experts (d_ff % E == 0)
  int topk = 2;                 // k (1..E)
  int d_ff = 512;               // F, dense MLP hidden width cut into E experts
  double capacity_factor = 1.25;  // 0 = dropless
  int patch_size = 1;           // tokens per routed patch (divides seq-len)
  std::string gate = "renorm";  // renorm | sum | prob (docs/model.md, Gates)
  double aux_loss = 0.01;       // balance-loss weight alpha
  double z_loss = 0.0;          // router z-loss weight
  std::string block_type = "uoe";  // uoe | dense | moe (baselines for the per-FLOP study)
  int expert_d_ff = 0;          // width of each moe expert (0 = d_ff / experts)

  // --- training ---
  int seq_len = 128;            // T
  int batch_size = 16;          // B sequences per rank micro-batch
  int micro_batches = 1;        // M accumulated micro-batches per step
  int steps = 1500;             // optimizer steps
  double lr = 1e-3;             // peak learning rate
  double min_lr = 1e-4;         // reached by the cosine at the last step
  int warmup = 100;             // linear warm-up steps
  double weight_decay = 0.1;    // on matrices only
  double clip = 1.0;            // global gradient-norm clip (0 = off)
  uint64_t seed = 1;
  int data_offset = 0;          // step s draws the training windows of step s + data_offset

  // --- evaluation and logging ---
  int eval_every = 250;         // steps between evaluations (0 = only at the end)
  int eval_batches = 0;         // only the first batches of B windows are evaluated (0 = whole split)
  int eval_windows = 1024;      // at most this many windows per evaluation, spread evenly (0 = whole split)
  int log_every = 10;           // steps between progress lines
  std::string metrics;          // JSON-lines file (empty = none)
  bool metrics_grads = false;   // per-tensor gradient fingerprints in the metrics (tests)

  // --- checkpoints and reliability ---
  std::string checkpoint_dir;   // where step_N/ checkpoints go (empty = none)
  int checkpoint_every = 0;     // steps between checkpoints (0 = only at the end)
  int keep_last = 3;            // committed checkpoints kept (0 = all)
  double checkpoint_share = 0.07;  // core share of the background writer (1 = unpaced)
  std::string resume;           // auto | PATH (empty = start fresh)
  double collective_timeout = 300;  // seconds before a stuck exchange aborts the job
  int max_bad_steps = 5;        // consecutive non-finite steps skipped before stopping

  // --- parallelism ---
  int ep = 1;                   // ranks per expert-parallel group
  int threads = 0;              // compute threads per rank (0 = cores / local ranks): runtime/threads.hpp
  std::string device = "cpu";   // cpu | cuda
  int overlap_chunks = 1;       // pipeline chunks per block (1 = serial exchanges)
  std::string recompute = "none";  // none | experts | blocks (layers/memory.hpp, Recompute)
  std::string precision = "fp32";  // fp32 | bf16 (runtime/bf16.hpp)
  std::string memory_limit = "auto";  // bytes this rank may use, or auto (cgroup limit / MemAvailable)
  double sim_link_gbps = 0;     // emulated link bandwidth, Gbit/s (0 = off)
  double sim_link_latency_us = 0;  // emulated per-message latency
};

// Result of parsing: either a config to run, or a request to exit now (e.g. --help was printed).
struct ConfigParse {
  Config config;
  bool exit_now = false;   // true after --help / --version; exit code 0
  bool version = false;    // --version: the caller prints version_report (runtime/version.hpp)
};

// Parses argv (and the INI file named by --config, if any), then validates. Throws uoe::Error
// with a message naming the offending option on anything wrong (unknown option, bad value,
// inconsistent shapes, missing data file). `help_out` receives --help text.
ConfigParse config_parse(int argc, const char* const* argv, std::string* help_out);

// Checks the values of a config (called by config_parse; public for tests and for configs built
// in code). Throws uoe::Error naming the option. Does not touch the file system.
void config_validate(const Config& c);

// The config as INI text (every option, `name = value` lines), for logs, manifests and repro.
std::string config_to_ini(const Config& c);

// Reads INI text as --config does (keys the options of the file, each value converted to its
// member's type) over the defaults, without validating (config_validate) or checking data files:
// for a config stored elsewhere (a checkpoint's config_ini) and for tests. Throws uoe::Error naming
// `where` and the key.
Config config_from_ini(const std::string& ini, const std::string& where);

}  // namespace uoe
