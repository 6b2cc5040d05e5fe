// Tunables of the W8A8 GEMM kernels, in one place, each with the reason for its value.
//
// Build-time budget (CI compiles on 2 cores): the DEFAULT build compiles the sm90 CTA tiles marked
// default_build: INT8 tile 0, FP8 tiles 0 and 1 (6 CUTLASS kernels, bf16 and fp16 output each; FP8 tile
// 1 was promoted by the H100 sweep, tile 0 stays compiled for sm90_config). The tables below also hold candidate
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
//    Sweep (H100, 2026-11-26): best raster/swizzle per shape 1.705x torch.matmul bf16 (geomean).
// 1: 64 x 256 ping-pong (candidate): the same 64 x 256 wgmma per warpgroup and accumulator count,
//    with the epilogue of one tile hidden under the main loop of the next; aimed at K = 1536. Sweep:
//    1.336x, slower than tile 0 at every standard shape (also at K = 1536: 1.30x vs 1.50x at
//    32760 x 1536 x 1536). Kept as a sweep candidate.
inline constexpr Sm90Tile kSm90Int8Tiles[] = {
    {128, 256, 128, 2, true, true},
    {64, 256, 128, 2, false, false},
};
// FP8 E4M3 (promotion accumulator doubles the registers, see above).
// 0: 128 x 128 cooperative (2 x 64 accumulators). 128 x 256 would need 2 x 128 > 232 and spills.
//    Sweep (H100, 2026-11-26): best raster/swizzle per shape 0.847x torch._scaled_mm (geomean).
//    Compiled in every build (sm90_config tile 0); sm90_choose no longer returns it.
// 1: 128 x 192 cooperative (2 x 96 accumulators), THE FP8 TILE: 1.5x the MMA work per k-tile for the
//    same fixed cost of draining the wgmma pipe at each promotion (warpgroup_wait<0>), and 1.2x the
//    arithmetic intensity of 128 x 128. N tails: 1536 and 13824 are multiples of 192; 5120 and 8960
//    waste 1.2% / 0.7% of the last tile column. Sweep: best raster/swizzle per shape 0.939x
//    torch._scaled_mm, faster than tile 0's sweep rows at all six standard shapes. No spills.
// 2: 64 x 192 ping-pong (candidate, 2 x 96 accumulators, spills 8 B): meant to hide the epilogue at
//    short K. Sweep: 0.678x, the slowest FP8 tile at every standard shape. Kept behind the flag only
//    as a record; a candidate for removal.
inline constexpr Sm90Tile kSm90Fp8Tiles[] = {
    {128, 128, 128, 2, true, true},
    {128, 192, 128, 2, true, true},
    {64, 192, 128, 2, false, false},
};
inline constexpr int kSm90Int8TileCount = sizeof(kSm90Int8Tiles) / sizeof(Sm90Tile);
inline constexpr int kSm90Fp8TileCount = sizeof(kSm90Fp8Tiles) / sizeof(Sm90Tile);

// What the launcher runs: a tile index and the persistent scheduler's raster order and swizzle.
struct Sm90Choice {
  int tile = 0;
  bool raster_along_m = false;  // CUTLASS raster order: false = along N (tiles of one row of M first)
  int swizzle = 1;              // CUTLASS max_swizzle_size: 1/2/4/8 rows (columns) of tiles walked together
};

