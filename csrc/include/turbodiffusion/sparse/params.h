// Parameter structs of the SLA kernels (ARCHITECTURE §4.3): the block map and the linear branch.
// Filled once by the launchers (csrc/ops/sla.cu). Offsets and strides are 64-bit.
#pragma once
#include <cstdint>

namespace td {

// Strided [B, H, N, D] view of a bf16/fp16 attention tensor (layout NHD or HND), D contiguous.
struct AttnTensorView {
  const void* ptr;
  int64_t stride_b, stride_h, stride_n;
  int64_t n;
};

// Block map: pooled sums -> k mean -> scores and per-row top-k (sla_block_map.cuh).
struct SlaBlockMapParams {
  AttnTensorView q, k;
  int heads;
  int blkq, blkk;           // pooling block sizes (any positive size)
  int mq, mk;               // ceil(nq / blkq), ceil(nk / blkk)
  int kept;                 // key blocks kept per query block: min(mk, int(topk * mk))
  float* q_sums;            // scratch [B*H, mq, D]: per-block means of q (fp32)
  float* k_sums;            // scratch [B*H, mk, D]: per-block sums of k, then centred block means
  float* k_mean;            // output [B*H, D]: mean_N k (fp32)
  float* scores;            // scratch [slices_per_pass, mq, mk]: the block scores (fp32)
  int slices_per_pass;      // (b, h) slices scored, then top-k'd, per pass (the scratch's bound)
  int32_t* lut;             // [B*H, mq, kept], ascending
  int32_t* count;           // [B*H, mq]
  bool bf16;                // element type of q and k: bf16, else fp16
};

// Linear branch: H = phi(k)^T v and z = sum phi(k) per split of N (partials), then folded with proj_l.
struct SlaLinearParams {
  AttnTensorView k, v;
  int heads;
  int slices;               // B*H
  int splits;               // chunks of N per (b, h)
  int tiles_per_split;      // 32-token tiles per chunk
  float* partial;           // scratch [B*H, splits, D, D + 8]: columns < D: H, column D: z; then
                            // [B*H, splits, D]: each chunk's amax |v| per channel
  const float* proj_weight; // [D, D] fp32 (nn.Linear weight: [out, in])
  uint16_t* lin;            // [B*H, D + 8, D] fp16: rows c < D: (H W^T)[:, c] / nk, row D: z / nk, rest 0
  float* v_amax;            // [B*H, D]: amax_N |v| per channel (quantize_v_fp8 takes it)
  float* k_sums;            // nullptr, or [B*H, mk, D]: fp32 sums of k over each key block (the block map's)
  int key_block_tiles;      // tiles per key block (blkk / kLinTile; each chunk starts on a block)
  int mk;                   // key blocks: ceil(n / blkk)
  bool bf16;                // element type of k and v
};

}  // namespace td
