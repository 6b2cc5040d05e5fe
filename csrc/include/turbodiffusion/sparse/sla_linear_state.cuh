// SLA's linear branch over all keys (ARCHITECTURE §4.3), folded with proj_l for the sparse kernel's
// epilogue, in two launches:
//   1. sla_linear_partial_kernel: one pass over k and v. Each CTA takes a chunk of N for one (b, h):
//      32-token tiles of k and v go to shared memory (cp.async, double-buffered), phi(k) = softmax over
//      the head dim is computed in fp32 (ex2.approx) and written to its own tile in the input type, then tensor
//      cores (mma.sync m16n8k16, fp32 accumulation) add phi(k)^T v to the CTA's [D, D] partial H; an extra
//      n8 block with an all-ones B operand accumulates z = sum phi(k) in the same MMAs, and with key sums
//      (p.k_sums) one more k^T 1 over each key block (the block map's key side, from the raw k tile).
//   2. sla_linear_fold_kernel: sums the chunks (fixed order: deterministic) and folds proj_l's weight:
//      lin[c][d] = sum_e W[c][e] H[d][e] / nk, lin[D][d] = z[d] / nk, rows D+1..D+7 = 0, as fp16.
// On the way, amax_N |v| per channel (each chunk's, then their maximum: exact in any order), which
// sage_sla hands to quantize_v_fp8 so that V's quantization is one pass.
// Numerics: phi(k) is rounded to bf16/fp16 (like v) before its MMA: relative error 2^-9 (bf16) per
// element, random in sign, averaged over N tokens. Dividing by nk bounds every lin entry by max|v W^T|
// (rows of phi(k) sum to 1), which fp16 holds unless v W^T itself passes 65504.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "turbodiffusion/common/cuda_check.h"
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/common/sm80_primitives.cuh"
#include "turbodiffusion/common/vec.cuh"
#include "turbodiffusion/sparse/heuristics.h"
#include "turbodiffusion/sparse/params.h"

