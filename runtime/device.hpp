// Which device a run computes on, and whether this process can use it. The CPU reference path runs
// everywhere; the CUDA path needs a build with UOE_HAVE_CUDA (CMake's UOE_CUDA and a .cu source)
// AND a usable GPU at run time. A run that asks for `--device cuda` without both ends with
// device_require's uoe::Error, never by silently falling back to the CPU.
#pragma once
#include <string>
#include <string_view>

namespace uoe {

enum class Device { cpu, cuda };

// What device_probe() found out about CUDA in this process.
struct DeviceProbe {
  bool available = false;  // at least one GPU the CUDA runtime can use
  int count = 0;           // GPUs visible to this process (0 when unavailable)
  std::string message;     // why not ("built without CUDA", "no usable GPU: …"), or what was found
};

// Probes CUDA. A build without CUDA says "built without CUDA". With CUDA it calls
// cudaGetDeviceCount and treats ANY error as "no usable GPU: <cudaGetErrorString>" (a machine without
// a driver returns cudaErrorInsufficientDriver, not cudaErrorNoDevice); zero devices also count as
// unusable.
DeviceProbe device_probe();

// "cpu" / "cuda".
const char* device_name(Device d);
// Parses a --device value; throws uoe::Error naming --device and the accepted values.
Device device_parse(std::string_view text);

// Does nothing for Device::cpu. For Device::cuda, throws uoe::Error
// "--device cuda: <device_probe().message>" when no usable GPU is present.
void device_require(Device d);

}  // namespace uoe
