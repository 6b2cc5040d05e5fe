// Per-block INT8 quantization of Q and of smoothed K for the attention kernels (ARCHITECTURE §4.1).
//
//   q:  s = amax(|q_block|) / 127, q_i8 = sat(rne(q * (127 / amax))), stored scale s * scale_factor
//   k:  km = mean_N(k) per (b, h); the same per-block recipe on k - km.
// K smoothing removes the per-channel bias that would otherwise set the INT8 range; softmax is
// unchanged by it because q . km is the same for every key of a row.
#pragma once
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/quant/heuristics.h"
#include "turbodiffusion/quant/tile.cuh"

namespace td {

template <typename T, int D>
using QKTile = TokenTile<T, D, quant::kTileThreads, quant::kTileVectorsPerThread>;

// Quantizes one loaded tile: block amax -> scale -> INT8. `mu` is subtracted first (zeros for q).
// Scale blocks (16..128 tokens) divide the tile and a warp's rows for one vector index lie in one
// block, so a warp reduction plus one shared atomic per warp gives each block's amax.
template <typename T, int D, bool SMOOTH>
__device__ void quantize_tile_int8(const QKTile<T, D>& t, const QuantQKParams& p, int slice, int tile,
                                   const float (&mu)[8], float* blk_amax) {
  using Tile = QKTile<T, D>;
  if (threadIdx.x < (Tile::ROWS >> p.log2_blk)) blk_amax[threadIdx.x] = 0.f;
  __syncthreads();
  const int64_t valid_rows = p.n - t.row(tile, 0);  // vector i is valid iff i * STEP < valid_rows
  // Pass 1: block amax of x - mu. Values are recomputed in pass 2 from the staged tile (the same
  // float32 subtraction gives the same bits) instead of being held in registers.
#pragma unroll
  for (int i = 0; i < Tile::VECS; ++i) {
    const Vec<T, 8> x = t.vec(i);
    float m = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(SMOOTH ? __fsub_rn(x.get(j), mu[j]) : x.get(j)));
    // Padding rows must not enter the amax (k - km != 0 there); every lane joins the shuffle.
    m = warp_max(int64_t(i) * Tile::STEP < valid_rows ? m : 0.f);
    if (threadIdx.x % 32 == 0) atomic_max_nonneg(&blk_amax[(t.row0 + i * Tile::STEP) >> p.log2_blk], m);
  }
  __syncthreads();
  int8_t* out = p.x_int8 + p.out.slice_offset(slice) + t.row(tile, 0) * p.out.stride_n + t.col;
  float* scale = p.scale + int64_t(slice) * p.num_blocks;
#pragma unroll
  for (int i = 0; i < Tile::VECS; ++i) {
    if (int64_t(i) * Tile::STEP >= valid_rows) break;  // rows are increasing in i
    const int local = t.row0 + i * Tile::STEP;
    const float amax = blk_amax[local >> p.log2_blk];
    const float inv = inv_scale(amax, 127.f);
    const Vec<T, 8> x = t.vec(i);
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float v = SMOOTH ? __fsub_rn(x.get(j), mu[j]) : x.get(j);
      w[j / 4] |= uint32_t(uint8_t(quant_int8(v, inv))) << (8 * (j % 4));
    }
    *reinterpret_cast<uint2*>(out + int64_t(i) * Tile::STEP * p.out.stride_n) = make_uint2(w[0], w[1]);
    if (t.col == 0 && (local & ((1 << p.log2_blk) - 1)) == 0)
      scale[(int64_t(tile) * Tile::ROWS + local) >> p.log2_blk] = __fmul_rn(__fdiv_rn(amax, 127.f), p.scale_factor);
  }
  __syncthreads();  // blk_amax is reused by the next tile
}

// Whether q's block means for blocks of `blk` tokens can come from Q's tiles (store_block_means): whole
// blocks per tile, each block a run of a thread's vectors, its partial sums (STEP rows of D floats) no larger
// than its staged bytes.
template <typename T, int D>
constexpr bool q_block_means_fusable(int blk) {
  using Tile = QKTile<T, D>;
  return blk > 0 && (blk & (blk - 1)) == 0 && blk <= Tile::ROWS && blk % Tile::STEP == 0 &&
         Tile::STEP * D * sizeof(float) <= blk * D * sizeof(T);
}

