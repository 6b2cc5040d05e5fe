// Issue rates of the attention softmax's instructions on this GPU, in operations per clock per SM
// (2 CTAs x 1024 threads per SM, 8 independent chains per thread, clock64 per CTA):
//   nvcc -arch=sm_90a -O3 -o /tmp/rates scripts/sm_pipe_rates.cu && /tmp/rates
// H100 80GB HBM3, 2026-11-26: I2FP 64, ex2.approx 16 (f16x2 / bf16x2: 8 pairs), cvt e4m3x2 32 (pairs),
// add.s32 64, max.s32 32, max.f32 64, add/fma.f32 122-128, cvt f16x2.f32 63. docs/attention.md uses them.
#include <cstdio>
#include <cuda_runtime.h>
#define ITERS 4096
template <int OP>
__global__ void bench(float* out, long long* cyc, int seed) {
  float f[8]; int i[8]; unsigned short h[8];
  for (int j = 0; j < 8; ++j) { f[j] = seed * 0.001f + j; i[j] = seed + j; h[j] = 0; }
  __syncthreads();
  long long t0 = clock64();
  for (int it = 0; it < ITERS; ++it) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (OP == 0) asm volatile("{.reg .f32 t; cvt.rn.f32.s32 t, %0; mov.b32 %0, t;}" : "+r"(i[j]));
      if (OP == 1) asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+f"(f[j]));
      if (OP == 2) asm volatile("{.reg .b16 t; cvt.rn.satfinite.e4m3x2.f32 t, %0, %1; mov.b32 %0, {t, t};}" : "+f"(f[j]) : "f"(f[(j+1)%8]));
      if (OP == 3) asm volatile("add.s32 %0, %0, %1;" : "+r"(i[j]) : "r"(i[(j+1)%8]));
      if (OP == 4) asm volatile("max.s32 %0, %0, %1;" : "+r"(i[j]) : "r"(i[(j+1)%8]));
      if (OP == 5) asm volatile("max.f32 %0, %0, %1;" : "+f"(f[j]) : "f"(f[(j+1)%8]));
      if (OP == 6) asm volatile("add.f32 %0, %0, 0f3F800000;" : "+f"(f[j]));
      if (OP == 7) asm volatile("fma.rn.f32 %0, %0, 0f3F800001, 0f3F800000;" : "+f"(f[j]));
      if (OP == 8) asm volatile("{.reg .f32 t; cvt.rn.f32.s32 t, %0; fma.rn.f32 t, t, 0f3F800001, 0f3F800000; mov.b32 %0, t;}" : "+r"(i[j]));
      if (OP == 9) asm volatile("{.reg .f32 t; add.s32 %0, %0, 1262485504; mov.b32 t, %0; sub.f32 t, t, 0f4B400000; mov.b32 %0, t;}" : "+r"(i[j]));
      if (OP == 11) asm volatile("ex2.approx.f16x2 %0, %0;" : "+r"(i[j]));
      if (OP == 12) asm volatile("{.reg .b32 t; cvt.rn.f16x2.f32 t, %0, %1; mov.b32 %0, t;}" : "+f"(f[j]) : "f"(f[(j+1)%8]));
      if (OP == 13) asm volatile("{.reg .b16 t; cvt.rn.satfinite.e4m3x2.f16x2 t, %0; mov.b32 %0, {t, t};}" : "+r"(i[j]));
      if (OP == 14) asm volatile("ex2.approx.ftz.bf16x2 %0, %0;" : "+r"(i[j]));
      if (OP == 10) asm volatile("max.s32 %0, %0, %1;" : "+r"(i[j]) : "r"(i[(j+3)%8]));
    }
  }
  long long t1 = clock64();
  float s = 0; for (int j = 0; j < 8; ++j) s += f[j] + i[j] + h[j];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
  if (threadIdx.x == 0) cyc[blockIdx.x] = t1 - t0;
}
template <int OP> void run(const char* name, int sms) {
  float* out; long long* cyc; int blocks = sms * 2, threads = 1024;
  cudaMalloc(&out, blocks * threads * 4); cudaMalloc(&cyc, blocks * 8);
  bench<OP><<<blocks, threads>>>(out, cyc, 1); cudaDeviceSynchronize();
  bench<OP><<<blocks, threads>>>(out, cyc, 2); cudaDeviceSynchronize();
  long long h[1024]; cudaMemcpy(h, cyc, blocks * 8, cudaMemcpyDeviceToHost);
  double mx = 0; for (int b = 0; b < blocks; ++b) mx = h[b] > mx ? h[b] : mx;
  // two blocks per SM run together: 2048 threads x ITERS x 8 ops over mx cycles
  printf("%-34s %7.1f per clk per SM\n", name, 2048.0 * ITERS * 8 / mx);
  cudaFree(out); cudaFree(cyc);
}
int main() {
  int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  run<0>("cvt.rn.f32.s32 (I2FP)", sms); run<1>("ex2.approx.ftz (MUFU)", sms);
  run<2>("cvt e4m3x2 (F2FP)", sms); run<3>("add.s32", sms); run<4>("max.s32", sms);
  run<5>("max.f32", sms); run<6>("add.f32", sms); run<7>("fma.f32", sms);
  run<8>("I2FP + FFMA (pairs)", sms); run<9>("bias add + FADD (pairs)", sms); run<10>("max.s32 (j+3)", sms); run<11>("ex2.approx.f16x2", sms); run<12>("cvt.rn.f16x2.f32", sms); run<13>("cvt e4m3x2.f16x2", sms); run<14>("ex2.approx.ftz.bf16x2", sms);
  return 0;
}
