// The option table: every option of uoe-train written once, as one row (name, Config member, topic,
// what a difference on resume means, help text). The command line and --config parser, --help, the
// INI text (config_to_ini, which checkpoint manifests store) and the keys loading compares
// (config_shape_keys, checkpoints/manifest.hpp) are all generated from it; config_validate names
// options through it. Adding an option: README.md, Training ("Adding an option").
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include "runtime/config.hpp"

namespace uoe {

// Topics, in the order --help prints them. The INI text has a `# topic` comment before each; options
// of `general` belong to the command line only (not read from --config, not written to the INI).
enum class OptionGroup { data, model, training, evaluation, checkpoints, parallelism, general };
inline constexpr OptionGroup kOptionGroups[] = {OptionGroup::data,        OptionGroup::model,
                                                OptionGroup::training,    OptionGroup::evaluation,
                                                OptionGroup::checkpoints, OptionGroup::parallelism,
                                                OptionGroup::general};

// What loading a checkpoint does when the option's value differs from the one stored in it
// (config_check_compatible, checkpoints/manifest.hpp).
enum class OnResume {
  free,       // nothing: schedules, paths, logging, the parallel layout
  shape,      // refused, naming the option: it fixes the parameters' shapes or their meaning
  behaviour,  // loaded with a warning: it changes what the model computes, not its shapes
};

// The Config member an option sets; its type picks the parsing and the INI rendering (double: 17
// digits, bool: 0 | 1 and a bare --flag means 1, uint64_t: read strictly, "-1" refused).
using OptionField =
    std::variant<int Config::*, double Config::*, uint64_t Config::*, bool Config::*, std::string Config::*>;

struct Option {
  const char* name;      // `--name` on the command line, `name = value` in INI files and manifests
  OptionField field;     // the member's initialiser in Config is the default --help shows
  OptionGroup group;
  OnResume on_resume;
  const char* help;      // --help text
};

// Every option, grouped by topic in --help order; within a topic, in --help and INI order.
std::span<const Option> config_options();

// --help's heading of a topic ("Evaluation and logging"); the INI comment is its lower case.
const char* option_group_title(OptionGroup g);

// The option bound to `field`. A member that no option sets is a bug in uoe (UOE_ASSERT).
const Option& config_option(OptionField field);

// "--name" of the option bound to `field`, for messages: config_validate names options this way.
std::string option_flag(OptionField field);

}  // namespace uoe
