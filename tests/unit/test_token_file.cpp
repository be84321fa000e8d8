// Prepared token files and vocabulary files: round trips (uint16 and uint32 ids, escapes), loading
// prepared data gives exactly the token streams of the text it came from, and every corruption or
// mismatch a user can cause is refused with a message naming the file and what is wrong.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/common/errors.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/token_file.hpp"

namespace {

using uoe::testing_support::contains;
using uoe::testing_support::error_message;

using uoe::TokenizerKind;

// A directory unique to this process (parallel CTest runs), removed with everything in it.
struct TempDir {
  std::string path;
  TempDir() : path(testing::TempDir() + "uoe_test_token_file_" + std::to_string(::getpid())) {
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  ASSERT_TRUE(out.good()) << path;
}

// A copy of the file `src` at `dst` with `edit` applied to its bytes.
template <class Edit>
void corrupt_copy(const std::string& src, const std::string& dst, Edit edit) {
  std::string b = read_bytes(src);
  edit(b);
  write_bytes(dst, b);
}

// Opens and reads every token (the checks that copy_tokens makes included).
void read_all(const std::string& path) {
  const uoe::TokenFile f(path, "--data");
  (void)f.tokens(0, f.size());
}

std::string text_sample() {
  std::string s;
  for (int i = 0; i < 40; ++i)
    s += "The cat sees the dog.\nA dog, an owl: \\ back\\slash and caf\xc3\xa9 " + std::to_string(i % 7) + ".\n";
  return s;
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(TokenFile, RoundTripUint16) {
  const TempDir dir;
  const std::vector<int32_t> tokens = {0, 1, 255, 65535, 40000, 7};
  uoe::token_file_write(dir / "a.tok", tokens.data(), tokens.size(), TokenizerKind::word, 65536, 0x1234);
  const uoe::TokenFile f(dir / "a.tok", "--data");
  EXPECT_EQ(f.header().version, 1u);
  EXPECT_EQ(f.header().dtype_bytes, 2);  // V = 65536 still fits uint16
  EXPECT_EQ(f.header().tokenizer, TokenizerKind::word);
  EXPECT_EQ(f.header().vocab_size, 65536u);
  EXPECT_EQ(f.header().vocab_hash, 0x1234u);
  EXPECT_EQ(f.size(), tokens.size());
  EXPECT_EQ(f.tokens(0, f.size()), tokens);
  EXPECT_EQ(f.tokens(2, 3), (std::vector<int32_t>{255, 65535, 40000}));
  EXPECT_EQ(std::filesystem::file_size(dir / "a.tok"), uoe::kTokenFileHeaderBytes + 2 * tokens.size());
  // The header bytes are the documented layout, little-endian.
  const std::string b = read_bytes(dir / "a.tok");
  EXPECT_EQ(b.substr(0, 8), "UOETOK01");
  EXPECT_EQ(b.substr(8, 4), std::string("\x01\x00\x00\x00", 4));
  EXPECT_EQ(b.substr(12, 2), std::string("\x02\x00", 2));
  EXPECT_EQ(b.substr(14, 2), std::string("\x01\x00", 2));
  EXPECT_EQ(b.substr(16, 4), std::string("\x00\x00\x01\x00", 4));
  EXPECT_EQ(b.substr(24, 8), std::string("\x06\x00\x00\x00\x00\x00\x00\x00", 8));
  EXPECT_EQ(b.substr(40, 4), std::string("\x00\x00\x01\x00", 4));  // tokens 0 and 1
}

TEST(TokenFile, RoundTripUint32WhenTheVocabularyExceeds65536) {
  const TempDir dir;
  const std::vector<int32_t> tokens = {65536, 0, 70000, 123456};
  uoe::token_file_write(dir / "b.tok", tokens.data(), tokens.size(), TokenizerKind::word, 123457, 9);
  const uoe::TokenFile f(dir / "b.tok", "--data");
  EXPECT_EQ(f.header().dtype_bytes, 4);
  EXPECT_EQ(f.tokens(0, f.size()), tokens);
  EXPECT_EQ(std::filesystem::file_size(dir / "b.tok"), uoe::kTokenFileHeaderBytes + 4 * tokens.size());
}

TEST(TokenFile, EmptyTokenFileOpens) {
  const TempDir dir;
  uoe::token_file_write(dir / "e.tok", nullptr, 0, TokenizerKind::byte, 256, 0);
  const uoe::TokenFile f(dir / "e.tok", "--data");
  EXPECT_EQ(f.size(), 0u);
}

TEST(TokenFile, WriterRefusesIdsOutsideTheVocabulary) {
  const TempDir dir;
  const std::vector<int32_t> tokens = {1, 256};
  const std::string msg = error_message(
      [&] { uoe::token_file_write(dir / "w.tok", tokens.data(), tokens.size(), TokenizerKind::byte, 256, 0); });
  EXPECT_TRUE(contains(msg, "256")) << msg;
  EXPECT_FALSE(std::filesystem::exists(dir / "w.tok"));  // nothing half-written is left
}

// The streaming shard writer: ids appended in chunks of any size give the files one call with the
// whole stream gives (token_shards_write), shard names follow the count (STEM.tok for one,
// STEM-00000.tok ... once a second opens), the documents file lists each document's first token,
// and a writer destroyed before finish() leaves nothing behind.
TEST(TokenShardWriter, ChunkedAppendsWriteWhatOneStreamWrites) {
  const TempDir dir;
  std::vector<int32_t> ids;
  for (int i = 0; i < 1000; ++i) ids.push_back(i % 17 == 16 ? 256 : (i * 37) % 256);
  for (const uint64_t shard_bytes : {uint64_t{100000}, uint64_t{2 * 300}, uint64_t{2 * 1000}, uint64_t{2 * 999}}) {
    const std::vector<std::string> whole = uoe::token_shards_write(
        dir / "whole", uoe::TokenStream(ids), TokenizerKind::byte, 257, 5, shard_bytes, 1000.0, 256);
    uoe::TokenShardWriter w(dir / "chunks", TokenizerKind::byte, 257, 5, shard_bytes, 256);
    for (size_t i = 0, k = 1; i < ids.size(); i += k, k = k * 3 % 101 + 1)
      w.append(ids.data() + i, std::min(k, ids.size() - i));
    const std::vector<std::string> chunks = w.finish(1000.0);
    const size_t shards = static_cast<size_t>((ids.size() * 2 + shard_bytes - 1) / shard_bytes);
    ASSERT_EQ(whole.size(), shards + 2) << shard_bytes;  // index, shards, documents
    ASSERT_EQ(chunks.size(), whole.size()) << shard_bytes;
    for (size_t i = 0; i < whole.size(); ++i) {
      const std::string name = std::filesystem::path(chunks[i]).filename().string();
      EXPECT_EQ(name.substr(6), std::filesystem::path(whole[i]).filename().string().substr(5)) << name;
      std::string expected = read_bytes(whole[i]);
      // The index names its files: the same but for the stem.
      for (size_t at; (at = expected.find("whole")) != std::string::npos;) expected.replace(at, 5, "chunks");
      EXPECT_EQ(read_bytes(chunks[i]), expected) << name;
    }
    EXPECT_EQ(std::filesystem::path(chunks[1]).filename().string(), shards == 1 ? "chunks.tok" : "chunks-00000.tok");
    if (shards == 1) {  // a one-shard split is the token file token_file_write writes
      uoe::token_file_write(dir / "one.tok", ids.data(), ids.size(), TokenizerKind::byte, 257, 5, 256);
      EXPECT_EQ(read_bytes(chunks[1]), read_bytes(dir / "one.tok"));
      std::filesystem::remove(dir / "one.tok");
    }
    const uoe::PreparedSplit split = uoe::prepared_open(chunks[0], "--data");
    EXPECT_EQ(split.tokens.to_vector(), ids);
    const std::vector<uint64_t> starts = uoe::prepared_document_starts(split, "--data");
    std::vector<uint64_t> expected = {0};
    for (size_t i = 0; i + 1 < ids.size(); ++i)
      if (ids[i] == 256) expected.push_back(i + 1);
    EXPECT_EQ(starts, expected);
    for (const auto* files : {&whole, &chunks})
      for (const std::string& f : *files) std::filesystem::remove(f);
  }
}

TEST(TokenShardWriter, AnErrorLeavesNothingBehind) {
  const TempDir dir;
  const std::vector<int32_t> ids(700, 7);
  {
    uoe::TokenShardWriter w(dir / "half", TokenizerKind::byte, 257, 5, 2 * 100, 256);
    w.append(ids.data(), ids.size());  // six shards in place, a seventh open
    const int32_t bad = 300;
    EXPECT_TRUE(contains(error_message([&] { w.append(&bad, 1); }), "300"));
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path)) << "files left after an error";
}

TEST(TokenFile, VocabularyRoundTripWithEscapes) {
  const TempDir dir;
  uoe::Vocab v;
  v.kind = TokenizerKind::word;
  v.words = {"<unk>", "\n", "\\", "a\\nb", "caf\xc3\xa9", "it's", ",", "\\n"};
  uoe::vocab_file_write(dir / "v.vocab", v);
  EXPECT_EQ(read_bytes(dir / "v.vocab"), "<unk>\n\\n\n\\\\\na\\\\nb\ncaf\xc3\xa9\nit's\n,\n\\\\n\n");
  const uoe::Vocab r = uoe::vocab_file_read(dir / "v.vocab");
  EXPECT_EQ(r.kind, TokenizerKind::word);
  EXPECT_EQ(r.words, v.words);
  EXPECT_EQ(uoe::vocab_hash(r), uoe::vocab_hash(v));
  uoe::Vocab reordered = v;
  std::swap(reordered.words[3], reordered.words[4]);
  EXPECT_NE(uoe::vocab_hash(reordered), uoe::vocab_hash(v));
  // "ab" + "c" and "a" + "bc" hash differently (lengths are hashed too).
  uoe::Vocab x = v, y = v;
  x.words = {"ab", "c"};
  y.words = {"a", "bc"};
  EXPECT_NE(uoe::vocab_hash(x), uoe::vocab_hash(y));
}

TEST(TokenFile, VocabPathFor) {
  EXPECT_EQ(uoe::vocab_path_for("data/wt103.train.tok"), "data/wt103.vocab");
  EXPECT_EQ(uoe::vocab_path_for("data/wt103.val.tok"), "data/wt103.vocab");
  EXPECT_EQ(uoe::vocab_path_for("x.test.tok"), "x.vocab");
  EXPECT_EQ(uoe::vocab_path_for("corpus.tok"), "corpus.vocab");
  EXPECT_EQ(uoe::vocab_path_for("a.b.train.tok"), "a.b.vocab");
}

TEST(TokenFile, Detect) {
  const TempDir dir;
  const std::vector<int32_t> tokens = {1, 2, 3};
  uoe::token_file_write(dir / "magic.bin", tokens.data(), tokens.size(), TokenizerKind::byte, 256, 0);
  write_bytes(dir / "plain.txt", "hello world");
  write_bytes(dir / "named.tok", "hello world");
  EXPECT_TRUE(uoe::token_file_detect(dir / "magic.bin"));  // by magic, whatever the name
  EXPECT_FALSE(uoe::token_file_detect(dir / "plain.txt"));
  EXPECT_TRUE(uoe::token_file_detect(dir / "named.tok"));  // by name: a bad .tok must not pass as text
  EXPECT_FALSE(uoe::token_file_detect(dir / "missing.txt"));
}

// ---------------------------------------------------------------------------------------------
// Prepared data = the text it came from

uoe::Config small_config(int seq_len) {
  uoe::Config c;
  c.seq_len = seq_len;
  return c;
}

TEST(TokenFileData, ByteLevelSplitEqualsText) {
  const TempDir dir;
  const std::string text = text_sample();
  write_bytes(dir / "corpus.txt", text);
  const uoe::Dataset from_text = uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::byte, 1, "mem");
  const std::vector<std::string> written = uoe::token_files_write(from_text, dir / "p");
  // Indexes, then the shards: one each (the default shard size), named as a plain token file.
  ASSERT_EQ(written.size(), 4u);  // no vocabulary file at byte level
  EXPECT_EQ(written[0], dir / "p.train.idx");
  EXPECT_EQ(written[1], dir / "p.val.idx");
  EXPECT_EQ(written[2], dir / "p.train.tok");
  EXPECT_EQ(written[3], dir / "p.val.tok");

