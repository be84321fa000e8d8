// Command lines of the tools (uoe-train's config, uoe-prepare, uoe-sample, uoe-ckpt), one way: Boost.Program_options
// without guessing (an abbreviation never silently resolves to a longer option), stray tokens named
// in the error, and Boost's messages made safe to build (see cli_error_message).
#pragma once
#include <boost/program_options.hpp>

#include <functional>
#include <string>

namespace uoe {

// A tool's main(): parse() (false: --help was printed, exit 0), then run(); an exception from
// parse() exits 2, one from run() 1, each printed as "<tool>: error: <what>" on stderr.
int cli_main(const char* tool, const std::function<bool()>& parse, const std::function<int()>& run);

// Adds the options every tool has: --help (-h) and --version. A tool that finds "version" set prints
// version_report(tool) (runtime/version.hpp: version, git commit, build type, BLAS, MPI, CUDA/NCCL)
// and exits 0, as after --help.
void cli_add_help_and_version(boost::program_options::options_description& desc);

// Parses argv against `desc` into `vm`, then notifies (bound variables set) unless `notify` is
// false (a caller that stores more sources first: uoe-train's --config file). Throws uoe::Error
// "command line: …" naming an unknown option, a stray argument, or what Boost found wrong.
// `positional` (uoe-ckpt's CKPT) names the options that bare arguments fill; without it every bare
// argument is an error.
void cli_parse(int argc, const char* const* argv, const boost::program_options::options_description& desc,
               boost::program_options::variables_map& vm, bool notify = true,
               const boost::program_options::positional_options_description* positional = nullptr);

// Boost's message for e, built safely: Boost (1.74) fills its message template by replacing each
// placeholder (%option%, %value%, …) with text from the input again and again until none is left,
// so an input holding a placeholder ("--tokens %value%") made what() loop forever. Every '%' in the
// substituted texts is written as the four characters \x25 first, and each text is cut to 200 bytes.
std::string cli_error_message(boost::program_options::error& e);

}  // namespace uoe
