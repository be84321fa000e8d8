// Data loading, tokenization, splitting and windowing (see data.hpp for the contract).
//
// Built-in corpus grammar. All lowercase ASCII; the only bytes used are a-z, space, newline and
// ". , :". Every choice is a draw from the counter-based RNG with a fixed seed (kCorpusSeed, stream
// "data.builtin_corpus", counter = draw index), so the text is the same in every run and build.
//
//   corpus     := block ("\n" block)* ; blocks until the text reaches kCorpusBytes, each block
//                 followed by a blank line
//   block      := prose (45%) | counting (15%) | sums (15%) | record (25%)
//   prose      := sentence (" " sentence){2..5} "\n"
//   sentence   := np_subj[n] verb[n] np_obj [place] [", " conj " " clause] "."        (75%)
//               | np_subj[n] be[n] adjective [place] "."                              (25%)
//     clause   := np_subj[n'] verb[n'] np_obj           (its own number n')
//     np_subj[n] := det[n] [adjective] animate[n]       (adjective 50%)
//     np_obj     := det[m] [adjective] (thing[m] 70% | animate[m] 30%), m drawn afresh
//     det[sg]  := "the" | "a" | "this" | "every"  — "a" becomes "an" before a vowel
//     det[pl]  := "the" | "some" | "these" | number two..twelve
//     verb[sg] := third-person "-s" form ("sees", "carries"), verb[pl] := base form ("see")
//     be[sg]   := "is", be[pl] := "are"
//     n is singular or plural with probability 1/2 each
//   counting   := line{1..3}, line := k " " k+1 " " ... (4..10 numbers, k in 0..89) "\n"
//   sums       := sum{2..4}, sum := a " plus " b " is " a+b ".\n"  |  a " minus " b " is " a-b ".\n"
//                 with a, b in 0..12 (minus only when a >= b)
//   record     := "name: " name "\nage: " 18..89 "\ncity: " city "\npet: " pet "\nsound: "
//                 sound(pet) "\ncolour: " colour "\n"   — the sound is a function of the pet
//   numbers    := spelled out: "zero" .. "nineteen", "twenty", "twenty one", .. "ninety nine"
//
// So a small model can learn: agreement (is/are, sees/see, a/an), counting, small sums, record
// layout and the pet -> sound dependency.

#include "runtime/data.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "runtime/error.hpp"
#include "runtime/rng.hpp"
#include "runtime/threads.hpp"
#include "runtime/token_file.hpp"
#include "runtime/tokenizer.hpp"

namespace uoe {

// ---------------------------------------------------------------------------------------------
// Vocab

int Vocab::size() const {
  if (kind == TokenizerKind::sentencepiece) return sp->vocab_size();
  return kind == TokenizerKind::byte ? (eod < 0 ? 256 : 257) : static_cast<int>(words.size());
}

namespace {

// Word-level decode: no space next to a newline, after an opening bracket, or before closing
// punctuation, so decoded samples read like the text they came from.
bool space_between(std::string_view prev, std::string_view next) {
  if (prev == "\n" || next == "\n") return false;
  if (prev.size() == 1 && std::strchr("([{", prev[0]) != nullptr) return false;
  if (next.size() == 1 && std::strchr(".,;:!?)]}", next[0]) != nullptr) return false;
  return true;
}

}  // namespace

std::string Vocab::decode(const int32_t* ids, size_t n) const {
  if (kind == TokenizerKind::sentencepiece) return sp->decode(ids, n);
  std::string out;
  if (kind == TokenizerKind::byte) {
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (ids[i] >= 0 && ids[i] < 256)
        out += static_cast<char>(static_cast<unsigned char>(ids[i]));
      else if (eod >= 0 && ids[i] == eod)
        out += kEodWord;
      else
        out += "<?>";
    }
    return out;
  }
  std::string_view prev;
  for (size_t i = 0; i < n; ++i) {
    const bool known = ids[i] >= 0 && static_cast<size_t>(ids[i]) < words.size();
    const std::string_view word = known ? std::string_view(words[ids[i]]) : std::string_view("<?>");
    if (i > 0 && space_between(prev, word)) out += ' ';
    out += word;
    prev = word;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tokenization and splitting

namespace {

// Letters, digits and apostrophes form words; bytes >= 0x80 too, so UTF-8 letters (and any other
// non-ASCII sequence) stay inside their word instead of being split into meaningless bytes.
bool is_word_byte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '\'' ||
         c >= 0x80;
}

// Printable ASCII that is neither a word byte nor a space: each is a token of its own.
bool is_punct_byte(unsigned char c) { return c > 0x20 && c < 0x7f && !is_word_byte(c); }

// Word tokens as views into `text` (views, not strings: a large file would otherwise cost one
// heap string per token). "\n" is a token; other whitespace and control bytes separate tokens.
std::vector<std::string_view> word_tokenize(std::string_view text) {
  std::vector<std::string_view> out;
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (is_word_byte(c)) {
      size_t j = i + 1;
      while (j < n && is_word_byte(static_cast<unsigned char>(text[j]))) ++j;
      out.push_back(text.substr(i, j - i));
      i = j;
    } else {
      if (c == '\n' || is_punct_byte(c)) out.push_back(text.substr(i, 1));
      ++i;
    }
  }
  return out;
}

// word_tokenize on the compute threads: the text cut after "\n"s (text_line_pieces; a word token
// never spans a "\n", which is a token of its own), the pieces' tokens concatenated in order, so the
// tokens are word_tokenize(text)'s for any thread count.
std::vector<std::string_view> word_tokenize_parallel(std::string_view text, const TextProgress& progress) {
  const std::vector<std::string_view> pieces = text_line_pieces(text, static_cast<size_t>(threads_count()));
  std::vector<std::vector<std::string_view>> parts(pieces.size());
  parallel_ranges(static_cast<int64_t>(pieces.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      parts[static_cast<size_t>(p)] = word_tokenize(pieces[static_cast<size_t>(p)]);
      if (progress) progress(pieces[static_cast<size_t>(p)].size());
    }
  });
  if (parts.size() == 1) return std::move(parts[0]);
  size_t total = 0;
  for (const auto& v : parts) total += v.size();
  std::vector<std::string_view> out;
  out.reserve(total);
  for (auto& v : parts) {
    out.insert(out.end(), v.begin(), v.end());
    std::vector<std::string_view>().swap(v);
  }
  return out;
}

