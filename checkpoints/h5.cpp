#include "checkpoints/h5.hpp"

#include "checkpoints/fletcher32.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <system_error>

namespace uoe::h5 {
namespace {

// About 1 MiB per chunk: big enough that per-chunk overhead (index entry, Fletcher32 pass) is
// negligible, small enough that a partial read (one rank's experts out of a wider slab) reads
// little it does not need.
constexpr int64_t kChunkBytes = int64_t{1} << 20;

// Bounds on what an attribute read from a file may hold, checked before allocating for it: a
// damaged or forged file must give an error, not a huge allocation. Far above anything written
// (shapes have a few values; the longest string is the config INI, a few KB).
constexpr hssize_t kMaxAttributeValues = 1 << 16;
constexpr size_t kMaxAttributeStringBytes = size_t{1} << 24;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

hid_t file_type(Elem e) {
  switch (e) {
    case Elem::f32: return H5T_IEEE_F32LE;
    case Elem::i64: return H5T_STD_I64LE;
    case Elem::u64: return H5T_STD_U64LE;
    case Elem::u8: return H5T_STD_U8LE;
  }
  UOE_ASSERT(false, "unknown Elem");
}
hid_t mem_type(Elem e) {
  switch (e) {
    case Elem::f32: return H5T_NATIVE_FLOAT;
    case Elem::i64: return H5T_NATIVE_INT64;
    case Elem::u64: return H5T_NATIVE_UINT64;
    case Elem::u8: return H5T_NATIVE_UINT8;
  }
  UOE_ASSERT(false, "unknown Elem");
}
const char* elem_name(Elem e) {
  switch (e) {
    case Elem::f32: return "float32";
    case Elem::i64: return "int64";
    case Elem::u64: return "uint64";
    case Elem::u8: return "uint8";
  }
  return "?";
}
size_t elem_size(Elem e) { return e == Elem::f32 ? 4 : e == Elem::u8 ? 1 : 8; }

// "float32", "int16", "uint8", "string", ... for a stored type.
std::string describe_type(hid_t t) {
  const H5T_class_t cls = H5Tget_class(t);
  const size_t bits = H5Tget_size(t) * 8;
  switch (cls) {
    case H5T_FLOAT: return "float" + std::to_string(bits);
    case H5T_INTEGER: return (H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ARRAY: return "array";
    default: return "HDF5 type class " + std::to_string(static_cast<int>(cls));
  }
}

std::string where_text(const std::string& file, const std::string& object) {
  return object.empty() ? file : file + " " + object;
}

herr_t collect_error(unsigned /*n*/, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  if (err && err->desc && *err->desc) out->emplace_back(err->desc);
  return 0;
}

// The messages of this thread's error stack, outermost first; clears the stack.
std::vector<std::string> stack_messages() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &msgs);
  H5Eclear2(H5E_DEFAULT);
  return msgs;
}

// Outermost (what the API call could not do) and innermost (why): the middle frames repeat them.
std::string stack_text(const std::vector<std::string>& msgs) {
  if (msgs.empty()) return "";
  if (msgs.size() == 1 || msgs.front() == msgs.back()) return msgs.front();
  return msgs.front() + ": " + msgs.back();
}

// HDF5's POSIX driver reports a failed system call inside its message: "file write failed: time =
// ..., errno = 28, error message = 'No space left on device', ...". Returns the OS's reason as
// "No space left on device (errno 28)", or "" when no message of the stack carries one.
std::string os_reason(const std::vector<std::string>& msgs) {
  for (auto it = msgs.rbegin(); it != msgs.rend(); ++it) {
    const size_t e = it->find("errno = ");
    const size_t m = it->find("error message = '");
    if (e == std::string::npos || m == std::string::npos) continue;
    const size_t text_begin = m + std::strlen("error message = '");
    const size_t text_end = it->find('\'', text_begin);
    if (text_end == std::string::npos) continue;
    size_t digits = e + std::strlen("errno = ");
    std::string number;
    while (digits < it->size() && std::isdigit(static_cast<unsigned char>((*it)[digits]))) number += (*it)[digits++];
    return it->substr(text_begin, text_end - text_begin) + (number.empty() ? "" : " (errno " + number + ")");
  }
  return "";
}

// A message up to its first ':' ("file write failed: time = ..., filename = ..." -> "file write
// failed"): the head of a driver message, without the addresses and timestamps that follow.
std::string message_head(const std::string& m) {
  const size_t colon = m.find(':');
  std::string head = colon == std::string::npos ? m : m.substr(0, colon);
  while (!head.empty() && std::isspace(static_cast<unsigned char>(head.back()))) head.pop_back();
  return head;
}

Space space_simple(const std::vector<int64_t>& dims, const std::string& file, const std::string& object) {
  std::vector<hsize_t> d(dims.begin(), dims.end());
  return Space(UOE_CHECK_H5(H5Screate_simple(static_cast<int>(d.size()), d.data(), nullptr), file, object));
}

Type string_type(size_t size, const std::string& file, const std::string& object) {
  Type t(UOE_CHECK_H5(H5Tcopy(H5T_C_S1), file, object));
  UOE_CHECK_H5(H5Tset_size(t.get(), std::max<size_t>(size, 1)), file, object);
  UOE_CHECK_H5(H5Tset_strpad(t.get(), H5T_STR_NULLTERM), file, object);
  return t;
}

void attr_write_raw(hid_t obj, const char* name, hid_t ftype, hid_t mtype, const void* data, size_t n, bool scalar,
                    const std::string& file, const std::string& where) {
  const std::string object = where + "@" + name;
  Space space = scalar ? Space(UOE_CHECK_H5(H5Screate(H5S_SCALAR), file, object))
                       : space_simple({static_cast<int64_t>(n)}, file, object);
  Attr a(UOE_CHECK_H5(H5Acreate2(obj, name, ftype, space.get(), H5P_DEFAULT, H5P_DEFAULT), file, object));
  UOE_CHECK_H5(H5Awrite(a.get(), mtype, data), file, object);
  a.close(file, object);
}

// Opens attribute `name`, checks its type class, returns it with its element count.
Attr attr_open(hid_t obj, const char* name, H5T_class_t want, const char* want_text, size_t* count,
               const std::string& file, const std::string& where) {
  const std::string object = where + "@" + name;
  if (UOE_CHECK_H5(H5Aexists(obj, name), file, object) == 0)
    ::uoe::fail(file, ": ", where, " has no attribute '", name, "'");
  Attr a(UOE_CHECK_H5(H5Aopen(obj, name, H5P_DEFAULT), file, object));
  Type t(UOE_CHECK_H5(H5Aget_type(a.get()), file, object));
  if (H5Tget_class(t.get()) != want)
    ::uoe::fail(file, ": attribute '", name, "' of ", where, " is ", describe_type(t.get()), ", expected ", want_text);
  Space s(UOE_CHECK_H5(H5Aget_space(a.get()), file, object));
  const hssize_t n = UOE_CHECK_H5(H5Sget_simple_extent_npoints(s.get()), file, object);
  // Before anything is allocated for it: the count comes from the file.
  if (n > kMaxAttributeValues)
    ::uoe::fail(file, ": attribute '", name, "' of ", where, " holds ", n, " values, more than the ",
                kMaxAttributeValues, " a checkpoint attribute may hold (damaged or forged file)");
  *count = static_cast<size_t>(n);
  return a;
}

template <class T>
std::vector<T> attr_read_numbers(hid_t obj, const char* name, H5T_class_t cls, const char* cls_text, hid_t mtype,
                                 const std::string& file, const std::string& where) {
  size_t n = 0;
  Attr a = attr_open(obj, name, cls, cls_text, &n, file, where);
  std::vector<T> v(n);
  if (n) UOE_CHECK_H5(H5Aread(a.get(), mtype, v.data()), file, where + "@" + name);
  return v;
}

template <class T>
T attr_read_scalar(hid_t obj, const char* name, H5T_class_t cls, const char* cls_text, hid_t mtype,
                   const std::string& file, const std::string& where) {
  const std::vector<T> v = attr_read_numbers<T>(obj, name, cls, cls_text, mtype, file, where);
  if (v.size() != 1)
    ::uoe::fail(file, ": attribute '", name, "' of ", where, " holds ", v.size(), " values, expected 1");
  return v[0];
}

}  // namespace

