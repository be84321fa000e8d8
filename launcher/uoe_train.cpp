// uoe-train: parse and validate the configuration, then run the training job, on one process or
// under mpirun / srun.
// Exit codes: 0 success (or --help), 2 bad configuration or command line, 1 any other failure.
// Under MPI an error on any rank aborts the whole job (MPI_Abort), so no rank is left waiting in
// a collective for one that has gone: every rank exits non-zero and the message says which rank.
#include <mpi.h>

#include <cstdio>
#include <exception>
#include <string>

#include "launcher/train.hpp"
#include "parallel/comm.hpp"
#include "runtime/config.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

namespace {

int fail_job(const uoe::MpiSession& mpi, const char* what, int code) {
  uoe::log_error("%s", what);
  // Every rank parses the same command line, so config errors happen on all ranks alike; a rank
  // that fails alone must not leave the others in a collective.
  if (mpi.world_size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  uoe::MpiSession mpi(&argc, &argv);
  uoe::log_set_rank(mpi.world_rank(), mpi.world_size());
  uoe::Config cfg;
  try {
    std::string help;
    const uoe::ConfigParse parsed = uoe::config_parse(argc, argv, &help);
    if (parsed.exit_now) {
      if (mpi.world_rank() == 0) std::fputs(help.c_str(), stdout);
      return 0;
    }
    cfg = parsed.config;
  } catch (const std::exception& e) {
    return fail_job(mpi, e.what(), 2);
  }

  try {
    return uoe::train_run(cfg);
  } catch (const std::exception& e) {
    return fail_job(mpi, e.what(), 1);
  }
}
