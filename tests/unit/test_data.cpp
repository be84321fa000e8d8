// Data: tokenizers, splits, vocabulary order, training/validation windows, the built-in corpus and
// the errors a user can cause with bad data files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "tests/common/errors.hpp"
#include "layers/model.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/rng.hpp"

namespace {

using uoe::testing_support::contains;
using uoe::testing_support::error_message;

using uoe::TokenizerKind;

// A file under the test temp dir, unique to this process so parallel test runs don't collide.
std::string temp_path(const std::string& name) {
  return testing::TempDir() + "uoe_test_data_" + std::to_string(::getpid()) + "_" + name;
}

// A temp file with the given contents, removed when it goes out of scope.
struct TempFile {
  std::string path;
  TempFile(const std::string& name, const std::string& text) : path(temp_path(name)) {
    std::ofstream out(path, std::ios::binary);
    out << text;
    EXPECT_TRUE(out.good()) << "cannot write " << path;
  }
  ~TempFile() { std::remove(path.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
};

std::vector<int32_t> iota_tokens(size_t n) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), 0);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Tokenizers and splits

TEST(DataByte, RoundTripsEveryByte) {
  std::string text;
  for (int i = 0; i < 256; ++i) text += static_cast<char>(i);
  text += "hello, world\n";
  const uoe::Dataset ds = uoe::data_from_text(text, &text, 0.1, TokenizerKind::byte, 8, "mem");
  EXPECT_EQ(ds.vocab.size(), 256);
  ASSERT_EQ(ds.train.size(), text.size());
  for (size_t i = 0; i < text.size(); ++i)
    ASSERT_EQ(ds.train.at(i), static_cast<unsigned char>(text[i])) << "at byte " << i;
  EXPECT_EQ(ds.vocab.decode(ds.train.to_vector().data(), ds.train.size()), text);
  EXPECT_EQ(ds.val.to_vector(), ds.train.to_vector());
  EXPECT_EQ(ds.source, "mem");
}

TEST(DataByte, SplitsByValFraction) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += static_cast<char>('a' + i % 26);
  const uoe::Dataset ds = uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::byte, 16, "mem");
  ASSERT_EQ(ds.train.size(), 900u);
  ASSERT_EQ(ds.val.size(), 100u);
  EXPECT_EQ(ds.vocab.decode(ds.train.to_vector().data(), ds.train.size()), text.substr(0, 900));
  EXPECT_EQ(ds.vocab.decode(ds.val.to_vector().data(), ds.val.size()), text.substr(900));
}

TEST(DataWord, TokensAndVocabularyOrder) {
  // Tokens: b a b , c \n a b b. Counts: b 4, a 2, then "\n" "," "c" once each, tied, so in
  // byte order: '\n' (0x0a) < ',' (0x2c) < 'c' (0x63).
  const std::string train = "b a b, c\na b b";
  const std::string val = "a d b.";
  const uoe::Dataset ds = uoe::data_from_text(train, &val, 0.1, TokenizerKind::word, 1, "mem");
  const std::vector<std::string> words = {"<unk>", "b", "a", "\n", ",", "c"};
  EXPECT_EQ(ds.vocab.words, words);
  EXPECT_EQ(ds.vocab.size(), 6);
  EXPECT_EQ(ds.train.to_vector(), (std::vector<int32_t>{1, 2, 1, 4, 5, 3, 2, 1, 1}));
  // "d" and "." never occur in training: both are <unk>.
  EXPECT_EQ(ds.val.to_vector(), (std::vector<int32_t>{2, 0, 1, 0}));
  EXPECT_EQ(ds.vocab.decode(ds.train.to_vector().data(), ds.train.size()), train);
}

TEST(DataWord, ApostrophesDigitsPunctuationAndWhitespace) {
  // Tabs, carriage returns and runs of spaces separate; apostrophes and digits stay in words;
  // each punctuation char is its own token; UTF-8 bytes stay inside their word.
  const std::string text = "don't\t stop\r 42x's (ok) caf\xc3\xa9";
  const uoe::Dataset ds = uoe::data_from_text(text, &text, 0.1, TokenizerKind::word, 1, "mem");
  // All counts are 1, so the order is byte-wise: '(' 0x28 < ')' 0x29 < '4' < 'c' < 'd' < 'o' < 's'.
  const std::vector<std::string> words = {"<unk>", "(", ")", "42x's", "caf\xc3\xa9", "don't", "ok", "stop"};
  EXPECT_EQ(ds.vocab.words, words);
  EXPECT_EQ(ds.train.to_vector(), (std::vector<int32_t>{5, 7, 3, 1, 6, 2, 4}));
}