void init_thread() {
  // Once per process, before the library initialises: no HDF5 clean-up at exit. After a write
  // fails (full disk, file-size limit) HDF5 cannot close the file, and its exit-time clean-up then
  // crashes on it (HDF5 1.10: H5F__close_cb), turning a reported error into a segfault. Every file
  // is closed explicitly on the paths that succeed, so the clean-up has nothing else to do.
  static const bool no_atexit = [] {
    H5dont_atexit();
    return true;
  }();
  (void)no_atexit;
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

bool library_threadsafe() {
  hbool_t ts = 0;
  return H5is_library_threadsafe(&ts) >= 0 && ts;
}

std::string error_stack_text() { return stack_text(stack_messages()); }

void fail_call(const char* call, const char* src_file, int src_line, const std::string& file, const std::string& object) {
  const std::vector<std::string> msgs = stack_messages();
  const std::string text = stack_text(msgs);
  const std::string l = lower(text);
  const std::string os_error = os_reason(msgs);
  const std::string hdf5 = text.empty() ? "" : " (HDF5: " + text + ")";
  std::ostringstream os;
  if (l.find("checksum") != std::string::npos) {
    os << "checksum mismatch in " << file;
    if (!object.empty()) os << " dataset " << object;
    os << ": the file is corrupt" << hdf5;
  } else if (l.find("truncated file") != std::string::npos) {
    os << file << " is truncated (shorter than HDF5 says it should be)" << hdf5;
  } else if (l.find("signature") != std::string::npos) {
    os << file << " is not an HDF5 file, or its header is damaged" << hdf5;
  } else if (!os_error.empty()) {
    // A system call failed under HDF5 (a full disk, a file-size limit, a directory that is not
    // one): say so in plain words, with the OS's reason first and HDF5's context after.
    const std::string inner = lower(msgs.back());
    const std::string c = call;
    const char* op = c.find("H5Fcreate") != std::string::npos ? "cannot create"
                     : inner.find("write") != std::string::npos ? "cannot write"
                     : inner.find("read") != std::string::npos  ? "cannot read"
                     : inner.find("open") != std::string::npos  ? "cannot open"
                                                                : "I/O error on";
    os << op << " " << file;
    if (!object.empty()) os << " (at " << object << ")";
    os << ": " << os_error << " (HDF5: " << msgs.front();
    if (msgs.size() > 1) os << ": " << message_head(msgs.back());
    os << ")";
  } else {
    // Not a damaged file: name the call and where it was made, for whoever debugs it.
    os << "HDF5 call " << call << " failed on " << where_text(file, object) << hdf5 << " [" << src_file << ":"
       << src_line << "]";
  }
  throw Error(os.str());
}

// ---- files and groups ----------------------------------------------------------------------------

namespace {
// File access: no HDF5 file locks. The checkpoint protocol never has two processes on one file
// (each shard has one writer; readers come after the commit), and flock() fails on some parallel
// filesystems (Lustre or NFS mounted without locking), where H5Fopen would then fail.
Plist file_access(const std::string& path) {
  Plist fapl(UOE_CHECK_H5(H5Pcreate(H5P_FILE_ACCESS), path, ""));
  UOE_CHECK_H5(H5Pset_file_locking(fapl.get(), false, true), path, "");
  return fapl;
}
}  // namespace

File file_create(const std::string& path) {
  Plist fapl = file_access(path);
  // The 1.10 formats, pinned (low = high): version-2 object headers, which carry checksums, and
  // the 1.10 chunk indexes (a single-chunk dataset needs no B-tree node: files ~2x smaller than
  // with 1.8 formats for small tensors). Pinning the high bound keeps files readable by 1.10 tools
  // (h5dump/h5ls of Debian 12) even when uoe is built against a newer HDF5.
  UOE_CHECK_H5(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110), path, "");
  return File(UOE_CHECK_H5(H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl.get()), path, ""));
}

