// SageAttention-style attention with mma.sync (sm_89 / sm_90 / sm_120): INT8 Q K^T with int32
// accumulation, online softmax in exp2, FP8 E4M3 P x V with fp32 two-level accumulation
// (ARCHITECTURE §4.1; the float32 recipe is emulated op for op by
// turbodiffusion/reference/attention.py:attention_int8_fp8_mma).
//
// Grid: (ceil(Nq / rows per CTA), H, B). Each warp owns 16 query rows for the whole KV loop; K and V
// tiles of kKvTile keys stream through a two-stage cp.async ring in shared memory shared by the
// CTA's warps.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k32", 8-bit types), g = lane / 4,
// t = lane % 4:
//   A (16 x 32, row-major) 4 regs: {row g, k 4t..4t+3}, {row g+8, k 4t..}, {row g, k 16+4t..},
//                                  {row g+8, k 16+4t..}; byte i of a reg = k index + i.
//   B (32 x 8, "col")      2 regs: {col g, k 4t..4t+3}, {col g, k 16+4t..}.
//   C (16 x 8)             4 f32/s32: {row g, col 2t, 2t+1}, {row g+8, col 2t, 2t+1}.
// ldmatrix (8 rows x 16 bytes per matrix) hands lane l the bytes 4(l%4)..4(l%4)+3 of row l/4, which
// is exactly an 8-bit B fragment register when the matrix rows are the B columns (keys of K for
// Q K^T, channels of the transposed V for P V).
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "turbodiffusion/attention/heuristics.h"
#include "turbodiffusion/attention/params.h"
#include "turbodiffusion/attention/softmax_fp8.cuh"
#include "turbodiffusion/common/cuda_check.h"
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/common/sm80_primitives.cuh"
#include "turbodiffusion/sparse/lut_tiles.cuh"

