// The fast Fletcher32 against HDF5's scalar algorithm, and against HDF5 itself: chunks that HDF5's
// filter wrote carry exactly the checksum fletcher32() computes, and a dataset written by
// h5::dataset_write (direct chunks) reads back through HDF5's verifying filter path.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <vector>

#include "checkpoints/fletcher32.hpp"
#include "checkpoints/h5.hpp"

namespace {

std::vector<unsigned char> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<unsigned char> v(n);
  for (auto& b : v) b = static_cast<unsigned char>(g());
  return v;
}

TEST(Fletcher32, MatchesHdf5sAlgorithmOnEveryKindOfInput) {
  // Sizes around the fast path's block (16384 bytes) and HDF5's 360-word folds, odd sizes, a 1 MiB chunk.
  const size_t sizes[] = {1, 2, 3, 4, 5, 719, 720, 721, 16383, 16384, 16385, 16386, 32768 + 7, 100000, (1u << 20) + 3};
  uint32_t seed = 1;
  for (const size_t n : sizes) {
    const auto r = random_bytes(n, seed++);
    EXPECT_EQ(uoe::fletcher32(r.data(), n), uoe::fletcher32_reference(r.data(), n)) << "random, " << n << " bytes";
    const std::vector<unsigned char> zeros(n, 0), ones(n, 0xff);
    EXPECT_EQ(uoe::fletcher32(zeros.data(), n), uoe::fletcher32_reference(zeros.data(), n)) << "zeros, " << n;
    EXPECT_EQ(uoe::fletcher32(ones.data(), n), uoe::fletcher32_reference(ones.data(), n)) << "0xff, " << n;
    // A single non-zero byte at the end: the sums are tiny, and 0 vs 65535 matters.
    std::vector<unsigned char> last(n, 0);
    last[n - 1] = 1;
    EXPECT_EQ(uoe::fletcher32(last.data(), n), uoe::fletcher32_reference(last.data(), n)) << "last byte, " << n;
  }
  // Sums that are multiples of 65535 (0xffff words: sum1 ≡ 0 but the input is not all zero).
  const std::vector<unsigned char> ff(2 * 65535, 0xff);
  EXPECT_EQ(uoe::fletcher32(ff.data(), ff.size()), uoe::fletcher32_reference(ff.data(), ff.size()));
  // Many random buffers of random sizes.
  std::mt19937 g(7);
  for (int i = 0; i < 300; ++i) {
    const size_t n = 1 + g() % 70000;
    const auto r = random_bytes(n, 1000 + i);
    ASSERT_EQ(uoe::fletcher32(r.data(), n), uoe::fletcher32_reference(r.data(), n)) << n << " bytes";
  }
}