  uoe::Config cfg = small_config(8);
  cfg.data = dir / "corpus.txt";
  const uoe::Dataset raw = uoe::data_load(cfg);
  cfg.data = written[0];
  cfg.val_data = written[1];
  const uoe::Dataset prepared = uoe::data_load(cfg);
  EXPECT_EQ(prepared.train.to_vector(), raw.train.to_vector());
  EXPECT_EQ(prepared.val.to_vector(), raw.val.to_vector());
  EXPECT_EQ(prepared.vocab.size(), 256);
  EXPECT_EQ(prepared.vocab.kind, TokenizerKind::byte);
  EXPECT_TRUE(contains(prepared.source, "prepared")) << prepared.source;
  // The one shard is a token file of its own: the same streams without the index.
  cfg.data = written[2];
  cfg.val_data = written[3];
  const uoe::Dataset shard = uoe::data_load(cfg);
  EXPECT_EQ(shard.train.to_vector(), raw.train.to_vector());
  EXPECT_EQ(shard.val.to_vector(), raw.val.to_vector());
}

TEST(TokenFileData, WordLevelSplitEqualsText) {
  const TempDir dir;
  const std::string text = text_sample();
  write_bytes(dir / "corpus.txt", text);
  uoe::Config cfg = small_config(4);
  cfg.tokenizer = "word";
  cfg.data = dir / "corpus.txt";
  const uoe::Dataset raw = uoe::data_load(cfg);
  const std::vector<std::string> written = uoe::token_files_write(raw, dir / "w");
  ASSERT_EQ(written.size(), 5u);
  EXPECT_EQ(written[2], dir / "w.vocab");

  cfg.data = written[0];
  cfg.val_data = written[1];
  const uoe::Dataset prepared = uoe::data_load(cfg);
  EXPECT_EQ(prepared.train.to_vector(), raw.train.to_vector());
  EXPECT_EQ(prepared.val.to_vector(), raw.val.to_vector());
  EXPECT_EQ(prepared.vocab.words, raw.vocab.words);
  EXPECT_EQ(prepared.vocab.size(), raw.vocab.size());
  EXPECT_EQ(prepared.vocab.decode(prepared.train.to_vector().data(), 12), raw.vocab.decode(raw.train.to_vector().data(), 12));
}

TEST(TokenFileData, SplitOfOnePreparedFileFollowsValFraction) {
  const TempDir dir;
  std::vector<int32_t> all(1000);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int32_t>(i % 256);
  uoe::token_file_write(dir / "all.tok", all.data(), all.size(), TokenizerKind::byte, 256, 0);
  uoe::Config cfg = small_config(8);
  cfg.data = dir / "all.tok";
  cfg.val_fraction = 0.25;
  const uoe::Dataset ds = uoe::data_load(cfg);
  EXPECT_EQ(ds.train.to_vector(), std::vector<int32_t>(all.begin(), all.begin() + 750));
  EXPECT_EQ(ds.val.to_vector(), std::vector<int32_t>(all.begin() + 750, all.end()));
}

TEST(TokenFileData, ValidationTextIsTokenizedWithThePreparedVocabulary) {
  const TempDir dir;
  const std::string train = text_sample(), val = "the cat sees a zebra.\n the dog sees the owl.\n";
  write_bytes(dir / "train.txt", train);
  write_bytes(dir / "val.txt", val);
  uoe::Config cfg = small_config(4);
  cfg.tokenizer = "word";
  cfg.data = dir / "train.txt";
  cfg.val_data = dir / "val.txt";
  const uoe::Dataset raw = uoe::data_load(cfg);
  const std::vector<std::string> written = uoe::token_files_write(raw, dir / "t");
  cfg.data = written[0];  // prepared training data, validation text
  const uoe::Dataset mixed = uoe::data_load(cfg);
  EXPECT_EQ(mixed.train.to_vector(), raw.train.to_vector());
  EXPECT_EQ(mixed.val.to_vector(), raw.val.to_vector());  // "zebra" -> <unk> = 0 in both
  EXPECT_EQ(mixed.val.at(4), 0);
}

// ---------------------------------------------------------------------------------------------
// Corrupt and foreign files

class TokenFileCorrupt : public testing::Test {
 protected:
  void SetUp() override {
    std::vector<int32_t> tokens(100);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i);
    uoe::token_file_write(good_, tokens.data(), tokens.size(), TokenizerKind::byte, 256, 0);
  }
  // The message of reading a corrupted copy, which must name the file.
  template <class Edit>
  std::string corrupted(Edit edit) {
    corrupt_copy(good_, bad_, edit);
    const std::string msg = error_message([&] { read_all(bad_); });
    EXPECT_TRUE(contains(msg, bad_)) << msg;
    return msg;
  }
  TempDir dir_;
  std::string good_ = dir_ / "good.tok", bad_ = dir_ / "bad.tok";
};

