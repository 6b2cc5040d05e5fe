// Parameter struct of the attention kernels: filled once by the launcher (csrc/ops/attention.cu),
// read by device code. Offsets and strides are 64-bit: B*H*N*D passes 2^31 at Wan-14B-720p from
// batch 6 on.
#pragma once
#include <cuda_fp16.h>
#include <vector_types.h>

#include <cstdint>

namespace td {

// Quantized attention (ARCHITECTURE §4.1) on the outputs of quantize_qk_int8 / quantize_v_fp8.
struct AttnInt8Fp8Params {
  const void* q_orig;       // unquantized q (bf16/fp16 like out), [B, H, Nq, D] through strides: for the LSE
  const int8_t* q;          // [B, H, Nq, D] seen through strides (layout NHD or HND), D contiguous
  const int8_t* k;          // [B, H, Nk, D] likewise (smoothed: k - mean_N k)
  const uint8_t* v;         // [B*H, D, v_n_pad] E4M3 codes, tokens permuted per 16 (reference.quant.V_TOKEN_PERM)
  const float* q_scale;     // [B*H, q_blocks], sm_scale * log2(e) folded in
  const float* k_scale;     // [B*H, k_blocks]
  const float* k_mean;      // [B*H, D]
  const float* v_scale;     // [B*H, D]
  void* out;                // bf16/fp16, [B, H, Nq, D] through strides
  float* lse;               // [B*H, Nq], natural log
  int64_t q_stride_b, q_stride_h, q_stride_n;
  int64_t qo_stride_b, qo_stride_h, qo_stride_n;
  int64_t k_stride_b, k_stride_h, k_stride_n;
  int64_t o_stride_b, o_stride_h, o_stride_n;
  int64_t v_n_pad;          // tokens per V row (a multiple of the KV tile, >= nk)
  int64_t nq, nk;
  int heads;
  int q_blocks, k_blocks;   // scales per slice: ceil(nq / kBlkQ), ceil(nk / kBlkK)
  float lse_scale;          // fp32(sm_scale * log2 e): the LSE correction is lse_scale * (q_orig . k_mean)
  bool out_bf16;            // q_orig and output element type: bf16, else fp16
  // Block-sparse variant only (ARCHITECTURE §4.2-4.3): the key blocks each query block attends to, and
  // optionally SLA's folded linear branch added in the epilogue.
  const int32_t* lut;       // [B*H, sparse_q_blocks, lut_width] key-block indices
  const int32_t* count;     // [B*H, sparse_q_blocks] entries of each LUT row to use
  const uint4* lin_frag;    // sla_linear_state's [B*H, D + 8, D] fp16 in the kernel's layout (mma.sync:
                            // sla_detail::LinFragments, sm90: sla_detail::LinWgmma), or nullptr
  const float* lin_bias;    // [D] proj_l bias (with lin)
  int lut_width, sparse_q_blocks;
  int blkq, blkk;           // multiples of the CTA's query rows and of the KV tile
};

}  // namespace td