namespace td {
namespace mma_attn {

// Shared-memory rows of `kChunks` 16-byte chunks; chunk c of row r lives at chunk c ^ swizzle(r), so
// the 8 rows an ldmatrix reads (consecutive rows, one chunk column) hit 8 distinct 16-byte bank
// groups: with 8 chunks per row (128 B) rows r..r+7 xor by r % 8; with 4 chunks (64 B, two rows per
// 128 B) pairs of rows share the xor, (r / 2) % 4.
template <int kChunks>
__device__ __forceinline__ int swizzle(int row) {
  static_assert(kChunks == 4 || kChunks == 8, "64- or 128-byte rows");
  return (row / (8 / kChunks)) % kChunks;
}

template <int kChunks>
__device__ __forceinline__ int chunk_offset(int row, int chunk) {
  return row * kChunks * 16 + ((chunk ^ swizzle<kChunks>(row)) << 4);
}

}  // namespace mma_attn

// TD_SPILL_OK(mma_int8_fp8_attn_kernel): at D = 128, ptxas (nvcc 13.0) uses all 255 registers and
// spills a few loop-carried scalars (L1-resident): 40 bytes dense / 8-48 bytes block-sparse on sm_90a and
// sm_120a since the softmax got a separate tail-tile variant (softmax_fp8.cuh; it was 8-16 bytes before,
// and the kernel got faster: 0.42x -> 0.50x cuDNN on the H100). A 168-register cap (3 CTAs per SM)
// spilled 68-100 bytes. Removing it needs a leaner fragment schedule (to do).
//
// kSparse: the block-sparse variant (ARCHITECTURE §4.2): the CTA's 64 rows lie in one query block and
// walk only the KV tiles of the key blocks its LUT row lists (sla_detail::SparseTiles); a row with no
// kept block writes 0 and LSE -inf. With p.lin_frag it adds SLA's projected linear branch in the epilogue
// (sla_detail::LinearTerm). Everything else is the dense kernel's code.
template <int D, bool kSparse = false>
__global__ void __launch_bounds__(attn::MmaAttnConfig<D, kSparse>::kThreads,
                                  attn::MmaAttnConfig<D, kSparse>::kMinBlocksPerSm)
    mma_int8_fp8_attn_kernel(const AttnInt8Fp8Params p) {
  using namespace mma_attn;
  using Cfg = attn::MmaAttnConfig<D, kSparse>;
  constexpr int BK = attn::kKvTile;
  constexpr int KCH = D / 16;      // 16-byte chunks per K row (a key)
  constexpr int VCH = BK / 16;     // 16-byte chunks per V row (a channel)
  constexpr int KSTEPS = D / 32;   // k32 steps of Q K^T
  constexpr int NB = BK / 8;       // n8 blocks of the S tile
  constexpr int NO = D / 8;        // n8 blocks of the output
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(BK == 64 && VCH == 4, "the P fragment packing below assumes 64-key tiles (two k32 steps)");
  static_assert(attn::kBlkQ == 16 && attn::kBlkK == 16, "one Q scale per warp, one K scale per two n8 blocks");
  static_assert((BK * KCH) % Cfg::kThreads == 0 && (D * VCH) % Cfg::kThreads == 0, "whole cp.async rounds");
  static_assert(!kSparse || Cfg::kRowsPerCta == BK, "sparse block sizes are multiples of both the CTA rows and the tile");

  __shared__ __align__(128) uint8_t sK[2][BK * D];
  __shared__ __align__(128) uint8_t sV[2][D * BK];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int64_t slice = int64_t(b) * p.heads + h;
  const int64_t row0 = int64_t(blockIdx.x) * Cfg::kRowsPerCta + warp * 16;  // the warp's first query row

  const int8_t* kg = p.k + b * p.k_stride_b + h * p.k_stride_h;
  const uint8_t* vg = p.v + slice * D * p.v_n_pad;
  using Tiles = std::conditional_t<kSparse, sla_detail::SparseTiles<BK>, sla_detail::DenseTiles<BK>>;
  Tiles tiles(p, slice, kSparse ? static_cast<int>(int64_t(blockIdx.x) * Cfg::kRowsPerCta / p.blkq) : 0);

  // K tile: BK keys x D bytes; V tile: D channels x BK token positions (already permuted and padded
  // to a multiple of BK by quantize_v_fp8, so always in bounds). Keys >= nk are zero-filled.
  auto load_tile = [&](int tile, int stage) {
    const int64_t key0 = int64_t(tile) * BK;
#pragma unroll
    for (int it = 0; it < BK * KCH / Cfg::kThreads; ++it) {
      const int i = tid + it * Cfg::kThreads, r = i / KCH, c = i % KCH;
      const bool ok = key0 + r < p.nk;
      const int8_t* src = ok ? kg + (key0 + r) * p.k_stride_n + c * 16 : kg;
      cp_async_16(&sK[stage][chunk_offset<KCH>(r, c)], src, ok);
    }
#pragma unroll
    for (int it = 0; it < D * VCH / Cfg::kThreads; ++it) {
      const int i = tid + it * Cfg::kThreads, r = i / VCH, c = i % VCH;
      cp_async_16(&sV[stage][chunk_offset<VCH>(r, c)], vg + r * p.v_n_pad + key0 + c * 16, true);
    }
  };

  int cur = tiles.next();
  if (cur >= 0) load_tile(cur, 0);
  cp_async_commit();

  // Q fragments straight from global memory (once per CTA): rows g and g+8 of the warp, 4-byte
  // pieces at channels 32s + 4t (+16). Rows >= nq are zero (their results are not stored).
  uint32_t qa[KSTEPS][4];
  {
    const int8_t* qg = p.q + b * p.q_stride_b + h * p.q_stride_h;
    const int64_t r_lo = row0 + g, r_hi = row0 + g + 8;
#pragma unroll
    for (int s = 0; s < KSTEPS; ++s)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t r = (j & 1) ? r_hi : r_lo;
        const int c = 32 * s + 4 * t + 16 * (j >> 1);
        qa[s][j] = r < p.nq ? __ldg(reinterpret_cast<const uint32_t*>(qg + r * p.q_stride_n + c)) : 0u;
      }
  }
  const int qblk = static_cast<int>(row0 / attn::kBlkQ);
  const float qs = qblk < p.q_blocks ? __ldg(p.q_scale + slice * p.q_blocks + qblk) : 0.f;
  const float* ks_g = p.k_scale + slice * p.k_blocks;

