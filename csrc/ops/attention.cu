// Torch-facing launchers of the quantized attention kernels (mma.sync and sm90 wgmma): check inputs,
// allocate outputs, fill the Params struct (and the sm90 kernel's TMA tensor maps), dispatch. No kernel math here (csrc/include/turbodiffusion/attention/).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <utility>

#include "ops/checks.h"
#include "turbodiffusion/attention/mma_int8_fp8_attn.cuh"
#include "turbodiffusion/attention/sm90_int8_fp8_attn.cuh"
#include "turbodiffusion/common/tma.h"
#include "turbodiffusion/common/dispatch.h"

namespace td {
namespace {

// A 4-D tensor of `dtype` on `device` with a unit last stride; returns its [B, H, N, D] sizes.
BHND check_quantized_attention_tensor(const at::Tensor& t, const char* name, const std::string& layout,
                                      c10::ScalarType dtype, const c10::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, ": expected dtype ", dtype_name(dtype), ", got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == 4, name, ": expected a 4-D tensor, got ", num(t.dim()), "-D with shape ",
                    dims_str(t.sizes()));
  check_cuda_tensor(t, name, device);
  BHND s = layout == "NHD" ? BHND{t.size(0), t.size(2), t.size(1), t.size(3)}
                           : BHND{t.size(0), t.size(1), t.size(2), t.size(3)};
  TORCH_CHECK_VALUE(s.d == 64 || s.d == 128, name, ": head dim ", num(s.d), " is not supported (supported: (64, 128))");
  // cp.async copies 16-byte pieces of each row.
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int i = 0; i + 1 < t.dim(); ++i) aligned = aligned && (t.size(i) == 1 || t.stride(i) % 16 == 0);
  TORCH_CHECK_VALUE(aligned, name, ": expected 16-byte aligned rows (base address and strides multiples of 16 "
                    "elements), got strides ", dims_str(t.strides()));
  return s;
}

// Checked inputs and allocated outputs of one quantized-attention call (dense or block-sparse).
struct QuantizedAttention {
  AttnInt8Fp8Params p{};
  at::Tensor out, lse;
  at::Tensor lin_frag;  // sparse with SLA's linear state: lin in the kernel's layout (kept alive to the launch)
  BHND sq, sk;
};

