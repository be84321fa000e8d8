// The step the trainer drives (layers/step.hpp), on the backend --device names: built in this one
// place, with the communicators it needs (the launcher builds every exchange; layers only use them).
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers/step.hpp"
#include "runtime/config.hpp"

namespace uoe {

class CommScheduler;
class MpiCommunicator;

struct StepSetup {
  CommScheduler* scheduler = nullptr;  // CPU: where exchanges run (null: in line)
  MpiCommunicator* ep_group = nullptr;  // GPU with ep > 1: the rows' NCCL communicator is built over it
  // GPU with several ranks: the gradient all-reduce's NCCL communicators are built over these (the
  // GradientSync's world and data-parallel group).
  MpiCommunicator* world = nullptr;
  MpiCommunicator* dp_group = nullptr;
  // GPU: where this rank sits on its node (ProcessGroups), from which gpu_choose picks its GPU.
  int node_rank = 0, node_size = 1;
  std::vector<std::optional<std::string>> node_visible_devices;
};

// The CPU step, or with --device cuda the GPU step (a build without CUDA refuses it, naming why).
std::unique_ptr<ModelStep> make_step(const Config& cfg, Model& model, const StepSetup& setup);

}  // namespace uoe
