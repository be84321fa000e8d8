// A thin, checked layer over the HDF5 C API for the checkpoint files: RAII owners for every hid_t,
// UOE_CHECK_H5 (a negative return becomes a uoe::Error naming the call, the file and the object,
// with HDF5's own explanation), and the few attribute and dataset operations the checkpoint
// format uses. Nothing here knows the checkpoint layout; see checkpoint.hpp and README.md.
//
// Threads: the system HDF5 is built thread-safe (one global lock), but its error stack and the
// "print errors automatically" setting are per thread. Call h5::init_thread() on every thread
// before its first HDF5 call (every public entry point of the checkpoint module does).
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/error.hpp"

namespace uoe::h5 {

// Turns off HDF5's automatic error printing for the calling thread: errors are reported by
// UOE_CHECK_H5 instead, once, with context. Idempotent. The first call in the process also turns
// off HDF5's clean-up at exit (H5dont_atexit; see h5.cpp).
void init_thread();
// Whether the linked HDF5 serialises calls from several threads itself (H5is_library_threadsafe).
bool library_threadsafe();

// HDF5's explanation of the last failure on this thread (its error stack, outermost and innermost
// message), then clears the stack. "" when the stack is empty.
std::string error_stack_text();

// Throws uoe::Error for a failed HDF5 call. A failure whose error stack mentions a checksum
// (Fletcher32 on data, or a metadata checksum) is reported as "checksum mismatch in FILE
// dataset OBJECT", the one failure a user most needs to recognise; a failed system call (a full
// disk, a file-size limit, a missing directory: HDF5 records errno and its text) as "cannot write
// FILE (at OBJECT): No space left on device (errno 28) (HDF5: ...)".
[[noreturn]] void fail_call(const char* call, const char* src_file, int src_line, const std::string& file,
                       const std::string& object);

template <class T>
T check(T rc, const char* call, const char* src_file, int src_line, const std::string& file,
        const std::string& object) {
  if (rc < 0) fail_call(call, src_file, src_line, file, object);
  return rc;
}

}  // namespace uoe::h5

