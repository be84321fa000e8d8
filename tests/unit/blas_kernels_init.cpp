// The unit tests run with the BLAS kernels uoe-train would choose on this CPU (some OpenBLAS kernels
// have had correctness bugs on CPUs they were not written for: the gradient and equivalence checks
// are the guard). OpenBLAS has read OPENBLAS_CORETYPE by the time any initializer of this program
// runs, so the choice re-executes the test binary once, before gtest's main, when it changes the
// kernels (runtime/cpu_features.hpp).
#include "runtime/cpu_features.hpp"

namespace {
const bool g_kernels_chosen = [] {
  uoe::blas_kernels_select();
  return true;
}();
}  // namespace