File file_open(const std::string& path, bool writable) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (st.type() == std::filesystem::file_type::not_found) ::uoe::fail(path, ": no such file");
  if (!std::filesystem::is_regular_file(st)) ::uoe::fail(path, ": not a regular file");
  if (std::filesystem::file_size(path, ec) == 0 && !ec)
    ::uoe::fail(path, " is empty (0 bytes), not an HDF5 file (a write that never completed?)");
  const Plist fapl = file_access(path);
  return File(UOE_CHECK_H5(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.get()), path, ""));
}

Group group_create(hid_t loc, const std::string& name, const std::string& file) {
  return Group(UOE_CHECK_H5(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), file, name));
}

Group group_open(hid_t loc, const std::string& name, const std::string& file) {
  if (!link_exists(loc, name, file)) ::uoe::fail(file, ": group ", name, " is missing");
  return Group(UOE_CHECK_H5(H5Gopen2(loc, name.c_str(), H5P_DEFAULT), file, name));
}

bool link_exists(hid_t loc, const std::string& path, const std::string& file) {
  // H5Lexists fails (rather than returning false) when an intermediate group is missing, so walk
  // the path one component at a time.
  std::string prefix;
  size_t start = path.starts_with("/") ? 1 : 0;
  if (start) prefix = "/";
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) {
      prefix += path.substr(start, end - start);
      if (UOE_CHECK_H5(H5Lexists(loc, prefix.c_str(), H5P_DEFAULT), file, prefix) <= 0) return false;
      prefix += "/";
    }
    start = end + 1;
  }
  return true;
}

std::vector<std::string> group_members(hid_t loc, const std::string& file, const std::string& group_name) {
  H5G_info_t info;
  UOE_CHECK_H5(H5Gget_info(loc, &info), file, group_name);
  std::vector<std::string> names;
  names.reserve(info.nlinks);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = UOE_CHECK_H5(
        H5Lget_name_by_idx(loc, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT), file, group_name);
    std::string name(static_cast<size_t>(len) + 1, '\0');
    UOE_CHECK_H5(H5Lget_name_by_idx(loc, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT),
                 file, group_name);
    name.resize(static_cast<size_t>(len));
    names.push_back(std::move(name));
  }
  return names;
}

