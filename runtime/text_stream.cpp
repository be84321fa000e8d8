// Streaming text (see text_stream.hpp).
#include "runtime/text_stream.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "runtime/error.hpp"
#include "runtime/tokenizer.hpp"

namespace uoe {

// ---------------------------------------------------------------------------------------------
// TextSource

TextSource::TextSource(const std::vector<std::string>& files, const char* option, bool join) : option_(option) {
  files_.reserve(files.size());  // no reallocation: open_file_ points into files_
  for (size_t i = 0; i < files.size(); ++i) {
    File f;
    f.path = files[i];
    struct stat st {};
    if (::stat(f.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      // Missing, a directory, a pipe...: data_read_text says which (and reads a pipe whole).
      f.memory = data_read_text(f.path, option);
      f.in_memory = true;
      f.size = f.memory.size();
    } else {
      const int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) fail(option, " file '", f.path, "' cannot be opened for reading (", std::strerror(errno), ")");
      ::close(fd);
      f.size = static_cast<size_t>(st.st_size);
      if (f.size == 0) fail(option, " file '", f.path, "' is empty");
    }
    // The "\n" joined between two files goes before the second (read_inputs' order: it begins
    // the second file's part of the text).
    bool lead = false;
    if (join && i > 0) {
      char last = 0;
      const File& prev = files_.back();
      read_file(prev, prev.size - 1, 1, &last);
      lead = last != '\n';
    }
    f.joined = lead;
    f.begin = size_ + (lead ? 1 : 0);
    size_ = f.begin + f.size;
    ends_.push_back(size_);
    files_.push_back(std::move(f));
  }
}

TextSource::TextSource(std::string text, std::string label) {
  File f;
  f.path = std::move(label);
  f.size = text.size();
  f.memory = std::move(text);
  f.in_memory = true;
  size_ = f.size;
  ends_.push_back(size_);
  files_.push_back(std::move(f));
}

TextSource::~TextSource() {
  if (open_fd_ >= 0) ::close(open_fd_);
}

void TextSource::read_file(const File& f, size_t from, size_t n, char* out) const {
  if (n == 0) return;
  if (f.in_memory) {
    std::memcpy(out, f.memory.data() + from, n);
    return;
  }
  if (open_file_ != &f) {
    if (open_fd_ >= 0) ::close(open_fd_);
    open_file_ = nullptr;
    open_fd_ = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (open_fd_ < 0) fail(option_, " file '", f.path, "' cannot be opened for reading (", std::strerror(errno), ")");
    open_file_ = &f;
  }
  const int fd = open_fd_;
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd, out + done, n - done, static_cast<off_t>(from + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      const int err = errno;
      if (r == 0)
        fail(option_, " file '", f.path, "' ends at byte ", from + done, " but had ", f.size,
             " bytes when uoe-prepare started: it changed while being read");
      fail(option_, " file '", f.path, "': read error at byte ", from + done, " (", std::strerror(err), ")");
    }
    done += static_cast<size_t>(r);
  }
  // Binary: text never holds a NUL byte (data_read_text's rule and message).
  if (const void* nul = std::memchr(out, '\0', n); nul != nullptr)
    fail(option_, " file '", f.path, "' is binary, not text: a NUL byte at offset ",
         from + static_cast<size_t>(static_cast<const char*>(nul) - out),
         " (uoe-prepare and uoe-train read UTF-8 or other ASCII-compatible text; a prepared token file is named "
         "*.tok or *.idx)");
}

void TextSource::read(size_t offset, size_t n, std::string& out) const {
  UOE_ASSERT(offset <= size_ && n <= size_ - offset, "bytes [", offset, ", ", offset + n, ") of ", size_);
  out.resize(n);
  const size_t end = offset + n;
  // The first file whose part of the text (its joined "\n" included) reaches past offset.
  size_t i = static_cast<size_t>(std::upper_bound(ends_.begin(), ends_.end(), offset) - ends_.begin());
  for (size_t at = offset; at < end; ++i) {
    const File& f = files_[i];
    if (f.joined && at == f.begin - 1) out[at++ - offset] = '\n';
    const size_t m = std::min(end, f.begin + f.size) - at;
    read_file(f, at - f.begin, m, out.data() + (at - offset));
    at += m;
  }
}

