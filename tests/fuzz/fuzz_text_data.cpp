// Fuzz target: text → tokens → splits → windows (runtime/data.cpp): data_from_text with the byte
// and word tokenizers, then the consumers of its output (validation windows, training windows,
// decode), which index with the counts data_from_text returned.
//
// Input (FuzzedDataProvider): tokenizer, --seq-len, --val-fraction (including 0, 1, negative and
// NaN), whether a separate validation text is given; then the validation text (if any) and the
// training text (the rest). Accepted: a Dataset meeting its contract, or a uoe::Error.
#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fuzz_util.hpp"
#include "runtime/data.hpp"

namespace {

double pick_val_fraction(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: return 0.0;
    case 1: return 1.0;
    case 2: return -0.25;
    case 3: return std::numeric_limits<double>::quiet_NaN();
    case 4: return std::numeric_limits<double>::infinity();
    case 5: return 1e-300;
    case 6: return std::nextafter(1.0, 0.0);
    default: return in.ConsumeProbability<double>();
  }
}

int pick_seq_len(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0: return in.ConsumeIntegral<int>();  // anything, INT_MIN and INT_MAX included
    default: return in.ConsumeIntegralInRange<int>(1, 16);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const uoe::TokenizerKind kind = in.ConsumeBool() ? uoe::TokenizerKind::word : uoe::TokenizerKind::byte;
  const int seq_len = pick_seq_len(in);
  const double val_fraction = pick_val_fraction(in);
  const bool has_val = in.ConsumeBool();
  const std::string val_text = has_val ? in.ConsumeRandomLengthString(size) : std::string();
  const std::string train_text = in.ConsumeRemainingBytesAsString();

  uoe::Dataset ds;
  if (!uoe_fuzz::accepts("data_from_text", [&] {
        ds = uoe::data_from_text(train_text, has_val ? &val_text : nullptr, val_fraction, kind, seq_len, "fuzz input");
      }))
    return 0;

  // The contract of an accepted dataset.
  UOE_FUZZ_CHECK(seq_len >= 1);
  const int V = ds.vocab.size();
  UOE_FUZZ_CHECK(ds.vocab.kind == kind);
  UOE_FUZZ_CHECK(kind == uoe::TokenizerKind::byte ? V == 256 : V >= 1 && ds.vocab.words[0] == "<unk>");
  const size_t need = static_cast<size_t>(seq_len) + 1;
  UOE_FUZZ_CHECK(ds.train.size() >= need && ds.val.size() >= need);
  const std::vector<int32_t> train = ds.train.to_vector(), val = ds.val.to_vector();
  for (const auto* split : {&train, &val})
    for (int32_t id : *split) UOE_FUZZ_CHECK(id >= 0 && id < V);
  if (kind == uoe::TokenizerKind::byte) {
    if (!has_val) UOE_FUZZ_CHECK(ds.train.size() + ds.val.size() == train_text.size());
    UOE_FUZZ_CHECK(ds.vocab.decode(train.data(), train.size()) == train_text.substr(0, train.size()));
  } else {
    (void)ds.vocab.decode(train.data(), train.size());
  }

  // Consumers of the counts: every validation window, and a batch of training windows.
  const int64_t windows = uoe::data_val_window_count(ds.val.size(), seq_len);
  UOE_FUZZ_CHECK(windows >= 1 && static_cast<size_t>(windows) * seq_len + 1 <= ds.val.size());
  const int count = static_cast<int>(std::min<int64_t>(windows, 4));
  std::vector<int32_t> inputs(static_cast<size_t>(count) * seq_len), targets(inputs.size());
  uoe::data_val_windows(ds.val, seq_len, windows - count, count, inputs.data(), targets.data());
  UOE_FUZZ_CHECK(!uoe_fuzz::accepts("data_val_windows past the end", [&] {
    uoe::data_val_windows(ds.val, seq_len, windows - count + 1, count, inputs.data(), targets.data());
  }));
  const int B = 3;
  inputs.resize(static_cast<size_t>(B) * seq_len);
  targets.resize(inputs.size());
  uoe::data_sample_batch(ds.train, seq_len, B, /*seed=*/size, /*step=*/7, /*slot=*/1, inputs.data(), targets.data());
  for (int32_t id : inputs) UOE_FUZZ_CHECK(id >= 0 && id < V);
  return 0;
}
