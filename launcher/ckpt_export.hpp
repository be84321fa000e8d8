// A model as safetensors + config.json and back, behind `uoe-ckpt export` and `import`
// (checkpoints/README.md, "Exporting"): the parameters, full global tensors under the checkpoint's
// names (checkpoints/safetensors.hpp writes the format), and config.json, the model's spec in the
// trainer's option names plus what a reader needs to rebuild it without uoe (the vocabulary, the
// head and expert widths, norm, activation, positions). checkpoints/ knows no layers/, so the
// Model side lives here.
#pragma once
#include <string>
#include <vector>

#include "checkpoints/safetensors.hpp"
#include "layers/model.hpp"
#include "runtime/config.hpp"

namespace uoe {

// config.json's "format" and "format_version"; a reader refuses other versions.
inline constexpr const char* kExportFormat = "uoe-safetensors";
inline constexpr int kExportFormatVersion = 1;

// Where the model came from, for config.json's "source" (information; import keeps train_ini).
struct ExportSource {
  std::string checkpoint;  // the step directory
  int64_t step = 0;
  int world = 1, ep = 1;
  std::string build;       // the writing binary's build_info()
};

// config.json for the model `spec` trained with `cfg` (its model options; train_ini = the whole
// config, so an import continues the same training). Pretty-printed, keys in a fixed order.
std::string export_config_json(const Config& cfg, const ModelSpec& spec, const ExportSource& source);

// Reads config.json text back into a Config (the stored train_ini, if any, under the model
// options of the top level) and the vocabulary. Throws uoe::Error naming `where` and the key: not
// JSON, another format or version, a model option missing or of the wrong type, or derived
// figures (head_dim, expert widths) that contradict the options.
Config config_from_export_json(const std::string& text, const std::string& where, int* vocab);

// Every parameter of `model` (one rank holding every expert) as F32 tensors, in the ParamStore's order.
std::vector<SafetensorsTensor> model_tensors(const Model& model);

// Copies the tensors of `file` into `model`'s parameters. Throws uoe::Error naming `where` and the
// tensor when the two disagree: a tensor the model has and the file lacks, one the file has and the
// model does not, a shape, or a dtype other than F32.
void model_set_tensors(Model& model, const SafetensorsFile& file, const std::string& where);

// `uoe-ckpt export` and `uoe-ckpt import` (launcher/uoe_ckpt_export.cpp, uoe_ckpt_import.cpp).
int ckpt_export_main(int argc, char** argv);
int ckpt_import_main(int argc, char** argv);

}  // namespace uoe
