// SageAttention-style attention for Hopper (sm_90a): INT8 Q K^T and FP8 E4M3 P V on wgmma, K/V tiles
// streamed by TMA through a multi-stage shared-memory ring, warp-specialized (ARCHITECTURE §4.1).
// Same numerics as the mma.sync kernel with 128-key tiles (emulated op for op by
// turbodiffusion/reference/attention.py:attention_int8_fp8_mma(kv_tile=128)).
//
// CTA = 3 warpgroups, one CTA per (128 query rows, head, batch):
//   warpgroup 0: producer. One thread issues TMA loads: the CTA's Q tile once (sparse with SLA's linear
//                term: also a bulk copy of the slice's lin fragments, lin_full), then K and V tiles
//                into the ring slots (full[s]: bytes landed and K scales staged; empty[s]: all
//                consumer warps done); another warp stages each tile's K scales in shared memory.
//                The group gives its registers to the consumers (setmaxnreg).
//   warpgroups 1, 2: consumers, 64 query rows each. Per KV tile: S = Q K^T (wgmma m64n128k32 s8,
//                both operands from shared memory), online softmax on the int32 accumulator, P packed
//                to E4M3 in registers, PV = P V (wgmma m64nDk32 e4m3, A from registers) into a fresh
//                fp32 accumulator, O = O * alpha + PV (two-level accumulation). Within a group,
//                S_j and PV_{j-1} are issued together and the softmax of S_j starts as soon as S_j
//                lands (its row-max phase overlaps PV_{j-1}). The two groups run unsynchronized
//                except that at D 64 they take turns on the softmax's exp phase (kExpTurns below); the
//                schedulers interleave one group's softmax with the other's softmax and MMAs. (A
//                named-barrier ping-pong, which makes the groups take turns on the tensor cores, was
//                slower on the H100 at every shape, 2-5%: it also keeps the two softmaxes apart, and
//                the softmax, not the tensor cores, bounds the tile; docs/attention.md.)
// Grid x (query tiles) varies fastest: the CTAs in flight share one (b, h) and read its K and V from L2.
//
// Granularity: one Q scale per warp (16 rows, kBlkQ), one K scale per 16 keys (two n8 blocks of the S
// accumulator, kBlkK); V's tokens permuted per 16 by quantize_v_fp8 so that the S accumulator of a lane
// is already its P A-fragment (softmax_fp8.cuh, reference.quant.V_TOKEN_PERM).
#pragma once
#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>

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

// Shared memory of one CTA. Every tile is a multiple of 1024 bytes and 1024-aligned: TMA's 128-byte
// swizzle (and the wgmma descriptors that read it) repeat every 8 rows of 128 bytes. kSlots K/V slots,
// used as one ring read by both consumer groups (dense; sparse when the CTA's 128 rows lie in one query
// block, blkq % 128 == 0) or as one ring per consumer group (sparse with blkq % 128 != 0: each group
// walks the LUT row of its own 64 query rows, fed by its own producer thread): ring r, stage s = slot
// r * S + s.
template <int D, bool kSparse>
struct alignas(1024) Smem {
  using Cfg = attn::Sm90AttnConfig<D, kSparse>;
  uint8_t q[Cfg::kConsumers][64 * D];           // [row][channel], one 64-row tile per group
  uint8_t k[Cfg::kSlots][Cfg::kBN * D];         // [key][channel]
  uint8_t v[Cfg::kSlots][D * Cfg::kBN];         // [channel][token] (quantize_v_fp8's layout)
  float k_scale[Cfg::kSlots][Cfg::kBN / attn::kBlkK];  // the K tile's scales
  // Sparse: the slice's SLA linear-term fragments (p.lin_frag), read by every warp's epilogue (loaded
  // once per CTA instead of once per warp from L2: 35 KB at D = 128).
  uint4 lin[kSparse ? sla_detail::LinFragments<D>::kPerSlice : 1];
  uint64_t q_full;
  uint64_t lin_full;
  uint64_t full[Cfg::kSlots];
  uint64_t empty[Cfg::kSlots];
};

}  // namespace sm90_attn

