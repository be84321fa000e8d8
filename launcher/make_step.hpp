// The step the trainer drives (layers/step.hpp), on the backend --device names: built in this one
// place, with the communicators it needs (the launcher builds every exchange; layers only use them).
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "layers/memory.hpp"
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

// What one rank may use of the memory that holds its step's state and activations: with
// --device cuda and --memory-limit auto, the free memory of the GPU make_step will choose for it
// (cudaMemGetInfo after gpu_choose: one GPU per rank, so nothing is divided); otherwise
// memory_limit (layers/memory.hpp: the option, the cgroup limit or MemAvailable, per host rank).
// bytes 0 where there is nothing to go by (no GPU this rank could use: make_step says why).
MemoryLimit step_memory_limit(const Config& cfg, const StepSetup& setup);

}  // namespace uoe
