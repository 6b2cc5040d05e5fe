// SageAttention-style attention for Hopper (sm_90a): INT8 Q K^T and FP8 E4M3 P V on wgmma, K/V tiles
// streamed by TMA through a multi-stage shared-memory ring, warp-specialized (ARCHITECTURE §4.1).
// Same numerics as the mma.sync kernel with 128-key tiles (emulated op for op by
// turbodiffusion/reference/attention.py:attention_int8_fp8_mma with kv_tile = 128; the block-sparse variant
// steps over the kept keys in 128-key tiles: reference/sla.py:attention_int8_fp8_sparse_sm90).
//
// CTA = a producer warpgroup and consumer warpgroups of 64 query rows (dense: 3 at D 128, 4 at D 64;
// sparse: 3 at D 128, each walking its own query block, 1 at D 64 with two CTAs per SM; heuristics.h
// Sm90AttnConfig says why), one CTA per (query rows, head, batch):
//   warpgroup 0: producer. TMA loads: the CTA's Q tiles once (sparse with SLA's linear term: also a
//                bulk copy of the slice's lin, lin_full; without kLinInSmem each ring's producer copies
//                it into the ring's emptied slots once its group has released the last tile, and, a tile
//                earlier, the group's unquantized q rows for the epilogue, q_rows_full), then K
//                and V tiles into ring slots (full: bytes landed and K scales staged; empty: the
//                ring's consumer warps are done), plus each tile's K scales staged in shared memory
//                (sparse: also the tile's two 64-key tiles, and -1 in the slot after the last: the consumers
//                never walk the LUT). One ring: a thread loads, another warp stages; group rings:
//                warp r does both for ring r. The group gives its registers to the consumers
//                (setmaxnreg).
//   warpgroups 1.. : consumers, 64 query rows each. Per KV tile: S = Q K^T (wgmma m64n128k32 s8,
//                both operands from shared memory), online softmax on the int32 accumulator, P packed
//                to E4M3 in registers, PV = P V (wgmma m64nDk32 e4m3, A from registers) into a fresh
//                fp32 accumulator, O = O * alpha + PV (two-level accumulation); with V's box followed
//                by rows of ones, PV's last n8 block is the row sums l (kVRows). Three or four groups: each
//                runs S_j, softmax, PV_j in order and the other groups hide the latencies; one group
//                (sparse D 64): S_j and PV_{j-1} are issued together and the softmax of S_j starts as
//                soon as S_j lands (its row-max phase overlaps PV_{j-1}). Dense groups take turns on the
//                softmax's exp phase (kExpTurns below) and otherwise run unsynchronized. (A named-barrier
//                ping-pong on the MMAs, FA3-style, was slower on the H100 at every shape, 2-5%:
//                docs/attention.md.)
// Grid x (query tiles) varies fastest: the CTAs in flight share one (b, h) and read its K and V from L2.
//
// Granularity: one Q scale per warp (16 rows, kBlkQ), one K scale per 16 keys (two n8 blocks of the S
// accumulator, kBlkK); V's tokens permuted per 16 by quantize_v_fp8 so that the S accumulator of a lane
// is already its P A-fragment (softmax_fp8.cuh, reference.quant.V_TOKEN_PERM).
#pragma once
#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "turbodiffusion/attention/heuristics.h"
#include "turbodiffusion/attention/params.h"
#include "turbodiffusion/attention/softmax_fp8.cuh"
#include "turbodiffusion/common/cuda_check.h"
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/common/sm90_primitives.cuh"
#include "turbodiffusion/sparse/lut_tiles.cuh"

namespace td {
namespace sm90_attn {

// q scale x the K scales of a ring slot's tile (staged by the producer with the K tile), read from shared
// memory at each use: the softmax's two phases each read them, and holding them in between cost 8
// registers at the kernel's peak (O, PV, S and P live at once).
struct SlotScales {
  const float* ks;
  float qs;
  __device__ __forceinline__ float operator[](int j) const { return __fmul_rn(qs, ks[j]); }
};

// SLA's lin in shared memory (sla_detail::LinWgmma layout: D / 64 column halves of D + 8 rows of 128 bytes,
// each 1024-aligned): the B operand of the linear term's wgmmas for store_warp_rows (A = e, registers).
// The whole warpgroup runs them. `full`: the barrier that says lin has landed.
template <int D>
struct LinWgmmaB {
  static constexpr int kSteps = D / 16;
  const uint8_t* half[D / 64] = {};
  uint64_t* full = nullptr;  // (nullptr: no linear term)
  __device__ __forceinline__ bool active() const { return full != nullptr; }
  // K-major descriptor of k16 step s (32 bytes of a half's 128-byte rows) from row `row` on.
  __device__ __forceinline__ uint64_t desc(int s, int row) const {
    return sm90::desc_advance(sm90::kmajor_desc<128>(half[s / 4] + row * 128), 32 * (s % 4));
  }
  // c = e . zeta (rows D..D+7: an m64n8 accumulator, laid out like mma.sync's C fragment).
  __device__ __forceinline__ void zeta(const uint32_t (&a)[kSteps][4], float (&c)[4]) const {
    sm90::mbar_wait(full, 0);
    float d[1][4];
    sm90::wgmma_fence();
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (s == 0) sm90::wgmma_m64n8k16_f16_rs<false>(d, a[s], desc(s, D));
      else sm90::wgmma_m64n8k16_f16_rs<true>(d, a[s], desc(s, D));
    }
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_operands(d);
#pragma unroll
    for (int e = 0; e < 4; ++e) c[e] = d[0][e];
  }
  // o += e . G (rows 0..D-1), 64 columns at a time through a fresh accumulator (wgmma accumulating into O
  // itself made ptxas serialize every wgmma of the kernel at 160 registers: C7512).
  __device__ __forceinline__ void accumulate(const uint32_t (&a)[kSteps][4], float (&o)[D / 8][4]) const {
#pragma unroll
    for (int hn = 0; hn < D / 64; ++hn) {
      float y[8][4];
      sm90::wgmma_fence();
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        if (s == 0) sm90::wgmma_m64n64k16_f16_rs<false>(y, a[s], desc(s, 64 * hn));
        else sm90::wgmma_m64n64k16_f16_rs<true>(y, a[s], desc(s, 64 * hn));
      }
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::fence_operands(y);
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[8 * hn + n][e] += y[n][e];
    }
  }
};

