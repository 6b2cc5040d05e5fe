// Per-channel FP8 E4M3 quantization of V, transposed for the PV product (ARCHITECTURE §4.1).
//
//   s_v[c] = amax_N(|v[:, c]|) / 448, codes = sat_e4m3(rn(v * (448 / amax)))
//   out [B*H, D, n_pad]: tokens contiguous (the PV MMA reads V K-major), zero-padded past n, and
//   reordered inside each 16-token group: position p holds token kVPerm[p] (see below).
//
// Persistent and slice-grouped like K's smoothing (slice_groups.cuh): phase 1 reduces the
// channel amax, phase 2 quantizes the tile kept in shared memory and transposes it there. Where the
// caller has the amax (sage_sla: sla_linear_state reads all of v and returns it), one pass: one CTA
// per tile, like Q's.
#pragma once
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/quant/heuristics.h"
#include "turbodiffusion/quant/tile.cuh"

namespace td {

// A thread of the QK^T accumulator (mma.sync m16n8k32 and wgmma alike) owns tokens
// {2t, 2t+1, 8+2t, 9+2t} of each 16, while the 8-bit A operand of the PV MMA wants k-indices
// 4t..4t+3. Storing V's tokens in this order makes the packed P registers a valid A operand:
// position p of a 16-token group holds token v_perm(p) = {0,1,8,9, 2,3,10,11, 4,5,12,13, 6,7,14,15}[p].
__host__ __device__ constexpr int v_perm(int p) { return 2 * (p / 4) + (p % 4 < 2 ? p % 4 : 6 + p % 4); }
static_assert(v_perm(2) == 8 && v_perm(3) == 9 && v_perm(4) == 2 && v_perm(15) == 15, "V token order");

template <typename T, int D>
using VTile = TokenTile<T, D, quant::kTileThreads, quant::kTileVectorsPerThread>;

// Codes of the staged tile (inv: 448 / amax of the thread's 8 channels) written transposed and permuted
// to out (the slice's [D, n_pad] rows). Every thread of the CTA. `stage` (the tile's own buffer, once
// every thread has read its input vectors) holds the codes token-major: written with 8-byte stores along
// channels, read byte-wise along tokens by consecutive lanes on consecutive channels (conflict-free both
// ways).
template <typename T, int D>
__device__ void store_v_tile_fp8(const VTile<T, D>& t, const float (&inv)[8], uint8_t* stage, uint8_t* out,
                                 int tile, int64_t n_pad) {
  using Tile = VTile<T, D>;
  constexpr int ROWS = Tile::ROWS;
  uint2 codes[Tile::VECS];
#pragma unroll
  for (int i = 0; i < Tile::VECS; ++i) {
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j / 4] |= uint32_t(quant_fp8_e4m3(t.vec(i).get(j), inv[j])) << (8 * (j % 4));
    codes[i] = make_uint2(w[0], w[1]);
  }
  __syncthreads();  // every input vector is read before codes overwrite the buffer
#pragma unroll
  for (int i = 0; i < Tile::VECS; ++i)
    *reinterpret_cast<uint2*>(&stage[(t.row0 + i * Tile::STEP) * D + t.col]) = codes[i];
  __syncthreads();
  // Each unit is one channel x 32 output positions (two permuted 16-token groups): a 32-byte
  // contiguous run of the output row, i.e. one full sector.
  const int64_t row_base = int64_t(tile) * ROWS;
  for (int u = threadIdx.x; u < D * (ROWS / 32); u += quant::kTileThreads) {
    const int c = u % D, pair = u / D;
    const uint8_t* column = stage + pair * 32 * D + c;  // token 0 of the pair, channel c
    uint32_t w[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      uint32_t word = 0;
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const int pos = 4 * q + b;  // 0..31 within the pair; compile-time offsets below
        word |= uint32_t(column[((pos / 16) * 16 + v_perm(pos % 16)) * D]) << (8 * b);
      }
      w[q] = word;
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t pos0 = row_base + pair * 32 + half * 16;
      if (pos0 < n_pad)
        *reinterpret_cast<uint4*>(out + int64_t(c) * n_pad + pos0) =
            make_uint4(w[4 * half], w[4 * half + 1], w[4 * half + 2], w[4 * half + 3]);
    }
  }
  __syncthreads();  // stage is reused by the next tile
}

