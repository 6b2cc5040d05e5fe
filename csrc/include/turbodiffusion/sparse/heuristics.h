// Tunables of the SLA kernels and why.
#pragma once
#include <cstdint>

namespace td {
namespace sla {

// ---- block map (sla_block_map.cuh) ----
// Pooling: one CTA per block of tokens; 16-byte loads (8 elements), so D / 8 threads cover a row and
// kPoolThreads / (D / 8) rows are read at once.
constexpr int kPoolThreads = 256;
// mean_N k and centring: one CTA per (b, h) and kKmeanCols channels, kKmeanThreads / kKmeanCols threads per
// channel splitting the key blocks. One thread per channel walking all Mk blocks was latency-bound, and so
// was one 1024-thread CTA per (b, h) (12 CTAs at Wan-1.3B), which also waited for a whole free SM beside the
// linear branch's CTAs (sage_sla runs both at once). H100, 2026-11-27, per-kernel profiler times inside
// sage_sla, 1.3B-480p 64x64: 0.107 ms (a thread per channel), 0.037 ms (1024 threads per (b, h)), 0.022 ms
// (256 threads, 8 channels); 64x128 0.015 -> 0.019 ms; 14B-720p 64x64 0.18 -> 0.15 ms, 64x128 0.088 -> 0.083.
constexpr int kKmeanThreads = 256;
constexpr int kKmeanCols = 8;
// Scores: a CTA takes a tile of kScoreTile query blocks x kScoreTile key blocks (pooled means staged in
// shared memory, 68 KB at D = 128: three CTAs per SM), 4 x 4 scores per thread, and writes them to a
// scratch in global memory (Mq x Mk fp32 per (b, h), read back from L2 by the top-k; at most
// kScoreScratchBytes, so the (b, h) slices go in passes where it would be more: Wan-14B-720p 64x64 needs
// 224 MB, two passes). Keeping each CTA's whole score rows in shared memory for the top-k instead bounded the
// tile to 16 query blocks x 64 keys at 4 x 1 scores per thread and one CTA per SM at long rows.
// Top-k: a warp per query block (its row), kScoreThreads / 32 rows per CTA.
constexpr int kScoreThreads = 256;
constexpr int kScoreTile = 64;
constexpr int64_t kScoreScratchBytes = int64_t(128) << 20;
// Query x key blocks of one (b, h) the block map scores at most: 1 GiB of fp32 scores (one slice per pass
// past the scratch). Mirrored by turbodiffusion.ops.MAX_BLOCK_PAIRS for the CPU path's check.
constexpr int64_t kMaxBlockPairs = int64_t(1) << 28;
constexpr int kRadixBins = 256;   // 8-bit digits: the top-k threshold is found in 4 passes per row
// Rows of up to 32 kTopkMaxPerLane scores (Mk <= 1536: 64-token key blocks up to ~98k tokens) are held in registers
// and their threshold found by bisection (sla_block_map.cuh); longer rows use the radix select.
constexpr int kTopkMaxPerLane = 48;

// ---- linear branch (sla_linear_state.cuh) ----
// 32-token tiles of k and v (bf16/fp16) double-buffered: 4 x 32 x 128 x 2 B = 32 KB at D = 128. Warps
// own 16 rows (channels d) of H each: D / 16 warps; a warp's accumulator is 16 x (D + 8) fp32 = 68
// registers per lane at D = 128 (the +8 is the all-ones column that yields z).
constexpr int kLinTile = 32;
// N is split so that the grid fills kLinWaves whole waves of co-resident CTAs (2 per SM at D = 128: 128
// registers x 256 threads); a split is at least kLinMinTiles tiles, so its fixed cost (the partial write,
// D x (D + 8) fp32) stays small next to its k/v reads. One wave: sage_sla runs this pass on a side stream
// beside the block map and Q/K's quantizer, and a grid of several waves kept their CTAs off the SMs until
// its last wave (H100, 2026-11-27, sage_sla wall time, two rounds: 1.3B-480p 64x128 1.377 / 1.394 ms with
// one wave vs 1.411 / 1.421 with four, 64x64 1.562 / 1.569 vs 1.592 / 1.592; 14B-720p 64x128 18.5 / 18.7
// either way; half a wave 1.383 / 1.385, a quarter 1.48; again at e3f0108, three rounds, 64x64: one wave
// 1.39-1.42 ms, half 1.43-1.47, a third 1.47-1.49: the main stream's kernels then share the SMs at half speed).
constexpr int kLinWaves = 1;
constexpr int kLinMinTiles = 16;

}  // namespace sla
}  // namespace td
