// The communication libraries this process loaded, for --version and the build line that uoe-train
// logs and checkpoints store (runtime/version.hpp, which knows no communication and takes these
// from its caller): version_report("uoe-train", comm_library_versions()).
#pragma once
#include "runtime/version.hpp"

namespace uoe {

// MPI's library version string (MPI_Get_library_version: callable before MPI_Init and after
// MPI_Finalize, no communicator) and, in the GPU build, NCCL's version (ncclGetVersion: no
// communicator, no GPU); "" for what could not be asked.
CommLibraries comm_library_versions();

}  // namespace uoe
