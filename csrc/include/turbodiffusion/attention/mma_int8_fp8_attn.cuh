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
#include "turbodiffusion/common/cuda_check.h"
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/common/sm80_primitives.cuh"
#include "turbodiffusion/sparse/lut_tiles.cuh"

namespace td {
namespace mma_attn {

// log2(448): the FP8 offset. P = exp2(s - (m - log2 448)) lies in (0, 448], E4M3's finite range,
// so P converts to FP8 without a per-row scale; the factor 448 cancels in O / l.
constexpr float kLog2Fp8Max = 8.807354922057604f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx(-inf) = +0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Four fp32 -> four E4M3 bytes (round to nearest even, saturating to +-448), `a` in the low byte.
// cvt...e4m3x2 puts its first source operand in the upper byte.
__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t lo, hi;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(lo) : "f"(b), "f"(a));
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(hi) : "f"(d), "f"(c));
  return uint32_t(lo) | (uint32_t(hi) << 16);
#else
  __trap();
  return 0;
#endif
}

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

// TD_SPILL_OK(mma_int8_fp8_attn_kernel): at D = 128, ptxas (nvcc 13.0, sm_90a) uses all 255
// registers and spills 8-12 bytes (a few loop-carried scalars, L1-resident); the block-sparse
// instantiation spills 16 bytes (its LUT walk adds loop-carried state; sm_120a: none). A 168-register
// cap (3 CTAs per SM) spilled 68-100 bytes instead. Removing it needs a leaner fragment schedule (to do).
//
// kSparse: the block-sparse variant (ARCHITECTURE §4.2): the CTA's 64 rows lie in one query block and
// walk only the KV tiles of the key blocks its LUT row lists (sla_detail::SparseTiles); a row with no
// kept block writes 0 and LSE -inf. With p.lin it adds SLA's projected linear branch in the epilogue
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
  using Tiles = std::conditional_t<kSparse, sla_detail::SparseTiles, sla_detail::DenseTiles>;
  Tiles tiles(p, BK, kSparse ? static_cast<int>(int64_t(blockIdx.x) * Cfg::kRowsPerCta / p.blkq) : 0);

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

    // ---- online softmax (log2 domain: sm_scale * log2 e is in q's scale) ----
    float s[NB][4];
    float tmax[2] = {-INFINITY, -INFINITY};
    const bool partial = int64_t(tile + 1) * BK > p.nk;
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = __fmul_rn(static_cast<float>(acc[j][e]), sc[j / 2]);
        if (partial && int64_t(tile) * BK + 8 * j + 2 * t + (e & 1) >= p.nk) x = -INFINITY;
        s[j][e] = x;
        tmax[e >> 1] = fmaxf(tmax[e >> 1], x);
      }
    float alpha[2], moff[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
      tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
      const float mn = fmaxf(m[r], tmax[r]);
      alpha[r] = fast_exp2(__fsub_rn(m[r], mn));  // first tile: exp2(-inf) = 0
      moff[r] = __fsub_rn(mn, kLog2Fp8Max);
      m[r] = mn;
    }
    float psum[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = fast_exp2(__fsub_rn(s[j][e], moff[e >> 1]));
        psum[e >> 1] += s[j][e];
      }
    l[0] = __fmaf_rn(l[0], alpha[0], psum[0]);
    l[1] = __fmaf_rn(l[1], alpha[1], psum[1]);

    // P as the A operand of the two k32 steps: V's tokens are stored permuted per 16
    // ({0,1,8,9,2,3,10,11,...}), so A's k-indices 4t..4t+3 of a 16-group are the tokens
    // {2t, 2t+1, 8+2t, 9+2t} this lane already holds in n8 blocks 2q and 2q+1: no shuffle.
    uint32_t pa[2][4];
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {
      const int j = 4 * ks;
      pa[ks][0] = pack_e4m3x4(s[j][0], s[j][1], s[j + 1][0], s[j + 1][1]);
      pa[ks][1] = pack_e4m3x4(s[j][2], s[j][3], s[j + 1][2], s[j + 1][3]);
      pa[ks][2] = pack_e4m3x4(s[j + 2][0], s[j + 2][1], s[j + 3][0], s[j + 3][1]);
      pa[ks][3] = pack_e4m3x4(s[j + 2][2], s[j + 2][3], s[j + 3][2], s[j + 3][3]);
    }

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

  // ---- epilogue: out = O / l * v_scale; lse = ln2 * (log2 l + m_off + c * q.k_mean) ----
  // LSE correction c * q.k_mean (c = sm_scale * log2 e) with the unquantized q (the quantization error of q . k_mean is constant per row: it cancels in the
  // softmax, not in the LSE). Lane t reads the channels of its Q fragment: 32s + 4t + {0..3} (+16).
  float qkm[2] = {0.f, 0.f};
  {
    const float* km = p.k_mean + slice * D;
    const uint16_t* qo = static_cast<const uint16_t*>(p.q_orig) + b * p.qo_stride_b + h * p.qo_stride_h;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = row0 + g + 8 * r;
      if (row >= p.nq) continue;
#pragma unroll
      for (int s = 0; s < KSTEPS; ++s)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int c = 32 * s + 16 * hf + 4 * t;
          const uint2 raw = __ldg(reinterpret_cast<const uint2*>(qo + row * p.qo_stride_n + c));
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const uint16_t bits = static_cast<uint16_t>(((e < 2) ? raw.x : raw.y) >> (16 * (e & 1)));
            const float qv = p.out_bf16 ? __uint_as_float(uint32_t(bits) << 16) : __half2float(__ushort_as_half(bits));
            qkm[r] = __fmaf_rn(qv, __ldg(km + c + e), qkm[r]);
          }
        }
    }
  }
  float inv_l[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    qkm[r] += __shfl_xor_sync(0xffffffffu, qkm[r], 1);
    qkm[r] += __shfl_xor_sync(0xffffffffu, qkm[r], 2);
    inv_l[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;  // l = 0 only for a sparse row with no kept block: out 0
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + g + 8 * r;
    if (t == 0 && row < p.nq) {
      const float lse2 = __fadd_rn(__fadd_rn(log2f(l[r]), __fsub_rn(m[r], kLog2Fp8Max)), __fmul_rn(qkm[r], p.lse_scale));
      p.lse[slice * p.nq + row] = l[r] > 0.f ? __fmul_rn(lse2, kLn2) : -INFINITY;
    }
  }
  const float* vs = p.v_scale + slice * D;
  // SLA: the linear term of the warp's rows, one n8 block of channels at a time (sla_detail::LinearTerm).
  bool linear = false;
  sla_detail::LinearTerm<D> lin;
  if constexpr (kSparse) linear = p.lin != nullptr;
  if (linear) {
    const char* qo = static_cast<const char*>(p.q_orig) + 2 * (b * p.qo_stride_b + h * p.qo_stride_h);
    const int64_t r_lo = row0 + g, r_hi = row0 + g + 8;
    const void* q_lo = r_lo < p.nq ? qo + 2 * r_lo * p.qo_stride_n : nullptr;
    const void* q_hi = r_hi < p.nq ? qo + 2 * r_hi * p.qo_stride_n : nullptr;
    if (p.out_bf16)
      lin.template load<true>(q_lo, q_hi, p, slice, g, t, lane);
    else
      lin.template load<false>(q_lo, q_hi, p, slice, g, t, lane);
  }
#pragma unroll
  for (int n = 0; n < NO; ++n) {
    float y[4] = {0.f, 0.f, 0.f, 0.f};
    if (linear) {
      lin.product(p, slice, n, g, y);
#pragma unroll
      for (int e = 0; e < 4; ++e) y[e] = fmaf(y[e], lin.inv_den[e >> 1], __ldg(p.lin_bias + 8 * n + 2 * t + (e & 1)));
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = row0 + g + 8 * r;
      if (row >= p.nq) continue;
      const int64_t off = b * p.o_stride_b + h * p.o_stride_h + row * p.o_stride_n;
      const int c = 8 * n + 2 * t;
      const float x0 = __fmaf_rn(__fmul_rn(o[n][2 * r], inv_l[r]), __ldg(vs + c), y[2 * r]);
      const float x1 = __fmaf_rn(__fmul_rn(o[n][2 * r + 1], inv_l[r]), __ldg(vs + c + 1), y[2 * r + 1]);
      if (p.out_bf16)
        *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(p.out) + off + c) = __floats2bfloat162_rn(x0, x1);
      else
        *reinterpret_cast<__half2*>(static_cast<__half*>(p.out) + off + c) = __floats2half2_rn(x0, x1);
    }
  }
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
