// TokenStream: a read-only sequence of token ids that training windows are cut from, without a
// copy of the corpus. A stream is a concatenation of segments; a segment is either an in-memory
// vector of int32 ids (text tokenized at start-up, the built-in corpus) or a view into the mapped
// pages of a prepared token file (uint16 or uint32 little-endian ids, runtime/token_file.hpp), so
// every rank on a node shares one copy of the corpus in the page cache and a rank's anonymous
// memory does not grow with it.
//
// Ids of a mapped segment are checked against its vocabulary size where they are read (copy):
// an id >= V is a uoe::Error naming the file, the token's index in the file and its byte offset.
// Nothing reads the whole file up front, so start-up costs the same for any corpus size.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace uoe {

// Training windows kept inside documents (uoe-train --windows-within-documents; runtime/data.hpp,
// data_sample_batch): the documents of a stream that hold a window of T inputs and its T targets
// (T + 1 tokens, so a document's last token, its end-of-document token, may be the last target),
// and how many windows each holds. Built by document_windows (runtime/data.hpp); 16 bytes of
// memory per document that holds a window.
struct DocumentWindows {
  int T = 0;
  std::vector<uint64_t> first;  // stream index of each such document's first token
  std::vector<uint64_t> ends;   // windows in the documents up to and including this one
  uint64_t documents = 0;       // documents in the stream, those shorter than T + 1 tokens included
  uint64_t skipped = 0, skipped_tokens = 0;  // documents shorter than T + 1 tokens, and their tokens
  uint64_t total() const { return ends.empty() ? 0 : ends.back(); }
  // The first token of window w, 0 <= w < total(): windows are numbered document by document,
  // each document's from its first token on.
  uint64_t start(uint64_t w) const;
};

class TokenStream {
 public:
  TokenStream() = default;
  // An in-memory stream owning `ids` (implicit: a vector of ids is a stream).
  TokenStream(std::vector<int32_t> ids);  // NOLINT(google-explicit-constructor)

  // A view of `count` ids of `dtype_bytes` (2 or 4) bytes each, little-endian, at `bytes`, which
  // `owner` keeps alive (the memory map). `label` names the file in errors (e.g. "--data token
  // file 'x.tok'"); `first_index` is the index in that file of the view's first token, and
  // `first_offset` its byte offset, both only for messages. Ids must be < vocab_size.
  static TokenStream mapped(std::shared_ptr<const void> owner, const unsigned char* bytes, size_t count,
                            int dtype_bytes, uint32_t vocab_size, std::string label, uint64_t first_index,
                            uint64_t first_offset);

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // How many pieces it is made of (one per shard or vector).
  size_t segments() const { return segs_.size(); }
  // Ids held in this process's memory (in-memory segments; mapped ones live in the page cache).
  size_t heap_ids() const;

  // Ids [begin, begin + count) as int32 into out; a range may span segments. Throws uoe::Error for
  // a mapped id >= V (naming the file, the token index and its byte offset). Requires the range
  // inside the stream (asserted).
  void copy(size_t begin, size_t count, int32_t* out) const;
  int32_t at(size_t i) const;
  std::vector<int32_t> to_vector() const;  // the whole stream (tests and small streams only)

  // The ids [begin, begin + count) as a stream sharing this one's storage (no copy).
  TokenStream slice(size_t begin, size_t count) const;
  // Appends `other`'s segments after this stream's (no copy).
  void append(const TokenStream& other);

  // The stream's documents when training windows are kept inside them (null: windows are drawn
  // over the whole stream). slice() and append() return or leave a stream without them.
  const DocumentWindows* documents() const { return docs_.get(); }
  void set_documents(std::shared_ptr<const DocumentWindows> docs) { docs_ = std::move(docs); }

 private:
  struct Segment {
    std::shared_ptr<const void> owner;  // the vector or the memory map
    const unsigned char* bytes = nullptr;
    size_t count = 0;
    int dtype = 4;          // 2 or 4 bytes per id; an in-memory segment is native int32 (dtype 0)
    uint32_t vocab = 0;     // ids must be below (mapped segments)
    std::shared_ptr<const std::string> label;  // file named in errors
    uint64_t first_index = 0, first_offset = 0;
  };
  void copy_segment(const Segment& s, size_t begin, size_t count, int32_t* out) const;
  std::vector<Segment> segs_;
  std::vector<size_t> starts_;  // starts_[i]: stream index of segment i's first id
  size_t size_ = 0;
  std::shared_ptr<const DocumentWindows> docs_;
};

}  // namespace uoe