// Shared memory of one CTA. Every tile is a multiple of 1024 bytes and 1024-aligned: TMA's 128-byte
// swizzle (and the wgmma descriptors that read it) repeat every 8 rows of 128 bytes. kRings rings of
// kSlots K/V slots: one read by every consumer group, or one per group (kGroupRings).
template <int D, bool kSparse>
struct alignas(1024) Smem {
  using Cfg = attn::Sm90AttnConfig<D, kSparse>;
  static constexpr int R = Cfg::kRings, S = Cfg::kSlots;
  uint8_t q[Cfg::kConsumers][64 * D];   // [row][channel], one 64-row tile per group
  uint8_t k[R][S][Cfg::kBN * D];        // [key][channel]: kBN / kBoxKeys boxes of [kBoxKeys][D]
  // boxes of [channel][kBoxKeys tokens] (quantize_v_fp8's layout), each followed by kVRows - D rows of ones
  // (kVRows); a box's stride keeps its swizzle's alignment (1024 / 512 bytes for 128- / 64-byte rows).
  uint8_t v[R][S][Cfg::kVRows * Cfg::kBN];
  // Sparse: the slice's SLA lin (p.lin_frag, sla_detail::LinWgmma layout, 35 KB at D = 128), the B operand
  // of every group's linear-term wgmmas (without kLinInSmem each ring's emptied K and V slots take it).
  alignas(1024) uint4 lin[Cfg::kLinInSmem ? sla_detail::LinWgmma<D>::kBytes / 16 : 1];
  // Dense: each consumer warp's 16 output rows on their way out (attn::StagedRows); sparse: a ring's K slot
  // takes its group's (free once the walk has ended: kStageSlot).
  alignas(16) uint8_t o_stage[kSparse ? 1 : Cfg::kConsumers * 4][kSparse ? 16 : 16 * 2 * D];
  alignas(16) float k_scale[R][S][Cfg::kBN / attn::kBlkK];  // the K tile's scales (read as float4)
  int2 tile[R][S];  // sparse: the slot's two 64-key tiles (sla_detail::PairTiles: lo, hi), lo = -1 past the walk
  int walk_pairs[R];  // group rings: each ring's walk length (128-key tiles), for the exp turns
  uint64_t q_full;
  uint64_t lin_full[R];  // lin landed (kLinInSmem: [0], loaded with Q; else per ring after its walk)
  uint64_t q_rows_full[R];  // group rings: the group's unquantized q rows landed (in the V buffer its walk's end freed)
  uint64_t walks_known;  // group rings: every ring's walk_pairs written
  uint64_t full[R][S];
  uint64_t empty[R][S];
};

}  // namespace sm90_attn

