// uoe-ckpt: one binary, a sub-command per job on a checkpoint (launcher/uoe_ckpt_main.cpp holds the
// table). A sub-command is a function with main()'s signature, called with argv[0] = its name, that
// returns the exit code: 0 ok (or --help, --version), 1 a failure (the message names the file), 2 a
// bad command line — as uoe-train (runtime/cli.hpp: cli_main). Adding one: declare it here, define
// it in launcher/uoe_ckpt_<name>.cpp (add the file to uoe-ckpt in CMakeLists.txt), add its line to
// kSubCommands.
#pragma once
#include <boost/program_options.hpp>

#include <string>
#include <utility>
#include <vector>

namespace uoe {

int ckpt_info_main(int argc, char** argv);    // uoe-ckpt info CKPT [--json]
int ckpt_verify_main(int argc, char** argv);  // uoe-ckpt verify CKPT [--all]

// A sub-command's command line: the options of `desc` (--help and --version are added), then the
// bare arguments `positional` names, in order, each required (e.g. {{"CKPT", &path}}). Prints
// `usage` and the options after --help, version_report("uoe-ckpt") after --version, and returns
// false then (exit 0). Throws uoe::Error "command line: ..." for anything else wrong (exit 2).
bool ckpt_parse(int argc, char** argv, const char* usage, boost::program_options::options_description& desc,
                const std::vector<std::pair<const char*, std::string*>>& positional,
                boost::program_options::variables_map& vm);

}  // namespace uoe
