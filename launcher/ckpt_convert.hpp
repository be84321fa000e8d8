// Dense ↔ UoE conversion of whole models, behind `uoe-ckpt convert` (docs/model.md, Experts by
// equivalent decomposition): a dense transformer IS a union of experts, so a trained dense model can
// go on training as UoE ("upcycling"), and a UoE model can be handed out as the dense transformer it
// was cut from. The decomposed tensors (attention wqkv/wo, MLP w1/b1/w2) pass through their dense
// form (layers/convert.hpp: a permutation, so every value is copied, never computed); every other
// tensor of the same name and shape is copied as is. checkpoints/ knows no layers/, so this lives here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "checkpoints/checkpoint.hpp"
#include "layers/model.hpp"

namespace uoe {

// The spec in the equivalence limit (docs/model.md, Equivalence law): every expert selected
// (top-k = experts), dropless (capacity factor 0), sum gates (w = 1). Shapes, and so the
// parameters, are unchanged; a UoE model run so computes the dense model it was cut from.
ModelSpec equivalence_limit(ModelSpec s);

// What convert_weights did besides the decomposed tensors.
struct WeightTransfer {
  std::vector<std::string> dropped;      // src tensors not carried over (its routers)
  std::vector<std::string> initialised;  // dst tensors left as dst's constructor made them (its routers)
};

// Copies the weights of `src` into `dst`: both single-rank models (every expert held), of block
// type dense or uoe (moe experts are not cut from a dense layer: refused), with the same layers,
// d, heads, d_ff and vocabulary; the expert counts may differ. Routers are never carried over (a
// dense block has none; experts cut anew get fresh ones, even uoe → uoe): dst's keep the values dst
// was constructed with, i.e. a fresh run's initialisation for dst's seed (the ParamStore draws each
// element from (seed, tensor name, global index)). Throws uoe::Error naming what differs.
WeightTransfer convert_weights(const Model& src, Model& dst);

// Fixed token sequences for checks: B sequences of T tokens in [0, V), the same in every build and run.
std::vector<int32_t> check_tokens(int B, int T, int V);

// Output probabilities [B·T, V] of `model` on `tokens` (B sequences of the spec's seq_len), one
// dropless forward pass. The one place this file runs a model.
std::vector<float> model_output_probs(Model& model, const std::vector<int32_t>& tokens, int B);

// Bound of `uoe-ckpt convert --check`: |converted − source| ≤ rtol·|source| + atol per probability.
// Both models compute in fp32 and differ only in the order of sums (the MLP's hidden units summed
// per expert, then over experts): a few 1e-7 relative, where a misplaced head, unit or bias moves a
// probability by 1e-3 or more.
inline constexpr double kConvertCheckRtol = 1e-5, kConvertCheckAtol = 1e-6;

struct ProbsComparison {
  bool ok = true;
  size_t worst = 0;            // element with the largest |got − ref| / bound
  double ref = 0, got = 0;     // its values
  double max_abs_diff = 0;     // largest |got − ref| over every element
  double max_ratio = 0;        // largest |got − ref| / (rtol·|ref| + atol): ok iff ≤ 1
  size_t elements = 0;
};
// Compares two probability arrays of equal size elementwise (a non-finite value fails).
ProbsComparison compare_probs(const std::vector<float>& ref, const std::vector<float>& got, double rtol, double atol);

// The --out of convert, import and export must be absent or an empty directory (nothing is
// overwritten): else uoe::Error naming it. Returns whether it existed, for out_dir_restore.
bool out_dir_check_new(const std::string& out);

// Leaves `out` as out_dir_check_new found it (absent, or empty): after a failure once writing began.
void out_dir_restore(const std::string& out, bool existed) noexcept;

// What convert and import write: `params` as a new one-rank checkpoint in `out` (out_dir_check_new
// passed; `out_existed` its answer) at `state` with zero AdamW moments, by the project's writer
// (step_N.tmp, verified, renamed, `latest`), beside out/train.ini (`ini_comment` as its first line,
// then state.config_ini). On any error `out` is left as it was found and the error rethrown. Returns
// the committed step directory.
std::string write_fresh_checkpoint(const std::string& out, bool out_existed, const ParamStore& params,
                                   const TrainState& state, const std::string& ini_comment);

}  // namespace uoe

// `uoe-ckpt convert CKPT --to dense|uoe --out DIR [...]` (launcher/uoe_ckpt_convert.cpp): argv[0] is
// the subcommand ("convert"), argv[1..] its arguments. Returns the exit code: 0 done (or --help),
// 2 bad command line, 1 anything else (nothing written, or --check failed: nothing written either).
int ckpt_convert_main(int argc, char** argv);
