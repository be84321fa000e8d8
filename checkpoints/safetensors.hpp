// The safetensors file format, for `uoe-ckpt export` and `import` (checkpoints/README.md,
// "Exporting"): the format PyTorch and Hugging Face read without running code.
//
//   bytes 0..7      N, the header's length, unsigned 64-bit little-endian
//   bytes 8..8+N    a JSON object: {name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//                   "__metadata__": {string: string}} (padded with spaces to a multiple of 8 bytes)
//   the rest        the data buffer: each tensor's elements, row-major, little-endian, at
//                   [begin, end) of the buffer; the tensors tile the buffer, no gap, no overlap
//
// Written here: the header by nlohmann-json (keys sorted, so the same tensors give the same bytes),
// the data in the order given, atomically (runtime/atomic_file.hpp). Read here: the whole file,
// every claim of the header checked against the file before any value is used.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace uoe {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;            // "F32" or "I32": the two uoe writes (both 4 bytes)
  std::vector<int64_t> shape;
  std::vector<char> data;       // product(shape) × 4 bytes, little-endian
};

struct SafetensorsFile {
  std::vector<SafetensorsTensor> tensors;         // in the order of their data in the file
  std::map<std::string, std::string> metadata;    // "__metadata__"
  const SafetensorsTensor* find(const std::string& name) const;
};

// Writes `tensors` (data in this order) and `metadata` to `path`, atomically: on any error the
// target is untouched and no temporary is left. Throws uoe::Error naming the path.
void safetensors_write(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::map<std::string, std::string>& metadata);

// Reads `path`. Throws uoe::Error naming the file and what is wrong: too short for its header, a
// header that is not JSON or not the format's, an unknown dtype (F32, I32 known), a shape whose
// size disagrees with the offsets, offsets outside the data, overlapping or leaving gaps, a size
// that is not 8 + N + the data.
SafetensorsFile safetensors_read(const std::string& path);

// "[2, 8, 16]".
std::string safetensors_shape_text(const std::vector<int64_t>& shape);

}  // namespace uoe
