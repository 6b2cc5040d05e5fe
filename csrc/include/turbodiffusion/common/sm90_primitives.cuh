// Hopper (sm_90a) building blocks: mbarriers, TMA tile loads, warpgroup MMA (wgmma) and its
// shared-memory matrix descriptors, register reallocation. Device code only; everything here is an
// sm_90a instruction (the kernels that use it guard their bodies with TD_SM90A_ENABLED and trap
// elsewhere, so the same translation unit also compiles for sm_120a).
//
// wgmma facts used by the kernels (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply"):
//  * A warpgroup (4 consecutive warps, warp % 4 == 0 first) computes a 64 x N tile; warp w of the
//    group owns rows 16w..16w+15, and a lane's accumulator registers follow the mma.sync m16n8 C
//    layout per n8 block: d[j] = {row g, cols 8j+2t, 8j+2t+1}, {row g+8, same cols} (g = lane/4,
//    t = lane%4).
//  * 8-bit A from registers (k32): the mma.sync m16n8k32 A layout, 4 registers per lane.
//  * 8-bit operands in shared memory must be K-major (contiguous along the reduction dimension).
//    With a 128-byte swizzle, a K-major tile is rows of 128 bytes in 1024-byte groups of 8 rows
//    (stride byte offset 1024); each k32 step of 8-bit data advances the start address by 32 bytes.
//    64-byte rows use the 64-byte swizzle (8 rows = 512 bytes). TMA's SWIZZLE_128B / SWIZZLE_64B
//    write exactly these layouts when the tile base is 1024-byte aligned.
#pragma once
#include <cstdint>
#include <type_traits>

#include "turbodiffusion/common/sm80_primitives.cuh"  // smem_u32

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TD_SM90A_ENABLED 1
#endif

namespace td {
namespace sm90 {

// ---- mbarrier (shared-memory transaction barrier) ----
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
// Makes barrier initialisation visible to the async proxy (TMA) before any copy signals it.
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}
// Raises the transaction count of the current phase without arriving (the thread arrives later).
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// Blocks until the phase with parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(smem_u32(bar)),
      "r"(parity)
      : "memory");
}

// ---- TMA: a box of a tensor map into shared memory, completing `bytes` on `bar` ----
__device__ __forceinline__ void tma_load_3d(void* dst, const void* tmap, uint64_t* bar, int c0, int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];\n"
      ::"r"(smem_u32(dst)), "l"(tmap), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
__device__ __forceinline__ void tma_load_4d(void* dst, const void* tmap, uint64_t* bar, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], [%2];\n"
      ::"r"(smem_u32(dst)), "l"(tmap), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// Plain bulk copy global -> shared (no tensor map): `bytes` a multiple of 16, both addresses 16-byte
// aligned; completes on `bar` like a TMA load.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
               ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)) : "memory");
}
// Orders this thread's generic-proxy shared-memory writes before later async-proxy reads (wgmma, TMA).
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void prefetch_tmap(const void* tmap) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(tmap) : "memory");
}

// ---- named barriers (ids 1..15; 0 is __syncthreads): `threads` counts every participant ----
__device__ __forceinline__ void named_bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---- register reallocation between warpgroups (setmaxnreg; all warps of a warpgroup execute it) ----
template <int N>
__device__ __forceinline__ void regs_dealloc() {
#ifdef TD_SM90A_ENABLED
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void regs_alloc() {
#ifdef TD_SM90A_ENABLED
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// ---- wgmma ----
// Shared-memory matrix descriptor of a K-major tile (rows of 64 or 128 bytes, swizzled like TMA
// writes it): start address >> 4 in bits 0-13, leading byte offset (unused for swizzled K-major,
// 1 by convention) in 16-29, stride byte offset (8 rows) >> 4 in 32-45, swizzle mode in 62-63
// (1 = 128 B, 2 = 64 B).
template <int kRowBytes>
__device__ __forceinline__ uint64_t kmajor_desc(const void* smem) {
  static_assert(kRowBytes == 64 || kRowBytes == 128, "64- or 128-byte swizzled rows");
  constexpr uint64_t kSbo = (8 * kRowBytes) >> 4;
  constexpr uint64_t kMode = kRowBytes == 128 ? 1 : 2;
  return uint64_t((smem_u32(smem) & 0x3FFFF) >> 4) | (uint64_t(1) << 16) | (kSbo << 32) | (kMode << 62);
}
// Descriptor `desc` advanced by `bytes` along K (inside the swizzle atom: start address only).
__device__ __forceinline__ uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Keeps the compiler from moving accesses of an accumulator across the async MMA that writes it.
template <typename T, int R, int C>
__device__ __forceinline__ void fence_operands(T (&d)[R][C]) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < C; ++j) {
      if constexpr (std::is_floating_point_v<T>) asm volatile("" : "+f"(d[i][j])::"memory");
      else asm volatile("" : "+r"(d[i][j])::"memory");
    }
}

// Operand lists of the wgmma wrappers below: an asm statement needs one operand per accumulator register.
#define TD_WGMMA_ACC_ROW(c, d, i) c(d[i][0]), c(d[i][1]), c(d[i][2]), c(d[i][3])
#define TD_WGMMA_ACC1(c, d) TD_WGMMA_ACC_ROW(c, d, 0)
#define TD_WGMMA_ACC8(c, d)                                                                            \
  TD_WGMMA_ACC_ROW(c, d, 0), TD_WGMMA_ACC_ROW(c, d, 1), TD_WGMMA_ACC_ROW(c, d, 2), TD_WGMMA_ACC_ROW(c, d, 3), \
      TD_WGMMA_ACC_ROW(c, d, 4), TD_WGMMA_ACC_ROW(c, d, 5), TD_WGMMA_ACC_ROW(c, d, 6), TD_WGMMA_ACC_ROW(c, d, 7)