using WordIds = std::unordered_map<std::string_view, int32_t>;

// Vocabulary of `tokens`: "<unk>" = 0, then words by descending count, ties by byte-wise order
// (std::string_view compares through char_traits<char>, i.e. like memcmp on unsigned bytes).
// `ids` receives word -> id; its keys view the same memory as `tokens`.
Vocab word_vocab_build(const std::vector<std::string_view>& tokens, size_t n_train, WordIds* ids) {
  // Counted in parts on the compute threads, then summed: the counts, and so the order below, are
  // the same for any thread count.
  const size_t parts = std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(threads_count()), n_train >> 16));
  std::vector<std::unordered_map<std::string_view, int64_t>> part_counts(parts);
  parallel_ranges(static_cast<int64_t>(parts), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (size_t i = n_train * static_cast<size_t>(p) / parts; i < n_train * static_cast<size_t>(p + 1) / parts; ++i)
        if (tokens[i].data() != kEodWord) ++part_counts[static_cast<size_t>(p)][tokens[i]];  // data_from_spans
  });
  std::unordered_map<std::string_view, int64_t> counts = std::move(part_counts[0]);
  for (size_t p = 1; p < parts; ++p) {
    for (const auto& [word, count] : part_counts[p]) counts[word] += count;
    std::unordered_map<std::string_view, int64_t>().swap(part_counts[p]);
  }
  std::vector<std::pair<std::string_view, int64_t>> sorted(counts.begin(), counts.end());
  Vocab vocab = word_vocab_from_counts(sorted);
  ids->clear();
  ids->reserve(sorted.size());
  for (size_t i = 0; i < sorted.size(); ++i) (*ids)[sorted[i].first] = static_cast<int32_t>(i + 1);
  return vocab;
}

std::vector<int32_t> word_ids(const std::vector<std::string_view>& tokens, size_t begin, size_t end,
                              const WordIds& ids) {
  std::vector<int32_t> out(end - begin);
  parallel_ranges(static_cast<int64_t>(end - begin), int64_t{1} << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const auto it = ids.find(tokens[begin + static_cast<size_t>(i)]);
      out[static_cast<size_t>(i)] = it == ids.end() ? 0 : it->second;
    }
  });
  return out;
}

std::vector<int32_t> byte_ids(std::string_view text, const TextProgress& progress = nullptr) {
  std::vector<int32_t> out(text.size());
  parallel_ranges(static_cast<int64_t>(text.size()), int64_t{1} << 20, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[static_cast<size_t>(i)] = static_cast<unsigned char>(text[static_cast<size_t>(i)]);
    if (progress) progress(static_cast<size_t>(e - b));
  });
  return out;
}

// A split must hold one window: T inputs plus the token after the last one.
void check_split_length(size_t n_tokens, int seq_len, const std::string& what) {
  if (n_tokens < static_cast<size_t>(seq_len) + 1)
    fail(what, " has ", n_tokens, " tokens; --seq-len ", seq_len, " needs at least ",
         static_cast<int64_t>(seq_len) + 1, " (one window of inputs plus the next token)");
}

// The shared body of data_load and data_from_text. train_label / val_label name the text(s) in
// error messages (a path, or the source description).
Dataset dataset_build(const std::string& train_text, const std::string* val_text, double val_fraction,
                      TokenizerKind kind, int seq_len, const std::string& source,
                      const std::string& train_label, const std::string& val_label,
                      const TextProgress& progress = nullptr) {
  if (seq_len < 1) fail("--seq-len must be at least 1, got ", seq_len);
  if (val_text == nullptr && !(val_fraction > 0.0 && val_fraction < 1.0))
    fail("--val-fraction must be in (0, 1) when no --val-data is given, got ", val_fraction);

  Dataset ds;
  ds.source = source;
  ds.vocab.kind = kind;
  std::string train_what = "training data " + train_label;
  std::string val_what = "validation data " + val_label;

  if (val_text == nullptr) {
    // Split the token stream by count: the last round(n * f) tokens are validation.
    std::ostringstream frac;
    frac << val_fraction;
    train_what = "training split of " + train_label + " (all but the last --val-fraction " +
                 frac.str() + ")";
    val_what = "validation split of " + train_label + " (the last --val-fraction " + frac.str() + ")";
    if (kind == TokenizerKind::byte) {
      const size_t n = train_text.size();
      const auto n_val = static_cast<size_t>(std::llround(static_cast<double>(n) * val_fraction));
      const std::string_view all(train_text);
      ds.train = byte_ids(all.substr(0, n - n_val), progress);
      ds.val = byte_ids(all.substr(n - n_val), progress);
      ds.train_bytes = static_cast<double>(n - n_val);
      ds.val_bytes = static_cast<double>(n_val);
    } else {
      const std::vector<std::string_view> tokens = word_tokenize_parallel(train_text, progress);
      const size_t n = tokens.size();
      const auto n_val = static_cast<size_t>(std::llround(static_cast<double>(n) * val_fraction));
      WordIds ids;
      ds.vocab = word_vocab_build(tokens, n - n_val, &ids);
      ds.train = word_ids(tokens, 0, n - n_val, ids);
      ds.val = word_ids(tokens, n - n_val, n, ids);
      // The training split's bytes end where its last token ends; the rest is validation's.
      const size_t cut = n_val == n ? 0
                         : static_cast<size_t>(tokens[n - n_val - 1].data() + tokens[n - n_val - 1].size() -
                                               train_text.data());
      ds.train_bytes = static_cast<double>(cut);
      ds.val_bytes = static_cast<double>(train_text.size() - cut);
    }
  } else if (kind == TokenizerKind::byte) {
    ds.train = byte_ids(train_text, progress);
    ds.val = byte_ids(*val_text, progress);
    ds.train_bytes = static_cast<double>(train_text.size());
    ds.val_bytes = static_cast<double>(val_text->size());
  } else {
    const std::vector<std::string_view> train_tokens = word_tokenize_parallel(train_text, progress);
    const std::vector<std::string_view> val_tokens = word_tokenize_parallel(*val_text, progress);
    WordIds ids;
    ds.vocab = word_vocab_build(train_tokens, train_tokens.size(), &ids);
    ds.train = word_ids(train_tokens, 0, train_tokens.size(), ids);
    ds.val = word_ids(val_tokens, 0, val_tokens.size(), ids);
    ds.train_bytes = static_cast<double>(train_text.size());
    ds.val_bytes = static_cast<double>(val_text->size());
  }

  check_split_length(ds.train.size(), seq_len, train_what);
  check_split_length(ds.val.size(), seq_len, val_what);
  return ds;
}

