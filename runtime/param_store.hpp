// The named-tensor registry: parameters carved from one arena (values) with a twin arena for
// gradients, as in llm.c. Every tensor has a global name and global shape; an expert-sharded tensor
// (first dimension = experts) holds only the slab [expert_begin, expert_end) of this rank, and is
// initialised from the GLOBAL element index, so the same model comes out whatever the world size or
// ep. It knows no model: layers/ adds the model's tensors, checkpoints/ saves and loads them by name
// (with the optimizer's moments, OptimizerMoments), which is why it lives in runtime/.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tensor.hpp"

namespace uoe {

enum class InitKind { zeros, ones, normal };

struct ParamInfo {
  std::string name;                   // e.g. "layers.0.mlp.w1"
  std::vector<int64_t> global_shape;  // the whole tensor
  bool expert_sharded = false;        // first dim = experts, sliced [expert_begin, expert_end)
  int64_t expert_begin = 0, expert_end = 0;
  size_t offset = 0;                  // into the arenas (elements)
  size_t size = 0;                    // local elements
  bool decay = false;                 // weight decay applies (matrices)
  InitKind init = InitKind::zeros;
  float init_std = 0.0f;              // for InitKind::normal

  int64_t global_size() const;
  int64_t slab_size() const;          // elements per expert (expert_sharded only)
  int64_t global_offset() const;      // global index of the first local element
};

class ParamStore {
 public:
  // Adds a replicated tensor; returns its index.
  int add(const std::string& name, std::vector<int64_t> shape, InitKind init, float std, bool decay);
  // Adds an expert-sharded tensor [experts, ...] holding experts [begin, end) locally.
  int add_sharded(const std::string& name, std::vector<int64_t> shape, int64_t begin, int64_t end,
                  InitKind init, float std, bool decay);
  // Allocates values and gradients (after all add calls) and initialises values from `seed`.
  void allocate_and_init(uint64_t seed);

  size_t count() const { return infos_.size(); }
  const ParamInfo& info(int i) const { return infos_[i]; }
  const std::vector<ParamInfo>& infos() const { return infos_; }
  int find(const std::string& name) const;  // -1 when absent

  float* value(int i) { return values_.data() + infos_[i].offset; }
  const float* value(int i) const { return values_.data() + infos_[i].offset; }
  float* grad(int i) { return grads_.data() + infos_[i].offset; }
  const float* grad(int i) const { return grads_.data() + infos_[i].offset; }

  FloatBuffer& values() { return values_; }
  FloatBuffer& grads() { return grads_; }
  const FloatBuffer& values() const { return values_; }
  const FloatBuffer& grads() const { return grads_; }
  size_t total() const { return total_; }
  void zero_grads() { grads_.zero(); }

 private:
  std::vector<ParamInfo> infos_;
  size_t total_ = 0;
  FloatBuffer values_;  // all parameters, tensor after tensor
  FloatBuffer grads_;   // same layout
};

// The optimizer's first and second moments, laid out like the parameter arena: what a checkpoint
// saves and restores beside the parameters (/optim/m, /optim/v). The optimizer (AdamW,
// layers/optimizer.hpp) sizes and updates them; checkpoints/ sees only this.
class OptimizerMoments {
 public:
  FloatBuffer& m() { return m_; }
  FloatBuffer& v() { return v_; }

 protected:
  FloatBuffer m_, v_;
};

}  // namespace uoe
