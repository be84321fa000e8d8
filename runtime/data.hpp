// Data: loading text, tokenizing it (byte- or word-level), splitting it into training and
// validation token streams, and cutting those streams into training and validation windows.
//
// Every draw of a training window is a pure function of (seed, step, slot, b), so the batches a
// run sees do not depend on world size, thread count or call order (see data_sample_batch).
// Validation follows docs/model.md, Validation: the split is cut into consecutive windows of T inputs with
// stride T, so the targets tile the split and every token after the first is predicted once.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/config.hpp"
#include "runtime/token_stream.hpp"

namespace uoe {

enum class TokenizerKind { byte, word, sentencepiece };

class Tokenizer;  // runtime/tokenizer.hpp

// Word-level vocabulary; byte-level has none (size 256, id = byte value); sentencepiece: a model
// (runtime/tokenizer.hpp).
// The end-of-document token of word-level vocabularies (uoe-prepare --eod): a word the word
// tokenizer never produces ("<" is a token of its own), and how every tokenizer decodes the token.
inline constexpr const char* kEodWord = "<eod>";

struct Vocab {
  TokenizerKind kind = TokenizerKind::byte;
  // The end-of-document id (uoe-prepare --eod; runtime/token_file.hpp), -1: none. Byte level: 256
  // (V = 257); word level: the word "<eod>", the last id; sentencepiece: the model's </s>.
  int32_t eod = -1;
  std::vector<std::string> words;  // id -> word (word-level only); id 0 = "<unk>"
  std::string model;               // sentencepiece only: the .model file's bytes
  std::shared_ptr<const Tokenizer> sp;  // sentencepiece only: the loaded model
  int size() const;                // 256 for byte (257 with an end-of-document token)
  // Text of a token sequence, for samples and debugging. Byte-level: the bytes themselves.
  // Word-level: words joined by single spaces, except around "\n" and before closing
  // punctuation (",", ".", ...), so the text reads naturally. Ids out of range print as "<?>", the
  // end-of-document token as "<eod>".
  std::string decode(const int32_t* ids, size_t n) const;
  // Token ids of a text, tokenized as the training data is (words not in the vocabulary: 0).
  // Sentencepiece: the model's encode and decode (runtime/tokenizer.hpp).
  std::vector<int32_t> encode(std::string_view text) const;
};

// Called with the bytes of text just tokenized (from any compute thread): uoe-prepare's progress line.
using TextProgress = std::function<void(size_t bytes)>;

struct Dataset {
  Vocab vocab;
  TokenStream train;   // [n_train] token ids of the training split (a view of the mapped file when prepared)
  TokenStream val;     // [n_val] token ids of the validation split
  // Bytes of the original text each split was tokenized from (0 = unknown), for val_bpb: byte level
  // one per token; word level from the text (a split by token count ends where its last token
  // ends, so the bytes between tokens count with the token after them); prepared data from the
  // shard index (runtime/token_file.hpp) or, byte level, the token count.
  double train_bytes = 0, val_bytes = 0;
  std::string source;  // human description: path(s) or "built-in corpus"
};

// Loads per cfg: cfg.data empty -> built-in corpus; cfg.val_data empty -> the last
// cfg.val_fraction of the token stream of --data is validation, the rest training (split by
// token count: n_val = round(n * val_fraction)); else the two files.
// Byte tokenizer: each byte is a token (V = 256).
// Word tokenizer: tokens are maximal runs of letters/digits/apostrophes (bytes >= 0x80 count as
// letters, so UTF-8 words stay whole), each single ASCII punctuation char, and "\n" (kept as a
// token so text structure survives); other whitespace and control chars separate tokens.
// Vocabulary built from the TRAINING split only: "<unk>" = 0, then words by descending frequency,
// ties broken by byte-wise string order; validation words not in it map to 0.
// Throws uoe::Error naming the file/option and what is wrong: unknown --tokenizer, missing or
// unreadable file, a directory, an empty file, a binary file (a NUL byte: text never has one), or a
// split shorter than seq_len + 1 tokens.
//
// Prepared token files and shard indexes (uoe-prepare; formats in runtime/token_file.hpp) are
// recognised by their magic ("UOETOK01", "uoe-token-index") or a name ending in ".tok" / ".idx",
// memory-mapped and read in place: the streams are views of the mapped pages (no copy; an index's
// shards concatenated), holding the same ids as the text they came from (so training on either
// gives the same losses). Ids are checked where windows read them. X and Y below are a .tok file
// or an index alike:
//   --data X.tok [no --val-data]   the last round(n * val_fraction) tokens are validation, as for text;
//   --data X.tok --val-data Y.tok  both must come from one preparation (same tokenizer, V, vocabulary);
//   --data X.tok --val-data text   the text is tokenized with X's vocabulary (unknown words -> 0);
//   --data text --val-data Y.tok   refused (Y's ids belong to another vocabulary).
// --tokenizer must match the file's tokenizer. Word level reads the vocabulary (V and the words)
// from vocab_path_for(X) and checks its size and hash against X's header. A foreign or damaged
// file (magic, version, dtype, truncated, size disagreeing with the token count) is a uoe::Error
// naming the file and what is wrong at load; an id >= V when a window reads it (TokenStream::copy).
Dataset data_load(const Config& cfg);

// The whole file, read in binary mode. Throws uoe::Error naming `option` (e.g. "--data") and the
// path when it is missing, a directory, unreadable, empty or binary (it holds a NUL byte).
std::string data_read_text(const std::string& path, const char* option);

// Same, from in-memory text (used by data_load and tests). val_text == nullptr -> split
// train_text by val_fraction as above. `source` names the text in messages and Dataset::source.
// Tokenizes on the compute threads (runtime/threads.hpp; the text cut after "\n"s, which no token
// spans): the same ids and vocabulary for any thread count. `progress`: see TextProgress.
Dataset data_from_text(const std::string& train_text, const std::string* val_text,
                       double val_fraction, TokenizerKind kind, int seq_len,
                       const std::string& source, const TextProgress& progress = nullptr);

// uoe-prepare --eod: a stretch of text and whether the end-of-document token follows it.
struct TextSpan {
  std::string_view text;
  bool eod = false;
};

// The splits of uoe-prepare --eod: each span's ids, then the end-of-document id after a span that
// has one (Vocab::eod). `vocab` names the tokenizer: byte (the result has V = 257, eod 256), word
// (the vocabulary is built from `train` as data_from_text builds it, then "<eod>" appended as the
// last word) or sentencepiece (the model's </s>; a model without one is a uoe::Error). Tokenized
// on the compute threads (spans cut after "\n"s): the same ids for any thread count. The bytes of
// the splits (Dataset::train_bytes, val_bytes) are the caller's to set.
Dataset data_from_spans(const std::vector<TextSpan>& train, const std::vector<TextSpan>& val, const Vocab& vocab,
                        const std::string& source, const TextProgress& progress = nullptr);

// The built-in corpus: deterministic text (~400 KB) generated in-process from a fixed seed,
// independent of --seed. Its grammar is documented at the top of data.cpp.
std::string data_builtin_corpus();

// B random training windows of T tokens, written as inputs[b*T + t] = tokens[start_b + t] and
// targets[b*T + t] = tokens[start_b + t + 1], start_b uniform in [0, n - T).
// slot = the data-parallel index of this micro-batch (rank * M + m), so micro-batch m of one rank
// draws exactly what rank m would draw with M = 1.
// start_b = rng_below(seed, rng_stream("data.window"), (step << 32) | (slot << 16) | b, n - T):
// the counter layout is collision-free because b < 2^16, slot < 2^16 and step < 2^32 (checked).
// Requires tokens.size() >= T + 1. inputs, targets: [B, T].
// A stream with documents (TokenStream::documents, uoe-train --windows-within-documents) draws
// u = rng_below(seed, same stream, same counter, W) over its W windows that lie inside one document
// and starts at DocumentWindows::start(u): uniform over those windows, and a stream that is one
// document draws exactly the windows above. Its T must be this T.
void data_sample_batch(const TokenStream& tokens, int T, int B, uint64_t seed,
                       uint64_t step, uint64_t slot, int32_t* inputs, int32_t* targets);

// The windows of T inputs that stay inside one document, for a stream of n tokens whose documents
// start at `starts` (strictly increasing, the first 0; runtime/token_file.hpp, Documents): document
// d is [starts[d], starts[d+1]) (the last ends at n; starts at or after n are dropped: a training split
// cut from a longer stream) and holds max(0, length - T) windows. Documents shorter than T + 1 tokens
// hold none and are counted as skipped.
DocumentWindows document_windows(const std::vector<uint64_t>& starts, uint64_t n, int T);

// Number of validation windows of T inputs over n tokens: (n - 1) / T (partial tail dropped);
// 0 when n < T + 1.
int64_t data_val_window_count(size_t n_tokens, int T);

// The evaluation budget: the i-th of n_eval windows spread evenly over `total` validation windows
// is window floor(i · total / n_eval), 0 <= i < n_eval <= total: the same windows at every
// evaluation, covering the split from its start to its end; n_eval = total is every window in order.
int64_t data_eval_window(int64_t i, int64_t n_eval, int64_t total);

// Fills `count` validation windows starting at window index `first`: window w has
// inputs[(w - first)*T + t] = tokens[w*T + t] and targets[...] = tokens[w*T + t + 1].
// Requires 0 <= first, 0 <= count, first + count <= data_val_window_count(tokens.size(), T).
// inputs, targets: [count, T].
void data_val_windows(const TokenStream& tokens, int T, int64_t first, int count,
                      int32_t* inputs, int32_t* targets);

}  // namespace uoe