TokenizerKind tokenizer_parse(const std::string& name) { return tokenizer_kind_parse(name, "--tokenizer"); }

// The whole file, in binary mode. `option` (e.g. "--data") names where the path came from.
std::string text_file_read(const std::string& path, const char* option) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found) fail(option, " file '", path, "' does not exist");
  if (st.type() == fs::file_type::directory)
    fail(option, " '", path, "' is a directory; expected a text file");

  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;  // std::ifstream reports nothing itself; open(2) left the reason here
    fail(option, " file '", path, "' cannot be opened for reading",
         ec ? " (" + ec.message() + ")" : err != 0 ? std::string(" (") + std::strerror(err) + ")" : "");
  }
  std::string text;
  if (st.type() == fs::file_type::regular) {
    const auto size = fs::file_size(path, ec);
    if (!ec) text.reserve(size);
  }
  // Read in chunks rather than by size so pipes and special files work too.
  std::array<char, 1 << 16> buf;
  while (in.read(buf.data(), buf.size()) || in.gcount() > 0)
    text.append(buf.data(), static_cast<size_t>(in.gcount()));
  if (in.bad()) fail(option, " file '", path, "': read error after ", text.size(), " bytes");
  if (text.empty()) fail(option, " file '", path, "' is empty");
  // Binary: text never holds a NUL byte, while executables, archives, token files under another
  // name and UTF-16 text almost always do (docs: README, Data).
  if (const void* nul = std::memchr(text.data(), '\0', text.size()); nul != nullptr)
    fail(option, " file '", path, "' is binary, not text: a NUL byte at offset ",
         static_cast<const char*>(nul) - text.data(), " (uoe-prepare and uoe-train read UTF-8 or other ASCII-compatible "
         "text; a prepared token file is named *.tok or *.idx)");
  return text;
}

}  // namespace

bool word_byte(unsigned char c) { return is_word_byte(c); }

std::vector<std::string_view> word_tokens(std::string_view text) { return word_tokenize(text); }

Vocab word_vocab_from_counts(std::vector<std::pair<std::string_view, int64_t>>& counts) {
  std::sort(counts.begin(), counts.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  if (counts.size() >= static_cast<size_t>(INT32_MAX))
    fail("word vocabulary has ", counts.size(), " distinct words; at most ", INT32_MAX - 1,
         " fit in 32-bit token ids");
  Vocab vocab;
  vocab.kind = TokenizerKind::word;
  vocab.words.reserve(counts.size() + 1);
  vocab.words.emplace_back("<unk>");
  for (const auto& [word, count] : counts) vocab.words.emplace_back(word);
  return vocab;
}

std::vector<int32_t> Vocab::encode(std::string_view text) const {
  if (kind == TokenizerKind::sentencepiece) return sp->encode(text);
  if (kind == TokenizerKind::byte) return byte_ids(text);
  WordIds ids;
  ids.reserve(words.size());
  for (size_t i = 1; i < words.size(); ++i) ids.emplace(words[i], static_cast<int32_t>(i));
  const std::vector<std::string_view> tokens = word_tokenize(text);
  return word_ids(tokens, 0, tokens.size(), ids);
}

Dataset data_from_text(const std::string& train_text, const std::string* val_text,
                       double val_fraction, TokenizerKind kind, int seq_len,
                       const std::string& source, const TextProgress& progress) {
  return dataset_build(train_text, val_text, val_fraction, kind, seq_len, source, source, source, progress);
}

namespace {

// Spans cut into pieces of at most `step` bytes at line ends (text_line_pieces), each piece marked
// with whether the end-of-document token follows it (the last piece of a span that has one), and
// the pieces grouped into runs of about `step` bytes: one unit of work for the compute threads.
struct SpanPiece {
  std::string_view text;
  bool eod = false;
};

template <class T, class Encode>
std::vector<T> spans_encode(const std::vector<TextSpan>& spans, const Encode& encode, const TextProgress& progress) {
  size_t total = 0;
  for (const TextSpan& s : spans) total += s.text.size();
  const size_t parts = static_cast<size_t>(threads_count());
  const size_t step = std::max<size_t>(1, std::min(kTextPieceBytes, (total + parts - 1) / parts));
  std::vector<SpanPiece> pieces;
  for (const TextSpan& s : spans) {
    const std::vector<std::string_view> cut = text_line_pieces(s.text, 1, step);
    for (std::string_view t : cut) pieces.push_back({t, false});
    if (cut.empty()) pieces.push_back({std::string_view(), false});
    pieces.back().eod = s.eod;
  }
  std::vector<std::pair<size_t, size_t>> groups;  // [begin, end) of pieces
  for (size_t i = 0; i < pieces.size();) {
    size_t j = i, bytes = 0;
    while (j < pieces.size() && (j == i || bytes + pieces[j].text.size() <= step)) bytes += pieces[j++].text.size();
    groups.emplace_back(i, j);
    i = j;
  }
  std::vector<std::vector<T>> out(groups.size());
  parallel_ranges(static_cast<int64_t>(groups.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      size_t bytes = 0;
      for (size_t p = groups[static_cast<size_t>(g)].first; p < groups[static_cast<size_t>(g)].second; ++p) {
        encode(pieces[p], out[static_cast<size_t>(g)]);
        bytes += pieces[p].text.size();
      }
      if (progress) progress(bytes);
    }
  });
  size_t n = 0;
  for (const auto& v : out) n += v.size();
  std::vector<T> all;
  all.reserve(n);
  for (auto& v : out) {
    all.insert(all.end(), v.begin(), v.end());
    std::vector<T>().swap(v);
  }
  return all;
}

}  // namespace

