// The CUDA side of runtime/device.hpp and the status-check helpers of runtime/cuda/check.cuh.
#include <string>

#include "runtime/cuda/check.cuh"
#include "runtime/device.hpp"
#include "runtime/log.hpp"

namespace uoe {

void cuda_fail(cudaError_t code, const char* call, const char* file, int line) {
  fail(call, " failed on rank ", process_rank(), " at ", file, ":", line, ": ", cudaGetErrorName(code), ": ",
       cudaGetErrorString(code));
}

void cublas_fail(cublasStatus_t code, const char* call, const char* file, int line) {
  fail(call, " failed on rank ", process_rank(), " at ", file, ":", line, ": ", cublasGetStatusName(code), ": ",
       cublasGetStatusString(code));
}

// For --version and the start-up line: the CUDA runtime this process loaded (no GPU or driver
// needed). NCCL's version comes from parallel/ (parallel/mpi_version.hpp).
std::string cuda_library_versions() {
  int rt = 0;
  std::string s = "CUDA runtime ";
  if (cudaRuntimeGetVersion(&rt) == cudaSuccess) s += std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10);
  else s += "unknown";
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