// ---- attributes ----------------------------------------------------------------------------------

void attr_write_i64(hid_t obj, const char* name, int64_t v, const std::string& file, const std::string& where) {
  attr_write_raw(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v, 1, true, file, where);
}
void attr_write_i64s(hid_t obj, const char* name, const std::vector<int64_t>& v, const std::string& file,
                     const std::string& where) {
  UOE_ASSERT(!v.empty(), "empty attribute ", name);
  attr_write_raw(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, v.data(), v.size(), false, file, where);
}
void attr_write_u64(hid_t obj, const char* name, uint64_t v, const std::string& file, const std::string& where) {
  attr_write_raw(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &v, 1, true, file, where);
}
void attr_write_f64(hid_t obj, const char* name, double v, const std::string& file, const std::string& where) {
  attr_write_raw(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v, 1, true, file, where);
}
void attr_write_str(hid_t obj, const char* name, const std::string& v, const std::string& file,
                    const std::string& where) {
  const Type t = string_type(v.size() + 1, file, where + "@" + name);
  attr_write_raw(obj, name, t.get(), t.get(), v.c_str(), 1, true, file, where);
}
void attr_write_strs(hid_t obj, const char* name, const std::vector<std::string>& v, const std::string& file,
                     const std::string& where) {
  UOE_ASSERT(!v.empty(), "empty attribute ", name);
  size_t width = 1;
  for (const std::string& s : v) width = std::max(width, s.size() + 1);
  std::vector<char> buf(width * v.size(), '\0');
  for (size_t i = 0; i < v.size(); ++i) std::memcpy(buf.data() + i * width, v[i].data(), v[i].size());
  const Type t = string_type(width, file, where + "@" + name);
  attr_write_raw(obj, name, t.get(), t.get(), buf.data(), v.size(), false, file, where);
}

bool attr_exists(hid_t obj, const char* name, const std::string& file, const std::string& where) {
  return UOE_CHECK_H5(H5Aexists(obj, name), file, where + "@" + name) > 0;
}

int64_t attr_read_i64(hid_t obj, const char* name, const std::string& file, const std::string& where) {
  return attr_read_scalar<int64_t>(obj, name, H5T_INTEGER, "an integer", H5T_NATIVE_INT64, file, where);
}
std::vector<int64_t> attr_read_i64s(hid_t obj, const char* name, const std::string& file, const std::string& where) {
  return attr_read_numbers<int64_t>(obj, name, H5T_INTEGER, "an integer", H5T_NATIVE_INT64, file, where);
}
uint64_t attr_read_u64(hid_t obj, const char* name, const std::string& file, const std::string& where) {
  return attr_read_scalar<uint64_t>(obj, name, H5T_INTEGER, "an integer", H5T_NATIVE_UINT64, file, where);
}
double attr_read_f64(hid_t obj, const char* name, const std::string& file, const std::string& where) {
  return attr_read_scalar<double>(obj, name, H5T_FLOAT, "a float", H5T_NATIVE_DOUBLE, file, where);
}

std::vector<std::string> attr_read_strs(hid_t obj, const char* name, const std::string& file,
                                        const std::string& where) {
  const std::string object = where + "@" + name;
  size_t n = 0;
  Attr a = attr_open(obj, name, H5T_STRING, "a string", &n, file, where);
  Type ft(UOE_CHECK_H5(H5Aget_type(a.get()), file, object));
  if (UOE_CHECK_H5(H5Tis_variable_str(ft.get()), file, object) > 0)
    ::uoe::fail(file, ": attribute '", name, "' of ", where, " is a variable-length string; expected fixed-length");
  const size_t width = H5Tget_size(ft.get());
  if (width == 0 || width > kMaxAttributeStringBytes || width * n > kMaxAttributeStringBytes)
    ::uoe::fail(file, ": attribute '", name, "' of ", where, " holds ", n, " strings of ", width,
                " bytes, outside what a checkpoint attribute may hold (1 to ", kMaxAttributeStringBytes,
                " bytes in all; damaged or forged file)");
  std::vector<char> buf(width * n + 1, '\0');
  const Type mt = string_type(width, file, object);
  if (n) UOE_CHECK_H5(H5Aread(a.get(), mt.get(), buf.data()), file, object);
  std::vector<std::string> out(n);
  for (size_t i = 0; i < n; ++i) out[i].assign(buf.data() + i * width, strnlen(buf.data() + i * width, width));
  return out;
}
std::string attr_read_str(hid_t obj, const char* name, const std::string& file, const std::string& where) {
  const std::vector<std::string> v = attr_read_strs(obj, name, file, where);
  if (v.size() != 1) ::uoe::fail(file, ": attribute '", name, "' of ", where, " holds ", v.size(), " strings, expected 1");
  return v[0];
}