// THE heuristics table. One row per (N, K) of Wan's linear layers: the winning {tile, raster_along_m,
// swizzle} of each input type at the standard token count M (benchmarks/metrics.py GEMM_SHAPES), from
// `bench_gemm.py --sweep` on an H100 80GB HBM3 (torch 2.11.0+cu130, CUDA 13.0). First sweep: commit
// 86e3353, on kernels whose wgmma ptxas had serialized (CUTLASS device asserts, built without NDEBUG);
// re-swept with NDEBUG at 2f47834 (2026-11-26, benchmarks/results/gemm-sweep-h100.{md,json}), which
// moved two INT8 rows to raster N / swizzle 1 (32760 x 1536 x 8960: 0.869 -> 0.742 ms; 75600 x 5120 x
// 5120: 2.96 -> 2.81 ms) and confirmed the rest within noise. Ratios below are that sweep's: vs
// torch.matmul bf16 (INT8) and torch._scaled_mm row-wise, bf16 out (FP8); "next" = the runner-up
// setting of the same tile. Noise: the sweep times the table's configuration twice per shape (its
// heuristics row and its sweep row): up to 10% apart for INT8 and 18% for FP8, so close winners are
// ties; FP8 rows were kept where the new sweep's winner was within that noise (docs/gemm.md, "Sweep").
struct Sm90TableRow {
  int64_t n, k;
  Sm90Choice int8, fp8;
};
inline constexpr Sm90TableRow kSm90Table[] = {
    //  N      K      INT8 t0              FP8 t1                  measured at M; layer
    {1536, 1536, {0, false, 2}, {1, false, 8}},    // 32760; Wan 1.3B 480p self-attention q/k/v/o
                                                   //   int8 1.61x (next N/1 1.60x), fp8 1.00x (N/1 1.04x)
    {8960, 1536, {0, false, 1}, {1, false, 1}},    // 32760; 1.3B FFN up
                                                   //   int8 1.56x (N/2 1.52x), fp8 0.74x (M/8 0.84x)
    {1536, 8960, {0, true, 2}, {1, false, 2}},     // 32760; 1.3B FFN down
                                                   //   int8 1.83x (N/2 1.71x), fp8 1.06x (M/8 1.04x)
    {5120, 5120, {0, false, 1}, {1, false, 1}},    // 75600; Wan 14B 720p self-attention q/k/v/o
                                                   //   int8 2.04x (N/2 1.99x), fp8 1.13x (N/4 1.12x)
    {13824, 5120, {0, true, 8}, {1, true, 8}},     // 75600; 14B FFN up
                                                   //   int8 1.93x (N/8 1.91x), fp8 1.21x (N/8 1.20x)
    {5120, 13824, {0, false, 1}, {1, false, 1}},   // 75600; 14B FFN down
                                                   //   int8 1.99x (M/4 2.00x), fp8 1.23x (N/4 1.21x)
};
// A table row applies from this M up. The sweep measured one M per (N, K); raster and swizzle act on
// how a wave of 132 persistent CTAs walks the tile grid and on what of a and w stays in L2, which
// depends on N and K, not on M, once there are many waves. 16384 = half the smallest measured M: 128
// rows of 128-row tiles, >= 5.8 waves at every table (N, K). Below it (and for other shapes, e.g.
// cross-attention k/v on 512 text tokens) the fallback applies. Not measured; a threshold to revisit
// when a sweep covers smaller M.
inline constexpr int64_t kSm90TableMinM = 16384;

// Fallback for shapes outside the table: the tile above (INT8 0, FP8 1), raster along the longer of
// M and N (CUTLASS along-N raster keeps a few rows of a in L2 and sweeps w; the mirror image for
// N > M), and the one swizzle with the best geomean over the six measured shapes with that raster:
// INT8 swizzle 2 (1.649x; 1: 1.636x, 4: 1.519x, 8: 1.412x), FP8 swizzle 1 (0.920x; 2: 0.918x,
// 4: 0.923x, 8: 0.885x: a tie between 1, 2 and 4; 1 has the best worst shape, 0.76x).
inline Sm90Choice sm90_fallback(bool fp8, int64_t m, int64_t n) {
  Sm90Choice c;
  c.tile = fp8 ? 1 : 0;
  c.raster_along_m = n > m;
  c.swizzle = fp8 ? 1 : 2;
  return c;
}

// Tile, raster and swizzle by M / N / K for each input type. Only tiles with default_build may be
// returned (csrc/ops/gemm.cu raises a clear error otherwise). To re-tune: build with
// TD_GEMM_ALL_CONFIGS=1, run `benchmarks/bench_gemm.py --sweep` on the GPU, and set kSm90Table from its
// winners (benchmarks/results/gemm-sweep-<card>.md).
inline Sm90Choice sm90_choose(bool fp8, int64_t m, int64_t n, int64_t k) {
  if (m >= kSm90TableMinM) {
    for (const Sm90TableRow& row : kSm90Table) {
      if (row.n == n && row.k == k) return fp8 ? row.fp8 : row.int8;
    }
  }
  return sm90_fallback(fp8, m, n);
}

// Everything sm90_choose can return is compiled in every build.
constexpr bool sm90_table_is_default_build() {
  for (const Sm90TableRow& row : kSm90Table) {
    if (!kSm90Int8Tiles[row.int8.tile].default_build || !kSm90Fp8Tiles[row.fp8.tile].default_build) return false;
  }
  return kSm90Int8Tiles[0].default_build && kSm90Fp8Tiles[1].default_build;
}
static_assert(sm90_table_is_default_build(), "sm90_choose may only return default_build tiles");

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
