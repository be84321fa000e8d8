// Model options for the benchmark programs: whatever a bench does not recognise is a uoe-train
// option, parsed and validated by the trainer's own config code.
#pragma once
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "runtime/config.hpp"

namespace uoe::bench {

// args[0] is the program name, the rest uoe-train options. Returns the parsed config, or nullopt
// after printing uoe-train's --help (the caller exits 0). Throws uoe::Error on a bad option.
inline std::optional<Config> model_config(const std::vector<const char*>& args) {
  std::string help;
  const ConfigParse parsed = config_parse(static_cast<int>(args.size()), args.data(), &help);
  if (parsed.exit_now) {
    std::fputs(help.c_str(), stdout);
    return std::nullopt;
  }
  return parsed.config;
}

}  // namespace uoe::bench
