// Parameter structs of the quantization kernels: filled once by the launcher (csrc/ops/quant.cu),
// read by device code. All offsets and strides are 64-bit (B*H*N*D passes 2^31 at Wan-14B-720p
// from batch 6 on).
#pragma once
#include <cstdint>

namespace td {

// A [B, H, N, D] tensor seen through element strides (layout NHD or HND alike), D contiguous.
struct SliceView {
  int64_t stride_b, stride_h, stride_n;
  int heads;
  // Offset of token 0 of a slice; token n is n * stride_n further.
  __host__ __device__ int64_t slice_offset(int slice) const {
    return (slice / heads) * stride_b + (slice % heads) * stride_h;
  }
};

// quantize_qk_int8, one tensor (q or k) at a time.
struct QuantQKParams {
  const void* x;          // bf16/fp16 input
  SliceView in;
  int8_t* x_int8;         // output, same shape, contiguous in the input's layout
  SliceView out;
  float* scale;           // [B*H, num_blocks]
  float* mean;            // k only: [B*H, D] the mean of k: given, or written by quantize_k_mean_kernel
  float* workspace;       // k's mean kernel: [B*H, kReplicas, D] zero-initialised running sums
  unsigned* arrived;      // k's mean kernel: [B*H] zero-initialised counts of tiles summed
  int slices;             // B*H
  int64_t n;              // tokens
  int blk;                // tokens per scale (a power of two)
  int log2_blk;
  int num_blocks;         // ceil(n / blk)
  float scale_factor;     // multiplied into the stored scale (q: sm_scale * log2 e, say)
  // q only, optional (sage_sla): the SLA block map's pooled q, [B*H, num_mean_blocks, D] float32 means of
  // every mean_blk tokens (a power of two that q_block_means_fusable accepts), from the staged tiles.
  float* block_means;
  int mean_blk;
  int num_mean_blocks;
};

// quantize_v_fp8.
struct QuantVParams {
  const void* v;
  SliceView in;
  uint8_t* v_fp8;         // [B*H, D, n_pad] E4M3 codes
  float* scale;           // [B*H, D]
  const float* amax;      // given amax_N |v| [B*H, D] (single pass), or nullptr (computed: two phases)
  float* workspace;       // two phases: [B*H, kReplicas, D] zero-initialised running amax
  unsigned* arrived;      // two phases: [B*H] zero-initialised barrier counters
  int slices;
  int64_t n, n_pad;
};

// quantize_per_token_int8 on rows of a [M, K] matrix.
struct QuantRowsParams {
  const void* x;
  int64_t row_stride;     // elements
  int8_t* x_int8;         // [M, K] contiguous
  float* scale;           // [M]
  int64_t rows;
  int k;
};

}  // namespace td
