#include "launcher/ckpt_convert.hpp"

#include "layers/cpu_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "layers/convert.hpp"
#include "layers/optimizer.hpp"
#include "parallel/communicator.hpp"
#include "runtime/atomic_file.hpp"
#include "runtime/error.hpp"
#include "runtime/rng.hpp"

namespace uoe {
namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string t = "[";
  for (size_t i = 0; i < shape.size(); ++i) t += (i ? ", " : "") + std::to_string(shape[i]);
  return t + "]";
}

}  // namespace

ModelSpec equivalence_limit(ModelSpec s) {
  s.attn_topk = s.attn_experts;
  s.topk = s.experts;
  s.capacity_factor = 0.0;
  s.renorm = false;
  s.prob_gate = false;
  return model_spec_resolve(s);
}

WeightTransfer convert_weights(const Model& src, Model& dst) {
  const ModelSpec& a = src.spec();
  const ModelSpec& b = dst.spec();
  for (const ModelSpec* s : {&a, &b})
    if (s->block_type == BlockType::moe)
      fail("cannot convert a moe model: its experts are independent FFNs, not cut from a dense layer "
           "(docs/model.md, Experts by equivalent decomposition); dense and uoe convert into each other");
  if (a.layers != b.layers || a.d != b.d || a.heads != b.heads || a.d_ff != b.d_ff || a.vocab != b.vocab)
    fail("conversion keeps the dense shape: layers ", a.layers, " vs ", b.layers, ", d-model ", a.d, " vs ", b.d,
         ", heads ", a.heads, " vs ", b.heads, ", d-ff ", a.d_ff, " vs ", b.d_ff, ", vocabulary ", a.vocab, " vs ",
         b.vocab);

  // The decomposed tensors, through their dense form (dense_from_uoe checks every expert is held).
  std::set<std::string> done;
  for (int l = 0; l < a.layers; ++l) {
    dense_to_uoe(dense_from_uoe(src, l), dst, l);
    for (const Model* m : {&src, static_cast<const Model*>(&dst)})
      for (const BlockParams& bp : {m->blocks()[2 * l], m->blocks()[2 * l + 1]})
        for (int idx : {bp.w_in, bp.b_in, bp.w_out})
          if (idx >= 0) done.insert(m->params().info(idx).name);
  }

  // Routers are never carried over: a dense block has none, and experts cut anew (other counts, or
  // the same counts from a dense model) get a fresh router each, as a new run would.
  std::set<std::string> routers;
  for (const Model* m : {&src, static_cast<const Model*>(&dst)})
    for (const BlockParams& bp : m->blocks())
      for (int idx : {bp.router_w, bp.router_b})
        if (idx >= 0) routers.insert(m->params().info(idx).name);

  // Everything else by name: the embedding, norms, output biases.
  WeightTransfer t;
  std::set<std::string> copied;
  for (size_t i = 0; i < dst.params().count(); ++i) {
    const ParamInfo& d = dst.params().info(static_cast<int>(i));
    if (done.count(d.name)) continue;
    const int j = routers.count(d.name) ? -1 : src.params().find(d.name);
    if (j < 0) {
      t.initialised.push_back(d.name);
      continue;
    }
    const ParamInfo& s = src.params().info(j);
    if (s.global_shape != d.global_shape || s.size != d.size)
      fail("tensor ", d.name, " is ", shape_text(s.global_shape), " in the source but ", shape_text(d.global_shape),
           " in the converted model");
    std::memcpy(dst.params().value(static_cast<int>(i)), src.params().value(j), d.size * sizeof(float));
    copied.insert(d.name);
  }
  for (const ParamInfo& s : src.params().infos())
    if (!done.count(s.name) && !copied.count(s.name)) t.dropped.push_back(s.name);
  return t;
}

std::vector<int32_t> check_tokens(int B, int T, int V) {
  std::vector<int32_t> tokens(static_cast<size_t>(B) * T);
  const uint64_t stream = rng_stream("uoe-ckpt convert --check");
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(rng_below(1, stream, i, V));
  return tokens;
}

std::vector<float> model_output_probs(Model& model, const std::vector<int32_t>& tokens, int B) {
  const size_t n = tokens.size() * static_cast<size_t>(model.spec().vocab);
  ForwardStats stats;
  CpuStep step(model);
  step.forward_eval(tokens.data(), tokens.data(), B, &stats);  // targets: only the CE uses them
  return std::vector<float>(step.probs(), step.probs() + n);
}

ProbsComparison compare_probs(const std::vector<float>& ref, const std::vector<float>& got, double rtol, double atol) {
  if (ref.size() != got.size()) fail("compare_probs: ", ref.size(), " reference values but ", got.size(), " to check");
  ProbsComparison c;
  c.elements = ref.size();
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = ref[i], g = got[i];
    const double diff = std::isfinite(r) && std::isfinite(g) ? std::fabs(g - r) : HUGE_VAL;
    const double ratio = diff / (rtol * std::fabs(r) + atol);
    c.max_abs_diff = std::max(c.max_abs_diff, diff);
    if (i == 0 || ratio > c.max_ratio) {
      c.max_ratio = ratio;
      c.worst = i;
      c.ref = r;
      c.got = g;
    }
  }
  c.ok = c.max_ratio <= 1.0;
  return c;
}

bool out_dir_check_new(const std::string& out) {
  namespace fs = std::filesystem;
  const bool existed = fs::exists(out);
  if (existed && (!fs::is_directory(out) || !fs::is_empty(out)))
    fail("--out ", out, " exists and is not an empty directory: give a new directory (nothing is overwritten)");
  return existed;
}

void out_dir_restore(const std::string& out, bool existed) noexcept {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (existed)
    for (const auto& e : fs::directory_iterator(out, ec)) fs::remove_all(e.path(), ec);
  else
    fs::remove_all(out, ec);
}

std::string write_fresh_checkpoint(const std::string& out, bool out_existed, const ParamStore& params,
                                   const TrainState& state, const std::string& ini_comment) {
  namespace fs = std::filesystem;
  try {
    AdamW opt(params, AdamWSpec{});
    opt.m().zero();
    opt.v().zero();
    SelfCommunicator self;
    CheckpointWriter writer(out, /*keep_last=*/0, self, shard_role_single());
    writer.prepare();
    writer.save(params, opt, state);
    writer.wait();
    AtomicFile ini((fs::path(out) / "train.ini").string());
    ini.write("# " + ini_comment + "\n");
    ini.write(state.config_ini);
    ini.commit();
    return writer.last_committed();
  } catch (...) {
    out_dir_restore(out, out_existed);
    throw;
  }
}

}  // namespace uoe
