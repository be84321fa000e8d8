// Tokenizers behind one interface: byte, word and SentencePiece (a subword model, through Debian's
// libsentencepiece). uoe-prepare, uoe-train and uoe-sample reach every tokenizer through Tokenizer;
// a Vocab (runtime/data.hpp) names which one a dataset uses and carries what it needs (the word list,
// or the SentencePiece model's bytes).
//
// Lines. Every tokenizer maps a text line by line: no token spans a "\n", and "\n" is a token of its
// own (byte: the byte 10; word: the word "\n"; SentencePiece: the piece "\n", which uoe-prepare adds
// to every model it trains; see SentencePiece below). So a text cut after any "\n" encodes, piece by
// piece, to exactly the ids of the whole (encode_lines), which lets a caller stream a file through a
// tokenizer or split it between threads (tokenizer_encode_parallel) and know how many source bytes
// each piece of ids came from.
//
// Bits per byte. Runs with different tokenizers compare on one scale, the bits per byte of the
// original text:
//
//   val_bpb = val_loss · tokens / bytes / ln 2
//
// val_loss: the mean cross-entropy per predicted token in nats; tokens / bytes: the tokens of the
// validation split over the bytes of source text they were encoded from (what encode_lines reports
// consumed: every byte of the text, "\n" included, whether or not the tokenizer keeps it). Byte level:
// tokens = bytes, so val_bpb = val_loss / ln 2.
//
// SentencePiece. A model is a SentencePiece .model file (a serialized ModelProto); its identity (the
// token files' vocab_hash, the checkpoints' tokenizer hash) is tokenizer_bytes_hash of the file's
// bytes. Each line is encoded by SentencePiece as one sentence (as spm_encode does), and a "\n"
// between lines becomes the id of the piece "\n" if the model has it, else of the byte piece <0x0A>
// (byte_fallback models), else nothing: such a model drops line ends, and decode joins its lines
// with nothing. Models trained by sentencepiece_train (uoe-prepare --tokenizer sentencepiece) have
// "\n" (a user-defined symbol), byte fallback (so any UTF-8 text encodes without <unk>), the identity
// normalization and remove_extra_whitespaces off: decode(encode(text)) == text for UTF-8 text.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "runtime/data.hpp"

namespace uoe {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual TokenizerKind kind() const = 0;
  // V: every id is in [0, V).
  virtual int vocab_size() const = 0;
  // Identifies the vocabulary (the token files' vocab_hash, runtime/token_file.hpp): 0 for byte,
  // vocab_hash() of the words for word, tokenizer_bytes_hash() of the .model file for SentencePiece.
  virtual uint64_t hash() const = 0;

  // Encodes the longest prefix of `text` that ends with "\n" (all of `text` when `last`), appending
  // its ids to `out`; returns the bytes consumed (the prefix's length: 0 when `last` is false and
  // `text` holds no "\n"). Encoding consecutive pieces of a text this way gives exactly the ids of
  // encode(whole text).
  virtual size_t encode_lines(std::string_view text, bool last, std::vector<int32_t>& out) const = 0;
  std::vector<int32_t> encode(std::string_view text) const;

  // Text of a token sequence (samples, debugging). Ids outside [0, V) print as "<?>".
  virtual std::string decode(const int32_t* ids, size_t n) const = 0;

  // An id that encoding never produces and that can mark the end of a document (uoe-prepare --eod):
  // SentencePiece's </s> (decoded as "<eod>"); -1 for byte and word, which add a token instead.
  virtual int32_t reserved_eod() const { return -1; }
};

// The tokenizer a Vocab describes (byte: none needed; word: its words; SentencePiece: its model).
std::shared_ptr<const Tokenizer> tokenizer_for(const Vocab& vocab);

// FNV-1a (64 bit) over bytes: the identity of a SentencePiece model file.
uint64_t tokenizer_bytes_hash(std::string_view bytes);

// "byte", "word", "sentencepiece" and back; tokenizer_kind_parse throws uoe::Error naming `option`
// for any other name.
const char* tokenizer_kind_name(TokenizerKind kind);
TokenizerKind tokenizer_kind_parse(const std::string& name, const char* option);

// A SentencePiece vocabulary from a model's bytes. Throws uoe::Error naming `source` (the file the
// bytes came from) when they are not a SentencePiece model.
Vocab sentencepiece_vocab(std::string model_bytes, const std::string& source);
// The same, reading the .model file `path` (`option` names where the path came from).
Vocab sentencepiece_vocab_read(const std::string& path, const char* option);

struct SentencePieceTraining {
  int vocab_size = 0;                 // pieces, including <unk>, <s>, </s>, "\n" and the 256 byte pieces
  std::string model_type = "bpe";     // bpe | unigram
  int threads = 0;                    // the trainer's threads (0 = every core)
};