QuantizedAttention prepare_quantized_attention(const at::Tensor& q, const at::Tensor& q_int8,
                                               const at::Tensor& q_scale, const at::Tensor& k_int8,
                                               const at::Tensor& k_scale, const at::Tensor& k_mean,
                                               const at::Tensor& v_fp8, const at::Tensor& v_scale,
                                               const std::string& layout, double sm_scale) {
  check_layout(layout);
  const c10::Device device = q.device();
  check_attention_tensor(q, "q", layout, device);
  check_vector_aligned(q, "q");
  const BHND sq = check_quantized_attention_tensor(q_int8, "q_int8", layout, c10::kChar, device);
  TORCH_CHECK_VALUE(q_int8.sizes() == q.sizes(), "q_int8: expected shape ", dims_str(q.sizes()), " (like q), got ",
                    dims_str(q_int8.sizes()));
  const BHND sk = check_quantized_attention_tensor(k_int8, "k_int8", layout, c10::kChar, device);
  TORCH_CHECK_VALUE(sk.b == sq.b && sk.h == sq.h && sk.d == sq.d, "k_int8: expected batch, heads and head dim (",
                    num(sq.b), ", ", num(sq.h), ", ", num(sq.d), ") (like q_int8), got (", num(sk.b), ", ", num(sk.h),
                    ", ", num(sk.d), ")");
  TORCH_CHECK_VALUE(sk.n > 0, "k_int8: expected at least one key, got 0");
  // Both kernels take V padded to 64 tokens (the sm90 kernel's 128-key boxes are zero-filled by TMA).
  const int64_t bq = attn::kBlkQ, bk = attn::kBlkK, tile = attn::kKvTile;
  check_f32(q_scale, "q_scale", {sq.b, sq.h, (sq.n + bq - 1) / bq}, device);
  check_f32(k_scale, "k_scale", {sq.b, sq.h, (sk.n + bk - 1) / bk}, device);
  check_f32(k_mean, "k_mean", {sq.b, sq.h, sq.d}, device);
  check_f32(v_scale, "v_scale", {sq.b, sq.h, sq.d}, device);
  TORCH_CHECK_TYPE(v_fp8.scalar_type() == c10::kFloat8_e4m3fn, "v_fp8: expected dtype float8_e4m3fn, got ",
                   dtype_name(v_fp8.scalar_type()));
  check_cuda_tensor(v_fp8, "v_fp8", device);
  TORCH_CHECK_VALUE(v_fp8.dim() == 4 && v_fp8.size(0) == sq.b && v_fp8.size(1) == sq.h && v_fp8.size(2) == sq.d &&
                        v_fp8.size(3) % tile == 0 && v_fp8.size(3) >= sk.n,
                    "v_fp8: expected shape [", num(sq.b), ", ", num(sq.h), ", ", num(sq.d),
                    ", N_pad] with N_pad a multiple of ", num(tile), " and >= ", num(sk.n), " (quantize_v_fp8 with pad_to=",
                    num(tile), "), got ", dims_str(v_fp8.sizes()));
  TORCH_CHECK_VALUE(v_fp8.is_contiguous(), "v_fp8: expected a contiguous tensor, got strides ", dims_str(v_fp8.strides()));
  TORCH_CHECK_VALUE(std::isfinite(sm_scale) && sm_scale > 0, "sm_scale: expected a finite positive number, got ",
                    num(sm_scale));
  TORCH_CHECK_VALUE(sq.h <= 65535 && sq.b <= 65535, "q_int8: expected at most 65535 heads and batches, got ",
                    num(sq.h), " and ", num(sq.b));

  QuantizedAttention a;
  a.sq = sq;
  a.sk = sk;
  const c10::ScalarType out_dtype = q.scalar_type();
  a.out = at::empty(layout == "NHD" ? std::vector<int64_t>{sq.b, sq.n, sq.h, sq.d}
                                    : std::vector<int64_t>{sq.b, sq.h, sq.n, sq.d},
                    q_int8.options().dtype(out_dtype));
  a.lse = at::empty({sq.b, sq.h, sq.n}, q_int8.options().dtype(at::kFloat));

  AttnInt8Fp8Params& p = a.p;
  p.q_orig = q.data_ptr();
  p.q = q_int8.data_ptr<int8_t>();
  p.k = k_int8.data_ptr<int8_t>();
  p.v = reinterpret_cast<const uint8_t*>(v_fp8.data_ptr());
  p.q_scale = q_scale.data_ptr<float>();
  p.k_scale = k_scale.data_ptr<float>();
  p.k_mean = k_mean.data_ptr<float>();
  p.v_scale = v_scale.data_ptr<float>();
  p.out = a.out.data_ptr();
  p.lse = a.lse.data_ptr<float>();
  const bool nhd = layout == "NHD";
  auto strides = [&](const at::Tensor& t, int64_t& sb, int64_t& sh, int64_t& sn) {
    sb = t.stride(0);
    sh = nhd ? t.stride(2) : t.stride(1);
    sn = nhd ? t.stride(1) : t.stride(2);
  };
  strides(q_int8, p.q_stride_b, p.q_stride_h, p.q_stride_n);
  strides(q, p.qo_stride_b, p.qo_stride_h, p.qo_stride_n);
  strides(k_int8, p.k_stride_b, p.k_stride_h, p.k_stride_n);
  strides(a.out, p.o_stride_b, p.o_stride_h, p.o_stride_n);
  p.v_n_pad = v_fp8.size(3);
  p.nq = sq.n;
  p.nk = sk.n;
  p.heads = static_cast<int>(sq.h);
  p.q_blocks = static_cast<int>(q_scale.size(2));
  p.k_blocks = static_cast<int>(k_scale.size(2));
  p.out_bf16 = out_dtype == c10::kBFloat16;
  p.lse_scale = static_cast<float>(sm_scale * 1.4426950408889634);  // like the reference: fp32(sm_scale * log2 e)
  return a;
}

int compute_capability(const c10::Device& device) {
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device.index());
  return prop->major * 10 + prop->minor;
}

