// Per-channel FP8 E4M3 quantization of V, transposed for the PV product (ARCHITECTURE §4.1).
//
//   s_v[c] = amax_N(|v[:, c]|) / 448, codes = sat_e4m3(rn(v * (448 / amax)))
//   out [B*H, D, n_pad]: tokens contiguous (the PV MMA reads V K-major), zero-padded past n, and
//   reordered inside each 16-token group: position p holds token kVPerm[p] (see below).
//
// Persistent and slice-grouped like K's smoothing (slice_groups.cuh): phase 1 reduces the
// channel amax, phase 2 quantizes the tile kept in shared memory and transposes it there (4-byte
// shared loads and byte permutes in registers).
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

// 4x4 byte transpose (prmt): on entry w[r] holds bytes (r, 0..3), on return w[c] holds (0..3, c).
__device__ __forceinline__ void transpose_4x4_bytes(uint32_t (&w)[4]) {
  const uint32_t t0 = __byte_perm(w[0], w[1], 0x5140), t1 = __byte_perm(w[0], w[1], 0x7362);  // a0b0a1b1, a2b2a3b3
  const uint32_t t2 = __byte_perm(w[2], w[3], 0x5140), t3 = __byte_perm(w[2], w[3], 0x7362);  // c0d0c1d1, c2d2c3d3
  w[0] = __byte_perm(t0, t2, 0x5410);
  w[1] = __byte_perm(t0, t2, 0x7632);
  w[2] = __byte_perm(t1, t3, 0x5410);
  w[3] = __byte_perm(t1, t3, 0x7632);
}

template <typename T, int D>
__global__ void __launch_bounds__(quant::kTileThreads, quant::kTileMinBlocksPerSM)
    quantize_v_fp8_kernel(QuantVParams p, int tiles_pad, SliceGroups g) {
  using Tile = VTile<T, D>;
  constexpr int ROWS = Tile::ROWS;
  __shared__ float red[Tile::WARPS * D];
  __shared__ float chan[D];
  __shared__ __align__(16) uint8_t tile_smem[Tile::SMEM_BYTES];
  // Token-major staging of one quantized tile: written with 8-byte stores along channels, read as
  // 4-byte words (4 channels of a token) by consecutive lanes on consecutive words (conflict-free at
  // D = 128; at D = 64 the two half-warps' rows are 256 words apart: 2-way conflicts). It reuses the
  // input tile's buffer once every thread has read its input vectors.
  uint8_t* stage = tile_smem;
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
          t.load(v, p.in, s, tile, p.n, resident);
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
      [&](int next) {
        if (resident) Tile(tile_smem).prefetch(v, p.in, next, rank, p.n);
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
          if (!resident) t.load(v, p.in, s, tile, p.n, false);  // rows >= n are 0 and quantize to 0: the padding
          uint2 codes[Tile::VECS];
#pragma unroll
          for (int i = 0; i < Tile::VECS; ++i) {
            const Vec<T, 8> x = t.vec(i);
            uint32_t h[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) h[j] = quant_fp8_e4m3x2(x.get(2 * j), inv[2 * j], x.get(2 * j + 1), inv[2 * j + 1]);
            codes[i] = make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
          }
          __syncthreads();  // every input vector is read before codes overwrite the buffer
#pragma unroll
          for (int i = 0; i < Tile::VECS; ++i)
            *reinterpret_cast<uint2*>(&stage[(t.row0 + i * Tile::STEP) * D + t.col]) = codes[i];
          __syncthreads();
          // Each thread: 4 channels x one 16-token group. Quad q of the group's output positions holds
          // tokens {2q, 2q+1, 8+2q, 9+2q} (v_perm): four word loads (those tokens' channels 4c4..4c4+3)
          // and one 4x4 byte transpose give positions 4q..4q+3 of the 4 channels. Stores are streaming
          // (evict-first: the codes are not read again here).
          constexpr int C4 = D / 4, GROUPS = ROWS / 16;
          static_assert(C4 * GROUPS == quant::kTileThreads, "one 4-channel x 16-token unit per thread");
          const int c4 = threadIdx.x % C4, grp = threadIdx.x / C4;
          const uint32_t* words = reinterpret_cast<const uint32_t*>(stage) + grp * 16 * C4 + c4;
          static_assert(v_perm(4) == 2 && v_perm(5) == 3 && v_perm(6) == 10 && v_perm(7) == 11, "quad tokens");
          uint32_t cols[4][4];  // [channel][quad]
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            uint32_t w[4] = {words[(2 * q) * C4], words[(2 * q + 1) * C4], words[(8 + 2 * q) * C4],
                             words[(9 + 2 * q) * C4]};
            transpose_4x4_bytes(w);
#pragma unroll
            for (int j = 0; j < 4; ++j) cols[j][q] = w[j];
          }
          const int64_t pos0 = int64_t(tile) * ROWS + grp * 16;
          if (pos0 < p.n_pad) {
#pragma unroll
            for (int j = 0; j < 4; ++j)
              __stcs(reinterpret_cast<uint4*>(out + int64_t(4 * c4 + j) * p.n_pad + pos0),
                     make_uint4(cols[j][0], cols[j][1], cols[j][2], cols[j][3]));
          }
          __syncthreads();  // stage is reused by the next tile
        }
      });
}

template <typename T, int D>
void launch_quantize_v_fp8(const QuantVParams& p, int num_sms, cudaStream_t stream) {
  constexpr int ROWS = VTile<T, D>::ROWS;
  const int tiles_pad = static_cast<int>(cdiv(p.n_pad, ROWS));
  if (p.slices == 0 || tiles_pad == 0) return;
  launch_slice_groups(quantize_v_fp8_kernel<T, D>, quant::kTileThreads, num_sms, p.slices, tiles_pad, p.arrived,
                      /*fill=*/false, stream, p, tiles_pad);
}

}  // namespace td