// ---- datasets ------------------------------------------------------------------------------------

namespace {

// The chunk grid of a dataset written by dataset_write: chunk extent 1 before the cut dimension,
// equal pieces along it, whole trailing dimensions. Each chunk is therefore one contiguous range
// of the C-order data, and only the cut dimension's last piece can be partial (stored as a whole
// chunk, its tail padded with zeros).
struct ChunkGrid {
  std::vector<hsize_t> chunk;   // chunk extent per dimension
  int cut = 0;                  // the dimension chunks are cut along (0 when none is)
  int64_t inner = 1;            // elements per index of the cut dimension (product of later dims)
  int64_t chunk_elems = 1;      // elements per stored chunk
  int64_t chunks = 1;           // chunks in the dataset

  ChunkGrid(const std::vector<int64_t>& dims, size_t elem_bytes) {
    const int rank = static_cast<int>(dims.size());
    chunk.assign(dims.begin(), dims.end());
    int64_t in = 1;
    bool was_cut = false;
    for (int i = rank - 1; i >= 0; --i) {
      const int64_t fit = was_cut ? 1 : std::max<int64_t>(1, kChunkBytes / static_cast<int64_t>(elem_bytes) / in);
      const int64_t pieces = (dims[i] + fit - 1) / fit;
      chunk[i] = static_cast<hsize_t>((dims[i] + pieces - 1) / pieces);
      if (!was_cut && pieces > 1) cut = i;
      was_cut = was_cut || pieces > 1;
      in *= static_cast<int64_t>(chunk[i]);
    }
    chunk_elems = in;
    for (int i = cut + 1; i < rank; ++i) inner *= dims[i];
    for (int i = 0; i <= cut; ++i) chunks *= (dims[i] + static_cast<int64_t>(chunk[i]) - 1) / static_cast<int64_t>(chunk[i]);
    // The structure the writer and verifier rely on.
    for (int i = 0; i < rank; ++i)
      UOE_ASSERT(i < cut ? chunk[i] == 1 : i > cut ? chunk[i] == static_cast<hsize_t>(dims[i]) : true,
                 "unexpected chunk shape");
  }
  // Calls f(c, offset, first_byte, valid_bytes) for every chunk c in C order over the grid: its
  // logical offset, the byte where its data starts in the C-order data, and how many of its bytes
  // are data (the rest of the stored chunk is padding).
  template <class F>
  void each(const std::vector<int64_t>& dims, size_t elem_bytes, F&& f) const {
    std::vector<hsize_t> offset;
    for (int64_t c = 0; c < chunks; ++c) {
      int64_t first = 0, valid = 0;
      locate(c, dims, offset, &first, &valid);
      f(c, offset, static_cast<size_t>(first) * elem_bytes, static_cast<size_t>(valid) * elem_bytes);
    }
  }
  // Chunk c (C order over the grid): its logical offset, first element in the data, and how many
  // of its elements are data (the rest is padding).
  void locate(int64_t c, const std::vector<int64_t>& dims, std::vector<hsize_t>& offset, int64_t* first,
              int64_t* valid) const {
    const int rank = static_cast<int>(dims.size());
    offset.assign(rank, 0);
    const int64_t per_cut = (dims[cut] + static_cast<int64_t>(chunk[cut]) - 1) / static_cast<int64_t>(chunk[cut]);
    const int64_t piece = c % per_cut;
    int64_t rest = c / per_cut, lead = 0, stride = 1;
    for (int i = cut - 1; i >= 0; --i) {
      offset[i] = static_cast<hsize_t>(rest % dims[i]);
      lead += static_cast<int64_t>(offset[i]) * stride;
      stride *= dims[i];
      rest /= dims[i];
    }
    offset[cut] = static_cast<hsize_t>(piece) * chunk[cut];
    const int64_t rows = std::min<int64_t>(static_cast<int64_t>(chunk[cut]), dims[cut] - static_cast<int64_t>(offset[cut]));
    *first = (lead * dims[cut] + static_cast<int64_t>(offset[cut])) * inner;
    *valid = rows * inner;
  }
};

static_assert(std::endian::native == std::endian::little,
              "checkpoint chunks are written as raw memory in the files' little-endian types");

}  // namespace

