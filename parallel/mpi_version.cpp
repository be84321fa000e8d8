// Compiled once per build (cmake/uoe_library.cmake, VARIANT_SOURCES): only the GPU build has NCCL.
#include "parallel/mpi_version.hpp"

#include <mpi.h>

#include <string>

namespace uoe {

#ifdef UOE_HAVE_CUDA
// parallel/nccl_comm.cu (kept out of this file so that it needs no NCCL header).
std::string nccl_library_version();
#endif

CommLibraries comm_library_versions() {
  CommLibraries c;
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  // (len may count the terminating NUL: read up to it.)
  if (MPI_Get_library_version(mpi, &len) == MPI_SUCCESS) c.mpi = std::string(mpi);
#ifdef UOE_HAVE_CUDA
  c.nccl = nccl_library_version();
#endif
  return c;
}

}  // namespace uoe