TEST_F(TokenFileCorrupt, GoodFileReads) { EXPECT_NO_THROW(read_all(good_)); }

TEST_F(TokenFileCorrupt, ForeignFileWrongMagic) {
  const std::string msg = corrupted([](std::string& b) { b = "just some text, not tokens at all\n"; });
  EXPECT_TRUE(contains(msg, "not a uoe token file")) << msg;
  EXPECT_TRUE(contains(msg, "UOETOK01")) << msg;
  EXPECT_TRUE(contains(msg, "just som")) << msg;  // what it found instead
}

TEST_F(TokenFileCorrupt, WrongVersion) {
  const std::string msg = corrupted([](std::string& b) { b[8] = 7; });
  EXPECT_TRUE(contains(msg, "version 7")) << msg;
}

TEST_F(TokenFileCorrupt, UnknownDtype) {
  const std::string msg = corrupted([](std::string& b) { b[12] = 3; });
  EXPECT_TRUE(contains(msg, "dtype code 3")) << msg;
}

TEST_F(TokenFileCorrupt, UnknownTokenizer) {
  const std::string msg = corrupted([](std::string& b) { b[14] = 9; });
  EXPECT_TRUE(contains(msg, "tokenizer code 9")) << msg;
}

TEST_F(TokenFileCorrupt, ByteLevelWithAnotherVocabularySize) {
  const std::string msg = corrupted([](std::string& b) { b[17] = 2; });  // V = 512
  EXPECT_TRUE(contains(msg, "512")) << msg;
}

