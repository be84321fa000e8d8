// Fuzz target: the checks a checkpoint's manifest passes before anything uses the shapes, offsets
// and counts it holds (checkpoints/manifest.cpp). The HDF5 decoding itself is the HDF5 library's
// and is not fuzzed here; this target feeds its possible outputs, decoded from the bytes, to:
//   manifest_check_index_entry  per /index entry: [slabs, 3] dims, slab count, global shape;
//   manifest_check_coverage     slabs tile every tensor exactly once, shard indices in range;
//   config_check_compatible     the stored config INI against the current one;
//   parse_step_name             checkpoint directory names and the contents of `latest`.
// An accepted manifest must then be safe for what checkpoint_load / checkpoint_verify compute from
// it (slab element and byte counts in int64, shard indices into shard_files); a refused one must be
// refused with uoe::Error.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "checkpoints/manifest.hpp"
#include "fuzz_util.hpp"
#include "runtime/config.hpp"

namespace {

// Mostly small values (where the interesting edges are), sometimes any int64.
int64_t pick_i64(FuzzedDataProvider& in, int64_t lo, int64_t hi) {
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: return in.ConsumeIntegral<int64_t>();
    case 1: return std::numeric_limits<int64_t>::max() - in.ConsumeIntegralInRange<int64_t>(0, 3);
    case 2: return int64_t{1} << in.ConsumeIntegralInRange<int>(0, 62);
    default: return in.ConsumeIntegralInRange<int64_t>(lo, hi);
  }
}

std::vector<int64_t> pick_dims(FuzzedDataProvider& in, int max_rank, int64_t lo, int64_t hi) {
  std::vector<int64_t> d(static_cast<size_t>(in.ConsumeIntegralInRange<int>(0, max_rank)));
  for (int64_t& x : d) x = pick_i64(in, lo, hi);
  return d;
}

void check_manifest(FuzzedDataProvider& in) {
  uoe::Manifest m;
  m.shard_files.resize(static_cast<size_t>(in.ConsumeIntegralInRange<int>(0, 6)));
  for (size_t s = 0; s < m.shard_files.size(); ++s) m.shard_files[s] = "shard_" + std::to_string(s) + ".h5";

  bool all_entries_ok = true;
  const int tensors = in.ConsumeIntegralInRange<int>(0, 4);
  for (int k = 0; k < tensors && in.remaining_bytes() > 0; ++k) {
    uoe::ManifestTensor t;
    t.name = "t" + std::to_string(k);
    std::vector<int64_t> index_dims = pick_dims(in, 3, -1, 7);
    if (in.ConsumeBool()) index_dims = {in.ConsumeIntegralInRange<int64_t>(1, 6), 3};  // well-formed, often
    t.global_shape = pick_dims(in, 5, -1, 9);
    const bool ok = uoe_fuzz::accepts("manifest_check_index_entry", [&] {
      uoe::manifest_check_index_entry("manifest.h5", "/index/" + t.name, index_dims, t.global_shape, m.shard_files.size());
    });
    all_entries_ok &= ok;
    if (ok) {
      // What manifest_read may then allocate: index_dims[0] rows of 3.
      UOE_FUZZ_CHECK(index_dims.size() == 2 && index_dims[1] == 3);
      UOE_FUZZ_CHECK(index_dims[0] >= 1 && static_cast<size_t>(index_dims[0]) <= m.shard_files.size());
    }
    if (t.global_shape.empty()) continue;  // manifest_read never lets one through (checked above)
    const int64_t slabs = ok ? index_dims[0] : in.ConsumeIntegralInRange<int64_t>(0, 6);
    for (int64_t i = 0; i < slabs; ++i) {
      uoe::ManifestSlab s;
      s.shard = pick_i64(in, -1, 6);
      s.begin = pick_i64(in, -1, 9);
      s.end = pick_i64(in, -1, 9);
      t.slabs.push_back(s);
    }
    m.tensors.push_back(std::move(t));
  }

  if (!uoe_fuzz::accepts("manifest_check_coverage", [&] { uoe::manifest_check_coverage(m, "manifest.h5"); })) return;
  if (!all_entries_ok) return;
  // Accepted: what checkpoint_verify and checkpoint_load compute from it must be in range.
  for (const uoe::ManifestTensor& t : m.tensors) {
    int64_t row = 1;
    for (size_t i = 1; i < t.global_shape.size(); ++i) UOE_FUZZ_CHECK(!__builtin_mul_overflow(row, t.global_shape[i], &row));
    int64_t covered = 0;
    for (const uoe::ManifestSlab& s : t.slabs) {
      UOE_FUZZ_CHECK(s.shard >= 0 && static_cast<size_t>(s.shard) < m.shard_files.size());
      UOE_FUZZ_CHECK(0 <= s.begin && s.begin < s.end && s.end <= t.global_shape[0]);
      int64_t elems = 0, bytes = 0;
      UOE_FUZZ_CHECK(!__builtin_mul_overflow(s.end - s.begin, row, &elems));
      UOE_FUZZ_CHECK(!__builtin_mul_overflow(elems, int64_t{8}, &bytes));
      covered += s.end - s.begin;
    }
    UOE_FUZZ_CHECK(covered == t.global_shape[0]);
  }
}

void check_config_compatible(FuzzedDataProvider& in) {
  const std::string stored = in.ConsumeRandomLengthString(4096);
  const std::string current = in.ConsumeBool() ? uoe::config_to_ini(uoe::Config{}) : in.ConsumeRandomLengthString(4096);
  for (const std::string* ini : {&stored, &current})
    for (const auto& [k, v] : uoe::config_ini_entries(*ini))
      UOE_FUZZ_CHECK(k.find('\n') == std::string::npos && v.find('\n') == std::string::npos);
  uoe_fuzz::accepts("config_check_compatible", [&] {
    const std::vector<std::string> differ = uoe::config_check_compatible(stored, current, "manifest.h5");
    UOE_FUZZ_CHECK(differ.size() <= uoe::config_behaviour_keys().size());
  });
  // A config is always compatible with itself.
  uoe_fuzz::accepts("config_check_compatible (self)", [&] {
    UOE_FUZZ_CHECK(uoe::config_check_compatible(current, current, "manifest.h5").empty());
  });
}

void check_step_name(FuzzedDataProvider& in) {
  const std::string name = in.ConsumeRandomLengthString(40);
  const std::optional<int64_t> step = uoe::parse_step_name(name);
  if (!step) return;
  UOE_FUZZ_CHECK(*step >= 0);
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(*step));  // checkpoint_step_name
  UOE_FUZZ_CHECK(uoe::parse_step_name(buf) == step);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: check_config_compatible(in); break;
    case 1: check_step_name(in); break;
    default: check_manifest(in); break;
  }
  return 0;
}
