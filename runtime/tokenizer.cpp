// Tokenizers (see tokenizer.hpp for the contract).
#include "runtime/tokenizer.hpp"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>

#include "runtime/error.hpp"
#include "runtime/threads.hpp"
#include "runtime/token_file.hpp"

namespace uoe {

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  encode_lines(text, /*last=*/true, out);
  return out;
}

uint64_t tokenizer_bytes_hash(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a offset basis
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;  // FNV prime
  }
  return h;
}

const char* tokenizer_kind_name(TokenizerKind kind) {
  switch (kind) {
    case TokenizerKind::byte: return "byte";
    case TokenizerKind::word: return "word";
    case TokenizerKind::sentencepiece: return "sentencepiece";
  }
  return "?";
}

TokenizerKind tokenizer_kind_parse(const std::string& name, const char* option) {
  if (name == "byte") return TokenizerKind::byte;
  if (name == "word") return TokenizerKind::word;
  if (name == "sentencepiece") return TokenizerKind::sentencepiece;
  fail(option, " must be 'byte', 'word' or 'sentencepiece', got '", name, "'");
}

namespace {

// The prefix of `text` encode_lines consumes: through its last "\n", or all of it when `last`.
size_t lines_prefix(std::string_view text, bool last) {
  if (last) return text.size();
  const size_t nl = text.rfind('\n');
  return nl == std::string_view::npos ? 0 : nl + 1;
}

// Byte and word level: the Vocab's own encode and decode (runtime/data.hpp), which never join
// tokens across a "\n".
class VocabTokenizer final : public Tokenizer {
 public:
  explicit VocabTokenizer(Vocab vocab) : vocab_(std::move(vocab)), hash_(vocab_hash(vocab_)) {}
  TokenizerKind kind() const override { return vocab_.kind; }
  int vocab_size() const override { return vocab_.size(); }
  uint64_t hash() const override { return hash_; }
  size_t encode_lines(std::string_view text, bool last, std::vector<int32_t>& out) const override {
    const size_t n = lines_prefix(text, last);
    const std::vector<int32_t> ids = vocab_.encode(text.substr(0, n));
    out.insert(out.end(), ids.begin(), ids.end());
    return n;
  }
  std::string decode(const int32_t* ids, size_t n) const override { return vocab_.decode(ids, n); }

 private:
  Vocab vocab_;
  uint64_t hash_;
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& model, const std::string& source) : hash_(tokenizer_bytes_hash(model)) {
    const auto status = sp_.LoadFromSerializedProto(model);
    if (!status.ok())
      fail("SentencePiece model ", source, " cannot be loaded (", status.ToString(),
           "): not a SentencePiece .model file, or a damaged one");
    size_ = sp_.GetPieceSize();
    if (size_ < 1) fail("SentencePiece model ", source, " has no pieces");
    const int nl = sp_.PieceToId("\n");
    const int byte_nl = sp_.PieceToId("<0x0A>");
    if (!sp_.IsUnknown(nl) && sp_.IdToPiece(nl) == "\n") newline_ = nl;
    else if (!sp_.IsUnknown(byte_nl) && sp_.IsByte(byte_nl)) newline_ = byte_nl;
    const int eos = sp_.eos_id();
    if (eos >= 0 && eos < size_ && sp_.IsControl(eos)) eos_ = eos;
  }
  int32_t reserved_eod() const override { return eos_; }
  TokenizerKind kind() const override { return TokenizerKind::sentencepiece; }
  int vocab_size() const override { return size_; }
  uint64_t hash() const override { return hash_; }

  size_t encode_lines(std::string_view text, bool last, std::vector<int32_t>& out) const override {
    const size_t n = lines_prefix(text, last);
    std::vector<int> ids;
    size_t i = 0;
    while (i < n) {
      size_t end = text.find('\n', i);
      if (end == std::string_view::npos || end > n) end = n;
      if (end > i) {
        const auto status = sp_.Encode(text.substr(i, end - i), &ids);
        if (!status.ok()) fail("SentencePiece cannot encode a line (", status.ToString(), ")");
        out.insert(out.end(), ids.begin(), ids.end());
      }
      if (end < n && newline_ >= 0) out.push_back(newline_);
      i = end + 1;
    }
    return n;
  }

