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

// Per-slice channel reductions (K's sums, V's amax) are combined with global atomics by every CTA of a
// slice group (hundreds). Into one [D] array that serialises ~250 atomics per address in L2; spread
// over kReplicas copies (CTA rank % kReplicas) the contention drops 16x, and the reader adds the
// 16 copies once per slice.
constexpr int kReplicas = 16;

// Activation rows: one CTA of 128 threads per row (256 past 8,192 elements); each thread keeps up to
// 8 vectors in registers (rows up to 16,384 elements are read once; longer rows are re-read from
// L1/L2).
constexpr int kRowThreads = 128;

}  // namespace quant
}  // namespace td