// One pass with the given amax (p.amax): one CTA per tile, tile-major like Q's.
template <typename T, int D>
__global__ void __launch_bounds__(quant::kTileThreads, quant::kTileMinBlocksPerSM)
    quantize_v_fp8_given_amax_kernel(QuantVParams p) {
  __shared__ __align__(16) uint8_t tile_smem[VTile<T, D>::SMEM_BYTES];
  const int s = blockIdx.x % p.slices, tile = blockIdx.x / p.slices;
  VTile<T, D> t(tile_smem);
  t.load(static_cast<const T*>(p.v), p.in, s, tile, p.n);  // rows >= n are 0 and quantize to 0: the padding
  const float* amax = p.amax + int64_t(s) * D;
  float inv[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) inv[j] = inv_scale(__ldg(amax + t.col + j), 448.f);
  if (tile == 0 && threadIdx.x < D) p.scale[int64_t(s) * D + threadIdx.x] = __fdiv_rn(__ldg(amax + threadIdx.x), 448.f);
  store_v_tile_fp8<T, D>(t, inv, tile_smem, p.v_fp8 + int64_t(s) * D * p.n_pad, tile, p.n_pad);
}

template <typename T, int D>
__global__ void __launch_bounds__(quant::kTileThreads, quant::kTileMinBlocksPerSM)
    quantize_v_fp8_kernel(QuantVParams p, int tiles_pad, SliceGroups g) {
  using Tile = VTile<T, D>;
  __shared__ float red[Tile::WARPS * D];
  __shared__ float chan[D];
  __shared__ __align__(16) uint8_t tile_smem[Tile::SMEM_BYTES];
  const int rank = blockIdx.x % g.group_size;
  // One tile per CTA (the padding tiles included): it stays in shared memory across the barrier.
  const bool resident = tiles_pad <= g.group_size;
  const T* v = static_cast<const T*>(p.v);
  run_slices(
      g, p.slices,
      [&](int s) {
        float acc[8] = {};
        for (int tile = rank; tile < tiles_pad; tile += g.group_size) {
          Tile t(tile_smem);
          t.load(v, p.in, s, tile, p.n);
#pragma unroll
          for (int i = 0; i < Tile::VECS; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[j] = fmaxf(acc[j], fabsf(t.vec(i).get(j)));
        }
        reduce_channels_to_global<D, quant::kTileThreads, true>(
            acc, red, [&](int c, float m) {
              atomic_max_nonneg(&p.workspace[(int64_t(s) * quant::kReplicas + rank % quant::kReplicas) * D + c], m);
            });
      },
      [&](int s) {
        Tile t(tile_smem);
        float inv[8];
        combine_replicas<D, true>(p.workspace + int64_t(s) * quant::kReplicas * D, chan);
#pragma unroll
        for (int j = 0; j < 8; ++j) inv[j] = inv_scale(chan[t.col + j], 448.f);
        if (rank == 0 && threadIdx.x < D) p.scale[int64_t(s) * D + threadIdx.x] = __fdiv_rn(chan[threadIdx.x], 448.f);
        uint8_t* out = p.v_fp8 + int64_t(s) * D * p.n_pad;
        for (int tile = rank; tile < tiles_pad; tile += g.group_size) {
          if (!resident) t.load(v, p.in, s, tile, p.n);  // rows >= n are 0 and quantize to 0: the padding
          store_v_tile_fp8<T, D>(t, inv, tile_smem, out, tile, p.n_pad);
        }
      });
}

template <typename T, int D>
void launch_quantize_v_fp8(const QuantVParams& p, int num_sms, cudaStream_t stream) {
  constexpr int ROWS = VTile<T, D>::ROWS;
  const int tiles_pad = static_cast<int>(cdiv(p.n_pad, ROWS));
  if (p.slices == 0 || tiles_pad == 0) return;
  if (p.amax) {
    static const bool carveout_set = (prefer_shared_memory(quantize_v_fp8_given_amax_kernel<T, D>), true);
    (void)carveout_set;  // (set once)
    quantize_v_fp8_given_amax_kernel<T, D><<<p.slices * tiles_pad, quant::kTileThreads, 0, stream>>>(p);
    TD_CHECK_LAUNCH();
    return;
  }
  launch_slice_groups(quantize_v_fp8_kernel<T, D>, quant::kTileThreads, num_sms, p.slices, tiles_pad, p.arrived,
                      stream, p, tiles_pad);
}

}  // namespace td