size_t TextSource::find_newline(size_t from, size_t limit) const {
  std::string buf;
  constexpr size_t kChunk = size_t{1} << 16;
  limit = std::min(limit, size_);
  for (size_t at = from; at < limit; at += kChunk) {
    read(at, std::min(kChunk, limit - at), buf);
    const size_t k = buf.find('\n');
    if (k != std::string::npos) return at + k;
  }
  return std::string::npos;
}

size_t TextSource::rfind_newline(size_t pos) const {
  std::string buf;
  constexpr size_t kChunk = size_t{1} << 16;
  for (size_t end = std::min(pos + 1, size_); end > 0;) {
    const size_t begin = end > kChunk ? end - kChunk : 0;
    read(begin, end - begin, buf);
    const size_t k = buf.rfind('\n');
    if (k != std::string::npos) return begin + k;
    end = begin;
  }
  return std::string::npos;
}

// ---------------------------------------------------------------------------------------------
// Blocks and documents

size_t text_block_bytes(int threads, size_t min_bytes) {
  size_t bytes = static_cast<size_t>(std::max(1, threads)) * kTextPieceBytes;
  // Tests only (tests/cli/prepare_stream.py): a block of a few bytes cuts every line.
  if (const char* env = std::getenv("UOE_PREPARE_BLOCK_BYTES"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const unsigned long long v = std::strtoull(env, &end, 10);
    if (*end != '\0' || v == 0) fail("UOE_PREPARE_BLOCK_BYTES must be a positive number of bytes, got '", env, "'");
    bytes = static_cast<size_t>(v);
  }
  return std::max(bytes, min_bytes);
}

namespace {

// A blank line ends a document (--eod blank-line); a line that is exactly the separator (before
// "\n" or "\r\n") does (--eod-separator). Both are dropped.
bool breaks_document(std::string_view line, const TextStreamOptions& o) {
  if (o.rule == DocumentRule::blank_line) return line == "\n" || line == "\r\n";
  if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  return line == o.separator;
}

}  // namespace

void text_stream(const TextSource& source, size_t begin, size_t end, const TextStreamOptions& o, DocumentState& state,
                 const std::function<void(const std::vector<TextPiece>& pieces)>& on_block) {
  const std::vector<size_t>& ends = source.file_ends();
  // A line a block cuts is longer than the block: never a break line when the block is longer.
  size_t block = o.block_bytes;
  if (o.rule == DocumentRule::blank_line || o.rule == DocumentRule::separator)
    block = std::max(block, o.separator.size() + 3);
  const auto file_end_after = [&ends](size_t pos) {  // the end of the file that holds byte pos
    return *std::upper_bound(ends.begin(), ends.end(), pos);
  };
  std::string buf;
  std::vector<TextPiece> pieces;
  for (size_t pos = begin; pos < end;) {
    size_t cut = 0;
    bool mid = false;  // the block ends inside a line
    for (size_t window = block;; window *= 2) {
      const size_t limit = std::min(end, pos + window);
      source.read(pos, limit - pos, buf);
      if (limit == end) {
        cut = end;
        break;
      }
      // The last line end in (pos, limit]: after a "\n", or a file's end.
      const size_t nl = buf.rfind('\n');
      cut = nl == std::string::npos ? pos : pos + nl + 1;
      const auto fe = std::upper_bound(ends.begin(), ends.end(), limit);
      if (fe != ends.begin() && *(fe - 1) > cut) cut = *(fe - 1);
      if (cut > pos) break;
      if (o.tokenizer == TokenizerKind::byte) {
        cut = limit;
        mid = true;
        break;
      }
      if (o.tokenizer == TokenizerKind::word) {
        size_t k = buf.size();
        while (k > 0 && word_byte(static_cast<unsigned char>(buf[k - 1]))) --k;
        if (k > 0) {
          cut = pos + k;
          mid = true;
          break;
        }
      }
    }
    buf.resize(cut - pos);
    const std::string_view text(buf);
    const auto at = [&](size_t b, size_t e) { return text.substr(b - pos, e - b); };
    pieces.clear();
    if (o.rule == DocumentRule::none) {
      pieces.push_back({text, false});
    } else if (o.rule == DocumentRule::file) {
      for (size_t i = pos; i < cut;) {
        const size_t fe = file_end_after(i), e = std::min(fe, cut);
        pieces.push_back({at(i, e), fe <= cut});
        state.ended += fe <= cut;
        i = e;
      }
    } else {
      size_t doc = pos;  // where the open document's part in this block starts
      for (size_t i = pos; i < cut;) {
        const size_t fe = file_end_after(i), lim = std::min(fe, cut);
        const size_t k = text.find('\n', i - pos);
        const size_t le = k == std::string_view::npos || pos + k >= lim ? lim : pos + k + 1;
        const bool content = (i == pos && state.mid_line) || (le == cut && mid) || !breaks_document(at(i, le), o);
        if (content && !state.open) {
          state.open = true;
          doc = i;
        } else if (!content && state.open) {
          pieces.push_back({at(doc, i), true});
          state.open = false;
          ++state.ended;
        }
        if (le == fe && state.open) {
          pieces.push_back({at(doc, fe), true});
          state.open = false;
          ++state.ended;
        }
        i = le;
      }
      if (state.open && doc < cut) pieces.push_back({at(doc, cut), false});
    }
    state.mid_line = mid;
    on_block(pieces);
    pos = cut;
  }
  // A range that ends where a break line follows: the open document ends here (its token is this
  // range's, as in the split by text).
  if ((o.rule == DocumentRule::blank_line || o.rule == DocumentRule::separator) && state.open && end < source.size()) {
    const size_t fe = file_end_after(end);
    const size_t limit = std::min(fe, end + o.separator.size() + 3);
    source.read(end, limit - end, buf);
    const size_t k = buf.find('\n');
    if (k != std::string::npos || limit == fe) {
      if (k != std::string::npos) buf.resize(k + 1);
      if (breaks_document(buf, o)) {
        pieces.assign(1, TextPiece{std::string_view(), true});
        state.open = false;
        ++state.ended;
        on_block(pieces);
      }
    }
  }
}

TextPieceGroups text_piece_groups(const std::vector<TextPiece>& pieces, int threads) {
  size_t total = 0;
  for (const TextPiece& p : pieces) total += p.text.size();
  const size_t parts = static_cast<size_t>(std::max(1, threads));
  // Parts of at least 64 KiB: a small block (a test's) is one task, not a team of threads woken.
  const size_t step = std::max<size_t>(size_t{1} << 16, std::min(kTextPieceBytes, (total + parts - 1) / parts));
  TextPieceGroups g;
  for (const TextPiece& p : pieces) {
    const std::vector<std::string_view> cut = text_line_pieces(p.text, 1, step);
    for (std::string_view t : cut) g.parts.push_back({t, false});
    if (cut.empty()) g.parts.push_back({std::string_view(), false});
    g.parts.back().eod = p.eod;
  }
  for (size_t i = 0; i < g.parts.size();) {
    size_t j = i, bytes = 0;
    while (j < g.parts.size() && (j == i || bytes + g.parts[j].text.size() <= step)) bytes += g.parts[j++].text.size();
    g.groups.emplace_back(i, j);
    i = j;
  }
  return g;
}

}  // namespace uoe
