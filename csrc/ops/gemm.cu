// Torch-facing launcher of w8a8_gemm: check inputs (wording of turbodiffusion/ops.py), allocate the
// output, fill W8A8GemmParams, pick the kernel (backend), launch on the current stream. No kernel math
// here (csrc/include/turbodiffusion/gemm/).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <optional>
#include <string>
#include <utility>

#include "ops/checks.h"
#include "turbodiffusion/gemm/heuristics.h"
#include "turbodiffusion/gemm/params.h"

namespace td {

// Defined in w8a8_gemm_sm90.cuh, instantiated once per compiled tile-table entry in gemm_sm90_*_t<kTile>.cu.
template <bool kFp8, int kTile>
void w8a8_gemm_sm90(const W8A8GemmParams& p, cudaStream_t stream);
void w8a8_gemm_mma_int8(const W8A8GemmParams& p, cudaStream_t stream);

namespace {

std::string in_dtype_name(c10::ScalarType t) {
  return t == c10::kChar ? "int8" : t == c10::kFloat8_e4m3fn ? "float8_e4m3fn" : dtype_name(t);
}

void check_operand(const at::Tensor& t, const char* name, const c10::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kChar || t.scalar_type() == c10::kFloat8_e4m3fn, name,
                   ": expected dtype int8/float8_e4m3fn, got ", in_dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == 2, name, ": expected a 2-D tensor, got ", num(t.dim()), "-D with shape ",
                    dims_str(t.sizes()));
  check_cuda_tensor(t, name, device);
}

void check_operand_alignment(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.size(0) <= 1 || t.stride(0) % 16 == 0, name,
                    ": expected a row stride that is a multiple of 16 elements, got strides ", dims_str(t.strides()));
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name,
                    ": expected a 16-byte aligned base address (TMA / cp.async)");
}

void check_vector(const at::Tensor& t, const char* name, int64_t len, const char* what, const c10::Device& device) {
  TORCH_CHECK_TYPE(t.scalar_type() == c10::kFloat, name, ": expected dtype float32, got ",
                   dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() == 1, name, ": expected a 1-D tensor, got ", num(t.dim()), "-D with shape ",
                    dims_str(t.sizes()));
  check_cuda_tensor(t, name, device);
  TORCH_CHECK_VALUE(t.size(0) == len, name, ": expected shape [", num(len), "] (", what, "), got ",
                    dims_str(t.sizes()));
}

using Sm90Launch = void (*)(const W8A8GemmParams&, cudaStream_t);

// The entry point of a tile, or null for a candidate tile this build does not compile (heuristics.h).
template <bool kFp8, int kTile>
constexpr Sm90Launch sm90_launch() {
  if constexpr ((kFp8 ? gemm::kSm90Fp8Tiles : gemm::kSm90Int8Tiles)[kTile].default_build || TD_GEMM_ALL_CONFIGS) {
    return &w8a8_gemm_sm90<kFp8, kTile>;
  } else {
    return nullptr;
  }
}
template <bool kFp8, int... kTile>
constexpr std::array<Sm90Launch, sizeof...(kTile)> sm90_launches(std::integer_sequence<int, kTile...>) {
  return {sm90_launch<kFp8, kTile>()...};
}
// Entry points indexed like the tile tables of heuristics.h.
constexpr auto kSm90Int8 = sm90_launches<false>(std::make_integer_sequence<int, gemm::kSm90Int8TileCount>{});
constexpr auto kSm90Fp8 = sm90_launches<true>(std::make_integer_sequence<int, gemm::kSm90Fp8TileCount>{});

std::string tile_name(const gemm::Sm90Tile& t) {
  return std::to_string(t.m) + "x" + std::to_string(t.n) + "x" + std::to_string(t.k) +
         (t.cooperative ? " cooperative" : " ping-pong") + ", cluster " + std::to_string(t.cluster_m) + "x1";
}