Dataset data_from_spans(const std::vector<TextSpan>& train, const std::vector<TextSpan>& val, const Vocab& vocab,
                        const std::string& source, const TextProgress& progress) {
  Dataset ds;
  ds.source = source;
  ds.vocab = vocab;
  if (vocab.kind == TokenizerKind::byte) {
    ds.vocab.eod = 256;
    const auto encode = [](const SpanPiece& p, std::vector<int32_t>& out) {
      for (char c : p.text) out.push_back(static_cast<unsigned char>(c));
      if (p.eod) out.push_back(256);
    };
    ds.train = spans_encode<int32_t>(train, encode, progress);
    ds.val = spans_encode<int32_t>(val, encode, progress);
  } else if (vocab.kind == TokenizerKind::sentencepiece) {
    const Tokenizer& tok = *vocab.sp;
    const int32_t eod = tok.reserved_eod();
    if (eod < 0) fail("--eod: the SentencePiece model has no </s> piece to serve as the end-of-document token");
    ds.vocab.eod = eod;
    const auto encode = [&tok, eod](const SpanPiece& p, std::vector<int32_t>& out) {
      tok.encode_lines(p.text, /*last=*/true, out);
      if (p.eod) out.push_back(eod);
    };
    ds.train = spans_encode<int32_t>(train, encode, progress);
    ds.val = spans_encode<int32_t>(val, encode, progress);
  } else {
    // The end-of-document token is the view kEodWord itself (word_vocab_build does not count it),
    // then the last word of the vocabulary.
    const std::string_view eod_view(kEodWord);
    const auto encode = [eod_view](const SpanPiece& p, std::vector<std::string_view>& out) {
      const std::vector<std::string_view> words = word_tokenize(p.text);
      out.insert(out.end(), words.begin(), words.end());
      if (p.eod) out.push_back(eod_view);
    };
    const std::vector<std::string_view> train_tokens = spans_encode<std::string_view>(train, encode, progress);
    const std::vector<std::string_view> val_tokens = spans_encode<std::string_view>(val, encode, progress);
    WordIds ids;
    ds.vocab = word_vocab_build(train_tokens, train_tokens.size(), &ids);
    ds.vocab.eod = static_cast<int32_t>(ds.vocab.words.size());
    ids[eod_view] = ds.vocab.eod;
    ds.vocab.words.emplace_back(kEodWord);
    ds.train = word_ids(train_tokens, 0, train_tokens.size(), ids);
    ds.val = word_ids(val_tokens, 0, val_tokens.size(), ids);
  }
  return ds;
}

