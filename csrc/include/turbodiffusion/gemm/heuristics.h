// Tunables of the W8A8 GEMM kernels, in one place, each with the reason for its value.
//
// Build-time budget (CI compiles on 2 cores): at most 4 CUTLASS instantiations per arch. The sm90
// path therefore has ONE CTA tile per input type (4 kernels: {int8, fp8} x {bf16, fp16} output), and
// what the heuristics choose by M/N/K at run time are the persistent scheduler's raster order and
// swizzle, which cost no instantiation (and, measured, matter as much as the tile: up to 25%). The mma.sync path is one kernel (the output type is a
// run-time branch in its epilogue).
#pragma once
#include <cstdint>

namespace td::gemm {

// ---------------------------------------------------------------------------------------------
// sm90 (CUTLASS 3.x, TMA + wgmma, warp-specialized)
//
// INT8: tile 128 x 256 x 128 (128 bytes of K per stage: one 128-byte TMA box row, the widest
// swizzle), COOPERATIVE schedule (both consumer warpgroups on one tile, 64 x 256 each: 128 int32
// accumulator registers per thread, no spills). Measured on one H100 (2026-11-26, int8 -> bf16, best
// raster per shape, TOPS): 1119-1445 at the six standard shapes, against 810-897 for a 128 x 128
// ping-pong tile: the 256-wide tile reads half the a bytes per MMA from shared memory and L2, and at
// Wan's shapes (M >= 32k) still gives >= 1,500 tiles for 132 SMs. Stages: as many 48 KiB stages as
// fit beside the epilogue's shared memory (StageCountAutoCarveout).
// Cluster 2 x 1: the two CTAs of a cluster multicast the shared w tile, halving its L2->SM traffic;
// M tails are masked by TMA, so any M works.
struct Sm90TileInt8 {
  static constexpr int kM = 128, kN = 256, kK = 128;
  static constexpr int kClusterM = 2, kClusterN = 1;
  static constexpr bool kCooperative = true;
};
// FP8 E4M3: the same tile (128 bytes of K per stage again), but the COOPERATIVE schedule (both
// consumer warpgroups on one tile, 64 x 128 each). The main loop promotes the wgmma accumulator into
// a second float32 register accumulator every few k-blocks (CUTLASS's default FP8 main loop, not
// "fast accum"), so long K (13824) does not lose bits to the tensor core's reduced-precision FP8
// accumulation. That doubles the accumulator registers: ping-pong's 128 x 128 per warpgroup needs
// 2 x 128 and spilled ~1 KiB at the 240-register cap; 64 x 128 per warpgroup needs 2 x 64.
struct Sm90TileFp8 {
  static constexpr int kM = 128, kN = 128, kK = 128;
  static constexpr int kClusterM = 2, kClusterN = 1;
  static constexpr bool kCooperative = true;
};

// Raster order of the persistent scheduler, by M and N. CUTLASS's "along N" walks consecutive tiles
// across N inside a row of M-tiles, so the CTAs of one wave share a few 128-row slabs of a and sweep
// w. Measured (int8, 128 x 256 tile, same run as above): along N beat along M at 5 of the 6 standard
// shapes (M >> N everywhere), by up to 25% (75600 x 5120 x 5120: 1405 vs 1134 TOPS). The mirror
// image holds for N > M.
inline bool sm90_raster_along_m(int64_t m, int64_t n) { return n > m; }

// Swizzle (CUTLASS's max_swizzle_size: 1/2/4/8 rows of tiles walked together). With along-N raster
// a wave of 132 tiles spans 132 / tiles_n rows of M; with many N-tiles a wave covers only 1-2 rows,
// w streams from HBM for every row, and grouping 8 rows lets each w tile be reused from L2.
// Measured: 75600 x 5120 x 13824 (54 N-tiles) 1268 TOPS with 8 vs 1212 with 1; every standard shape
// with <= 35 N-tiles is fastest with 1 (32760 x 1536 x 8960: 1184 vs 970 with 8; 75600 x 13824 x
// 5120: 1374 vs 1051). Threshold 40 tiles along the rastered side, between the two measured regimes.
inline int sm90_swizzle(int64_t m, int64_t n, int tile_m, int tile_n) {
  const bool along_m = sm90_raster_along_m(m, n);
  const int64_t tiles_raster = along_m ? (m + tile_m - 1) / tile_m : (n + tile_n - 1) / tile_n;
  const int64_t tiles_other = along_m ? (n + tile_n - 1) / tile_n : (m + tile_m - 1) / tile_m;
  return tiles_raster > 40 && tiles_other >= 8 ? 8 : 1;
}

// ---------------------------------------------------------------------------------------------
// mma.sync (sm80 / sm89 / sm120; also runs on sm90), INT8 m16n8k32
//
// CTA tile 128 x 128 x 64 bytes, 8 warps as 2 (M) x 4 (N), each warp 64 x 32 (4 x 4 MMA tiles, 64
// int32 accumulators per thread). 4 cp.async stages of (128 + 128) x 64 B = 64 KiB of shared memory:
// under the 99 KiB per-block limit of sm86/89/120 consumer parts. 64-byte rows are read by ldmatrix
// with a 16-byte-chunk XOR swizzle (chunk ^ ((row >> 1) & 3)) so the 8 rows of one ldmatrix phase
// hit 8 different bank groups.
struct MmaTile {
  static constexpr int kM = 128, kN = 128, kK = 64;
  static constexpr int kWarpsM = 2, kWarpsN = 4;
  static constexpr int kStages = 4;
  static constexpr int kThreads = kWarpsM * kWarpsN * 32;
};
// Groups of 8 M-tiles are walked along N first: the 8 a row-blocks and the w blocks they meet stay in
// L2 for N <= 8960 (the mma.sync path is not persistent, so the grid order is the raster order).
constexpr int kMmaGroupM = 8;

}  // namespace td::gemm
