#include "runtime/options.hpp"

#include <iterator>

#include "runtime/error.hpp"

namespace uoe {
namespace {

using G = OptionGroup;
using R = OnResume;
using C = Config;

// Option names are a contract: presets, docs, scripts and every stored checkpoint's config_ini use
// them. A `shape` row is compared when a checkpoint is loaded: making an option `shape` refuses the
// checkpoints written before with another value; removing `shape` lets them load into a model they
// do not fit (docs/model.md, Notation has what fixes the shapes).
const Option kOptions[] = {
    {"data",                     &C::data,                   G::data,         R::free,
     "training text file (default: the built-in corpus)"},
    {"val-data",                 &C::val_data,               G::data,         R::free,
     "validation text file (default: the last --val-fraction of --data)"},
    {"val-fraction",             &C::val_fraction,           G::data,         R::free,
     "share of --data held out for validation, in (0, 1)"},
    {"tokenizer",                &C::tokenizer,              G::data,         R::shape,
     "byte | word | sentencepiece (sentencepiece: prepared token files only, see uoe-prepare)"},
    {"windows-within-documents", &C::windows_within_documents, G::data,       R::free,
     "draw each training window inside one document (data prepared by uoe-prepare with end-of-document "
     "tokens; documents shorter than --seq-len + 1 tokens are skipped)"},

    {"layers",                   &C::layers,                 G::model,        R::shape,
     "transformer blocks L"},
    {"d-model",                  &C::d_model,                G::model,        R::shape,
     "model width d (divisible by --heads)"},
    {"heads",                    &C::heads,                  G::model,        R::shape,
     "attention heads H (divisible by --attn-experts; d/H even)"},
    {"attn-experts",             &C::attn_experts,           G::model,        R::shape,
     "attention experts E_a"},
    {"attn-topk",                &C::attn_topk,              G::model,        R::behaviour,
     "attention experts per patch k_a, 1..E_a"},
    {"experts",                  &C::experts,                G::model,        R::shape,
     "MLP experts E (divide --d-ff)"},
    {"topk",                     &C::topk,                   G::model,        R::behaviour,
     "MLP experts per patch k, 1..E"},
    {"d-ff",                     &C::d_ff,                   G::model,        R::shape,
     "dense MLP hidden width F, cut into E experts"},
    {"capacity-factor",          &C::capacity_factor,        G::model,        R::behaviour,
     "expert capacity factor (0 = dropless)"},
    {"patch-size",               &C::patch_size,             G::model,        R::behaviour,
     "tokens per routed patch (divides --seq-len)"},
    {"gate",                     &C::gate,                   G::model,        R::behaviour,
     "gate weights: renorm (k·p/Σp) | sum (1) | prob (p, as Switch)"},
    {"aux-loss",                 &C::aux_loss,               G::model,        R::behaviour,
     "load-balance loss weight alpha"},
    {"z-loss",                   &C::z_loss,                 G::model,        R::behaviour,
     "router z-loss weight"},
    {"block-type",               &C::block_type,             G::model,        R::shape,
     "uoe | dense (the transformer UoE is cut from) | moe (token-choice MoE MLP, dense attention)"},
    {"expert-d-ff",              &C::expert_d_ff,            G::model,        R::shape,
     "hidden width of each moe expert (0 = d-ff / experts)"},

    {"seq-len",                  &C::seq_len,                G::training,     R::free,
     "sequence length T"},
    {"batch-size",               &C::batch_size,             G::training,     R::free,
     "sequences B per rank micro-batch"},
    {"micro-batches",            &C::micro_batches,          G::training,     R::free,
     "micro-batches M accumulated per step"},
    {"steps",                    &C::steps,                  G::training,     R::free,
     "optimizer steps"},
    {"lr",                       &C::lr,                     G::training,     R::free,
     "peak learning rate"},
    {"min-lr",                   &C::min_lr,                 G::training,     R::free,
     "learning rate reached by the cosine at the last step"},
    {"warmup",                   &C::warmup,                 G::training,     R::free,
     "linear warm-up steps"},
    {"weight-decay",             &C::weight_decay,           G::training,     R::free,
     "AdamW weight decay (matrices only)"},
    {"clip",                     &C::clip,                   G::training,     R::free,
     "global gradient-norm clip (0 = off)"},
    {"seed",                     &C::seed,                   G::training,     R::free,
     "random seed"},
    {"data-offset",              &C::data_offset,            G::training,     R::free,
     "step s trains on the windows of step s + N: a run continued from another's step N (uoe-ckpt "
     "convert writes it) sees the windows that run would have drawn next, not its first ones again"},

    {"eval-every",               &C::eval_every,             G::evaluation,   R::free,
     "steps between evaluations (0 = only at the end)"},
    {"eval-batches",             &C::eval_batches,           G::evaluation,   R::free,
     "evaluate only the first this many batches of --batch-size windows (0 = the whole split)"},
    {"eval-windows",             &C::eval_windows,           G::evaluation,   R::free,
     "at most this many validation windows per evaluation, spread evenly over the split (or over "
     "--eval-batches' windows), the same ones every time ('all' or 0 = all of them)"},
    {"log-every",                &C::log_every,              G::evaluation,   R::free,
     "steps between progress lines"},
    {"metrics",                  &C::metrics,                G::evaluation,   R::free,
     "JSON-lines metrics file (default: none)"},
    {"metrics-grads",            &C::metrics_grads,          G::evaluation,   R::free,
     "add each tensor's gradient fingerprint (sum of squares, checksum) to the metrics lines (for the "
     "equivalence tests: one pass over the gradients per line)"},

    {"checkpoint-dir",           &C::checkpoint_dir,         G::checkpoints,  R::free,
     "directory for sharded HDF5 checkpoints (default: none)"},
    {"checkpoint-every",         &C::checkpoint_every,       G::checkpoints,  R::free,
     "steps between checkpoints (0 = only at the end)"},
    {"keep-last",                &C::keep_last,              G::checkpoints,  R::free,
     "committed checkpoints to keep (0 = all)"},
    {"checkpoint-writer-share",  &C::checkpoint_share,       G::checkpoints,  R::free,
     "share of one core the background checkpoint writer may use while training runs (1 = unpaced)"},
    {"resume",                   &C::resume,                 G::checkpoints,  R::free,
     "auto (newest valid checkpoint in --checkpoint-dir) or a checkpoint path"},
    {"collective-timeout",       &C::collective_timeout,     G::checkpoints,  R::free,
     "seconds an exchange may wait before the job is aborted with a report"},
    {"max-bad-steps",            &C::max_bad_steps,          G::checkpoints,  R::free,
     "consecutive non-finite steps skipped before stopping"},

    {"ep",                       &C::ep,                     G::parallelism,  R::free,
     "ranks per expert-parallel group"},
    {"threads",                  &C::threads,                G::parallelism,  R::free,
     "compute threads per rank (0 = cores / local ranks); the BLAS runs single-threaded inside them"},
    {"device",                   &C::device,                 G::parallelism,  R::free,
     "cpu | cuda (cuda: see docs/gpu.md for what runs today)"},
    {"overlap-chunks",           &C::overlap_chunks,         G::parallelism,  R::free,
     "chunks per block, exchanges pipelined on a communication thread (cuda: stream); 1 = in line, no overlap"},
    {"recompute",                &C::recompute,              G::parallelism,  R::free,
     "none | experts (drop the experts' caches) | blocks (keep block inputs and what crossed the network): "
     "formed again in backward, the same gradients bit for bit"},
    {"precision",                &C::precision,              G::parallelism,  R::behaviour,
     "fp32 | bf16: the GEMMs' inputs rounded to bf16 with fp32 accumulation, expert rows exchanged as bf16; "
     "parameters, optimizer state, norms, softmax, routing and losses stay fp32 (on CPUs: the GPU's numerics, "
     "not a speed-up)"},
    {"memory-limit",             &C::memory_limit,           G::parallelism,  R::free,
     "bytes one rank may use, or auto: the cgroup memory limit, else MemAvailable, shared by this host's ranks "
     "(with --device cuda: the free memory of the rank's GPU); "
     "a run whose estimate exceeds it is refused before it allocates"},
    {"sim-link-gbps",            &C::sim_link_gbps,          G::parallelism,  R::free,
     "emulate a network link of this many Gbit/s per rank (0 = off; see parallel/sim_link.hpp)"},
    {"sim-link-latency-us",      &C::sim_link_latency_us,    G::parallelism,  R::free,
     "emulated per-message latency in microseconds (with --sim-link-gbps)"},

    // After --help and --version (runtime/cli.hpp), which every tool has.
    {"config",                   &C::config_file,            G::general,      R::free,
     "INI file of `name = value` lines, names as above without dashes; the command line overrides it"},
};

}  // namespace

std::span<const Option> config_options() { return kOptions; }

const char* option_group_title(OptionGroup g) {
  switch (g) {
    case OptionGroup::data: return "Data";
    case OptionGroup::model: return "Model";
    case OptionGroup::training: return "Training";
    case OptionGroup::evaluation: return "Evaluation and logging";
    case OptionGroup::checkpoints: return "Checkpoints and reliability";
    case OptionGroup::parallelism: return "Parallelism";
    case OptionGroup::general: return "General";
  }
  UOE_ASSERT(false, "option group ", static_cast<int>(g));
  return "";
}

const Option& config_option(OptionField field) {
  const Option* found = nullptr;
  for (const Option& o : kOptions)
    if (o.field == field) found = &o;
  UOE_ASSERT(found, "a Config member that no option in runtime/options.cpp sets");
  return *found;
}

std::string option_flag(OptionField field) { return std::string("--") + config_option(field).name; }

}  // namespace uoe
