// SLA block map (ARCHITECTURE §4.3) in five launches, emitting the LUT of §4.2 directly:
//   1. sla_pool_kernel (k, then q): fp32 sums of every block of tokens of k, means of q (the last block is
//      partial); in sage_sla q's means come from quantize_qk_int8's Q tiles instead (store_block_means, the
//      same bits), which saves the block map's read of q, and k's sums from the linear branch's pass over k
//      (sla_linear_state with key_block; the same up to float32 summation order), which saves its read of k;
//   2. sla_kmean_kernel: mean_N k from the block sums (a CTA per (b, h) and 8 channels, a fixed order; also an
//      output: sage_sla hands it to quantize_qk_int8, whose K pass is then single), and the centred key-block
//      means in place of the sums;
//   3. sla_score_kernel: score = mean(q block) . (mean(k block) - mean_N k) for a tile of query blocks x
//      key blocks (fp32 CUDA-core FMAs) into a scratch [B*H, Mq, Mk];
//   4. sla_topk_kernel: per row a warp finds the kept-th largest score on the order-preserving integer image of
//      the floats (rows of up to 32 kTopkMaxPerLane scores in registers, by bisection on its bits; longer rows by
//      MSB radix select, 4 passes of 8-bit histograms, the row read from L2) and writes the kept indices in
//      ascending order: every index whose score is above the threshold, then the lowest-indexed ties.
// The reference (turbodiffusion/reference/sla.py) pools the centred k instead of centring the pooled
// k and sums in another order: scores agree to float32 rounding, so only near-ties can be chosen
// differently (tests/test_sla.py compares sets up to ties).
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
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

// Order-preserving map float -> uint32 (larger float, larger integer): flip all bits of negatives,
// the sign bit of the rest. Radix select on it is a select on the floats.
__device__ __forceinline__ uint32_t ordered_bits(float x) {
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Writes the indices of a warp's row whose keys are above t, then of the first `remaining` keys equal to t, in
// ascending order; key(c): the lane's key of chunk c (key j = 32 c + lane of the row's mk). kChunks: the chunk
// count at compile time (keys in registers), else 0 and `chunks`.
template <int kChunks, typename Key>
__device__ __forceinline__ void write_kept(int chunks, int mk, uint32_t t, uint32_t remaining, int32_t* out, int lane,
                                           Key key) {
  const uint32_t lt = (1u << lane) - 1u;
  uint32_t taken = 0, eq_seen = 0;
#pragma unroll
  for (int c = 0; c < (kChunks ? kChunks : chunks); ++c) {
    const uint32_t u = key(c);
    const bool valid = 32 * c + lane < mk;
    const bool eq = valid && u == t;
    const uint32_t eq_mask = __ballot_sync(0xffffffffu, eq);
    const bool take = (valid && u > t) || (eq && eq_seen + __popc(eq_mask & lt) < remaining);
    const uint32_t take_mask = __ballot_sync(0xffffffffu, take);
    if (take) out[taken + __popc(take_mask & lt)] = 32 * c + lane;
    taken += __popc(take_mask);
    eq_seen += __popc(eq_mask);
  }
}

// The rows that need no selection (every block kept, or none), written; false for the others.
__device__ __forceinline__ bool select_trivial_row(int mk, int kept, int32_t* out, int lane) {
  if (kept >= mk)
    for (int j = lane; j < mk; j += 32) out[j] = j;
  return kept >= mk || kept <= 0;
}

// One warp: indices of the `kept` largest of s[0, mk) into out[0, kept), ascending. hist: 256 words
// of the warp's own shared memory.
__device__ __forceinline__ void select_topk_row(const float* s, int mk, int kept, uint32_t* hist, int32_t* out,
                                                int lane) {
  if (select_trivial_row(mk, kept, out, lane)) return;
  uint32_t prefix = 0, mask = 0;
  uint32_t remaining = static_cast<uint32_t>(kept);  // how many of the keys matching `prefix` to take
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = lane; i < sla::kRadixBins; i += 32) hist[i] = 0;
    __syncwarp();
    for (int j = lane; j < mk; j += 32) {
      const uint32_t u = ordered_bits(s[j]);
      if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255u], 1u);
    }
    __syncwarp();
    // Lane l holds bins 255 - 8l down to 248 - 8l; an inclusive scan over lanes counts the keys in
    // higher bins. The digit is the bin where the running count reaches `remaining`.
    uint32_t cnt[8], local = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      cnt[i] = hist[255 - 8 * lane - i];
      local += cnt[i];
    }
    uint32_t incl = local;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t x = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += x;
    }
    const uint32_t excl = incl - local;
    const bool mine = excl < remaining && remaining <= incl;
    const int src = __ffs(__ballot_sync(0xffffffffu, mine)) - 1;
    uint32_t digit = 0, above = 0;
    if (mine) {
      uint32_t acc = excl;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        if (acc + cnt[i] >= remaining) {
          digit = 255u - 8u * lane - i;
          above = acc;
          break;
        }
        acc += cnt[i];
      }
    }
    digit = __shfl_sync(0xffffffffu, digit, src);
    above = __shfl_sync(0xffffffffu, above, src);
    remaining -= above;
    prefix |= digit << shift;
    mask |= 255u << shift;
    __syncwarp();
  }
  // prefix is now the kept-th largest key.
  write_kept<0>((mk + 31) / 32, mk, prefix, remaining, out, lane, [&](int c) {
    const int j = 32 * c + lane;
    return j < mk ? ordered_bits(s[j]) : 0u;
  });
}

