#include "runtime/cli.hpp"

#include <cstdio>
#include <exception>
#include <map>
#include <vector>

#include "runtime/error.hpp"

namespace po = boost::program_options;

namespace uoe {
namespace {
// Boost.Program_options (1.74) builds an error message by replacing each placeholder of its
// template (%option%, %value%, %canonical_option%, ...) with a name or value from the input, again
// and again until none is left. An input that contains its own placeholder ("--d-model %value%", an
// INI key "x%canonical_option%") makes what() loop forever. So when any of those texts holds a '%',
// each '%' is written as the four characters \x25 before the message is built: with no '%' in what
// is substituted, every replacement removes two '%' from the message and the formatting ends.
// Each text is also cut to kShown bytes, so that a 100 KB line of garbage does not become the message.
struct PoErrorTexts : po::error_with_option_name {  // only to name the protected member
  static constexpr auto texts = &PoErrorTexts::m_substitutions;
};

}  // namespace

std::string cli_error_message(po::error& e) {
  if (auto* named = dynamic_cast<po::error_with_option_name*>(&e)) {
    std::map<std::string, std::string>& texts = named->*PoErrorTexts::texts;
    constexpr size_t kShown = 200;
    for (auto& entry : texts) {
      std::string& text = entry.second;
      if (text.size() > kShown) text = text.substr(0, kShown) + "...";
      for (size_t at = text.find('%'); at != std::string::npos; at = text.find('%', at + 4)) text.replace(at, 1, "\\x25");
    }
  }
  return e.what();
}

void cli_parse(int argc, const char* const* argv, const po::options_description& desc, po::variables_map& vm,
               bool notify, const po::positional_options_description* positional) {
  try {
    // No guessing: "--lr" must never silently resolve to a longer option name.
    const int style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    // Unregistered tokens are collected rather than thrown so that the message can name a stray
    // argument (Boost would silently drop it, there being no positional options).
    po::command_line_parser parser(argc, argv);
    parser.options(desc).style(style).allow_unregistered();
    if (positional) parser.positional(*positional);
    const po::parsed_options parsed = parser.run();
    // Bare arguments `positional` maps are options; more of them than it takes Boost refuses.
    const std::vector<std::string> unknown =
        po::collect_unrecognized(parsed.options, positional ? po::exclude_positional : po::include_positional);
    if (!unknown.empty()) {
      if (unknown[0].starts_with("-"))
        fail("command line: unknown option '", unknown[0].substr(0, unknown[0].find('=')), "'");
      fail("command line: unexpected argument '", unknown[0], "' (options are written --name value)");
    }
    po::store(parsed, vm);
    if (notify) po::notify(vm);
  } catch (po::error& e) {
    fail("command line: ", cli_error_message(e));
  }
}

void cli_add_help_and_version(po::options_description& desc) {
  desc.add_options()
      ("help,h", "print this help and exit")
      ("version", "print the version, git commit, build type and libraries (BLAS, MPI, CUDA), and exit");
}

int cli_main(const char* tool, const std::function<bool()>& parse, const std::function<int()>& run) {
  try {
    if (!parse()) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
    return 2;
  }
  try {
    return run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
    return 1;
  }
}

}  // namespace uoe