// Tensor map of a contiguous INT8 q or k in `layout` with boxes of `rows` tokens of one head. Its
// dimensions run innermost first in memory order: (D, H, N, B) for NHD, (D, N, H, B) for HND.
CUtensorMap qk_tensor_map(const at::Tensor& t, const char* name, const BHND& s, bool nhd, uint32_t rows) {
  TORCH_CHECK_VALUE(t.is_contiguous(), name, ": the sm90 kernel loads it with TMA and expects a contiguous tensor ",
                    "(as quantize_qk_int8 returns it), got strides ", dims_str(t.strides()));
  TORCH_CHECK_VALUE(s.n < (int64_t(1) << 31), name, ": expected fewer than 2^31 tokens, got ", num(s.n));
  const cuuint64_t dims[4] = {cuuint64_t(s.d), cuuint64_t(nhd ? s.h : s.n), cuuint64_t(nhd ? s.n : s.h), cuuint64_t(s.b)};
  const cuuint64_t strides[3] = {dims[0], dims[0] * dims[1], dims[0] * dims[1] * dims[2]};
  const cuuint32_t box[4] = {cuuint32_t(s.d), nhd ? 1u : rows, nhd ? rows : 1u, 1u};
  CUtensorMap map;
  const CUresult r = encode_tma_u8(&map, t.data_ptr(), 4, dims, strides, box,
                                   s.d == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B);
  TORCH_CHECK(r == CUDA_SUCCESS, name, ": cuTensorMapEncodeTiled failed with CUresult ", num(int64_t(r)), " for shape ",
              dims_str(t.sizes()));
  return map;
}

// The three TMA tensor maps of the sm90 kernel: q, k (one head's rows per box) and the transposed V, for
// boxes of `bn` keys (128, or 64 for the sparse kernel's tile halves: a V box row is then 64 bytes, 64-byte
// swizzle).
struct Sm90TensorMaps {
  CUtensorMap q, k, v;
};

Sm90TensorMaps sm90_tensor_maps(const QuantizedAttention& a, const at::Tensor& q_int8, const at::Tensor& k_int8,
                                const at::Tensor& v_fp8, bool nhd, uint32_t bn) {
  const int cc = compute_capability(q_int8.device());
  TORCH_CHECK(cc == 90, "the sm90 attention kernel needs an sm_90 GPU (wgmma, TMA), got sm_", num(int64_t(cc)),
              "; use the mma backend");
  Sm90TensorMaps m;
  m.q = qk_tensor_map(q_int8, "q_int8", a.sq, nhd, 64);
  m.k = qk_tensor_map(k_int8, "k_int8", a.sk, nhd, bn);
  const cuuint64_t dims[3] = {cuuint64_t(a.p.v_n_pad), cuuint64_t(a.sq.d), cuuint64_t(a.sq.b * a.sq.h)};
  const cuuint64_t strides[2] = {dims[0], dims[0] * dims[1]};
  const cuuint32_t box[3] = {bn, cuuint32_t(a.sq.d), 1u};
  const CUresult r = encode_tma_u8(&m.v, v_fp8.data_ptr(), 3, dims, strides, box,
                                   bn == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B);
  TORCH_CHECK(r == CUDA_SUCCESS, "v_fp8: cuTensorMapEncodeTiled failed with CUresult ", num(int64_t(r)));
  return m;
}

