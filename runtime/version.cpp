#include "runtime/version.hpp"

#include <cblas.h>

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

BuildInfo build_info_fields(const CommLibraries& comm) {
  BuildInfo b;
  b.version = UOE_VERSION;
  b.commit = std::string(UOE_GIT_COMMIT) + (UOE_GIT_DIRTY ? "-dirty" : "");
  b.build_type = UOE_BUILD_TYPE;
  const char* blas = openblas_get_config();
  b.blas = blas ? first_line(blas) : "OpenBLAS (no configuration string)";
  b.mpi = first_line(comm.mpi);
  if (b.mpi.empty()) b.mpi = "unknown";
  b.cuda = device_library_versions();
  if (!b.cuda.empty()) b.cuda += ", NCCL " + (comm.nccl.empty() ? std::string("unknown") : comm.nccl);
  return b;
}

std::string build_info(const CommLibraries& comm) {
  const BuildInfo b = build_info_fields(comm);
  std::string s = "uoe " + b.version + ", commit " + b.commit + ", " + b.build_type + "; BLAS " + b.blas + "; MPI " + b.mpi;
  if (!b.cuda.empty()) s += "; " + b.cuda;
  return s;
}

std::string version_report(const char* tool, const CommLibraries& comm) {
  const BuildInfo b = build_info_fields(comm);
  std::string s = std::string(tool) + " " + b.version + "\n";
  s += "commit: " + b.commit + "\n";
  s += "build type: " + b.build_type + "\n";
  s += "BLAS: " + b.blas + "\n";
  s += "MPI: " + b.mpi + "\n";
  s += "CUDA: " + (b.cuda.empty() ? std::string("not built (CPU build)") : b.cuda) + "\n";
  return s;
}

}  // namespace uoe
