// 16-byte vectors of 16-bit floats and their conversions to float32 and to 8-bit codes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <cstring>

namespace td {

__device__ __forceinline__ float fast_exp2(float x) {  // ex2.approx(-inf) = +0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }

// A pair of 16-bit floats -> two floats (exact).
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 x) { return __bfloat1622float2(x); }
__device__ __forceinline__ float2 to_float2(__half2 x) { return __half22float2(x); }

// Two floats -> a pair of 16-bit floats (round to nearest even), `a` in the low half.
template <typename T2>
__device__ __forceinline__ T2 from_float2(float a, float b);
template <>
__device__ __forceinline__ __nv_bfloat162 from_float2<__nv_bfloat162>(float a, float b) {
  return __floats2bfloat162_rn(a, b);
}
template <>
__device__ __forceinline__ __half2 from_float2<__half2>(float a, float b) { return __floats2half2_rn(a, b); }
// The two values rounded to bf16 (else fp16), as the 32-bit word that holds them (a in the low half).
__device__ __forceinline__ uint32_t pack_half2(float a, float b, bool bf16) {
  uint32_t w;
  if (bf16) {
    const __nv_bfloat162 x = from_float2<__nv_bfloat162>(a, b);
    memcpy(&w, &x, 4);
  } else {
    const __half2 x = from_float2<__half2>(a, b);
    memcpy(&w, &x, 4);
  }
  return w;
}

// N 16-bit elements loaded/stored as one access (N = 8: 16 bytes; N = 1: scalar path for
// unaligned rows).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
  __device__ __forceinline__ void load(const T* p) { *this = *reinterpret_cast<const Vec*>(p); }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = T(0.f);
  }
  __device__ __forceinline__ float get(int i) const { return to_float(v[i]); }
};

// Symmetric INT8: round half to even (cvt.rni) of one IEEE float32 multiply (the reference does
// the same, so kernel and reference agree bit for bit). No clamp is needed: |x| <= amax and
// inv = 127 / amax give |x * inv| <= 127 (1 + 2^-22), which rounds to at most 127.
__device__ __forceinline__ int8_t quant_int8(float x, float inv) {
  return static_cast<int8_t>(__float2int_rn(__fmul_rn(x, inv)));
}

// Two FP8 E4M3 codes of x * inv and y * inv (IEEE products), x in the low byte: round-to-nearest-even
// and saturation to +-448 (cvt.rn.satfinite.e4m3x2.f32 on sm_89+, an exact software conversion elsewhere).
__device__ __forceinline__ uint32_t quant_fp8_e4m3x2(float x, float y, float inv) {
  return __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(x, inv), __fmul_rn(y, inv)), __NV_SATFINITE, __NV_E4M3);
}

// 1 / s for a quantizer with s = amax / qmax: inv = qmax / amax (IEEE), 0 for an all-zero group
// and capped at FLT_MAX so that 0 * inv stays 0 (amax < 3.7e-37, only reachable by bf16, then
// quantizes to 0: documented in docs/quantization.md).
__device__ __forceinline__ float inv_scale(float amax, float qmax) {
  return amax > 0.f ? fminf(__fdiv_rn(qmax, amax), 3.402823466e38f) : 0.f;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Nonnegative floats order like their bit patterns, so amax can use the integer atomicMax.
__device__ __forceinline__ void atomic_max_nonneg(float* addr, float x) {
  atomicMax(reinterpret_cast<unsigned int*>(addr), __float_as_uint(x));
}

}  // namespace td
