// uoe-ckpt: look at and check checkpoints on any machine, on one process, whatever world size
// wrote them (checkpoints/README.md, "uoe-ckpt").
//
//   uoe-ckpt info CKPT [--json]      the manifest, the run's options and the tensor table
//   uoe-ckpt verify CKPT [--all]     every checksum, shape, dtype and the coverage of every tensor
//   uoe-ckpt convert CKPT --to ...   dense <-> UoE (launcher/uoe_ckpt_convert.cpp)
//   uoe-ckpt export CKPT --out DIR   safetensors + config.json; import DIR --out CKPTDIR reads them back
//
// CKPT is a step directory or a run's --checkpoint-dir (then the step its `latest` names).
// Exit codes: 0 success (or --help, --version), 2 bad command line, 1 any other failure (a
// checkpoint that does not verify, one that cannot be read), the message naming the file.
#include <cstdio>
#include <iostream>
#include <string>

#include "launcher/ckpt_convert.hpp"
#include "launcher/ckpt_export.hpp"
#include "launcher/uoe_ckpt.hpp"
#include "runtime/cli.hpp"
#include "runtime/error.hpp"
#include "parallel/mpi_version.hpp"
#include "runtime/version.hpp"

namespace po = boost::program_options;

namespace {

struct SubCommand {
  const char* name;
  int (*main)(int argc, char** argv);
  const char* summary;
};

// One line per sub-command (launcher/uoe_ckpt.hpp).
constexpr SubCommand kSubCommands[] = {
    {"info", uoe::ckpt_info_main, "what a checkpoint holds: manifest, the run's options, the tensor table (--json)"},
    {"verify", uoe::ckpt_verify_main, "read every dataset: checksums, shapes, dtypes, coverage (--all: every step)"},
    {"convert", ckpt_convert_main, "dense <-> UoE through the equivalence law, a new checkpoint to resume (--check)"},
    {"export", uoe::ckpt_export_main, "the parameters as DIR/model.safetensors + config.json (--eval-logits N)"},
    {"import", uoe::ckpt_import_main, "an exported model back into a checkpoint to resume (step 0, fresh moments)"},
};

std::string usage() {
  std::string s =
      "Usage: uoe-ckpt COMMAND [OPTIONS] ...   (uoe-ckpt COMMAND --help for each)\n\n"
      "Looks at, checks, converts and exports uoe checkpoints on one process, whatever world size and --ep wrote them.\n"
      "CKPT is a step directory (step_00001200) or a run's --checkpoint-dir (the step its 'latest' names).\n\n"
      "Commands:\n";
  for (const SubCommand& c : kSubCommands) {
    char line[256];
    std::snprintf(line, sizeof line, "  %-8s %s\n", c.name, c.summary);
    s += line;
  }
  s += "\nOptions:\n  -h [ --help ]   print this help and exit\n  --version       print the version, git commit, "
       "build type and libraries, and exit\n";
  return s;
}

}  // namespace

namespace uoe {

bool ckpt_parse(int argc, char** argv, const char* usage_line, po::options_description& desc,
                const std::vector<std::pair<const char*, std::string*>>& positional, po::variables_map& vm) {
  cli_add_help_and_version(desc);
  // Every bare argument is collected here, so that one too many is named in the error.
  std::vector<std::string> bare;
  po::options_description all;
  all.add(desc).add_options()("bare arguments", po::value(&bare));
  po::positional_options_description pos;
  pos.add("bare arguments", -1);
  cli_parse(argc, argv, all, vm, true, &pos);
  if (vm.count("version")) {
    std::cout << version_report("uoe-ckpt", uoe::comm_library_versions());
    return false;
  }
  if (vm.count("help")) {
    std::cout << "Usage: " << usage_line << "\n\n" << desc;
    return false;
  }
  if (bare.size() > positional.size())
    fail("command line: unexpected argument '", bare[positional.size()], "' (usage: ", usage_line, ")");
  if (bare.size() < positional.size())
    fail("command line: ", positional[bare.size()].first, " is required (usage: ", usage_line, ")");
  for (size_t i = 0; i < positional.size(); ++i) *positional[i].second = bare[i];
  return true;
}

}  // namespace uoe

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "uoe-ckpt: error: command line: no command given\n\n%s", usage().c_str());
    return 2;
  }
  const std::string command = argv[1];
  if (command == "--help" || command == "-h") {
    std::cout << usage();
    return 0;
  }
  if (command == "--version") {
    std::cout << uoe::version_report("uoe-ckpt", uoe::comm_library_versions());
    return 0;
  }
  for (const SubCommand& c : kSubCommands)
    if (command == c.name) return c.main(argc - 1, argv + 1);
  std::string known;
  for (const SubCommand& c : kSubCommands) known += std::string(known.empty() ? "" : ", ") + c.name;
  std::fprintf(stderr, "uoe-ckpt: error: command line: unknown command '%s' (commands: %s; uoe-ckpt --help)\n",
               command.c_str(), known.c_str());
  return 2;
}