namespace {

const char* tokenizer_name(TokenizerKind kind) { return tokenizer_kind_name(kind); }

// A sentencepiece token file's model: model_path_for(path), its hash checked against the header.
Vocab sentencepiece_vocab_for(const std::string& path, const TokenFileHeader& h) {
  const std::string model_path = model_path_for(path);
  std::error_code ec;
  if (!std::filesystem::exists(model_path, ec))
    fail("--data token file '", path, "' is sentencepiece-level and needs its model file '", model_path,
         "' (uoe-prepare writes PREFIX.model next to PREFIX.train.tok and PREFIX.val.tok)");
  Vocab vocab = sentencepiece_vocab_read(model_path, "SentencePiece model");
  if (vocab_hash(vocab) != h.vocab_hash || static_cast<uint32_t>(vocab.size()) != h.vocab_size)
    fail("SentencePiece model '", model_path, "' (", vocab.size(), " pieces) does not match --data token file '", path,
         "' (prepared with another model of ", h.vocab_size, " pieces: the model hash differs): they come from "
         "different preparations");
  return vocab;
}

// A prepared split: a token file or a shard index (runtime/token_file.hpp).
bool prepared_detect(const std::string& path) { return token_file_detect(path) || token_index_detect(path); }

// --data is a token file (uoe-prepare's output). The split follows the text path exactly: the last
// round(n * val_fraction) tokens when there is no --val-data, so a prepared file and its text give
// the same token streams whichever is loaded.
Dataset dataset_from_token_file(const Config& cfg, TokenizerKind kind) {
  const PreparedSplit train = prepared_open(cfg.data, "--data");
  const TokenFileHeader& h = train.header;
  if (h.tokenizer != kind)
    fail("--tokenizer ", cfg.tokenizer, " disagrees with --data token file '", cfg.data, "', which was prepared ",
         tokenizer_name(h.tokenizer), "-level: pass --tokenizer ", tokenizer_name(h.tokenizer));
  Dataset ds;
  ds.vocab.kind = kind;
  if (kind == TokenizerKind::sentencepiece) ds.vocab = sentencepiece_vocab_for(cfg.data, h);
  if (kind == TokenizerKind::word) {
    const std::string vocab_path = vocab_path_for(cfg.data);
    std::error_code ec;
    if (!std::filesystem::exists(vocab_path, ec))
      fail("--data token file '", cfg.data, "' is word-level and needs its vocabulary file '", vocab_path,
           "' (uoe-prepare writes PREFIX.vocab next to PREFIX.train.tok and PREFIX.val.tok)");
    ds.vocab = vocab_file_read(vocab_path);
    if (ds.vocab.words.size() != h.vocab_size)
      fail("vocabulary file '", vocab_path, "' has ", ds.vocab.words.size(), " words but --data token file '", cfg.data,
           "' was prepared with a vocabulary of ", h.vocab_size, ": they come from different preparations");
    if (vocab_hash(ds.vocab) != h.vocab_hash)
      fail("vocabulary file '", vocab_path, "' does not match --data token file '", cfg.data,
           "' (same size, different words or order): they come from different preparations");
  }
  // The end-of-document token (uoe-prepare --eod): byte level widens V to 257; a word vocabulary
  // holds it as "<eod>" (checked by the hash above); a SentencePiece model's </s>.
  if (kind == TokenizerKind::word && ds.vocab.eod != h.eod)
    fail("vocabulary file '", vocab_path_for(cfg.data), "' and --data token file '", cfg.data,
         "' disagree on the end-of-document token: they come from different preparations");
  if (kind == TokenizerKind::sentencepiece && h.eod >= 0 && h.eod != ds.vocab.sp->reserved_eod())
    fail("--data token file '", cfg.data, "': end-of-document id ", h.eod, " is not the model's </s>");
  ds.vocab.eod = h.eod;
  ds.source = train.summary;
  const std::string train_label = "'" + cfg.data + "'";
  std::string train_what = "training data " + train_label, val_what;
  if (cfg.val_data.empty()) {
    if (!(cfg.val_fraction > 0.0 && cfg.val_fraction < 1.0))
      fail("--val-fraction must be in (0, 1) when no --val-data is given, got ", cfg.val_fraction);
    std::ostringstream frac;
    frac << cfg.val_fraction;
    train_what = "training split of " + train_label + " (all but the last --val-fraction " + frac.str() + ")";
    val_what = "validation split of " + train_label + " (the last --val-fraction " + frac.str() + ")";
    const size_t n = train.tokens.size();
    const auto n_val = static_cast<size_t>(std::llround(static_cast<double>(n) * cfg.val_fraction));
    ds.train = train.tokens.slice(0, n - n_val);
    ds.val = train.tokens.slice(n - n_val, n_val);
    if (kind == TokenizerKind::byte) {
      ds.train_bytes = static_cast<double>(n - n_val);
      ds.val_bytes = static_cast<double>(n_val);
    }
  } else if (prepared_detect(cfg.val_data)) {
    const PreparedSplit val = prepared_open(cfg.val_data, "--val-data");
    const TokenFileHeader& vh = val.header;
    if (vh.tokenizer != h.tokenizer || vh.vocab_size != h.vocab_size || vh.vocab_hash != h.vocab_hash || vh.eod != h.eod)
      fail("--val-data token file '", cfg.val_data, "' (", tokenizer_name(vh.tokenizer), "-level, V=", vh.vocab_size,
           ") was prepared with a different vocabulary than --data '", cfg.data, "' (", tokenizer_name(h.tokenizer),
           "-level, V=", h.vocab_size, "): prepare both in one uoe-prepare run");
    ds.train = train.tokens;
    ds.val = val.tokens;
    ds.train_bytes = train.source_bytes;
    ds.val_bytes = val.source_bytes;
    ds.source += " (validation: " + val.summary + ")";
    val_what = "validation data '" + cfg.val_data + "'";
  } else {
    // Validation text, tokenized with the prepared vocabulary (unknown words -> <unk> = 0).
    const std::string val_text = text_file_read(cfg.val_data, "--val-data");
    ds.train = train.tokens;
    ds.train_bytes = train.source_bytes;
    ds.val_bytes = static_cast<double>(val_text.size());
    if (kind == TokenizerKind::byte) {
      ds.val = byte_ids(val_text);
    } else if (kind == TokenizerKind::sentencepiece) {
      ds.val = ds.vocab.encode(val_text);
    } else {
      WordIds ids;
      for (size_t id = 0; id < ds.vocab.words.size(); ++id) ids[ds.vocab.words[id]] = static_cast<int32_t>(id);
      const std::vector<std::string_view> tokens = word_tokenize(val_text);
      ds.val = word_ids(tokens, 0, tokens.size(), ids);
    }
    ds.source += " (validation: " + cfg.val_data + ")";
    val_what = "validation data '" + cfg.val_data + "'";
  }
  check_split_length(ds.train.size(), cfg.seq_len, train_what);
  check_split_length(ds.val.size(), cfg.seq_len, val_what);
  if (cfg.windows_within_documents) {
    // runtime/token_file.hpp, Documents: the starts uoe-prepare --eod records with the index.
    if (train.documents_path.empty())
      fail("--windows-within-documents needs the document starts that uoe-prepare --eod records next to a shard index, "
           "but --data '", cfg.data, "' ",
           !token_index_detect(cfg.data) ? "is a token file, not an index: give --data PREFIX.train.idx"
           : h.eod < 0 ? "was prepared without --eod (no documents): prepare it again with --eod file|blank-line or "
                         "--eod-separator STR"
                       : "is an index of an older preparation that did not record them: prepare it again");
    auto docs = std::make_shared<DocumentWindows>(
        document_windows(prepared_document_starts(train, "--data"), ds.train.size(), cfg.seq_len));
    if (docs->total() == 0)
      fail("--windows-within-documents: none of the ", docs->documents, " documents of the ", train_what,
           " holds --seq-len ", cfg.seq_len, " + 1 tokens (the longest is shorter): lower --seq-len, or drop the option");
    ds.train.set_documents(std::move(docs));
  }
  return ds;
}

}  // namespace

