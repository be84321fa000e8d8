// DeviceModel in a build without CUDA (-DUOE_CUDA=OFF): uoe-train refuses --device cuda before it
// gets here (device_require), so these only make the trainer link; each names the reason.
#ifndef UOE_HAVE_CUDA
#include "layers/device_model.hpp"
#include "runtime/error.hpp"

namespace uoe {

struct DeviceModel::Impl {};

DeviceModel::DeviceModel(Model&, MpiCommunicator*, int) { fail("--device cuda: built without CUDA (reconfigure with -DUOE_CUDA=ON)"); }
DeviceModel::~DeviceModel() = default;
void DeviceModel::forward_backward(const int32_t*, const int32_t*, int, float, ForwardStats*) {
  fail("--device cuda: built without CUDA");
}
void DeviceModel::forward_eval(const int32_t*, const int32_t*, int, ForwardStats*) {
  fail("--device cuda: built without CUDA");
}
void DeviceModel::set_backward_hook(std::function<void(int)>) {}
const Routing& DeviceModel::routing(int) const { fail("--device cuda: built without CUDA"); }
std::string DeviceModel::describe() const { return "no GPU (built without CUDA)"; }
void DeviceModel::close() {}
void DeviceModel::take_exchange_seconds(double* busy, double* exposed) { *busy = *exposed = 0; }

}  // namespace uoe
#endif