  std::string decode(const int32_t* ids, size_t n) const override {
    std::string out, piece;
    std::vector<int> line;
    const auto flush = [&] {
      if (line.empty()) return;
      if (sp_.Decode(line, &piece).ok()) out += piece;
      else out += "<?>";
      line.clear();
    };
    for (size_t i = 0; i < n; ++i) {
      if (ids[i] == newline_) {
        flush();
        out += '\n';
      } else if (ids[i] == eos_ && eos_ >= 0) {
        flush();
        out += kEodWord;
      } else if (ids[i] < 0 || ids[i] >= size_) {
        flush();
        out += "<?>";
      } else {
        line.push_back(ids[i]);
      }
    }
    flush();
    return out;
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  uint64_t hash_;
  int size_ = 0;
  int newline_ = -1;  // the id a "\n" between lines becomes; -1: none (line ends are dropped)
  int eos_ = -1;      // </s>: never produced by encode; the end-of-document token of --eod data
};

// Feeds sentencepiece_sample_lines to the trainer.
class LineIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(std::vector<std::string_view> lines) : lines_(std::move(lines)) { load(); }
  bool done() const override { return i_ >= lines_.size(); }
  void Next() override {
    ++i_;
    load();
  }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }  // OK

 private:
  void load() {
    if (i_ < lines_.size()) value_.assign(lines_[i_]);
  }
  std::vector<std::string_view> lines_;
  size_t i_ = 0;
  std::string value_;
};

}  // namespace

std::shared_ptr<const Tokenizer> tokenizer_for(const Vocab& vocab) {
  if (vocab.kind == TokenizerKind::sentencepiece) {
    UOE_ASSERT(vocab.sp != nullptr, "a SentencePiece Vocab without its model");
    return vocab.sp;
  }
  return std::make_shared<VocabTokenizer>(vocab);
}

Vocab sentencepiece_vocab(std::string model_bytes, const std::string& source) {
  Vocab v;
  v.kind = TokenizerKind::sentencepiece;
  v.sp = std::make_shared<SentencePieceTokenizer>(model_bytes, source);
  v.model = std::move(model_bytes);
  return v;
}

Vocab sentencepiece_vocab_read(const std::string& path, const char* option) {
  const MappedFile map(path, option);
  if (map.size() == 0) fail(option, " file '", path, "' is empty; expected a SentencePiece .model file");
  return sentencepiece_vocab(std::string(reinterpret_cast<const char*>(map.data()), map.size()), "'" + path + "'");
}

namespace {

// The stretches of sentencepiece_sample_lines, [begin, end) byte ranges of whole lines, of a text of
// `size` bytes reached through rfind (the last "\n" at or before a position) and find (the first at
// or after one), each returning npos for none.
std::vector<std::pair<size_t, size_t>> sample_stretches(size_t size, const std::function<size_t(size_t)>& rfind,
                                                        const std::function<size_t(size_t)>& find) {
  std::vector<std::pair<size_t, size_t>> stretches;
  if (size <= kSentencePieceSampleBytes) {
    stretches.emplace_back(0, size);
    return stretches;
  }
  const size_t len = kSentencePieceSampleBytes / kSentencePieceSamplePieces;
  for (size_t i = 0; i < kSentencePieceSamplePieces; ++i) {
    size_t begin = static_cast<size_t>(static_cast<unsigned __int128>(i) * size / kSentencePieceSamplePieces);
    const size_t line_start = begin == 0 ? std::string_view::npos : rfind(begin - 1);
    begin = line_start == std::string_view::npos ? 0 : line_start + 1;
    if (!stretches.empty()) begin = std::max(begin, stretches.back().second);  // no line twice
    size_t end = std::min(size, begin + len);
    const size_t nl = end == 0 ? std::string_view::npos : find(end - 1);
    end = nl == std::string_view::npos ? size : nl + 1;
    if (begin < end) stretches.emplace_back(begin, end);
  }
  return stretches;
}

// The non-empty lines of text[begin, end).
void append_lines(std::string_view text, size_t begin, size_t end, std::vector<std::string_view>& lines) {
  size_t i = begin;
  while (i < end) {
    size_t e = text.find('\n', i);
    if (e == std::string_view::npos || e > end) e = end;
    if (e > i) lines.push_back(text.substr(i, e - i));
    i = e + 1;
  }
}

}  // namespace

