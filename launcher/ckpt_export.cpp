#include "launcher/ckpt_export.hpp"

#include <nlohmann/json.hpp>

#include <cstring>
#include <set>
#include <type_traits>

#include "runtime/error.hpp"

namespace uoe {
namespace {

using ojson = nlohmann::ordered_json;

// The model options config.json carries (runtime/options.cpp's names with '_' for '-'), each
// read back into its Config member by import.
template <class F>
void for_each_model_option(Config& c, F&& f) {
  f("block_type", c.block_type);
  f("layers", c.layers);
  f("d_model", c.d_model);
  f("heads", c.heads);
  f("attn_experts", c.attn_experts);
  f("attn_topk", c.attn_topk);
  f("experts", c.experts);
  f("topk", c.topk);
  f("d_ff", c.d_ff);
  f("expert_d_ff", c.expert_d_ff);
  f("capacity_factor", c.capacity_factor);
  f("patch_size", c.patch_size);
  f("gate", c.gate);
  f("aux_loss", c.aux_loss);
  f("z_loss", c.z_loss);
  f("seq_len", c.seq_len);
  f("tokenizer", c.tokenizer);
}

// Figures derived from the options: what a reader without uoe needs, and what import checks.
ojson derived(const ModelSpec& s) {
  return ojson{{"vocab", s.vocab},
               {"head_dim", s.head_dim()},
               {"heads_per_attn_expert", s.heads_per_expert()},
               {"mlp_expert_width", s.expert_ff()},
               {"attn_routed", s.attn_routed()},
               {"mlp_routed", s.mlp_routed()}};
}

ojson model_options(Config c) {
  ojson j;
  for_each_model_option(c, [&](const char* key, const auto& value) { j[key] = value; });
  return j;
}

}  // namespace

std::string export_config_json(const Config& cfg, const ModelSpec& spec, const ExportSource& source) {
  ojson j;
  j["format"] = kExportFormat;
  j["format_version"] = kExportFormatVersion;
  // docs/model.md, The network: what the tensors mean.
  j["architecture"] = "uoe language model (docs/model.md): pre-LN blocks h += SMHA(LN(h)), h += UoME(LN(h)); "
                      "tied embedding and head; final LayerNorm";
  j["norm"] = "LayerNorm, eps 1e-5";
  j["activation"] = "GELU (exact erf)";
  j["positions"] = "RoPE, rotate-half, base 10000";
  j["router"] = "p = softmax(x·router.weight + router.bias), top-k, ties to the lower expert";
  const ojson options = model_options(cfg), figures = derived(spec);
  for (const auto& [k, v] : options.items()) j[k] = v;
  for (const auto& [k, v] : figures.items()) j[k] = v;
  j["source"] = ojson{{"checkpoint", source.checkpoint}, {"step", source.step}, {"world", source.world},
                      {"ep", source.ep},                 {"build", source.build}, {"train_ini", config_to_ini(cfg)}};
  return j.dump(2) + "\n";
}

Config config_from_export_json(const std::string& text, const std::string& where, int* vocab) {
  ojson j;
  try {
    j = ojson::parse(text);
  } catch (const ojson::exception& e) {
    fail(where, ": not JSON (", e.what(), ")");
  }
  if (!j.is_object()) fail(where, ": not a JSON object");
  if (!j.contains("format") || j["format"] != kExportFormat)
    fail(where, ": not a uoe export: \"format\" is ", j.contains("format") ? j["format"].dump() : "missing",
         ", expected \"", kExportFormat, "\"");
  if (!j.contains("format_version") || j["format_version"] != kExportFormatVersion)
    fail(where, ": format_version ", j.contains("format_version") ? j["format_version"].dump() : "missing",
         "; this uoe-ckpt reads version ", kExportFormatVersion);
  Config c;
  const bool has_ini = j.contains("source") && j["source"].is_object() && j["source"].contains("train_ini");
  if (has_ini) {
    if (!j["source"]["train_ini"].is_string()) fail(where, ": source.train_ini is not a string");
    c = config_from_ini(j["source"]["train_ini"].get<std::string>(), where + " (source.train_ini)");
  }
  // The top-level model options are the model; train_ini's must agree with them.
  const Config from_ini = c;
  for_each_model_option(c, [&](const char* key, auto& member) {
    using T = std::decay_t<decltype(member)>;
    if (!j.contains(key)) fail(where, ": model option \"", key, "\" is missing");
    const ojson& v = j[key];
    const bool ok = std::is_same_v<T, std::string> ? v.is_string()
                    : std::is_same_v<T, int>       ? v.is_number_integer()
                                                   : v.is_number();
    if (!ok) fail(where, ": \"", key, "\" is ", v.dump(), ", not a ", std::is_same_v<T, std::string> ? "string" : "number");
    member = v.get<T>();
  });
  if (has_ini) {
    const ojson mine = model_options(c), stored = model_options(from_ini);
    for (const auto& [k, v] : mine.items())
      if (stored[k] != v)
        fail(where, ": \"", k, "\" is ", v.dump(), " but source.train_ini says ", stored[k].dump(),
             ": the file contradicts itself");
  }
  try {
    config_validate(c);
  } catch (const Error& e) {
    fail(where, ": the model options: ", e.what());
  }
  if (!j.contains("vocab") || !j["vocab"].is_number_integer() || j["vocab"].get<int>() < 1)
    fail(where, ": \"vocab\" is ", j.contains("vocab") ? j["vocab"].dump() : "missing", ", not a vocabulary size");
  *vocab = j["vocab"].get<int>();
  const ojson figures = derived(model_spec_from_config(c, *vocab));
  for (const auto& [k, v] : figures.items())
    if (j.contains(k) && j[k] != v)
      fail(where, ": \"", k, "\" is ", j[k].dump(), " but the model options give ", v.dump(),
           ": the file contradicts itself");
  return c;
}

std::vector<SafetensorsTensor> model_tensors(const Model& model) {
  std::vector<SafetensorsTensor> out;
  const ParamStore& ps = model.params();
  for (size_t i = 0; i < ps.count(); ++i) {
    const ParamInfo& p = ps.info(static_cast<int>(i));
    UOE_ASSERT(static_cast<int64_t>(p.size) == p.global_size());  // one rank holds every expert
    SafetensorsTensor t{p.name, "F32", p.global_shape, std::vector<char>(p.size * sizeof(float))};
    std::memcpy(t.data.data(), ps.value(static_cast<int>(i)), t.data.size());
    out.push_back(std::move(t));
  }
  return out;
}

void model_set_tensors(Model& model, const SafetensorsFile& file, const std::string& where) {
  ParamStore& ps = model.params();
  std::set<std::string> known;
  for (size_t i = 0; i < ps.count(); ++i) {
    const ParamInfo& p = ps.info(static_cast<int>(i));
    known.insert(p.name);
    const SafetensorsTensor* t = file.find(p.name);
    if (!t)
      fail(where, ": tensor ", p.name, " ", safetensors_shape_text(p.global_shape),
           " is missing (config.json's model has it)");
    if (t->dtype != "F32") fail(where, ": tensor ", p.name, " is ", t->dtype, "; uoe's parameters are F32");
    if (t->shape != p.global_shape)
      fail(where, ": tensor ", p.name, " is ", safetensors_shape_text(t->shape), " but config.json's model has ",
           safetensors_shape_text(p.global_shape), ": config.json and the tensors disagree");
    UOE_ASSERT(static_cast<int64_t>(p.size) == p.global_size() && t->data.size() == p.size * sizeof(float));
    std::memcpy(ps.value(static_cast<int>(i)), t->data.data(), t->data.size());
  }
  for (const SafetensorsTensor& t : file.tensors)
    if (!known.count(t.name))
      fail(where, ": tensor ", t.name, " ", safetensors_shape_text(t.shape),
           " is not a parameter of config.json's model (", block_type_name(model.spec().block_type), ", ",
           model.spec().layers, " layers): config.json and the tensors disagree");
}

}  // namespace uoe
