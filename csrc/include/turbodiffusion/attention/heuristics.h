// Tile shapes of the attention kernels and why.
#pragma once

namespace td {
namespace attn {

// ---- mma.sync INT8-QK / FP8-PV kernel (mma_int8_fp8_attn.cuh; sm_89, sm_90, sm_120) ----
//
// Each warp owns 16 query rows: the M of mma.sync m16n8k32, so a warp's rows are exactly one A
// fragment and one Q scale (kBlkQ = 16: "per-warp" granularity, the finest quantize_qk_int8 offers).
// A warp with 32 rows (two m16 tiles) would halve the shared-memory reads per MMA, but its fp32
// output accumulator alone (2 x 16 x D / 32 lanes) is 128 registers at D = 128, which spills.
constexpr int kBlkQ = 16;
// One K scale per 16 keys: two n8 columns of the QK^T accumulator share it, so dequantizing is one
// fp32 multiply per score with a scale picked per n8 block (finer than one scale per KV tile at no
// extra cost; the smallest block quantize_qk_int8 offers).
constexpr int kBlkK = 16;
// Keys per KV tile: two k32 steps of the PV MMA. 64 keys x 128 channels of INT8 K plus the same of
// FP8 V is 16 KB per stage, 32 KB double-buffered (cp.async): three 4-warp CTAs fit an SM's shared
// memory at D = 128. The S/P tile of a warp is 16 x 64 fp32 = 32 registers per lane.
// V is padded (quantize_v_fp8 pad_to) to a multiple of this.
constexpr int kKvTile = 64;

// Warps per CTA by head dim. Every CTA streams all of K and V of its (b, h) through shared memory,
// so more query rows per CTA mean less L2 traffic; registers bound it:
//  D = 128: O (64) + S/P (32) + Q fragments (16) + addressing and prefetched fragments: ptxas takes
//           all 255 registers (a few dozen bytes spill, see the kernel); a 3-CTA cap (168) spilled 68-100
//           bytes, so 4 warps (64 query rows) and 2 CTAs per SM (8 warps).
//  D = 64:  O (32) + S/P (32) + Q (8): a 128-register cap (2 CTAs of 8 warps) spilled 96 bytes on
//           sm_120a, so 8 warps (128 rows) with no cap; the register count decides residency.
// The block-sparse variant (kSparse) walks one LUT row per CTA, so a CTA's rows must lie in one query
// block: 4 warps (64 rows) at both head dims, which divides every block size it accepts (multiples of 64).
template <int D, bool kSparse = false>
struct MmaAttnConfig {
  static constexpr int kWarps = (D == 128 || kSparse) ? 4 : 8;
  static constexpr int kMinBlocksPerSm = D == 128 ? 2 : 1;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowsPerCta = 16 * kWarps;
};

// ---- wgmma INT8-QK / FP8-PV kernel (sm90_int8_fp8_attn.cuh; sm_90a only) ----
//
// Consumer warpgroups of 64 query rows (the M of wgmma) and one producer warpgroup. KV tiles of 128
// keys: the S accumulator of m64n128 is 64 int32 per lane, P is 16 registers (4 k32 steps), and a V
// tile row (one channel) is 128 bytes = one 128-byte swizzle row. Registers per consumer lane at D =
// 128: O (64) + PV (64) + P (16) or S (64) + O (64) + addressing: the producer group drops to
// kProducerRegs so the consumers can take kConsumerRegs (launched at kLaunchRegs per lane; the
// producer's 128 x (kLaunchRegs - producer) must cover the consumers' 128 x groups x (consumer -
// kLaunchRegs)).
//  Dense: the consumer groups of a CTA share every K/V tile, one CTA per SM (a CTA walks all tiles, so
//         its prologue and epilogue are ~1% of it), three stages of K + V.
//         D = 128: three groups (192 query rows per CTA) at 160 registers (producer 24), each running
//         S, softmax, P V and the fold in order (kSerialPV): O (64) + S (64) or O + PV (64) + P (16)
//         live at once. The tile is bound by the latency of each group's dependent chain
//         (docs/attention.md), so a third warp per scheduler beats overlapping a group's own S and PV
//         (which needs O + PV + S + P, 208 registers, two groups at 240). 123 KB of shared memory (Q 24 KB +
//         3 x (16 KB K + 17 KB V with its rows of ones, kVRows)). Measured on the H100 (2026-11-27,
//         kernel only, same machine start, two rounds): 1.3B-480p 7.44 / 7.49 vs 8.17 / 8.21 ms, 14B-720p
//         134.2 / 134.6 vs 143.1 / 143.0 ms; without the exp turns 7.54 / 7.59 and 135.0 / 137.5 ms.
//         D = 64: four groups (256 rows) at 112 registers with the serial schedule (O 32 + S 64 at the peak:
//         ptxas spills 68 B, a few O values swapped around the fold, L1-resident: TD_SPILL_OK in
//         sm90_int8_fp8_attn.cuh), taking turns on the exp phase; a fourth warp per scheduler hides more of the
//         MUFU-bound softmax. H100, 2026-11-27 (seventeenth session), kernel only, 16k, two machine starts,
//         alternating processes: 1.800 / 1.802 / 1.786 and 1.803 / 1.786 / 1.785 / 1.785 ms vs 1.826 / 1.841 / 1.827 and
//         1.830 / 1.812 / 1.842 / 1.830 for three groups at 160; four groups without the exp turns (92 B of spills)
//         1.808-1.827, with the K scales read from shared memory at each use (12 B) 2.02-2.03. Three groups at
//         160 beat two at 240 once the row sums moved to the tensor cores (kVRows): 1.863 / 1.865 / 1.864 vs
//         1.973 / 1.978 / 2.129 ms, two groups each issuing S_{j+1} with PV_j (before the row sums moved three
//         groups were slower: 2.30 / 2.27 ms serial vs 2.11 / 2.11).
//  Sparse (kSparse): a CTA walks only its query blocks' kept tiles (25 at Wan-1.3B-480p, top-k 0.1), so
//         its fixed part (Q and first K/V loads, the epilogue) matters, and consumer groups share no K/V
//         tile (each 64-row group lies in one query block, whatever blkq).
//         D = 128: three consumer groups per CTA (192 rows, 160 registers, the dense D 128 kernel's serial
//         schedule), each walking its own query block's LUT row through its own ring (kGroupRings; one
//         CTA per SM): 3 rings x 2 slots x 32 KB + Q 24 KB = 216 KB, the SLA linear-term fragments (35 KB)
//         copied into each ring's slots after its group's walk (kLinInSmem off). Measured on the H100
//         (2026-11-27) against one group per CTA and two CTAs per SM (232 registers, overlapped schedule):
//         SageSLA 64x64 sparse stage 1.3B-480p 1.32 / 1.33 vs 1.43 / 1.42 ms, 14B-720p 20.3 / 20.3 vs 21.5 /
//         21.4 ms (same machine start, two rounds); 64x128 (bench_sla, same machine, consecutive calls) 1.18
//         vs 1.22 ms and 19.2 vs 19.9 ms.
//         D = 64: one consumer group (64 rows) per CTA and two CTAs per SM (40 / 216 registers, launched
//         at 128, overlapped schedule; three groups were slower for the dense D 64 kernel).
//         KV tiles: 128 keys whose halves are two consecutive 64-key tiles of the walk (sla_detail::PairTiles),
//         each a TMA box of kBoxKeys = 64 keys (V: 64-byte rows, 64-byte swizzle), so every key block size
//         (multiples of 64, SLA's default 64) runs 128-key tiles with one numerics. Until 2026-11-27 64-key
//         blocks took 64-key tiles (m64n64 S: twice the per-tile overhead). H100, sparse kernel alone, same
//         machine start (two rounds): 1.3B-480p 64x64 1.00 vs 1.09 ms, 128x64 1.01 vs 1.09, 64x128 0.96 vs
//         0.95; 14B-720p 64x64 15.7 vs 17.4 ms, 64x128 15.4 vs 15.4; D 64 16k 64x64 0.36 vs 0.41 ms, 64x128
//         0.33 vs 0.32. (V as one 128-token box where a pair is an aligned 128-key tile gained nothing
//         measurable; the consumers read both halves' tile indices when the slot is full, before S is
//         issued: read at the softmax, the 64x128 walk was 3-4% slower.)
template <int D, bool kSparse = false>
struct Sm90AttnConfig {
  // Sparse D = 128: three groups per CTA, each with its own query block's walk and ring.
  static constexpr bool kGroupRings = kSparse && D == 128;
  static constexpr int kConsumers = kGroupRings ? 3 : kSparse ? 1 : D == 64 ? 4 : 3;
  static constexpr int kRings = kGroupRings ? kConsumers : 1;
  // Each group runs S, softmax, P V and the fold of O in order, instead of issuing S_{j+1} with PV_j
  // (three groups at 160 registers, four at 112, cannot hold PV and S at once).
  static constexpr bool kSerialPV = kConsumers >= 3;
  static constexpr int kCtasPerSm = kSparse && !kGroupRings ? 2 : 1;
  static constexpr int kThreads = 128 * (kConsumers + 1);
  static constexpr int kRowsPerCta = 64 * kConsumers;
  static constexpr int kBN = 128;                      // keys per KV tile (the softmax step)
  static constexpr int kBoxKeys = kSparse ? 64 : kBN;  // keys per TMA box: a tile is kBN / kBoxKeys boxes
  static constexpr int kSlots = kSparse ? 2 : 3;
  // Rows of a V box in shared memory: the row sums l of P on the tensor cores. Every V box is followed by 8
  // rows of E4M3 ones and the P V wgmma runs with N = D + 8, so its last n8 block is sum(E4M3 P) per row (in
  // every lane of the row's quad), added to l with O's fold; the softmax drops its 64 fp32 adds per lane and
  // tile (docs/attention.md "Row sums on the tensor cores").
  static constexpr int kVRows = D + 8;
  // Sparse: the slice's SLA lin (the linear term's wgmma B operand) staged in shared memory once per CTA
  // (9 KB at D 64), except where three rings leave no room for its 35 KB at D 128 (then each ring's producer
  // copies it into the ring's slots once its group's walk is done).
  static constexpr bool kLinInSmem = kSparse && !kGroupRings;
  // (The one-ring sparse producer, D 64, walks and loads in one thread: at 24 registers its walker and
  // tile pairs spilled 68 B; the group rings' producer warps also count their walks' lengths: 32, all the
  // three 160-register groups leave.)
  static constexpr int kProducerRegs = kSparse && !kGroupRings ? 40 : kGroupRings ? 32 : 24;
  static constexpr int kLaunchRegs = 65536 / (kThreads * kCtasPerSm) / 8 * 8;  // 128 (four groups: 96)
  // The consumers take what the producer frees, split evenly, in setmaxnreg's steps of 8: 160 for three groups
  // (D 128 dense, group rings), 112 for four (D 64 dense), 216 for the one-group sparse kernel.
  static constexpr int kConsumerRegs = ((kLaunchRegs - kProducerRegs) / kConsumers + kLaunchRegs) / 8 * 8;
  static_assert(kConsumerRegs <= 256, "setmaxnreg's limit");
};

}  // namespace attn
}  // namespace td