TEST_F(TokenFileCorrupt, Uint16IdsCannotHoldAHugeVocabulary) {
  const std::string msg = corrupted([](std::string& b) {
    b[14] = 1;   // word level
    b[18] = 2;   // V = 0x020100 = 131328
  });
  EXPECT_TRUE(contains(msg, "uint16")) << msg;
}

TEST_F(TokenFileCorrupt, TruncatedHeader) {
  const std::string msg = corrupted([](std::string& b) { b.resize(20); });
  EXPECT_TRUE(contains(msg, "truncated header")) << msg;
}

TEST_F(TokenFileCorrupt, TruncatedTokens) {
  const std::string msg = corrupted([](std::string& b) { b.resize(b.size() - 3); });
  EXPECT_TRUE(contains(msg, "100 tokens")) << msg;
  EXPECT_TRUE(contains(msg, "truncated")) << msg;
}

TEST_F(TokenFileCorrupt, TrailingBytes) {
  const std::string msg = corrupted([](std::string& b) { b += "xx"; });
  EXPECT_TRUE(contains(msg, "trailing")) << msg;
}

TEST_F(TokenFileCorrupt, TokenCountDisagreesWithSize) {
  const std::string msg = corrupted([](std::string& b) { b[24] = 99; });  // says 99, holds 100
  EXPECT_TRUE(contains(msg, "99 tokens")) << msg;
}

