// Input checks of the torch-facing launchers. Messages use the wording of turbodiffusion/_checks.py
// (argument name, expected, given), so the CPU and CUDA paths of an op fail alike.
#pragma once
#include <ATen/ATen.h>

#include <string>

namespace td {

inline std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    case c10::kFloat: return "float32";
    case c10::kDouble: return "float64";
    case c10::kInt: return "int32";
    case c10::kLong: return "int64";
    default: return c10::toString(t);
  }
}

// Numbers in messages are formatted with std::to_string, never streamed: streaming an integer from
// this library crashed (SIGSEGV in std::ostream::_M_insert<long>) with torch 2.11 on the GPU machine.
inline std::string num(int64_t v) { return std::to_string(v); }
inline std::string num(double v) { return std::to_string(v); }

// "[2, 3, 4]": shapes and strides spelled out by hand.
inline std::string dims_str(c10::IntArrayRef dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

// A CUDA tensor on `device` (the first argument's) with a unit last-dim stride.
inline void check_cuda_tensor(const at::Tensor& t, const char* name, const c10::Device& device) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, ": expected a tensor on ", device.str(), " (like the first argument), got ",
                    t.device().str());
  TORCH_CHECK_VALUE(t.device() == device, name, ": expected a tensor on ", device.str(),
                    " (like the first argument), got ", t.device().str());
  TORCH_CHECK_VALUE(t.dim() == 0 || t.size(-1) <= 1 || t.stride(-1) == 1, name,
                    ": expected a unit stride in the last dimension, got strides ", dims_str(t.strides()));
}

inline void check_half_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kBFloat16 || t.scalar_type() == c10::kHalf, name,
                   ": expected dtype bfloat16/float16, got ", dtype_name(t.scalar_type()));
}

inline void check_layout(const std::string& layout) {
  TORCH_CHECK_VALUE(layout == "NHD" || layout == "HND", "layout: expected one of ('NHD', 'HND'), got '", layout,
                    "'");
}

// [B, H, N, D] sizes of an attention tensor in `layout`, with its dtype, rank and head dim checked.
struct BHND {
  int64_t b, h, n, d;
};

inline BHND check_attention_tensor(const at::Tensor& t, const char* name, const std::string& layout,
                                   const c10::Device& device) {
  check_half_dtype(t, name);
  TORCH_CHECK_VALUE(t.dim() == 4, name, ": expected a 4-D tensor, got ", num(t.dim()), "-D with shape ", dims_str(t.sizes()));
  check_cuda_tensor(t, name, device);
  BHND s = layout == "NHD" ? BHND{t.size(0), t.size(2), t.size(1), t.size(3)}
                           : BHND{t.size(0), t.size(1), t.size(2), t.size(3)};
  TORCH_CHECK_VALUE(s.d == 64 || s.d == 128, name, ": head dim ", num(s.d), " is not supported (supported: (64, 128))");
  return s;
}

// A contiguous float32 tensor of the given shape on `device`.
inline void check_f32(const at::Tensor& t, const char* name, c10::IntArrayRef shape, const c10::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kFloat, name, ": expected dtype float32, got ", dtype_name(t.scalar_type()));
  check_cuda_tensor(t, name, device);
  TORCH_CHECK_VALUE(t.sizes() == shape, name, ": expected shape ", dims_str(shape), ", got ", dims_str(t.sizes()));
  TORCH_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor, got strides ", dims_str(t.strides()));
}

// The kernels read 16-byte vectors: every stride and the base address must keep rows aligned.
inline void check_vector_aligned(const at::Tensor& t, const char* name) {
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int i = 0; i + 1 < t.dim(); ++i) ok = ok && (t.size(i) == 1 || t.stride(i) % 8 == 0);
  TORCH_CHECK_VALUE(ok, name, ": expected 16-byte aligned rows (base address and strides multiples of 8 elements), "
                    "got strides ", dims_str(t.strides()));
}

}  // namespace td