namespace {

Dataset write_chunks(hid_t loc, const std::string& name, const std::vector<int64_t>& dims, Elem elem,
                     const void* data, unsigned char* in_place, const std::string& file) {
  UOE_ASSERT(!dims.empty(), "dataset ", name, " has no dimensions");
  for (int64_t d : dims) UOE_ASSERT(d > 0, "dataset ", name, " has an empty dimension");
  // Chunk: whole trailing dimensions while they fit in kChunkBytes, the rest cut down from the front.
  // The dimension that is cut is cut into equal pieces (the last one possibly a little shorter), not
  // into pieces of `fit` and a remainder: HDF5 stores edge chunks whole, so 1024 rows cut at 341 would
  // store 4 x 341 rows, the last chunk holding 1 (a third more bytes to write, checksum and read);
  // 4 x 256 store none extra. Dimensions before the cut one get chunk extent 1.
  const size_t es = elem_size(elem);
  const ChunkGrid grid(dims, es);
  const int rank = static_cast<int>(dims.size());
  Plist dcpl(UOE_CHECK_H5(H5Pcreate(H5P_DATASET_CREATE), file, name));
  UOE_CHECK_H5(H5Pset_chunk(dcpl.get(), rank, grid.chunk.data()), file, name);
  UOE_CHECK_H5(H5Pset_fletcher32(dcpl.get()), file, name);
  Space space = space_simple(dims, file, name);
  Dataset d(UOE_CHECK_H5(
      H5Dcreate2(loc, name.c_str(), file_type(elem), space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), file, name));
  // The chunks as HDF5's filter pipeline would store them (data, zero padding, Fletcher32 as a
  // little-endian uint32), written directly: HDF5's own path checksums with a scalar loop and
  // copies each chunk twice more (bench/README-checkpoint.md). Readers use the ordinary filtered
  // path and so verify every checksum written here.
  const size_t chunk_bytes = static_cast<size_t>(grid.chunk_elems) * es;
  thread_local std::vector<unsigned char> stage;
  stage.resize(chunk_bytes + sizeof(uint32_t));
  grid.each(dims, es, [&](int64_t, const std::vector<hsize_t>& offset, size_t first, size_t valid_bytes) {
    if (in_place && valid_bytes == chunk_bytes) {
      // A whole chunk, straight from the caller's memory: its checksum goes into the 4 bytes after
      // it for the write, and they get their own value back at once.
      unsigned char* at = in_place + first;
      unsigned char saved[sizeof(uint32_t)];
      std::memcpy(saved, at + chunk_bytes, sizeof saved);
      const uint32_t sum = fletcher32(at, chunk_bytes);
      std::memcpy(at + chunk_bytes, &sum, sizeof sum);
      const herr_t rc = H5Dwrite_chunk(d.get(), H5P_DEFAULT, 0, offset.data(), chunk_bytes + sizeof sum, at);
      std::memcpy(at + chunk_bytes, saved, sizeof saved);
      UOE_CHECK_H5(rc, file, name);
      return;
    }
    std::memcpy(stage.data(), static_cast<const unsigned char*>(data) + first, valid_bytes);
    if (valid_bytes < chunk_bytes) std::memset(stage.data() + valid_bytes, 0, chunk_bytes - valid_bytes);
    const uint32_t sum = fletcher32(stage.data(), chunk_bytes);
    std::memcpy(stage.data() + chunk_bytes, &sum, sizeof sum);
    UOE_CHECK_H5(H5Dwrite_chunk(d.get(), H5P_DEFAULT, 0, offset.data(), stage.size(), stage.data()), file, name);
  });
  return d;
}

}  // namespace

Dataset dataset_write(hid_t loc, const std::string& name, const std::vector<int64_t>& dims, Elem elem,
                      const void* data, const std::string& file) {
  return write_chunks(loc, name, dims, elem, data, nullptr, file);
}

Dataset dataset_write_in_place(hid_t loc, const std::string& name, const std::vector<int64_t>& dims, Elem elem,
                               void* data, const std::string& file) {
  return write_chunks(loc, name, dims, elem, data, static_cast<unsigned char*>(data), file);
}

namespace {

// A stored chunk `back` (chunk_bytes of data and padding, then the checksum) holds `valid` bytes of
// `data`, zeros after them, and the Fletcher32 of both.
bool chunk_holds(const std::vector<unsigned char>& back, size_t chunk_bytes, const unsigned char* data, size_t valid) {
  uint32_t sum = 0;
  std::memcpy(&sum, back.data() + chunk_bytes, sizeof sum);
  return std::memcmp(back.data(), data, valid) == 0 &&
         std::all_of(back.begin() + static_cast<std::ptrdiff_t>(valid),
                     back.begin() + static_cast<std::ptrdiff_t>(chunk_bytes), [](unsigned char x) { return x == 0; }) &&
         sum == fletcher32(back.data(), chunk_bytes);
}

}  // namespace