TEST_F(TokenFileCorrupt, HugeTokenCountDoesNotOverflow) {
  const std::string msg = corrupted([](std::string& b) { std::memset(&b[24], 0xff, 8); });
  EXPECT_TRUE(contains(msg, "truncated")) << msg;
}

TEST_F(TokenFileCorrupt, TokenIdNotBelowTheVocabulary) {
  const std::string msg = corrupted([](std::string& b) {
    b[40 + 2 * 37] = 0x00;
    b[40 + 2 * 37 + 1] = 0x01;  // token 37 = 256
  });
  EXPECT_TRUE(contains(msg, "token 37")) << msg;
  EXPECT_TRUE(contains(msg, "id 256")) << msg;
}

TEST_F(TokenFileCorrupt, EmptyFileAndDirectory) {
  write_bytes(bad_, "");
  EXPECT_TRUE(contains(error_message([&] { read_all(bad_); }), "not a uoe token file"));
  std::filesystem::create_directories(dir_ / "dir.tok");
  EXPECT_TRUE(contains(error_message([&] { read_all(dir_ / "dir.tok"); }), "directory"));
  EXPECT_TRUE(contains(error_message([&] { read_all(dir_ / "missing.tok"); }), "missing.tok"));
}

TEST_F(TokenFileCorrupt, DataLoadReportsCorruptionWithTheOption) {
  corrupt_copy(good_, bad_, [](std::string& b) { b[8] = 2; });
  uoe::Config cfg = small_config(8);
  cfg.data = good_;
  cfg.val_data = bad_;
  const std::string msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(msg, "--val-data")) << msg;
  EXPECT_TRUE(contains(msg, bad_)) << msg;
  // A foreign file named .tok is not silently read as text.
  write_bytes(bad_, std::string(500, 'a'));
  cfg.data = bad_;
  cfg.val_data.clear();
  EXPECT_TRUE(contains(error_message([&] { uoe::data_load(cfg); }), "not a uoe token file"));
}

