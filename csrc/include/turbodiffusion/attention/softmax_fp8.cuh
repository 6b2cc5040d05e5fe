// Numerics shared by the quantized attention kernels (mma.sync and sm90 wgmma): the FP8 offset of
// P, exp2, E4M3 packing, and the epilogue that turns a warp's fp32 O, m, l into the output rows and
// the LSE. Both kernels hold O in the same per-warp layout (mma.sync m16n8 C fragments, which is
// also what a wgmma accumulator gives each warp of a warpgroup): lane (g, t) = (lane / 4, lane % 4)
// owns rows g and g+8 of the warp's 16 and, per n8 block n, channels 8n + 2t, 8n + 2t + 1.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "turbodiffusion/attention/params.h"
#include "turbodiffusion/common/vec.cuh"
#include "turbodiffusion/sparse/lut_tiles.cuh"

namespace td {
namespace attn {

// log2(448): the FP8 offset. P = exp2(s - (m - log2 448)) lies in (0, 448], E4M3's finite range,
// so P converts to FP8 without a per-row scale; the factor 448 cancels in O / l.
constexpr float kLog2Fp8Max = 8.807354922057604f;
constexpr float kLn2 = 0.6931471805599453f;

// Four fp32 -> four E4M3 bytes (round to nearest even, saturating to +-448), `a` in the low byte.
// cvt...e4m3x2 puts its first source operand in the upper byte.
__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint16_t lo, hi;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(lo) : "f"(b), "f"(a));
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(hi) : "f"(d), "f"(c));
  return uint32_t(lo) | (uint32_t(hi) << 16);
#else
  __trap();
  return 0;
#endif
}

// int32 -> float32 (exact: a Q K^T dot product of INT8 codes has |x| <= 128 * 127^2 < 2^24). On sm_90
// this is one I2FP, which issues at 64 per clock per SM like an integer add (measured on the H100,
// scripts/sm_pipe_rates.cu: the add-and-subtract bias trick costs the same ALU time plus a float add).
__device__ __forceinline__ float int_to_float_exact(int32_t x) { return __int2float_rn(x); }

// Online softmax of one KV tile of NB n8 blocks (NB * 8 keys: TileKeys below) held as int32 Q K^T
// accumulators in the m16n8 C layout, in the log2 domain (sm_scale log2 e is folded into q's scale),
// with sc[q] = q scale x the K scale of 16 keys (n8 blocks 2q, 2q+1):
//   keys >= nk masked;  m' = max(m, max fl(acc * sc));  alpha = exp2(m - m');  m_off = m' - log2 448
//   P = exp2(fl(acc * sc - m_off)) in (0, 448]  (one rounding: an FMA);  l = l * alpha + sum(fp32 P)
// (l is the lane's partial row sum). Per score that is an integer max, the exact int -> float, one
// FMA, the exp2 and the sum: the row maxima come from the integer maxima of each 16-key group (sc >
// 0 and rounding is monotonic, so max fl(acc sc) = fl(max(acc) sc)). P is packed to E4M3 as the A
// fragments of NB / 4 k32 steps: V's tokens are stored permuted per 16 ({0,1,8,9,2,3,10,11,...}), so
// A's k-indices 4t..4t+3 of a 16-group are the tokens {2t, 2t+1, 8+2t, 9+2t} this lane already holds
// in n8 blocks 2q and 2q+1: no shuffle.
// Two phases, so that a kernel can run the first while its previous tile's P V is still in flight and
// take that P V (with the previous alpha) before the second, which overwrites its P registers:
//   softmax_tile_max: masks keys >= nk (acc is overwritten there), the tile's new row maxima mn;
//   softmax_tile_exp: alpha and m_off from m and mn, then P, l, E4M3 packing.
// kSumL off: l is left alone; the kernel adds the row sums of the E4M3 P itself (the sm90 kernel's P V
// wgmma, Sm90AttnConfig::kVRows: l = l * alpha + sum(E4M3 P) instead of sum(fp32 P)).
// kPartial: the tile reaches past nk (only the last tile of a row: the mask code is compiled only
// into that variant; in the others it cost a compare and a select per score).
//
// The keys of a tile's two halves (n8 blocks [0, NB / 2) and [NB / 2, NB)) start at lo and hi: hi = lo + 4 NB
// (contiguous keys) except in the sm90 kernel's sparse tiles, which pair two 64-key tiles of the walk
// (sla_detail::PairTiles; hi >= nk: an absent upper half, all masked).
struct TileKeys {
  int64_t lo, hi;
  template <int NB>  // NB * 8 consecutive keys from key0
  __device__ __forceinline__ static TileKeys contiguous(int64_t key0) { return {key0, key0 + 4 * NB}; }
  template <int NB>
  __device__ __forceinline__ int64_t key(int j) const { return j < NB / 2 ? lo + 8 * j : hi + 8 * (j - NB / 2); }
  template <int NB>
  __device__ __forceinline__ bool partial(int64_t nk) const { return (lo > hi ? lo : hi) + 4 * NB > nk; }
};