// Checks an HDF5 call (hid_t, herr_t and htri_t all signal failure with a negative value) and
// returns its result. `file` and `object` (dataset, group or attribute path; may be "") name what
// the call was working on, for the message.
#define UOE_CHECK_H5(call, file, object) \
  ::uoe::h5::check((call), #call, __FILE__, __LINE__, (file), (object))

namespace uoe::h5 {

// Owner of one HDF5 identifier, closed by `Close` (H5Fclose, H5Dclose, ...). Move-only. The
// destructor closes silently (it may run during unwinding); close() reports failure, which matters
// for files: H5Fclose flushes, so a full disk shows up there.
template <herr_t (*Close)(hid_t)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now, throwing on failure (file and object name the message).
  void close(const std::string& file, const std::string& object) {
    if (id_ < 0) return;
    const hid_t id = std::exchange(id_, H5I_INVALID_HID);
    check(Close(id), "close", __FILE__, __LINE__, file, object);
  }

 private:
  void reset() {
    if (id_ >= 0) {
      Close(id_);
      id_ = H5I_INVALID_HID;
    }
  }
  hid_t id_ = H5I_INVALID_HID;
};

using File = Handle<H5Fclose>;
using Group = Handle<H5Gclose>;
using Dataset = Handle<H5Dclose>;
using Space = Handle<H5Sclose>;
using Plist = Handle<H5Pclose>;
using Attr = Handle<H5Aclose>;
using Type = Handle<H5Tclose>;

// ---- files and groups ----------------------------------------------------------------------------
// Creates a new file (fails if it exists). Objects use the 1.10 formats, whose object headers
// carry checksums, so attributes and the index are protected as well as the data.
File file_create(const std::string& path);
// Opens an existing file; a missing file, an empty one, a truncated one or a non-HDF5 one each get
// a message that names the file and says which.
File file_open(const std::string& path, bool writable = false);

Group group_create(hid_t loc, const std::string& name, const std::string& file);
Group group_open(hid_t loc, const std::string& name, const std::string& file);
bool link_exists(hid_t loc, const std::string& path, const std::string& file);
// Names of the links directly in group `loc` (in name order).
std::vector<std::string> group_members(hid_t loc, const std::string& file, const std::string& group_name);

// ---- attributes ----------------------------------------------------------------------------------
// Scalars are written as scalar attributes, vectors as 1-D arrays. `where` names the object the
// attribute is on (for messages).
void attr_write_i64(hid_t obj, const char* name, int64_t v, const std::string& file, const std::string& where);
void attr_write_i64s(hid_t obj, const char* name, const std::vector<int64_t>& v, const std::string& file,
                     const std::string& where);
void attr_write_u64(hid_t obj, const char* name, uint64_t v, const std::string& file, const std::string& where);
void attr_write_f64(hid_t obj, const char* name, double v, const std::string& file, const std::string& where);
void attr_write_str(hid_t obj, const char* name, const std::string& v, const std::string& file,
                    const std::string& where);
void attr_write_strs(hid_t obj, const char* name, const std::vector<std::string>& v, const std::string& file,
                     const std::string& where);

// Whether `obj` has attribute `name` (for attributes added after the format was fixed: absent
// from older files, so optional when reading).
bool attr_exists(hid_t obj, const char* name, const std::string& file, const std::string& where);

// Readers check that the attribute exists and has the right kind (integer, float, string) and
// element count (bounded before anything is allocated for it: at most 65536 values, strings at
// most 16 MiB in all); each failure names file, object and attribute.
int64_t attr_read_i64(hid_t obj, const char* name, const std::string& file, const std::string& where);
std::vector<int64_t> attr_read_i64s(hid_t obj, const char* name, const std::string& file, const std::string& where);
uint64_t attr_read_u64(hid_t obj, const char* name, const std::string& file, const std::string& where);
double attr_read_f64(hid_t obj, const char* name, const std::string& file, const std::string& where);
std::string attr_read_str(hid_t obj, const char* name, const std::string& file, const std::string& where);
std::vector<std::string> attr_read_strs(hid_t obj, const char* name, const std::string& file,
                                        const std::string& where);

// ---- datasets ------------------------------------------------------------------------------------
// Element types the checkpoint stores. Files are little-endian IEEE / two's complement.
enum class Elem { f32, i64, u64, u8 };

// Creates dataset `name` under `loc` with shape `dims`, chunked (chunks of about 1 MiB, cut along
// the leading dimensions) with the Fletcher32 filter, and writes `data` (dims' product elements).
// Every dims[i] must be > 0.
Dataset dataset_write(hid_t loc, const std::string& name, const std::vector<int64_t>& dims, Elem elem,
                      const void* data, const std::string& file);
// The same, without copying whole chunks: each one is written from `data` itself, with its
// checksum placed for the moment of the write in the 4 bytes that follow it, which are restored
// before the next chunk. So at least 4 writable bytes must follow the dataset's data, and nothing
// else may read [data, data + bytes + 4) meanwhile; on return `data` holds what it held before.
Dataset dataset_write_in_place(hid_t loc, const std::string& name, const std::vector<int64_t>& dims, Elem elem,
                               void* data, const std::string& file);
// What dataset_verify_chunks checks of every stored chunk of a dataset written by dataset_write.
enum class ChunkCheck {
  // Index and data: stored size, filter mask 0 (checksum applied), and the raw bytes
  // (H5Dread_chunk): exactly `data`'s part, zero padding, the correct Fletcher32. Use on a
  // reopened file: HDF5 1.10.8 reports a filter mask of all ones for chunks written directly
  // through the same open file.
  all,
  // Index only (every chunk present with its stored size and filter mask 0); `data` is not read.
  index,
};
// Throws, naming the dataset and chunk, unless every chunk passes `check`.
void dataset_verify_chunks(hid_t dset, Elem elem, const std::vector<int64_t>& dims, const void* data,
                           const std::string& file, const std::string& name, ChunkCheck check = ChunkCheck::all);
// The data part of that check on a file still open for writing, mostly outside HDF5: the chunks'
// addresses and stored sizes come from the index (a few HDF5 calls), then each chunk is read with
// pread(2) from `fd` (a descriptor of the same file, opened by the caller) and compared as above
// (data, zero padding, Fletcher32). HDF5 serialises its calls behind one lock; the reads and
// compares here do not take it, so they run beside another thread's HDF5 writes. Relies on raw
// chunk data reaching the file when H5Dwrite_chunk returns (sec2 driver, no page buffer: true for
// the files h5:: creates) and on a file without a user block (addresses are file offsets).
void dataset_verify_chunks_pread(hid_t dset, int fd, Elem elem, const std::vector<int64_t>& dims, const void* data,
                                 const std::string& file, const std::string& name);

Dataset dataset_open(hid_t loc, const std::string& name, const std::string& file);
std::vector<int64_t> dataset_dims(hid_t dset, const std::string& file, const std::string& name);
// The dataset's stored type in words: "float32", "int64", "uint8", "string", ...
std::string dataset_type_name(hid_t dset, const std::string& file, const std::string& name);
// Throws unless the dataset's stored type is `elem` (class and size), e.g. "is int32, expected float32".
void dataset_check_type(hid_t dset, Elem elem, const std::string& file, const std::string& name);
// Throws unless the dataset, of shape `dims` and element type `elem` (both already checked), stores
// all its data: its declared size must fit in the file and in the chunks actually stored. Checked
// before allocating for a read, so a forged shape cannot cause a huge allocation, and a dataset
// whose chunks were never written is an error rather than a read of fill values.
void dataset_check_stored(hid_t dset, Elem elem, const std::vector<int64_t>& dims, const std::string& file,
                          const std::string& name);
// Reads rows [row_begin, row_end) along dimension 0 (all of every other dimension) into `out`.
// A Fletcher32 mismatch in any chunk touched is reported as a checksum mismatch naming the dataset.
void dataset_read_rows(hid_t dset, Elem elem, int64_t row_begin, int64_t row_end, void* out,
                       const std::string& file, const std::string& name);
// The whole dataset.
void dataset_read(hid_t dset, Elem elem, void* out, const std::string& file, const std::string& name);

// ---- POSIX helpers used around HDF5 files ------------------------------------------------------------
// Asks the kernel to start writing `file`'s dirty pages to the device now (sync_file_range with
// SYNC_FILE_RANGE_WRITE): the device then works while the writer goes on, and the fsync at the end
// waits for less. Durability still comes only from fsync (runtime/atomic_file.hpp: fsync_file).
void start_writeback(hid_t file, const std::string& path);

}  // namespace uoe::h5
