// The checked-in checkpoint tests/fixtures/checkpoint-af0762b (its README.md says how it was made):
// its run's config, and the per-tensor hashes recorded when it was written (tensors.txt, computed
// from the files by h5dump, not by uoe). Loading it with today's code must give every parameter and
// AdamW moment bitwise as recorded: a format change that old checkpoints no longer survive fails
// test_checkpoint.cpp (one rank) and test_checkpoint_mpi.cpp (ep 2).
#pragma once
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/config.hpp"
#include "runtime/error.hpp"

namespace uoe::testing_support {

inline const std::string kFixtureDir = std::string(UOE_SOURCE_DIR) + "/tests/fixtures/checkpoint-af0762b";
inline const std::string kFixtureCheckpoint = kFixtureDir + "/checkpoints/step_00000003";
constexpr int kFixtureVocab = 256;  // byte tokenizer (train.ini)

// The groups of a shard file, in the order the hashes name them.
inline const char* const kFixtureGroups[3] = {"/model", "/optim/m", "/optim/v"};

// The config of the run that wrote the fixture, parsed from its train.ini as uoe-train does.
inline Config fixture_config() {
  const std::string ini = kFixtureDir + "/train.ini";
  const char* argv[] = {"uoe-train", "--config", ini.c_str()};
  std::string help;
  return config_parse(3, argv, &help).config;
}

// FNV-1a 64 of the bytes, as tensor_hashes.py computes it.
inline uint64_t fnv1a64(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

inline uint64_t byte_sum(const void* data, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t s = 0;
  for (size_t i = 0; i < bytes; ++i) s += p[i];
  return s;
}

inline std::string shape_key(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "x" : "") << shape[i];
  return os.str();
}

struct RecordedTensor {
  std::string shape;  // "256x8"
  uint64_t fnv = 0, sum = 0;
};

// tensors.txt: "<group>/<name> <shape> <fnv1a64 hex> <byte sum>" per line.
inline std::map<std::string, RecordedTensor> fixture_recorded() {
  const std::string path = kFixtureDir + "/tensors.txt";
  std::ifstream in(path);
  if (!in) fail("cannot read ", path);
  std::map<std::string, RecordedTensor> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream is(line);
    std::string name, fnv;
    RecordedTensor t;
    if (!(is >> name >> t.shape >> fnv >> t.sum)) fail(path, ": bad line '", line, "'");
    t.fnv = std::stoull(fnv, nullptr, 16);
    out[name] = t;
  }
  return out;
}

// Compares global tensors (key "/model/embed", "/optim/m/embed", ...) with the recorded hashes;
// returns one line per difference, each naming the tensor, and one per tensor missing on either side.
class FixtureCheck {
 public:
  FixtureCheck() : recorded_(fixture_recorded()) {}
  void add(const std::string& key, const std::vector<int64_t>& shape, const float* data, size_t elements) {
    const size_t bytes = elements * sizeof(float);
    const auto it = recorded_.find(key);
    if (it == recorded_.end()) {
      problems_.push_back(key + ": not in tensors.txt");
      return;
    }
    const RecordedTensor& r = it->second;
    const uint64_t fnv = fnv1a64(data, bytes), sum = byte_sum(data, bytes);
    if (shape_key(shape) != r.shape || fnv != r.fnv || sum != r.sum) {
      std::ostringstream os;
      os << key << ": loaded shape " << shape_key(shape) << ", FNV-1a " << std::hex << fnv << std::dec << ", byte sum "
         << sum << "; recorded " << r.shape << ", " << std::hex << r.fnv << std::dec << ", " << r.sum;
      problems_.push_back(os.str());
    }
    recorded_.erase(it);
  }
  // Every problem, and the recorded tensors never added.
  std::vector<std::string> finish() {
    std::vector<std::string> out = problems_;
    for (const auto& [key, r] : recorded_) out.push_back(key + ": recorded in tensors.txt but not in the model");
    return out;
  }

 private:
  std::map<std::string, RecordedTensor> recorded_;
  std::vector<std::string> problems_;
};

}  // namespace uoe::testing_support