// One warp, rows of at most 32 kPer scores: the same selection with the row's keys in registers (kPer a lane, key
// j in lane j % 32), the kept-th largest found by bisection on its 32 bits: per bit, the warp's count of the keys
// >= the candidate (a compare and a predicated add a key, one warp reduction): ~2 kPer + 10 instructions a bit,
// no shared memory. H100 (2026-11-27, profiler, sage_sla 14B-720p 64x64: 1182 blocks, 40 a lane): 148 + 103 us
// for the two passes against 170 + 125 us by radix select (whose first pass finds nearly every score of a row
// in the same few top-byte bins; aggregating its atomics with __match_any_sync made it 2x slower).
template <int kPer>
__device__ __forceinline__ void select_topk_row_in_registers(const float* s, int mk, int kept, int32_t* out, int lane) {
  if (select_trivial_row(mk, kept, out, lane)) return;
  uint32_t u[kPer];  // 0 past mk (never counted: every candidate is >= 1)
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int j = 32 * i + lane;
    u[i] = j < mk ? ordered_bits(s[j]) : 0u;
  }
  // Per key a compare and a predicated add (from C++ ptxas made it three instructions); four chains, since one
  // would serialize the adds of every key.
  auto count_at_least = [&](uint32_t x) {
    uint32_t c[4] = {};
#pragma unroll
    for (int i = 0; i < kPer; ++i)
      asm("{\n .reg .pred ge;\n setp.ge.u32 ge, %1, %2;\n @ge add.u32 %0, %0, 1;\n}\n" : "+r"(c[i % 4]) : "r"(u[i]), "r"(x));
    return __reduce_add_sync(0xffffffffu, (c[0] + c[1]) + (c[2] + c[3]));
  };
  uint32_t t = 0;  // the largest key with at least `kept` keys >= it: the kept-th largest
#pragma unroll 1
  for (int bit = 31; bit >= 0; --bit)
    if (count_at_least(t | (1u << bit)) >= static_cast<uint32_t>(kept)) t |= 1u << bit;
  const uint32_t above = t == 0xffffffffu ? 0u : count_at_least(t + 1);
  write_kept<kPer>(kPer, mk, t, static_cast<uint32_t>(kept) - above, out, lane, [&](int c) { return u[c]; });
}

}  // namespace sla_detail