// sm90_config: [] (the heuristics table) or [tile, raster_along_m, swizzle], wording of ops.py.
void check_sm90_config(at::IntArrayRef config, bool fp8, const std::string& backend) {
  if (config.empty()) return;
  TORCH_CHECK_VALUE(backend == "sm90", "sm90_config: given ", dims_str(config), ", which needs backend 'sm90', got '",
                    backend, "'");
  TORCH_CHECK_VALUE(config.size() == 3, "sm90_config: expected [] or [tile, raster_along_m, swizzle], got ",
                    dims_str(config));
  const int count = fp8 ? gemm::kSm90Fp8TileCount : gemm::kSm90Int8TileCount;
  TORCH_CHECK_VALUE(config[0] >= 0 && config[0] < count, "sm90_config: tile ", num(config[0]), " out of range: ",
                    fp8 ? "float8_e4m3fn" : "int8", " has tiles 0..", num(int64_t(count - 1)));
  TORCH_CHECK_VALUE(config[1] == 0 || config[1] == 1, "sm90_config: raster_along_m must be 0 or 1, got ",
                    num(config[1]));
  const int64_t sw = config[2];
  TORCH_CHECK_VALUE(sw == 1 || sw == 2 || sw == 4 || sw == 8, "sm90_config: swizzle must be 1, 2, 4 or 8, got ",
                    num(sw));
}

// The heuristics' choice, or the explicit sm90_config (checked above), and its entry point.
std::pair<gemm::Sm90Choice, Sm90Launch> sm90_choice(bool fp8, int64_t m, int64_t n, int64_t k,
                                                    at::IntArrayRef config) {
  gemm::Sm90Choice c;
  if (config.empty()) {
    c = gemm::sm90_choose(fp8, m, n, k);
  } else {
    c.tile = static_cast<int>(config[0]);
    c.raster_along_m = config[1] == 1;
    c.swizzle = static_cast<int>(config[2]);
  }
  const Sm90Launch launch = fp8 ? kSm90Fp8[c.tile] : kSm90Int8[c.tile];
  const gemm::Sm90Tile& t = fp8 ? gemm::kSm90Fp8Tiles[c.tile] : gemm::kSm90Int8Tiles[c.tile];
  TORCH_CHECK_VALUE(launch != nullptr, config.empty() ? "w8a8_gemm: heuristics.h chose " : "sm90_config: ",
                    fp8 ? "float8_e4m3fn" : "int8", " tile ", num(int64_t(c.tile)), " (", tile_name(t),
                    "), a sweep candidate not compiled in this build (build with TD_GEMM_ALL_CONFIGS=1)");
  return {c, launch};
}

}  // namespace

