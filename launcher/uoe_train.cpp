// uoe-train: parse and validate the configuration, then run the training job.
// Exit codes: 0 success (or --help), 2 bad configuration or command line, 1 any other failure.
#include <cstdio>
#include <exception>
#include <string>

#include "launcher/train.hpp"
#include "runtime/config.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

int main(int argc, char** argv) {
  uoe::Config cfg;
  try {
    std::string help;
    const uoe::ConfigParse parsed = uoe::config_parse(argc, argv, &help);
    if (parsed.exit_now) {
      std::fputs(help.c_str(), stdout);
      return 0;
    }
    cfg = parsed.config;
  } catch (const std::exception& e) {
    uoe::log_error("%s", e.what());
    return 2;
  }

  try {
    return uoe::train_run(cfg);
  } catch (const std::exception& e) {
    uoe::log_error("%s", e.what());
    return 1;
  }
}
