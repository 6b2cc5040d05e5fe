// Torch-facing launchers of the quantization kernels: check inputs, allocate outputs, fill the
// Params struct, dispatch. No kernel math here (csrc/include/turbodiffusion/quant/).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <tuple>

#include "ops/checks.h"
#include "ops/quant.h"
#include "turbodiffusion/common/dispatch.h"
#include "turbodiffusion/quant/quantize_per_token_int8.cuh"
#include "turbodiffusion/quant/quantize_qk_int8.cuh"
#include "turbodiffusion/quant/quantize_v_fp8.cuh"

namespace td {
namespace {

SliceView slice_view(const at::Tensor& t, const std::string& layout, int64_t heads) {
  // NHD is [B, N, H, D], HND is [B, H, N, D].
  return layout == "NHD" ? SliceView{t.stride(0), t.stride(2), t.stride(1), static_cast<int>(heads)}
                         : SliceView{t.stride(0), t.stride(1), t.stride(2), static_cast<int>(heads)};
}

bool is_valid_block(int64_t blk) { return blk == 16 || blk == 32 || blk == 64 || blk == 128; }

int num_sms(const at::Tensor& t) {
  return at::cuda::getDeviceProperties(t.device().index())->multiProcessorCount;
}

}  // namespace

bool can_fuse_q_block_means(const at::Tensor& q, int64_t d, int64_t blk) {
  bool ok = false;
  TD_DISPATCH_HALF(q.scalar_type() == at::kBFloat16, T, [&] {
    TD_DISPATCH_HEAD_DIM(d, D, [&] { ok = blk <= (int64_t(1) << 30) && q_block_means_fusable<T, D>(int(blk)); });
  });
  return ok;
}

QuantizeQK prepare_quantize_qk_int8(const at::Tensor& q, const at::Tensor& k, const std::string& layout, int64_t blk_q,
                                    int64_t blk_k, double q_scale_factor,
                                    const std::optional<at::Tensor>& k_mean_given) {
  check_layout(layout);
  const BHND sq = check_attention_tensor(q, "q", layout, q.device());
  const BHND sk = check_attention_tensor(k, "k", layout, q.device());
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type(), "k: expected dtype ", dtype_name(q.scalar_type()),
                   " (like q), got ", dtype_name(k.scalar_type()));
  TORCH_CHECK_VALUE(sk.b == sq.b && sk.h == sq.h && sk.d == sq.d, "k: expected batch, heads and head dim (", num(sq.b),
                    ", ", num(sq.h), ", ", num(sq.d), ") (like q), got (", num(sk.b), ", ", num(sk.h), ", ", num(sk.d), ")");
  TORCH_CHECK_VALUE(is_valid_block(blk_q), "blk_q: expected one of (16, 32, 64, 128), got ", num(blk_q));
  TORCH_CHECK_VALUE(is_valid_block(blk_k), "blk_k: expected one of (16, 32, 64, 128), got ", num(blk_k));
  TORCH_CHECK_VALUE(std::isfinite(q_scale_factor) && q_scale_factor > 0,
                    "q_scale_factor: expected a finite positive number, got ", num(q_scale_factor));
  check_vector_aligned(q, "q");
  check_vector_aligned(k, "k");
  if (k_mean_given) check_f32(*k_mean_given, "k_mean", {sk.b, sk.h, sk.d}, q.device());
  const c10::cuda::CUDAGuard guard(q.device());
  const auto f32 = q.options().dtype(at::kFloat);
  QuantizeQK r;
  r.q_i8 = at::empty(q.sizes(), q.options().dtype(at::kChar));
  r.k_i8 = at::empty(k.sizes(), k.options().dtype(at::kChar));
  r.q_scale = at::empty({sq.b, sq.h, (sq.n + blk_q - 1) / blk_q}, f32);
  r.k_scale = at::empty({sk.b, sk.h, (sk.n + blk_k - 1) / blk_k}, f32);
  // The mean of no tokens is NaN (0 / 0, like the reference), with no K tile to quantize.
  r.k_mean = k_mean_given ? *k_mean_given
             : sk.n == 0  ? at::full({sk.b, sk.h, sk.d}, std::numeric_limits<float>::quiet_NaN(), f32)
                          : at::empty({sk.b, sk.h, sk.d}, f32);
  // K's mean where it is not given: running channel sums (kReplicas copies per slice), then per slice the
  // count of tiles summed.
  const int64_t slices = sk.b * sk.h;
  if (!k_mean_given) r.workspace = at::zeros({slices * (quant::kReplicas * sk.d + 1)}, f32);
  r.mean_given = k_mean_given.has_value();
  r.bf16 = q.scalar_type() == at::kBFloat16;
  r.d = static_cast<int>(sq.d);

  QuantQKParams& pq = r.pq;
  pq = {};
  pq.x = q.data_ptr();
  pq.in = slice_view(q, layout, sq.h);
  pq.x_int8 = r.q_i8.data_ptr<int8_t>();
  pq.out = slice_view(r.q_i8, layout, sq.h);
  pq.scale = r.q_scale.data_ptr<float>();
  pq.slices = static_cast<int>(sq.b * sq.h);
  pq.n = sq.n;
  pq.blk = static_cast<int>(blk_q);
  pq.log2_blk = __builtin_ctz(pq.blk);
  pq.num_blocks = static_cast<int>(r.q_scale.size(2));
  pq.scale_factor = static_cast<float>(q_scale_factor);

