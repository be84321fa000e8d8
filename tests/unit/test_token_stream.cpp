// Token streams (runtime/token_stream.hpp): views of mapped token files read the ids the file
// holds without copying it, a range may span segments (shards), a damaged id is an error naming
// the file, the token and its byte offset where it is read, and training on a mapped file is
// bitwise the run on the in-memory copy that the data path used to make (and on the text itself).
// Also the evaluation budget's window choice and the bytes each split came from (val_bpb).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "layers/model.hpp"
#include "layers/optimizer.hpp"
#include "layers/train_step.hpp"
#include "parallel/exchange.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/token_file.hpp"
#include "runtime/token_stream.hpp"
#include "tests/common/errors.hpp"

namespace {

using uoe::TokenizerKind;
using uoe::TokenStream;
using uoe::testing_support::contains;
using uoe::testing_support::error_message;

struct TempDir {
  std::string path;
  TempDir() : path(testing::TempDir() + "uoe_test_token_stream_" + std::to_string(::getpid())) {
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

std::vector<int32_t> ids_below(uint32_t V, size_t n, uint32_t mul) {
  std::vector<int32_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<int32_t>((i * mul + 7) % V);
  return v;
}

TEST(TokenStream, MappedViewsReadWhatTheFileHolds) {
  TempDir dir;
  for (const uint32_t V : {256u, 70000u}) {  // uint16 and uint32 ids
    const std::vector<int32_t> ids = ids_below(V, 1000, 40503);
    const std::string path = dir / ("v" + std::to_string(V) + ".tok");
    uoe::token_file_write(path, ids.data(), ids.size(), TokenizerKind::word, V, 1);
    const uoe::TokenFile f(path, "--data");
    const TokenStream all = f.stream(0, f.size());
    EXPECT_EQ(all.heap_ids(), 0u) << "a mapped stream holds no copy";
    EXPECT_EQ(all.to_vector(), ids);
    const TokenStream mid = f.stream(100, 250);
    EXPECT_EQ(mid.to_vector(), std::vector<int32_t>(ids.begin() + 100, ids.begin() + 350));
    EXPECT_EQ(mid.at(0), ids[100]);
  }
}

TEST(TokenStream, RangesSpanSegmentsAndSlicesShareStorage) {
  const std::vector<int32_t> a = ids_below(256, 37, 3), b = ids_below(256, 5, 11), c = ids_below(256, 60, 13);
  TokenStream s(a);
  s.append(TokenStream(b));
  s.append(TokenStream(c));
  std::vector<int32_t> all = a;
  all.insert(all.end(), b.begin(), b.end());
  all.insert(all.end(), c.begin(), c.end());
  ASSERT_EQ(s.size(), all.size());
  EXPECT_EQ(s.segments(), 3u);
  EXPECT_EQ(s.to_vector(), all);
  for (size_t begin = 0; begin < all.size(); begin += 7)
    for (size_t count : {size_t{0}, size_t{1}, size_t{9}, all.size() - begin}) {
      if (begin + count > all.size()) continue;
      std::vector<int32_t> got(count);
      s.copy(begin, count, got.data());
      EXPECT_EQ(got, std::vector<int32_t>(all.begin() + begin, all.begin() + begin + count)) << begin << "+" << count;
      EXPECT_EQ(s.slice(begin, count).to_vector(), got);
    }
}

// A damaged id is found where it is read: loading maps the file without reading the ids (so
// start-up does not grow with the corpus); the window that reads it names the file, the token's
// index and its byte offset.
TEST(TokenStream, ADamagedIdIsAnErrorNamingTheFileTokenAndOffset) {
  TempDir dir;
  const std::vector<int32_t> ids = ids_below(256, 400, 5);
  const std::string path = dir / "bad.tok";
  uoe::token_file_write(path, ids.data(), ids.size(), TokenizerKind::byte, 256, 0);
  {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(uoe::kTokenFileHeaderBytes + 2 * 123));
    const char bad[2] = {0x00, 0x01};  // id 256
    f.write(bad, 2);
  }
  uoe::Config cfg;
  cfg.data = path;
  cfg.seq_len = 8;
  const uoe::Dataset ds = uoe::data_load(cfg);  // maps; reads no id
  std::vector<int32_t> in(8 * 4), tg(8 * 4);
  uoe::data_val_windows(ds.train, 8, 0, 4, in.data(), tg.data());  // tokens 0..32: fine
  const std::string msg = error_message([&] { uoe::data_val_windows(ds.train, 8, 15, 1, in.data(), tg.data()); });
  EXPECT_TRUE(contains(msg, path)) << msg;
  EXPECT_TRUE(contains(msg, "token 123 (byte offset " + std::to_string(uoe::kTokenFileHeaderBytes + 246) + ")")) << msg;
  EXPECT_TRUE(contains(msg, "id 256")) << msg;
  // The training windows check too: some window of a few batches covers token 123.
  EXPECT_THROW(
      {
        for (uint64_t step = 0; step < 50; ++step) uoe::data_sample_batch(ds.train, 8, 4, 1, step, 0, in.data(), tg.data());
      },
      uoe::Error);
}

// A one-file dataset draws exactly the windows of the in-memory copy the data path used to make,
// so training on it is bitwise the same run; and the same as training on the text it came from.
struct Trainee {
  uoe::Config cfg;
  uoe::LocalExchange exchange;
  std::unique_ptr<uoe::Model> model;
  std::unique_ptr<uoe::AdamW> opt;
  explicit Trainee(const uoe::Config& c) : cfg(c) {
    model = std::make_unique<uoe::Model>(uoe::model_spec_from_config(cfg, 256), cfg.seed, &exchange);
    uoe::AdamWSpec spec;
    spec.weight_decay = cfg.weight_decay;
    opt = std::make_unique<uoe::AdamW>(model->params(), spec);
  }
  std::vector<double> losses(const TokenStream& tokens, int steps) {
    std::vector<double> out;
    for (int s = 1; s <= steps; ++s) out.push_back(uoe::train_step(*model, *opt, cfg, tokens, s).loss);
    return out;
  }
};

TEST(TokenStream, TrainingOnAMappedFileIsBitwiseTheCopyAndTheText) {
  TempDir dir;
  uoe::Config cfg;
  cfg.layers = 1;
  cfg.d_model = 32;
  cfg.heads = 4;
  cfg.attn_experts = 2;
  cfg.attn_topk = 1;
  cfg.experts = 4;
  cfg.topk = 2;
  cfg.d_ff = 64;
  cfg.seq_len = 16;
  cfg.batch_size = 2;
  cfg.steps = 4;
  cfg.warmup = 1;
  uoe::config_validate(cfg);
  const std::string text = uoe::data_builtin_corpus().substr(0, 30000);
  cfg.data = dir / "corpus.txt";
  std::ofstream(cfg.data, std::ios::binary) << text;
  const uoe::Dataset from_text = uoe::data_load(cfg);
  uoe::token_files_write(from_text, dir / "p");
  cfg.data = dir / "p.train.tok";
  cfg.val_data = dir / "p.val.tok";
  const uoe::Dataset mapped = uoe::data_load(cfg);
  ASSERT_EQ(mapped.train.heap_ids(), 0u);
  const TokenStream copy(mapped.train.to_vector());  // what the data path held before
  const std::vector<double> a = Trainee(cfg).losses(mapped.train, 4);
  const std::vector<double> b = Trainee(cfg).losses(copy, 4);
  const std::vector<double> c = Trainee(cfg).losses(from_text.train, 4);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i], b[i]) << "step " << i + 1;  // bitwise
    EXPECT_EQ(a[i], c[i]) << "step " << i + 1;
  }
  EXPECT_NE(a.front(), a.back()) << "the run trained";
}

