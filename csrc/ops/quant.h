// The Q/K quantizer's launcher in two steps, for the SLA launcher (csrc/ops/sla.cu:
// sla_block_map_quantize_qk), which checks every input before it launches anything and adds q's block means.
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <optional>
#include <string>

#include "turbodiffusion/quant/params.h"

namespace td {

// quantize_qk_int8's outputs (a given k_mean used as is, not copied), scratch and Params.
struct QuantizeQK {
  at::Tensor q_i8, q_scale, k_i8, k_scale, k_mean, workspace;
  QuantQKParams pq, pk;
  bool mean_given, bf16;
  int d;
};

// Checks the inputs (the op's messages), allocates, fills the Params.
QuantizeQK prepare_quantize_qk_int8(const at::Tensor& q, const at::Tensor& k, const std::string& layout, int64_t blk_q,
                                    int64_t blk_k, double q_scale_factor,
                                    const std::optional<at::Tensor>& k_mean_given);
void launch_quantize_qk_int8(const QuantizeQK& r, cudaStream_t stream);

// Whether the Q tiles can also give the SLA block map's q means for blocks of `blk` tokens (pq.block_means).
bool can_fuse_q_block_means(const at::Tensor& q, int64_t d, int64_t blk);

}  // namespace td