template <int NB, bool kPartial, typename Scales>
__device__ __forceinline__ void softmax_tile_max(int32_t (&acc)[NB][4], const Scales& sc, TileKeys keys,
                                                 int64_t nk, const float (&m)[2], float (&mn)[2]) {
  constexpr int32_t kMasked = INT32_MIN;  // below every dot product of INT8 codes
  const int t = threadIdx.x % 4;
  if constexpr (kPartial) {
#pragma unroll
    for (int j = 0; j < NB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (keys.key<NB>(j) + 2 * t + (e & 1) >= nk) acc[j][e] = kMasked;
  }
  float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int q = 0; q < NB / 2; ++q)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int32_t mx = max(max(acc[2 * q][2 * r], acc[2 * q][2 * r + 1]),
                             max(acc[2 * q + 1][2 * r], acc[2 * q + 1][2 * r + 1]));
      const float x = __fmul_rn(int_to_float_exact(mx), sc[q]);
      tmax[r] = fmaxf(tmax[r], (kPartial && mx == kMasked) ? -INFINITY : x);
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 1));
    tmax[r] = fmaxf(tmax[r], __shfl_xor_sync(0xffffffffu, tmax[r], 2));
    mn[r] = fmaxf(m[r], tmax[r]);  // finite: every tile holds at least one key < nk
  }
}

template <int NB, bool kPartial, bool kSumL, typename Scales>
__device__ __forceinline__ void softmax_tile_exp(const int32_t (&acc)[NB][4], const Scales& sc,
                                                 const float (&mn)[2], float (&m)[2], float (&alpha)[2],
                                                 float (&l)[2], uint32_t (&pa)[NB / 4][4]) {
  constexpr int32_t kMasked = INT32_MIN;
  float moff[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    alpha[r] = fast_exp2(__fsub_rn(m[r], mn[r]));  // first tile: exp2(-inf) = 0
    moff[r] = __fsub_rn(mn[r], kLog2Fp8Max);
    m[r] = mn[r];
  }
  float s[NB][4];
  float psum[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < NB; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = __fmaf_rn(int_to_float_exact(acc[j][e]), sc[j / 2], -moff[e >> 1]);
      if constexpr (kPartial) x = acc[j][e] == kMasked ? -INFINITY : x;
      s[j][e] = fast_exp2(x);
      if constexpr (kSumL) psum[e >> 1] += s[j][e];
    }
  if constexpr (kSumL) {
    l[0] = __fmaf_rn(l[0], alpha[0], psum[0]);
    l[1] = __fmaf_rn(l[1], alpha[1], psum[1]);
  }
#pragma unroll
  for (int ks = 0; ks < NB / 4; ++ks) {
    const int j = 4 * ks;
    pa[ks][0] = pack_e4m3x4(s[j][0], s[j][1], s[j + 1][0], s[j + 1][1]);
    pa[ks][1] = pack_e4m3x4(s[j][2], s[j][3], s[j + 1][2], s[j + 1][3]);
    pa[ks][2] = pack_e4m3x4(s[j + 2][0], s[j + 2][1], s[j + 3][0], s[j + 3][1]);
    pa[ks][3] = pack_e4m3x4(s[j + 2][2], s[j + 2][3], s[j + 3][2], s[j + 3][3]);
  }
}

// Both phases of one tile, each in the variant chosen by whether the tile reaches past nk; `between`
// runs after the first, while alpha still holds the previous tile's factor (the sm90 kernel takes its
// previous P V there; the mma.sync kernel nothing).
template <int NB, bool kSumL = true, typename Scales, typename Between>
__device__ __forceinline__ void softmax_tile_to_fp8(int32_t (&acc)[NB][4], const Scales& sc, TileKeys keys,
                                                    int64_t nk, float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                    uint32_t (&pa)[NB / 4][4], Between between) {
  float mn[2];
  if (keys.partial<NB>(nk)) {
    softmax_tile_max<NB, true>(acc, sc, keys, nk, m, mn);
    between();
    softmax_tile_exp<NB, true, kSumL>(acc, sc, mn, m, alpha, l, pa);
  } else {
    softmax_tile_max<NB, false>(acc, sc, keys, nk, m, mn);
    between();
    softmax_tile_exp<NB, false, kSumL>(acc, sc, mn, m, alpha, l, pa);
  }
}

