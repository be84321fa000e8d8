#include "runtime/param_store.hpp"

#include "runtime/error.hpp"
#include "runtime/rng.hpp"

namespace uoe {

int64_t ParamInfo::global_size() const {
  int64_t n = 1;
  for (int64_t s : global_shape) n *= s;
  return n;
}
int64_t ParamInfo::slab_size() const { return global_size() / global_shape[0]; }
int64_t ParamInfo::global_offset() const { return expert_sharded ? expert_begin * slab_size() : 0; }

int ParamStore::add(const std::string& name, std::vector<int64_t> shape, InitKind init, float std, bool decay) {
  ParamInfo p;
  p.name = name;
  p.global_shape = std::move(shape);
  p.offset = total_;
  p.size = static_cast<size_t>(p.global_size());
  p.decay = decay;
  p.init = init;
  p.init_std = std;
  total_ += p.size;
  infos_.push_back(std::move(p));
  return static_cast<int>(infos_.size()) - 1;
}

int ParamStore::add_sharded(const std::string& name, std::vector<int64_t> shape, int64_t begin, int64_t end,
                            InitKind init, float std, bool decay) {
  UOE_ASSERT(!shape.empty() && 0 <= begin && begin <= end && end <= shape[0], name);
  const int idx = add(name, std::move(shape), init, std, decay);
  ParamInfo& p = infos_[idx];
  total_ -= p.size;
  p.expert_sharded = true;
  p.expert_begin = begin;
  p.expert_end = end;
  p.size = static_cast<size_t>((end - begin) * p.slab_size());
  total_ += p.size;
  return idx;
}

void ParamStore::allocate_and_init(uint64_t seed) {
  values_.resize(total_);
  grads_.resize(total_);
  for (const ParamInfo& p : infos_) {
    float* v = values_.data() + p.offset;
    const uint64_t stream = rng_stream(p.name);
    const int64_t g0 = p.global_offset();
    for (size_t j = 0; j < p.size; ++j) {
      switch (p.init) {
        case InitKind::zeros: v[j] = 0.0f; break;
        case InitKind::ones: v[j] = 1.0f; break;
        case InitKind::normal: v[j] = p.init_std * rng_normal(seed, stream, static_cast<uint64_t>(g0) + j); break;
      }
    }
  }
}

int ParamStore::find(const std::string& name) const {
  for (size_t i = 0; i < infos_.size(); ++i)
    if (infos_[i].name == name) return static_cast<int>(i);
  return -1;
}

}  // namespace uoe
