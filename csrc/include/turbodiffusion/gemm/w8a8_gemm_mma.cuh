// w8a8_gemm_mma: INT8 GEMM on mma.sync.m16n8k32 (sm80 / sm89 / sm120, and sm90, where it is the
// fallback and the comparison point of the wgmma kernel), with the same epilogue as the sm90 kernel:
//
//   y[m, n] = fma(a_scale[m], float(acc[m, n]) * w_scale[n], bias[n])   -> bf16 / fp16
//
// Pipeline: a 4-stage cp.async ring of 128 x 64-byte a and w tiles in shared memory (zero-filled past
// M, N and K, so any M and any N, K that keep 16-byte rows work), ldmatrix.x4 into the MMA fragments,
// int32 accumulators in registers (exact: |acc| < 2^31 for K <= 131072). Tunables and their reasons
// live in gemm/heuristics.h (MmaTile).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "turbodiffusion/common/cuda_check.h"
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/common/sm80_primitives.cuh"
#include "turbodiffusion/common/vec.cuh"
#include "turbodiffusion/gemm/heuristics.h"
#include "turbodiffusion/gemm/params.h"

namespace td {
namespace mma_gemm {

using Tile = gemm::MmaTile;
constexpr int BM = Tile::kM, BN = Tile::kN, BK = Tile::kK, STAGES = Tile::kStages, THREADS = Tile::kThreads;
constexpr int WM = BM / Tile::kWarpsM;  // 64 rows per warp
constexpr int WN = BN / Tile::kWarpsN;  // 32 columns per warp
constexpr int MI = WM / 16, NI = WN / 8;  // MMA tiles per warp: 4 x 4
constexpr int CHUNKS = BK / 16;            // 16-byte chunks per tile row
constexpr int STAGE_BYTES = (BM + BN) * BK;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;
static_assert(BK == 64, "the XOR swizzle below is written for 64-byte rows (4 chunks)");
static_assert(WM % 16 == 0 && WN % 16 == 0, "B fragments are loaded two n8 tiles at a time");
static_assert((BM * CHUNKS) % THREADS == 0 && (BN * CHUNKS) % THREADS == 0, "whole chunks per thread");
static_assert(SMEM_BYTES <= 99 * 1024, "must fit the 99 KiB per-block limit of sm86/sm89/sm120");

// Byte offset of 16-byte chunk `c` of tile row `r`. Rows are 64 B, so an 8-row ldmatrix phase spans
// four 128-byte lines, two rows each; XOR-ing the chunk with (r >> 1) & 3 sends the 8 rows to 8
// distinct 16-byte bank groups (conflict-free), and cp.async writes stay 16-byte aligned.
__device__ __forceinline__ int swizzle(int r, int c) { return r * BK + ((c ^ ((r >> 1) & 3)) << 4); }

// Issue the copies of k-tile `kt` (rows m0.., n0..) into `stage`.
__device__ __forceinline__ void load_tile(const W8A8GemmParams& p, uint8_t* smem, int stage, int kt, int64_t m0,
                                          int64_t n0) {
  const int tid = threadIdx.x;
  uint8_t* sa = smem + stage * STAGE_BYTES;
  uint8_t* sb = sa + BM * BK;
  const int64_t k0 = static_cast<int64_t>(kt) * BK;
  const int8_t* a = static_cast<const int8_t*>(p.a);
  const int8_t* w = static_cast<const int8_t*>(p.w);
#pragma unroll
  for (int i = 0; i < BM * CHUNKS / THREADS; ++i) {
    const int c = tid + i * THREADS, r = c / CHUNKS, ch = c % CHUNKS;
    const int64_t gm = m0 + r, gk = k0 + ch * 16;
    const bool ok = gm < p.m && gk < p.k;  // K % 16 == 0: a chunk is all in or all out
    cp_async_16(smem_u32(sa + swizzle(r, ch)), ok ? a + gm * p.lda + gk : a, ok);
  }
#pragma unroll
  for (int i = 0; i < BN * CHUNKS / THREADS; ++i) {
    const int c = tid + i * THREADS, r = c / CHUNKS, ch = c % CHUNKS;
    const int64_t gn = n0 + r, gk = k0 + ch * 16;
    const bool ok = gn < p.n && gk < p.k;
    cp_async_16(smem_u32(sb + swizzle(r, ch)), ok ? w + gn * p.ldw + gk : w, ok);
  }
}

// Scale, add the bias, convert and store the warp's 64 x 32 accumulator tile (2 values per store).
template <class T, class T2>
__device__ __forceinline__ void store_tile(const W8A8GemmParams& p, const int32_t (&acc)[MI][NI][4], int64_t row0,
                                           int64_t col0) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int ni = 0; ni < NI; ++ni) {
    const int64_t n = col0 + ni * 8 + 2 * t;
    if (n >= p.n) continue;  // N % 8 == 0: n and n + 1 are both in or both out
    const float ws0 = p.w_scale[n], ws1 = p.w_scale[n + 1];
    const float b0 = bias ? to_float(bias[n]) : 0.f, b1 = bias ? to_float(bias[n + 1]) : 0.f;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t m = row0 + mi * 16 + g + 8 * h;
        if (m >= p.m) continue;
        const float as = p.a_scale[m];
        // The sm90 EVT's order: (float(acc) * w_scale), then one fma with a_scale and the bias.
        const float y0 = fmaf(as, __int2float_rn(acc[mi][ni][2 * h]) * ws0, b0);
        const float y1 = fmaf(as, __int2float_rn(acc[mi][ni][2 * h + 1]) * ws1, b1);
        *reinterpret_cast<T2*>(out + m * p.ldo + n) = from_float2<T2>(y0, y1);
      }
    }
  }
}