void dataset_verify_chunks(hid_t dset, Elem elem, const std::vector<int64_t>& dims, const void* data,
                           const std::string& file, const std::string& name, ChunkCheck check) {
  const size_t es = elem_size(elem);
  const ChunkGrid grid(dims, es);
  const size_t chunk_bytes = static_cast<size_t>(grid.chunk_elems) * es;
  thread_local std::vector<unsigned char> back;
  back.resize(chunk_bytes + sizeof(uint32_t));
  grid.each(dims, es, [&](int64_t c, const std::vector<hsize_t>& offset, size_t first, size_t valid_bytes) {
    hsize_t stored = 0;
    unsigned mask = 0;
    haddr_t addr = 0;
    UOE_CHECK_H5(H5Dget_chunk_info_by_coord(dset, offset.data(), &mask, &addr, &stored), file, name);
    if (addr == HADDR_UNDEF) ::uoe::fail(file, ": dataset ", name, " chunk ", c, " was never written");
    if (stored != back.size())
      ::uoe::fail(file, ": dataset ", name, " chunk ", c, " stores ", stored, " bytes, expected ", back.size());
    if (mask != 0)
      ::uoe::fail(file, ": dataset ", name, " chunk ", c, " is stored with filter mask ", mask,
                  " (its checksum would not be checked on reading)");
    if (check == ChunkCheck::index) return;
    uint32_t filters = 0;
    UOE_CHECK_H5(H5Dread_chunk(dset, H5P_DEFAULT, offset.data(), &filters, back.data()), file, name);
    if (filters != 0 || !chunk_holds(back, chunk_bytes, static_cast<const unsigned char*>(data) + first, valid_bytes))
      ::uoe::fail(file, ": dataset ", name, " reads back different from what was written (chunk ", c, ")");
  });
}

