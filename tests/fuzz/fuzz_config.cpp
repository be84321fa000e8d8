// Fuzz target: the configuration parser (runtime/config.cpp) on hostile INI files and command lines.
//
// Input: INI text, optionally followed by a NUL byte and command-line tokens separated by NUL bytes
// (at most 8). The INI text is written to a scratch file and the parser runs as uoe-train would:
//   uoe-train --config FILE TOKEN...
// Accepted: a parsed config (then it must validate, and config_to_ini of it must parse back to the
// same INI text), or a uoe::Error. Anything else escaping, a crash, UB or a leak is a bug.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.hpp"
#include "runtime/config.hpp"

namespace {

uoe::ConfigParse parse(const std::vector<std::string>& args, std::string* help) {
  std::vector<const char*> argv;
  argv.reserve(args.size());
  for (const std::string& a : args) argv.push_back(a.c_str());
  return uoe::config_parse(static_cast<int>(argv.size()), argv.data(), help);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string ini_path = uoe_fuzz::scratch().write("run.ini", in.substr(0, nul));

  std::vector<std::string> args = {"uoe-train", "--config", ini_path};
  if (nul != std::string_view::npos) {
    std::string_view rest = in.substr(nul + 1);
    while (args.size() < 3 + 8) {
      const size_t end = rest.find('\0');
      args.emplace_back(rest.substr(0, end));
      if (end == std::string_view::npos) break;
      rest = rest.substr(end + 1);
    }
  }

  uoe::ConfigParse parsed;
  std::string help;
  if (!uoe_fuzz::accepts("config_parse", [&] { parsed = parse(args, &help); })) return 0;
  if (parsed.exit_now) return 0;  // --help
  const uoe::Config& c = parsed.config;
  // What config_parse returns has been validated; validating again must agree.
  UOE_FUZZ_CHECK(uoe_fuzz::accepts("config_validate", [&] { uoe::config_validate(c); }));

  // config_to_ini is what manifests store; it must read back to the same text, unless a string
  // value holds what the INI reader cannot carry (documented in config.cpp: '#', surrounding
  // spaces, line breaks), or names a data file that has gone.
  const std::string ini = uoe::config_to_ini(c);
  const std::string again_path = uoe_fuzz::scratch().write("again.ini", ini);
  uoe::ConfigParse again;
  if (uoe_fuzz::accepts("config_parse (config_to_ini)", [&] { again = parse({"uoe-train", "--config", again_path}, nullptr); })) {
    bool plain = true;
    for (const std::string* s : {&c.data, &c.val_data, &c.tokenizer, &c.gate, &c.block_type, &c.metrics,
                                 &c.checkpoint_dir, &c.resume, &c.device})
      plain &= s->find_first_of("#\n\r\t \\\"") == std::string::npos;
    if (plain) UOE_FUZZ_CHECK(uoe::config_to_ini(again.config) == ini);
  }
  return 0;
}