std::vector<std::string_view> sentencepiece_sample_lines(std::string_view text) {
  const auto stretches = sample_stretches(
      text.size(), [text](size_t pos) { return text.rfind('\n', pos); },
      [text](size_t pos) { return text.find('\n', pos); });
  std::vector<std::string_view> lines;
  for (const auto& [begin, end] : stretches) append_lines(text, begin, end, lines);
  return lines;
}

TextSample sentencepiece_sample(size_t size, const std::function<size_t(size_t)>& rfind_newline,
                                const std::function<size_t(size_t)>& find_newline,
                                const std::function<void(size_t, size_t, std::string&)>& read) {
  const auto stretches = sample_stretches(size, rfind_newline, find_newline);
  TextSample sample;
  size_t bytes = 0;
  for (const auto& [begin, end] : stretches) bytes += end - begin;
  sample.text.reserve(bytes);
  std::string part;
  for (const auto& [begin, end] : stretches) {
    read(begin, end - begin, part);
    sample.text += part;
  }
  size_t at = 0;
  for (const auto& [begin, end] : stretches) {
    append_lines(sample.text, at, at + (end - begin), sample.lines);
    at += end - begin;
  }
  return sample;
}

Vocab sentencepiece_train(std::string_view text, const SentencePieceTraining& how, const std::string& source) {
  return sentencepiece_train_lines(sentencepiece_sample_lines(text), how, source);
}

Vocab sentencepiece_train_lines(std::vector<std::string_view> lines, const SentencePieceTraining& how,
                                const std::string& source) {
  if (how.model_type != "bpe" && how.model_type != "unigram")
    fail("--model-type must be 'bpe' or 'unigram', got '", how.model_type, "'");
  if (how.vocab_size < 1) fail("--vocab-size must be given (at least 1) to train a SentencePiece model, got ", how.vocab_size);
  if (lines.empty()) fail("SentencePiece training on ", source, ": the text holds no non-empty line");
  const int threads = how.threads > 0 ? how.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", how.model_type},
      {"vocab_size", std::to_string(how.vocab_size)},
      {"num_threads", std::to_string(threads)},
      {"user_defined_symbols", "\n"},  // line ends survive (tokenizer.hpp, SentencePiece)
      {"byte_fallback", "true"},       // any UTF-8 text encodes without <unk>
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"minloglevel", "1"},            // the trainer's progress lines: warnings and errors only
  };
  LineIterator it(std::move(lines));
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &it, &model);
  if (!status.ok())
    fail("SentencePiece training on ", source, " (--vocab-size ", how.vocab_size, ", --model-type ", how.model_type,
         ") failed: ", status.ToString());
  return sentencepiece_vocab(std::move(model), "trained on " + source);
}

std::vector<std::string_view> text_line_pieces(std::string_view text, size_t parts, size_t piece_bytes) {
  const size_t step = std::max<size_t>(1, std::min(piece_bytes, (text.size() + std::max<size_t>(1, parts) - 1) /
                                                                    std::max<size_t>(1, parts)));
  std::vector<std::string_view> pieces;
  for (size_t i = 0; i < text.size();) {
    const size_t cut = std::min(text.size(), i + step);
    const size_t nl = cut == text.size() ? std::string_view::npos : text.find('\n', cut - 1);
    const size_t end = nl == std::string_view::npos ? text.size() : nl + 1;
    pieces.push_back(text.substr(i, end - i));
    i = end;
  }
  return pieces;
}