namespace td {
namespace sla_detail {

// Element offset of (row, col) in a shared tile of rows of D 16-bit elements: 16-byte chunk c of row
// r is stored at chunk c ^ (r % 8), so the 8 rows an ldmatrix reads at one chunk column hit 8
// different bank groups (D >= 64: at least 8 chunks per row).
template <int D>
__device__ __forceinline__ int swz(int row, int col) {
  return row * D + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

}  // namespace sla_detail

// (Two CTAs per SM at D = 128 need <= 128 registers: the bound keeps ptxas there.)
template <int D, bool kBf16>
__global__ void __launch_bounds__(32 * (D / 16), 2) sla_linear_partial_kernel(const SlaLinearParams p) {
  using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
  using sla_detail::swz;
  constexpr int kWarps = D / 16, kThreads = 32 * kWarps, BN = sla::kLinTile, CH = D / 8, NB = D / 8 + 1;
  static_assert(D == 64 || D == 128, "head dim 64 or 128");
  static_assert(BN % 16 == 0 && (BN * CH) % kThreads == 0, "k16 steps, whole cp.async rounds");
  // bf16 / fp16 1.0 twice: the all-ones B fragment whose product with phi(k)^T is z (and with k^T the key sums).
  constexpr uint32_t kOnes = kBf16 ? 0x3F803F80u : 0x3C003C00u;
  __shared__ __align__(128) T sK[2][BN * D];
  __shared__ __align__(128) T sV[2][BN * D];
  __shared__ __align__(128) T sP[BN * D];  // phi(k) of the tile (k stays raw for the key-block sums)
  // The running |v| maxima of the 16-byte chunks a thread loads (its chunk column c = tid % CH, 8 channels
  // as 4 packed pairs), kept in shared memory between tiles: the kernel sits at 128 registers, two CTAs per
  // SM, so no loop-carried registers are added.
  using T2 = std::conditional_t<kBf16, __nv_bfloat162, __half2>;
  static_assert(kThreads % CH == 0 && kThreads >= D, "a fixed chunk column per thread; a thread per channel");
  __shared__ __align__(16) uint4 sAmax[kThreads];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int64_t slice = int64_t(b) * p.heads + h, n = p.k.n;
  const int64_t tile0 = int64_t(blockIdx.x) * p.tiles_per_split;
  const int64_t tile_end = std::min<int64_t>(tile0 + p.tiles_per_split, (n + BN - 1) / BN);
  const T* kg = static_cast<const T*>(p.k.ptr) + b * p.k.stride_b + h * p.k.stride_h;
  const T* vg = static_cast<const T*>(p.v.ptr) + b * p.v.stride_b + h * p.v.stride_h;

  auto load = [&](int64_t tile, int st) {  // tokens >= n are zero-filled
#pragma unroll
    for (int it = 0; it < BN * CH / kThreads; ++it) {
      const int i = tid + it * kThreads, r = i / CH, c = i % CH;
      const int64_t tok = tile * BN + r;
      const bool ok = tok < n;
      cp_async_16(&sK[st][swz<D>(r, 8 * c)], ok ? kg + tok * p.k.stride_n + 8 * c : kg, ok);
      cp_async_16(&sV[st][swz<D>(r, 8 * c)], ok ? vg + tok * p.v.stride_n + 8 * c : vg, ok);
    }
  };

  float acc[NB][4];
#pragma unroll
  for (int j = 0; j < NB; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  sAmax[tid] = make_uint4(0u, 0u, 0u, 0u);  // (+0: padded tokens are zero-filled, so they never raise it)
  // The key-block sums (p.k_sums set; the launcher makes every chunk start on a key block): k^T 1 of the
  // current block (all 8 columns equal).
  const bool key_sums = p.k_sums != nullptr;
  float ksum[4] = {0.f, 0.f, 0.f, 0.f};
  if (tile0 < tile_end) load(tile0, 0);
  cp_async_commit();
  // Tiles in runs of a key block's (the whole chunk without key sums), so that a block's end is found once per
  // block, not tested per tile (a per-tile modulo and its branch cost ~14% more instructions: ncu, 14B-720p).
  const int ntiles = static_cast<int>(tile_end - tile0), run = key_sums ? p.key_block_tiles : ntiles;
  for (int run0 = 0; run0 < ntiles; run0 += run) {
    const int run_end = min(run0 + run, ntiles);
    for (int i = run0; i < run_end; ++i) {
      const int64_t tile = tile0 + i;
      const int st = i & 1;
      if (i + 1 < ntiles) load(tile + 1, st ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();

      {  // |v| maxima of this thread's chunks (before phi(k) below; v is not rewritten)
        uint4 mx = sAmax[tid];
        T2* m2 = reinterpret_cast<T2*>(&mx);
#pragma unroll
        for (int it = 0; it < BN * CH / kThreads; ++it) {
          const int i = tid + it * kThreads;
          uint4 x = *reinterpret_cast<const uint4*>(&sV[st][swz<D>(i / CH, 8 * (i % CH))]);
          const T2* x2 = reinterpret_cast<const T2*>(&x);
#pragma unroll
          for (int e = 0; e < 4; ++e) m2[e] = __hmax2(m2[e], __habs2(x2[e]));
        }
        sAmax[tid] = mx;
      }

      // phi(k) into sP: kTPT consecutive threads per token (8 at D 128, 4 at D 64), 16 channels each as two
      // 16-byte chunks, j and j + kTPT (under the swizzle the kTPT threads of a row read kTPT distinct chunk
      // columns, so a warp's loads and stores take the minimum number of wavefronts); maximum and sum over a
      // token's threads by log2(kTPT) butterfly shuffles; exp as exp2(x log2 e - max log2 e), one FFMA and
      // one MUFU op per element. Until 2026-11-27 a warp took a token, 4 channels per lane, with 2-byte
      // shared accesses and five-step shuffle chains: ncu (1.3B-480p) found the kernel issue-bound at 578
      // instructions per warp and tile, most of them there. H100, alternating A/B: the linear branch 0.145 ->
      // 0.123 ms at 1.3B-480p, 0.87 -> 0.68 ms at 14B-720p (docs/sla.md).
      {
        constexpr int kTPT = kThreads / BN;
        constexpr float kLog2e = 1.4426950408889634f;
        static_assert(kTPT * 16 == D && (kTPT & (kTPT - 1)) == 0, "16 channels per thread, whole shuffle groups");
        const int r = tid / kTPT, j = tid % kTPT;
        const int at[2] = {swz<D>(r, 8 * j), swz<D>(r, 8 * (j + kTPT))};
        float x[16];
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const uint4 raw = *reinterpret_cast<const uint4*>(&sK[st][at[c]]);
          const T2* e2 = reinterpret_cast<const T2*>(&raw);
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 f = to_float2(e2[e]);
            x[8 * c + 2 * e] = f.x;
            x[8 * c + 2 * e + 1] = f.y;
          }
        }
        float mx[8];  // a tree: short dependency chains
#pragma unroll
        for (int i = 0; i < 8; ++i) mx[i] = fmaxf(x[i], x[i + 8]);
#pragma unroll
        for (int w = 4; w > 0; w >>= 1)
#pragma unroll
          for (int i = 0; i < w; ++i) mx[i] = fmaxf(mx[i], mx[i + w]);
        float m = mx[0];
#pragma unroll
        for (int o = kTPT / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        const float ml = m * kLog2e;
#pragma unroll
        for (int i = 0; i < 16; ++i) x[i] = fast_exp2(fmaf(x[i], kLog2e, -ml));
        float sm[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) sm[i] = x[i] + x[i + 8];
#pragma unroll
        for (int w = 4; w > 0; w >>= 1)
#pragma unroll
          for (int i = 0; i < w; ++i) sm[i] += sm[i + w];
        float sum = sm[0];
#pragma unroll
        for (int o = kTPT / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        const float inv = tile * BN + r < n ? 1.f / sum : 0.f;  // padded tokens contribute nothing to z
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          uint4 out;
          T2* o2 = reinterpret_cast<T2*>(&out);
#pragma unroll
          for (int e = 0; e < 4; ++e) o2[e] = from_float2<T2>(x[8 * c + 2 * e] * inv, x[8 * c + 2 * e + 1] * inv);
          *reinterpret_cast<uint4*>(&sP[at[c]]) = out;
        }
      }
      __syncthreads();

      // H[16 warp rows][D + 8] += phi(k)^T v over the tile's tokens (A = phi^T via transposing ldmatrix:
      // matrix q of x4 is (d half q % 2, token half q / 2); B = v likewise: (token half q % 2, n8 block q / 2)).
      // With key sums, also ksum += k^T 1 (raw k as A): this warp's 16 channels of k summed over the tile's tokens
      // (fp32 accumulation of exact products), the block map's key-block sums. (In columns 4..7 of the z block
      // instead, with B ones split between the two products, it saved 4 registers but chained each k^T 1 MMA to a
      // z MMA on one accumulator: 1% slower, H100, and the kernel fits 128 registers either way.)
      const int q = lane >> 3, rr = lane & 7;
#pragma unroll
      for (int ks = 0; ks < BN / 16; ++ks) {
        const int at = swz<D>(16 * ks + 8 * (q >> 1) + rr, 16 * warp + 8 * (q & 1));
        uint32_t a[4];
        ldmatrix_x4_trans(a, smem_u32(&sP[at]));
        if (key_sums) {
          uint32_t kr[4];
          ldmatrix_x4_trans(kr, smem_u32(&sK[st][at]));
          mma_16bit<kBf16>(ksum, kr, kOnes, kOnes);
        }
#pragma unroll
        for (int nb = 0; nb < D / 16; ++nb) {
          uint32_t bv[4];
          ldmatrix_x4_trans(bv, smem_u32(&sV[st][swz<D>(16 * ks + 8 * (q & 1) + rr, 16 * nb + 8 * (q >> 1))]));
          mma_16bit<kBf16>(acc[2 * nb], a, bv[0], bv[1]);
          mma_16bit<kBf16>(acc[2 * nb + 1], a, bv[2], bv[3]);
        }
        mma_16bit<kBf16>(acc[NB - 1], a, kOnes, kOnes);
      }
      __syncthreads();  // the stage is refilled two iterations on, sP in the next
    }
    // A key block ends here (or the keys do): its sums (column 0 of ksum: lanes t = 0, rows g and g + 8) to
    // p.k_sums, and ksum restarts from zero. (Chunks start on key blocks: block (tile0 + run0) / key_block_tiles.)
    if (key_sums) {
      if (t == 0) {
        float* sums = p.k_sums + (slice * p.mk + (tile0 + run0) / p.key_block_tiles) * D + 16 * warp + g;
        sums[0] = ksum[0];
        sums[8] = ksum[2];
      }
      ksum[0] = ksum[1] = ksum[2] = ksum[3] = 0.f;
    }
  }

  // The chunk's amax |v| per channel: thread c < D takes the maxima of the threads that loaded chunk
  // column c / 8 (sAmax is final: the loop ended on a barrier).
  if (tid < D) {
    float m = 0.f;
    for (int th = tid / 8; th < kThreads; th += CH)
      m = fmaxf(m, to_float(reinterpret_cast<const T*>(&sAmax[th])[tid % 8]));
    p.partial[int64_t(p.slices) * p.splits * D * (D + 8) + (slice * p.splits + blockIdx.x) * D + tid] = m;
  }
  // Partial [D, D + 8]: accumulator element e of block j is row 16 warp + g + 8 (e / 2), column 8 j + 2 t + e % 2.
  float* out = p.partial + (slice * p.splits + blockIdx.x) * D * (D + 8);
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = 16 * warp + g + 8 * hf;
      *reinterpret_cast<float2*>(out + row * (D + 8) + 8 * j + 2 * t) = make_float2(acc[j][2 * hf], acc[j][2 * hf + 1]);
    }
}

// Sum of the chunks and the fold with proj_l. Grid (D / 8, B*H), D threads: thread c computes
// lin[c][d0..d0+7] = sum_e W[c][e] H[d][e] / nk from W^T staged 32 rows at a time.
template <int D>
__global__ void __launch_bounds__(D) sla_linear_fold_kernel(const SlaLinearParams p) {
  constexpr int RD = 8, EC = 32;
  __shared__ float hs[RD][D + 1];   // summed rows d0..d0+7 of H; column D is z
  __shared__ float wt[EC][D + 1];   // wt[e - e0][c] = W[c][e]
  const int c = threadIdx.x, d0 = blockIdx.x * RD;
  const int64_t slice = blockIdx.y;
  // Element i = c + D j of hs (row i / (D + 1), column i % (D + 1)) summed over the chunks in their order. The
  // chunk loop is the outer one, so that a thread's kPer loads of a chunk are independent (with the element loop
  // outside, each element waited on its own chain of `splits` loads). This kernel is a few hundred CTAs of a few
  // loads each: latency, not bandwidth, is its cost. H100, 2026-11-27, profiler inside sage_sla: 33.0 -> 25.3 us
  // at 1.3B-480p (22 chunks), 42 -> 35 us at 14B-720p (6 chunks), with W's staging below unrolled.
  constexpr int kPer = (RD * (D + 1) + D - 1) / D;
  float sum[kPer] = {};
#pragma unroll 2
  for (int sp = 0; sp < p.splits; ++sp) {
    const float* chunk = p.partial + ((slice * p.splits + sp) * D + d0) * (D + 8);
#pragma unroll
    for (int j = 0; j < kPer; ++j)
      if (c + D * j < RD * (D + 1)) sum[j] += chunk[(c + D * j) / (D + 1) * (D + 8) + (c + D * j) % (D + 1)];
  }
#pragma unroll
  for (int j = 0; j < kPer; ++j)
    if (c + D * j < RD * (D + 1)) hs[(c + D * j) / (D + 1)][(c + D * j) % (D + 1)] = sum[j];
  float acc[RD] = {};
  for (int e0 = 0; e0 < D; e0 += EC) {
    __syncthreads();
#pragma unroll  // (all EC loads in flight at once: the loop is latency-bound, not bandwidth-bound)
    for (int it = 0; it < EC; ++it) {
      const int i = c + D * it;
      wt[i % EC][i / EC] = p.proj_weight[(i / EC) * D + e0 + i % EC];
    }
    __syncthreads();
#pragma unroll 4
    for (int e = 0; e < EC; ++e) {
      const float w = wt[e][c];
#pragma unroll
      for (int r = 0; r < RD; ++r) acc[r] = fmaf(w, hs[r][e0 + e], acc[r]);
    }
  }
  const float nk = static_cast<float>(p.k.n);
  uint16_t* lin = p.lin + slice * (D + 8) * D;
#pragma unroll
  for (int r = 0; r < RD; ++r) lin[c * D + d0 + r] = __half_as_ushort(__float2half_rn(acc[r] / nk));
  if (c < 8)
#pragma unroll
    for (int r = 0; r < RD; ++r)
      lin[(D + c) * D + d0 + r] = __half_as_ushort(__float2half_rn(c == 0 ? hs[r][D] / nk : 0.f));
  if (blockIdx.x == 0) {  // amax_N |v| of channel c: the maximum over the chunks
    const float* chunk_amax = p.partial + int64_t(p.slices) * p.splits * D * (D + 8) + slice * p.splits * D + c;
    float m = 0.f;
#pragma unroll 8
    for (int sp = 0; sp < p.splits; ++sp) m = fmaxf(m, chunk_amax[sp * D]);
    p.v_amax[slice * D + c] = m;
  }
}

// Co-resident CTAs of the partial kernel on the current device (the launcher sizes the N split by it).
template <int D>
int sla_linear_resident_ctas(bool bf16, int num_sms) {
  constexpr int kThreads = 32 * (D / 16);
  const int per_sm = bf16 ? ctas_per_sm(sla_linear_partial_kernel<D, true>, kThreads)
                          : ctas_per_sm(sla_linear_partial_kernel<D, false>, kThreads);
  return std::max(1, per_sm) * num_sms;
}

template <int D>
void launch_sla_linear_state(const SlaLinearParams& p, int batch, cudaStream_t stream) {
  if (batch == 0 || p.heads == 0) return;
  const dim3 grid(p.splits, p.heads, batch);
  if (p.bf16)
    sla_linear_partial_kernel<D, true><<<grid, 32 * (D / 16), 0, stream>>>(p);
  else
    sla_linear_partial_kernel<D, false><<<grid, 32 * (D / 16), 0, stream>>>(p);
  TD_CHECK_LAUNCH();
  sla_linear_fold_kernel<D><<<dim3(D / 8, batch * p.heads), D, 0, stream>>>(p);
  TD_CHECK_LAUNCH();
}

}  // namespace td
