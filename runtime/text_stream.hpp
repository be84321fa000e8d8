// Streaming text for uoe-prepare: input files read as one text in blocks of bounded size, cut into
// documents (--eod) and encoded on the compute threads, so that preparing a corpus costs memory
// independent of its size (launcher/uoe_prepare_main.cpp, Memory).
//
// Blocks. A range of the text is read in consecutive blocks of about text_block_bytes(). A block
// ends at the last line end in its first text_block_bytes() bytes: after a "\n", at the end of an
// input file, or at the range's end. A block whose bytes hold none of these (a line longer than the
// block) is cut inside the line where its tokenizer allows, so that the ids stay those of the whole
// text (runtime/tokenizer.hpp, Lines):
//   byte:          at the block's size (a byte is a token);
//   word:          just after the block's last byte that is not a word byte (a space or a
//                  punctuation mark: no word spans one; runtime/data.hpp); a block that is one
//                  run of word bytes grows until one;
//   sentencepiece: nowhere: SentencePiece encodes a line as one sentence, so the block grows to the
//                  line's end, and memory is then bounded by the longest line rather than the block.
// Every cut is one the tokenizer maps piecewise to the whole text's ids, so the ids do not depend
// on the block size (tests/cli/prepare_stream.py proves it against a block of a few bytes).
//
// Documents (--eod; launcher/uoe_prepare_main.cpp, Documents). The rule is applied line by line as
// the blocks go by; the open document and whether the block starts inside a line carry over from
// block to block and from a range to the next (the validation split continues a document the split
// cut). A line cut by a block is longer than the block, so it is never a blank or separator line
// (text_block_bytes keeps a block longer than --eod-separator's line).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/data.hpp"

namespace uoe {

// Input files read as one text (launcher/uoe_prepare_main.cpp, Inputs): in order, with a "\n" put
// between two files when the first does not end with one (`join`; --eod file joins nothing). Regular
// files are read where they lie, when asked for (pread), so the text is never held whole; a file
// that is not regular (a pipe) is read into memory once, at construction.
class TextSource {
 public:
  // Opens every file (sizes, last bytes); throws uoe::Error naming `option` and the file when one is
  // missing, a directory, unreadable or empty.
  TextSource(const std::vector<std::string>& files, const char* option, bool join);
  // A text in memory (the built-in corpus), named `label`.
  TextSource(std::string text, std::string label);
  ~TextSource();
  TextSource(const TextSource&) = delete;
  TextSource& operator=(const TextSource&) = delete;

  size_t size() const { return size_; }
  // Where each file's text (with the "\n" joined after it) ends in the joined text.
  const std::vector<size_t>& file_ends() const { return ends_; }
  // Bytes [offset, offset + n) of the joined text into `out` (resized to n). Throws uoe::Error
  // naming the file for a NUL byte (a binary file: data_read_text's message), a read error, or a
  // file that changed size since construction.
  void read(size_t offset, size_t n, std::string& out) const;
  // The first "\n" at or after `from` and before `limit`, or npos.
  size_t find_newline(size_t from, size_t limit) const;
  // The last "\n" at or before `pos`, or npos.
  size_t rfind_newline(size_t pos) const;

 private:
  struct File {
    std::string path;
    size_t begin = 0, size = 0;  // its bytes in the joined text: [begin, begin + size)
    bool joined = false;         // a "\n" follows at begin + size
    std::string memory;          // the bytes of a file that is not regular (or of an in-memory text)
    bool in_memory = false;
  };
  void read_file(const File& f, size_t from, size_t n, char* out) const;
  std::vector<File> files_;
  // The file read last, kept open (blocks read the files in order); read from one thread at a time.
  mutable int open_fd_ = -1;
  mutable const File* open_file_ = nullptr;
  std::vector<size_t> ends_;
  size_t size_ = 0;
  std::string option_;
};

// The block size: UOE_PREPARE_BLOCK_BYTES when set (tests: a few bytes, to cut every line), else
// `threads` x kTextPieceBytes (4 MB a thread), at least `min_bytes`.
size_t text_block_bytes(int threads, size_t min_bytes = 1);

enum class DocumentRule { none, file, blank_line, separator };

// A piece of a block and whether the end-of-document token follows it.
struct TextPiece {
  std::string_view text;
  bool eod = false;
};

// What carries over from block to block (and from the training range to the validation range of
// one text): the open document, whether the next block starts inside a line, documents ended.
struct DocumentState {
  bool open = false, mid_line = false;
  uint64_t ended = 0;  // documents whose end-of-document token was given out
};

struct TextStreamOptions {
  TokenizerKind tokenizer = TokenizerKind::byte;  // where a line may be cut (see Blocks)
  DocumentRule rule = DocumentRule::none;
  std::string separator;                          // DocumentRule::separator's line
  size_t block_bytes = 0;                         // text_block_bytes()
};

// Reads [begin, end) of `source` block by block and calls `on_block` with each block's pieces, in
// order: without a rule one piece, the block; with one, the documents' parts (break lines dropped),
// eod set after a document's last part. `state` carries across calls; a range that ends where the
// next line ends the open document (a blank or separator line at `end`) gives that document's
// end-of-document token to this range, as the split by text does.
void text_stream(const TextSource& source, size_t begin, size_t end, const TextStreamOptions& options,
                 DocumentState& state, const std::function<void(const std::vector<TextPiece>& pieces)>& on_block);

// The pieces of a block as work for the compute threads: each cut at "\n"s into parts of at most
// max(64 KiB, min(kTextPieceBytes, ceil(block / threads))) bytes (text_line_pieces; the end-of-document token
// on a piece's last part), the parts grouped into runs of about that size, one group a task. The
// groups' results joined in order are the pieces' whatever the thread count.
struct TextPieceGroups {
  std::vector<TextPiece> parts;                    // the pieces cut at "\n"s (eod on a piece's last part)
  std::vector<std::pair<size_t, size_t>> groups;   // [begin, end) of parts
};
TextPieceGroups text_piece_groups(const std::vector<TextPiece>& pieces, int threads);

}  // namespace uoe
