// Training windows kept inside documents (uoe-train --windows-within-documents; runtime/data.hpp,
// document_windows and data_sample_batch; runtime/token_file.hpp, Documents file): the windows
// enumerated are exactly those that lie in one document, a stream that is one document draws the
// windows drawn without documents, every window drawn from prepared --eod data holds no
// end-of-document token but possibly as its last target, and bad combinations and damaged or
// missing documents files are errors naming the option and the file.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/token_file.hpp"
#include "runtime/token_stream.hpp"
#include "tests/common/errors.hpp"

namespace {

using uoe::DocumentWindows;
using uoe::TokenStream;
using uoe::testing_support::contains;
using uoe::testing_support::error_message;

struct TempDir {
  std::string path;
  TempDir() : path(testing::TempDir() + "uoe_test_document_windows_" + std::to_string(::getpid())) {
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

// Document starts of lengths drawn from a small LCG: 1..max_len tokens each, n tokens in all.
std::vector<uint64_t> some_starts(uint64_t n, uint64_t max_len, uint64_t seed) {
  std::vector<uint64_t> starts;
  uint64_t x = seed;
  for (uint64_t at = 0; at < n;) {
    starts.push_back(at);
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    at += 1 + (x >> 33) % max_len;
  }
  return starts;
}

TEST(DocumentWindows, EnumerateExactlyTheWindowsInsideOneDocument) {
  for (const int T : {1, 4, 9}) {
    for (const uint64_t seed : {1u, 2u, 3u}) {
      const uint64_t n = 600;
      const std::vector<uint64_t> starts = some_starts(n, 20, seed);
      // Brute force: start s is valid when [s, s + T] lies in one document.
      std::vector<uint64_t> want;
      uint64_t skipped = 0, skipped_tokens = 0;
      for (size_t d = 0; d < starts.size(); ++d) {
        const uint64_t end = d + 1 < starts.size() ? starts[d + 1] : n;
        if (end - starts[d] < static_cast<uint64_t>(T) + 1) {
          ++skipped;
          skipped_tokens += end - starts[d];
        }
        for (uint64_t s = starts[d]; s + T < end; ++s) want.push_back(s);
      }
      const DocumentWindows w = uoe::document_windows(starts, n, T);
      ASSERT_EQ(w.total(), want.size()) << "T " << T << " seed " << seed;
      for (uint64_t u = 0; u < w.total(); ++u) ASSERT_EQ(w.start(u), want[u]) << "window " << u;
      EXPECT_EQ(w.documents, starts.size());
      EXPECT_EQ(w.skipped, skipped);
      EXPECT_EQ(w.skipped_tokens, skipped_tokens);
      EXPECT_GT(skipped, 0u) << "the test should see short documents";
      // A split cut from the stream: documents at or after the cut dropped, the last one cut.
      const uint64_t cut = n / 2 + 3;
      const DocumentWindows half = uoe::document_windows(starts, cut, T);
      uint64_t want_half = 0;
      for (const uint64_t s : want) want_half += s + T < cut;
      EXPECT_EQ(half.total(), want_half);
    }
  }
  EXPECT_TRUE(contains(error_message([] { uoe::document_windows({1, 5}, 10, 2); }), "start at token 0"));
  EXPECT_TRUE(contains(error_message([] { uoe::document_windows({0, 5, 5}, 10, 2); }), "must increase"));
}

TEST(DocumentWindows, OneDocumentDrawsTheWindowsDrawnWithout) {
  std::vector<int32_t> ids(777);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 131 + 5) % 256);
  const TokenStream plain(ids);
  TokenStream one(ids);
  const int T = 16, B = 8;
  one.set_documents(std::make_shared<DocumentWindows>(uoe::document_windows({0}, ids.size(), T)));
  std::vector<int32_t> a(T * B), at(a.size()), b(a.size()), bt(a.size());
  for (uint64_t step = 0; step < 30; ++step)
    for (uint64_t slot = 0; slot < 3; ++slot) {
      uoe::data_sample_batch(plain, T, B, 11, step, slot, a.data(), at.data());
      uoe::data_sample_batch(one, T, B, 11, step, slot, b.data(), bt.data());
      ASSERT_EQ(a, b) << "step " << step << " slot " << slot;
      ASSERT_EQ(at, bt);
    }
  EXPECT_TRUE(contains(error_message([&] { uoe::data_sample_batch(one, 8, B, 11, 0, 0, a.data(), at.data()); }),
                       "--seq-len 16, not 8"));
}

// A byte-level --eod dataset from the built-in corpus, whose blocks (documents here) are separated
// by blank lines, prepared as uoe-prepare --eod blank-line prepares it.
struct Prepared : testing::Test {
  TempDir dir;
  std::string text;
  uoe::Config cfg;
  std::vector<std::string> written;
  void SetUp() override {
    text = uoe::data_builtin_corpus().substr(0, 60000);
    std::vector<uoe::TextSpan> train, val;
    for (size_t i = 0; i < text.size();) {
      size_t end = text.find("\n\n", i);
      end = end == std::string::npos ? text.size() : end + 1;
      (i < 50000 ? train : val).push_back({std::string_view(text).substr(i, end - i), true});
      i = end + 1;
    }
    uoe::Vocab byte;
    uoe::Dataset ds = uoe::data_from_spans(train, val, byte, "corpus");
    written = uoe::token_files_write(ds, dir / "d", 20000);  // a few shards of 10000 ids
    cfg.data = dir / "d.train.idx";
    cfg.val_data = dir / "d.val.idx";
    cfg.seq_len = 32;
    cfg.windows_within_documents = true;
  }
  std::string load_error(const uoe::Config& c) {
    return error_message([&] { uoe::data_load(c); });
  }
};

TEST_F(Prepared, EveryWindowLiesInOneDocument) {
  ASSERT_TRUE(std::filesystem::exists(dir / "d.train.docs"));
  const std::string idx = [&] {
    std::ifstream in(cfg.data);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  EXPECT_TRUE(contains(idx, "uoe-token-index 3\n") && contains(idx, "\ndocuments ")) << idx;
  for (const bool split : {false, true}) {
    uoe::Config c = cfg;
    if (split) c.val_data.clear();  // the training split is a slice: documents past it dropped
    const uoe::Dataset ds = uoe::data_load(c);
    const DocumentWindows* docs = ds.train.documents();
    ASSERT_NE(docs, nullptr);
    EXPECT_GT(docs->first.size(), 10u);
    const int T = c.seq_len, B = 8;
    std::vector<int32_t> in(T * B), tg(in.size());
    std::set<uint64_t> documents_hit;
    size_t ending = 0;
    for (uint64_t step = 0; step < 100; ++step)
      for (uint64_t slot = 0; slot < 2; ++slot) {
        uoe::data_sample_batch(ds.train, T, B, 5, step, slot, in.data(), tg.data());
        for (int b = 0; b < B; ++b) {
          const int32_t* x = in.data() + b * T;
          const int32_t* y = tg.data() + b * T;
          for (int t = 0; t < T; ++t) ASSERT_NE(x[t], 256) << "an input is an end-of-document token";
          for (int t = 0; t + 1 < T; ++t) ASSERT_NE(y[t], 256) << "a target before the last ends a document";
          ending += y[T - 1] == 256;
          documents_hit.insert(static_cast<uint64_t>(x[0]) * 65536 + static_cast<uint64_t>(x[1]));
        }
      }
    EXPECT_GT(ending, 0u) << "a window may predict its document's end";
    EXPECT_GT(documents_hit.size(), 20u);
  }
  // Off: the windows of the run without documents (they cross documents).
  uoe::Config off = cfg;
  off.windows_within_documents = false;
  EXPECT_EQ(uoe::data_load(off).train.documents(), nullptr);
}

TEST_F(Prepared, BadCombinationsAndDamagedDocumentsAreErrors) {
  // Text, not prepared data.
  uoe::Config c = cfg;
  c.data = dir / "t.txt";
  c.val_data.clear();
  std::ofstream(c.data) << text;
  EXPECT_TRUE(contains(load_error(c), "--windows-within-documents needs prepared data")) << load_error(c);
  // A shard token file, not the index.
  c = cfg;
  c.data = dir / "d.train-00000.tok";
  EXPECT_TRUE(contains(load_error(c), "not an index")) << load_error(c);
  // Prepared without --eod.
  uoe::Dataset plain = uoe::data_from_text(text, nullptr, 0.1, uoe::TokenizerKind::byte, 32, "corpus");
  uoe::token_files_write(plain, dir / "p");
  c.data = dir / "p.train.idx";
  c.val_data = dir / "p.val.idx";
  EXPECT_TRUE(contains(load_error(c), "without --eod")) << load_error(c);
  // No document holds a window.
  c = cfg;
  c.seq_len = 4000;
  c.val_data.clear();
  c.val_fraction = 0.5;
  EXPECT_TRUE(contains(load_error(c), "none of the")) << load_error(c);
  // An index of version 2 (before documents were recorded) still reads, but not with the option.
  std::string idx;
  {
    std::ifstream in(cfg.data);
    idx.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::string old = idx;
  old.replace(0, std::string("uoe-token-index 3").size(), "uoe-token-index 2");
  const size_t at = old.find("documents ");
  old.erase(at, old.find('\n', at) + 1 - at);
  std::ofstream(cfg.data, std::ios::trunc) << old;
  c = cfg;
  c.windows_within_documents = false;
  EXPECT_NO_THROW(uoe::data_load(c));
  EXPECT_TRUE(contains(load_error(cfg), "older preparation")) << load_error(cfg);
  std::ofstream(cfg.data, std::ios::trunc) << idx;
  ASSERT_NO_THROW(uoe::data_load(cfg));
  // A damaged documents file: a flipped byte, a truncated one, a missing one.
  const std::string docs = dir / "d.train.docs";
  std::string bytes;
  {
    std::ifstream in(docs, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::string flipped = bytes;
  flipped[40] ^= 1;
  std::ofstream(docs, std::ios::binary | std::ios::trunc) << flipped;
  std::string m = load_error(cfg);
  EXPECT_TRUE(contains(m, docs) && contains(m, "checksum")) << m;
  std::ofstream(docs, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 8);
  m = load_error(cfg);
  EXPECT_TRUE(contains(m, docs) && contains(m, "truncated")) << m;
  std::filesystem::remove(docs);
  m = load_error(cfg);
  EXPECT_TRUE(contains(m, docs) && contains(m, "cannot be opened")) << m;
}

}  // namespace