// Sums of every `blk` tokens of x [B, H, N, D] -> sums [B*H, nblocks, D] (fp32; with `means` divided by the
// block's length, the last block partial). Grid (nblocks, H, B).
template <int D, typename T>
__global__ void __launch_bounds__(sla::kPoolThreads) sla_pool_kernel(const AttnTensorView x, int heads, int blk,
                                                                     int nblocks, float* sums, bool means) {
  constexpr int kVec = 8, kCols = D / kVec, kRows = sla::kPoolThreads / kCols;
  static_assert(sla::kPoolThreads % kCols == 0, "whole rows per pass");
  __shared__ float red[kRows][D];
  const int tid = threadIdx.x, c = tid % kCols, r = tid / kCols;
  const int h = blockIdx.y, b = blockIdx.z;
  const int64_t row0 = int64_t(blockIdx.x) * blk, row_end = std::min<int64_t>(row0 + blk, x.n);
  const T* base = static_cast<const T*>(x.ptr) + b * x.stride_b + h * x.stride_h + c * kVec;
  float acc[kVec] = {};
  for (int64_t row = row0 + r; row < row_end; row += kRows) {
    Vec<T, kVec> v;
    v.load(base + row * x.stride_n);
#pragma unroll
    for (int i = 0; i < kVec; ++i) acc[i] += v.get(i);
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) red[r][c * kVec + i] = acc[i];
  __syncthreads();
  float* out = sums + ((int64_t(b) * heads + h) * nblocks + blockIdx.x) * D;
  for (int col = tid; col < D; col += sla::kPoolThreads) {
    float s = 0.f;
#pragma unroll 4
    for (int i = 0; i < kRows; ++i) s += red[i][col];
    out[col] = means ? s / static_cast<float>(row_end - row0) : s;
  }
}

// mean_N k from the block sums, then the centred block means (sum / len - mean_N k, the two roundings the score
// kernel used to do per CTA) into `centred` (may be `sums`: in place). Grid (B*H, D / kKmeanCols),
// kKmeanThreads threads: column c = blockIdx.y * kKmeanCols + tid % kKmeanCols, the key blocks j = tid /
// kKmeanCols (mod kKmeanThreads / kKmeanCols) summed in ascending order, the partial sums added in a fixed
// order (deterministic).
template <int D>
__global__ void __launch_bounds__(sla::kKmeanThreads)
    sla_kmean_kernel(const float* sums, float* centred, float* k_mean, int mk, int blkk, int64_t nk) {
  constexpr int C = sla::kKmeanCols, G = sla::kKmeanThreads / C;
  static_assert(D % C == 0, "whole column groups");
  __shared__ float part[G][C];
  const int cl = threadIdx.x % C, g = threadIdx.x / C, c = blockIdx.y * C + cl;
  const int64_t col = int64_t(blockIdx.x) * mk * D + c;
  float s = 0.f;
#pragma unroll 8
  for (int j = g; j < mk; j += G) s += sums[col + int64_t(j) * D];
  part[g][cl] = s;
  __syncthreads();
  float total = 0.f;
#pragma unroll 8
  for (int i = 0; i < G; ++i) total += part[i][cl];
  const float km = total / static_cast<float>(nk);
  if (g == 0) k_mean[int64_t(blockIdx.x) * D + c] = km;
  for (int j = g; j < mk; j += G) {
    const int64_t len = std::min<int64_t>(blkk, nk - int64_t(j) * blkk);
    centred[col + int64_t(j) * D] = __fsub_rn(sums[col + int64_t(j) * D] / static_cast<float>(len), km);
  }
}

// Dynamic shared memory of the score kernel: a tile of pooled q means and one of centred pooled k means,
// rows padded by 4 floats.
constexpr int sla_score_smem_bytes(int d) { return 2 * sla::kScoreTile * (d + 4) * int(sizeof(float)); }

