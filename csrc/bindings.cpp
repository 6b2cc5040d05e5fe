// CUDA implementations of the ops declared in turbodiffusion/ops.py (the one place that holds their
// schemas, CPU references and fake implementations). No pybind: the module below exists only so
// `import turbodiffusion._C` loads this library, whose static initialisers register the kernels.
#include <Python.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

namespace td {
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_qk_int8_cuda(
    const at::Tensor& q, const at::Tensor& k, const std::string& layout, int64_t blk_q, int64_t blk_k,
    double q_scale_factor, const std::optional<at::Tensor>& k_mean);
std::tuple<at::Tensor, at::Tensor> quantize_v_fp8_cuda(const at::Tensor& v, const std::string& layout,
                                                       int64_t pad_to, const std::optional<at::Tensor>& v_amax);
std::tuple<at::Tensor, at::Tensor> quantize_per_token_int8_cuda(const at::Tensor& x);
// The two quantized-attention kernels take the same arguments.
#define TD_DECLARE_QUANTIZED_ATTENTION(NAME)                                                                 \
  std::tuple<at::Tensor, at::Tensor> NAME(const at::Tensor& q, const at::Tensor& q_int8, const at::Tensor& q_scale, \
                                          const at::Tensor& k_int8, const at::Tensor& k_scale,                \
                                          const at::Tensor& k_mean, const at::Tensor& v_fp8,                  \
                                          const at::Tensor& v_scale, const std::string& layout, double sm_scale);
TD_DECLARE_QUANTIZED_ATTENTION(attention_int8_fp8_mma_cuda)
TD_DECLARE_QUANTIZED_ATTENTION(attention_int8_fp8_sm90_cuda)
std::tuple<at::Tensor, at::Tensor> attention_int8_fp8_sparse_mma_cuda(
    const at::Tensor& q, const at::Tensor& q_int8, const at::Tensor& q_scale, const at::Tensor& k_int8,
    const at::Tensor& k_scale, const at::Tensor& k_mean, const at::Tensor& v_fp8, const at::Tensor& v_scale,
    const at::Tensor& lut, const at::Tensor& count, const std::optional<at::Tensor>& lin,
    const std::optional<at::Tensor>& lin_bias, const std::string& layout, double sm_scale, int64_t blkq, int64_t blkk);
std::tuple<at::Tensor, at::Tensor> attention_int8_fp8_sparse_sm90_cuda(
    const at::Tensor& q, const at::Tensor& q_int8, const at::Tensor& q_scale, const at::Tensor& k_int8,
    const at::Tensor& k_scale, const at::Tensor& k_mean, const at::Tensor& v_fp8, const at::Tensor& v_scale,
    const at::Tensor& lut, const at::Tensor& count, const std::optional<at::Tensor>& lin,
    const std::optional<at::Tensor>& lin_bias, const std::string& layout, double sm_scale, int64_t blkq, int64_t blkk);
std::tuple<at::Tensor, at::Tensor, at::Tensor> sla_block_map_cuda(const at::Tensor& q, const at::Tensor& k,
                                                      const std::string& layout, int64_t blkq, int64_t blkk,
                                                      double topk);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sla_block_map_quantize_qk_cuda(const at::Tensor& q, const at::Tensor& k, const std::string& layout, int64_t blkq,
                               int64_t blkk, double topk, int64_t blk_q, int64_t blk_k, double q_scale_factor,
                               const std::optional<at::Tensor>& k_block_sums);
std::tuple<at::Tensor, at::Tensor, at::Tensor> sla_linear_state_cuda(const at::Tensor& k, const at::Tensor& v,
                                                                      const at::Tensor& proj_weight,
                                                                      const std::string& layout, int64_t key_block);
at::Tensor w8a8_gemm_cuda(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& w,
                          const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, c10::ScalarType out_dtype,
                          const std::string& backend, at::IntArrayRef sm90_config);
}  // namespace td

TORCH_LIBRARY_IMPL(turbodiffusion, CUDA, m) {
  m.impl("quantize_qk_int8", &td::quantize_qk_int8_cuda);
  m.impl("quantize_v_fp8", &td::quantize_v_fp8_cuda);
  m.impl("quantize_per_token_int8", &td::quantize_per_token_int8_cuda);
  m.impl("w8a8_gemm", &td::w8a8_gemm_cuda);
  m.impl("attention_int8_fp8_mma", &td::attention_int8_fp8_mma_cuda);
  m.impl("attention_int8_fp8_sm90", &td::attention_int8_fp8_sm90_cuda);
  m.impl("attention_int8_fp8_sparse_mma", &td::attention_int8_fp8_sparse_mma_cuda);
  m.impl("attention_int8_fp8_sparse_sm90", &td::attention_int8_fp8_sparse_sm90_cuda);
  m.impl("sla_block_map", &td::sla_block_map_cuda);
  m.impl("sla_block_map_quantize_qk", &td::sla_block_map_quantize_qk_cuda);
  m.impl("sla_linear_state", &td::sla_linear_state_cuda);
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "turbodiffusion CUDA kernels (ops registered with "
                               "TORCH_LIBRARY; use turbodiffusion.ops)", -1, nullptr};
  return PyModule_Create(&module);
}