class H5Chunks : public ::testing::Test {
 protected:
  void SetUp() override {
    uoe::h5::init_thread();
    dir_ = std::filesystem::temp_directory_path() / ("uoe-fletcher-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(H5Chunks, Hdf5sFilterStoresTheChecksumWeCompute) {
  const std::string path = (dir_ / "filter.h5").string();
  const hsize_t dims[2] = {300, 1000}, chunk[2] = {77, 1000};  // 4 chunks, the last one partial
  std::vector<float> x(300 * 1000);
  std::mt19937 g(3);
  for (float& v : x) v = std::uniform_real_distribution<float>(-2, 2)(g);
  const hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, 2, chunk);
  H5Pset_fletcher32(dcpl);
  const hid_t space = H5Screate_simple(2, dims, nullptr);
  const hid_t d = H5Dcreate2(f, "x", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  ASSERT_GE(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x.data()), 0);
  for (hsize_t c = 0; c < 4; ++c) {
    const hsize_t off[2] = {c * 77, 0};
    hsize_t stored = 0;
    ASSERT_GE(H5Dget_chunk_storage_size(d, off, &stored), 0);
    ASSERT_EQ(stored, 77 * 1000 * 4 + 4u);
    std::vector<unsigned char> raw(stored);
    uint32_t filters = 1;
    ASSERT_GE(H5Dread_chunk(d, H5P_DEFAULT, off, &filters, raw.data()), 0);
    EXPECT_EQ(filters, 0u);
    uint32_t sum = 0;
    std::memcpy(&sum, raw.data() + stored - 4, 4);
    EXPECT_EQ(sum, uoe::fletcher32(raw.data(), stored - 4)) << "chunk " << c;
  }
  H5Dclose(d);
  H5Sclose(space);
  H5Pclose(dcpl);
  H5Fclose(f);
}

TEST_F(H5Chunks, DirectChunkWritesReadBackThroughHdf5sVerifyingFilter) {
  const std::string path = (dir_ / "direct.h5").string();
  // Shapes that cut along different dimensions, with partial and padded last pieces.
  const std::vector<std::vector<int64_t>> shapes = {{7}, {1000, 300}, {3, 1025, 257}, {5, 700, 768}, {300001}};
  const std::vector<std::string> names = {"t0", "t1", "t2", "t3", "t4"};
  uoe::h5::File f = uoe::h5::file_create(path);
  std::vector<std::vector<float>> data;
  for (size_t k = 0; k < shapes.size(); ++k) {
    int64_t n = 1;
    for (int64_t d : shapes[k]) n *= d;
    data.emplace_back(static_cast<size_t>(n));
    std::mt19937 g(static_cast<uint32_t>(k));
    for (float& v : data.back()) v = std::uniform_real_distribution<float>(-1, 1)(g);
    // Odd datasets are written in place (with a guard element after the data, which must survive).
    uoe::h5::Dataset d = [&] {
      if (k % 2 == 0)
        return uoe::h5::dataset_write(f.get(), names[k], shapes[k], uoe::h5::Elem::f32, data.back().data(), path);
      std::vector<float> copy = data.back();
      copy.push_back(123.5f);
      auto w = uoe::h5::dataset_write_in_place(f.get(), names[k], shapes[k], uoe::h5::Elem::f32, copy.data(), path);
      EXPECT_EQ(copy.back(), 123.5f);
      copy.pop_back();
      EXPECT_EQ(copy, data.back());
      return w;
    }();
    // On the file still open for writing, through a descriptor of its own (the concurrent verifier's
    // way): every chunk already holds its bytes; a different source is caught.
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    EXPECT_NO_THROW(uoe::h5::dataset_verify_chunks_pread(d.get(), fd, uoe::h5::Elem::f32, shapes[k], data.back().data(),
                                                         path, "t"));
    std::vector<float> other = data.back();
    other.back() = -other.back() - 1.0f;  // the last element: in a partial chunk where there is one
    EXPECT_THROW(uoe::h5::dataset_verify_chunks_pread(d.get(), fd, uoe::h5::Elem::f32, shapes[k], other.data(), path, "t"),
                 uoe::Error);
    ::close(fd);
    d.close(path, "t");
  }
  f.close(path, "");
  uoe::h5::File r = uoe::h5::file_open(path);
  for (size_t k = 0; k < shapes.size(); ++k) {
    uoe::h5::Dataset d = uoe::h5::dataset_open(r.get(), names[k], path);
    std::vector<float> back(data[k].size(), -7.0f);
    uoe::h5::dataset_read(d.get(), uoe::h5::Elem::f32, back.data(), path, "t");  // HDF5 checks every checksum
    EXPECT_EQ(back, data[k]) << "dataset " << k;
    uoe::h5::dataset_verify_chunks(d.get(), uoe::h5::Elem::f32, shapes[k], data[k].data(), path, "t");
    // Stored with every filter applied (mask 0): HDF5 verifies the checksum on each read.
    const std::vector<hsize_t> origin(shapes[k].size(), 0);
    uint32_t filters = 0xdead;
    std::vector<unsigned char> raw(1 << 21);
    ASSERT_GE(H5Dread_chunk(d.get(), H5P_DEFAULT, origin.data(), &filters, raw.data()), 0);
    EXPECT_EQ(filters, 0u) << "dataset " << k;
    // A different source is caught by the verifier.
    std::vector<float> other = data[k];
    other[other.size() / 2] += 1.0f;
    EXPECT_THROW(uoe::h5::dataset_verify_chunks(d.get(), uoe::h5::Elem::f32, shapes[k], other.data(), path, "t"),
                 uoe::Error);
  }
}

}  // namespace
