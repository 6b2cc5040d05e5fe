// Per-token INT8 quantization of activations for W8A8 GEMMs (ARCHITECTURE §4.4):
//   s[m] = amax_K(|x[m]|) / 127, x_i8 = sat(rne(x * (127 / amax))).
// One CTA per row; a row of up to kRowThreads * VPT * VEC elements stays in registers between the
// amax and the quantization, so it is read from HBM once.
#pragma once
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/common/vec.cuh"
#include "turbodiffusion/quant/heuristics.h"
#include "turbodiffusion/quant/params.h"

namespace td {

template <int THREADS>
__device__ float block_max(float m, float* red) {
  m = warp_max(m);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  m = red[0];
#pragma unroll
  for (int w = 1; w < THREADS / 32; ++w) m = fmaxf(m, red[w]);
  return m;
}

// VEC = 8 for 16-byte aligned rows, 1 otherwise. Rows longer than the register cache
// (kRowThreads * VPT * VEC) take a second pass through L1/L2.
template <typename T, int VEC, int VPT>
__global__ void __launch_bounds__(quant::kRowThreads) quantize_per_token_int8_kernel(QuantRowsParams p) {
  constexpr int THREADS = quant::kRowThreads, CHUNK = THREADS * VPT;  // vectors per pass
  __shared__ float red[THREADS / 32];
  const int64_t row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.row_stride;
  const int nvec = p.k / VEC;
  Vec<T, VEC> cache[VPT];
  float m = 0.f;
  for (int base = 0; base < nvec; base += CHUNK) {
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int idx = base + i * THREADS + threadIdx.x;
      if (idx < nvec) cache[i].load(x + int64_t(idx) * VEC);
      else cache[i].zero();
    }
#pragma unroll
    for (int i = 0; i < VPT; ++i)
#pragma unroll
      for (int j = 0; j < VEC; ++j) m = fmaxf(m, fabsf(cache[i].get(j)));
  }
  const float amax = block_max<THREADS>(m, red);
  const float inv = inv_scale(amax, 127.f);
  if (threadIdx.x == 0) p.scale[row] = __fdiv_rn(amax, 127.f);
  int8_t* out = p.x_int8 + row * p.k;
  const bool cached = nvec <= CHUNK;
  for (int base = 0; base < nvec; base += CHUNK) {
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int idx = base + i * THREADS + threadIdx.x;
      if (idx >= nvec) continue;
      if (!cached) cache[i].load(x + int64_t(idx) * VEC);
      if constexpr (VEC == 8) {
        uint32_t w[2] = {0u, 0u};
#pragma unroll
        for (int j = 0; j < 8; ++j) w[j / 4] |= uint32_t(uint8_t(quant_int8(cache[i].get(j), inv))) << (8 * (j % 4));
        *reinterpret_cast<uint2*>(out + int64_t(idx) * 8) = make_uint2(w[0], w[1]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) out[int64_t(idx) * VEC + j] = quant_int8(cache[i].get(j), inv);
      }
    }
  }
}

template <typename T>
void launch_quantize_per_token_int8(const QuantRowsParams& p, bool aligned16, cudaStream_t stream) {
  if (p.rows == 0) return;
  const dim3 grid(static_cast<unsigned>(p.rows)), block(quant::kRowThreads);
  if (!aligned16) {
    quantize_per_token_int8_kernel<T, 1, 16><<<grid, block, 0, stream>>>(p);
  } else {
    // Smallest register cache that holds the row: fewer idle registers, more CTAs per SM. 10 vectors
    // covers Wan-1.3B's FFN width (8,960): bf16 at 16 vectors takes 153 registers (3 CTAs per SM,
    // 0.76x of copy bandwidth on the H100), at 10 vectors 96 (5 CTAs, 1.01x).
    const int64_t nvec = p.k / 8;
    if (nvec <= quant::kRowThreads * 2) quantize_per_token_int8_kernel<T, 8, 2><<<grid, block, 0, stream>>>(p);
    else if (nvec <= quant::kRowThreads * 4) quantize_per_token_int8_kernel<T, 8, 4><<<grid, block, 0, stream>>>(p);
    else if (nvec <= quant::kRowThreads * 8) quantize_per_token_int8_kernel<T, 8, 8><<<grid, block, 0, stream>>>(p);
    else if (nvec <= quant::kRowThreads * 10) quantize_per_token_int8_kernel<T, 8, 10><<<grid, block, 0, stream>>>(p);
    else quantize_per_token_int8_kernel<T, 8, 16><<<grid, block, 0, stream>>>(p);
  }
  TD_CHECK_LAUNCH();
}

}  // namespace td