std::string data_read_text(const std::string& path, const char* option) { return text_file_read(path, option); }

Dataset data_load(const Config& cfg) {
  const TokenizerKind kind = tokenizer_parse(cfg.tokenizer);
  const bool builtin = cfg.data.empty();
  if (!builtin && prepared_detect(cfg.data)) return dataset_from_token_file(cfg, kind);
  if (cfg.windows_within_documents)
    fail("--windows-within-documents needs prepared data with document boundaries, but --data ",
         builtin ? std::string("is the built-in corpus") : "'" + cfg.data + "' is text",
         ": prepare it with uoe-prepare --eod file|blank-line (or --eod-separator STR), then train with --data "
         "PREFIX.train.idx");
  if (kind == TokenizerKind::sentencepiece)
    fail("--tokenizer sentencepiece reads prepared token files only: prepare the text with uoe-prepare --tokenizer "
         "sentencepiece (it trains or takes the model), then train with --data PREFIX.train.idx --val-data "
         "PREFIX.val.idx");
  if (!cfg.val_data.empty() && prepared_detect(cfg.val_data))
    fail("--val-data '", cfg.val_data, "' is a prepared token file but --data ",
         builtin ? std::string("is the built-in corpus") : "'" + cfg.data + "' is text",
         ": token ids mean something only with the vocabulary they were prepared with; prepare both with "
         "uoe-prepare (--data TEXT --val-data TEXT), or give the validation text");
  const std::string train_text = builtin ? data_builtin_corpus() : text_file_read(cfg.data, "--data");
  const std::string train_label = builtin ? "the built-in corpus" : "'" + cfg.data + "'";
  const std::string train_source = builtin ? "built-in corpus" : cfg.data;
  if (cfg.val_data.empty())
    return dataset_build(train_text, nullptr, cfg.val_fraction, kind, cfg.seq_len, train_source,
                         train_label, train_label);
  const std::string val_text = text_file_read(cfg.val_data, "--val-data");
  return dataset_build(train_text, &val_text, cfg.val_fraction, kind, cfg.seq_len,
                       train_source + " (validation: " + cfg.val_data + ")", train_label,
                       "'" + cfg.val_data + "'");
}

// ---------------------------------------------------------------------------------------------
// Built-in corpus (grammar at the top of this file)

namespace {

constexpr uint64_t kCorpusSeed = 0x554f45'636f7270ULL;  // "UOE" "corp": fixed, never --seed
constexpr size_t kCorpusBytes = 400 * 1000;

// Sequential draws: draw i is rng_bits(kCorpusSeed, stream, i).
class CorpusDraws {
 public:
  CorpusDraws() : stream_(rng_stream("data.builtin_corpus")) {}
  uint64_t below(uint64_t n) { return rng_below(kCorpusSeed, stream_, counter_++, n); }
  int between(int lo, int hi) { return lo + static_cast<int>(below(static_cast<uint64_t>(hi - lo + 1))); }
  bool percent(int p) { return below(100) < static_cast<uint64_t>(p); }
  template <class Array>
  const auto& pick(const Array& a) { return a[below(a.size())]; }

