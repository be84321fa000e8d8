// Which GPU a rank uses: a pure function of what the rank sees, so that it is tested with the
// device lists launchers set, on machines without a GPU (tests/unit/test_gpu_binding.cpp).
//
// Clusters bind GPUs to ranks in one of two ways:
//  - every rank of a node sees every GPU (CUDA_VISIBLE_DEVICES unset, or the same list for all, as
//    `srun --gres=gpu:4` sets it): rank i of the node takes device i, and a node may run at most
//    as many ranks as it has GPUs (NCCL allows one rank per GPU);
//  - each rank sees only its own GPUs (`srun --gpus-per-task=1`, `--gpu-bind=single:1`, or a
//    launcher wrapper exporting CUDA_VISIBLE_DEVICES per local rank): the lists of the node's
//    ranks are disjoint, each rank sees its GPU as device 0 and takes it, whatever the node's rank
//    count.
// Anything else (more ranks than GPUs with shared or overlapping lists) would put two ranks on one
// GPU: refused, naming the lists.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace uoe {

struct GpuChoice {
  int device = -1;    // the CUDA device index to use (in this process's numbering), or -1
  std::string error;  // why none, when device < 0
  bool per_rank = false;  // chosen by the per-rank binding (each rank its own CUDA_VISIBLE_DEVICES)
};

// visible: GPUs this process sees (cudaGetDeviceCount). local_rank, local_size: this rank's place
// among the ranks on its node (ProcessGroups::node_rank, node_size). node_visible_devices: every
// node rank's CUDA_VISIBLE_DEVICES in node-rank order (std::nullopt where unset); empty when not
// known, then only the first way above is tried.
GpuChoice gpu_choose(int visible, int local_rank, int local_size,
                     const std::vector<std::optional<std::string>>& node_visible_devices);

// This process's CUDA_VISIBLE_DEVICES, std::nullopt when unset.
std::optional<std::string> visible_devices_from_env();

}  // namespace uoe
