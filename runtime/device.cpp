#include "runtime/device.hpp"

#include "runtime/error.hpp"
#include "runtime/version.hpp"

namespace uoe {

#ifdef UOE_HAVE_CUDA
// runtime/device_cuda.cu: the cudaGetDeviceCount probe (kept out of this file so that it needs no
// CUDA header).
DeviceProbe cuda_device_probe();
std::string cuda_library_versions();
#endif

std::string device_library_versions() {
#ifdef UOE_HAVE_CUDA
  return cuda_library_versions();
#else
  return "";
#endif
}

DeviceProbe device_probe() {
#ifdef UOE_HAVE_CUDA
  return cuda_device_probe();
#else
  DeviceProbe p;
#ifdef UOE_CUDA_BUILT
  p.message = "built without CUDA: this is the CPU build; uoe-train-cuda beside it has the GPU path "
              "(uoe-launch picks it for --device cuda)";
#else
  p.message = "built without CUDA (configure with -DUOE_CUDA=ON where nvcc is installed, e.g. cmake --preset cuda)";
#endif
  return p;
#endif
}

const char* device_name(Device d) { return d == Device::cuda ? "cuda" : "cpu"; }

Device device_parse(std::string_view text) {
  if (text == "cpu") return Device::cpu;
  if (text == "cuda") return Device::cuda;
  fail("--device ", text, ": expected cpu or cuda");
}

void device_require(Device d) {
  if (d == Device::cpu) return;
  const DeviceProbe p = device_probe();
  if (!p.available) fail("--device cuda: ", p.message);
}

}  // namespace uoe
