// SLA block map (ARCHITECTURE §4.3) in three launches, emitting the LUT of §4.2 directly:
//   1. sla_pool_kernel (q, then k): fp32 sums of every block of tokens (the last block is partial);
//   2. sla_kmean_kernel: mean_N k from the block sums (one CTA per (b, h), a fixed order; also an output:
//      sage_sla hands it to quantize_qk_int8, whose K pass is then single), and the centred key-block
//      means in place of the sums;
//   3. sla_score_topk_kernel: score = mean(q block) . (mean(k block) - mean_N k) for a group of query
//      blocks against all key blocks (fp32 CUDA-core FMAs, scores kept in shared memory), then per row a
//      warp finds the kept-th largest score by MSB radix select (4 passes of 8-bit histograms over the
//      order-preserving integer image of the floats) and writes the kept indices in ascending order:
//      every index whose score is above the threshold, then the lowest-indexed ties.
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

// One warp: indices of the `kept` largest of s[0, mk) into out[0, kept), ascending. hist: 256 words
// of the warp's own shared memory.
__device__ __forceinline__ void select_topk_row(const float* s, int mk, int kept, uint32_t* hist, int32_t* out,
                                                int lane) {
  if (kept >= mk) {
    for (int j = lane; j < mk; j += 32) out[j] = j;
    return;
  }
  if (kept <= 0) return;
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
  // prefix is now the kept-th largest key: take every key above it and the first `remaining` equal ones.
  const uint32_t lt = (1u << lane) - 1u;
  uint32_t taken = 0, eq_seen = 0;
  for (int j0 = 0; j0 < mk; j0 += 32) {
    const int j = j0 + lane;
    const uint32_t u = j < mk ? ordered_bits(s[j]) : 0u;
    const bool eq = j < mk && u == prefix;
    const uint32_t eq_mask = __ballot_sync(0xffffffffu, eq);
    const bool take = (j < mk && u > prefix) || (eq && eq_seen + __popc(eq_mask & lt) < remaining);
    const uint32_t take_mask = __ballot_sync(0xffffffffu, take);
    if (take) out[taken + __popc(take_mask & lt)] = j;
    taken += __popc(take_mask);
    eq_seen += __popc(eq_mask);
  }
}

}  // namespace sla_detail

// Sums of every `blk` tokens of x [B, H, N, D] -> sums [B*H, nblocks, D] (fp32). Grid (nblocks, H, B).
template <int D, typename T>
__global__ void __launch_bounds__(sla::kPoolThreads) sla_pool_kernel(const AttnTensorView x, int heads, int blk,
                                                                     int nblocks, float* sums) {
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
    out[col] = s;
  }
}

// mean_N k from the block sums, then the block sums turned in place into centred block means (sum / len
// - mean_N k, the two roundings the score kernel used to do per CTA). Grid (B*H), kKmeanThreads threads:
// column c = tid % D, the key blocks j = tid / D (mod kKmeanThreads / D) summed in ascending order, the
// partial sums added in a fixed order (deterministic). One thread per column walking all Mk blocks was
// latency-bound: H100 (2026-11-27) Wan-1.3B-480p 64x64 (12 CTAs) 0.018 vs 0.107 ms, 14B-720p 0.044 vs 0.26 ms.
template <int D>
__global__ void __launch_bounds__(sla::kKmeanThreads)
    sla_kmean_kernel(float* k_sums, float* k_mean, int mk, int blkk, int64_t nk) {
  constexpr int G = sla::kKmeanThreads / D;
  __shared__ float part[G][D];
  const int c = threadIdx.x % D, g = threadIdx.x / D;
  float* col = k_sums + int64_t(blockIdx.x) * mk * D + c;
  float s = 0.f;
#pragma unroll 8
  for (int j = g; j < mk; j += G) s += col[int64_t(j) * D];
  part[g][c] = s;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < G; ++i) total += part[i][c];
  const float km = total / static_cast<float>(nk);
  if (g == 0) k_mean[int64_t(blockIdx.x) * D + c] = km;
  for (int j = g; j < mk; j += G) {
    const int64_t len = std::min<int64_t>(blkk, nk - int64_t(j) * blkk);
    col[int64_t(j) * D] = __fsub_rn(col[int64_t(j) * D] / static_cast<float>(len), km);
  }
}