 private:
  uint64_t stream_;
  uint64_t counter_ = 0;
};

struct Noun {
  const char* singular;
  const char* plural;
};
struct Verb {
  const char* base;   // plural subjects: "see"
  const char* third;  // singular subjects: "sees"
};
struct Pet {
  const char* name;
  const char* sound;
};

constexpr std::array<Noun, 14> kAnimate = {{{"cat", "cats"},         {"dog", "dogs"},
                                            {"bird", "birds"},       {"fox", "foxes"},
                                            {"horse", "horses"},     {"mouse", "mice"},
                                            {"owl", "owls"},         {"child", "children"},
                                            {"teacher", "teachers"}, {"farmer", "farmers"},
                                            {"robot", "robots"},     {"king", "kings"},
                                            {"queen", "queens"},     {"artist", "artists"}}};
constexpr std::array<Noun, 12> kThings = {{{"ball", "balls"},         {"apple", "apples"},
                                           {"box", "boxes"},          {"book", "books"},
                                           {"key", "keys"},           {"stone", "stones"},
                                           {"cup", "cups"},           {"letter", "letters"},
                                           {"egg", "eggs"},           {"umbrella", "umbrellas"},
                                           {"song", "songs"},         {"map", "maps"}}};
constexpr std::array<const char*, 14> kAdjectives = {"red",   "blue",  "green", "orange", "small",
                                                     "big",   "old",   "young", "happy",  "angry",
                                                     "quiet", "heavy", "bright", "empty"};
constexpr std::array<Verb, 10> kVerbs = {{{"see", "sees"},       {"find", "finds"},
                                          {"carry", "carries"},  {"want", "wants"},
                                          {"hold", "holds"},     {"watch", "watches"},
                                          {"throw", "throws"},   {"like", "likes"},
                                          {"paint", "paints"},   {"follow", "follows"}}};
constexpr std::array<const char*, 7> kPlaces = {"in the garden", "near the river", "on the hill",
                                                "under the table", "at school", "in the old house",
                                                "by the sea"};
constexpr std::array<const char*, 5> kConjunctions = {"and", "but", "because", "while", "so"};
constexpr std::array<const char*, 4> kDetSingular = {"the", "a", "this", "every"};
constexpr std::array<const char*, 3> kDetPlural = {"the", "some", "these"};
constexpr std::array<const char*, 16> kNames = {"anna", "ben",   "clara", "david", "emma",  "felix",
                                                "grace", "hugo", "iris",  "jonas", "lena",  "marco",
                                                "nora", "oscar", "paula", "sam"};
constexpr std::array<const char*, 10> kCities = {"oslo",  "paris", "lima",  "rome",  "cairo",
                                                 "delhi", "tokyo", "berlin", "quito", "dublin"};
constexpr std::array<Pet, 6> kPets = {{{"cat", "meow"}, {"dog", "woof"}, {"bird", "tweet"},
                                       {"cow", "moo"},  {"owl", "hoot"}, {"duck", "quack"}}};
constexpr std::array<const char*, 8> kColours = {"red",    "blue",  "green", "orange",
                                                 "yellow", "black", "white", "purple"};

// The generators append to `out` (rather than returning and concatenating strings): simpler, and
// it avoids GCC 12's false -Wrestrict positive on `"literal" + std::string` at -O3.

void append_number(std::string& out, int n) {  // 0..99, spelled out
  static constexpr std::array<const char*, 20> ones = {
      "zero",    "one",     "two",       "three",    "four",     "five",    "six",
      "seven",   "eight",   "nine",      "ten",      "eleven",   "twelve",  "thirteen",
      "fourteen", "fifteen", "sixteen",  "seventeen", "eighteen", "nineteen"};
  static constexpr std::array<const char*, 10> tens = {"",      "",      "twenty",  "thirty", "forty",
                                                       "fifty", "sixty", "seventy", "eighty", "ninety"};
  UOE_ASSERT(n >= 0 && n < 100, "n = ", n);
  if (n < 20) {
    out += ones[n];
    return;
  }
  out += tens[n / 10];
  if (n % 10 != 0) {
    out += ' ';
    out += ones[n % 10];
  }
}

// det [adjective] noun with number agreement; "a" becomes "an" before a vowel.
void append_noun_phrase(CorpusDraws& r, const Noun& noun, bool plural, std::string& out) {
  int number = -1;  // a plural determiner spelled as a number (two..twelve), or -1
  const char* det = nullptr;
  if (plural && r.percent(25))
    number = r.between(2, 12);
  else
    det = plural ? r.pick(kDetPlural) : r.pick(kDetSingular);
  const char* adjective = r.percent(50) ? r.pick(kAdjectives) : nullptr;
  const char* word = plural ? noun.plural : noun.singular;
  if (number >= 0)
    append_number(out, number);
  else if (std::strcmp(det, "a") == 0 && std::strchr("aeiou", adjective ? adjective[0] : word[0]))
    out += "an";
  else
    out += det;
  out += ' ';
  if (adjective != nullptr) {
    out += adjective;
    out += ' ';
  }
  out += word;
}

// np_subj[n] verb[n] np_obj
void append_clause(CorpusDraws& r, std::string& out) {
  const bool plural = r.percent(50);
  append_noun_phrase(r, r.pick(kAnimate), plural, out);
  const Verb& verb = r.pick(kVerbs);
  out += ' ';
  out += plural ? verb.base : verb.third;
  out += ' ';
  const Noun& object = r.percent(70) ? r.pick(kThings) : r.pick(kAnimate);
  append_noun_phrase(r, object, r.percent(50), out);
}

void append_place(CorpusDraws& r, std::string& out) {
  out += ' ';
  out += r.pick(kPlaces);
}

void append_sentence(CorpusDraws& r, std::string& out) {
  if (r.percent(75)) {
    append_clause(r, out);
    if (r.percent(40)) append_place(r, out);
    if (r.percent(30)) {
      out += ", ";
      out += r.pick(kConjunctions);
      out += ' ';
      append_clause(r, out);
    }
  } else {
    const bool plural = r.percent(50);
    append_noun_phrase(r, r.pick(kAnimate), plural, out);
    out += plural ? " are " : " is ";
    out += r.pick(kAdjectives);
    if (r.percent(50)) append_place(r, out);
  }
  out += '.';
}

void block_prose(CorpusDraws& r, std::string& out) {
  const int n = r.between(3, 6);
  for (int i = 0; i < n; ++i) {
    if (i > 0) out += ' ';
    append_sentence(r, out);
  }
  out += '\n';
}

void block_counting(CorpusDraws& r, std::string& out) {
  const int lines = r.between(1, 3);
  for (int l = 0; l < lines; ++l) {
    const int first = r.between(0, 89);
    const int len = r.between(4, 10);
    for (int k = first; k < first + len && k < 100; ++k) {
      if (k > first) out += ' ';
      append_number(out, k);
    }
    out += '\n';
  }
}

void block_sums(CorpusDraws& r, std::string& out) {
  const int lines = r.between(2, 4);
  for (int l = 0; l < lines; ++l) {
    const int a = r.between(0, 12);
    const int b = r.between(0, 12);
    const bool minus = a >= b && r.percent(50);
    append_number(out, a);
    out += minus ? " minus " : " plus ";
    append_number(out, b);
    out += " is ";
    append_number(out, minus ? a - b : a + b);
    out += ".\n";
  }
}

void block_record(CorpusDraws& r, std::string& out) {
  const Pet& pet = r.pick(kPets);
  out += "name: ";
  out += r.pick(kNames);
  out += "\nage: ";
  append_number(out, r.between(18, 89));
  out += "\ncity: ";
  out += r.pick(kCities);
  out += "\npet: ";
  out += pet.name;
  out += "\nsound: ";
  out += pet.sound;
  out += "\ncolour: ";
  out += r.pick(kColours);
  out += '\n';
}

}  // namespace