TEST(EvalBudget, WindowsAreSpreadEvenlyAndAllOfThemWhenTheBudgetCoversTheSplit) {
  for (int64_t total : {1, 7, 312, 100003}) {
    for (int64_t i = 0; i < total; i += 1 + total / 50) EXPECT_EQ(uoe::data_eval_window(i, total, total), i);
    for (int64_t n : {int64_t{1}, int64_t{3}, total / 2 + 1, total}) {
      if (n > total) continue;
      std::set<int64_t> seen;
      int64_t prev = -1;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t w = uoe::data_eval_window(i, n, total);
        ASSERT_GT(w, prev) << "windows in order, none twice";
        ASSERT_LT(w, total);
        // Evenly: window i sits within one stride of i · total / n.
        ASSERT_LE(static_cast<double>(w), static_cast<double>(i) * total / n);
        ASSERT_GT(static_cast<double>(w) + 1, static_cast<double>(i) * total / n);
        prev = w;
      }
      EXPECT_EQ(uoe::data_eval_window(0, n, total), 0);
    }
  }
  // Splits of more than 2^32 windows: the product does not overflow.
  const int64_t huge = int64_t{1} << 40;
  EXPECT_EQ(uoe::data_eval_window(1023, 1024, huge), huge / 1024 * 1023);
  EXPECT_THROW(uoe::data_eval_window(5, 5, 10), uoe::Error);
  EXPECT_THROW(uoe::data_eval_window(0, 11, 10), uoe::Error);
}

