// The safetensors format (safetensors.hpp).
#include "checkpoints/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>

#include "runtime/atomic_file.hpp"
#include "runtime/error.hpp"

namespace uoe {
namespace {

// uoe's tensors are host floats and ints, written as they are in memory.
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

constexpr uint64_t kMaxHeader = uint64_t{100} << 20;  // the format's own bound on N (100 MiB)

int64_t dtype_bytes(const std::string& dtype) { return dtype == "F32" || dtype == "I32" ? 4 : 0; }

// product(shape), or −1 when a dimension is negative or the product overflows.
int64_t elements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0 || (s > 0 && n > std::numeric_limits<int64_t>::max() / 8 / s)) return -1;
    n *= s;
  }
  return n;
}

}  // namespace

std::string safetensors_shape_text(const std::vector<int64_t>& shape) {
  std::string t = "[";
  for (size_t i = 0; i < shape.size(); ++i) t += (i ? ", " : "") + std::to_string(shape[i]);
  return t + "]";
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  for (const SafetensorsTensor& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

void safetensors_write(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();  // std::map: keys sorted, the same bytes every time
  uint64_t offset = 0;
  for (const SafetensorsTensor& t : tensors) {
    const int64_t n = elements(t.shape);
    if (dtype_bytes(t.dtype) == 0 || n < 0 || static_cast<uint64_t>(n * dtype_bytes(t.dtype)) != t.data.size())
      fail(path, ": tensor ", t.name, " (", t.dtype, " ", safetensors_shape_text(t.shape), ") has ", t.data.size(),
           " bytes of data");
    if (t.name == "__metadata__" || header.contains(t.name)) fail(path, ": tensor name ", t.name, " given twice");
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.data.size()}}};
    offset += t.data.size();
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  unsigned char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  atomic_write_file(path, [&](AtomicFile& f) {
    f.write(length, sizeof length);
    f.write(text);
    for (const SafetensorsTensor& t : tensors) f.write(t.data.data(), t.data.size());
  });
}

SafetensorsFile safetensors_read(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(path, ": cannot open (", std::strerror(errno), ")");
  const auto size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (size < 8) fail(path, ": not a safetensors file: ", size, " bytes, less than the 8-byte header length");
  unsigned char length[8];
  in.read(reinterpret_cast<char*>(length), 8);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(length[i]) << (8 * i);
  if (n > size - 8 || n > kMaxHeader)
    fail(path, ": not a safetensors file, or truncated: its first 8 bytes give a header of ", n, " bytes, but the file has ",
         size - 8, " after them");
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  const uint64_t data_size = size - 8 - n;
  std::vector<char> data(data_size);
  in.read(data.data(), static_cast<std::streamsize>(data_size));
  if (!in) fail(path, ": read failed after ", in.gcount(), " bytes (", std::strerror(errno), ")");

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": not a safetensors file: its header is not JSON (", e.what(), ")");
  }
  if (!header.is_object()) fail(path, ": not a safetensors file: its header is not a JSON object");

  SafetensorsFile f;
  struct Span {
    uint64_t begin, end;
    size_t tensor;
  };
  std::vector<Span> spans;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(path, ": header: __metadata__ is not an object of strings");
      for (const auto& [key, value] : v.items()) {
        if (!value.is_string()) fail(path, ": header: __metadata__ entry '", key, "' is not a string");
        f.metadata[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string what = path + ": header: tensor " + name;
    if (!v.is_object() || v.size() != 3 || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(what, " is not {\"dtype\", \"shape\", \"data_offsets\"}");
    const nlohmann::json &dt = v["dtype"], &sh = v["shape"], &off = v["data_offsets"];
    if (!dt.is_string()) fail(what, ": dtype is not a string");
    SafetensorsTensor t;
    t.name = name;
    t.dtype = dt.get<std::string>();
    if (dtype_bytes(t.dtype) == 0) fail(what, ": dtype ", t.dtype, " is not one uoe reads (F32, I32)");
    if (!sh.is_array()) fail(what, ": shape is not an array");
    for (const nlohmann::json& s : sh) {
      if (!s.is_number_integer() || s.get<int64_t>() < 0) fail(what, ": shape ", sh.dump(), " is not of sizes >= 0");
      t.shape.push_back(s.get<int64_t>());
    }
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(what, ": data_offsets ", off.dump(), " is not [begin, end]");
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size)
      fail(what, ": data_offsets [", b, ", ", e, "] lie outside the ", data_size, " bytes of data the file holds",
           e > data_size ? " (truncated?)" : "");
    const int64_t count = elements(t.shape);
    if (count < 0 || static_cast<uint64_t>(count * dtype_bytes(t.dtype)) != e - b)
      fail(what, ": shape ", safetensors_shape_text(t.shape), " of ", t.dtype, " needs ",
           count < 0 ? std::string("too many") : std::to_string(count * dtype_bytes(t.dtype)), " bytes but data_offsets [",
           b, ", ", e, "] hold ", e - b);
    spans.push_back({b, e, f.tensors.size()});
    f.tensors.push_back(std::move(t));
  }
  // The tensors tile the data buffer: sorted by offset, each begins where the one before ends.
  std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) {
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  uint64_t at = 0;
  for (const Span& s : spans) {
    if (s.begin != at)
      fail(path, ": header: tensor ", f.tensors[s.tensor].name, " begins at data byte ", s.begin, " where ",
           s.begin < at ? "an earlier tensor's data still lies (overlap)" : "a gap is left (the previous ends at ",
           s.begin < at ? "" : std::to_string(at) + ")");
    at = s.end;
  }
  if (at != data_size)
    fail(path, ": the tensors' data ends at byte ", at, " of ", data_size, " after the header (trailing bytes)");
  // Data into each tensor; then the tensors in the order of their data.
  for (const Span& s : spans) f.tensors[s.tensor].data.assign(data.begin() + s.begin, data.begin() + s.end);
  std::vector<SafetensorsTensor> ordered;
  for (const Span& s : spans) ordered.push_back(std::move(f.tensors[s.tensor]));
  f.tensors = std::move(ordered);
  return f;
}

}  // namespace uoe
