// Tunables of the SLA kernels and why.
#pragma once

namespace td {
namespace sla {

// ---- block map (sla_block_map.cuh) ----
// Pooling: one CTA per block of tokens; 16-byte loads (8 elements), so D / 8 threads cover a row and
// kPoolThreads / (D / 8) rows are read at once.
constexpr int kPoolThreads = 256;
// mean_N k and centring: one CTA per (b, h) (a few dozen at Wan shapes), so each is wide: kKmeanThreads / D
// threads per channel split the key blocks.
constexpr int kKmeanThreads = 1024;
// Scores + top-k: a CTA takes up to kMaxRowsPerCta query blocks so every pooled-k tile it stages in
// shared memory (kKeyTile key blocks, row-major) serves that many rows: the L2 traffic of the pooled
// k is Mq / rows_per_cta passes over it. Each thread computes 4 x 1 scores (one key block against 4
// query blocks, 4 channels per step: a float4 of its key row and 4 broadcast float4s of the query rows):
// kKeyTile threads per 4 rows, so 16 rows use all 256 threads. The whole score rows (rows x Mk fp32)
// stay in shared memory for the top-k; the launcher lowers rows_per_cta until that fits the device's
// opt-in shared memory (sm_120: 99 KB, sm_90: 227 KB).
constexpr int kScoreThreads = 256;
constexpr int kMaxRowsPerCta = 16;
constexpr int kKeyTile = 64;
constexpr int kRadixBins = 256;   // 8-bit digits: the top-k threshold is found in 4 passes per row

// ---- linear branch (sla_linear_state.cuh) ----
// 32-token tiles of k and v (bf16/fp16) double-buffered: 4 x 32 x 128 x 2 B = 32 KB at D = 128. Warps
// own 16 rows (channels d) of H each: D / 16 warps; a warp's accumulator is 16 x (D + 8) fp32 = 68
// registers per lane at D = 128 (the +8 is the all-ones column that yields z).
constexpr int kLinTile = 32;
// N is split so that the grid fills kLinWaves whole waves of co-resident CTAs (2 per SM at D = 128: 128
// registers x 256 threads); a split is at least kLinMinTiles tiles, so its fixed cost (the partial write,
// D x (D + 8) fp32) stays small next to its k/v reads.
constexpr int kLinWaves = 4;
constexpr int kLinMinTiles = 16;

}  // namespace sla
}  // namespace td
