// Prepared token files (written by uoe-prepare, read by uoe-train --data / --val-data) and their
// word-level vocabulary files.
//
// Token file, all integers little-endian, 40-byte header then the tokens:
//
//   offset size  field
//        0    8  magic        "UOETOK01" (bytes 55 4f 45 54 4f 4b 30 31)
//        8    4  version      uint32, 1
//       12    2  dtype        uint16, bytes per token: 2 (uint16 ids) or 4 (uint32 ids); uoe-prepare
//                             writes 2 when the vocabulary has at most 65536 entries, else 4
//       14    2  tokenizer    uint16, 0 = byte (ids are byte values, vocabulary 256; 257 with an
//                             end-of-document token), 1 = word, 2 = sentencepiece (runtime/tokenizer.hpp)
//       16    4  vocab_size   uint32, V: every token id is < V
//       20    4  eod          uint32, 0 = no end-of-document token; else its id + 1 (uoe-prepare --eod:
//                             byte level 256 + 1, word level the id of the word "<eod>" + 1,
//                             sentencepiece the id of the model's </s> + 1); the token follows every
//                             document of the text
//       24    8  tokens       uint64, n: number of tokens that follow
//       32    8  vocab_hash   uint64, vocab_hash() of the vocabulary (0 for byte level, or with
//                             the eod token the FNV-1a hash of "byte <eod>"; for sentencepiece the
//                             FNV-1a hash of the .model file's bytes), so a token file is never
//                             read with the vocabulary of another preparation
//       40  n*dtype            the token ids
//
// The file size must be exactly 40 + n·dtype. Readers memory-map the file (read-only, RAII).
//
// Sharded datasets: uoe-prepare writes each split as shards of at most --shard-size bytes of tokens
// (whole token files, format above, all with the same header fields but the token count) and an
// index, STEM.idx, that lists them. A split that fits in one shard is written as STEM.tok (a plain
// token file, readable without its index); more shards are STEM-00000.tok, STEM-00001.tok, ...
// Index file (text, one field a line, "key value"; names are file names in the index's directory):
//
//   uoe-token-index 1                 magic and version (2 with an eod line; 3 with eod and documents
//                                     lines, what uoe-prepare --eod writes; versions 1 and 2 still read)
//   tokenizer 0                       the shards' header fields: tokenizer code, V, vocab_hash
//   vocab_size 256                    (hex, 16 digits), dtype (bytes per id)
//   vocab_hash 0000000000000000
//   dtype 2
//   tokens 1234567                    total tokens, the sum over the shards
//   source_bytes 1234567              bytes of the text the split was tokenized from (val_bpb)
//   eod 256                           only in versions 2 and 3 (uoe-prepare --eod): the end-of-document id
//   documents 812 9a3c...07 corpus.train.docs
//                                     only in version 3: the document count, FNV-1a 64 (hex) of the
//                                     documents file (below) and its name
//   shards 2                          then one line per shard, in stream order:
//   shard 1000000 2000040 5d1c...e3 corpus.train-00000.tok
//                                     tokens, file size in bytes, FNV-1a 64 (hex) of its 40 header
//                                     bytes, file name (the rest of the line)
//
// A reader opens every shard and checks it against its line (exists, size, header checksum, token
// count) and the header fields against the index's, so a missing, truncated or foreign shard is an
// error naming the index and the shard. The split's token stream is the shards concatenated in
// order; training windows are drawn over that stream as over one file (a window may straddle two
// shards), so a one-shard dataset, or N shards holding one file's tokens, trains bitwise as that file.
//
// Documents file (STEM.docs, uoe-prepare --eod, listed in STEM.idx): where the split's documents
// start, for uoe-train --windows-within-documents (runtime/data.hpp, document_windows). Little-endian:
//
//        0    8  magic        "UOEDOC01"
//        8    8  documents    uint64, D
//       16    8  tokens       uint64, the split's token count (the index's)
//       24  D*8  starts       uint64 each, strictly increasing, the first 0, all below tokens: the
//                             stream index of each document's first token (0, and one after every
//                             end-of-document token but the split's last token)
//
// Vocabulary file (word level; PREFIX.vocab next to PREFIX.train.tok / PREFIX.val.tok): UTF-8 or any
// bytes, one word per line, id = line number counted from 0 (line 1 is "<unk>", id 0). A backslash
// escapes: "\\" is a backslash, "\n" a newline (the newline token itself is written as the two
// characters \n). No other escape, no empty line, no carriage return, no duplicate word.
//
// SentencePiece model (sentencepiece level; PREFIX.model next to the token files): the model file
// as SentencePiece writes it (spm_train's .model), byte for byte.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/data.hpp"
#include "runtime/token_stream.hpp"