template <int NB, typename Scales>
__device__ __forceinline__ void softmax_tile_to_fp8(int32_t (&acc)[NB][4], const Scales& sc, TileKeys keys,
                                                    int64_t nk, float (&m)[2], float (&l)[2], float (&alpha)[2],
                                                    uint32_t (&pa)[NB / 4][4]) {
  softmax_tile_to_fp8<NB>(acc, sc, keys, nk, m, l, alpha, pa, [] {});
}

// A warp's 16 output rows (2 D bytes each: bf16 / fp16) staged in shared memory, then stored as 16-byte chunks,
// a row's chunks by consecutive lanes (whole 32-byte sectors; the fragment layout's own stores wrote 16 bytes
// to each of 8 rows per instruction: H100, sparse 14B-720p epilogue, ~6.9 us of each CTA's ~115 us). Chunk j
// of row r sits at chunk j ^ (r % 8) of its row: the fragment writes (lane (g, t): word t of chunk n of rows
// g, g + 8) and the chunk reads (eight lanes on one row) are both free of bank conflicts.
template <int D>
struct StagedRows {
  static constexpr int kRowBytes = 2 * D, kChunks = kRowBytes / 16, kRowsPerPass = 32 / kChunks;
  uint32_t base;
  __device__ __forceinline__ void put(int r, int n, int t, uint32_t pair) const {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(base + r * kRowBytes + 16 * (n ^ (r % 8)) + 4 * t), "r"(pair)
                 : "memory");
  }
  // out: the slice's row 0; rows >= nq are not stored.
  __device__ __forceinline__ void store(char* out, int64_t stride_n, int64_t row0, int64_t nq, int lane) const {
    __syncwarp();
#pragma unroll
    for (int pass = 0; pass < 16 / kRowsPerPass; ++pass) {
      const int r = pass * kRowsPerPass + lane / kChunks, j = lane % kChunks;
      uint4 v;
      asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                   : "r"(base + r * kRowBytes + 16 * (j ^ (r % 8)))
                   : "memory");
      if (row0 + r < nq) *reinterpret_cast<uint4*>(out + 2 * (row0 + r) * stride_n + 16 * j) = v;
    }
  }
};

// Pitch of unquantized q rows copied into shared memory for the epilogue (store_warp_rows' q_rows): 2 D bytes
// and 16 more, so that the rows g of a load_q_pairs read (lane (g, t): word 4 s + t + 4 hf of row g) start 4
// banks apart and the warp's 32 lanes hit 32 banks.
template <int D>
constexpr int kSmemQRowPitch = 2 * D + 16;

// Epilogue of one warp's 16 query rows starting at row0 of slice (b, h):
//   out = O / l * v_scale;  lse = ln2 * (log2 l + m - log2 448 + c * q.k_mean)
// with c = fp32(sm_scale log2 e) and the unquantized q (the quantization error of q . k_mean is
// constant per row: it cancels in the softmax, not in the LSE). m and l are per lane (rows g, g+8);
// l holds the lane's partial sum, added over the quad here. Rows >= nq are not written. kSparse: a
// row that kept no key block (l = 0) gets 0 and LSE -inf, and where lin_b (the B source of SLA's
// linear term: sla_detail::LinFragmentsB or sm90_attn::LinWgmmaB, whose MMAs every warp of the
// warpgroup runs) is active, SLA's projected linear branch is added (sla_detail::LinearTerm).
// kStaged (the sm90 kernel): `stage` (a shared-window address) holds 16 rows of 2 D bytes for each warp of the
// warpgroup (warp w % 4 at 32 w D bytes), through which the rows go out as whole 16-byte chunks (StagedRows);
// else each lane stores its 4-byte pairs. q_rows (kSmemQRows): the warp's 16 unquantized q rows, copied into
// shared memory at a pitch of kSmemQRowPitch bytes (rows past nq are not read); else q is read from global memory.
template <int D, bool kSparse = false, bool kStaged = false, bool kSmemQRows = false,
          typename LinB = sla_detail::LinFragmentsB<D>>