TEST(DataWord, VocabularyComesFromTrainingSplitOnly) {
  // 20 distinct words, val_fraction 0.25: the last 5 are validation and unknown to the vocabulary.
  std::string text;
  for (int i = 0; i < 20; ++i) {
    text += 'w';
    text += std::to_string(i);
    text += ' ';
  }
  const uoe::Dataset ds = uoe::data_from_text(text, nullptr, 0.25, TokenizerKind::word, 2, "mem");
  ASSERT_EQ(ds.train.size(), 15u);
  ASSERT_EQ(ds.val.size(), 5u);
  EXPECT_EQ(ds.vocab.size(), 16);
  for (int32_t id : ds.train.to_vector()) EXPECT_GT(id, 0);
  for (int32_t id : ds.val.to_vector()) EXPECT_EQ(id, 0);
}

// ---------------------------------------------------------------------------------------------
// Training windows

TEST(DataSample, DeterministicAndShifted) {
  const int T = 16, B = 8;
  const size_t n = 1000;
  const std::vector<int32_t> tokens = iota_tokens(n);  // token value = its position
  std::vector<int32_t> in1(B * T), tg1(B * T), in2(B * T), tg2(B * T);
  uoe::data_sample_batch(tokens, T, B, 7, 3, 2, in1.data(), tg1.data());
  uoe::data_sample_batch(tokens, T, B, 7, 3, 2, in2.data(), tg2.data());
  EXPECT_EQ(in1, in2);
  EXPECT_EQ(tg1, tg2);
  for (int b = 0; b < B; ++b) {
    const int32_t start = in1[b * T];
    EXPECT_GE(start, 0);
    EXPECT_LE(start, static_cast<int32_t>(n) - T - 1);
    for (int t = 0; t < T; ++t) {
      EXPECT_EQ(in1[b * T + t], start + t);      // a contiguous window
      EXPECT_EQ(tg1[b * T + t], start + t + 1);  // targets are the next tokens
    }
  }
  // Another slot, step or seed draws other windows.
  uoe::data_sample_batch(tokens, T, B, 7, 3, 3, in2.data(), tg2.data());
  EXPECT_NE(in1, in2);
  uoe::data_sample_batch(tokens, T, B, 7, 4, 2, in2.data(), tg2.data());
  EXPECT_NE(in1, in2);
  uoe::data_sample_batch(tokens, T, B, 8, 3, 2, in2.data(), tg2.data());
  EXPECT_NE(in1, in2);
}

TEST(DataSample, BatchRowDoesNotDependOnBatchSize) {
  // Window b is a function of (seed, step, slot, b) only: a smaller batch is a prefix.
  const int T = 4;
  const std::vector<int32_t> tokens = iota_tokens(500);
  std::vector<int32_t> in8(8 * T), tg8(8 * T), in3(3 * T), tg3(3 * T);
  uoe::data_sample_batch(tokens, T, 8, 1, 5, 1, in8.data(), tg8.data());
  uoe::data_sample_batch(tokens, T, 3, 1, 5, 1, in3.data(), tg3.data());
  EXPECT_TRUE(std::equal(in3.begin(), in3.end(), in8.begin()));
}

TEST(DataSample, FollowsTheDocumentedCounterLayout) {
  // The contract other data paths must reproduce: start = rng_below(seed, "data.window",
  // (step << 32) | (slot << 16) | b, n - T). B = 300 exercises b above 8 bits.
  const int T = 8, B = 300;
  const size_t n = 100000;
  const std::vector<int32_t> tokens = iota_tokens(n);
  std::vector<int32_t> in(B * T), tg(B * T);
  const uint64_t seed = 42, step = 123456, slot = 777;
  uoe::data_sample_batch(tokens, T, B, seed, step, slot, in.data(), tg.data());
  for (int b = 0; b < B; ++b) {
    const uint64_t counter = (step << 32) | (slot << 16) | static_cast<uint64_t>(b);
    const auto start = uoe::rng_below(seed, uoe::rng_stream("data.window"), counter, n - T);
    ASSERT_EQ(in[b * T], static_cast<int32_t>(start)) << "row " << b;
  }
}

