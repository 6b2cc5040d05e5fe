// Tunables of the W8A8 GEMM kernels, in one place, each with the reason for its value.
//
// Build-time budget (CI compiles on 2 cores): the DEFAULT build compiles one sm90 CTA tile per input
// type (4 CUTLASS kernels: {int8, fp8} x {bf16, fp16} output). The tables below also hold candidate
// tiles that are compiled only when the extension is built with TD_GEMM_ALL_CONFIGS=1 (setup.py), so
// that one GPU run of `benchmarks/bench_gemm.py --sweep` can time every (tile, raster, swizzle) per
// shape; a candidate that wins is promoted by setting its `default_build` and choosing it in
// sm90_choose() below. Raster order and swizzle cost no instantiation (scheduler arguments) and,
// measured, matter as much as the tile: up to 25%. The mma.sync path is one kernel (the output type is
// a run-time branch in its epilogue).
#pragma once
#include <cstdint>

#ifndef TD_GEMM_ALL_CONFIGS  // setup.py defines it to 1 under TD_GEMM_ALL_CONFIGS=1 (the sweep build)
#define TD_GEMM_ALL_CONFIGS 0
#endif

namespace td::gemm {

// ---------------------------------------------------------------------------------------------
// sm90 (CUTLASS 3.x, TMA + wgmma, warp-specialized, persistent)
//
// One entry of a tile table: CTA tile (kK = 128 bytes of K per stage for 8-bit inputs: one 128-byte
// TMA box row, the widest swizzle), cluster along M (2: the two CTAs of a cluster multicast the shared
// w tile, halving its L2 -> SM traffic; M tails are masked by TMA, so any M works), and the kernel
// schedule: COOPERATIVE (both consumer warpgroups on one tile, tile_m / 2 rows each, epilogue after
// the main loop) or PING-PONG (each consumer warpgroup owns a whole tile; one runs its main loop
// while the other runs its epilogue, which hides the output store at short K).
// Stages: as many as fit beside the epilogue's shared memory (StageCountAutoCarveout).
struct Sm90Tile {
  int m, n, k;
  int cluster_m;
  bool cooperative;
  // Compiled in every build (sm90_choose may return it). Candidates (false) are compiled only with
  // TD_GEMM_ALL_CONFIGS=1: their csrc/ops/gemm_sm90_*_t<index>.cu is wrapped in #if TD_GEMM_ALL_CONFIGS
  // and static_asserts this flag, so promoting a candidate means flipping it here AND unwrapping its file.
  bool default_build;
};

// Accumulator registers per consumer thread: tile_m * tile_n / 128 per warpgroup-owned sub-tile
// (int32 or float32), times 2 for FP8, whose main loop keeps the wgmma accumulator apart from a
// float32 accumulator it adds ("promotes") it into every 4 wgmma k-blocks = 128 K elements (CUTLASS's
// default FP8 main loop, not "fast accum": FP32 accumulation, ARCHITECTURE numerics). The consumers
// get 232 registers (setmaxnreg), so: INT8 up to 128 accumulators, FP8 up to 2 x 96.
constexpr int sm90_acc_registers(const Sm90Tile& t, bool fp8) {
  return t.m * t.n / (t.cooperative ? 256 : 128) * (fp8 ? 2 : 1);
}

// INT8. Index = the `sm90_config` tile index of ops.w8a8_gemm (turbodiffusion/ops.py
// GEMM_SM90_TILES lists the same entries in the same order).
// 0: 128 x 256 cooperative (64 x 256 per warpgroup, 128 int32 accumulators). Measured on one H100
//    (2026-11-26, int8 -> bf16, best raster per shape): 1119-1445 TOPS at the six standard shapes,
//    against 810-897 for a 128 x 128 ping-pong tile: the 256-wide tile reads half the a bytes per MMA
//    from shared memory and L2, and at Wan's shapes (M >= 32k) still gives >= 1,500 tiles.
// 1: 64 x 256 ping-pong (candidate): the same 64 x 256 wgmma per warpgroup and accumulator count,
//    with the epilogue of one tile hidden under the main loop of the next; aimed at K = 1536, where
//    the 2-byte output store is a third of the time at 32760 x 1536 x 8960.
inline constexpr Sm90Tile kSm90Int8Tiles[] = {
    {128, 256, 128, 2, true, true},
    {64, 256, 128, 2, false, false},
};
// FP8 E4M3 (promotion accumulator doubles the registers, see above).
// 0: 128 x 128 cooperative (2 x 64 accumulators). 128 x 256 would need 2 x 128 > 232 and spills.
//    Measured 759-974 TFLOPS at the standard shapes (0.84x torch._scaled_mm).
// 1: 128 x 192 cooperative (candidate, 2 x 96 accumulators): 1.5x the MMA work per k-tile for the
//    same fixed cost of draining the wgmma pipe at each promotion (warpgroup_wait<0>), and 1.2x the
//    arithmetic intensity of 128 x 128. N tails: 1536 and 13824 are multiples of 192; 5120 and 8960
//    waste 1.2% / 0.7% of the last tile column.
// 2: 64 x 192 ping-pong (candidate, 2 x 96 accumulators): hides the epilogue at short K.
inline constexpr Sm90Tile kSm90Fp8Tiles[] = {
    {128, 128, 128, 2, true, true},
    {128, 192, 128, 2, true, false},
    {64, 192, 128, 2, false, false},
};
inline constexpr int kSm90Int8TileCount = sizeof(kSm90Int8Tiles) / sizeof(Sm90Tile);
inline constexpr int kSm90Fp8TileCount = sizeof(kSm90Fp8Tiles) / sizeof(Sm90Tile);

// What the launcher runs: a tile index and the persistent scheduler's raster order and swizzle.
struct Sm90Choice {
  int tile = 0;
  bool raster_along_m = false;
  int swizzle = 1;  // CUTLASS max_swizzle_size: 1/2/4/8 rows of tiles walked together
};

// Raster order, by M and N. CUTLASS's "along N" walks consecutive tiles across N inside a row of
// M-tiles, so the CTAs of one wave share a few 128-row slabs of a and sweep w. Measured (int8, tile 0,
// same run as above): along N beat along M at 5 of the 6 standard shapes (M >> N everywhere), by up to
// 25% (75600 x 5120 x 5120: 1405 vs 1134 TOPS). The mirror image holds for N > M.
inline bool sm90_raster_along_m(int64_t m, int64_t n) { return n > m; }

// Swizzle. With along-N raster a wave of 132 tiles spans 132 / tiles_n rows of M; with many N-tiles a
// wave covers only 1-2 rows, w streams from HBM for every row, and grouping 8 rows lets each w tile be
// reused from L2. Measured (int8, tile 0): 75600 x 5120 x 13824 (54 N-tiles) 1268 TOPS with 8 vs 1212
// with 1; every standard shape with <= 35 N-tiles is fastest with 1 (32760 x 1536 x 8960: 1184 vs 970
// with 8; 75600 x 13824 x 5120: 1374 vs 1051). Threshold 40 tiles along the rastered side, between
// the two measured regimes. (FP8 tile 0 has twice the N-tiles, so its threshold is in bytes of w, not
// measured separately: the sweep tells.)
inline int sm90_swizzle(int64_t m, int64_t n, int tile_m, int tile_n) {
  const bool along_m = sm90_raster_along_m(m, n);
  const int64_t tiles_raster = along_m ? (m + tile_m - 1) / tile_m : (n + tile_n - 1) / tile_n;
  const int64_t tiles_other = along_m ? (n + tile_n - 1) / tile_n : (m + tile_m - 1) / tile_m;
  return tiles_raster > 40 && tiles_other >= 8 ? 8 : 1;
}

// THE heuristics table: tile, raster and swizzle by M / N / K for each input type. Only tiles with
// default_build may be returned (csrc/ops/gemm.cu raises a clear error otherwise). To re-tune: build with
// TD_GEMM_ALL_CONFIGS=1, run `benchmarks/bench_gemm.py --sweep` on the GPU, and set the rules here from
// its winners table (benchmarks/results/gemm-sweep-<card>.md).
inline Sm90Choice sm90_choose(bool fp8, int64_t m, int64_t n, int64_t /*k*/) {
  Sm90Choice c;
  c.tile = 0;
  const Sm90Tile& t = fp8 ? kSm90Fp8Tiles[c.tile] : kSm90Int8Tiles[c.tile];
  c.raster_along_m = sm90_raster_along_m(m, n);
  c.swizzle = sm90_swizzle(m, n, t.m, t.n);
  return c;
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