namespace uoe {

inline constexpr char kTokenFileMagic[8] = {'U', 'O', 'E', 'T', 'O', 'K', '0', '1'};
inline constexpr uint32_t kTokenFileVersion = 1;
inline constexpr size_t kTokenFileHeaderBytes = 40;

struct TokenFileHeader {
  uint32_t version = kTokenFileVersion;
  uint16_t dtype_bytes = 2;  // 2: uint16 ids, 4: uint32 ids
  TokenizerKind tokenizer = TokenizerKind::byte;
  uint32_t vocab_size = 256;
  uint64_t tokens = 0;
  uint64_t vocab_hash = 0;
  int32_t eod = -1;  // the end-of-document id, -1: none
};

// A read-only memory map of a whole file (RAII: unmapped and closed on destruction; movable).
class MappedFile {
 public:
  MappedFile() = default;
  // Maps `path`; throws uoe::Error naming `option` and the path when it cannot.
  MappedFile(const std::string& path, const char* option);
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  void release() noexcept;
  const unsigned char* data_ = nullptr;  // null for an empty file
  size_t size_ = 0;
};

// An opened token file: header checked against the file size, tokens memory-mapped. Token ids are
// checked against the vocabulary size where they are read: copy_tokens, or the TokenStream views
// (stream) that training windows are cut from.
class TokenFile {
 public:
  // Throws uoe::Error naming `option` (e.g. "--data"), the file and what is wrong: not a token
  // file (magic), unknown version, dtype or tokenizer, byte level with V != 256, uint16 ids with
  // V > 65536, header shorter than 40 bytes, or a size that disagrees with the token count.
  TokenFile(const std::string& path, const char* option);

  const TokenFileHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  size_t size() const { return static_cast<size_t>(header_.tokens); }

  // Tokens [begin, begin + count) as int32 ids; throws uoe::Error naming the file and the index of
  // the first id >= vocab_size (a corrupt file).
  void copy_tokens(size_t begin, size_t count, int32_t* out) const;
  std::vector<int32_t> tokens(size_t begin, size_t count) const;
  // Tokens [begin, begin + count) as a view of the mapped pages (no copy; the view keeps the map).
  TokenStream stream(size_t begin, size_t count) const;

