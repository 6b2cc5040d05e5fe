// A tile of consecutive tokens of one slice of a [B, H, N, D] tensor, spread over a CTA: thread t
// owns channels [8 (t % VPR), +8) of rows t / VPR + i * STEP, i < VPT (VPR = D / 8 vectors per row).
// Every thread thus always sees the same 8 channels, which makes per-channel reductions (K's mean,
// V's amax) register-local until the end, and consecutive lanes cover a row with 16-byte loads.
//
// The tile is staged in shared memory with cp.async rather than held in registers: the quantizers
// read it twice (amax, then codes), and registers holding 32 KB per CTA would cap an SM at two
// CTAs, too few to overlap one CTA's arithmetic with another's loads. Each thread reads back only
// the vectors it copied itself, so waiting for its own copies is enough (no barrier).
#pragma once
#include "turbodiffusion/common/sm80_primitives.cuh"
#include "turbodiffusion/common/vec.cuh"
#include "turbodiffusion/quant/heuristics.h"
#include "turbodiffusion/quant/params.h"

namespace td {

template <typename T, int D, int THREADS, int VPT>
struct TokenTile {
  static constexpr int VPR = D / 8;
  static constexpr int STEP = THREADS / VPR;
  static constexpr int ROWS = STEP * VPT;
  static constexpr int WARPS = THREADS / 32;
  static constexpr int VECS = VPT;
  static constexpr int SMEM_BYTES = ROWS * D * sizeof(T);
  static_assert(D % 64 == 0 && THREADS % 32 == 0 && 32 % VPR == 0, "a warp covers whole rows");

  Vec<T, 8>* stage;  // [ROWS * VPR] vectors; thread t's vector i is stage[t + i * THREADS]
  int col, row0;

  __device__ explicit TokenTile(void* smem)
      : stage(static_cast<Vec<T, 8>*>(smem)), col(8 * (threadIdx.x % VPR)), row0(threadIdx.x / VPR) {}
  __device__ int64_t row(int tile, int i) const { return int64_t(tile) * ROWS + row0 + i * STEP; }

  // Issues every copy of the tile, then waits for this thread's own; rows >= n read as 0. Addresses
  // advance by a constant per vector (no per-vector 64-bit index arithmetic).
  __device__ void load(const T* base, const SliceView& view, int slice, int tile, int64_t n) {
    const T* src = base + view.slice_offset(slice) + row(tile, 0) * view.stride_n + col;
    const int64_t step = int64_t(STEP) * view.stride_n;
    const int64_t valid_rows = n - row(tile, 0);  // vector i is valid iff i * STEP < valid_rows
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const bool valid = int64_t(i) * STEP < valid_rows;
      cp_async_16(&stage[threadIdx.x + i * THREADS], valid ? src + i * step : base, valid);
    }
    cp_async_wait_all();
  }
  __device__ Vec<T, 8> vec(int i) const { return stage[threadIdx.x + i * THREADS]; }
};

// Reduces 8 per-thread channel partials over the CTA (threads sharing channels) and combines the
// result into global memory with `atomic`; acc is consumed. `red` is WARPS * D floats of shared memory.
template <int D, int THREADS, bool MAX, typename Atomic>
__device__ void reduce_channels_to_global(float (&acc)[8], float* red, Atomic atomic) {
  constexpr int VPR = D / 8, WARPS = THREADS / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = VPR; o < 32; o <<= 1) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float other = __shfl_xor_sync(0xffffffffu, acc[j], o);
      acc[j] = MAX ? fmaxf(acc[j], other) : acc[j] + other;
    }
  }
  if (lane < VPR) {
#pragma unroll
    for (int j = 0; j < 8; ++j) red[warp * D + 8 * lane + j] = acc[j];
  }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += THREADS) {
    float v = red[c];
#pragma unroll
    for (int w = 1; w < WARPS; ++w) v = MAX ? fmaxf(v, red[w * D + c]) : v + red[w * D + c];
    atomic(c, v);
  }
  __syncthreads();
}

// After the slice barrier: combines the kReplicas partial copies of a slice's channel reduction
// (`ws` points at [kReplicas, D]) into chan[D] in shared memory (sum or max). Reads bypass L1.
template <int D, bool MAX>
__device__ void combine_replicas(const float* ws, float* chan) {
  if (threadIdx.x < D) {
    float a = __ldcg(&ws[threadIdx.x]);
#pragma unroll
    for (int r = 1; r < quant::kReplicas; ++r) {
      const float b = __ldcg(&ws[r * D + threadIdx.x]);
      a = MAX ? fmaxf(a, b) : a + b;
    }
    chan[threadIdx.x] = a;
  }
  __syncthreads();
}

}  // namespace td
