// uoe-train: parse and validate the configuration, then run the training job, on one process or
// under mpirun / srun.
// Exit codes: 0 success (or --help, --version), 2 bad configuration or command line, 1 any other failure.
// Under MPI an error on any rank aborts the whole job (MPI_Abort), so no rank is left waiting in
// a collective for one that has gone: every rank exits non-zero and the message says which rank.
// An error the ranks have agreed on (uoe::CollectiveError) ends every rank with its own message,
// MPI_Finalize and exit code 1, without an abort.
#include <mpi.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <csignal>
#include <cstdio>
#include <exception>
#include <string>

#include "launcher/trainer.hpp"
#include "parallel/comm.hpp"
#include "parallel/mpi_version.hpp"
#include "runtime/config.hpp"
#include "runtime/cpu_features.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/version.hpp"

namespace {

int fail_job(const uoe::MpiSession& mpi, const std::exception& e, int code) {
  uoe::log_error("%s", e.what());
  // Every rank parses the same command line, so config errors happen on all ranks alike; a rank
  // that fails alone must not leave the others in a collective. A CollectiveError is thrown by
  // every rank at the same point (agreed through a collective, e.g. a failed checkpoint write):
  // then every rank prints its message and returns, and MPI_Finalize ends the job cleanly.
  if (mpi.world_size() > 1 && dynamic_cast<const uoe::CollectiveError*>(&e) == nullptr)
    MPI_Abort(MPI_COMM_WORLD, code);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  // Under a file-size limit (ulimit -f) a write past it fails with EFBIG, reported with the file's
  // name, instead of killing the process with SIGXFSZ (the Trainer does the same for its callers).
  std::signal(SIGXFSZ, SIG_IGN);
#if defined(__GLIBC__)
  // Buffers of 128 KiB and more get pages of their own (mmap) and give them back when freed. By
  // default glibc raises that threshold to the size of each large block freed (up to 32 MiB), after
  // which the step's large, varying buffers (row tables, exchange and recomputation scratch) come
  // from the heap and leave holes: at d 768, 12 layers, --recompute blocks peaked 8-19 MiB above
  // the start-up estimate, 2 MiB with the threshold fixed (bench/README-memory.md). Speed unchanged:
  // the buffers are reused, not reallocated, from step to step.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
  // The BLAS kernels for this CPU's vector ISA: may re-execute the process once, so before
  // MPI_Init (Open MPI allows an exec before it) and before any thread of ours starts.
  uoe::blas_kernels_select();
  uoe::MpiSession mpi(&argc, &argv);
  uoe::log_set_rank(mpi.world_rank(), mpi.world_size());
  uoe::Config cfg;
  try {
    std::string help;
    const uoe::ConfigParse parsed = uoe::config_parse(argc, argv, &help);
    if (parsed.exit_now) {
      if (mpi.world_rank() == 0)
        std::fputs(parsed.version ? uoe::version_report("uoe-train", uoe::comm_library_versions()).c_str() : help.c_str(), stdout);
      return 0;
    }
    cfg = parsed.config;
  } catch (const std::exception& e) {
    return fail_job(mpi, e, 2);
  }

  try {
    uoe::Trainer trainer(cfg);
    return trainer.run();
  } catch (const std::exception& e) {
    return fail_job(mpi, e, 1);
  }
}