std::vector<int32_t> tokenizer_encode_parallel(const Tokenizer& tokenizer, std::string_view text, int threads,
                                               size_t piece_bytes, const TextProgress& progress) {
  const size_t parts = threads > 0 ? static_cast<size_t>(threads) : static_cast<size_t>(threads_count());
  const std::vector<std::string_view> pieces = text_line_pieces(text, parts, piece_bytes);
  std::vector<std::vector<int32_t>> ids(pieces.size());
  parallel_ranges(static_cast<int64_t>(pieces.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      tokenizer.encode_lines(pieces[static_cast<size_t>(p)], /*last=*/true, ids[static_cast<size_t>(p)]);
      if (progress) progress(pieces[static_cast<size_t>(p)].size());
    }
  });
  size_t total = 0;
  for (const auto& v : ids) total += v.size();
  std::vector<int32_t> out;
  out.reserve(total);
  for (auto& v : ids) {
    out.insert(out.end(), v.begin(), v.end());
    std::vector<int32_t>().swap(v);
  }
  return out;
}

void word_vocab_limit(Dataset& ds, int64_t vocab_size, int64_t min_count) {
  if (ds.vocab.kind != TokenizerKind::word) fail("--vocab-size / --min-count of the word tokenizer: not a word vocabulary");
  if (vocab_size < 0 || vocab_size == 1)
    fail("--vocab-size must be 0 (every word) or at least 2 (<unk> and one word), got ", vocab_size);
  if (min_count < 1) fail("--min-count must be at least 1, got ", min_count);
  // With an end-of-document token ("<eod>", the last word) the limits apply to the other words and
  // "<eod>" stays, again the last word.
  const int32_t eod = ds.vocab.eod;
  const size_t V = ds.vocab.words.size() - (eod >= 0 ? 1 : 0);
  if (eod >= 0) UOE_ASSERT(static_cast<size_t>(eod) == V, "<eod> is not the last word");
  std::vector<int64_t> counts(V + 1, 0);
  // uoe-prepare's streams are in memory (to_vector copies them once: the words are remapped below).
  std::vector<int32_t> train = ds.train.to_vector(), val = ds.val.to_vector();
  for (int32_t id : train) ++counts[static_cast<size_t>(id)];
  // Ids count down by training frequency (data_from_text), so the words kept are ids [0, keep).
  size_t keep = 1;
  while (keep < V && counts[keep] >= min_count) ++keep;
  if (vocab_size > 0) keep = std::min(keep, static_cast<size_t>(vocab_size) - (eod >= 0 ? 1 : 0));  // V in all
  for (size_t id = 2; id < keep; ++id)
    UOE_ASSERT(counts[id] <= counts[id - 1], "word vocabulary not in descending count order at id ", id);
  if (keep == V) return;
  ds.vocab.words.resize(keep);
  if (eod >= 0) {
    ds.vocab.words.emplace_back(kEodWord);
    ds.vocab.eod = static_cast<int32_t>(keep);
  }
  const auto remap = [keep, eod](std::vector<int32_t>& ids) {
    for (int32_t& id : ids)
      if (eod >= 0 && id == eod) id = static_cast<int32_t>(keep);
      else if (static_cast<size_t>(id) >= keep) id = 0;
  };
  remap(train);
  remap(val);
  ds.train = std::move(train);
  ds.val = std::move(val);
}

std::string tokenizer_blob(const Vocab& vocab) {
  switch (vocab.kind) {
    case TokenizerKind::byte: return vocab.eod < 0 ? "" : kEodWord;
    case TokenizerKind::word: return vocab_file_text(vocab);
    case TokenizerKind::sentencepiece: return vocab.model;
  }
  return "";
}

Vocab tokenizer_from_blob(const std::string& kind, const std::string& blob, const std::string& source) {
  const TokenizerKind k = tokenizer_kind_parse(kind, ("the tokenizer stored in " + source).c_str());
  if (k == TokenizerKind::byte) {
    Vocab v;
    if (blob == kEodWord) v.eod = 256;
    else if (!blob.empty()) fail("the byte-level tokenizer stored in ", source, " is damaged (unknown blob)");
    return v;
  }
  if (k == TokenizerKind::word) return vocab_text_parse(blob, "the word vocabulary stored in " + source);
  return sentencepiece_vocab(blob, "stored in " + source);
}

}  // namespace uoe