__global__ void __launch_bounds__(THREADS) w8a8_gemm_mma_kernel(const W8A8GemmParams p) {
  extern __shared__ __align__(128) uint8_t smem[];
  // Grouped raster: kMmaGroupM M-tiles walk along N together (heuristics.h).
  const int tiles_m = static_cast<int>((p.m + BM - 1) / BM), tiles_n = static_cast<int>((p.n + BN - 1) / BN);
  const int bid = blockIdx.x, per_group = gemm::kMmaGroupM * tiles_n;
  const int first_m = (bid / per_group) * gemm::kMmaGroupM;
  const int group_m = min(tiles_m - first_m, gemm::kMmaGroupM);
  const int tm = first_m + (bid % per_group) % group_m, tn = (bid % per_group) / group_m;
  const int64_t m0 = static_cast<int64_t>(tm) * BM, n0 = static_cast<int64_t>(tn) * BN;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / Tile::kWarpsN, wn = warp % Tile::kWarpsN;
  const int ktiles = static_cast<int>((p.k + BK - 1) / BK);

  int32_t acc[MI][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load_tile(p, smem, s, s, m0, n0);
    cp_async_commit();  // always commit, so the group count stays in step with the stage count
  }

  // ldmatrix lane roles: lane l addresses row (l % 8) of 8x16-byte matrix l / 8.
  const int lrow = lane % 8, lmat = lane / 8;
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();  // k-tile kt has landed (for this thread) ...
    __syncthreads();              // ... for every thread; and every warp is done with k-tile kt - 1
    const int next = kt + STAGES - 1;
    if (next < ktiles) load_tile(p, smem, next % STAGES, next, m0, n0);
    cp_async_commit();

    const uint8_t* sa = smem + (kt % STAGES) * STAGE_BYTES;
    const uint8_t* sb = sa + BM * BK;
#pragma unroll
    for (int kk = 0; kk < BK / 32; ++kk) {
      uint32_t af[MI][4], bf[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        // matrices: (rows 0-7, chunk c), (rows 8-15, c), (rows 0-7, c+1), (rows 8-15, c+1) = a0..a3
        const int r = wm * WM + mi * 16 + lrow + (lmat & 1) * 8;
        ldmatrix_x4(af[mi], smem_u32(sa + swizzle(r, kk * 2 + (lmat >> 1))));
      }
#pragma unroll
      for (int nj = 0; nj < NI; nj += 2) {
        // matrices: (n 0-7, c), (n 0-7, c+1), (n 8-15, c), (n 8-15, c+1) = b0, b1 of two n8 tiles
        uint32_t r4[4];
        const int r = wn * WN + nj * 8 + lrow + (lmat >> 1) * 8;
        ldmatrix_x4(r4, smem_u32(sb + swizzle(r, kk * 2 + (lmat & 1))));
        bf[nj][0] = r4[0];
        bf[nj][1] = r4[1];
        bf[nj + 1][0] = r4[2];
        bf[nj + 1][1] = r4[3];
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma_s8(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
  }
  cp_async_wait<0>();  // no copy may still target shared memory when the block exits

  const int64_t row0 = m0 + wm * WM, col0 = n0 + wn * WN;
  if (p.out_bf16) {
    store_tile<__nv_bfloat16, __nv_bfloat162>(p, acc, row0, col0);
  } else {
    store_tile<__half, __half2>(p, acc, row0, col0);
  }
}

}  // namespace mma_gemm

// Launch on `stream`. Requires M, N, K > 0, K % 16 == 0, N % 8 == 0, 16-byte aligned a / w rows and
// base pointers, an even output row stride (checked by the launcher).
inline void launch_w8a8_gemm_mma(const W8A8GemmParams& p, cudaStream_t stream) {
  using namespace mma_gemm;
  const int64_t tiles = ((p.m + BM - 1) / BM) * ((p.n + BN - 1) / BN);
  if (tiles > 0x7fffffff) throw std::invalid_argument("w8a8_gemm_mma: too many tiles");
  allow_dynamic_shared_memory(w8a8_gemm_mma_kernel, SMEM_BYTES);  // once per (kernel, device)
  w8a8_gemm_mma_kernel<<<static_cast<unsigned>(tiles), THREADS, SMEM_BYTES, stream>>>(p);
  TD_CHECK_LAUNCH();
}

}  // namespace td