std::string data_builtin_corpus() {
  CorpusDraws r;
  std::string out;
  out.reserve(kCorpusBytes + 1024);
  while (out.size() < kCorpusBytes) {
    const uint64_t kind = r.below(100);
    if (kind < 45)
      block_prose(r, out);
    else if (kind < 60)
      block_counting(r, out);
    else if (kind < 75)
      block_sums(r, out);
    else
      block_record(r, out);
    out += '\n';  // blank line between blocks
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Windows

namespace {

// inputs[t] = tokens[start + t], targets[t] = tokens[start + t + 1], t < T: one read of T + 1 ids
// (checked against V where they come from a mapped file).
void window_copy(const TokenStream& tokens, size_t start, int T, int32_t* inputs, int32_t* targets) {
  tokens.copy(start, static_cast<size_t>(T), inputs);
  std::copy(inputs + 1, inputs + T, targets);
  targets[T - 1] = tokens.at(start + static_cast<size_t>(T));
}

}  // namespace

void data_sample_batch(const TokenStream& tokens, int T, int B, uint64_t seed,
                       uint64_t step, uint64_t slot, int32_t* inputs, int32_t* targets) {
  // Counter layout (step << 32) | (slot << 16) | b: each field must fit its bits, or two
  // different (step, slot, b) would draw the same window.
  if (T < 1) fail("data_sample_batch: --seq-len must be at least 1, got ", T);
  if (B < 1 || B > (1 << 16)) fail("data_sample_batch: --batch-size must be in [1, 65536], got ", B);
  if (slot >= (uint64_t{1} << 16))
    fail("data_sample_batch: data-parallel slot (rank * micro-batches + m) must be below 65536, got ",
         slot);
  if (step >= (uint64_t{1} << 32)) fail("data_sample_batch: step must be below 2^32, got ", step);
  const size_t n = tokens.size();
  if (n < static_cast<size_t>(T) + 1)
    fail("data_sample_batch: ", n, " training tokens are too few for --seq-len ", T, " (needs ",
         static_cast<int64_t>(T) + 1, ")");

  const uint64_t stream = rng_stream("data.window");
  const DocumentWindows* docs = tokens.documents();
  if (docs != nullptr && docs->T != T)
    fail("data_sample_batch: the stream's document windows are of --seq-len ", docs->T, ", not ", T);
  if (docs != nullptr && docs->total() == 0)
    fail("data_sample_batch: no document of the training data holds --seq-len ", T, " + 1 tokens");
  // Starts 0 .. n-T-1: the last target is tok[n-1]; with documents, window u of those inside one.
  const uint64_t n_starts = docs != nullptr ? docs->total() : n - static_cast<size_t>(T);
  for (int b = 0; b < B; ++b) {
    const uint64_t counter = (step << 32) | (slot << 16) | static_cast<uint64_t>(b);
    const uint64_t u = rng_below(seed, stream, counter, n_starts);
    const size_t start = docs != nullptr ? static_cast<size_t>(docs->start(u)) : static_cast<size_t>(u);
    window_copy(tokens, start, T, inputs + static_cast<size_t>(b) * T, targets + static_cast<size_t>(b) * T);
  }
}

DocumentWindows document_windows(const std::vector<uint64_t>& starts, uint64_t n, int T) {
  if (T < 1) fail("document_windows: --seq-len must be at least 1, got ", T);
  if (starts.empty() || starts[0] != 0) fail("document_windows: the first document must start at token 0");
  DocumentWindows w;
  w.T = T;
  uint64_t windows = 0;
  for (size_t d = 0; d < starts.size() && starts[d] < n; ++d) {
    const uint64_t end = d + 1 < starts.size() ? std::min(starts[d + 1], n) : n;
    if (end <= starts[d]) fail("document_windows: document starts must increase (document ", d, ")");
    ++w.documents;
    const uint64_t length = end - starts[d];
    if (length < static_cast<uint64_t>(T) + 1) {
      ++w.skipped;
      w.skipped_tokens += length;
      continue;
    }
    windows += length - static_cast<uint64_t>(T);
    w.first.push_back(starts[d]);
    w.ends.push_back(windows);
  }
  return w;
}

int64_t data_val_window_count(size_t n_tokens, int T) {
  if (T < 1) fail("data_val_window_count: --seq-len must be at least 1, got ", T);
  if (n_tokens == 0) return 0;
  return static_cast<int64_t>((n_tokens - 1) / static_cast<size_t>(T));
}

int64_t data_eval_window(int64_t i, int64_t n_eval, int64_t total) {
  if (n_eval < 1 || n_eval > total || i < 0 || i >= n_eval)
    fail("data_eval_window: window ", i, " of ", n_eval, " evaluated out of ", total, " is out of range");
  // 128-bit product: i · total exceeds 64 bits for splits of more than 2^31 windows.
  return static_cast<int64_t>(static_cast<unsigned __int128>(i) * static_cast<uint64_t>(total) /
                              static_cast<uint64_t>(n_eval));
}

void data_val_windows(const TokenStream& tokens, int T, int64_t first, int count,
                      int32_t* inputs, int32_t* targets) {
  const int64_t total = data_val_window_count(tokens.size(), T);
  if (first < 0 || count < 0 || first > total - count)
    fail("data_val_windows: windows [", first, ", ", first + count, ") are outside the ", total,
         " validation windows of --seq-len ", T);
  for (int w = 0; w < count; ++w)
    window_copy(tokens, static_cast<size_t>(first + w) * T, T, inputs + static_cast<size_t>(w) * T,
                targets + static_cast<size_t>(w) * T);
}

}  // namespace uoe