TEST(DataSample, StartsCoverTheWholeRange) {
  // n = 20, T = 10: the valid starts are exactly 0..9 (start 9 reads target tok[19], the last).
  const int T = 10, B = 100;
  const std::vector<int32_t> tokens = iota_tokens(20);
  std::set<int32_t> starts;
  std::vector<int32_t> in(B * T), tg(B * T);
  for (uint64_t step = 0; step < 10; ++step) {
    uoe::data_sample_batch(tokens, T, B, 1, step, 0, in.data(), tg.data());
    for (int b = 0; b < B; ++b) starts.insert(in[b * T]);
  }
  EXPECT_EQ(starts, (std::set<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(DataSample, RejectsOutOfLayoutArguments) {
  const std::vector<int32_t> tokens = iota_tokens(100);
  std::vector<int32_t> in(16), tg(16);
  EXPECT_THROW(uoe::data_sample_batch(tokens, 4, 4, 1, 0, 65536, in.data(), tg.data()), uoe::Error);
  EXPECT_THROW(uoe::data_sample_batch(tokens, 4, 4, 1, uint64_t{1} << 32, 0, in.data(), tg.data()),
               uoe::Error);
  const std::vector<int32_t> short_tokens = iota_tokens(4);  // needs T + 1 = 5
  EXPECT_THROW(uoe::data_sample_batch(short_tokens, 4, 4, 1, 0, 0, in.data(), tg.data()), uoe::Error);
}

// ---------------------------------------------------------------------------------------------
// Validation windows

TEST(DataVal, WindowCount) {
  EXPECT_EQ(uoe::data_val_window_count(0, 8), 0);
  EXPECT_EQ(uoe::data_val_window_count(8, 8), 0);   // 8 inputs need a 9th token as target
  EXPECT_EQ(uoe::data_val_window_count(9, 8), 1);
  EXPECT_EQ(uoe::data_val_window_count(1001, 10), 100);
  EXPECT_EQ(uoe::data_val_window_count(1010, 10), 100);  // partial tail dropped
  EXPECT_EQ(uoe::data_val_window_count(1011, 10), 101);
}

TEST(DataVal, TargetsTileTheSplit) {
  const int T = 10;
  const std::vector<int32_t> tokens = iota_tokens(1005);
  const int64_t count = uoe::data_val_window_count(tokens.size(), T);
  ASSERT_EQ(count, 100);
  // Filled in chunks of 7 windows (the last chunk partial), as an evaluator with B = 7 would.
  std::vector<int32_t> inputs(count * T), targets(count * T);
  for (int64_t w = 0; w < count; w += 7) {
    const int n = static_cast<int>(std::min<int64_t>(7, count - w));
    uoe::data_val_windows(tokens, T, w, n, inputs.data() + w * T, targets.data() + w * T);
  }
  // Targets concatenated = tokens[1 .. count*T]; inputs = tokens[0 .. count*T).
  for (int64_t i = 0; i < count * T; ++i) {
    ASSERT_EQ(targets[i], tokens[i + 1]) << "target " << i;
    ASSERT_EQ(inputs[i], tokens[i]) << "input " << i;
  }
  EXPECT_THROW(uoe::data_val_windows(tokens, T, 95, 6, inputs.data(), targets.data()), uoe::Error);
  EXPECT_THROW(uoe::data_val_windows(tokens, T, -1, 1, inputs.data(), targets.data()), uoe::Error);
}

// ---------------------------------------------------------------------------------------------
// Built-in corpus

TEST(DataCorpus, DeterministicSizedAndStructured) {
  const std::string a = uoe::data_builtin_corpus();
  const std::string b = uoe::data_builtin_corpus();
  EXPECT_EQ(a, b);
  EXPECT_GT(a.size(), 100u * 1000u);
  EXPECT_LT(a.size(), 1000u * 1000u);

  std::vector<int64_t> hist(256, 0);
  for (unsigned char c : a) ++hist[c];
  int distinct = 0;
  double entropy = 0;
  for (int64_t h : hist) {
    if (h == 0) continue;
    ++distinct;
    const double p = static_cast<double>(h) / static_cast<double>(a.size());
    entropy -= p * std::log2(p);
  }
  EXPECT_LE(distinct, 60);
  EXPECT_GT(distinct, 20);     // not degenerate either
  EXPECT_LT(entropy, 5.0);     // English-like letter statistics (~4.1-4.3 bits), far below 8
  EXPECT_GT(entropy, 3.0);
  // The grammar's block kinds are all present.
  EXPECT_TRUE(contains(a, " plus "));
  EXPECT_TRUE(contains(a, "\nsound: "));
  EXPECT_TRUE(contains(a, "seven eight nine"));
  EXPECT_TRUE(contains(a, " are "));
}

TEST(DataLoad, BuiltInCorpusByDefault) {
  uoe::Config cfg;  // --data empty: the built-in corpus, last 10% validation
  const uoe::Dataset ds = uoe::data_load(cfg);
  const std::string corpus = uoe::data_builtin_corpus();
  EXPECT_EQ(ds.source, "built-in corpus");
  EXPECT_EQ(ds.train.size() + ds.val.size(), corpus.size());
  EXPECT_EQ(ds.val.size(), static_cast<size_t>(std::llround(0.1 * static_cast<double>(corpus.size()))));
  EXPECT_EQ(ds.vocab.decode(ds.train.to_vector().data(), ds.train.size()), corpus.substr(0, ds.train.size()));
}

TEST(DataLoad, BuiltInCorpusWordLevelHasNoUnknownValidationWords) {
  uoe::Config cfg;
  cfg.tokenizer = "word";
  const uoe::Dataset ds = uoe::data_load(cfg);
  EXPECT_GT(ds.vocab.size(), 50);
  EXPECT_LT(ds.vocab.size(), 400);
  for (int32_t id : ds.val.to_vector()) ASSERT_NE(id, 0) << "validation word unknown to the training vocabulary";
}

TEST(DataLoad, TrainAndValidationFiles) {
  const TempFile train_file("tv_train.txt", std::string(300, 'x') + "yz");
  const TempFile val_file("tv_val.txt", std::string(40, 'q'));
  const std::string& train = train_file.path;
  const std::string& val = val_file.path;
  uoe::Config cfg;
  cfg.data = train;
  cfg.val_data = val;
  cfg.seq_len = 32;
  const uoe::Dataset ds = uoe::data_load(cfg);
  EXPECT_EQ(ds.train.size(), 302u);
  EXPECT_EQ(ds.val.size(), 40u);
  EXPECT_EQ(ds.val.at(0), 'q');
  EXPECT_TRUE(contains(ds.source, train));
  EXPECT_TRUE(contains(ds.source, val));
}

// ---------------------------------------------------------------------------------------------
// Errors

TEST(DataErrors, MissingFile) {
  uoe::Config cfg;
  cfg.data = temp_path("does_not_exist.txt");
  const std::string msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(msg, cfg.data)) << msg;
  EXPECT_TRUE(contains(msg, "--data")) << msg;
}

TEST(DataErrors, Directory) {
  uoe::Config cfg;
  cfg.data = testing::TempDir();
  const std::string msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(msg, "directory")) << msg;
}

TEST(DataErrors, EmptyFile) {
  uoe::Config cfg;
  const TempFile empty("empty.txt", "");
  cfg.data = empty.path;
  const std::string msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(msg, cfg.data)) << msg;
  EXPECT_TRUE(contains(msg, "empty")) << msg;

  const TempFile nonempty("nonempty.txt", std::string(500, 'a'));
  const TempFile empty_val("empty_val.txt", "");
  cfg.data = nonempty.path;
  cfg.val_data = empty_val.path;
  const std::string val_msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(val_msg, cfg.val_data)) << val_msg;
  EXPECT_TRUE(contains(val_msg, "--val-data")) << val_msg;
}