  QuantQKParams& pk = r.pk;
  pk = pq;
  pk.x = k.data_ptr();
  pk.in = slice_view(k, layout, sk.h);
  pk.x_int8 = r.k_i8.data_ptr<int8_t>();
  pk.out = slice_view(r.k_i8, layout, sk.h);
  pk.scale = r.k_scale.data_ptr<float>();
  pk.mean = r.k_mean.data_ptr<float>();
  if (!k_mean_given) {
    pk.workspace = r.workspace.data_ptr<float>();
    pk.arrived = reinterpret_cast<unsigned*>(r.workspace.data_ptr<float>() + slices * quant::kReplicas * sk.d);
  }
  pk.n = sk.n;
  pk.blk = static_cast<int>(blk_k);
  pk.log2_blk = __builtin_ctz(pk.blk);
  pk.num_blocks = static_cast<int>(r.k_scale.size(2));
  pk.scale_factor = 1.f;
  return r;
}

void launch_quantize_qk_int8(const QuantizeQK& r, cudaStream_t stream) {
  TD_DISPATCH_HALF(r.bf16, T, [&] {
    TD_DISPATCH_HEAD_DIM(r.d, D, [&] {
      if (!r.mean_given) launch_quantize_k_mean<T, D>(r.pk, stream);
      launch_quantize_qk_int8_single_pass<T, D>(r.pq, r.pk, stream);  // q and k - k_mean in one launch
    });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_qk_int8_cuda(
    const at::Tensor& q, const at::Tensor& k, const std::string& layout, int64_t blk_q, int64_t blk_k,
    double q_scale_factor, const std::optional<at::Tensor>& k_mean_given) {
  const QuantizeQK r = prepare_quantize_qk_int8(q, k, layout, blk_q, blk_k, q_scale_factor, k_mean_given);
  const c10::cuda::CUDAGuard guard(q.device());
  launch_quantize_qk_int8(r, at::cuda::getCurrentCUDAStream());
  // A given mean is returned as a copy: an op's outputs do not alias its inputs.
  return {r.q_i8, r.q_scale, r.k_i8, r.k_scale, k_mean_given ? r.k_mean.clone() : r.k_mean};
}

std::tuple<at::Tensor, at::Tensor> quantize_v_fp8_cuda(const at::Tensor& v, const std::string& layout,
                                                       int64_t pad_to, const std::optional<at::Tensor>& v_amax) {
  check_layout(layout);
  const BHND s = check_attention_tensor(v, "v", layout, v.device());
  TORCH_CHECK_VALUE(s.n > 0, "v: expected at least one token (the scales are amax_N |v| / 448), got shape ",
                    dims_str(v.sizes()));
  TORCH_CHECK_VALUE(pad_to > 0 && pad_to % 16 == 0,
                    "pad_to: expected a positive multiple of 16 (the token-permutation group), got ", num(pad_to));
  check_vector_aligned(v, "v");
  if (v_amax) check_f32(*v_amax, "v_amax", {s.b, s.h, s.d}, v.device());
  const c10::cuda::CUDAGuard guard(v.device());
  const int64_t n_pad = (s.n + pad_to - 1) / pad_to * pad_to;
  const int64_t slices = s.b * s.h;
  at::Tensor v_fp8 = at::empty({s.b, s.h, s.d, n_pad}, v.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor v_scale = at::empty({s.b, s.h, s.d}, v.options().dtype(at::kFloat));
  at::Tensor workspace =
      v_amax ? at::Tensor() : at::zeros({slices * (quant::kReplicas * s.d + 1)}, v.options().dtype(at::kFloat));

  QuantVParams p{};
  p.v = v.data_ptr();
  p.in = slice_view(v, layout, s.h);
  p.v_fp8 = reinterpret_cast<uint8_t*>(v_fp8.data_ptr());
  p.scale = v_scale.data_ptr<float>();
  if (v_amax) {
    p.amax = v_amax->data_ptr<float>();  // one pass
  } else {
    p.workspace = workspace.data_ptr<float>();
    p.arrived = reinterpret_cast<unsigned*>(workspace.data_ptr<float>() + slices * quant::kReplicas * s.d);
  }
  p.slices = static_cast<int>(slices);
  p.n = s.n;
  p.n_pad = n_pad;
  const int sms = num_sms(v);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  TD_DISPATCH_HALF(v.scalar_type() == at::kBFloat16, T, [&] {
    TD_DISPATCH_HEAD_DIM(s.d, D, [&] { launch_quantize_v_fp8<T, D>(p, sms, stream); });
  });
  return {v_fp8, v_scale};
}

std::tuple<at::Tensor, at::Tensor> quantize_per_token_int8_cuda(const at::Tensor& x) {
  check_half_dtype(x, "x");
  check_cuda_tensor(x, "x", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) > 0,
                    "x: expected at least 1 dimension and a non-empty last dimension, got shape ", dims_str(x.sizes()));
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t k = x.size(-1);
  // Rows of a strided [..., K] tensor: a view when the leading dims collapse, else one copy.
  const at::Tensor rows = x.reshape({-1, k});
  at::Tensor x_i8 = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  QuantRowsParams p{};
  p.x = rows.data_ptr();
  p.row_stride = rows.size(0) > 1 ? rows.stride(0) : k;
  p.x_int8 = x_i8.data_ptr<int8_t>();
  p.scale = scale.data_ptr<float>();
  p.rows = rows.size(0);
  p.k = static_cast<int>(k);
  TORCH_CHECK_VALUE(k < (int64_t(1) << 31), "x: last dimension ", num(k), " is too large (< 2^31)");
  const bool aligned16 = k % 8 == 0 && p.row_stride % 8 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  TD_DISPATCH_HALF(x.scalar_type() == at::kBFloat16, T, [&] { launch_quantize_per_token_int8<T>(p, aligned16, stream); });
  return {x_i8, scale};
}

}  // namespace td