  // Per lane: two rows (g: index 0, g+8: index 1). m is the running max (log2 domain), l the
  // lane's partial row sum of fp32 P (the quad's four partials are added at the end; every lane of
  // a quad rescales by the same alpha).
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  for (int stage = 0; cur >= 0; stage ^= 1) {
    const int tile = cur;
    cur = tiles.next();
    if (cur >= 0) load_tile(cur, stage ^ 1);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" meaning "this tile"
    // K scales of this tile (one per 16 keys; past the last block they multiply masked scores).
    float sc[NB / 2];
#pragma unroll
    for (int j = 0; j < NB / 2; ++j) {
      const int kb = tile * (BK / attn::kBlkK) + j;
      sc[j] = qs * (kb < p.k_blocks ? __ldg(ks_g + kb) : 0.f);
    }
    cp_async_wait<1>();
    __syncthreads();

    // ---- S = Q K^T: int32, exact ----
    int acc[NB][4];
#pragma unroll
    for (int j = 0; j < NB; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;
#pragma unroll
    for (int j = 0; j < NB; ++j) {
#pragma unroll
      for (int s2 = 0; s2 < KSTEPS; s2 += 2) {
        // Matrices: keys 8j..8j+7 x chunks 2*s2 .. 2*s2+3 -> B fragments of k-steps s2 and s2+1.
        uint32_t kb[4];
        const int r = 8 * j + (lane & 7);
        ldmatrix_x4(kb, &sK[stage][chunk_offset<KCH>(r, 2 * s2 + (lane >> 3))]);
        mma_s8(acc[j], qa[s2], kb[0], kb[1]);
        mma_s8(acc[j], qa[s2 + 1], kb[2], kb[3]);
      }
    }

    // ---- online softmax, P as the E4M3 A fragments of the two k32 steps (softmax_fp8.cuh) ----
    float alpha[2];
    uint32_t pa[2][4];
    attn::softmax_tile_to_fp8<NB>(acc, sc, attn::TileKeys::contiguous<NB>(int64_t(tile) * BK), p.nk, m, l, alpha, pa);

    // ---- O = O * alpha + P V: each tile's product starts from zero (the FP8 MMA keeps ~22 bits in
    // its accumulator) and is added to the fp32 O with one FMA: two-level accumulation ----
#pragma unroll
    for (int n = 0; n < NO; ++n) {
      uint32_t vb[4];  // channels 8n..8n+7 x token chunks 0..3: B fragments of k-steps 0 and 1
      ldmatrix_x4(vb, &sV[stage][chunk_offset<VCH>(8 * n + (lane & 7), lane >> 3)]);
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      mma_e4m3(c, pa[0], vb[0], vb[1]);
      mma_e4m3(c, pa[1], vb[2], vb[3]);
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] = __fmaf_rn(o[n][e], alpha[e >> 1], c[e]);
    }
    __syncthreads();  // every warp is done with `stage` before the next iteration refills it
  }

  sla_detail::LinFragmentsB<D> lin_b;
  if (p.lin_frag) lin_b.frag = p.lin_frag + slice * sla_detail::LinFragments<D>::kPerSlice;
  attn::store_warp_rows<D, kSparse>(p, slice, b, h, row0, o, m, l, lin_b);
}

// Host launcher: one CTA per (rows-per-CTA query rows, head, batch), on `stream`.
template <int D, bool kSparse = false>
void launch_mma_int8_fp8_attn(const AttnInt8Fp8Params& p, int batch, cudaStream_t stream) {
  using Cfg = attn::MmaAttnConfig<D, kSparse>;
  if (p.nq == 0 || batch == 0 || p.heads == 0) return;
  const dim3 grid(static_cast<unsigned>(cdiv(p.nq, Cfg::kRowsPerCta)), p.heads, batch);
  mma_int8_fp8_attn_kernel<D, kSparse><<<grid, Cfg::kThreads, 0, stream>>>(p);
  TD_CHECK_LAUNCH();
}

}  // namespace td
