// Token files and vocabulary files (format in token_file.hpp).
#include "runtime/token_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "runtime/atomic_file.hpp"
#include "runtime/error.hpp"
#include "runtime/tokenizer.hpp"

namespace uoe {

// ---------------------------------------------------------------------------------------------
// MappedFile

MappedFile::MappedFile(const std::string& path, const char* option) {
  // O_NONBLOCK: a FIFO named as a data file must not block the open (it is refused below).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail(option, " file '", path, "' cannot be opened for reading (", std::strerror(errno), ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(option, " file '", path, "': cannot stat (", std::strerror(err), ")");
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail(option, " '", path, "' is a directory; expected a file");
  }
  if (!S_ISREG(st.st_mode)) {  // a FIFO, socket or device: no size to check the contents against
    ::close(fd);
    fail(option, " '", path, "' is not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      size_ = 0;
      fail(option, " file '", path, "' cannot be memory-mapped (", std::strerror(err), ")");
    }
    // No madvise: training reads random windows, evaluation consecutive ones; the kernel's default
    // readahead serves both, and the pages stay shared in the page cache by every rank of a node.
    data_ = static_cast<const unsigned char*>(p);
  }
  ::close(fd);  // the mapping keeps the file
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (data_ != nullptr) ::munmap(const_cast<unsigned char*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Little-endian fields

namespace {

// The header's tokenizer field.
int tokenizer_code(TokenizerKind kind) {
  switch (kind) {
    case TokenizerKind::byte: return 0;
    case TokenizerKind::word: return 1;
    case TokenizerKind::sentencepiece: return 2;
  }
  return 0;
}

template <class T>
T load_le(const unsigned char* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
  return v;
}

template <class T>
void store_le(unsigned char* p, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

std::array<unsigned char, kTokenFileHeaderBytes> header_encode(const TokenFileHeader& h) {
  std::array<unsigned char, kTokenFileHeaderBytes> b{};
  std::memcpy(b.data(), kTokenFileMagic, 8);
  store_le<uint32_t>(b.data() + 8, h.version);
  store_le<uint16_t>(b.data() + 12, h.dtype_bytes);
  store_le<uint16_t>(b.data() + 14, static_cast<uint16_t>(tokenizer_code(h.tokenizer)));
  store_le<uint32_t>(b.data() + 16, h.vocab_size);
  store_le<uint32_t>(b.data() + 20, h.eod < 0 ? 0u : static_cast<uint32_t>(h.eod) + 1u);
  store_le<uint64_t>(b.data() + 24, h.tokens);
  store_le<uint64_t>(b.data() + 32, h.vocab_hash);
  return b;
}

// Printable form of the first bytes of a foreign file, for the "not a token file" message.
std::string bytes_shown(const unsigned char* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\') {
      s += static_cast<char>(p[i]);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", p[i]);
      s += buf;
    }
  }
  return s;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TokenFile

TokenFile::TokenFile(const std::string& path, const char* option)
    : path_(path), option_(option), map_(std::make_shared<const MappedFile>(path, option)) {
  const unsigned char* p = map_->data();
  const size_t size = map_->size();
  const std::string where = std::string(option) + " token file '" + path + "'";
  if (size < 8 || std::memcmp(p, kTokenFileMagic, 8) != 0)
    fail(where, ": not a uoe token file (it starts with \"", bytes_shown(p, std::min<size_t>(size, 8)),
         "\", expected the magic \"UOETOK01\"); prepare text with uoe-prepare, or give a text file "
         "whose name does not end in .tok");
  if (size < kTokenFileHeaderBytes)
    fail(where, ": truncated header (", size, " bytes; the header is ", kTokenFileHeaderBytes, ")");
  header_.version = load_le<uint32_t>(p + 8);
  if (header_.version != kTokenFileVersion)
    fail(where, ": format version ", header_.version, " is not supported (this build reads version ",
         kTokenFileVersion, "); prepare the data again with this build's uoe-prepare");
  header_.dtype_bytes = load_le<uint16_t>(p + 12);
  if (header_.dtype_bytes != 2 && header_.dtype_bytes != 4)
    fail(where, ": unknown token dtype code ", header_.dtype_bytes, " (expected 2 for uint16 or 4 for uint32)");
  const uint16_t tok = load_le<uint16_t>(p + 14);
  if (tok > 2)
    fail(where, ": unknown tokenizer code ", tok, " (expected 0 for byte, 1 for word or 2 for sentencepiece)");
  header_.tokenizer = tok == 2 ? TokenizerKind::sentencepiece : tok == 1 ? TokenizerKind::word : TokenizerKind::byte;
  header_.vocab_size = load_le<uint32_t>(p + 16);
  header_.tokens = load_le<uint64_t>(p + 24);
  header_.vocab_hash = load_le<uint64_t>(p + 32);
  const uint32_t eod = load_le<uint32_t>(p + 20);
  if (header_.vocab_size == 0) fail(where, ": vocabulary size 0 in the header");
  if (eod > header_.vocab_size)
    fail(where, ": end-of-document id ", eod - 1, " is not below the vocabulary size ", header_.vocab_size);
  header_.eod = static_cast<int32_t>(eod) - 1;
  if (header_.tokenizer == TokenizerKind::byte && header_.vocab_size != (header_.eod < 0 ? 256u : 257u))
    fail(where, ": byte-level file with vocabulary size ", header_.vocab_size,
         " (byte level is 256, or 257 with the end-of-document token)");
  if (header_.tokenizer == TokenizerKind::byte && header_.eod >= 0 && header_.eod != 256)
    fail(where, ": byte-level end-of-document id ", header_.eod, " (it is 256)");
  if (header_.vocab_size > static_cast<uint32_t>(INT32_MAX))
    fail(where, ": vocabulary size ", header_.vocab_size, " does not fit 32-bit signed token ids");
  if (header_.dtype_bytes == 2 && header_.vocab_size > 65536)
    fail(where, ": uint16 tokens cannot hold the ids of a vocabulary of ", header_.vocab_size);
  const size_t payload = size - kTokenFileHeaderBytes;
  if (header_.tokens > payload / header_.dtype_bytes || payload != header_.tokens * header_.dtype_bytes)
    fail(where, ": the header says ", header_.tokens, " tokens of ", header_.dtype_bytes, " bytes (",
         static_cast<double>(header_.tokens) * header_.dtype_bytes, " bytes) but the file holds ", payload,
         " bytes after the header: ",
         payload < header_.tokens * static_cast<double>(header_.dtype_bytes) ? "truncated" : "trailing bytes",
         " (a partial copy or a damaged file?)");
}

void TokenFile::copy_tokens(size_t begin, size_t count, int32_t* out) const {
  UOE_ASSERT(begin <= size() && count <= size() - begin, "tokens [", begin, ", ", begin + count, ") of ", size());
  const unsigned char* src = map_->data() + kTokenFileHeaderBytes + begin * header_.dtype_bytes;
  const uint32_t V = header_.vocab_size;
  uint32_t bad = 0;  // OR of (id >= V) flags: one branch per file, not per token
  if (header_.dtype_bytes == 2) {
    for (size_t i = 0; i < count; ++i) {
      uint16_t v;
      std::memcpy(&v, src + 2 * i, 2);
      if constexpr (std::endian::native == std::endian::big) v = load_le<uint16_t>(src + 2 * i);
      out[i] = static_cast<int32_t>(v);
      bad |= static_cast<uint32_t>(v >= V);
    }
  } else {
    for (size_t i = 0; i < count; ++i) {
      uint32_t v;
      std::memcpy(&v, src + 4 * i, 4);
      if constexpr (std::endian::native == std::endian::big) v = load_le<uint32_t>(src + 4 * i);
      out[i] = static_cast<int32_t>(v);
      bad |= static_cast<uint32_t>(v >= V);
    }
  }
  if (bad) {
    for (size_t i = 0; i < count; ++i)
      if (static_cast<uint32_t>(out[i]) >= V)
        fail(option_, " token file '", path_, "': token ", begin + i, " has id ", static_cast<uint32_t>(out[i]),
             ", not below the vocabulary size ", V, " (a damaged file)");
  }
}

std::vector<int32_t> TokenFile::tokens(size_t begin, size_t count) const {
  std::vector<int32_t> out(count);
  copy_tokens(begin, count, out.data());
  return out;
}

TokenStream TokenFile::stream(size_t begin, size_t count) const {
  UOE_ASSERT(begin <= size() && count <= size() - begin, "tokens [", begin, ", ", begin + count, ") of ", size());
  const uint64_t offset = kTokenFileHeaderBytes + begin * header_.dtype_bytes;
  return TokenStream::mapped(map_, map_->data() + offset, count, header_.dtype_bytes, header_.vocab_size,
                             std::string(option_) + " token file '" + path_ + "'", begin, offset);
}

bool token_file_detect(const std::string& path) {
  if (ends_with(path, ".tok")) return true;
  std::ifstream in(path, std::ios::binary);
  char head[6] = {};
  if (!in.read(head, sizeof head)) return false;
  return std::memcmp(head, kTokenFileMagic, sizeof head) == 0;
}

// ---------------------------------------------------------------------------------------------
// Writing

// Files are replaced atomically and durably (runtime/atomic_file.hpp: a temporary in the same
// directory, fsync, rename over the target, fsync of the directory).

namespace {

// FNV-1a 64 of bytes: the shard index's header checksum.
uint64_t fnv1a(const unsigned char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Writes ids [0, n) that `fill(i0, m, out)` produces in chunks; returns the encoded header.
std::array<unsigned char, kTokenFileHeaderBytes> token_file_write_chunks(
    const std::string& path, size_t n, TokenizerKind tokenizer, uint32_t vocab_size, uint64_t vocab_hash, int32_t eod,
    const std::function<void(size_t, size_t, int32_t*)>& fill) {
  if (vocab_size == 0) fail("token file '", path, "': vocabulary size 0");
  TokenFileHeader h;
  h.dtype_bytes = vocab_size <= 65536 ? 2 : 4;
  h.tokenizer = tokenizer;
  h.vocab_size = vocab_size;
  h.tokens = n;
  h.vocab_hash = vocab_hash;
  h.eod = eod;
  AtomicFile out(path);
  const auto header = header_encode(h);
  out.write(header.data(), header.size());
  std::vector<unsigned char> buf;
  std::vector<int32_t> ids;
  constexpr size_t kChunk = size_t{1} << 20;
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    const size_t m = std::min(kChunk, n - i0);
    buf.resize(m * h.dtype_bytes);
    ids.resize(m);
    fill(i0, m, ids.data());
    for (size_t i = 0; i < m; ++i) {
      const int32_t id = ids[i];
      if (id < 0 || static_cast<uint32_t>(id) >= vocab_size)
        fail("token file '", path, "': token ", i0 + i, " has id ", id, ", outside the vocabulary [0, ", vocab_size, ")");
      if (h.dtype_bytes == 2) store_le<uint16_t>(buf.data() + 2 * i, static_cast<uint16_t>(id));
      else store_le<uint32_t>(buf.data() + 4 * i, static_cast<uint32_t>(id));
    }
    out.write(buf.data(), buf.size());
  }
  out.commit();
  return header;
}

}  // namespace

void token_file_write(const std::string& path, const int32_t* tokens, size_t n, TokenizerKind tokenizer,
                      uint32_t vocab_size, uint64_t vocab_hash, int32_t eod) {
  token_file_write_chunks(path, n, tokenizer, vocab_size, vocab_hash, eod, [tokens](size_t i0, size_t m, int32_t* out) {
    std::copy(tokens + i0, tokens + i0 + m, out);
  });
}

uint64_t vocab_hash(const Vocab& vocab) {
  if (vocab.kind == TokenizerKind::byte) return vocab.eod < 0 ? 0 : tokenizer_bytes_hash("byte <eod>");
  if (vocab.kind == TokenizerKind::sentencepiece) return tokenizer_bytes_hash(vocab.model);
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a offset basis
  auto mix = [&h](unsigned char c) {
    h ^= c;
    h *= 0x100000001b3ULL;  // FNV prime
  };
  for (const std::string& w : vocab.words) {
    const uint64_t len = w.size();
    for (int i = 0; i < 8; ++i) mix(static_cast<unsigned char>(len >> (8 * i)));
    for (char c : w) mix(static_cast<unsigned char>(c));
  }
  return h;
}

namespace {

// The prefix of a token file or index: without ".tok" or ".idx", a shard number "-NNNNN" (five or
// more digits) and a following ".train", ".val" or ".test".
std::string_view token_prefix(std::string_view p) {
  if (ends_with(p, ".tok") || ends_with(p, ".idx")) p.remove_suffix(4);
  size_t digits = 0;
  while (digits < p.size() && p[p.size() - 1 - digits] >= '0' && p[p.size() - 1 - digits] <= '9') ++digits;
  if (digits >= 5 && digits < p.size() && p[p.size() - 1 - digits] == '-') p.remove_suffix(digits + 1);
  for (std::string_view split : {".train", ".val", ".test"})
    if (ends_with(p, split)) {
      p.remove_suffix(split.size());
      break;
    }
  return p;
}

}  // namespace

std::string vocab_path_for(const std::string& token_path) {
  // string_view trimming: GCC 12 flags std::string::resize here with a false -Wrestrict at -O3.
  std::string out(token_prefix(token_path));
  out += ".vocab";
  return out;
}

std::string model_path_for(const std::string& token_path) {
  std::string out(token_prefix(token_path));
  out += ".model";
  return out;
}

std::string vocab_file_text(const Vocab& vocab) {
  UOE_ASSERT(vocab.kind == TokenizerKind::word, "vocabulary text of a non-word vocabulary");
  std::string text;
  for (const std::string& w : vocab.words) {
    for (char c : w) {
      if (c == '\\') text += "\\\\";
      else if (c == '\n') text += "\\n";
      else text += c;
    }
    text += '\n';
  }
  return text;
}

void vocab_file_write(const std::string& path, const Vocab& vocab) {
  if (vocab.kind != TokenizerKind::word) fail("vocabulary file '", path, "': only word-level vocabularies are written");
  const std::string text = vocab_file_text(vocab);
  AtomicFile out(path);
  out.write(text.data(), text.size());
  out.commit();
}

Vocab vocab_file_read(const std::string& path) {
  const MappedFile map(path, "vocabulary");
  return vocab_text_parse(std::string_view(reinterpret_cast<const char*>(map.data()), map.size()),
                          "vocabulary file '" + path + "'");
}

Vocab vocab_text_parse(std::string_view text, const std::string& source) {
  const std::string& path = source;
  Vocab vocab;
  vocab.kind = TokenizerKind::word;
  std::unordered_set<std::string_view> seen;
  size_t line_no = 0, i = 0;
  while (i < text.size()) {
    ++line_no;
    size_t end = text.find('\n', i);
    if (end == std::string_view::npos) end = text.size();  // a missing final newline is fine
    const std::string_view line = text.substr(i, end - i);
    i = end + 1;
    auto bad = [&](const char* what) {
      fail(path, " line ", line_no, " (id ", line_no - 1, "): ", what);
    };
    if (line.empty()) bad("empty line (every line is one word)");
    std::string word;
    for (size_t j = 0; j < line.size(); ++j) {
      const char c = line[j];
      if (c == '\r') bad("carriage return (the file must use \\n line ends; was it edited on Windows?)");
      if (c != '\\') {
        word += c;
        continue;
      }
      if (j + 1 == line.size()) bad("backslash at the end of the line (write a backslash as \\\\)");
      const char e = line[++j];
      if (e == '\\') word += '\\';
      else if (e == 'n') word += '\n';
      else bad("unknown escape (only \\\\ and \\n are escapes)");
    }
    vocab.words.push_back(std::move(word));
  }
  if (vocab.words.empty()) fail(path, " is empty");
  // Id 0 is what unknown words become; a file that starts otherwise was not written by uoe-prepare.
  if (vocab.words[0] != "<unk>")
    fail(path, " line 1 (id 0): '", vocab.words[0].substr(0, 40),
         vocab.words[0].size() > 40 ? "...' " : "' ", "where '<unk>' (the unknown word) must be");
  // Duplicates make the word -> id mapping ambiguous: check after reading (views into `words`
  // would dangle while it grows). "<eod>" is never a word of the text (word_tokenize splits "<"
  // off), so a vocabulary holding it has the end-of-document token (uoe-prepare --eod).
  for (size_t id = 0; id < vocab.words.size(); ++id) {
    if (vocab.words[id] == kEodWord) vocab.eod = static_cast<int32_t>(id);
    if (!seen.insert(vocab.words[id]).second)
      fail(path, " line ", id + 1, ": duplicate word '", vocab.words[id], "'");
  }
  return vocab;
}

// ---------------------------------------------------------------------------------------------
// Shards and their index

namespace {

constexpr const char* kIndexMagic = "uoe-token-index";
constexpr int kIndexVersion = 1;
constexpr int kIndexVersionEod = 2;  // with the "eod" line
constexpr int kIndexVersionDocuments = 3;  // with the "eod" and "documents" lines
constexpr char kDocumentsMagic[8] = {'U', 'O', 'E', 'D', 'O', 'C', '0', '1'};
constexpr size_t kDocumentsHeaderBytes = 24;

std::string hex16(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string shard_name(const std::string& stem_name, size_t i, size_t count) {
  if (count == 1) return stem_name + ".tok";
  char buf[32];
  std::snprintf(buf, sizeof buf, "-%05zu", i);
  return stem_name + buf + ".tok";
}

struct ShardLine {
  uint64_t tokens = 0, file_bytes = 0, header_hash = 0;
  std::string name;
};

}  // namespace

struct TokenShardWriter::Impl {
  std::string dir, stem_name;
  TokenizerKind tokenizer;
  uint32_t vocab_size;
  uint64_t vocab_hash, dtype, per_shard;  // bytes per id, ids per shard
  int32_t eod;
  std::unique_ptr<AtomicFile> shard;      // the open shard (null: none yet, or just closed)
  uint64_t in_shard = 0;                  // ids in the open shard
  std::vector<unsigned char> buf;         // encoded ids not yet written
  std::vector<ShardLine> lines;           // the closed shards
  std::vector<std::string> committed;     // files in place (removed again on an error)
  std::unique_ptr<AtomicFile> docs;       // the documents file (eod >= 0)
  std::string docs_buf;                   // starts not yet written
  uint64_t documents = 0;
  bool start_pending = true;              // the next id starts a document
  bool finished = false;

  std::string path_of(const std::string& name) const { return dir.empty() ? name : dir + "/" + name; }
  std::string name_of(size_t i) const { return shard_name(stem_name, i, i == 0 ? 1 : 2); }

  TokenFileHeader header(uint64_t tokens) const {
    TokenFileHeader h;
    h.dtype_bytes = static_cast<uint16_t>(dtype);
    h.tokenizer = tokenizer;
    h.vocab_size = vocab_size;
    h.tokens = tokens;
    h.vocab_hash = vocab_hash;
    h.eod = eod;
    return h;
  }
  void flush() {
    if (!buf.empty()) shard->write(buf.data(), buf.size());
    buf.clear();
  }
  void open_shard() {
    const size_t i = lines.size();
    if (i == 1) {  // a second shard: the first is shard 00000, not STEM.tok
      const std::string from = committed[0], to = path_of(shard_name(stem_name, 0, 2));
      rename_durably(from, to);
      committed[0] = to;
      lines[0].name = shard_name(stem_name, 0, 2);
    }
    shard = std::make_unique<AtomicFile>(path_of(name_of(i)));
    const auto h = header_encode(header(0));  // the token count is filled in by close_shard
    shard->write(h.data(), h.size());
    in_shard = 0;
  }
  void close_shard() {
    flush();
    const auto h = header_encode(header(in_shard));
    shard->write_at(0, h.data(), h.size());
    shard->commit();
    committed.push_back(shard->path());
    ShardLine line;
    line.name = name_of(lines.size());
    line.tokens = in_shard;
    line.file_bytes = kTokenFileHeaderBytes + in_shard * dtype;
    line.header_hash = fnv1a(h.data(), h.size());
    lines.push_back(std::move(line));
    shard.reset();
  }
  void put_start(uint64_t start) {
    unsigned char le[8];
    store_le<uint64_t>(le, start);
    docs_buf.append(reinterpret_cast<const char*>(le), sizeof le);
    ++documents;
    if (docs_buf.size() >= (size_t{1} << 20)) {
      docs->write(docs_buf);
      docs_buf.clear();
    }
  }
};

TokenShardWriter::TokenShardWriter(std::string stem, TokenizerKind tokenizer, uint32_t vocab_size, uint64_t vocab_hash,
                                   uint64_t shard_bytes, int32_t eod)
    : impl_(std::make_unique<Impl>()) {
  if (vocab_size == 0) fail("token file '", stem, ".tok': vocabulary size 0");
  Impl& w = *impl_;
  const std::filesystem::path stem_path(stem);
  w.dir = stem_path.parent_path().string();
  w.stem_name = stem_path.filename().string();
  w.tokenizer = tokenizer;
  w.vocab_size = vocab_size;
  w.vocab_hash = vocab_hash;
  w.dtype = vocab_size <= 65536 ? 2 : 4;
  w.per_shard = std::max<uint64_t>(1, shard_bytes / w.dtype);
  w.eod = eod;
  if (eod >= 0) {
    w.docs = std::make_unique<AtomicFile>(w.path_of(w.stem_name + ".docs"));
    w.docs->write(std::string(kDocumentsHeaderBytes, '\0'));  // filled in by finish()
  }
}

TokenShardWriter::~TokenShardWriter() {
  if (impl_ == nullptr || impl_->finished) return;
  // Nothing half-written: the open shard's and documents file's temporaries go with their
  // AtomicFile; shards already in place are whole, but without their index they are no dataset.
  for (const std::string& p : impl_->committed) {
    std::error_code ec;
    std::filesystem::remove(p, ec);
  }
}

void TokenShardWriter::append(const int32_t* ids, size_t n) {
  Impl& w = *impl_;
  UOE_ASSERT(!w.finished, "TokenShardWriter::append after finish");
  constexpr size_t kFlushBytes = size_t{4} << 20;
  for (size_t i = 0; i < n;) {
    if (w.shard == nullptr || w.in_shard == w.per_shard) {
      if (w.shard != nullptr) w.close_shard();
      w.open_shard();
    }
    const size_t m = static_cast<size_t>(std::min<uint64_t>(n - i, w.per_shard - w.in_shard));
    const size_t at = w.buf.size();
    w.buf.resize(at + m * w.dtype);
    unsigned char* out = w.buf.data() + at;
    for (size_t k = 0; k < m; ++k) {
      const int32_t id = ids[i + k];
      if (id < 0 || static_cast<uint32_t>(id) >= w.vocab_size)
        fail("token file '", w.shard->path(), "': token ", w.in_shard + k, " has id ", id,
             ", outside the vocabulary [0, ", w.vocab_size, ")");
      if (w.dtype == 2) store_le<uint16_t>(out + 2 * k, static_cast<uint16_t>(id));
      else store_le<uint32_t>(out + 4 * k, static_cast<uint32_t>(id));
      if (w.eod >= 0) {  // documents: 0, and the index after every eod but the last token
        if (w.start_pending) w.put_start(tokens_ + k);
        w.start_pending = id == w.eod;
      }
    }
    w.in_shard += m;
    tokens_ += m;
    i += m;
    if (w.buf.size() >= kFlushBytes) w.flush();
  }
}

std::vector<std::string> TokenShardWriter::finish(double source_bytes) {
  Impl& w = *impl_;
  UOE_ASSERT(!w.finished, "TokenShardWriter::finish twice");
  if (w.shard == nullptr && w.lines.empty()) w.open_shard();  // no ids: one empty shard
  if (w.shard != nullptr) w.close_shard();
  const std::string documents_name = w.stem_name + ".docs";
  uint64_t documents_hash = 0;
  if (w.eod >= 0) {
    w.docs->write(w.docs_buf);
    std::string().swap(w.docs_buf);
    unsigned char head[kDocumentsHeaderBytes];
    std::memcpy(head, kDocumentsMagic, sizeof kDocumentsMagic);
    store_le<uint64_t>(head + 8, w.documents);
    store_le<uint64_t>(head + 16, tokens_);
    w.docs->write_at(0, head, sizeof head);
    // The checksum covers the file from its header on: read it back (8 bytes a document).
    std::ifstream in(w.docs->temp_path(), std::ios::binary);
    uint64_t h = 0xcbf29ce484222325ULL;
    std::vector<char> chunk(size_t{1} << 20);
    uint64_t read = 0;
    while (in.read(chunk.data(), static_cast<std::streamsize>(chunk.size())) || in.gcount() > 0) {
      for (std::streamsize i = 0; i < in.gcount(); ++i) {
        h ^= static_cast<unsigned char>(chunk[static_cast<size_t>(i)]);
        h *= 0x100000001b3ULL;
      }
      read += static_cast<uint64_t>(in.gcount());
    }
    if (read != kDocumentsHeaderBytes + 8 * w.documents)
      fail("documents file '", w.docs->temp_path(), "': read back ", read, " bytes of ",
           kDocumentsHeaderBytes + 8 * w.documents);
    documents_hash = h;
    w.docs->commit();
    w.committed.push_back(w.docs->path());
  }
  std::ostringstream idx;
  idx << kIndexMagic << ' ' << (w.eod < 0 ? kIndexVersion : kIndexVersionDocuments) << '\n'
      << "tokenizer " << static_cast<unsigned>(w.tokenizer) << '\n'
      << "vocab_size " << w.vocab_size << '\n'
      << "vocab_hash " << hex16(w.vocab_hash) << '\n'
      << "dtype " << w.dtype << '\n'
      << "tokens " << tokens_ << '\n'
      << "source_bytes " << static_cast<uint64_t>(source_bytes) << '\n';
  if (w.eod >= 0) idx << "eod " << w.eod << '\n' << "documents " << w.documents << ' ' << hex16(documents_hash) << ' '
                      << documents_name << '\n';
  idx << "shards " << w.lines.size() << '\n';
  for (const ShardLine& l : w.lines)
    idx << "shard " << l.tokens << ' ' << l.file_bytes << ' ' << hex16(l.header_hash) << ' ' << l.name << '\n';
  std::vector<std::string> written = {w.path_of(w.stem_name + ".idx")};
  atomic_write_file(written[0], idx.str());
  written.insert(written.end(), w.committed.begin(), w.committed.end());
  w.finished = true;
  return written;
}

std::vector<std::string> token_shards_write(const std::string& stem, const TokenStream& ids, TokenizerKind tokenizer,
                                            uint32_t vocab_size, uint64_t vocab_hash, uint64_t shard_bytes,
                                            double source_bytes, int32_t eod) {
  TokenShardWriter writer(stem, tokenizer, vocab_size, vocab_hash, shard_bytes, eod);
  std::vector<int32_t> chunk;
  constexpr size_t kChunk = size_t{1} << 20;
  for (size_t i0 = 0; i0 < ids.size(); i0 += kChunk) {
    const size_t m = std::min(kChunk, ids.size() - i0);
    chunk.resize(m);
    ids.copy(i0, m, chunk.data());
    writer.append(chunk.data(), m);
  }
  return writer.finish(source_bytes);
}

std::vector<std::string> token_files_write(const Dataset& ds, const std::string& prefix, uint64_t shard_bytes) {
  const uint32_t V = static_cast<uint32_t>(ds.vocab.size());
  const uint64_t hash = vocab_hash(ds.vocab);
  const int32_t eod = ds.vocab.eod;
  std::vector<std::string> train =
      token_shards_write(prefix + ".train", ds.train, ds.vocab.kind, V, hash, shard_bytes, ds.train_bytes, eod);
  std::vector<std::string> val;
  try {
    val = token_shards_write(prefix + ".val", ds.val, ds.vocab.kind, V, hash, shard_bytes, ds.val_bytes, eod);
    if (ds.vocab.kind == TokenizerKind::word) {
      vocab_file_write(prefix + ".vocab", ds.vocab);
    } else if (ds.vocab.kind == TokenizerKind::sentencepiece) {
      AtomicFile out(prefix + ".model");
      out.write(ds.vocab.model.data(), ds.vocab.model.size());
      out.commit();
    }
  } catch (...) {
    for (const auto* files : {&train, &val})
      for (const std::string& p : *files) {
        std::error_code ec;
        std::filesystem::remove(p, ec);
      }
    throw;
  }
  std::vector<std::string> written = {train[0], val[0]};
  if (ds.vocab.kind == TokenizerKind::word) written.push_back(prefix + ".vocab");
  if (ds.vocab.kind == TokenizerKind::sentencepiece) written.push_back(prefix + ".model");
  written.insert(written.end(), train.begin() + 1, train.end());
  written.insert(written.end(), val.begin() + 1, val.end());
  return written;
}

bool token_index_detect(const std::string& path) {
  if (ends_with(path, ".idx")) return true;
  std::ifstream in(path, std::ios::binary);
  char head[15] = {};
  if (!in.read(head, sizeof head)) return false;
  return std::memcmp(head, kIndexMagic, sizeof head) == 0;
}

PreparedSplit prepared_open(const std::string& path, const char* option) {
  PreparedSplit out;
  if (!token_index_detect(path)) {
    const TokenFile f(path, option);
    out.header = f.header();
    out.tokens = f.stream(0, f.size());
    if (out.header.tokenizer == TokenizerKind::byte) out.source_bytes = static_cast<double>(f.size());
    out.summary = path + " (prepared, " + (out.header.dtype_bytes == 2 ? "uint16" : "uint32") + ")";
    return out;
  }
  namespace fs = std::filesystem;
  const MappedFile map(path, option);
  const std::string_view text(reinterpret_cast<const char*>(map.data()), map.size());
  const std::string where = std::string(option) + " shard index '" + path + "'";
  if (text.empty()) fail(where, ": empty file");
  std::vector<std::string_view> lines;
  for (size_t i = 0; i < text.size();) {
    size_t end = text.find('\n', i);
    if (end == std::string_view::npos) end = text.size();
    lines.push_back(text.substr(i, end - i));
    i = end + 1;
  }
  size_t at = 0;
  // "key value" on line `at`; the value as text.
  auto field = [&](std::string_view key) -> std::string {
    if (at >= lines.size()) fail(where, ": ends before the '", key, "' line (a truncated index?)");
    const std::string_view line = lines[at++];
    if (line.size() <= key.size() || line.substr(0, key.size()) != key || line[key.size()] != ' ')
      fail(where, " line ", at, ": expected '", key, " ...', found '", line.substr(0, 60), "'");
    return std::string(line.substr(key.size() + 1));
  };
  auto number = [&](std::string_view key, int base = 10) -> uint64_t {
    const std::string v = field(key);
    char* end = nullptr;
    errno = 0;
    const unsigned long long x = std::strtoull(v.c_str(), &end, base);
    if (v.empty() || *end != '\0' || errno != 0 || v[0] == '-')
      fail(where, " line ", at, ": '", key, "' is not a number: '", v, "'");
    return x;
  };
  if (lines[0].substr(0, std::string_view(kIndexMagic).size()) != kIndexMagic)
    fail(where, ": not a uoe shard index (the first line is not '", kIndexMagic, " 1'); prepare data with uoe-prepare");
  const uint64_t version = number(kIndexMagic);
  if (version != kIndexVersion && version != kIndexVersionEod && version != kIndexVersionDocuments)
    fail(where, ": index version ", version, " is not supported (this build reads versions ", kIndexVersion, " to ",
         kIndexVersionDocuments, ")");
  const uint64_t tokenizer = number("tokenizer");
  const uint64_t vocab_size = number("vocab_size");
  const uint64_t vhash = number("vocab_hash", 16);
  const uint64_t dtype = number("dtype");
  const uint64_t total = number("tokens");
  out.source_bytes = static_cast<double>(number("source_bytes"));
  const int64_t eod = version != kIndexVersion ? static_cast<int64_t>(number("eod")) : -1;
  if (eod >= static_cast<int64_t>(vocab_size)) fail(where, ": eod ", eod, " is not below vocab_size ", vocab_size);
  const std::string dir = fs::path(path).parent_path().string();
  if (version == kIndexVersionDocuments) {
    const std::string v = field("documents");
    std::istringstream in(v);
    std::string hash_hex, name;
    if (!(in >> out.documents >> hash_hex) || in.get() != ' ' || !std::getline(in, name) || name.empty() ||
        name.find('/') != std::string::npos || hash_hex.size() != 16)
      fail(where, " line ", at, ": expected 'documents COUNT HASH NAME' with a file name in the index's directory");
    out.documents_hash = std::strtoull(hash_hex.c_str(), nullptr, 16);
    out.documents_path = dir.empty() ? name : dir + "/" + name;
  }
  const uint64_t count = number("shards");
  if (count == 0 || count > lines.size()) fail(where, ": ", count, " shards listed, but ", lines.size() - at, " lines follow");
  uint64_t sum = 0;
  for (uint64_t i = 0; i < count; ++i) {
    ShardLine l;
    const std::string v = field("shard");
    std::istringstream in(v);
    std::string hash_hex;
    if (!(in >> l.tokens >> l.file_bytes >> hash_hex) || in.get() != ' ' || !std::getline(in, l.name) || l.name.empty() ||
        l.name.find('/') != std::string::npos)
      fail(where, " line ", at, ": expected 'shard TOKENS BYTES HEADER_HASH NAME' with a file name in the index's directory");
    l.header_hash = std::strtoull(hash_hex.c_str(), nullptr, 16);
    const std::string shard_path = dir.empty() ? l.name : dir + "/" + l.name;
    const std::string shard_where = where + ", shard " + std::to_string(i) + " '" + shard_path + "'";
    std::error_code ec;
    if (!fs::exists(shard_path, ec)) fail(shard_where, ": missing (the index lists it; copy every shard with the index)");
    const uint64_t size = fs::file_size(shard_path, ec);
    if (ec || size != l.file_bytes)
      fail(shard_where, ": ", size, " bytes where the index says ", l.file_bytes, " (", size < l.file_bytes ? "truncated" : "grown",
           "; a partial copy or a file from another preparation?)");
    const TokenFile f(shard_path, option);
    {
      std::array<unsigned char, kTokenFileHeaderBytes> raw{};
      std::ifstream h(shard_path, std::ios::binary);
      h.read(reinterpret_cast<char*>(raw.data()), raw.size());
      if (fnv1a(raw.data(), raw.size()) != l.header_hash)
        fail(shard_where, ": its header checksum differs from the index's (a shard of another preparation?)");
    }
    const TokenFileHeader& fh = f.header();
    if (static_cast<uint64_t>(fh.tokenizer) != tokenizer || fh.vocab_size != vocab_size || fh.vocab_hash != vhash ||
        fh.dtype_bytes != dtype || fh.tokens != l.tokens || fh.eod != eod)
      fail(shard_where, ": header (tokenizer ", static_cast<unsigned>(fh.tokenizer), ", V=", fh.vocab_size, ", dtype ",
           fh.dtype_bytes, ", ", fh.tokens, " tokens, eod ", fh.eod, ") disagrees with the index (tokenizer ", tokenizer,
           ", V=", vocab_size, ", dtype ", dtype, ", ", l.tokens, " tokens, eod ", eod, ")");
    if (i == 0) out.header = fh;
    out.tokens.append(f.stream(0, f.size()));
    sum += l.tokens;
  }
  if (at != lines.size() && !(at + 1 == lines.size() && lines[at].empty()))
    fail(where, " line ", at + 1, ": unexpected text after the ", count, " shard lines");
  if (sum != total) fail(where, ": the shards hold ", sum, " tokens but the index says ", total);
  out.header.tokens = total;
  if (!out.documents_path.empty())
    out.documents_label = std::string(option) + " documents file '" + out.documents_path + "' (listed in '" + path + "')";
  out.summary = path + " (prepared, " + std::to_string(count) + (count == 1 ? " shard, " : " shards, ") +
                (dtype == 2 ? "uint16" : "uint32") + ")";
  return out;
}

std::vector<uint64_t> prepared_document_starts(const PreparedSplit& split, const char* option) {
  UOE_ASSERT(!split.documents_path.empty(), "a split without a documents file");
  const std::string& where = split.documents_label;
  const MappedFile map(split.documents_path, option);
  const unsigned char* p = map.data();
  if (map.size() < kDocumentsHeaderBytes || std::memcmp(p, kDocumentsMagic, sizeof kDocumentsMagic) != 0)
    fail(where, ": not a documents file (no 'UOEDOC01' header)");
  const uint64_t count = load_le<uint64_t>(p + 8), tokens = load_le<uint64_t>(p + 16);
  if (count != split.documents || tokens != split.header.tokens)
    fail(where, ": holds ", count, " documents of ", tokens, " tokens where the index says ", split.documents, " of ",
         split.header.tokens, " (a file of another preparation?)");
  if (count > (map.size() - kDocumentsHeaderBytes) / 8 || map.size() != kDocumentsHeaderBytes + count * 8)
    fail(where, ": ", map.size(), " bytes where ", count, " documents take ", kDocumentsHeaderBytes + count * 8,
         " (truncated or grown)");
  if (fnv1a(p, map.size()) != split.documents_hash)
    fail(where, ": its checksum differs from the index's (a damaged file, or one of another preparation)");
  std::vector<uint64_t> starts(count);
  for (uint64_t d = 0; d < count; ++d) {
    starts[d] = load_le<uint64_t>(p + kDocumentsHeaderBytes + 8 * d);
    if ((d == 0 && starts[d] != 0) || (d > 0 && starts[d] <= starts[d - 1]) || starts[d] >= tokens)
      fail(where, ": document ", d, " starts at token ", starts[d],
           " (starts must increase from 0 and lie below the ", tokens, " tokens)");
  }
  return starts;
}

}  // namespace uoe