// tma_nhd: q/k tensor maps are (D, H, N, B) (layout NHD) instead of (D, N, H, B) (HND); the box is
// one head's rows either way. kSparse: block-sparse (ARCHITECTURE §4.2) over p.lut / p.count with
// p.blkq % 64 == 0 and p.blkk % 64 == 0, SLA's linear epilogue with p.lin_frag.
// TD_SPILL_OK(sm90_int8_fp8_attn_kernel<64, false>): four consumer groups at 112 registers (heuristics.h): ptxas
// (nvcc 13.0) spills 68 B, a few O values reloaded around each tile's fold from L1; measured 1.5-4% faster at
// D 64 16k than three groups at 160 without spills (H100, 2026-11-27; docs/attention.md).
template <int D, bool kSparse>
__global__ void __launch_bounds__(attn::Sm90AttnConfig<D, kSparse>::kThreads,
                                  attn::Sm90AttnConfig<D, kSparse>::kCtasPerSm)
    sm90_int8_fp8_attn_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                              const __grid_constant__ CUtensorMap tm_v, const AttnInt8Fp8Params p, const int tma_nhd) {
#ifdef TD_SM90A_ENABLED
  using namespace sm90;
  using Cfg = attn::Sm90AttnConfig<D, kSparse>;
  constexpr int S = Cfg::kSlots;
  constexpr int BN = Cfg::kBN, kBox = Cfg::kBoxKeys;
  constexpr int NB = BN / 8;       // n8 blocks of the S tile
  constexpr int NO = D / 8;        // n8 blocks of the output
  constexpr int NPV = Cfg::kVRows / 8;  // n8 blocks of the P V product (the last one is l's)
  constexpr int kVBox = Cfg::kVRows * kBox;  // bytes from one V box to the next
  static_assert(attn::kBlkQ == 16 && attn::kBlkK == 16, "one Q scale per warp, one K scale per two n8 blocks");
  // (A V box row is kBox bytes: the 128- or 64-byte swizzle of the PV descriptor.)

  // The 1024-aligned Smem inside the dynamic allocation, reached by an offset from smem_raw so that the compiler
  // keeps the shared state space (LDS for the K scales and tiles; through a round trip via an integer it emitted
  // generic loads).
  extern __shared__ uint8_t smem_raw[];
  const uint32_t align_pad = (1024u - (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) & 1023u)) & 1023u;
  auto& sm = *static_cast<sm90_attn::Smem<D, kSparse>*>(__builtin_assume_aligned(smem_raw + align_pad, 1024));

  const int wg = threadIdx.x / 128, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  const int64_t slice = int64_t(b) * p.heads + h;
  const int q_row0 = blockIdx.x * Cfg::kRowsPerCta;
  // The KV tiles ring r walks: all, or its query block's LUT row's (a group's 64 rows lie in one block;
  // one ring: the CTA's).
  using Tiles = std::conditional_t<kSparse, sla_detail::PairTiles, sla_detail::DenseTiles<BN>>;
  auto walk = [&](int r) { return Tiles(p, slice, kSparse ? (q_row0 + 64 * r) / p.blkq : 0); };

  if (threadIdx.x == 0) {
    mbar_init(&sm.q_full, 1);
    if constexpr (Cfg::kGroupRings) mbar_init(&sm.walks_known, Cfg::kRings);
#pragma unroll
    for (int r = 0; r < Cfg::kRings; ++r) {
      mbar_init(&sm.lin_full[r], 1);
      mbar_init(&sm.q_rows_full[r], 1);
    }
#pragma unroll
    for (int r = 0; r < Cfg::kRings; ++r)
#pragma unroll
      for (int s = 0; s < Cfg::kSlots; ++s) {
        // One ring: the TMA thread (with the bytes) and the K-scale warp; group rings: one warp does both.
        mbar_init(&sm.full[r][s], Cfg::kGroupRings ? 1 : 2);
        mbar_init(&sm.empty[r][s], Cfg::kConsumers / Cfg::kRings * 4);  // the consumer warps
      }
    fence_barrier_init();
  }
  {  // the ones rows after every V box (TMA never writes them), for the row sums l (kVRows)
    constexpr int kOnes = (Cfg::kVRows - D) * kBox / 16, kBoxes = Cfg::kRings * S * (BN / kBox);  // 16-byte stores
    for (int i = threadIdx.x; i < kBoxes * kOnes; i += Cfg::kThreads)
      reinterpret_cast<uint4*>(&sm.v[0][0][0] + (i / kOnes) * kVBox + D * kBox)[i % kOnes] =
          make_uint4(0x38383838u, 0x38383838u, 0x38383838u, 0x38383838u);  // E4M3 1.0
    fence_proxy_async_smem();  // visible to the wgmma (async proxy)
  }
  __syncthreads();

  // A sparse walk ends with one ring position whose slot carries no bytes and tile -1 (every producer
  // arrives on full): the consumers learn the walk's end from the ring.
  if (wg == 0) {  // ---------------- producer ----------------
    regs_dealloc<Cfg::kProducerRegs>();
    // Roles: one ring: warp 0's lane 0 issues the TMA loads (Q and the linear term's fragments first),
    // warp 2 stages each tile's K scales (one per lane, clamped past the last block: those keys are
    // masked) so that the consumers read them from shared memory instead of waiting on global loads,
    // and (sparse) the slot's two 64-key tiles; each arrives on full (count 2). Group rings: warp r does both
    // for ring r in one loop (count 1), warp 0's lane 0 loads Q first. (The one-ring kernels keep two
    // loops: the combined loop made the dense D 64 kernel 7% slower on the H100, 2026-11-27.)
    // Rows past nq (and whole boxes past it) are zero-filled by TMA; the box still counts in full.
    using Lin = sla_detail::LinWgmma<D>;
    const uint4* lin_g = p.lin_frag ? p.lin_frag + slice * (Lin::kBytes / 16) : nullptr;
    auto load_rows = [&](const CUtensorMap* map, void* dst, uint64_t* bar, int row) {
      if (tma_nhd) tma_load_4d(dst, map, bar, 0, h, row, b);
      else tma_load_4d(dst, map, bar, 0, row, h, b);
    };
    auto load_q = [&] {
      prefetch_tmap(&tm_q);
      prefetch_tmap(&tm_k);
      prefetch_tmap(&tm_v);
      mbar_arrive_expect_tx(&sm.q_full, Cfg::kConsumers * 64 * D);
#pragma unroll
      for (int c = 0; c < Cfg::kConsumers; ++c) load_rows(&tm_q, sm.q[c], &sm.q_full, q_row0 + 64 * c);
      if (Cfg::kLinInSmem && p.lin_frag) {
        mbar_arrive_expect_tx(&sm.lin_full[0], Lin::kBytes);
        bulk_load(sm.lin, lin_g, Lin::kBytes, &sm.lin_full[0]);
      }
    };
    auto wait_free = [&](int r, int i) {  // walk position i's slot: its previous use released
      if (i >= S) mbar_wait(&sm.empty[r][i % S], ((i / S) - 1) & 1);
    };
    // The box of the tile's half h (in units of kBox keys): dense, the tile itself; sparse, the walk's two
    // 64-key tiles (an absent upper half, hi < 0, loads the lower one again: its scores are masked, and its
    // V bytes must be finite E4M3 codes, which a stale slot need not hold).
    auto box = [&](int lo, int hi, int h) { return h == 0 || hi < 0 ? lo : hi; };
    // One thread; with `arrive` its arrival carries the bytes, else it only announces them (expect_tx) and
    // arrives later.
    auto load_tile = [&](int r, int s, int lo, int hi, bool arrive = true) {
      if (arrive) mbar_arrive_expect_tx(&sm.full[r][s], 2 * BN * D);
      else mbar_expect_tx(&sm.full[r][s], 2 * BN * D);
#pragma unroll
      for (int h = 0; h < BN / kBox; ++h) {  // keys >= nk: zeros (masked below)
        load_rows(&tm_k, sm.k[r][s] + h * kBox * D, &sm.full[r][s], box(lo, hi, h) * kBox);
        tma_load_3d(sm.v[r][s] + h * kVBox, &tm_v, &sm.full[r][s], box(lo, hi, h) * kBox, 0,
                    static_cast<int>(slice));
      }
    };
    // Group rings: the group's 64 unquantized q rows from `row` on, which its epilogue reads (q . k_mean, SLA's
    // phi(q)), bulk-copied (a row each, the checks keep q's rows 16-byte aligned) into `dst` at a pitch of
    // attn::kSmemQRowPitch, q_rows_full[r] counting the bytes. The producer issues them when its walk's end marker
    // has a slot, i.e. once the group has released the walk's last tile but one, so they land while the group
    // runs its last tile, and the epilogue reads shared memory. H100, sparse 14B-720p 64x64 (globaltimer stamps,
    // 2026-11-27): the epilogue's loads of q from global memory took 4.1 us of a ~115 us CTA, 2.9 us with the
    // rows prefetched into L2 after the walk. (The dense kernel, whose CTAs run for 0.4-1 ms, reads them from
    // global memory.)
    auto copy_q_rows = [&](int r, uint8_t* dst) {  // a warp
      const int row = q_row0 + 64 * r;
      const int rows = static_cast<int>(std::clamp<int64_t>(p.nq - row, 0, 64));
      if (lane == 0) mbar_arrive_expect_tx(&sm.q_rows_full[r], rows * 2 * D);
      __syncwarp();
      const char* qo = static_cast<const char*>(p.q_orig) + 2 * (b * p.qo_stride_b + h * p.qo_stride_h);
      for (int x = lane; x < rows; x += 32)
        bulk_load(dst + x * attn::kSmemQRowPitch<D>, qo + 2 * (row + x) * p.qo_stride_n, 2 * D, &sm.q_rows_full[r]);
    };
    // A warp: the tile's K scales and (sparse) tiles; the warp barrier orders the lanes' stores before
    // lane 0's release (its arrival on full) that follows.
    auto stage_scales = [&](const float* ks_g, int r, int s, int lo, int hi) {  // ks_g: the slice's K scales
      constexpr int kPerBox = kBox / attn::kBlkK;
      if (lo >= 0 && lane < BN / attn::kBlkK)
        sm.k_scale[r][s][lane] =
            __ldg(ks_g + min(box(lo, hi, lane / kPerBox) * kPerBox + lane % kPerBox, p.k_blocks - 1));
      if (kSparse && lane == 0) sm.tile[r][s] = make_int2(lo, hi);
      __syncwarp();
    };
    if constexpr (Cfg::kGroupRings) {
      if (warp == 0 && lane == 0) load_q();
      const int r = __shfl_sync(0xffffffffu, warp, 0);  // (warp-uniform for ptxas: the ring's addresses)
      if (r < Cfg::kRings) {
        const float* ks_g = p.k_scale + slice * p.k_blocks;
        Tiles tiles = walk(r);
        int i = 0;
        for (int tile = 0; tile >= 0; ++i) {
          tile = tiles.next();
          const int hi = tiles.hi, s = i % S;
          wait_free(r, i);
          // The TMA first, the K scales (a global load) under it, then the arrival that completes the slot.
          if (lane == 0 && tile >= 0) load_tile(r, s, tile, hi, false);
          stage_scales(ks_g, r, s, tile, hi);
          if (lane == 0) mbar_arrive(&sm.full[r][s]);
          if (i == 0) {  // the walk's length, once its first tile is on its way (the consumers' exp turns)
            const int pairs = tiles.count_warp(lane);
            if (lane == 0) {
              sm.walk_pairs[r] = pairs;
              mbar_arrive(&sm.walks_known);
            }
          }
        }
        // The end marker's slot (walk position i - 1: its K and V buffers carry no tile) takes the q rows.
        static_assert(64 * attn::kSmemQRowPitch<D> <= sizeof(sm.v[0][0]), "a V buffer holds a group's q rows");
        copy_q_rows(r, sm.v[r][(i - 1) % S]);
        // Without room for lin beside the rings: once the group has released its last tile (walk position
        // i - 2; the one before was released earlier), lin goes into the ring's first K slot (spilling into
        // the second) and the V buffer the q rows left (a column half each), while the group runs the first part
        // of its epilogue.
        if (!Cfg::kLinInSmem && p.lin_frag) {
          static_assert(Cfg::kLinInSmem || (Lin::kHalves == 2 && Lin::kHalfBytes <= sizeof(sm.k[0]) &&
                                            Lin::kHalfBytes <= sizeof(sm.v[0])), "a column half per ring half");
          if (i >= 2) wait_free(r, i - 2 + S);
          if (lane == 0) {
            mbar_arrive_expect_tx(&sm.lin_full[r], Lin::kBytes);
            bulk_load(sm.k[r][0], lin_g, Lin::kHalfBytes, &sm.lin_full[r]);
            bulk_load(sm.v[r][i % S], lin_g + Lin::kHalfBytes / 16, Lin::kHalfBytes, &sm.lin_full[r]);
          }
        }
      }
    } else if (warp == 0 && lane == 0) {
      load_q();
      Tiles tiles = walk(0);
      int i = 0;
      for (int tile; (tile = tiles.next()) >= 0; ++i) {
        wait_free(0, i);
        load_tile(0, i % S, tile, tiles.hi);
      }
      if constexpr (kSparse) {  // the end of the walk
        wait_free(0, i);
        mbar_arrive(&sm.full[0][i % S]);
      }
    } else if (warp == 2) {
      const float* ks_g = p.k_scale + slice * p.k_blocks;
      Tiles tiles = walk(0);
      for (int i = 0, tile = 0; tile >= 0; ++i) {
        tile = tiles.next();
        if (!kSparse && tile < 0) break;
        wait_free(0, i);
        stage_scales(ks_g, 0, i % S, tile, tiles.hi);
        if (lane == 0) mbar_arrive(&sm.full[0][i % S]);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  regs_alloc<Cfg::kConsumerRegs>();
  // The group index broadcast from lane 0: ptxas then knows it is warp-uniform and keeps what derives from
  // it (the ring's slot addresses, wgmma descriptors, the exp turns' barrier ids) in uniform registers;
  // derived from threadIdx, it computed them per thread and moved them over (R2UR) in every tile (the
  // sparse kernel's loop body: ~615 instructions per warp and tile vs the dense kernel's ~550, in ncu).
  // Measured on the H100 (2026-11-27, same machine start, kernel only, two rounds): dense 1.3B-480p 6.89 /
  // 6.84 vs 7.45 / 7.44 ms, 14B-720p 120.3 / 120.6 vs 129.5 / 127.6 ms; sparse (with the tile index below and
  // the scales in registers) 1.3B-480p 64x128 0.961 / 0.959 vs 1.116 / 1.101 ms, 64x64 1.10 vs 1.27 ms,
  // 14B-720p 64x128 15.0 vs 16.8-17.1 ms; but the dense D 64 kernel (then two groups, overlapped schedule) 2.42
  // vs 2.12 ms: not there. (Since then ptxas spills nothing in the sparse D 128 kernels.)
  constexpr bool kUniformGroup = D == 128 || kSparse;
  const int cg = Cfg::kConsumers == 1 ? 0 : kUniformGroup ? __shfl_sync(0xffffffffu, wg - 1, 0) : wg - 1;
  const int ring = Cfg::kGroupRings ? cg : 0;
  // This warp's first query row (an int like q_row0: as an int64 its upper word stayed live through the tile loop,
  // which at 160 registers cost a spill once O's fold took the row sums too).
  const int row0 = q_row0 + 64 * cg + 16 * (warp % 4);
  const int qblk = row0 / attn::kBlkQ;
  const float qs = qblk < p.q_blocks ? __ldg(p.q_scale + slice * p.q_blocks + qblk) : 0.f;

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  mbar_wait(&sm.q_full, 0);
  const uint64_t desc_q = kmajor_desc<D>(sm.q[cg]);

  // Exp turns: the groups take turns on the softmax's exp phase (bar.sync on the group's named
  // barrier before it, bar.arrive on the next group's after it; group 0 first, then 1, ...), so that the
  // groups' exp phases (ex2 at 16 per clock per SM) overlap less. Only in part: ptxas moves about a third
  // of the exps above the bar.sync (arithmetic crosses barriers), and forcing all of them after it, or more of
  // them before it, was 1-31% slower (docs/attention.md, "What ptxas does with the exp turns"). Measured on the
  // H100 (same machine start, kernel only): two groups at D 64 16k 2.21 vs 2.28 ms (2026-11-26); three
  // groups at D 128 (2026-11-27) 1.3B-480p 7.44 / 7.49 vs 7.54 / 7.59 ms, 14B-720p 134.2 / 134.6 vs
  // 135.0 / 137.5 ms (two groups at D 128 were slower with turns); again with the row sums of kVRows (three rounds)
  // 6.82-6.94 vs 6.98-7.17 ms and 122.4-124.0 vs 127.7-130.5 ms. Needs every group to walk the same number
  // of tiles: always so dense; with group rings (sparse) where the three walks' lengths, which the producer
  // warps count from the LUT rows (walk_pairs), are equal (top-k LUTs: equal counts per row, so equal walks at
  // blkk 64 and 128), a CTA-uniform choice.
  constexpr int kTurnThreads = 2 * 128;  // the group taking its turn and the one handing it over
  constexpr bool kTurnBars = !kSparse || Cfg::kGroupRings;  // (the one-group sparse kernel has no one to take turns with)
  const int my_bar = 1 + cg, next_bar = 1 + (cg + 1) % Cfg::kConsumers;
  bool turns = !kSparse;
  if constexpr (Cfg::kGroupRings) {
    mbar_wait(&sm.walks_known, 0);
    turns = true;
#pragma unroll
    for (int r = 1; r < Cfg::kRings; ++r) turns = turns && sm.walk_pairs[r] == sm.walk_pairs[0];
    turns = __shfl_sync(0xffffffffu, turns, 0);  // (warp-uniform for ptxas)
  }
  // Without turns each group hands the turn to itself (its bar.arrive before its next bar.sync on its own
  // barrier): the tile loop holds one barrier id and no flag (as a bool and a thread count, the choice cost
  // the sparse kernel a spill at 160 registers).
  const int turn_next = turns ? next_bar : my_bar;

  int32_t acc[NB][4];      // S of the current tile
  float pv[NPV][4];        // P V of the previous tile (a fresh accumulator: two-level accumulation)
  uint32_t pa[BN / 32][4];  // P of the current tile (E4M3 A fragments)
  float alpha[2];           // its rescale factor of O

  // i: the tile's position in the walk (ring stage i % S, phase i / S).
  // The tile at walk position i: x its 128-key tile (dense) or its two 64-key tiles x, y (sparse,
  // sla_detail::PairTiles); x = -1: the walk has ended. Sparse: published in the slot by the K-scale warp
  // (so the consumers hold no LUT walker and load no LUT entries), read once the slot is full, before
  // S is issued (read later, at the softmax, its latency sat on the tile's critical path).
  sla_detail::DenseTiles<BN> dense_tiles(p, slice, 0);
  auto next_tile = [&](int i) {
    if constexpr (kSparse) {
      mbar_wait(&sm.full[ring][i % S], (i / S) & 1);
      const int2 t = sm.tile[ring][i % S];  // (broadcast: warp-uniform for ptxas, as cg)
      return make_int2(__shfl_sync(0xffffffffu, t.x, 0), __shfl_sync(0xffffffffu, t.y, 0));
    } else {
      return make_int2(dense_tiles.next(), -1);
    }
  };
  auto tile_keys = [&](int2 t) -> attn::TileKeys {  // (an absent upper half: keys from nk on, all masked)
    if constexpr (kSparse) return {int64_t(t.x) * kBox, t.y >= 0 ? int64_t(t.y) * kBox : p.nk};
    else return attn::TileKeys::contiguous<NB>(int64_t(t.x) * BN);
  };
  auto issue_qk = [&](int i) {  // S = Q K^T of walk position i (int32, exact); one commit group
    if constexpr (!kSparse) mbar_wait(&sm.full[ring][i % S], (i / S) & 1);  // (sparse: next_tile waited)
    const uint64_t desc_k = kmajor_desc<D>(sm.k[ring][i % S]);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < D / 32; ++ks) {
      const uint64_t da = desc_advance(desc_q, 32 * ks), db = desc_advance(desc_k, 32 * ks);
      if (ks == 0) wgmma_m64n128k32_s8<false>(acc, da, db);
      else wgmma_m64n128k32_s8<true>(acc, da, db);
    }
    wgmma_commit();
  };
  auto issue_pv = [&](int i) {  // PV = P V_tile (fp32); one commit group
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < BN / 32; ++ks) {  // k step ks: 32 tokens of the V box 32 ks / kBox
      const uint8_t* v_box = sm.v[ring][i % S] + 32 * ks / kBox * kVBox;
      const uint64_t dv = desc_advance(kmajor_desc<kBox>(v_box), 32 * ks % kBox);
      if (ks == 0) wgmma_e4m3_rs<false>(pv, pa[ks], dv);
      else wgmma_e4m3_rs<true>(pv, pa[ks], dv);
    }
    wgmma_commit();
  };
  // After wgmma_wait: PV of walk position i is in pv; its P registers may be reused from here on (the
  // fence keeps the compiler from reusing them while the asynchronous MMA still reads them).
  auto finish_pv = [&](int i) {
    fence_operands(pv);
    fence_operands(pa);
    if (lane == 0) mbar_arrive(&sm.empty[ring][i % S]);  // this warp no longer reads the slot
#pragma unroll
    for (int n = 0; n < NO; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] = __fmaf_rn(o[n][e], alpha[e >> 1], pv[n][e]);
    // The columns of the ones rows: the row sums of E4M3 P (rows g, g + 8).
    l[0] = __fmaf_rn(l[0], alpha[0], pv[NO][0]);
    l[1] = __fmaf_rn(l[1], alpha[1], pv[NO][2]);
  };
  // Softmax of S (walk position i) into pa. Overlapped schedule: for i >= 1, PV_{i-1} is still in flight;
  // the row-max phase overlaps it, then O takes it (with the previous alpha) before the exp phase
  // rewrites pa. sc: q scale x the tile's K scales (staged by the producer with the K tile), held in
  // registers, or read from shared memory at each use where registers are short (the sparse kernel's
  // overlapped schedule: sm90_attn::SlotScales). (The sparse serial schedule read them at each use too
  // until 2026-11-27: in registers, 64x128 1.3B-480p 0.955 vs 0.983 ms, 14B-720p 15.3 vs 15.7 ms.)
  auto softmax_scaled = [&](int i, int2 tile, const auto& sc) {
    attn::softmax_tile_to_fp8<NB, /*kSumL=*/false>(acc, sc, tile_keys(tile), p.nk, m, l, alpha, pa, [&] {
      if (!Cfg::kSerialPV && i > 0) {
        wgmma_wait<0>();
        finish_pv(i - 1);  // alpha is still PV_{i-1}'s
      }
      if (kTurnBars) named_bar_sync(my_bar, kTurnThreads);  // this group's exp turn
    });
    if (kTurnBars) named_bar_arrive(turn_next, kTurnThreads);  // the next group's turn
  };
  auto softmax = [&](int i, int2 tile) {
    if constexpr (kSparse && !Cfg::kSerialPV) {
      softmax_scaled(i, tile, sm90_attn::SlotScales{sm.k_scale[ring][i % S], qs});
    } else {
      static_assert(NB % 8 == 0, "the K scales of a tile are whole float4");
      const float4* ks = reinterpret_cast<const float4*>(sm.k_scale[ring][i % S]);
      float sc[NB / 2];
#pragma unroll
      for (int j = 0; j < NB / 8; ++j) {
        const float4 k4 = ks[j];
        sc[4 * j] = qs * k4.x;
        sc[4 * j + 1] = qs * k4.y;
        sc[4 * j + 2] = qs * k4.z;
        sc[4 * j + 3] = qs * k4.w;
      }
      softmax_scaled(i, tile, sc);
    }
  };
  // Overlapped schedule (kSerialPV off): at walk position i >= 1, S_i and PV_{i-1} are issued together
  // (two commit groups, which complete in order); the softmax of S_i starts once S_i has landed, so
  // PV_{i-1} runs under it. Serial schedule (three or four groups): each group's tile is one chain.
  const int2 tile = next_tile(0);
  int walk_end = 0;  // the walk's end marker's position (group rings: its slot's V buffer holds the q rows)
  if (tile.x >= 0) {  // (sparse: a row with no kept block walks nothing and stores 0, LSE -inf)
    // group 0 takes the first turn (without turns: each group its own)
    if (kTurnBars && (!turns || cg == Cfg::kConsumers - 1)) named_bar_arrive(turns ? 1 : my_bar, kTurnThreads);
    if constexpr (Cfg::kSerialPV) {  // S_i, softmax, PV_i, fold: the other groups fill the gaps
      int i = 0;
      for (int2 t = tile; t.x >= 0; t = next_tile(++i)) {
        issue_qk(i);
        wgmma_wait<0>();
        fence_operands(acc);
        softmax(i, t);
        issue_pv(i);
        wgmma_wait<0>();
        finish_pv(i);
      }
      walk_end = i;
    } else {
      issue_qk(0);
      wgmma_wait<0>();
      fence_operands(acc);
      softmax(0, tile);
      int i = 1;
      for (int2 next; (next = next_tile(i)).x >= 0; ++i) {
        issue_qk(i);
        issue_pv(i - 1);
        wgmma_wait<1>();
        fence_operands(acc);
        softmax(i, next);
      }
      issue_pv(i - 1);
      wgmma_wait<0>();
      finish_pv(i - 1);
    }
    // consume the last group's last arrival (without turns: each group its own)
    if (kTurnBars && (!turns || cg == 0)) named_bar_sync(turns ? 1 : my_bar, kTurnThreads);
  }
  sm90_attn::LinWgmmaB<D> lin_b;  // SLA's lin: staged with Q (kLinInSmem) or in the ring after the walk
  if (kSparse && p.lin_frag) {
    if constexpr (Cfg::kLinInSmem) {
      const uint8_t* base = reinterpret_cast<const uint8_t*>(sm.lin);
#pragma unroll
      for (int c = 0; c < D / 64; ++c) lin_b.half[c] = base + c * sla_detail::LinWgmma<D>::kHalfBytes;
      lin_b.full = &sm.lin_full[0];
    } else {
      lin_b.half[0] = sm.k[ring][0];
      lin_b.half[D / 64 - 1] = sm.v[ring][(walk_end + 1) % S];
      lin_b.full = &sm.lin_full[ring];
    }
  }
  // Every lane of a quad holds its rows' whole l (P V's ones columns); store_warp_rows adds the quad's partials.
  if (lane % 4 != 0) l[0] = l[1] = 0.f;
  // The warp's output rows go out through shared memory: dense, its own o_stage; sparse, the K buffer of the
  // group's ring slot kStageSlot (one ring: the walk has ended, every slot is free; group rings: lin's first half
  // fills slot 0's K buffer and the first 1 KB of slot 1's, its zeta rows, which the stage overwrites only after
  // store_warp_rows' linear-term wgmmas, collective over the group's warps, have completed).
  constexpr int kStageSlot = Cfg::kGroupRings ? 1 : 0;
  static_assert(!kSparse || sizeof(sm.k[0][0]) >= 4 * 16 * 2 * D, "a K slot holds a group's output rows");
  const uint32_t stage = smem_u32(kSparse ? sm.k[ring][kStageSlot] : sm.o_stage[4 * cg]);  // (the group's)
  const uint8_t* q_rows = nullptr;  // group rings: the warp's 16 q rows, copied by the ring's producer
  if constexpr (Cfg::kGroupRings) {
    mbar_wait(&sm.q_rows_full[ring], 0);
    q_rows = sm.v[ring][walk_end % S] + 16 * (warp % 4) * attn::kSmemQRowPitch<D>;
  }
  attn::store_warp_rows<D, kSparse, /*kStaged=*/true, Cfg::kGroupRings>(p, slice, b, h, int64_t(row0), o, m, l, lin_b,
                                                                          stage, q_rows);
#else
  __trap();  // built for another arch: the launcher only dispatches here on sm_90
#endif
}

