// The GPU a rank uses (runtime/gpu_binding.hpp), with the CUDA_VISIBLE_DEVICES lists launchers set:
// no list (every rank sees every GPU), one list for all (srun --gres), a list per rank (srun
// --gpus-per-task=1: each rank sees its GPU as device 0), and the layouts that would put two ranks
// on one GPU, which are refused naming the lists. No GPU is needed: the choice is a pure function.
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "runtime/gpu_binding.hpp"

namespace uoe {
namespace {

using Lists = std::vector<std::optional<std::string>>;

TEST(GpuBinding, SharedGpusGoByLocalRank) {
  for (int r = 0; r < 4; ++r) {
    const GpuChoice c = gpu_choose(4, r, 4, Lists(4, std::nullopt));
    EXPECT_EQ(c.device, r);
    EXPECT_FALSE(c.per_rank);
  }
  // One list for the whole node (srun --gres=gpu:4 exports the same to every task).
  EXPECT_EQ(gpu_choose(4, 3, 4, Lists(4, "0,1,2,3")).device, 3);
  // Fewer ranks than GPUs, lists unknown (node_ranks without them).
  EXPECT_EQ(gpu_choose(8, 1, 2, {}).device, 1);
}

TEST(GpuBinding, PerRankListsGiveDeviceZero) {
  // srun --gpus-per-task=1 on a 4-GPU node: rank i sees GPU i only, as its device 0.
  const Lists per_task = {"0", "1", "2", "3"};
  for (int r = 0; r < 4; ++r) {
    const GpuChoice c = gpu_choose(1, r, 4, per_task);
    EXPECT_EQ(c.device, 0) << c.error;
    EXPECT_TRUE(c.per_rank);
  }
  // UUIDs, and two GPUs per task: still each rank's own first device.
  EXPECT_EQ(gpu_choose(1, 1, 2, {"GPU-1a2b", "GPU-3c4d"}).device, 0);
  EXPECT_EQ(gpu_choose(2, 1, 2, {"0,1", "2,3"}).device, 0);
  EXPECT_EQ(gpu_choose(1, 0, 2, {" 4", "5 "}).device, 0);
}

TEST(GpuBinding, TwoRanksOnOneGpuAreRefused) {
  // Every rank told to use GPU 0: more ranks than GPUs visible.
  GpuChoice c = gpu_choose(1, 1, 2, {"0", "0"});
  EXPECT_LT(c.device, 0);
  EXPECT_NE(c.error.find("2 ranks on this node but 1 GPU(s) visible"), std::string::npos) << c.error;
  EXPECT_NE(c.error.find("local rank 1: \"0\""), std::string::npos) << c.error;
  // Overlapping lists, a rank without a list, an empty list.
  EXPECT_LT(gpu_choose(2, 0, 3, {"0,1", "1,2", "3"}).device, 0);
  c = gpu_choose(1, 0, 2, {"0", std::nullopt});
  EXPECT_LT(c.device, 0);
  EXPECT_NE(c.error.find("local rank 1: unset"), std::string::npos) << c.error;
  EXPECT_LT(gpu_choose(1, 0, 2, {"", "1"}).device, 0);
  // No lists known and more ranks than GPUs.
  c = gpu_choose(2, 2, 3, {});
  EXPECT_LT(c.device, 0);
  EXPECT_NE(c.error.find("--gpus-per-task=1"), std::string::npos) << c.error;
}

TEST(GpuBinding, BadInputsAreNamed) {
  GpuChoice c = gpu_choose(0, 0, 1, {"7"});
  EXPECT_LT(c.device, 0);
  EXPECT_NE(c.error.find("0 devices visible (CUDA_VISIBLE_DEVICES=\"7\")"), std::string::npos) << c.error;
  c = gpu_choose(4, 2, 2, {});
  EXPECT_NE(c.error.find("node rank 2 of 2"), std::string::npos) << c.error;
  c = gpu_choose(4, 0, 2, {"0"});
  EXPECT_NE(c.error.find("1 CUDA_VISIBLE_DEVICES values for 2 ranks"), std::string::npos) << c.error;
}

TEST(GpuBinding, EnvironmentIsRead) {
  const char* old = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  setenv("CUDA_VISIBLE_DEVICES", "2,3", 1);
  EXPECT_EQ(visible_devices_from_env(), std::optional<std::string>("2,3"));
  unsetenv("CUDA_VISIBLE_DEVICES");
  EXPECT_EQ(visible_devices_from_env(), std::nullopt);
  if (saved) setenv("CUDA_VISIBLE_DEVICES", saved->c_str(), 1);
}

}  // namespace
}  // namespace uoe