// TD_SPILL_OK(sm90_int8_fp8_attn_kernel<128, true>): the block-sparse variant at D = 128 runs the dense
// kernel's schedule (row-max phase under the group's own PV) in the dense register split, 24 / 240, and
// ptxas (nvcc 13.0) keeps one to a few loop-carried registers in local memory: 24 B with the shared ring,
// 72 B with per-group rings (one L1-resident store and load per tile in the consumer loop). Measured on
// the H100 against the spill-free 40 / 232 split without the overlap (2026-11-26): SageSLA 14B-720p
// 128x128 24.3 vs 25.3 ms, 64x128 26.8 vs 27.4 ms; 1.3B-480p 1.99 vs 2.05 and 2.09 vs 2.13 ms. The dense
// variants and D = 64 must not spill.
// tma_nhd: q/k tensor maps are (D, H, N, B) (layout NHD) instead of (D, N, H, B) (HND); the box is
// one head's rows either way. kSparse: block-sparse (ARCHITECTURE §4.2) over p.lut / p.count with
// p.blkq % 64 == 0 and p.blkk % 128 == 0, SLA's linear epilogue with p.lin_frag. kGroupRings (sparse
// only, required when p.blkq % 128 != 0): one K/V ring per consumer group instead of one shared ring.
template <int D, bool kSparse, bool kGroupRings>
__global__ void __launch_bounds__(attn::Sm90AttnConfig<D, kSparse>::kThreads, 1)
    sm90_int8_fp8_attn_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                              const __grid_constant__ CUtensorMap tm_v, const AttnInt8Fp8Params p, const int tma_nhd) {
#ifdef TD_SM90A_ENABLED
  using namespace sm90;
  using Cfg = attn::Sm90AttnConfig<D, kSparse>;
  static_assert(kSparse || !kGroupRings, "dense CTAs share one ring");
  // Rings in use and stages per ring: the slots split between the groups, or one ring of all of them
  // (sparse with a shared ring: twice the stages of a group ring, and each K/V tile loaded once per CTA
  // instead of once per group, which halves the L2 -> SM traffic; docs/sla.md).
  constexpr int kRings = kGroupRings ? Cfg::kConsumers : 1;
  constexpr int BN = Cfg::kBN, S = Cfg::kSlots / kRings;
  constexpr int NB = BN / 8;       // n8 blocks of the S tile
  constexpr int NO = D / 8;        // n8 blocks of the output
  static_assert(attn::kBlkQ == 16 && attn::kBlkK == 16, "one Q scale per warp, one K scale per two n8 blocks");
  static_assert(BN == 128, "V rows of one tile are 128 bytes: the 128-byte swizzle of the PV descriptor");

  extern __shared__ uint8_t smem_raw[];
  auto& sm = *reinterpret_cast<sm90_attn::Smem<D, kSparse>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) &
                                                            ~uintptr_t(1023));

  const int wg = threadIdx.x / 128, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  const int64_t slice = int64_t(b) * p.heads + h;
  const int q_row0 = blockIdx.x * Cfg::kRowsPerCta;
  // The KV tiles consumer group c (and the producer of its ring) walks: all, or its LUT row's.
  using Tiles = std::conditional_t<kSparse, sla_detail::SparseTiles<BN>, sla_detail::DenseTiles<BN>>;
  auto tiles_of = [&](int c) { return Tiles(p, kSparse ? (q_row0 + 64 * c) / p.blkq : 0); };

  if (threadIdx.x == 0) {
    mbar_init(&sm.q_full, 1);
    mbar_init(&sm.lin_full, 1);
#pragma unroll
    for (int s = 0; s < Cfg::kSlots; ++s) {
      mbar_init(&sm.full[s], 2);                              // the TMA thread (with the bytes) and the K-scale warp
      mbar_init(&sm.empty[s], Cfg::kConsumers / kRings * 4);  // the consumer warps of the ring
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (wg == 0) {  // ---------------- producer ----------------
    regs_dealloc<Cfg::kProducerRegs>();
    // Rows past nq (and whole boxes past it) are zero-filled by TMA; the box still counts in full.
    auto load_rows = [&](const CUtensorMap* map, void* dst, uint64_t* bar, int row) {
      if (tma_nhd) tma_load_4d(dst, map, bar, 0, h, row, b);
      else tma_load_4d(dst, map, bar, 0, row, h, b);
    };
    if (warp < kRings && lane == 0) {  // warp r feeds ring r with TMA loads
      const int r = warp;
      if (r == 0) {
        prefetch_tmap(&tm_q);
        prefetch_tmap(&tm_k);
        prefetch_tmap(&tm_v);
        mbar_arrive_expect_tx(&sm.q_full, Cfg::kConsumers * 64 * D);
#pragma unroll
        for (int c = 0; c < Cfg::kConsumers; ++c) load_rows(&tm_q, sm.q[c], &sm.q_full, q_row0 + 64 * c);
        if (kSparse && p.lin_frag) {
          constexpr uint32_t kLinBytes = sizeof(sm.lin);
          mbar_arrive_expect_tx(&sm.lin_full, kLinBytes);
          bulk_load(sm.lin, p.lin_frag + slice * sla_detail::LinFragments<D>::kPerSlice, kLinBytes, &sm.lin_full);
        }
      }
      Tiles tiles = tiles_of(r);
      for (int i = 0, tile; (tile = tiles.next()) >= 0; ++i) {
        const int s = r * S + i % S;
        if (i >= S) mbar_wait(&sm.empty[s], ((i / S) - 1) & 1);  // its previous use released
        mbar_arrive_expect_tx(&sm.full[s], 2 * BN * D);
        load_rows(&tm_k, sm.k[s], &sm.full[s], tile * BN);     // keys >= nk: zeros (masked below)
        tma_load_3d(sm.v[s], &tm_v, &sm.full[s], tile * BN, 0, static_cast<int>(slice));
      }
    } else if (warp >= 2 && warp - 2 < kRings) {
      // Warp 2 + r stages the K scales of ring r's tiles (clamped past the last block: those keys are
      // masked), one per lane, so that the consumers read them from shared memory instead of waiting
      // on global loads; its arrival on full[r][s] (the warp barrier orders the lanes' stores before
      // lane 0's release) is the slot's second.
      const int r = warp - 2;
      const float* ks_g = p.k_scale + slice * p.k_blocks;
      Tiles tiles = tiles_of(r);
      for (int i = 0, tile; (tile = tiles.next()) >= 0; ++i) {
        const int s = r * S + i % S;
        if (i >= S) mbar_wait(&sm.empty[s], ((i / S) - 1) & 1);
        if (lane < BN / attn::kBlkK)
          sm.k_scale[s][lane] = __ldg(ks_g + min(tile * (BN / attn::kBlkK) + lane, p.k_blocks - 1));
        __syncwarp();
        if (lane == 0) mbar_arrive(&sm.full[s]);
      }
    }
    return;
  }

  // ---------------- consumers ----------------
  regs_alloc<Cfg::kConsumerRegs>();
  const int cg = wg - 1;
  const int ring_base = kGroupRings ? cg * S : 0;  // slot of the group's ring's stage 0
  const int64_t row0 = q_row0 + 64 * cg + 16 * (warp % 4);  // this warp's first query row
  const int qblk = static_cast<int>(row0 / attn::kBlkQ);
  const float qs = qblk < p.q_blocks ? __ldg(p.q_scale + slice * p.q_blocks + qblk) : 0.f;

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  mbar_wait(&sm.q_full, 0);
  const uint64_t desc_q = kmajor_desc<D>(sm.q[cg]);

  // Exp turns (dense D 64 only): the two groups take turns on the softmax's exp phase (bar.sync on the
  // group's named barrier before it, bar.arrive on the other's after it; group 0 first), so the two exp
  // phases do not share the MUFU (ex2 at 16 per clock per SM) and issue slots at once. Measured on the
  // H100 (2026-11-26, same machine start, kernel only): D 64 16k 2.21 vs 2.28 ms; D 128 slower (1.3B-480p
  // 8.47 vs 8.14 ms, 14B-720p 147.6 vs 143.4 ms) and SageSLA 128x128 unchanged, so off there. Needs both
  // groups to walk the same number of tiles (dense).
  constexpr bool kExpTurns = !kSparse && D == 64;
  constexpr int kTurnThreads = 2 * 128;
  const int my_bar = 1 + cg, other_bar = 2 - cg;

  int32_t acc[NB][4];      // S of the current tile
  float pv[NO][4];         // P V of the previous tile (a fresh accumulator: two-level accumulation)
  uint32_t pa[BN / 32][4];  // P of the current tile (E4M3 A fragments)
  float alpha[2];           // its rescale factor of O

  // i: the tile's position in this group's walk (ring stage i % S, phase i / S).
  auto issue_qk = [&](int i) {  // S = Q K^T of walk position i (int32, exact); one commit group
    const int s = ring_base + i % S;
    mbar_wait(&sm.full[s], (i / S) & 1);
    const uint64_t desc_k = kmajor_desc<D>(sm.k[s]);
    wgmma_fence();
    wgmma_m64n128k32_s8<false>(acc, desc_q, desc_k);
#pragma unroll
    for (int ks = 1; ks < D / 32; ++ks)
      wgmma_m64n128k32_s8<true>(acc, desc_advance(desc_q, 32 * ks), desc_advance(desc_k, 32 * ks));
    wgmma_commit();
  };
  auto issue_pv = [&](int i) {  // PV = P V_tile (fp32); one commit group
    const uint64_t desc_v = kmajor_desc<BN>(sm.v[ring_base + i % S]);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < BN / 32; ++ks) {
      const uint64_t dv = desc_advance(desc_v, 32 * ks);
      if constexpr (D == 128) {
        if (ks == 0) wgmma_m64n128k32_e4m3_rs<false>(pv, pa[ks], dv);
        else wgmma_m64n128k32_e4m3_rs<true>(pv, pa[ks], dv);
      } else {
        if (ks == 0) wgmma_m64n64k32_e4m3_rs<false>(pv, pa[ks], dv);
        else wgmma_m64n64k32_e4m3_rs<true>(pv, pa[ks], dv);
      }
    }
    wgmma_commit();
  };
  // After wgmma_wait: PV of walk position i is in pv; its P registers may be reused from here on (the
  // fence keeps the compiler from reusing them while the asynchronous MMA still reads them).
  auto finish_pv = [&](int i) {
    fence_operands(pv);
    fence_operands(pa);
    if (lane == 0) mbar_arrive(&sm.empty[ring_base + i % S]);  // this warp no longer reads the slot
#pragma unroll
    for (int n = 0; n < NO; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] = __fmaf_rn(o[n][e], alpha[e >> 1], pv[n][e]);
  };
  // Softmax of S (walk position i) into pa. For i >= 1, PV_{i-1} is still in flight; the
  // row-max phase overlaps it, then O takes it (with the previous alpha) before the exp phase rewrites pa.
  auto softmax = [&](int i, int tile) {
    float sc[NB / 2];  // q scale x the tile's K scales (staged by the producer with the K tile)
#pragma unroll
    for (int j = 0; j < NB / 2; ++j) sc[j] = qs * sm.k_scale[ring_base + i % S][j];
    attn::softmax_tile_to_fp8<NB>(acc, sc, int64_t(tile) * BN, p.nk, m, l, alpha, pa, [&] {
      if (i > 0) {
        wgmma_wait<0>();
        finish_pv(i - 1);  // alpha is still PV_{i-1}'s
      }
      if constexpr (kExpTurns) named_bar_sync(my_bar, kTurnThreads);  // this group's exp turn
    });
    if constexpr (kExpTurns) named_bar_arrive(other_bar, kTurnThreads);  // the other group's turn
  };
  // Walk position i >= 1: S_i and PV_{i-1} are issued together (two commit groups, which complete in
  // order); the softmax of S_i starts once S_i has landed, so PV_{i-1} runs under it.
  Tiles tiles = tiles_of(cg);
  int tile = tiles.next();
  if (tile >= 0) {  // (sparse: a row with no kept block walks nothing and stores 0, LSE -inf)
    if (kExpTurns && cg == 1) named_bar_arrive(1, kTurnThreads);  // group 0 takes the first turn
    issue_qk(0);
    wgmma_wait<0>();
    fence_operands(acc);
    softmax(0, tile);
    int i = 1;
    for (int next; (next = tiles.next()) >= 0; ++i) {
      issue_qk(i);
      issue_pv(i - 1);
      wgmma_wait<1>();
      fence_operands(acc);
      softmax(i, next);
    }
    issue_pv(i - 1);
    wgmma_wait<0>();
    finish_pv(i - 1);
    if (kExpTurns && cg == 0) named_bar_sync(1, kTurnThreads);  // consume group 1's last arrival
  }
  const bool linear = kSparse && p.lin_frag;
  if (linear) mbar_wait(&sm.lin_full, 0);
  attn::store_warp_rows<D, kSparse>(p, slice, b, h, row0, o, m, l, linear ? sm.lin : nullptr);
#else
  __trap();  // built for another arch: the launcher only dispatches here on sm_90
#endif
}

