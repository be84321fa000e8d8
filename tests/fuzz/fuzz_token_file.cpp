// Fuzz target: prepared token files and vocabulary files (runtime/token_file.cpp), read the ways
// uoe-train reads them.
//
// The input is used three ways:
//   1. as a token file: TokenFile opens it (header checks), then every token is copied out (id checks);
//   2. as a vocabulary file: vocab_file_read;
//   3. as a token file followed by its vocabulary: the first 40 + n·dtype bytes (n and dtype as its
//      header says, capped at the input) become data.train.tok, the rest data.vocab, and data_load
//      loads it with --tokenizer as the header says (so the vocabulary checks are reached).
// Each either succeeds, with the promised invariants, or throws uoe::Error.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "fuzz_util.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/token_file.hpp"

namespace {

template <class T>
T load_le(const uint8_t* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
  return v;
}

void as_token_file(std::string_view bytes) {
  const std::string path = uoe_fuzz::scratch().write("plain.tok", bytes);
  uoe_fuzz::accepts("TokenFile", [&] {
    const uoe::TokenFile f(path, "--data");
    const uoe::TokenFileHeader& h = f.header();
    UOE_FUZZ_CHECK(h.dtype_bytes == 2 || h.dtype_bytes == 4);
    UOE_FUZZ_CHECK(uoe::kTokenFileHeaderBytes + f.size() * h.dtype_bytes == bytes.size());
    const std::vector<int32_t> ids = f.tokens(0, f.size());
    for (int32_t id : ids) UOE_FUZZ_CHECK(id >= 0 && static_cast<uint32_t>(id) < h.vocab_size);
    if (f.size() >= 3) (void)f.tokens(1, f.size() - 2);  // an inner range
  });
}

void as_vocab_file(std::string_view bytes) {
  const std::string path = uoe_fuzz::scratch().write("plain.vocab", bytes);
  uoe_fuzz::accepts("vocab_file_read", [&] {
    const uoe::Vocab v = uoe::vocab_file_read(path);
    UOE_FUZZ_CHECK(v.kind == uoe::TokenizerKind::word && !v.words.empty());
    std::unordered_set<std::string> seen(v.words.begin(), v.words.end());
    UOE_FUZZ_CHECK(seen.size() == v.words.size());
    // What the reader accepts, the writer writes back to a file that reads the same.
    const std::string again = uoe_fuzz::scratch().file("again.vocab");
    uoe::vocab_file_write(again, v);
    UOE_FUZZ_CHECK(uoe::vocab_file_read(again).words == v.words);
  });
}

void as_prepared_data(std::string_view bytes) {
  if (bytes.size() < uoe::kTokenFileHeaderBytes) return;
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const uint16_t dtype = load_le<uint16_t>(p + 12);
  const uint16_t tokenizer = load_le<uint16_t>(p + 14);
  const uint64_t n = load_le<uint64_t>(p + 24);
  size_t tok_bytes = bytes.size();
  if ((dtype == 2 || dtype == 4) && n <= (bytes.size() - uoe::kTokenFileHeaderBytes) / dtype)
    tok_bytes = uoe::kTokenFileHeaderBytes + static_cast<size_t>(n) * dtype;
  const std::string tok = uoe_fuzz::scratch().write("data.train.tok", bytes.substr(0, tok_bytes));
  uoe_fuzz::scratch().write("data.vocab", bytes.substr(tok_bytes));

  uoe::Config cfg;
  cfg.data = tok;
  cfg.tokenizer = tokenizer == 1 ? "word" : "byte";
  cfg.seq_len = 4;
  cfg.val_fraction = 0.25;
  uoe_fuzz::accepts("data_load", [&] {
    const uoe::Dataset ds = uoe::data_load(cfg);
    const int V = ds.vocab.size();
    UOE_FUZZ_CHECK(V > 0);
    UOE_FUZZ_CHECK(ds.train.size() >= 5 && ds.val.size() >= 5);
    // Ids are checked where they are read: reading every one is what a long training run does.
    const std::vector<int32_t> train = ds.train.to_vector(), val = ds.val.to_vector();
    for (const auto* split : {&train, &val})
      for (int32_t id : *split) UOE_FUZZ_CHECK(id >= 0 && id < V);
    (void)ds.vocab.decode(val.data(), val.size());
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  as_token_file(bytes);
  as_vocab_file(bytes);
  as_prepared_data(bytes);
  return 0;
}
