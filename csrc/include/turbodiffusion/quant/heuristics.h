// Tile shapes of the quantization kernels and why.
//
// Every quantizer is memory bound (a few flops per byte). An H100 needs about 25 KB in flight per SM
// to cover HBM latency at 3 TB/s, so a CTA issues its whole tile (8 16-byte cp.async per thread,
// 32 KB for 256 threads) before it uses any of it, and several CTAs share an SM so that one's
// arithmetic overlaps another's loads (tile.cuh stages tiles in shared memory for that reason).
#pragma once

namespace td {
namespace quant {

// Attention tensors: 256 threads x 8 vectors; a tile is 128 tokens at D = 128, 256 at D = 64, which
// every supported scale block (16..128 tokens) divides.
constexpr int kTileThreads = 256;
constexpr int kTileVectorsPerThread = 8;
// 5 CTAs per SM (<= 48 registers; with the shared-memory carveout at its maximum, 5 x ~37 KB fit;
// 6 spills): the slice-grouped V kernel keeps one tile per CTA in shared memory across its barrier, so
// the co-resident CTA count bounds the tokens per slice it can hold (5 x 132 x 128 = 84k, above
// Wan-14B-720p's 75,600) and how many slices proceed at once. ncu at 4 CTAs per SM (62 registers):
// Wan-14B-720p K (then slice-grouped too) fell back to re-reading tiles and reached 33% of DRAM bandwidth.
constexpr int kTileMinBlocksPerSM = 5;

// Per-slice channel reductions (K's sums, V's amax) are combined with global atomics by every CTA of a
// slice (hundreds). Into one [D] array that serialises ~250 atomics per address in L2; spread over
// kReplicas copies (by tile or CTA rank) the contention drops 16x, and the reader adds the 16 copies
// once per slice.
constexpr int kReplicas = 16;

// Activation rows: one CTA of 128 threads per row; each thread keeps up to 16 vectors in registers
// (rows up to 16,384 elements are read once; longer rows are re-read from L1/L2). Measured on the
// H100 (2026-11-26): 256 threads x 8 vectors past 8,192 elements was slower (0.68x / 0.83x of copy
// bandwidth at K = 8960 / 13824, against 0.76x / 1.00x).
constexpr int kRowThreads = 128;

}  // namespace quant
}  // namespace td