// What sentencepiece_train learns from: the whole of `text` when it is at most
// kSentencePieceSampleBytes long, else kSentencePieceSamplePieces stretches of
// kSentencePieceSampleBytes / kSentencePieceSamplePieces bytes spread evenly over it (stretch i starts
// at i · size / pieces), each widened to whole lines. Deterministic: the same text, the same sample.
inline constexpr size_t kSentencePieceSampleBytes = size_t{64} << 20;
inline constexpr size_t kSentencePieceSamplePieces = 64;
std::vector<std::string_view> sentencepiece_sample_lines(std::string_view text);

// The same sample of a text read in parts (uoe-prepare streams its input: runtime/text_stream.hpp):
// `size` bytes, the last "\n" at or before a position and the first at or after one (npos: none),
// `read(begin, n, out)` its bytes. The sample's bytes are held in `text` (at most about
// kSentencePieceSampleBytes, more only by the stretches' widening to whole lines), `lines` view them.
struct TextSample {
  std::string text;
  std::vector<std::string_view> lines;
};
TextSample sentencepiece_sample(size_t size, const std::function<size_t(size_t)>& rfind_newline,
                                const std::function<size_t(size_t)>& find_newline,
                                const std::function<void(size_t, size_t, std::string&)>& read);

// Trains a SentencePiece model on the lines of sentencepiece_sample_lines(text) (settings above) and
// returns its vocabulary (the model's bytes in Vocab::model). Deterministic for a given text and
// settings. Throws uoe::Error naming `source` when SentencePiece refuses (e.g. a vocabulary size
// the text cannot fill, or smaller than its characters plus the byte pieces).
Vocab sentencepiece_train(std::string_view text, const SentencePieceTraining& how, const std::string& source);
// The same on given lines (a TextSample's).
Vocab sentencepiece_train_lines(std::vector<std::string_view> lines, const SentencePieceTraining& how,
                                const std::string& source);

// `text` cut into consecutive pieces for `parts` threads: a cut is placed every
// min(piece_bytes, ceil(size / parts)) bytes and then moved forward to just after the next "\n", so
// no line is ever cut (a piece ends after a "\n" or at the text's end; no piece is empty). The cuts
// of 1, 2 or N parts differ, but every tokenizer maps a text line by line (see Lines above), so the
// pieces' ids, concatenated, are the whole text's: the ids are bitwise the same for any `parts`.
inline constexpr size_t kTextPieceBytes = size_t{4} << 20;
std::vector<std::string_view> text_line_pieces(std::string_view text, size_t parts, size_t piece_bytes = kTextPieceBytes);

// tokenizer.encode(text) on the compute threads (runtime/threads.hpp, parallel_ranges): the text
// cut by text_line_pieces for `threads` parts (0 = threads_count()), the pieces encoded by the pool
// and their ids concatenated in order: bitwise the same ids for any thread count and piece size.
// `progress`, when set, is called with each finished piece's bytes (from any thread).
std::vector<int32_t> tokenizer_encode_parallel(const Tokenizer& tokenizer, std::string_view text, int threads,
                                               size_t piece_bytes = kTextPieceBytes,
                                               const TextProgress& progress = nullptr);

// Word level: keeps the `vocab_size` most frequent entries of ds.vocab (<unk> included) and, among
// them, the words seen at least `min_count` times in ds.train; every other word's id becomes 0
// (<unk>) in ds.train and ds.val. ds.vocab must be data_from_text's (ids by descending training count,
// so the kept words are a prefix). vocab_size 0 and min_count 1 keep everything (ds unchanged).
// Throws uoe::Error for vocab_size 1 (only <unk>) or min_count < 1.
void word_vocab_limit(Dataset& ds, int64_t vocab_size, int64_t min_count);

// The word tokenizer's parts (runtime/data.hpp, data_load: Word tokenizer), for uoe-prepare's
// streaming passes (runtime/text_stream.hpp): whether a byte is a word byte (letters, digits,
// apostrophes, bytes >= 0x80), a text's word tokens (views into it), and the vocabulary of word
// counts: "<unk>", then the words by descending count, ties by byte-wise order (`counts` is sorted
// so, in place: counts[i] is word id i + 1). Defined in data.cpp, with the tokenizer itself.
bool word_byte(unsigned char c);
std::vector<std::string_view> word_tokens(std::string_view text);
Vocab word_vocab_from_counts(std::vector<std::pair<std::string_view, int64_t>>& counts);

// What checkpoints store of a vocabulary (so uoe-sample needs nothing else): its kind's name and
// bytes: "" for byte level ("<eod>" with the end-of-document token), the vocabulary file text for
// word (runtime/token_file.hpp), the .model file's bytes for SentencePiece.
std::string tokenizer_blob(const Vocab& vocab);
// Back from the blob; throws uoe::Error naming `source` for an unknown kind or a damaged blob.
Vocab tokenizer_from_blob(const std::string& kind, const std::string& blob, const std::string& source);

}  // namespace uoe