#define TD_WGMMA_ACC16(c, d)                                                                           \
  TD_WGMMA_ACC8(c, d), TD_WGMMA_ACC_ROW(c, d, 8), TD_WGMMA_ACC_ROW(c, d, 9), TD_WGMMA_ACC_ROW(c, d, 10),  \
      TD_WGMMA_ACC_ROW(c, d, 11), TD_WGMMA_ACC_ROW(c, d, 12), TD_WGMMA_ACC_ROW(c, d, 13),                 \
      TD_WGMMA_ACC_ROW(c, d, 14), TD_WGMMA_ACC_ROW(c, d, 15)
#define TD_WGMMA_ACC9(c, d) TD_WGMMA_ACC8(c, d), TD_WGMMA_ACC_ROW(c, d, 8)
#define TD_WGMMA_ACC17(c, d) TD_WGMMA_ACC16(c, d), TD_WGMMA_ACC_ROW(c, d, 16)
#define TD_WGMMA_REGS32 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define TD_WGMMA_REGS64 \
  TD_WGMMA_REGS32 ", " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define TD_WGMMA_REGS36 TD_WGMMA_REGS32 ", %32, %33, %34, %35"
#define TD_WGMMA_REGS68 TD_WGMMA_REGS64 ", %64, %65, %66, %67"
// Both forms of one wgmma: d = (kAccumulate ? d : 0) + A B, the scale-d predicate set from the last input.
// Without kAccumulate the accumulator is write-only ("=" constraints), so the compiler need not keep its old
// values alive. kind: the accumulator's constraint letter ("r" s32, "f" f32).
#define TD_WGMMA(ASM, ACC, kind, ...)                                                                  \
  do {                                                                                                 \
    if constexpr (kAccumulate) asm volatile(ASM : ACC("+" kind, d) : __VA_ARGS__, "r"(1));           \
    else asm volatile(ASM : ACC("=" kind, d) : __VA_ARGS__, "r"(0));                                 \
  } while (0)

// A(64x32 s8, smem desc) B(128x32 s8, smem desc, K-major), s32.
template <bool kAccumulate>
__device__ __forceinline__ void wgmma_m64n128k32_s8(int32_t (&d)[16][4], uint64_t desc_a, uint64_t desc_b) {
  TD_WGMMA("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
           "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {" TD_WGMMA_REGS64 "}, %64, %65, p;\n}\n",
           TD_WGMMA_ACC16, "r", "l"(desc_a), "l"(desc_b));
}

// A(64x32 e4m3, registers) B(Nx32 e4m3, smem desc, K-major), f32, N = 8 NB8: P V against V's D channels
// followed by 8 rows of ones (the row sums of P: Sm90AttnConfig::kVRows), N = D + 8 (72, 136).
// REGS / ACC: the accumulator's operands %0 .. %(4 NB8 - 1); AB: A's four registers and B's descriptor, the
// operands after them; P: the scale-d flag's operand.
#define TD_WGMMA_E4M3_RS(N, NB8, REGS, ACC, AB, P)                                                       \
  template <bool kAccumulate>                                                                          \
  __device__ __forceinline__ void wgmma_m64n##N##k32_e4m3_rs(float(&d)[NB8][4], const uint32_t(&a)[4],   \
                                                              uint64_t desc_b) {                       \
    TD_WGMMA("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                            \
             "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 {" REGS "}, " AB ", p, 1, 1;\n}\n", \
             ACC, "f", "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));                         \
  }
TD_WGMMA_E4M3_RS(72, 9, TD_WGMMA_REGS36, TD_WGMMA_ACC9, "{%36, %37, %38, %39}, %40", "%41")
TD_WGMMA_E4M3_RS(136, 17, TD_WGMMA_REGS68, TD_WGMMA_ACC17, "{%68, %69, %70, %71}, %72", "%73")
#undef TD_WGMMA_E4M3_RS
// d (N / 8 n8 blocks) = (kAccumulate ? d : 0) + A B for the P V shapes above.
template <bool kAccumulate, int NB8>
__device__ __forceinline__ void wgmma_e4m3_rs(float (&d)[NB8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  static_assert(NB8 == 9 || NB8 == 17, "P V: N = 72 or 136");
  if constexpr (NB8 == 9) wgmma_m64n72k32_e4m3_rs<kAccumulate>(d, a, desc_b);
  else wgmma_m64n136k32_e4m3_rs<kAccumulate>(d, a, desc_b);
}

// A(64x16 f16, registers: the mma.sync m16n8k16 A fragment per warp) B(Nx16 f16, smem desc, K-major), f32
// (SLA's linear term: N = 8, 64).
template <bool kAccumulate>
__device__ __forceinline__ void wgmma_m64n8k16_f16_rs(float (&d)[1][4], const uint32_t (&a)[4], uint64_t desc_b) {
  TD_WGMMA("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
           "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n",
           TD_WGMMA_ACC1, "f", "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}
template <bool kAccumulate>
__device__ __forceinline__ void wgmma_m64n64k16_f16_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b) {
  TD_WGMMA("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
           "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {" TD_WGMMA_REGS32
           "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n",
           TD_WGMMA_ACC8, "f", "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));
}
#undef TD_WGMMA
#undef TD_WGMMA_REGS68
#undef TD_WGMMA_REGS64
#undef TD_WGMMA_REGS36
#undef TD_WGMMA_REGS32
#undef TD_WGMMA_ACC17
#undef TD_WGMMA_ACC16
#undef TD_WGMMA_ACC9
#undef TD_WGMMA_ACC8
#undef TD_WGMMA_ACC1
#undef TD_WGMMA_ACC_ROW

}  // namespace sm90
}  // namespace td