// ---------------------------------------------------------------------------------------------
// Mismatches between files, vocabularies and options

class TokenFileMismatch : public testing::Test {
 protected:
  void SetUp() override {
    write_bytes(dir_ / "a.txt", text_sample());
    write_bytes(dir_ / "b.txt", "other words entirely, other words again.\n" + text_sample());
    cfg_ = small_config(4);
    cfg_.tokenizer = "word";
    a_ = prepare("a.txt", "a");
    b_ = prepare("b.txt", "b");
  }
  std::vector<std::string> prepare(const std::string& text, const std::string& prefix) {
    uoe::Config c = cfg_;
    c.data = dir_ / text;
    return uoe::token_files_write(uoe::data_load(c), dir_ / prefix);
  }
  TempDir dir_;
  uoe::Config cfg_;
  std::vector<std::string> a_, b_;  // train, val, vocab
};

TEST_F(TokenFileMismatch, TokenizerOptionMustMatchTheFile) {
  cfg_.data = a_[0];
  cfg_.tokenizer = "byte";
  const std::string msg = error_message([&] { uoe::data_load(cfg_); });
  EXPECT_TRUE(contains(msg, "--tokenizer word")) << msg;
  EXPECT_TRUE(contains(msg, a_[0])) << msg;
}

TEST_F(TokenFileMismatch, MissingVocabularyFile) {
  std::filesystem::remove(a_[2]);
  cfg_.data = a_[0];
  const std::string msg = error_message([&] { uoe::data_load(cfg_); });
  EXPECT_TRUE(contains(msg, a_[2])) << msg;
  EXPECT_TRUE(contains(msg, "vocabulary")) << msg;
}

