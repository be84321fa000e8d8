// Status checks for the CUDA runtime and cuBLAS (docs/architecture.md, Conventions): every call goes through one of
// these macros, which throw uoe::Error naming the call, the library's own message, file:line and the
// MPI world rank (−1 outside MPI). Host-only declarations: g++ and nvcc can both include this.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "runtime/error.hpp"
#include "runtime/log.hpp"  // process_rank()

namespace uoe {

[[noreturn]] void cuda_fail(cudaError_t code, const char* call, const char* file, int line);
[[noreturn]] void cublas_fail(cublasStatus_t code, const char* call, const char* file, int line);

}  // namespace uoe

#define UOE_CHECK_CUDA(call)                                                                      \
  do {                                                                                            \
    const cudaError_t uoe_cuda_rc_ = (call);                                                      \
    if (uoe_cuda_rc_ != cudaSuccess) ::uoe::cuda_fail(uoe_cuda_rc_, #call, __FILE__, __LINE__);   \
  } while (0)

#define UOE_CHECK_CUBLAS(call)                                                                            \
  do {                                                                                                    \
    const cublasStatus_t uoe_cublas_rc_ = (call);                                                         \
    if (uoe_cublas_rc_ != CUBLAS_STATUS_SUCCESS) ::uoe::cublas_fail(uoe_cublas_rc_, #call, __FILE__, __LINE__); \
  } while (0)

// After a <<<…>>> launch: reports a bad launch configuration at the launch site, naming the kernel
// (errors inside a kernel surface at the next synchronising call, which is checked too).
#define UOE_CHECK_LAUNCH(kernel_name)                                                             \
  do {                                                                                            \
    const cudaError_t uoe_launch_rc_ = cudaGetLastError();                                        \
    if (uoe_launch_rc_ != cudaSuccess)                                                            \
      ::uoe::cuda_fail(uoe_launch_rc_, "launch of " kernel_name, __FILE__, __LINE__);             \
  } while (0)