// Pooled-q rows the score kernel stages for `rows` query blocks per CTA: a thread scores 4 rows at once.
constexpr int sla_score_q_rows(int rows) { return (rows + 3) / 4 * 4; }

// Shared memory of the score/top-k kernel for `rows` query blocks per CTA and `key_bufs` pooled-k tiles.
inline size_t sla_score_smem_bytes(int d, int rows, int mk, int key_bufs) {
  return sizeof(float) *
             (size_t(sla_score_q_rows(rows)) * d + size_t(key_bufs) * sla::kKeyTile * (d + 4) + size_t(rows) * mk) +
         sizeof(uint32_t) * (sla::kScoreThreads / 32) * sla::kRadixBins;
}

// Scores of rows_per_cta query blocks against every key block, then their top-k. Grid
// (ceil(mq / rows_per_cta), H, B).
template <int D>
__global__ void __launch_bounds__(sla::kScoreThreads) sla_score_topk_kernel(const SlaBlockMapParams p) {
  // Key rows padded by 4 floats: the 8 lanes of a float4 wavefront (keys c .. c + 7 at one channel quad)
  // then hit 8 different bank quads.
  constexpr int KT = sla::kKeyTile, DP = D + 4;
  static_assert(KT * sla::kMaxRowsPerCta / 4 == sla::kScoreThreads, "4 x 1 scores per thread");
  extern __shared__ __align__(16) float smem[];
  const int rows_max = p.rows_per_cta;
  const int pq_rows = sla_score_q_rows(rows_max);           // whole groups of 4 (a thread's rows), zero past rows
  float* pq = smem;                                         // [pq_rows][D] pooled q means
  float* pk = pq + pq_rows * D;                             // [key_bufs][KT][DP] pooled centred k means
  uint32_t* hist = reinterpret_cast<uint32_t*>(pk + p.key_bufs * KT * DP);  // [warps][256]
  float* score = reinterpret_cast<float*>(hist + (sla::kScoreThreads / 32) * sla::kRadixBins);  // [rows][mk]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  const int64_t slice = int64_t(b) * p.heads + h;
  const int qb0 = blockIdx.x * rows_max;
  const int rows = min(rows_max, p.mq - qb0);
  const int mk = p.mk;

  for (int i = tid; i < pq_rows * D; i += sla::kScoreThreads) {
    const int r = i / D, qb = qb0 + r;
    float v = 0.f;
    if (r < rows) {
      const int64_t len = std::min<int64_t>(p.blkq, p.q.n - int64_t(qb) * p.blkq);
      v = p.q_sums[(slice * p.mq + qb) * D + i % D] / static_cast<float>(len);
    }
    pq[i] = v;
  }
  const int c = tid % KT, r0 = 4 * (tid / KT);  // this thread's key block in the tile, its first row
  // Centred key-block means (sla_kmean_kernel) of the tile at kt0 into buffer buf: 16-byte cp.async
  // copies (zeros past mk), one commit group. Two buffers (p.key_bufs, where the launcher finds they cost
  // no CTA per SM): the next tile loads under this one's FMAs; one: after them.
  auto stage = [&](int kt0, int buf) {
    for (int i = 4 * tid; i < KT * D; i += 4 * sla::kScoreThreads) {
      const int kc = i / D, d = i % D, kb = kt0 + kc;
      cp_async_16(pk + (buf * KT + kc) * DP + d, p.k_sums + (slice * mk + min(kb, mk - 1)) * D + d, kb < mk);
    }
    cp_async_commit();
  };
  const bool ahead = p.key_bufs == 2;
  stage(0, 0);
  for (int kt0 = 0, buf = 0; kt0 < mk; kt0 += KT, buf = ahead ? buf ^ 1 : 0) {
    if (ahead && kt0 + KT < mk) {
      stage(kt0 + KT, buf ^ 1);  // (its buffer was last read before the barrier closing the previous tile)
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // the tile (and, first time, pq) visible to every thread
    if (r0 < rows && kt0 + c < mk) {
      // score[r][c] = sum_d q[r][d] k[c][d], d ascending (one FMA chain per score).
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      const float* kr = pk + (buf * KT + c) * DP;
#pragma unroll 4
      for (int d = 0; d < D; d += 4) {
        const float4 kv = *reinterpret_cast<const float4*>(kr + d);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float4 qv = *reinterpret_cast<const float4*>(pq + (r0 + j) * D + d);
          acc[j] = fmaf(qv.x, kv.x, acc[j]);
          acc[j] = fmaf(qv.y, kv.y, acc[j]);
          acc[j] = fmaf(qv.z, kv.z, acc[j]);
          acc[j] = fmaf(qv.w, kv.w, acc[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (r0 + j < rows) score[(r0 + j) * mk + kt0 + c] = acc[j];
    }
    __syncthreads();  // the tile consumed before the next iteration stages over it
    if (!ahead && kt0 + KT < mk) stage(kt0 + KT, 0);
  }
  for (int rr = warp; rr < rows; rr += sla::kScoreThreads / 32) {
    const int64_t row = slice * p.mq + qb0 + rr;
    sla_detail::select_topk_row(score + rr * mk, mk, p.kept, hist + warp * sla::kRadixBins, p.lut + row * p.kept,
                                lane);
    if (lane == 0) p.count[row] = p.kept;
  }
}

// The whole block map on `stream`. max_smem: the device's opt-in shared memory per block; the
// launcher has checked that one query block per CTA fits (rows_per_cta >= 1).
template <int D>
void launch_sla_block_map(SlaBlockMapParams p, int batch, size_t max_smem, cudaStream_t stream) {
  if (batch == 0 || p.heads == 0) return;
  const dim3 pool_q(p.mq, p.heads, batch), pool_k(p.mk, p.heads, batch);  // (mk >= 1: the launcher checks)
  if (p.bf16) {
    sla_pool_kernel<D, __nv_bfloat16><<<pool_k, sla::kPoolThreads, 0, stream>>>(p.k, p.heads, p.blkk, p.mk, p.k_sums);
  } else {
    sla_pool_kernel<D, __half><<<pool_k, sla::kPoolThreads, 0, stream>>>(p.k, p.heads, p.blkk, p.mk, p.k_sums);
  }
  TD_CHECK_LAUNCH();
  sla_kmean_kernel<D><<<batch * p.heads, sla::kKmeanThreads, 0, stream>>>(p.k_sums, p.k_mean, p.mk, p.blkk, p.k.n);
  TD_CHECK_LAUNCH();
  if (p.mq == 0) return;
  if (p.bf16)
    sla_pool_kernel<D, __nv_bfloat16><<<pool_q, sla::kPoolThreads, 0, stream>>>(p.q, p.heads, p.blkq, p.mq, p.q_sums);
  else
    sla_pool_kernel<D, __half><<<pool_q, sla::kPoolThreads, 0, stream>>>(p.q, p.heads, p.blkq, p.mq, p.q_sums);
  TD_CHECK_LAUNCH();
  allow_dynamic_shared_memory(sla_score_topk_kernel<D>, static_cast<int>(max_smem));
  const size_t smem = sla_score_smem_bytes(D, p.rows_per_cta, p.mk, p.key_bufs);
  const dim3 grid(static_cast<unsigned>(cdiv(p.mq, p.rows_per_cta)), p.heads, batch);
  sla_score_topk_kernel<D><<<grid, sla::kScoreThreads, smem, stream>>>(p);
  TD_CHECK_LAUNCH();
}

}  // namespace td