// val_bpb divides by the bytes each split came from: byte level one per token; word level the
// text's bytes, split where the last training token ends.
TEST(SplitBytes, AreTheTextsBytesForEveryTokenizer) {
  const std::string text = uoe::data_builtin_corpus().substr(0, 5000);
  const uoe::Dataset b = uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::byte, 4, "mem");
  EXPECT_EQ(b.train_bytes, static_cast<double>(b.train.size()));
  EXPECT_EQ(b.val_bytes, static_cast<double>(b.val.size()));
  const uoe::Dataset w = uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::word, 4, "mem");
  EXPECT_EQ(w.train_bytes + w.val_bytes, static_cast<double>(text.size()));
  // The validation bytes decode back (up to spacing) to the validation tokens: more than one byte
  // per word token, and the split point is a token boundary.
  EXPECT_GT(w.val_bytes, static_cast<double>(w.val.size()));
  const std::string val_text = text.substr(text.size() - static_cast<size_t>(w.val_bytes));
  EXPECT_EQ(w.vocab.encode(val_text), w.val.to_vector());
  const std::string other = "a b c d e f g h\n";
  const uoe::Dataset wv = uoe::data_from_text(text, &other, 0.1, TokenizerKind::word, 2, "mem");
  EXPECT_EQ(wv.val_bytes, static_cast<double>(other.size()));
}

// ---------------------------------------------------------------------------------------------
// Shards and their index

struct Sharded : testing::Test {
  TempDir dir;
  uoe::Config cfg;
  uoe::Dataset raw;
  void SetUp() override {
    cfg.seq_len = 16;
    cfg.data = dir / "corpus.txt";
    std::ofstream(cfg.data, std::ios::binary) << uoe::data_builtin_corpus().substr(0, 20000);
    raw = uoe::data_load(cfg);
  }
  // Prepares `raw` with shards of `bytes` bytes; returns the written paths.
  std::vector<std::string> prepare(const std::string& prefix, uint64_t bytes) {
    return uoe::token_files_write(raw, dir / prefix, bytes);
  }
  std::string load_error(const std::string& train, const std::string& val) {
    uoe::Config c = cfg;
    c.data = train;
    c.val_data = val;
    return error_message([&] { uoe::data_load(c); });
  }
};

TEST_F(Sharded, ShardsConcatenateToTheOneFileStreamAndTrainAsIt) {
  const std::vector<std::string> one = prepare("one", uoe::kDefaultShardBytes);
  const std::vector<std::string> many = prepare("many", 2000);  // 1000 uint16 ids a shard
  const size_t train_shards = (raw.train.size() + 999) / 1000, val_shards = (raw.val.size() + 999) / 1000;
  ASSERT_EQ(many.size(), 2 + train_shards + val_shards);
  EXPECT_EQ(many[2], dir / "many.train-00000.tok");
  EXPECT_EQ(uoe::vocab_path_for(many[3]), dir / "many.vocab");
  uoe::Config c = cfg;
  c.data = many[0];
  c.val_data = many[1];
  const uoe::Dataset ds = uoe::data_load(c);
  EXPECT_EQ(ds.train.segments(), train_shards);
  EXPECT_EQ(ds.train.to_vector(), raw.train.to_vector());
  EXPECT_EQ(ds.val.to_vector(), raw.val.to_vector());
  EXPECT_EQ(ds.val_bytes, raw.val_bytes) << "the index records the split's source bytes";
  EXPECT_TRUE(contains(ds.source, std::to_string(train_shards) + " shards")) << ds.source;
  // Windows straddle shards exactly as they run through one file: the same batches.
  c.data = one[2];  // the single .tok
  c.val_data = one[3];
  const uoe::Dataset single = uoe::data_load(c);
  std::vector<int32_t> a(16 * 8), at(a.size()), b(a.size()), bt(a.size());
  for (uint64_t step = 0; step < 20; ++step) {
    uoe::data_sample_batch(ds.train, 16, 8, 3, step, 1, a.data(), at.data());
    uoe::data_sample_batch(single.train, 16, 8, 3, step, 1, b.data(), bt.data());
    ASSERT_EQ(a, b) << "step " << step;
    ASSERT_EQ(at, bt) << "step " << step;
  }
  // Without --val-data, the last --val-fraction of the concatenated shards is validation.
  c.data = many[0];
  c.val_data.clear();
  const uoe::Dataset split = uoe::data_load(c);
  EXPECT_EQ(split.train.size() + split.val.size(), raw.train.size());
  EXPECT_EQ(split.val.to_vector(), raw.train.slice(split.train.size(), split.val.size()).to_vector());
}