template <int D, bool kSparse>
constexpr size_t sm90_int8_fp8_attn_smem_bytes() {
  return sizeof(sm90_attn::Smem<D, kSparse>) + 1024;  // + alignment slack of the dynamic shared memory base
}

// Host launcher: one CTA per (kRowsPerCta query rows, head, batch), on `stream`. The tensor maps are
// built by the caller (csrc/ops/attention.cu) over q_int8, k_int8 and v_fp8 with the boxes of
// Sm90AttnConfig (kBoxKeys keys per K / V box).
template <int D, bool kSparse = false>
void launch_sm90_int8_fp8_attn(const CUtensorMap& tm_q, const CUtensorMap& tm_k, const CUtensorMap& tm_v,
                               const AttnInt8Fp8Params& p, bool tma_nhd, int batch, cudaStream_t stream) {
  if (p.nq == 0 || batch == 0 || p.heads == 0) return;
  using Cfg = attn::Sm90AttnConfig<D, kSparse>;
  constexpr size_t smem = sm90_int8_fp8_attn_smem_bytes<D, kSparse>();
  static_assert(Cfg::kCtasPerSm * (smem + 1024) <= 228 * 1024,
                "kCtasPerSm CTAs fit an sm_90 SM's 228 KB of shared memory (the driver reserves 1 KB per CTA)");
  // Several CTAs per SM (sparse) need the largest shared-memory carveout.
  allow_dynamic_shared_memory(sm90_int8_fp8_attn_kernel<D, kSparse>, static_cast<int>(smem), Cfg::kCtasPerSm > 1);
  const dim3 grid(static_cast<unsigned>(cdiv(p.nq, Cfg::kRowsPerCta)), p.heads, batch);
  sm90_int8_fp8_attn_kernel<D, kSparse><<<grid, Cfg::kThreads, smem, stream>>>(tm_q, tm_k, tm_v, p, tma_nhd ? 1 : 0);
  TD_CHECK_LAUNCH();
}

}  // namespace td
