// uoe-ckpt: tools for checkpoints. `uoe-ckpt convert ...` (launcher/uoe_ckpt_convert.cpp).
// Exit codes: 0 success (or --help), 2 bad command line, 1 any other failure.
#include <cstdio>
#include <string>

#include "launcher/ckpt_convert.hpp"
#include "runtime/cpu_features.hpp"

int main(int argc, char** argv) {
  uoe::blas_kernels_select();  // the BLAS kernels for this CPU's ISA (may re-execute once)
  if (argc >= 2 && std::string(argv[1]) == "convert") return ckpt_convert_main(argc - 1, argv + 1);
  std::fprintf(stderr, "usage: uoe-ckpt convert CKPT --to dense|uoe --out DIR [options] (--help for the options)\n");
  return 2;
}
