// Token streams over vectors and memory-mapped token files (see token_stream.hpp).
#include "runtime/token_stream.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <utility>

#include "runtime/error.hpp"

namespace uoe {

uint64_t DocumentWindows::start(uint64_t w) const {
  UOE_ASSERT(w < total(), "window ", w, " of ", total());
  // The document holding window w: the first whose cumulative count exceeds w.
  const size_t d = static_cast<size_t>(std::upper_bound(ends.begin(), ends.end(), w) - ends.begin());
  return first[d] + (w - (d == 0 ? 0 : ends[d - 1]));
}

TokenStream::TokenStream(std::vector<int32_t> ids) {
  if (ids.empty()) return;
  auto owned = std::make_shared<const std::vector<int32_t>>(std::move(ids));
  Segment s;
  s.bytes = reinterpret_cast<const unsigned char*>(owned->data());
  s.count = owned->size();
  s.dtype = 0;
  s.owner = std::move(owned);
  starts_.push_back(0);
  size_ = s.count;
  segs_.push_back(std::move(s));
}

TokenStream TokenStream::mapped(std::shared_ptr<const void> owner, const unsigned char* bytes, size_t count,
                                int dtype_bytes, uint32_t vocab_size, std::string label, uint64_t first_index,
                                uint64_t first_offset) {
  UOE_ASSERT(dtype_bytes == 2 || dtype_bytes == 4, "dtype ", dtype_bytes);
  TokenStream t;
  if (count == 0) return t;
  Segment s;
  s.owner = std::move(owner);
  s.bytes = bytes;
  s.count = count;
  s.dtype = dtype_bytes;
  s.vocab = vocab_size;
  s.label = std::make_shared<const std::string>(std::move(label));
  s.first_index = first_index;
  s.first_offset = first_offset;
  t.starts_.push_back(0);
  t.size_ = count;
  t.segs_.push_back(std::move(s));
  return t;
}

void TokenStream::copy_segment(const Segment& s, size_t begin, size_t count, int32_t* out) const {
  if (s.dtype == 0) {
    std::memcpy(out, s.bytes + begin * sizeof(int32_t), count * sizeof(int32_t));
    return;
  }
  const unsigned char* src = s.bytes + begin * static_cast<size_t>(s.dtype);
  const uint32_t V = s.vocab;
  uint32_t bad = 0;  // OR of (id >= V) flags: one branch per copy, not per token
  if (s.dtype == 2) {
    for (size_t i = 0; i < count; ++i) {
      uint16_t v;
      std::memcpy(&v, src + 2 * i, 2);
      if constexpr (std::endian::native == std::endian::big) v = static_cast<uint16_t>(src[2 * i] | src[2 * i + 1] << 8);
      out[i] = static_cast<int32_t>(v);
      bad |= static_cast<uint32_t>(v >= V);
    }
  } else {
    for (size_t i = 0; i < count; ++i) {
      uint32_t v;
      std::memcpy(&v, src + 4 * i, 4);
      if constexpr (std::endian::native == std::endian::big)
        v = static_cast<uint32_t>(src[4 * i]) | static_cast<uint32_t>(src[4 * i + 1]) << 8 |
            static_cast<uint32_t>(src[4 * i + 2]) << 16 | static_cast<uint32_t>(src[4 * i + 3]) << 24;
      out[i] = static_cast<int32_t>(v);
      bad |= static_cast<uint32_t>(v >= V);
    }
  }
  if (bad) {
    for (size_t i = 0; i < count; ++i)
      if (static_cast<uint32_t>(out[i]) >= V) {
        const uint64_t index = s.first_index + begin + i;
        fail(*s.label, ": token ", index, " (byte offset ", s.first_offset + (begin + i) * static_cast<size_t>(s.dtype),
             ") has id ", static_cast<uint32_t>(out[i]), ", not below the vocabulary size ", V, " (a damaged file)");
      }
  }
}

void TokenStream::copy(size_t begin, size_t count, int32_t* out) const {
  UOE_ASSERT(begin <= size_ && count <= size_ - begin, "tokens [", begin, ", ", begin + count, ") of ", size_);
  if (count == 0) return;
  // The segment holding `begin`: the last one starting at or before it.
  size_t k = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin()) - 1;
  while (count > 0) {
    const Segment& s = segs_[k];
    const size_t off = begin - starts_[k];
    const size_t n = std::min(count, s.count - off);
    copy_segment(s, off, n, out);
    out += n;
    begin += n;
    count -= n;
    ++k;
  }
}

size_t TokenStream::heap_ids() const {
  size_t n = 0;
  for (const Segment& s : segs_)
    if (s.dtype == 0) n += s.count;
  return n;
}

int32_t TokenStream::at(size_t i) const {
  int32_t v;
  copy(i, 1, &v);
  return v;
}

std::vector<int32_t> TokenStream::to_vector() const {
  std::vector<int32_t> out(size_);
  copy(0, size_, out.data());
  return out;
}

TokenStream TokenStream::slice(size_t begin, size_t count) const {
  UOE_ASSERT(begin <= size_ && count <= size_ - begin, "slice [", begin, ", ", begin + count, ") of ", size_);
  TokenStream t;
  if (count == 0) return t;
  size_t k = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin()) - 1;
  while (count > 0) {
    Segment s = segs_[k];
    const size_t off = begin - starts_[k];
    const size_t n = std::min(count, s.count - off);
    const size_t width = s.dtype == 0 ? sizeof(int32_t) : static_cast<size_t>(s.dtype);
    s.bytes += off * width;
    s.first_index += off;
    s.first_offset += off * width;
    s.count = n;
    t.starts_.push_back(t.size_);
    t.size_ += n;
    t.segs_.push_back(std::move(s));
    begin += n;
    count -= n;
    ++k;
  }
  return t;
}

void TokenStream::append(const TokenStream& other) {
  docs_.reset();  // the documents were this stream's alone
  for (const Segment& s : other.segs_) {
    starts_.push_back(size_);
    size_ += s.count;
    segs_.push_back(s);
  }
}

}  // namespace uoe
