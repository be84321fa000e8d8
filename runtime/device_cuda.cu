// The CUDA side of runtime/device.hpp and the status-check helpers of runtime/cuda/check.cuh.
#include <mpi.h>
#include <nccl.h>

#include <string>

#include "runtime/cuda/check.cuh"
#include "runtime/device.hpp"

namespace uoe {

int process_rank() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

void cuda_fail(cudaError_t code, const char* call, const char* file, int line) {
  fail(call, " failed on rank ", process_rank(), " at ", file, ":", line, ": ", cudaGetErrorName(code), ": ",
       cudaGetErrorString(code));
}

void cublas_fail(cublasStatus_t code, const char* call, const char* file, int line) {
  fail(call, " failed on rank ", process_rank(), " at ", file, ":", line, ": ", cublasGetStatusName(code), ": ",
       cublasGetStatusString(code));
}

// For --version and the start-up line: the CUDA runtime and NCCL this process loaded (neither call
// needs a GPU or a driver).
std::string cuda_library_versions() {
  int rt = 0, nccl = 0;
  std::string s = "CUDA runtime ";
  if (cudaRuntimeGetVersion(&rt) == cudaSuccess) s += std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10);
  else s += "unknown";
  s += ", NCCL ";
  // NCCL's code is major·10000 + minor·100 + patch since 2.9 (major·1000 + … before).
  if (ncclGetVersion(&nccl) == ncclSuccess) {
    const int major = nccl >= 10000 ? nccl / 10000 : nccl / 1000;
    const int minor = nccl >= 10000 ? nccl % 10000 / 100 : nccl % 1000 / 100;
    s += std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(nccl % 100);
  } else {
    s += "unknown";
  }
  return s;
}

DeviceProbe cuda_device_probe() {
  DeviceProbe p;
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    // Any error means no usable GPU: without a driver this is cudaErrorInsufficientDriver, not
    // cudaErrorNoDevice. Clear it so later (unrelated) CUDA calls do not report it again.
    (void)cudaGetLastError();
    p.message = std::string("no usable GPU: ") + cudaGetErrorString(rc);
    return p;
  }
  if (count == 0) {
    p.message = "no usable GPU: cudaGetDeviceCount found 0 devices";
    return p;
  }
  p.available = true;
  p.count = count;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
    p.message = std::to_string(count) + " GPU(s), device 0: " + prop.name + " (sm_" + std::to_string(prop.major) +
                std::to_string(prop.minor) + ")";
  else
    p.message = std::to_string(count) + " GPU(s)";
  return p;
}

}  // namespace uoe