TEST_F(TokenFileMismatch, VocabularyOfAnotherPreparation) {
  std::filesystem::copy_file(b_[2], a_[2], std::filesystem::copy_options::overwrite_existing);
  cfg_.data = a_[0];
  const std::string msg = error_message([&] { uoe::data_load(cfg_); });
  EXPECT_TRUE(contains(msg, a_[2])) << msg;
  EXPECT_TRUE(contains(msg, "different preparations")) << msg;
}

TEST_F(TokenFileMismatch, VocabularySameSizeDifferentOrder) {
  uoe::Vocab v = uoe::vocab_file_read(a_[2]);
  std::swap(v.words[1], v.words[2]);
  uoe::vocab_file_write(a_[2], v);
  cfg_.data = a_[0];
  const std::string msg = error_message([&] { uoe::data_load(cfg_); });
  EXPECT_TRUE(contains(msg, "different words or order")) << msg;
}

TEST_F(TokenFileMismatch, ValidationFileOfAnotherPreparation) {
  cfg_.data = a_[0];
  cfg_.val_data = b_[1];
  const std::string msg = error_message([&] { uoe::data_load(cfg_); });
  EXPECT_TRUE(contains(msg, "--val-data")) << msg;
  EXPECT_TRUE(contains(msg, b_[1])) << msg;
  EXPECT_TRUE(contains(msg, "different vocabulary")) << msg;
}

TEST_F(TokenFileMismatch, TextTrainingWithPreparedValidationIsRefused) {
  cfg_.data = dir_ / "a.txt";
  cfg_.val_data = a_[1];
  const std::string msg = error_message([&] { uoe::data_load(cfg_); });
  EXPECT_TRUE(contains(msg, a_[1])) << msg;
  EXPECT_TRUE(contains(msg, "uoe-prepare")) << msg;
}

TEST_F(TokenFileMismatch, SplitTooShortForSeqLen) {
  cfg_.data = a_[0];
  cfg_.val_data = a_[1];
  cfg_.seq_len = 100000;
  const std::string msg = error_message([&] { uoe::data_load(cfg_); });
  EXPECT_TRUE(contains(msg, "--seq-len 100000")) << msg;
  EXPECT_TRUE(contains(msg, a_[0])) << msg;
}

TEST(TokenFileVocab, BadVocabularyFiles) {
  const TempDir dir;
  auto msg_of = [&](const std::string& text) {
    write_bytes(dir / "bad.vocab", text);
    return error_message([&] { uoe::vocab_file_read(dir / "bad.vocab"); });
  };
  std::string m = msg_of("<unk>\n\nword\n");
  EXPECT_TRUE(contains(m, "line 2")) << m;
  EXPECT_TRUE(contains(m, "empty line")) << m;
  m = msg_of("<unk>\nba\\d\n");
  EXPECT_TRUE(contains(m, "line 2")) << m;
  EXPECT_TRUE(contains(m, "escape")) << m;
  m = msg_of("<unk>\r\nword\r\n");
  EXPECT_TRUE(contains(m, "carriage return")) << m;
  m = msg_of("<unk>\nword\nother\nword\n");
  EXPECT_TRUE(contains(m, "line 4")) << m;
  EXPECT_TRUE(contains(m, "duplicate")) << m;
  m = msg_of("<unk>\ntrailing\\");
  EXPECT_TRUE(contains(m, "backslash")) << m;
  m = msg_of("");
  EXPECT_TRUE(contains(m, "empty")) << m;
  // A missing final newline is fine.
  write_bytes(dir / "ok.vocab", "<unk>\nlast");
  EXPECT_EQ(uoe::vocab_file_read(dir / "ok.vocab").words, (std::vector<std::string>{"<unk>", "last"}));
}

}  // namespace