// Checks the block-sparse arguments (ARCHITECTURE §4.2: LUT, counts, SLA's linear state) and sets them
// in a.p. Block sizes must be multiples of the kernel's units (its CTA rows, its KV tile).
void set_sparse_args(QuantizedAttention& a, const at::Tensor& lut, const at::Tensor& count,
                     const std::optional<at::Tensor>& lin, const std::optional<at::Tensor>& lin_bias, int64_t blkq,
                     int64_t blkk, int64_t unit_q, int64_t unit_k, bool wgmma_lin) {
  const c10::Device device = lut.device();
  for (auto [name, blk, unit] : {std::tuple<const char*, int64_t, int64_t>{"blkq", blkq, unit_q}, {"blkk", blkk, unit_k}})
    TORCH_CHECK_VALUE(blk > 0 && blk % unit == 0 && blk <= 1024, name, ": expected a positive multiple of ", num(unit),
                      " <= 1024, got ", num(blk));
  const BHND& sq = a.sq;
  const int64_t mq = (sq.n + blkq - 1) / blkq;
  TORCH_CHECK_TYPE(lut.scalar_type() == c10::kInt, "lut: expected dtype int32, got ", dtype_name(lut.scalar_type()));
  check_cuda_tensor(lut, "lut", device);
  TORCH_CHECK_VALUE(lut.dim() == 4 && lut.size(0) == sq.b && lut.size(1) == sq.h && lut.size(2) == mq &&
                        lut.is_contiguous(),
                    "lut: expected a contiguous tensor of shape [", num(sq.b), ", ", num(sq.h), ", ", num(mq),
                    ", max_kept] (Mq = ceil(", num(sq.n), " / blkq ", num(blkq), ")), got shape ", dims_str(lut.sizes()),
                    " strides ", dims_str(lut.strides()));
  TORCH_CHECK_TYPE(count.scalar_type() == c10::kInt, "count: expected dtype int32, got ",
                   dtype_name(count.scalar_type()));
  check_cuda_tensor(count, "count", device);
  TORCH_CHECK_VALUE(count.sizes() == c10::IntArrayRef({sq.b, sq.h, mq}) && count.is_contiguous(),
                    "count: expected a contiguous tensor of shape ", dims_str({sq.b, sq.h, mq}), ", got shape ",
                    dims_str(count.sizes()));
  TORCH_CHECK_VALUE(lin.has_value() == lin_bias.has_value(), "lin_bias: expected a tensor exactly when lin is given");
  AttnInt8Fp8Params& p = a.p;
  p.lut = lut.data_ptr<int32_t>();
  p.count = count.data_ptr<int32_t>();
  p.lut_width = static_cast<int>(lut.size(3));
  p.sparse_q_blocks = static_cast<int>(mq);
  p.blkq = static_cast<int>(blkq);
  p.blkk = static_cast<int>(blkk);
  if (lin.has_value()) {
    TORCH_CHECK_TYPE(lin->scalar_type() == c10::kHalf, "lin: expected dtype float16, got ",
                     dtype_name(lin->scalar_type()));
    check_cuda_tensor(*lin, "lin", device);
    TORCH_CHECK_VALUE(lin->sizes() == c10::IntArrayRef({sq.b, sq.h, sq.d + 8, sq.d}) && lin->is_contiguous(),
                      "lin: expected a contiguous tensor of shape ", dims_str({sq.b, sq.h, sq.d + 8, sq.d}),
                      " (sla_linear_state), got shape ", dims_str(lin->sizes()));
    TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(lin->data_ptr()) % 4 == 0,
                      "lin: expected a 4-byte aligned base address (the kernels read pairs of float16), got a view "
                      "at element offset ", num(lin->storage_offset()));
    check_f32(*lin_bias, "lin_bias", {sq.d}, device);
    TD_DISPATCH_HEAD_DIM(sq.d, D, [&] {
      a.lin_frag = at::empty({sq.b * sq.h * sla_detail::LinWgmma<D>::kBytes / 4}, lin->options().dtype(c10::kInt));
      sla_detail::launch_lin_layout<D>(reinterpret_cast<const __half*>(lin->data_ptr()),
                                       reinterpret_cast<uint4*>(a.lin_frag.data_ptr()), sq.b * sq.h, wgmma_lin,
                                       at::cuda::getCurrentCUDAStream());
    });
    p.lin_frag = reinterpret_cast<const uint4*>(a.lin_frag.data_ptr());
    p.lin_bias = lin_bias->data_ptr<float>();
  }
}

// Launches the wgmma kernel (kSm90, sm_90 only) or the mma.sync kernel (sm_89+) on checked arguments.
template <bool kSm90, bool kSparse>
std::tuple<at::Tensor, at::Tensor> launch_quantized_attention(QuantizedAttention& a, const char* op,
                                                              const at::Tensor& q_int8, const at::Tensor& k_int8,
                                                              const at::Tensor& v_fp8, const std::string& layout) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int batch = static_cast<int>(a.sq.b);
  if constexpr (kSm90) {
    const bool nhd = layout == "NHD";
    constexpr uint32_t box_keys = attn::Sm90AttnConfig<128, kSparse>::kBoxKeys;  // (the same at D 64)
    const Sm90TensorMaps m = sm90_tensor_maps(a, q_int8, k_int8, v_fp8, nhd, box_keys);
    TD_DISPATCH_HEAD_DIM(a.sq.d, D,
                         [&] { launch_sm90_int8_fp8_attn<D, kSparse>(m.q, m.k, m.v, a.p, nhd, batch, stream); });
  } else {
    const int cc = compute_capability(q_int8.device());
    TORCH_CHECK(cc >= 89, op, ": needs FP8 mma.sync (sm_89 or newer), got sm_", num(int64_t(cc)),
                "; an sm_80 FP16-PV path is not built");
    TD_DISPATCH_HEAD_DIM(a.sq.d, D, [&] { launch_mma_int8_fp8_attn<D, kSparse>(a.p, batch, stream); });
  }
  return {a.out, a.lse};
}

