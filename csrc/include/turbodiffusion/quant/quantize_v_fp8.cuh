// Per-channel FP8 E4M3 quantization of V, transposed for the PV product (ARCHITECTURE §4.1).
//
//   s_v[c] = amax_N(|v[:, c]|) / 448, codes = sat_e4m3(rn(v * (448 / amax)))
//   out [B*H, D, n_pad]: tokens contiguous (the PV MMA reads V K-major), zero-padded past n, and
//   reordered inside each 16-token group: position p holds token kVPerm[p] (see below).
//
// Persistent and slice-grouped (slice_groups.cuh): phase 1 reduces the channel amax, phase 2 quantizes the
// tile kept in shared memory. (K's smoothing left this scheme for a mean kernel plus a single pass:
// quantize_qk_int8.cuh; for V the same split measured slower, docs/quant_kernels.md.) Where the caller has
// the amax (sage_sla: sla_linear_state reads all of v and returns it), one pass: one CTA per tile, like Q's.
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

// Codes of the staged tile, written transposed and permuted to out (the slice's [D, n_pad] rows), with
// scales from amax (the slice's D channel maxima; global or shared memory). Every thread of the CTA calls
// it once the tile's copies are issued and waited for; it reuses the tile's buffer, so the caller must
// synchronise before loading the next tile into it.
//  1. Thread t quantizes channels 2c, 2c+1 (c = t % (D / 2)) of 32 consecutive tokens, read as 4-byte
//     words (a warp reads 128 contiguous bytes of a row: conflict-free), so the 16-token permutation is a
//     choice of registers: word w of a 16-token half holds positions 4w..4w+3 = tokens {2w, 2w+1, 2w+8,
//     2w+9} (v_perm), each pair from one cvt.rn.satfinite.e4m3x2.
//  2. The codes go to the buffer as D rows of ROWS bytes, row pitch ROWS + 16 (a warp's 16-byte stores,
//     lanes two rows apart, take 8 wavefronts, twice the minimum; with pitch ROWS, 32).
//  3. Each 16-byte global store takes a chunk of one row, ROWS / 16 consecutive lanes a whole row of the
//     tile: a warp's store covers whole 128-byte lines of a few rows.
// H100 (2026-11-27), v_amax given, 1.3B-480p / 14B-720p: 0.90x / 0.96x of copy bandwidth. Stored straight from step 1
// (a warp's 16-byte stores to 32 rows: 32 L2 requests of half a sector each) 0.45x / 0.44x; the earlier
// byte-wise gather from token-major codes in shared memory 0.61x / 0.63x.
template <typename T, int D>
__device__ void store_v_tile_fp8(const VTile<T, D>& t, const float* amax, uint8_t* out, int tile, int64_t n_pad) {
  constexpr int ROWS = VTile<T, D>::ROWS, PAIRS = D / 2, PITCH = ROWS + 16, CHUNKS = ROWS / 16;
  constexpr int ROWS_PER_PASS = quant::kTileThreads / CHUNKS;
  static_assert(ROWS == 32 * (quant::kTileThreads / PAIRS), "one 32-token run per thread");
  static_assert(D * PITCH <= VTile<T, D>::SMEM_BYTES && D % ROWS_PER_PASS == 0, "codes fit the tile's buffer");
  const int c = threadIdx.x % PAIRS, run = threadIdx.x / PAIRS;
  const float inv0 = inv_scale(amax[2 * c], 448.f), inv1 = inv_scale(amax[2 * c + 1], 448.f);
  const Vec<T, 2>* src = reinterpret_cast<const Vec<T, 2>*>(t.stage) + run * 32 * PAIRS + c;
  uint4 codes[2][2];  // [channel 2c + i][16-token half]
  __syncthreads();  // every thread's copies have landed (step 1 reads other threads' vectors)
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    Vec<T, 2> x[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) x[k] = src[(half * 16 + k) * PAIRS];
    uint32_t w[2][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int a = 2 * j, b = 2 * j + 8;  // tokens a, a+1 -> bytes 0, 1; b, b+1 -> bytes 2, 3
        const float inv = i ? inv1 : inv0;
        w[i][j] = quant_fp8_e4m3x2(x[a].get(i), x[a + 1].get(i), inv) |
                  quant_fp8_e4m3x2(x[b].get(i), x[b + 1].get(i), inv) << 16;
      }
    codes[0][half] = make_uint4(w[0][0], w[0][1], w[0][2], w[0][3]);
    codes[1][half] = make_uint4(w[1][0], w[1][1], w[1][2], w[1][3]);
  }
  __syncthreads();  // every input word is read before the codes overwrite the buffer
  uint8_t* rows = reinterpret_cast<uint8_t*>(t.stage);
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half)
      *reinterpret_cast<uint4*>(rows + (2 * c + i) * PITCH + run * 32 + half * 16) = codes[i][half];
  __syncthreads();
  const int chunk = threadIdx.x % CHUNKS;
  const int64_t pos = int64_t(tile) * ROWS + 16 * chunk;
  if (pos >= n_pad) return;  // n_pad is a multiple of 16
#pragma unroll
  for (int k = 0; k < D / ROWS_PER_PASS; ++k) {
    const int r = threadIdx.x / CHUNKS + k * ROWS_PER_PASS;
    *reinterpret_cast<uint4*>(out + r * n_pad + pos) = *reinterpret_cast<const uint4*>(rows + r * PITCH + 16 * chunk);
  }
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
  if (tile == 0 && threadIdx.x < D) p.scale[int64_t(s) * D + threadIdx.x] = __fdiv_rn(__ldg(amax + threadIdx.x), 448.f);
  store_v_tile_fp8<T, D>(t, amax, p.v_fp8 + int64_t(s) * D * p.n_pad, tile, p.n_pad);
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
        combine_replicas<D, true>(p.workspace + int64_t(s) * quant::kReplicas * D, chan);
        if (rank == 0 && threadIdx.x < D) p.scale[int64_t(s) * D + threadIdx.x] = __fdiv_rn(chan[threadIdx.x], 448.f);
        uint8_t* out = p.v_fp8 + int64_t(s) * D * p.n_pad;
        for (int tile = rank; tile < tiles_pad; tile += g.group_size) {
          if (!resident) t.load(v, p.in, s, tile, p.n);  // rows >= n are 0 and quantize to 0: the padding
          store_v_tile_fp8<T, D>(t, chan, out, tile, p.n_pad);
          __syncthreads();  // the tile's buffer is reused by the next load
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