__device__ __forceinline__ void store_warp_rows(const AttnInt8Fp8Params& p, int64_t slice, int b, int h,
                                                int64_t row0, float (&o)[D / 8][4], const float (&m)[2],
                                                float (&l)[2], const LinB& lin_b = LinB{}, uint32_t stage = 0,
                                                const uint8_t* q_rows = nullptr) {
  constexpr int NO = D / 8;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  // q . k_mean for the LSE, and SLA's projected linear term of the warp's rows (sla_detail::LinearTerm),
  // from one read of the warp's unquantized q rows (sla_detail::load_q_pairs: the same sum either way).
  bool linear = false;
  sla_detail::LinearTerm<D> lin;
  if constexpr (kSparse) linear = lin_b.active();
  float qkm[2];
  const char* qo = static_cast<const char*>(p.q_orig) + 2 * (b * p.qo_stride_b + h * p.qo_stride_h);
  const int64_t r_lo = row0 + g, r_hi = row0 + g + 8;
  auto q_row = [&](int64_t r, int i) -> const void* {  // row r of the slice, the warp's i-th
    if (r >= p.nq) return nullptr;
    if constexpr (kSmemQRows) return q_rows + i * kSmemQRowPitch<D>;
    else return qo + 2 * r * p.qo_stride_n;
  };
  const void* q_lo = q_row(r_lo, g);
  const void* q_hi = q_row(r_hi, g + 8);
  if (linear) {
    if (p.out_bf16)
      lin.template load<true, kSmemQRows>(q_lo, q_hi, p, slice, lin_b, lane, qkm);
    else
      lin.template load<false, kSmemQRows>(q_lo, q_hi, p, slice, lin_b, lane, qkm);
  } else {
    uint32_t w[2][D / 16][2];  // (unused here)
    const float* km = p.k_mean + slice * D;
    if (p.out_bf16)
      sla_detail::load_q_pairs<D, __nv_bfloat16, kSmemQRows>(static_cast<const __nv_bfloat16*>(q_lo),
                                                             static_cast<const __nv_bfloat16*>(q_hi), km, t, w, qkm);
    else
      sla_detail::load_q_pairs<D, __half, kSmemQRows>(static_cast<const __half*>(q_lo), static_cast<const __half*>(q_hi),
                                                      km, t, w, qkm);
  }
  float inv_l[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    qkm[r] += __shfl_xor_sync(0xffffffffu, qkm[r], 1);
    qkm[r] += __shfl_xor_sync(0xffffffffu, qkm[r], 2);
    inv_l[r] = l[r] > 0.f ? 1.f / l[r] : 0.f;  // l = 0 only for a sparse row with no kept block: out 0
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = row0 + g + 8 * r;
    if (t == 0 && row < p.nq) {
      const float lse2 = __fadd_rn(__fadd_rn(log2f(l[r]), __fsub_rn(m[r], kLog2Fp8Max)), __fmul_rn(qkm[r], p.lse_scale));
      p.lse[slice * p.nq + row] = l[r] > 0.f ? __fmul_rn(lse2, kLn2) : -INFINITY;
    }
  }
  const float* vs = p.v_scale + slice * D;
  // out = O / l * v_scale, plus with the linear term (e . G) / den + b: O scaled by den first, e . G
  // accumulated into it by the tensor cores (every n8 block before any store), then one FMA with 1 / den.
  float scale[2];  // of O: 1 / l, times den with the linear term
#pragma unroll
  for (int r = 0; r < 2; ++r) scale[r] = linear ? inv_l[r] * lin.den[r] : inv_l[r];
  if (linear) {
#pragma unroll
    for (int n = 0; n < NO; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        o[n][e] = __fmul_rn(__fmul_rn(o[n][e], scale[e >> 1]), __ldg(vs + 8 * n + 2 * t + (e & 1)));
    }
    lin_b.accumulate(lin.a, o);
  }
  char* out = static_cast<char*>(p.out) + 2 * (b * p.o_stride_b + h * p.o_stride_h);
  // (The warp's part of the stage from threadIdx here: held from the call on, one more register cost the
  // sparse kernel a spill at 160.)
  const StagedRows<D> staged{stage + (threadIdx.x / 32) % 4 * 16 * StagedRows<D>::kRowBytes};
#pragma unroll
  for (int n = 0; n < NO; ++n) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t row = row0 + g + 8 * r;
      if (!kStaged && row >= p.nq) continue;  // (staged: rows past nq are written to the stage, not out)
      const int c = 8 * n + 2 * t;
      float x0, x1;
      if (linear) {
        x0 = __fmaf_rn(o[n][2 * r], lin.inv_den[r], __ldg(p.lin_bias + c));
        x1 = __fmaf_rn(o[n][2 * r + 1], lin.inv_den[r], __ldg(p.lin_bias + c + 1));
      } else {
        x0 = __fmul_rn(__fmul_rn(o[n][2 * r], scale[r]), __ldg(vs + c));
        x1 = __fmul_rn(__fmul_rn(o[n][2 * r + 1], scale[r]), __ldg(vs + c + 1));
      }
      const uint32_t pair = pack_half2(x0, x1, p.out_bf16);
      if (kStaged) staged.put(g + 8 * r, n, t, pair);
      else *reinterpret_cast<uint32_t*>(out + 2 * (row * p.o_stride_n + c)) = pair;
    }
  }
  if (kStaged) staged.store(out, p.o_stride_n, row0, p.nq, lane);
}

}  // namespace attn
}  // namespace td