 private:
  std::string path_;
  const char* option_;
  std::shared_ptr<const MappedFile> map_;
  TokenFileHeader header_;
};

// True when `path` should be read as a token file: it starts with "UOETOK", or its name ends in
// ".tok" (so a foreign or damaged .tok file gets a token-file error rather than being read as text).
// False for a file that cannot be opened (the text reader reports that).
bool token_file_detect(const std::string& path);

// Writes a token file atomically and durably (runtime/atomic_file.hpp). dtype: 2 bytes when vocab_size <= 65536,
// else 4. Throws uoe::Error on an id outside [0, vocab_size) or an I/O failure (naming the file).
// `eod`: the end-of-document id (-1: none).
void token_file_write(const std::string& path, const int32_t* tokens, size_t n, TokenizerKind tokenizer,
                      uint32_t vocab_size, uint64_t vocab_hash, int32_t eod = -1);

// FNV-1a (64 bit) over each word's length (8 bytes, little-endian) and bytes: identifies a
// vocabulary's exact word list and order. 0 for byte level (no words; with the end-of-document
// token tokenizer_bytes_hash("byte <eod>")); sentencepiece: tokenizer_bytes_hash() of the model's bytes.
uint64_t vocab_hash(const Vocab& vocab);

// The vocabulary file of a token file or index: the path without ".tok" or ".idx", without a shard
// number "-NNNNN", without a following ".train", ".val" or ".test", plus ".vocab"
// (data/wt103.train.tok, data/wt103.train.idx, data/wt103.train-00003.tok -> data/wt103.vocab).
std::string vocab_path_for(const std::string& token_path);

// The same with ".model": the SentencePiece model of a sentencepiece-level token file.
std::string model_path_for(const std::string& token_path);

// Writes / reads a word-level vocabulary file (format above). The reader throws uoe::Error naming
// the file and line for a bad escape, an empty line, a carriage return or a duplicate word.
void vocab_file_write(const std::string& path, const Vocab& vocab);
Vocab vocab_file_read(const std::string& path);
// The file's text, and the reader on a text (`source` names it in messages: "vocabulary file 'X'").
std::string vocab_file_text(const Vocab& vocab);
Vocab vocab_text_parse(std::string_view text, const std::string& source);

// What uoe-prepare writes for a dataset: the train and validation splits as shards and an index
// each (STEM = PREFIX.train, PREFIX.val; see "Sharded datasets" above) and, word level, PREFIX.vocab,
// sentencepiece level, PREFIX.model; with an eod id, each split's documents file. Returns the index
// paths, then the vocabulary's or the model's, then every shard's and documents file's. The writes are
// atomic; when one fails the shards this call wrote are removed again.
inline constexpr uint64_t kDefaultShardBytes = 1'000'000'000;  // 1 GB of token ids per shard
std::vector<std::string> token_files_write(const Dataset& ds, const std::string& prefix,
                                           uint64_t shard_bytes = kDefaultShardBytes);

// One split's shards, index and (with an eod id) documents file, written as the ids arrive (the
// one writer: token_shards_write and uoe-prepare use it). Memory stays bounded whatever the split's
// size: ids are buffered up to a few MB, each shard is written under a temporary name, its header
// (token count) filled in when it closes, then renamed into place (runtime/atomic_file.hpp); a
// split that ends inside its first shard is STEM.tok, else STEM-00000.tok, ... (shard 0 renamed
// when the second opens). The documents file's starts are appended as eod ids go by, its header and
// checksum completed at finish(), the index written last. Destroyed before finish() (an error),
// it removes every file it wrote; finish() returns them for the caller to remove on a later error.
class TokenShardWriter {
 public:
  TokenShardWriter(std::string stem, TokenizerKind tokenizer, uint32_t vocab_size, uint64_t vocab_hash,
                   uint64_t shard_bytes, int32_t eod = -1);
  ~TokenShardWriter();
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;

  // Appends ids; throws uoe::Error naming the shard for an id outside [0, vocab_size).
  void append(const int32_t* ids, size_t n);
  uint64_t tokens() const { return tokens_; }
  // Closes the last shard, writes the documents file and the index (`source_bytes`: the bytes of
  // text the ids came from, 0 = unknown). Returns the index path, then the shards', then the
  // documents file's (token_shards_write's order).
  std::vector<std::string> finish(double source_bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  uint64_t tokens_ = 0;
};

// One split written as shards + index (STEM.idx and STEM.tok or STEM-NNNNN.tok) and, with an eod
// id, the documents file STEM.docs (the starts of the documents its eod tokens end). Returns the
// index path, then the shards', then the documents file's. `source_bytes`: bytes of the text the ids came from (0 = unknown).
std::vector<std::string> token_shards_write(const std::string& stem, const TokenStream& ids, TokenizerKind tokenizer,
                                            uint32_t vocab_size, uint64_t vocab_hash, uint64_t shard_bytes,
                                            double source_bytes, int32_t eod = -1);

// True when `path` is a shard index: it starts with "uoe-token-index", or its name ends in ".idx".
bool token_index_detect(const std::string& path);

// An opened prepared split: a token file or a shard index with all its shards.
struct PreparedSplit {
  TokenFileHeader header;  // the shards' common fields; tokens = the total
  TokenStream tokens;      // the shards concatenated (views of the mapped files)
  double source_bytes = 0; // from the index (0 = unknown; a byte-level token file: its token count)
  std::string summary;     // for the log: path, dtype, shard count
  // The documents file the index lists (version 3), its document count and hash; empty: none
  // (a token file, or an index written before uoe-prepare recorded documents, or without --eod).
  std::string documents_path;
  uint64_t documents = 0, documents_hash = 0;
  std::string documents_label;  // names the documents file and its index in errors
};
// Opens `path` (a .tok file or an index, by token_index_detect); errors name `option`, the index and
// the shard: a missing, truncated or foreign shard, a header disagreeing with the index, a bad line.
PreparedSplit prepared_open(const std::string& path, const char* option);

// The document starts of an opened split (its documents file, read whole and checked against the
// index: count, hash, token count, starts increasing from 0 and below the token count); throws
// uoe::Error naming `option` and the file. Requires split.documents_path (not empty).
std::vector<uint64_t> prepared_document_starts(const PreparedSplit& split, const char* option);

}  // namespace uoe