TEST(DataErrors, SplitTooShortForOneWindow) {
  uoe::Config cfg;
  cfg.seq_len = 128;
  const TempFile short_file("short.txt", std::string(50, 'a'));  // 45 train / 5 val tokens
  cfg.data = short_file.path;
  std::string msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(msg, cfg.data)) << msg;
  EXPECT_TRUE(contains(msg, "--seq-len 128")) << msg;
  EXPECT_TRUE(contains(msg, "129")) << msg;
  EXPECT_TRUE(contains(msg, "45 tokens")) << msg;

  // Training is long enough; the validation file is not.
  const TempFile long_file("long.txt", std::string(1000, 'a'));
  const TempFile short_val("short_val.txt", std::string(100, 'b'));
  cfg.data = long_file.path;
  cfg.val_data = short_val.path;
  msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(msg, cfg.val_data)) << msg;
  EXPECT_TRUE(contains(msg, "100 tokens")) << msg;
  EXPECT_TRUE(contains(msg, "--seq-len")) << msg;

  // Word level counts words, not bytes: 1000 bytes of one word is one token.
  cfg.val_data.clear();
  cfg.tokenizer = "word";
  cfg.seq_len = 4;
  msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(msg, "--seq-len 4")) << msg;
}

TEST(DataErrors, SplitLengthBoundary) {
  // seq_len + 1 tokens is exactly one window; seq_len tokens is none.
  const std::string train(100, 'a');
  const std::string val_ok(9, 'b'), val_short(8, 'b');
  EXPECT_NO_THROW(uoe::data_from_text(train, &val_ok, 0.1, TokenizerKind::byte, 8, "mem"));
  const std::string msg =
      error_message([&] { uoe::data_from_text(train, &val_short, 0.1, TokenizerKind::byte, 8, "mem"); });
  EXPECT_TRUE(contains(msg, "8 tokens")) << msg;
  EXPECT_TRUE(contains(msg, "needs at least 9")) << msg;
}

