// Tokenizers (runtime/tokenizer.hpp): SentencePiece models trained here are deterministic and
// lossless on UTF-8 text, line ends included; encoding a text in pieces (streamed, or on threads) gives
// the ids of the whole; prepared sentencepiece token files load only with their own model; the word
// tokenizer's --vocab-size / --min-count keep a prefix of today's vocabulary and change nothing when
// not given; vocabularies survive the trip through a checkpoint manifest.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "checkpoints/manifest.hpp"
#include "runtime/config.hpp"
#include "runtime/data.hpp"
#include "runtime/error.hpp"
#include "runtime/threads.hpp"
#include "runtime/token_file.hpp"
#include "runtime/tokenizer.hpp"
#include "tests/common/errors.hpp"

namespace {

using uoe::testing_support::contains;
using uoe::testing_support::error_message;
using uoe::TokenizerKind;

struct TempDir {
  std::string path;
  TempDir() : path(testing::TempDir() + "uoe_test_tokenizer_" + std::to_string(::getpid())) {
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

// The first 100 KB of the built-in corpus: enough text for 600 pieces (256 of them bytes), trained in well
// under a second.
const std::string& corpus() {
  static const std::string text = uoe::data_builtin_corpus().substr(0, 100000);
  return text;
}

uoe::SentencePieceTraining training(int vocab_size, const char* model_type = "bpe") {
  uoe::SentencePieceTraining how;
  how.vocab_size = vocab_size;
  how.model_type = model_type;
  how.threads = 2;
  return how;
}

// One model for the tests that only use it (training is the slow part).
const uoe::Vocab& model600() {
  static const uoe::Vocab v = uoe::sentencepiece_train(corpus(), training(600), "the test corpus");
  return v;
}

// Text the corpus never shows: capitals, digits, tabs, runs of spaces, a leading space, blank lines,
// non-ASCII UTF-8 and a missing final newline.
const std::string kUnseen = " Caf\xc3\xa9  na\xc3\xafve\t42 -- \xe2\x82\xac 7!\n\n\nthe cat sees a dog.\n  x";

// ---------------------------------------------------------------------------------------------
// SentencePiece

TEST(SentencePiece, TrainingIsDeterministic) {
  const uoe::Vocab a = uoe::sentencepiece_train(corpus(), training(600), "corpus");
  EXPECT_EQ(a.model, model600().model);
  EXPECT_EQ(a.size(), 600);
  EXPECT_EQ(uoe::vocab_hash(a), uoe::tokenizer_bytes_hash(a.model));
  const uoe::Vocab other = uoe::sentencepiece_train(corpus(), training(640), "corpus");
  EXPECT_NE(uoe::vocab_hash(other), uoe::vocab_hash(a));
}

TEST(SentencePiece, LosslessWithLineEnds) {
  for (const char* type : {"bpe", "unigram"}) {
    SCOPED_TRACE(type);
    const uoe::Vocab v = std::string(type) == "bpe" ? model600()
                                                     : uoe::sentencepiece_train(corpus(), training(500, type), "corpus");
    const auto tok = uoe::tokenizer_for(v);
    EXPECT_EQ(tok->kind(), TokenizerKind::sentencepiece);
    for (const std::string& text : {corpus().substr(0, 5000), kUnseen, std::string("\n"), std::string()}) {
      const std::vector<int32_t> ids = tok->encode(text);
      for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < v.size()) << id;
      EXPECT_EQ(tok->decode(ids.data(), ids.size()), text);
      EXPECT_EQ(v.decode(ids.data(), ids.size()), text);  // Vocab dispatches to the model
    }
    // "\n" is one token of its own; a subword model needs fewer tokens than bytes on its own text.
    EXPECT_EQ(tok->encode("\n").size(), 1u);
    EXPECT_EQ(tok->encode("a\n\nb").size(), tok->encode("a").size() + 2 + tok->encode("b").size());
    EXPECT_LT(tok->encode(corpus()).size(), corpus().size() / 2);
  }
}

TEST(SentencePiece, PiecesEncodeAsTheWhole) {
  const auto tok = uoe::tokenizer_for(model600());
  const std::string text = corpus().substr(0, 20000) + kUnseen;
  const std::vector<int32_t> whole = tok->encode(text);
  // Streamed through encode_lines in arbitrary chunks: each call consumes up to its last "\n".
  for (size_t chunk : {1, 7, 100, 4096}) {
    std::vector<int32_t> ids;
    size_t done = 0;
    std::string pending;
    for (size_t i = 0; i < text.size(); i += chunk) {
      pending += text.substr(i, chunk);
      const bool last = i + chunk >= text.size();
      const size_t used = tok->encode_lines(pending, last, ids);
      EXPECT_TRUE(last ? used == pending.size() : used == 0 || pending[used - 1] == '\n');
      done += used;
      pending.erase(0, used);
    }
    EXPECT_EQ(done, text.size()) << chunk;
    EXPECT_EQ(ids, whole) << "chunk " << chunk;
  }
  for (int threads : {1, 2, 3})
    for (size_t piece : {size_t{1}, size_t{999}, size_t{1} << 22})
      EXPECT_EQ(uoe::tokenizer_encode_parallel(*tok, text, threads, piece), whole)
          << threads << " threads, pieces of " << piece;
}

TEST(SentencePiece, RefusesWhatItCannotDo) {
  EXPECT_TRUE(contains(error_message([] { uoe::sentencepiece_vocab("not a model", "'x.model'"); }), "'x.model'"));
  // More pieces than the text can fill, or fewer than its characters plus the byte pieces.
  EXPECT_TRUE(contains(error_message([] { uoe::sentencepiece_train("ab ab\n", training(5000), "'tiny.txt'"); }),
                       "'tiny.txt'"));
  EXPECT_TRUE(contains(error_message([] { uoe::sentencepiece_train(corpus(), training(100), "'c.txt'"); }),
                       "--vocab-size 100"));
  EXPECT_TRUE(contains(error_message([] { uoe::sentencepiece_train("\n\n", training(600), "'blank.txt'"); }),
                       "no non-empty line"));
}

TEST(SentencePiece, SampleLinesTakeWholeLines) {
  // Below the sample size: every non-empty line, in order.
  const std::vector<std::string_view> lines = uoe::sentencepiece_sample_lines("a b\n\ncd\ne");
  EXPECT_EQ(lines, (std::vector<std::string_view>{"a b", "cd", "e"}));
  // Above it: whole lines from stretches spread over the text, about the sample size in all.
  std::string big;
  for (int i = 0; big.size() < uoe::kSentencePieceSampleBytes * 5 / 4; ++i) big += "line " + std::to_string(i) + "\n";
  const std::vector<std::string_view> sample = uoe::sentencepiece_sample_lines(big);
  size_t bytes = 0;
  for (std::string_view line : sample) {
    const auto at = static_cast<size_t>(line.data() - big.data());
    ASSERT_TRUE(at == 0 || big[at - 1] == '\n') << at;
    ASSERT_EQ(big[at + line.size()], '\n') << at;
    bytes += line.size() + 1;
  }
  EXPECT_LE(bytes, uoe::kSentencePieceSampleBytes + 64 * 32);
  EXPECT_GE(bytes, uoe::kSentencePieceSampleBytes - 64 * 32);
  EXPECT_EQ(sample.front().data(), big.data());
  EXPECT_GT(static_cast<size_t>(sample.back().data() - big.data()), big.size() * 63 / 64 - 1);
  EXPECT_EQ(uoe::sentencepiece_sample_lines(big), sample);
}

// ---------------------------------------------------------------------------------------------
// Token files of sentencepiece level

TEST(SentencePiece, TokenFilesLoadOnlyWithTheirModel) {
  const TempDir dir;
  uoe::Dataset ds;
  ds.vocab = model600();
  const auto tok = uoe::tokenizer_for(ds.vocab);
  ds.train = tok->encode(corpus().substr(0, 90000));
  ds.val = tok->encode(corpus().substr(90000));
  const std::vector<std::string> written = uoe::token_files_write(ds, dir / "sp");
  ASSERT_EQ(written.size(), 5u);  // the two indexes, the model, a shard each
  EXPECT_EQ(written[2], dir / "sp.model");
  EXPECT_EQ(read_bytes(written[2]), ds.vocab.model);
  const std::string head = read_bytes(written[3]).substr(0, 40);  // the training split's shard
  EXPECT_EQ(head.substr(14, 2), std::string("\x02\x00", 2));  // tokenizer 2 = sentencepiece

  uoe::Config cfg;
  cfg.tokenizer = "sentencepiece";
  cfg.seq_len = 16;
  cfg.data = written[0];
  cfg.val_data = written[1];
  const uoe::Dataset loaded = uoe::data_load(cfg);
  EXPECT_EQ(loaded.train.to_vector(), ds.train.to_vector());
  EXPECT_EQ(loaded.val.to_vector(), ds.val.to_vector());
  EXPECT_EQ(loaded.vocab.size(), 600);
  EXPECT_EQ(loaded.vocab.model, ds.vocab.model);

  // Another model in its place: refused, naming both files.
  const uoe::Vocab other = uoe::sentencepiece_train(corpus(), training(620), "corpus");
  {
    std::ofstream out(written[2], std::ios::binary | std::ios::trunc);
    out << other.model;
  }
  const std::string msg = error_message([&] { uoe::data_load(cfg); });
  EXPECT_TRUE(contains(msg, written[2]) && contains(msg, written[0])) << msg;
  std::filesystem::remove(written[2]);
  EXPECT_TRUE(contains(error_message([&] { uoe::data_load(cfg); }), "needs its model file"));
  // Sentencepiece reads prepared files only; other tokenizers refuse the files.
  cfg.tokenizer = "byte";
  EXPECT_TRUE(contains(error_message([&] { uoe::data_load(cfg); }), "sentencepiece"));
  uoe::Config text_cfg;
  text_cfg.tokenizer = "sentencepiece";
  EXPECT_TRUE(contains(error_message([&] { uoe::data_load(text_cfg); }), "uoe-prepare"));
}

// ---------------------------------------------------------------------------------------------
// Word level: --vocab-size / --min-count

TEST(WordTokenizer, LimitKeepsTheMostFrequentWords) {
  const std::string text = corpus() + kUnseen;
  const uoe::Dataset full = uoe::data_from_text(text, nullptr, 0.1, TokenizerKind::word, 8, "t");
  // Not given (or wider than the vocabulary): the ids are today's, bitwise.
  for (const auto& [vocab_size, min_count] : {std::pair<int64_t, int64_t>{0, 1}, {1 << 20, 1}}) {
    uoe::Dataset ds = full;
    uoe::word_vocab_limit(ds, vocab_size, min_count);
    EXPECT_EQ(ds.vocab.words, full.vocab.words);
    EXPECT_EQ(ds.train.to_vector(), full.train.to_vector());
    EXPECT_EQ(ds.val.to_vector(), full.val.to_vector());
  }
  std::map<int32_t, int64_t> counts;
  const std::vector<int32_t> full_train = full.train.to_vector(), full_val = full.val.to_vector();
  for (int32_t id : full_train) ++counts[id];
  for (const auto& [vocab_size, min_count] : {std::pair<int64_t, int64_t>{20, 1}, {0, 50}, {30, 50}}) {
    SCOPED_TRACE(std::to_string(vocab_size) + " / " + std::to_string(min_count));
    uoe::Dataset ds = full;
    uoe::word_vocab_limit(ds, vocab_size, min_count);
    const auto K = static_cast<int32_t>(ds.vocab.words.size());
    ASSERT_GT(K, 1);
    ASSERT_LT(K, full.vocab.size());
    if (vocab_size > 0) {
      EXPECT_LE(K, vocab_size);
    }
    EXPECT_TRUE(std::equal(ds.vocab.words.begin(), ds.vocab.words.end(), full.vocab.words.begin()));
    for (int32_t id = 1; id < K; ++id) EXPECT_GE(counts[id], min_count) << full.vocab.words[id];
    if (vocab_size == 0) {
      EXPECT_LT(counts[K], min_count) << "the first word dropped is frequent enough";
    }
    const std::vector<int32_t> train = ds.train.to_vector(), val = ds.val.to_vector();
    for (size_t i = 0; i < full_train.size(); ++i) ASSERT_EQ(train[i], full_train[i] < K ? full_train[i] : 0) << i;
    for (size_t i = 0; i < full_val.size(); ++i) ASSERT_EQ(val[i], full_val[i] < K ? full_val[i] : 0) << i;
  }
  uoe::Dataset ds = full;
  EXPECT_TRUE(contains(error_message([&] { uoe::word_vocab_limit(ds, 1, 1); }), "--vocab-size"));
  EXPECT_TRUE(contains(error_message([&] { uoe::word_vocab_limit(ds, 0, 0); }), "--min-count"));
}

TEST(WordTokenizer, EncodesLineByLine) {
  const uoe::Dataset full = uoe::data_from_text(corpus(), nullptr, 0.1, TokenizerKind::word, 8, "t");
  const auto tok = uoe::tokenizer_for(full.vocab);
  const std::string text = corpus().substr(0, 3000);
  const std::vector<int32_t> whole = tok->encode(text);
  EXPECT_EQ(whole, full.vocab.encode(text));
  EXPECT_EQ(uoe::tokenizer_encode_parallel(*tok, text, 3, 100), whole);
  EXPECT_EQ(tok->hash(), uoe::vocab_hash(full.vocab));
  const auto bytes = uoe::tokenizer_for(uoe::Vocab{});
  EXPECT_EQ(bytes->encode(kUnseen).size(), kUnseen.size());
  EXPECT_EQ(uoe::tokenizer_encode_parallel(*bytes, kUnseen, 2, 3), bytes->encode(kUnseen));
}

// ---------------------------------------------------------------------------------------------
// Vocabularies in checkpoints

TEST(TokenizerBlob, RoundTripsThroughAManifest) {
  const TempDir dir;
  const uoe::Dataset word = uoe::data_from_text(corpus(), nullptr, 0.1, TokenizerKind::word, 8, "t");
  for (const uoe::Vocab* v : {&word.vocab, &model600()}) {
    const std::string kind = uoe::tokenizer_kind_name(v->kind);
    SCOPED_TRACE(kind);
    uoe::Manifest m;
    m.config_ini = "tokenizer = " + kind + "\n";
    m.shard_files = {"shard_0.h5"};
    m.tokenizer = kind;
    m.tokenizer_blob = uoe::tokenizer_blob(*v);
    m.tokenizer_hash = uoe::vocab_hash(*v);
    const std::string path = dir / (kind + ".h5");
    uoe::manifest_write(path, m);
    const uoe::Manifest r = uoe::manifest_read(path);
    EXPECT_EQ(r.tokenizer, kind);
    EXPECT_EQ(r.tokenizer_hash, m.tokenizer_hash);
    ASSERT_EQ(r.tokenizer_blob, m.tokenizer_blob);
    const uoe::Vocab back = uoe::tokenizer_from_blob(r.tokenizer, r.tokenizer_blob, path);
    EXPECT_EQ(uoe::vocab_hash(back), uoe::vocab_hash(*v));
    EXPECT_EQ(back.size(), v->size());
    const std::vector<int32_t> ids = v->encode(kUnseen);
    EXPECT_EQ(back.encode(kUnseen), ids);
    EXPECT_EQ(back.decode(ids.data(), ids.size()), v->decode(ids.data(), ids.size()));
  }
  // Byte level (and checkpoints older than the tokenizer dataset): none stored, none read back.
  uoe::Manifest m;
  m.shard_files = {"shard_0.h5"};
  uoe::manifest_write(dir / "byte.h5", m);
  EXPECT_EQ(uoe::manifest_read(dir / "byte.h5").tokenizer, "");
  EXPECT_TRUE(contains(error_message([] { uoe::tokenizer_from_blob("bogus", "x", "ck"); }), "ck"));
  EXPECT_TRUE(contains(error_message([] { uoe::tokenizer_from_blob("sentencepiece", "garbage", "ck"); }), "ck"));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// End-of-document token (uoe-prepare --eod; runtime/data.hpp, data_from_spans)

// Spans of the corpus, cut inside lines and documents at arbitrary points, every other one
// followed by the end-of-document token.
std::vector<uoe::TextSpan> eod_spans(const std::string& text, std::vector<std::string>& expected_docs) {
  std::vector<uoe::TextSpan> spans;
  for (size_t b = 0, i = 0; b < text.size(); ++i) {
    const size_t e = std::min(text.size(), b + 997 + 131 * (i % 7));
    spans.push_back({std::string_view(text).substr(b, e - b), i % 2 == 1});
    b = e;
  }
  expected_docs.clear();
  std::string doc;
  for (const uoe::TextSpan& s : spans) {
    doc += s.text;
    if (s.eod) expected_docs.push_back(std::exchange(doc, ""));
  }
  if (!doc.empty()) expected_docs.push_back(doc);
  return spans;
}

TEST(EndOfDocument, EveryTokenizerPutsItAfterEachDocumentForAnyThreadCount) {
  const std::string text = corpus().substr(0, 30000);
  std::vector<std::string> docs;
  const std::vector<uoe::TextSpan> spans = eod_spans(text, docs);
  uoe::Vocab word;
  word.kind = TokenizerKind::word;
  const uoe::Vocab bytes;
  for (const uoe::Vocab* v : {&bytes, static_cast<const uoe::Vocab*>(&word), &model600()}) {
    const uoe::Vocab& vocab = *v;
    SCOPED_TRACE(uoe::tokenizer_kind_name(vocab.kind));
    uoe::threads_set(1);
    const uoe::Dataset one = uoe::data_from_spans(spans, spans, vocab, "t");
    ASSERT_GE(one.vocab.eod, 0);
    EXPECT_EQ(one.vocab.size(), vocab.kind == TokenizerKind::byte ? 257 : one.vocab.size());
    // The ids: each span's encoding with the result's vocabulary, then eod after a span that has
    // one; and as many eod ids as documents that end.
    std::vector<int32_t> want;
    for (const uoe::TextSpan& s : spans) {
      const std::vector<int32_t> ids = one.vocab.encode(s.text);
      want.insert(want.end(), ids.begin(), ids.end());
      if (s.eod) want.push_back(one.vocab.eod);
    }
    EXPECT_EQ(one.train.to_vector(), want);
    const std::vector<int32_t> got = one.train.to_vector();
    EXPECT_EQ(std::count(got.begin(), got.end(), one.vocab.eod),
              std::count_if(spans.begin(), spans.end(), [](const uoe::TextSpan& s) { return s.eod; }));
    for (int threads : {2, 3}) {
      uoe::threads_set(threads);
      const uoe::Dataset n = uoe::data_from_spans(spans, spans, vocab, "t");
      EXPECT_EQ(n.train.to_vector(), one.train.to_vector()) << threads << " threads";
      EXPECT_EQ(n.vocab.size(), one.vocab.size());
    }
    uoe::threads_set(1);
    // Decoded as a visible marker.
    const int32_t ids[] = {one.vocab.eod};
    EXPECT_TRUE(contains(one.vocab.decode(ids, 1), "<eod>"));
    // It travels with a checkpoint (byte level too, where V = 257 must come back).
    const uoe::Vocab back = uoe::tokenizer_from_blob(uoe::tokenizer_kind_name(one.vocab.kind),
                                                     uoe::tokenizer_blob(one.vocab), "ck");
    EXPECT_EQ(back.size(), one.vocab.size());
    EXPECT_EQ(uoe::vocab_hash(back), uoe::vocab_hash(one.vocab));
    EXPECT_TRUE(contains(back.decode(ids, 1), "<eod>"));
  }
  // Byte level with and without it: different vocabularies.
  uoe::Vocab eod;
  eod.eod = 256;
  EXPECT_NE(uoe::vocab_hash(eod), uoe::vocab_hash(uoe::Vocab{}));
}

TEST(EndOfDocument, WordLimitKeepsItLast) {
  const std::string text = corpus().substr(0, 30000);
  std::vector<std::string> docs;
  const std::vector<uoe::TextSpan> spans = eod_spans(text, docs);
  uoe::Vocab word;
  word.kind = TokenizerKind::word;
  uoe::Dataset ds = uoe::data_from_spans(spans, spans, word, "t");
  const int32_t eod = ds.vocab.eod;
  ASSERT_EQ(ds.vocab.words.back(), "<eod>");
  ASSERT_EQ(static_cast<size_t>(eod), ds.vocab.words.size() - 1);
  const std::vector<int32_t> before = ds.train.to_vector();
  uoe::word_vocab_limit(ds, 20, 1);
  ASSERT_EQ(ds.vocab.size(), 20);
  EXPECT_EQ(ds.vocab.words.back(), "<eod>");
  EXPECT_EQ(ds.vocab.eod, 19);
  const std::vector<int32_t> after = ds.train.to_vector();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) {
    if (before[i] == eod) EXPECT_EQ(after[i], 19) << i;
    else EXPECT_EQ(after[i], before[i] < 19 ? before[i] : 0) << i;
  }
  // The vocabulary file marks it: read back, "<eod>" is the end-of-document word.
  EXPECT_EQ(uoe::vocab_text_parse(uoe::vocab_file_text(ds.vocab), "v").eod, 19);
}