template <bool kSm90>
std::tuple<at::Tensor, at::Tensor> dense_attention(const char* op, const at::Tensor& q, const at::Tensor& q_int8,
                                                   const at::Tensor& q_scale, const at::Tensor& k_int8,
                                                   const at::Tensor& k_scale, const at::Tensor& k_mean,
                                                   const at::Tensor& v_fp8, const at::Tensor& v_scale,
                                                   const std::string& layout, double sm_scale) {
  QuantizedAttention a =
      prepare_quantized_attention(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, layout, sm_scale);
  const c10::cuda::CUDAGuard guard(q.device());
  return launch_quantized_attention<kSm90, false>(a, op, q_int8, k_int8, v_fp8, layout);
}

// Block-sparse variants (ARCHITECTURE §4.2) with SLA's optional linear epilogue (§4.3). Block-size units:
// a query block covers whole 64-row tiles (an mma.sync CTA, a wgmma consumer group) and whole KV tiles
// (64 keys; the wgmma kernel's 128-key tiles pair two of them).
template <bool kSm90>
std::tuple<at::Tensor, at::Tensor> sparse_attention(
    const char* op, const at::Tensor& q, const at::Tensor& q_int8, const at::Tensor& q_scale,
    const at::Tensor& k_int8, const at::Tensor& k_scale, const at::Tensor& k_mean, const at::Tensor& v_fp8,
    const at::Tensor& v_scale, const at::Tensor& lut, const at::Tensor& count, const std::optional<at::Tensor>& lin,
    const std::optional<at::Tensor>& lin_bias, const std::string& layout, double sm_scale, int64_t blkq, int64_t blkk) {
  QuantizedAttention a =
      prepare_quantized_attention(q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8, v_scale, layout, sm_scale);
  const c10::cuda::CUDAGuard guard(q.device());
  set_sparse_args(a, lut, count, lin, lin_bias, blkq, blkk, 64, attn::kKvTile, kSm90);
  return launch_quantized_attention<kSm90, true>(a, op, q_int8, k_int8, v_fp8, layout);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_int8_fp8_mma_cuda(
    const at::Tensor& q, const at::Tensor& q_int8, const at::Tensor& q_scale, const at::Tensor& k_int8,
    const at::Tensor& k_scale, const at::Tensor& k_mean, const at::Tensor& v_fp8, const at::Tensor& v_scale,
    const std::string& layout, double sm_scale) {
  return dense_attention<false>("attention_int8_fp8_mma", q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8,
                                v_scale, layout, sm_scale);
}

std::tuple<at::Tensor, at::Tensor> attention_int8_fp8_sm90_cuda(
    const at::Tensor& q, const at::Tensor& q_int8, const at::Tensor& q_scale, const at::Tensor& k_int8,
    const at::Tensor& k_scale, const at::Tensor& k_mean, const at::Tensor& v_fp8, const at::Tensor& v_scale,
    const std::string& layout, double sm_scale) {
  return dense_attention<true>("attention_int8_fp8_sm90", q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8,
                               v_scale, layout, sm_scale);
}

std::tuple<at::Tensor, at::Tensor> attention_int8_fp8_sparse_mma_cuda(
    const at::Tensor& q, const at::Tensor& q_int8, const at::Tensor& q_scale, const at::Tensor& k_int8,
    const at::Tensor& k_scale, const at::Tensor& k_mean, const at::Tensor& v_fp8, const at::Tensor& v_scale,
    const at::Tensor& lut, const at::Tensor& count, const std::optional<at::Tensor>& lin,
    const std::optional<at::Tensor>& lin_bias, const std::string& layout, double sm_scale, int64_t blkq, int64_t blkk) {
  return sparse_attention<false>("attention_int8_fp8_sparse_mma", q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8,
                                 v_scale, lut, count, lin, lin_bias, layout, sm_scale, blkq, blkk);
}

std::tuple<at::Tensor, at::Tensor> attention_int8_fp8_sparse_sm90_cuda(
    const at::Tensor& q, const at::Tensor& q_int8, const at::Tensor& q_scale, const at::Tensor& k_int8,
    const at::Tensor& k_scale, const at::Tensor& k_mean, const at::Tensor& v_fp8, const at::Tensor& v_scale,
    const at::Tensor& lut, const at::Tensor& count, const std::optional<at::Tensor>& lin,
    const std::optional<at::Tensor>& lin_bias, const std::string& layout, double sm_scale, int64_t blkq, int64_t blkk) {
  return sparse_attention<true>("attention_int8_fp8_sparse_sm90", q, q_int8, q_scale, k_int8, k_scale, k_mean, v_fp8,
                                v_scale, lut, count, lin, lin_bias, layout, sm_scale, blkq, blkk);
}

}  // namespace td