TEST(DataErrors, BadOptions) {
  uoe::Config cfg;
  cfg.tokenizer = "bpe";
  EXPECT_TRUE(contains(error_message([&] { uoe::data_load(cfg); }), "--tokenizer"));
  const std::string text(1000, 'a');
  EXPECT_TRUE(contains(
      error_message([&] { uoe::data_from_text(text, nullptr, 1.0, TokenizerKind::byte, 8, "mem"); }),
      "--val-fraction"));
  EXPECT_TRUE(contains(
      error_message([&] { uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::byte, 0, "mem"); }),
      "--seq-len"));
}

// ---------------------------------------------------------------------------------------------
// Presets (launcher/configs/*.ini): each parses and validates as uoe-train would read it, without
// training. --data / --val-data are overridden with a file that exists (the presets name paths
// relative to where one runs them, and the WikiText-103 files are prepared by the user).

// From the source tree's absolute path (CMakeLists.txt): __FILE__ may be relative to the build
// directory, which made these tests pass only when run from there.
std::string presets_dir() { return std::string(UOE_SOURCE_DIR) + "/launcher/configs"; }

uoe::Config preset_parse(const std::string& ini, const std::string& data) {
  const std::vector<std::string> args = {"uoe-train", "--config", ini, "--data", data, "--val-data", data};
  std::vector<const char*> argv;
  for (const std::string& a : args) argv.push_back(a.c_str());
  std::string help;
  const uoe::ConfigParse parsed = uoe::config_parse(static_cast<int>(argv.size()), argv.data(), &help);
  EXPECT_FALSE(parsed.exit_now);
  return parsed.config;
}

TEST(DataPresets, EveryPresetParsesAndValidates) {
  const TempFile text("preset_data.txt", std::string(4096, 'a'));
  int presets = 0;
  for (const auto& entry : std::filesystem::directory_iterator(presets_dir())) {
    if (entry.path().extension() != ".ini") continue;
    ++presets;
    SCOPED_TRACE(entry.path().string());
    uoe::Config cfg;
    ASSERT_NO_THROW(cfg = preset_parse(entry.path().string(), text.path));
    // The model the preset describes can be built (shapes agree), here with a word vocabulary of
    // 267,735 (WikiText-103's) or the byte vocabulary.
    EXPECT_NO_THROW(uoe::model_spec_from_config(cfg, cfg.tokenizer == "word" ? 267735 : 256));
  }
  EXPECT_GE(presets, 3);
}

TEST(DataPresets, PresetsSayWhatTheyPromise) {
  const TempFile text("preset_data2.txt", std::string(4096, 'a'));
  const uoe::Config tiny = preset_parse(presets_dir() + "/tiny.ini", text.path);
  EXPECT_EQ(tiny.steps, 300);
  EXPECT_EQ(tiny.log_every, 25);
  EXPECT_EQ(tiny.eval_every, 100);
  EXPECT_EQ(tiny.d_model, 128);

  const uoe::Config ref = preset_parse(presets_dir() + "/shakespeare.ini", text.path);
  EXPECT_EQ(ref.layers, 4);
  EXPECT_EQ(ref.d_ff, 512);
  EXPECT_EQ(ref.batch_size, 16);
  EXPECT_EQ(ref.steps, 1500);
  EXPECT_EQ(ref.tokenizer, "byte");
  EXPECT_DOUBLE_EQ(ref.capacity_factor, 1.25);

  const uoe::Config wt = preset_parse(presets_dir() + "/wikitext103.ini", text.path);
  EXPECT_EQ(wt.layers, 16);
  EXPECT_EQ(wt.d_model, 400);
  EXPECT_EQ(wt.heads, 10);
  EXPECT_EQ(wt.attn_experts, 10);
  EXPECT_EQ(wt.attn_topk, 5);
  EXPECT_EQ(wt.experts, 4);
  EXPECT_EQ(wt.topk, 2);
  EXPECT_EQ(wt.d_ff, 2100);
  EXPECT_EQ(wt.seq_len, 150);
  EXPECT_EQ(wt.tokenizer, "sentencepiece");
  EXPECT_EQ(uoe::model_spec_from_config(wt, 32000).expert_ff(), 525);
}

}  // namespace