TEST_F(Sharded, BadIndexesAndShardsAreErrorsNamingTheFiles) {
  const std::vector<std::string> w = prepare("p", 2000);
  const std::string idx = w[0], val = w[1], shard1 = dir / "p.train-00001.tok";
  // A missing shard.
  std::filesystem::rename(shard1, shard1 + ".away");
  std::string m = load_error(idx, val);
  EXPECT_TRUE(contains(m, idx) && contains(m, shard1) && contains(m, "missing")) << m;
  // A truncated shard.
  std::filesystem::copy_file(shard1 + ".away", shard1);
  std::filesystem::resize_file(shard1, std::filesystem::file_size(shard1) - 2);
  m = load_error(idx, val);
  EXPECT_TRUE(contains(m, shard1) && contains(m, "truncated")) << m;
  // A shard of another preparation (same size, other header: another vocabulary hash).
  std::filesystem::remove(shard1);
  {
    const std::vector<int32_t> ids = raw.train.slice(1000, 1000).to_vector();
    uoe::token_file_write(shard1, ids.data(), ids.size(), TokenizerKind::byte, 256, 0);
    uoe::Config c = cfg;
    c.data = idx;
    c.val_data = val;
    EXPECT_NO_THROW(uoe::data_load(c)) << "the rewritten shard is the original";
    uoe::token_file_write(shard1, ids.data(), ids.size(), TokenizerKind::word, 256, 77);
  }
  m = load_error(idx, val);
  EXPECT_TRUE(contains(m, shard1) && contains(m, "checksum")) << m;
  // An empty index, a bad line, a token count that disagrees.
  std::ofstream(dir / "empty.idx", std::ios::binary).flush();
  m = load_error(dir / "empty.idx", val);
  EXPECT_TRUE(contains(m, dir / "empty.idx") && contains(m, "empty")) << m;
  std::ofstream(dir / "bad.idx", std::ios::binary) << "uoe-token-index 1\ntokenizer zero\n";
  m = load_error(dir / "bad.idx", val);
  EXPECT_TRUE(contains(m, dir / "bad.idx") && contains(m, "line 2") && contains(m, "tokenizer")) << m;
  std::ofstream(dir / "foreign.idx", std::ios::binary) << "hello\n";
  m = load_error(dir / "foreign.idx", val);
  EXPECT_TRUE(contains(m, "not a uoe shard index")) << m;
}

TEST_F(Sharded, AFailedWriteLeavesNoShardAndNoIndex) {
  // The third training shard's name is taken by a directory: its rename fails.
  std::filesystem::create_directories(dir / "q.train-00002.tok");
  EXPECT_THROW(prepare("q", 2000), uoe::Error);
  for (const auto& e : std::filesystem::directory_iterator(dir.path)) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name.rfind("q.", 0) != 0 || name == "q.train-00002.tok") << "left behind: " << name;
  }
}

TEST(TextInput, EmptyAndBinaryFilesAreErrorsNamingTheFile) {
  TempDir dir;
  uoe::Config cfg;
  cfg.data = dir / "empty.txt";
  std::ofstream(cfg.data).flush();
  std::string m = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(m, cfg.data) && contains(m, "empty")) << m;
  cfg.data = dir / "blob.bin";
  std::ofstream(cfg.data, std::ios::binary) << std::string(5000, 'a') + std::string("\x7f" "ELF\0\0", 6);
  m = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(m, cfg.data) && contains(m, "binary") && contains(m, "offset 5004")) << m;
}

}  // namespace