// Scores of a tile of kScoreTile query blocks x kScoreTile key blocks of (b, h) slice0 + blockIdx.z into
// p.scores [slices of the launch, mq, mk]. Grid (ceil(mk / tile), ceil(mq / tile), slices). Thread
// (ty, tx) = (tid / 16, tid % 16) takes query blocks 4 ty + i and key blocks tx + 16 j (i, j < 4): per 4
// channels, 4 broadcast float4s of q rows (two rows per warp: one wavefront each) and 4 float4s of key
// rows (16 keys at a 4-bank shift: two wavefronts each) feed 64 FMAs, against 16 for five loads when a CTA
// also kept its score rows for the top-k (shared memory bound: H100, 14B-720p 64x64, 2.36 ms at one CTA
// per SM). Each score is one FMA chain over d ascending, as before (the same bits).
template <int D>
__global__ void __launch_bounds__(sla::kScoreThreads) sla_score_kernel(const SlaBlockMapParams p, int64_t slice0) {
  constexpr int TL = sla::kScoreTile, DP = D + 4;
  static_assert(TL * TL / 16 == sla::kScoreThreads, "4 x 4 scores per thread");
  extern __shared__ __align__(16) float smem[];
  float* pq = smem;            // [TL][DP] pooled q means (zeros past mq)
  float* pk = smem + TL * DP;  // [TL][DP] centred pooled k means (zeros past mk)
  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t slice = slice0 + blockIdx.z;
  const int kb0 = blockIdx.x * TL, qb0 = blockIdx.y * TL;
  // Both tiles with cp.async (the q means come from the pool kernel): a load, a division and a store per
  // q element here serialized on global-load latency (H100, 2026-11-27: 14B-720p 64x64 0.84 -> 0.49 ms,
  // 64x128 0.44 -> 0.27 ms; 1.3B-480p 64x64 0.051 -> 0.035 ms).
  for (int i = 4 * tid; i < TL * D; i += 4 * sla::kScoreThreads) {
    const int r = i / D, d = i % D, kb = kb0 + r, qb = qb0 + r;
    cp_async_16(pk + r * DP + d, p.k_sums + (slice * p.mk + min(kb, p.mk - 1)) * D + d, kb < p.mk);
    cp_async_16(pq + r * DP + d, p.q_sums + (slice * p.mq + min(qb, p.mq - 1)) * D + d, qb < p.mq);
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  float acc[4][4] = {};
#pragma unroll 2
  for (int d = 0; d < D; d += 4) {
    float4 kv[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) kv[j] = *reinterpret_cast<const float4*>(pk + (tx + 16 * j) * DP + d);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 qv = *reinterpret_cast<const float4*>(pq + (4 * ty + i) * DP + d);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        acc[i][j] = fmaf(qv.x, kv[j].x, acc[i][j]);
        acc[i][j] = fmaf(qv.y, kv[j].y, acc[i][j]);
        acc[i][j] = fmaf(qv.z, kv[j].z, acc[i][j]);
        acc[i][j] = fmaf(qv.w, kv[j].w, acc[i][j]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int qb = qb0 + 4 * ty + i;
    if (qb >= p.mq) break;
    float* row = p.scores + (int64_t(blockIdx.z) * p.mq + qb) * p.mk;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (kb0 + tx + 16 * j < p.mk) row[kb0 + tx + 16 * j] = acc[i][j];
  }
}

// Per query block (a warp each) of the launch's `rows` (from slice slice0 on), its top-k of the score row into
// the LUT and its count. kPer > 0: rows of at most 32 kPer scores, held in registers (select_topk_row_in_registers);
// 0: any row, by radix select.
template <int kPer>
__global__ void __launch_bounds__(sla::kScoreThreads) sla_topk_kernel(const SlaBlockMapParams p, int64_t slice0,
                                                                      int64_t rows) {
  __shared__ uint32_t hist[kPer ? 1 : sla::kScoreThreads / 32][sla::kRadixBins];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * (sla::kScoreThreads / 32) + warp, out = slice0 * p.mq + row;
  if (row >= rows) return;
  const float* s = p.scores + row * p.mk;
  if constexpr (kPer > 0) sla_detail::select_topk_row_in_registers<kPer>(s, p.mk, p.kept, p.lut + out * p.kept, lane);
  else sla_detail::select_topk_row(s, p.mk, p.kept, hist[warp], p.lut + out * p.kept, lane);
  if (lane == 0) p.count[out] = p.kept;
}

// The top-k kernel for rows of mk scores: the smallest register count per lane that holds the row, else radix.
inline void launch_sla_topk(const SlaBlockMapParams& p, int64_t slice0, int64_t rows, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(cdiv(rows, sla::kScoreThreads / 32));
  const int per = static_cast<int>(cdiv(p.mk, 32));
  auto launch = [&](auto kernel) { kernel<<<grid, sla::kScoreThreads, 0, stream>>>(p, slice0, rows); };
  if (per <= 8) launch(sla_topk_kernel<8>);
  else if (per <= 16) launch(sla_topk_kernel<16>);
  else if (per <= 24) launch(sla_topk_kernel<24>);
  else if (per <= 32) launch(sla_topk_kernel<32>);
  else if (per <= 40) launch(sla_topk_kernel<40>);
  else if (per <= sla::kTopkMaxPerLane) launch(sla_topk_kernel<sla::kTopkMaxPerLane>);
  else launch(sla_topk_kernel<0>);
  TD_CHECK_LAUNCH();
}

// Block sums of x ([batch, heads] slices, bf16 or fp16) into `sums` (means with `means`).
template <int D>
void launch_sla_pool(const AttnTensorView& x, int heads, bool bf16, int blk, int nblocks, float* sums, bool means,
                     int batch, cudaStream_t stream) {
  const dim3 grid(nblocks, heads, batch);
  if (bf16)
    sla_pool_kernel<D, __nv_bfloat16><<<grid, sla::kPoolThreads, 0, stream>>>(x, heads, blk, nblocks, sums, means);
  else
    sla_pool_kernel<D, __half><<<grid, sla::kPoolThreads, 0, stream>>>(x, heads, blk, nblocks, sums, means);
  TD_CHECK_LAUNCH();
}

// The block map's key side: k's block sums (or the given ones, [B*H, mk, D], e.g. sla_linear_state's), mean_N k
// and the centred key-block means (p.k_sums, p.k_mean).
template <int D>
void launch_sla_key_stats(const SlaBlockMapParams& p, int batch, cudaStream_t stream,
                          const float* k_block_sums = nullptr) {
  if (batch == 0 || p.heads == 0) return;
  if (!k_block_sums)  // (mk >= 1: the launcher checks)
    launch_sla_pool<D>(p.k, p.heads, p.bf16, p.blkk, p.mk, p.k_sums, false, batch, stream);
  sla_kmean_kernel<D><<<dim3(batch * p.heads, D / sla::kKmeanCols), sla::kKmeanThreads, 0, stream>>>(
      k_block_sums ? k_block_sums : p.k_sums, p.k_sums, p.k_mean, p.mk, p.blkk, p.k.n);
  TD_CHECK_LAUNCH();
}

// The selection: scores of the pooled q means (p.q_sums) against the centred key-block means, then the
// top-k of every row into the LUT and counts.
template <int D>
void launch_sla_select(const SlaBlockMapParams& p, int batch, cudaStream_t stream) {
  if (batch == 0 || p.heads == 0 || p.mq == 0) return;
  constexpr int smem = sla_score_smem_bytes(D);
  allow_dynamic_shared_memory(sla_score_kernel<D>, smem, true);
  const int64_t slices = int64_t(batch) * p.heads;
  for (int64_t s0 = 0; s0 < slices; s0 += p.slices_per_pass) {  // the scratch holds slices_per_pass slices
    const int64_t n = std::min<int64_t>(p.slices_per_pass, slices - s0), rows = n * p.mq;
    const dim3 grid(static_cast<unsigned>(cdiv(p.mk, sla::kScoreTile)), static_cast<unsigned>(cdiv(p.mq, sla::kScoreTile)),
                    static_cast<unsigned>(n));
    sla_score_kernel<D><<<grid, sla::kScoreThreads, smem, stream>>>(p, s0);
    TD_CHECK_LAUNCH();
    launch_sla_topk(p, s0, rows, stream);
  }
}

// The whole block map on `stream`. (sage_sla runs the key side, then quantize_qk_int8 writing q's block
// means from its Q tiles, then the selection: csrc/ops/sla.cu.)
template <int D>
void launch_sla_block_map(const SlaBlockMapParams& p, int batch, cudaStream_t stream) {
  if (batch == 0 || p.heads == 0) return;
  launch_sla_key_stats<D>(p, batch, stream);
  if (p.mq > 0) launch_sla_pool<D>(p.q, p.heads, p.bf16, p.blkq, p.mq, p.q_sums, true, batch, stream);
  launch_sla_select<D>(p, batch, stream);
}

}  // namespace td
