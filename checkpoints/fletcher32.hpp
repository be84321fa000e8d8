// HDF5's Fletcher32 checksum (the H5Z_FILTER_FLETCHER32 filter), computed fast.
//
// HDF5 checksums each stored chunk as big-endian 16-bit words: sum1 = Σ words and sum2 = Σ of the
// running sum1, folded ((x & 0xffff) + (x >> 16)) every 360 words so that 32 bits never overflow,
// an odd last byte counting as the high byte of one more word; the result is (sum2 << 16) | sum1,
// stored after the chunk's bytes as a little-endian uint32. Folding keeps each sum congruent
// modulo 65535 and never turns a positive sum into 0, so each half is fully determined by its exact
// sum S: 0 when every word is 0, else the representative of S mod 65535 in [1, 65535].
//
// fletcher32() computes those exact values in blocks whose inner loop is only vector additions
// (lanes of A += w, B += A, as in vectorised Adler-32) and reduces modulo 65535 between blocks: the
// same 32 bits as HDF5's scalar loop, several times faster. fletcher32_reference() is that scalar
// loop, kept for the tests. The checkpoint writer uses fletcher32() to write chunks that HDF5's own
// filter then verifies when they are read (bench/README-checkpoint.md).
#pragma once
#include <cstddef>
#include <cstdint>

namespace uoe {

uint32_t fletcher32(const void* data, size_t bytes);
uint32_t fletcher32_reference(const void* data, size_t bytes);

}  // namespace uoe