// The SLA block map's pooled q from a staged Q tile (after quantize_tile_int8, whose last barrier leaves the
// tile unchanged): the block map then need not read q again (sage_sla: 100 MB at Wan-1.3B-480p). The sums
// are sla_pool_kernel's bit for bit (same thread <-> row mapping when its thread count is this tile's: the
// SLA launcher asserts it): a thread adds its own rows r, r + STEP, ... of the block in ascending order from
// +0, the STEP partials of a channel are added in ascending r, and the mean is the sum / the block's length.
// Rows past N are zeros in the stage, and adding +0 to a sum that started at +0 changes no bit. Each block's
// partials overwrite its own staged vectors once every thread has read them (one barrier per block).
template <typename T, int D>
__device__ void store_block_means(const QKTile<T, D>& t, const QuantQKParams& p, int slice, int tile, uint8_t* stage) {
  using Tile = QKTile<T, D>;
  const int vecs = p.mean_blk / Tile::STEP, blocks = Tile::ROWS / p.mean_blk;
  for (int lb = 0; lb < blocks; ++lb) {
    float acc[8] = {};
    for (int i = lb * vecs; i < (lb + 1) * vecs; ++i) {
      const Vec<T, 8> x = t.vec(i);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] += x.get(j);
    }
    __syncthreads();  // block lb's vectors are read by all before its partials overwrite them
    float* part = reinterpret_cast<float*>(stage + size_t(lb) * p.mean_blk * D * sizeof(T)) + t.row0 * D + t.col;
    reinterpret_cast<float4*>(part)[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    reinterpret_cast<float4*>(part)[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < blocks * D; idx += Tile::WARPS * 32) {
    const int lb = idx / D, c = idx % D;
    const int64_t blk = int64_t(tile) * blocks + lb;
    if (blk >= p.num_mean_blocks) break;  // (idx ascending: so are the blocks)
    const float* part = reinterpret_cast<const float*>(stage + size_t(lb) * p.mean_blk * D * sizeof(T)) + c;
    float s = 0.f;
#pragma unroll 4
    for (int r = 0; r < Tile::STEP; ++r) s += part[r * D];
    const int64_t len = std::min<int64_t>(p.mean_blk, p.n - blk * p.mean_blk);
    p.block_means[(int64_t(slice) * p.num_mean_blocks + blk) * D + c] = s / static_cast<float>(len);
  }
}

// Single pass, one CTA per tile: Q's tiles, and K's with its mean in p.mean (given, or from
// quantize_k_mean_kernel just before: K's CTAs come first, in reverse order, see there). One launch for both
// pays the ramp-up and the last wave's tail once (H100, D 64 16k, mean given: 0.043 ms against 0.050 ms as
// two launches, CUDA-graph replays). Tile-major block order: CTAs running together read the same tokens of
// every head, i.e. whole contiguous rows of an NHD tensor (DRAM page locality).
template <typename T, int D, bool SMOOTH>
__device__ __forceinline__ void quantize_tile_single_pass(const QuantQKParams& p, int cta, float* blk_amax,
                                                          uint8_t* stage) {
  const int slice = cta % p.slices, tile = cta / p.slices;
  QKTile<T, D> t(stage);
  t.load(static_cast<const T*>(p.x), p.in, slice, tile, p.n);
  float mu[8] = {};
  if constexpr (SMOOTH) {
#pragma unroll
    for (int j = 0; j < 8; ++j) mu[j] = __ldg(p.mean + int64_t(slice) * D + t.col + j);
  }
  quantize_tile_int8<T, D, SMOOTH>(t, p, slice, tile, mu, blk_amax);
  if constexpr (!SMOOTH) {
    if (p.block_means != nullptr) store_block_means<T, D>(t, p, slice, tile, stage);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(quant::kTileThreads, quant::kTileMinBlocksPerSM)
    quantize_qk_int8_single_pass_kernel(QuantQKParams pq, QuantQKParams pk, int q_ctas) {
  __shared__ float blk_amax[QKTile<T, D>::ROWS / 16];
  __shared__ __align__(16) uint8_t stage[QKTile<T, D>::SMEM_BYTES];
  const int k_ctas = int(gridDim.x) - q_ctas;
  if (int(blockIdx.x) < k_ctas) quantize_tile_single_pass<T, D, true>(pk, k_ctas - 1 - blockIdx.x, blk_amax, stage);
  else quantize_tile_single_pass<T, D, false>(pq, blockIdx.x - k_ctas, blk_amax, stage);
}

// K's mean where it is not given: one CTA per tile adds the tile's channel sums into p.workspace
// (kReplicas copies per slice, against atomic contention); the slice's last CTA adds the copies and writes
// the mean. The single-pass kernel then reads k a second time; its K tiles run first and in reverse
// order, so the first of them are still in L2 from this pass (all of k where it fits in L2). HBM sees k
// read twice, yet this beat a persistent kernel that kept each tile in shared memory across a grid
// barrier per (b, h) (slice_groups.cuh, still V's): H100, 2026-11-27, Q+K 0.68x / 0.75x / 0.53x of copy
// bandwidth at 1.3B-480p / 14B-720p / D 64 16k against 0.64x / 0.70x / 0.52x (docs/quant_kernels.md).
template <typename T, int D>
__global__ void __launch_bounds__(quant::kTileThreads, quant::kTileMinBlocksPerSM)
    quantize_k_mean_kernel(QuantQKParams p, int tiles) {
  using Tile = QKTile<T, D>;
  __shared__ float red[Tile::WARPS * D];
  __shared__ float chan[D];
  __shared__ bool last;
  __shared__ __align__(16) uint8_t stage[Tile::SMEM_BYTES];
  const int slice = blockIdx.x % p.slices, tile = blockIdx.x / p.slices;
  Tile t(stage);
  t.load(static_cast<const T*>(p.x), p.in, slice, tile, p.n);
  float acc[8] = {};
#pragma unroll
  for (int i = 0; i < Tile::VECS; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] += t.vec(i).get(j);
  float* sums = p.workspace + int64_t(slice) * quant::kReplicas * D;
  reduce_channels_to_global<D, quant::kTileThreads, false>(
      acc, red, [&](int c, float v) { atomicAdd(&sums[(tile % quant::kReplicas) * D + c], v); });
  if (threadIdx.x == 0) {
    __threadfence();  // this CTA's sums are visible before its arrival (cumulative over the CTA's barrier)
    last = atomicAdd(&p.arrived[slice], 1u) == static_cast<unsigned>(tiles - 1);
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  combine_replicas<D, false>(sums, chan);
  if (threadIdx.x < D) p.mean[int64_t(slice) * D + threadIdx.x] = __fdiv_rn(chan[threadIdx.x], static_cast<float>(p.n));
}

// q, and k with its mean in pk.mean, in one launch.
template <typename T, int D>
void launch_quantize_qk_int8_single_pass(const QuantQKParams& pq, const QuantQKParams& pk, cudaStream_t stream) {
  const int64_t q_ctas = pq.slices * cdiv(pq.n, QKTile<T, D>::ROWS), k_ctas = pk.slices * cdiv(pk.n, QKTile<T, D>::ROWS);
  if (q_ctas + k_ctas == 0) return;
  static const bool carveout_set = (prefer_shared_memory(quantize_qk_int8_single_pass_kernel<T, D>), true);
  (void)carveout_set;  // (set once)
  quantize_qk_int8_single_pass_kernel<T, D>
      <<<static_cast<unsigned>(q_ctas + k_ctas), quant::kTileThreads, 0, stream>>>(pq, pk, static_cast<int>(q_ctas));
  TD_CHECK_LAUNCH();
}

// k's mean into p.mean (p.workspace and p.arrived zero-initialised).
template <typename T, int D>
void launch_quantize_k_mean(const QuantQKParams& p, cudaStream_t stream) {
  const int tiles = static_cast<int>(cdiv(p.n, QKTile<T, D>::ROWS));
  if (p.slices == 0 || tiles == 0) return;
  static const bool carveout_set = (prefer_shared_memory(quantize_k_mean_kernel<T, D>), true);
  (void)carveout_set;  // (set once)
  quantize_k_mean_kernel<T, D><<<p.slices * tiles, quant::kTileThreads, 0, stream>>>(p, tiles);
  TD_CHECK_LAUNCH();
}

}  // namespace td
