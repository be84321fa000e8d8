#include "runtime/version.hpp"

#include <cblas.h>
#include <mpi.h>

#include <string>

#include "uoe_git_info.h"  // generated at build time by cmake/git_info.cmake

#ifndef UOE_VERSION
#error "UOE_VERSION is defined by CMakeLists.txt (project VERSION)"
#endif

namespace uoe {

namespace {

std::string first_line(std::string s) {
  const size_t end = s.find_first_of("\r\n");
  if (end != std::string::npos) s.resize(end);
  while (!s.empty() && (s.back() == ' ' || s.back() == ',' || s.back() == '\t')) s.pop_back();
  return s;
}

}  // namespace

BuildInfo build_info_fields() {
  BuildInfo b;
  b.version = UOE_VERSION;
  b.commit = std::string(UOE_GIT_COMMIT) + (UOE_GIT_DIRTY ? "-dirty" : "");
  b.build_type = UOE_BUILD_TYPE;
  const char* blas = openblas_get_config();
  b.blas = blas ? first_line(blas) : "OpenBLAS (no configuration string)";
  // MPI_Get_library_version may be called before MPI_Init and after MPI_Finalize.
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  // (len may count the terminating NUL: read up to it.)
  if (MPI_Get_library_version(mpi, &len) == MPI_SUCCESS) b.mpi = first_line(std::string(mpi));
  if (b.mpi.empty()) b.mpi = "unknown";
  b.cuda = device_library_versions();
  return b;
}

std::string build_info() {
  // Asked for at start-up and by every checkpoint save: built once.
  static const std::string line = [] {
    const BuildInfo b = build_info_fields();
    std::string s = "uoe " + b.version + ", commit " + b.commit + ", " + b.build_type + "; BLAS " + b.blas + "; MPI " + b.mpi;
    if (!b.cuda.empty()) s += "; " + b.cuda;
    return s;
  }();
  return line;
}

std::string version_report(const char* tool) {
  const BuildInfo b = build_info_fields();
  std::string s = std::string(tool) + " " + b.version + "\n";
  s += "commit: " + b.commit + "\n";
  s += "build type: " + b.build_type + "\n";
  s += "BLAS: " + b.blas + "\n";
  s += "MPI: " + b.mpi + "\n";
  s += "CUDA: " + (b.cuda.empty() ? std::string("not built (CPU build)") : b.cuda) + "\n";
  return s;
}

}  // namespace uoe
