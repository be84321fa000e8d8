// What a binary is: the project version (CMake's project(VERSION)), the git commit it was built from
// (with "-dirty" when tracked files differed from it; "unknown" outside a git checkout), the build
// type, and the libraries it runs on — BLAS (OpenBLAS's own configuration string), MPI (the
// library's version string) and, in the GPU build, the CUDA runtime and NCCL. `--version` prints
// version_report(); uoe-train logs build_info() at start-up and checkpoints store it (the manifest's
// `build` attribute), so a result can be traced to the code and libraries that produced it. The MPI
// and NCCL versions come from parallel/ (parallel/mpi_version.hpp): the caller passes them in.
#pragma once
#include <string>

namespace uoe {

struct BuildInfo {
  std::string version;     // "0.1.0"
  std::string commit;      // "792740c1ab2f", "792740c1ab2f-dirty" or "unknown"
  std::string build_type;  // "Release", "RelWithDebInfo + ASan/UBSan", ...
  std::string blas;        // "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64"
  std::string mpi;         // "Open MPI v4.1.4, package: Debian OpenMPI, ..." (first line)
  std::string cuda;        // "CUDA runtime 13.0, NCCL 2.27.7"; "" in the CPU build
};

// What runtime/ cannot ask for itself (it knows no communication): the communication libraries
// this process loaded, from parallel/mpi_version.hpp's comm_library_versions(). The callers of
// build_info and version_report combine the two.
struct CommLibraries {
  std::string mpi;   // MPI_Get_library_version's string (its first line is kept; "" = "unknown")
  std::string nccl;  // "2.27.7" in the GPU build, "" in the CPU build
};

BuildInfo build_info_fields(const CommLibraries& comm);

// One line: "uoe 0.1.0, commit 792740c1ab2f, Release; BLAS …; MPI …[; CUDA …]".
std::string build_info(const CommLibraries& comm);

// --version's text: `tool` and the version, then one "name: value" line per field.
std::string version_report(const char* tool, const CommLibraries& comm);

// The GPU build's CUDA runtime version ("CUDA runtime 13.0"), "" in the CPU build (defined with the
// sources that differ between the two builds: runtime/device.cpp).
std::string device_library_versions();

}  // namespace uoe