template <int D, bool kSparse>
constexpr size_t sm90_int8_fp8_attn_smem_bytes() {
  return sizeof(sm90_attn::Smem<D, kSparse>) + 1024;  // + alignment slack of the dynamic shared memory base
}

// Host launcher: one CTA per (128 query rows, head, batch), on `stream`. The tensor maps are built by
// the caller (csrc/ops/attention.cu) over q_int8, k_int8 and v_fp8 with the boxes of Sm90AttnConfig.
// Sparse: one ring per consumer group when a CTA's two 64-row groups may lie in different query blocks
// (blkq % 128 != 0, e.g. 64 or 192), else one shared ring.
template <int D, bool kSparse, bool kGroupRings>
void launch_sm90_int8_fp8_attn_variant(const CUtensorMap& tm_q, const CUtensorMap& tm_k, const CUtensorMap& tm_v,
                                       const AttnInt8Fp8Params& p, bool tma_nhd, int batch, cudaStream_t stream) {
  using Cfg = attn::Sm90AttnConfig<D, kSparse>;
  constexpr size_t smem = sm90_int8_fp8_attn_smem_bytes<D, kSparse>();
  allow_dynamic_shared_memory(sm90_int8_fp8_attn_kernel<D, kSparse, kGroupRings>, static_cast<int>(smem));
  const dim3 grid(static_cast<unsigned>(cdiv(p.nq, Cfg::kRowsPerCta)), p.heads, batch);
  sm90_int8_fp8_attn_kernel<D, kSparse, kGroupRings>
      <<<grid, Cfg::kThreads, smem, stream>>>(tm_q, tm_k, tm_v, p, tma_nhd ? 1 : 0);
  TD_CHECK_LAUNCH();
}

template <int D, bool kSparse = false>
void launch_sm90_int8_fp8_attn(const CUtensorMap& tm_q, const CUtensorMap& tm_k, const CUtensorMap& tm_v,
                               const AttnInt8Fp8Params& p, bool tma_nhd, int batch, cudaStream_t stream) {
  if (p.nq == 0 || batch == 0 || p.heads == 0) return;
  if (kSparse && p.blkq % attn::Sm90AttnConfig<D, kSparse>::kRowsPerCta != 0)
    launch_sm90_int8_fp8_attn_variant<D, kSparse, kSparse>(tm_q, tm_k, tm_v, p, tma_nhd, batch, stream);
  else
    launch_sm90_int8_fp8_attn_variant<D, kSparse, false>(tm_q, tm_k, tm_v, p, tma_nhd, batch, stream);
}

}  // namespace td