at::Tensor w8a8_gemm_cuda(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& w,
                          const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, c10::ScalarType out_dtype,
                          const std::string& backend, at::IntArrayRef sm90_config) {
  const c10::Device device = a.device();
  check_operand(a, "a", device);
  check_operand(w, "w", device);
  TORCH_CHECK_TYPE(w.scalar_type() == a.scalar_type(), "w: expected dtype ", in_dtype_name(a.scalar_type()),
                   " (like a), got ", in_dtype_name(w.scalar_type()));
  const int64_t m = a.size(0), k = a.size(1), n = w.size(0);
  TORCH_CHECK_VALUE(w.size(1) == k, "w: expected shape [N, ", num(k), "] (K like a), got ", dims_str(w.sizes()));
  TORCH_CHECK_VALUE(k > 0 && k % 16 == 0, "a: K = ", num(k),
                    " is not supported: expected a positive multiple of 16 (16-byte rows for TMA and cp.async)");
  TORCH_CHECK_VALUE(n > 0 && n % 8 == 0, "w: N = ", num(n),
                    " is not supported: expected a positive multiple of 8 (16-byte output rows)");
  check_operand_alignment(a, "a");
  check_operand_alignment(w, "w");
  TORCH_CHECK_VALUE(k <= 131072, "a: K = ", num(k), " is not supported: expected at most 131072 (int32 accumulator)");
  TORCH_CHECK_VALUE(m < (int64_t(1) << 31) && n < (int64_t(1) << 31), "a, w: M and N must be below 2^31");
  check_vector(a_scale, "a_scale", m, "M of a", device);
  check_vector(w_scale, "w_scale", n, "N of w", device);
  TORCH_CHECK_TYPE(out_dtype == c10::kBFloat16 || out_dtype == c10::kHalf,
                   "out_dtype: expected bfloat16/float16, got ", dtype_name(out_dtype));
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    TORCH_CHECK_TYPE(b.scalar_type() == out_dtype, "bias: expected dtype ", dtype_name(out_dtype), ", got ",
                     dtype_name(b.scalar_type()));
    TORCH_CHECK_VALUE(b.dim() == 1, "bias: expected a 1-D tensor, got ", num(b.dim()), "-D with shape ",
                      dims_str(b.sizes()));
    check_cuda_tensor(b, "bias", device);
    TORCH_CHECK_VALUE(b.size(0) == n, "bias: expected shape [", num(n), "] (N of w), got ", dims_str(b.sizes()));
  }
  TORCH_CHECK_VALUE(backend == "auto" || backend == "sm90" || backend == "mma",
                    "backend: expected one of ('auto', 'sm90', 'mma'), got '", backend, "'");
  const bool fp8 = a.scalar_type() == c10::kFloat8_e4m3fn;
  TORCH_CHECK_VALUE(!(backend == "mma" && fp8),
                    "backend: 'mma' (the mma.sync kernel) supports int8 inputs only, got float8_e4m3fn");
  check_sm90_config(sm90_config, fp8, backend);

  const c10::cuda::CUDAGuard guard(device);
  const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device.index());
  const bool sm90 = prop->major == 9;
  TORCH_CHECK_VALUE(backend != "sm90" || sm90, "backend: 'sm90' needs a compute capability 9.x GPU, got ",
                    num(int64_t(prop->major)), ".", num(int64_t(prop->minor)));
  TORCH_CHECK_VALUE(!fp8 || sm90, "a: float8_e4m3fn GEMM needs a compute capability 9.x GPU (sm90 kernel), got ",
                    num(int64_t(prop->major)), ".", num(int64_t(prop->minor)));
  TORCH_CHECK_VALUE(sm90 || prop->major >= 8, "w8a8_gemm: needs compute capability >= 8.0, got ",
                    num(int64_t(prop->major)), ".", num(int64_t(prop->minor)));

  at::Tensor out = at::empty({m, n}, a.options().dtype(out_dtype));
  if (m == 0) return out;
  // Contiguous scales (1-D views may be strided); a no-op for the usual contiguous inputs.
  const at::Tensor as = a_scale.contiguous(), ws = w_scale.contiguous();
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();

  W8A8GemmParams p{};
  p.a = a.data_ptr();
  p.w = w.data_ptr();
  p.a_scale = as.data_ptr<float>();
  p.w_scale = ws.data_ptr<float>();
  p.bias = bias.has_value() ? bc.data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.m = m;
  p.n = n;
  p.k = k;
  p.lda = m > 1 ? a.stride(0) : k;
  p.ldw = n > 1 ? w.stride(0) : k;
  p.ldo = n;
  p.out_bf16 = out_dtype == c10::kBFloat16;
  p.sm_count = prop->multiProcessorCount;
  p.device = device.index();
  if (p.lda % 16) p.lda = k;  // a single row: any stride is fine, use the packed one
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool use_sm90 = backend == "sm90" || (backend == "auto" && sm90);
  if (fp8 || use_sm90) {
    const auto [choice, launch] = sm90_choice(fp8, m, n, k, sm90_config);
    p.raster_along_m = choice.raster_along_m;
    p.swizzle = choice.swizzle;
    launch(p, stream);
  } else {
    w8a8_gemm_mma_int8(p, stream);
  }
  return out;
}

}  // namespace td