void dataset_verify_chunks_pread(hid_t dset, int fd, Elem elem, const std::vector<int64_t>& dims, const void* data,
                                 const std::string& file, const std::string& name) {
  const size_t es = elem_size(elem);
  const ChunkGrid grid(dims, es);
  const size_t chunk_bytes = static_cast<size_t>(grid.chunk_elems) * es;
  struct Where {
    haddr_t addr;
    size_t first, valid;
  };
  std::vector<Where> where;  // 1. from the index, under HDF5's lock
  where.reserve(static_cast<size_t>(grid.chunks));
  grid.each(dims, es, [&](int64_t c, const std::vector<hsize_t>& offset, size_t first, size_t valid_bytes) {
    hsize_t stored = 0;
    unsigned mask = 0;
    haddr_t addr = 0;
    UOE_CHECK_H5(H5Dget_chunk_info_by_coord(dset, offset.data(), &mask, &addr, &stored), file, name);
    if (addr == HADDR_UNDEF || stored != chunk_bytes + sizeof(uint32_t))
      ::uoe::fail(file, ": dataset ", name, " chunk ", c, " stores ", stored, " bytes, expected ",
                  chunk_bytes + sizeof(uint32_t));
    where.push_back(Where{addr, first, valid_bytes});
  });
  thread_local std::vector<unsigned char> back;  // 2. the bytes, without HDF5
  back.resize(chunk_bytes + sizeof(uint32_t));
  for (size_t c = 0; c < where.size(); ++c) {
    size_t got = 0;
    while (got < back.size()) {
      const ssize_t n = ::pread(fd, back.data() + got, back.size() - got, static_cast<off_t>(where[c].addr + got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        ::uoe::fail(file, ": dataset ", name, " chunk ", c, " cannot be read back: ",
                    n < 0 ? std::strerror(errno) : "end of file");
      got += static_cast<size_t>(n);
    }
    if (!chunk_holds(back, chunk_bytes, static_cast<const unsigned char*>(data) + where[c].first, where[c].valid))
      ::uoe::fail(file, ": dataset ", name, " reads back different from what was written (chunk ", c, ")");
  }
}

Dataset dataset_open(hid_t loc, const std::string& name, const std::string& file) {
  if (!link_exists(loc, name, file)) ::uoe::fail(file, ": dataset ", name, " is missing");
  return Dataset(UOE_CHECK_H5(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), file, name));
}

std::vector<int64_t> dataset_dims(hid_t dset, const std::string& file, const std::string& name) {
  Space s(UOE_CHECK_H5(H5Dget_space(dset), file, name));
  const int rank = UOE_CHECK_H5(H5Sget_simple_extent_ndims(s.get()), file, name);
  std::vector<hsize_t> d(static_cast<size_t>(rank));
  if (rank > 0) UOE_CHECK_H5(H5Sget_simple_extent_dims(s.get(), d.data(), nullptr), file, name);
  return {d.begin(), d.end()};
}

std::string dataset_type_name(hid_t dset, const std::string& file, const std::string& name) {
  Type t(UOE_CHECK_H5(H5Dget_type(dset), file, name));
  return describe_type(t.get());
}

void dataset_check_type(hid_t dset, Elem elem, const std::string& file, const std::string& name) {
  Type t(UOE_CHECK_H5(H5Dget_type(dset), file, name));
  const H5T_class_t cls = H5Tget_class(t.get());
  const bool ok = H5Tget_size(t.get()) == elem_size(elem) &&
                  (elem == Elem::f32 ? cls == H5T_FLOAT
                                     : cls == H5T_INTEGER && (H5Tget_sign(t.get()) == H5T_SGN_NONE) == (elem == Elem::u64 || elem == Elem::u8));
  if (!ok) ::uoe::fail(file, ": dataset ", name, " is ", describe_type(t.get()), ", expected ", elem_name(elem));
}

void dataset_check_stored(hid_t dset, Elem elem, const std::vector<int64_t>& dims, const std::string& file,
                          const std::string& name) {
  // The declared size, without overflow: every dimension is checked against what is left.
  constexpr int64_t kMaxBytes = int64_t{1} << 62;
  int64_t bytes = static_cast<int64_t>(elem_size(elem));
  for (int64_t d : dims) {
    if (d < 0 || (d > 0 && bytes > kMaxBytes / d))
      ::uoe::fail(file, ": dataset ", name, " declares a shape with ", d, " in one dimension: too large for any file");
    bytes *= d;
  }
  const hid_t fid = UOE_CHECK_H5(H5Iget_file_id(dset), file, name);
  hsize_t file_bytes = 0;
  const herr_t rc = H5Fget_filesize(fid, &file_bytes);
  H5Fclose(fid);  // H5Iget_file_id took a reference
  UOE_CHECK_H5(rc, file, name);
  const hsize_t stored = H5Dget_storage_size(dset);
  if (static_cast<uint64_t>(bytes) > file_bytes)
    ::uoe::fail(file, ": dataset ", name, " declares ", bytes, " bytes of ", elem_name(elem), " data, more than the whole file (",
                file_bytes, " bytes): damaged or forged");
  if (static_cast<uint64_t>(bytes) > stored)
    ::uoe::fail(file, ": dataset ", name, " declares ", bytes, " bytes of ", elem_name(elem), " data but stores only ", stored,
                " (chunks never written: an incomplete or forged file)");
}

void dataset_read_rows(hid_t dset, Elem elem, int64_t row_begin, int64_t row_end, void* out, const std::string& file,
                       const std::string& name) {
  if (row_end <= row_begin) return;
  Space fs(UOE_CHECK_H5(H5Dget_space(dset), file, name));
  const int rank = UOE_CHECK_H5(H5Sget_simple_extent_ndims(fs.get()), file, name);
  UOE_ASSERT(rank >= 1, file, " ", name);
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  UOE_CHECK_H5(H5Sget_simple_extent_dims(fs.get(), dims.data(), nullptr), file, name);
  UOE_ASSERT(row_begin >= 0 && static_cast<hsize_t>(row_end) <= dims[0], file, " ", name, " rows [", row_begin, ", ",
             row_end, ") of ", dims[0]);
  std::vector<hsize_t> start(dims.size(), 0), count(dims);
  start[0] = static_cast<hsize_t>(row_begin);
  count[0] = static_cast<hsize_t>(row_end - row_begin);
  UOE_CHECK_H5(H5Sselect_hyperslab(fs.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), file, name);
  // The memory space has the selection's shape: with a differently shaped one HDF5 takes a much
  // slower general path (about 15x on a 300 MB checkpoint).
  Space ms(UOE_CHECK_H5(H5Screate_simple(rank, count.data(), nullptr), file, name));
  UOE_CHECK_H5(H5Dread(dset, mem_type(elem), ms.get(), fs.get(), H5P_DEFAULT, out), file, name);
}

void dataset_read(hid_t dset, Elem elem, void* out, const std::string& file, const std::string& name) {
  UOE_CHECK_H5(H5Dread(dset, mem_type(elem), H5S_ALL, H5S_ALL, H5P_DEFAULT, out), file, name);
}

// ---- POSIX ---------------------------------------------------------------------------------------

void start_writeback(hid_t file, const std::string& path) {
  void* handle = nullptr;
  UOE_CHECK_H5(H5Fget_vfd_handle(file, H5P_DEFAULT, &handle), path, "");
  const int fd = *static_cast<int*>(handle);  // the sec2 driver's handle is a POSIX descriptor
  // Only starts the device writing dirty pages (no waiting, no durability promise); an error here
  // is not fatal: the fsync that follows reports any real failure.
  (void)::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

}  // namespace uoe::h5
