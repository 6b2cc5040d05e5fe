// Torch-facing launchers of the SLA kernels (block map, linear branch): check inputs, allocate the
// outputs and the kernels' scratch, fill the Params, dispatch. No kernel math here
// (csrc/include/turbodiffusion/sparse/). The block-sparse attention launcher lives with the dense one
// in attention.cu (they share their checks and Params).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "ops/checks.h"
#include "ops/quant.h"
#include "turbodiffusion/common/dispatch.h"
#include "turbodiffusion/quant/heuristics.h"
#include "turbodiffusion/sparse/sla_block_map.cuh"
#include "turbodiffusion/sparse/sla_linear_state.cuh"

namespace td {
namespace {

AttnTensorView view_of(const at::Tensor& t, const BHND& s, const std::string& layout) {
  const bool nhd = layout == "NHD";
  return {t.data_ptr(), t.stride(0), nhd ? t.stride(2) : t.stride(1), nhd ? t.stride(1) : t.stride(2), s.n};
}

// q-like checks shared by both ops: (first, second) bf16/fp16 attention tensors of one dtype, same
// batch, heads and head dim, 16-byte aligned rows, at least one token in the second.
std::pair<BHND, BHND> check_pair(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn,
                                 const std::string& layout) {
  check_layout(layout);
  const c10::Device device = a.device();
  const BHND sa = check_attention_tensor(a, an, layout, device);
  const BHND sb = check_attention_tensor(b, bn, layout, device);
  TORCH_CHECK_TYPE(b.scalar_type() == a.scalar_type(), bn, ": expected dtype ", dtype_name(a.scalar_type()), " (like ",
                   an, "), got ", dtype_name(b.scalar_type()));
  TORCH_CHECK_VALUE(sb.b == sa.b && sb.h == sa.h && sb.d == sa.d, bn, ": expected batch, heads and head dim (",
                    num(sa.b), ", ", num(sa.h), ", ", num(sa.d), ") (like ", an, "), got (", num(sb.b), ", ",
                    num(sb.h), ", ", num(sb.d), ")");
  TORCH_CHECK_VALUE(sb.n > 0, bn, ": expected at least one key, got 0");
  TORCH_CHECK_VALUE(sa.h <= 65535 && sa.b <= 65535, an, ": expected at most 65535 heads and batches, got ",
                    num(sa.h), " and ", num(sa.b));
  check_vector_aligned(a, an);
  check_vector_aligned(b, bn);
  return {sa, sb};
}

// The block map's checks, outputs, scratch and Params.
struct BlockMap {
  BHND sq;
  at::Tensor lut, count, q_sums, k_sums, k_mean, scores;
  SlaBlockMapParams p;
};

BlockMap make_block_map(const at::Tensor& q, const at::Tensor& k, const std::string& layout, int64_t blkq, int64_t blkk,
                        double topk) {
  const auto [sq, sk] = check_pair(q, "q", k, "k", layout);
  for (auto [name, blk] : {std::pair<const char*, int64_t>{"blkq", blkq}, {"blkk", blkk}})
    TORCH_CHECK_VALUE(blk > 0 && blk <= 1024, name, ": expected a positive integer <= 1024, got ", num(blk));
  TORCH_CHECK_VALUE(std::isfinite(topk) && topk >= 0.0 && topk <= 1.0, "topk: expected a fraction in [0, 1], got ",
                    num(topk));
  const int64_t mq = (sq.n + blkq - 1) / blkq, mk = (sk.n + blkk - 1) / blkk;
  // int(topk * Mk) of a double product, like the reference's Python float arithmetic.
  const int64_t kept = std::min<int64_t>(mk, static_cast<int64_t>(topk * static_cast<double>(mk)));
  // The scores go through a scratch of at most kScoreScratchBytes: whole (b, h) slices per pass, at least one,
  // at most 65535 (the score kernel's grid z).
  TORCH_CHECK_VALUE(mq * mk <= sla::kMaxBlockPairs, "blkq, blkk: ", num(mq), " x ", num(mk),
                    " query x key blocks per (b, h) need more than 1 GiB of fp32 scores: use larger blocks");
  const int64_t per_pass = std::clamp<int64_t>(sla::kScoreScratchBytes / (4 * std::max<int64_t>(1, mq * mk)), 1,
                                               std::max<int64_t>(1, std::min<int64_t>(sq.b * sq.h, 65535)));
  const auto f32 = q.options().dtype(at::kFloat);
  BlockMap m{sq};
  m.lut = at::empty({sq.b, sq.h, mq, kept}, q.options().dtype(at::kInt));
  m.count = at::empty({sq.b, sq.h, mq}, q.options().dtype(at::kInt));
  m.q_sums = at::empty({sq.b * sq.h * mq * sq.d}, f32);
  m.k_sums = at::empty({sq.b * sq.h * mk * sq.d}, f32);
  m.k_mean = at::empty({sq.b, sq.h, sq.d}, f32);
  m.scores = at::empty({per_pass * mq * mk}, f32);
  SlaBlockMapParams& p = m.p;
  p = {};
  p.q = view_of(q, sq, layout);
  p.k = view_of(k, sk, layout);
  p.heads = static_cast<int>(sq.h);
  p.blkq = static_cast<int>(blkq);
  p.blkk = static_cast<int>(blkk);
  p.mq = static_cast<int>(mq);
  p.mk = static_cast<int>(mk);
  p.kept = static_cast<int>(kept);
  p.q_sums = m.q_sums.data_ptr<float>();
  p.k_sums = m.k_sums.data_ptr<float>();
  p.k_mean = m.k_mean.data_ptr<float>();
  p.scores = m.scores.data_ptr<float>();
  p.slices_per_pass = static_cast<int>(per_pass);
  p.lut = m.lut.data_ptr<int32_t>();
  p.count = m.count.data_ptr<int32_t>();
  p.bf16 = q.scalar_type() == c10::kBFloat16;
  return m;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> sla_block_map_cuda(const at::Tensor& q, const at::Tensor& k,
                                                                  const std::string& layout, int64_t blkq,
                                                                  int64_t blkk, double topk) {
  const c10::cuda::CUDAGuard guard(q.device());
  const BlockMap m = make_block_map(q, k, layout, blkq, blkk, topk);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  TD_DISPATCH_HEAD_DIM(m.sq.d, D, [&] { launch_sla_block_map<D>(m.p, static_cast<int>(m.sq.b), stream); });
  return {m.lut, m.count, m.k_mean};
}

// The block map and quantize_qk_int8 with its k mean, in the order that lets them share the pass over q: the
// block map's key side (mean_N k), the quantizer, whose Q tiles also give q's block means where blkq allows
// (can_fuse_q_block_means; else the pool kernel reads q), then the selection. The outputs are
// sla_block_map's and quantize_qk_int8(..., k_mean)'s bit for bit (store_block_means); the k mean is the
// block map's tensor (returned once, not copied). With k_block_sums (sla_linear_state's) the key side starts
// from them instead of pooling k: the same up to float32 summation order.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sla_block_map_quantize_qk_cuda(const at::Tensor& q, const at::Tensor& k, const std::string& layout, int64_t blkq,
                               int64_t blkk, double topk, int64_t blk_q, int64_t blk_k, double q_scale_factor,
                               const std::optional<at::Tensor>& k_block_sums) {
  // store_block_means reproduces sla_pool_kernel's sums only with the same thread -> (rows, channels) map.
  static_assert(sla::kPoolThreads == quant::kTileThreads, "the pool kernel's rows are the quantizer tile's");
  const c10::cuda::CUDAGuard guard(q.device());
  const BlockMap m = make_block_map(q, k, layout, blkq, blkk, topk);
  if (k_block_sums) {  // sla_linear_state's key-block sums: the key side needs no pass over k
    const at::Tensor& s = *k_block_sums;
    check_cuda_tensor(s, "k_block_sums", q.device());
    TORCH_CHECK_TYPE(s.scalar_type() == c10::kFloat, "k_block_sums: expected dtype float32, got ",
                     dtype_name(s.scalar_type()));
    TORCH_CHECK_VALUE(s.sizes() == c10::IntArrayRef({m.sq.b, m.sq.h, m.p.mk, m.sq.d}) && s.is_contiguous(),
                      "k_block_sums: expected a contiguous tensor of shape ",
                      dims_str({m.sq.b, m.sq.h, m.p.mk, m.sq.d}), " (ceil(Nk / blkk) key blocks), got shape ",
                      dims_str(s.sizes()));
  }
  QuantizeQK qk = prepare_quantize_qk_int8(q, k, layout, blk_q, blk_k, q_scale_factor, m.k_mean);
  const bool fused = m.p.mq > 0 && can_fuse_q_block_means(q, m.sq.d, blkq);
  if (fused) {
    qk.pq.block_means = m.p.q_sums;
    qk.pq.mean_blk = m.p.blkq;
    qk.pq.num_mean_blocks = m.p.mq;
  }
  const int batch = static_cast<int>(m.sq.b);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  TD_DISPATCH_HEAD_DIM(m.sq.d, D, [&] {
    launch_sla_key_stats<D>(m.p, batch, stream, k_block_sums ? k_block_sums->data_ptr<float>() : nullptr);
    launch_quantize_qk_int8(qk, stream);
    if (!fused && m.p.mq > 0)
      launch_sla_pool<D>(m.p.q, m.p.heads, m.p.bf16, m.p.blkq, m.p.mq, m.p.q_sums, true, batch, stream);
    launch_sla_select<D>(m.p, batch, stream);
  });
  return {m.lut, m.count, qk.q_i8, qk.q_scale, qk.k_i8, qk.k_scale, m.k_mean};
}

// With key_block > 0 also the sums of k over every key_block tokens (the block map's key side): in the partial
// kernel's MMAs where key_block is a multiple of its 32-token tiles (each chunk then starts on a key block),
// else by the block map's pool kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sla_linear_state_cuda(const at::Tensor& k, const at::Tensor& v,
                                                                      const at::Tensor& proj_weight,
                                                                      const std::string& layout, int64_t key_block) {
  const auto [sk, sv] = check_pair(k, "k", v, "v", layout);
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), "v: expected shape ", dims_str(k.sizes()), " (like k), got ",
                    dims_str(v.sizes()));
  TORCH_CHECK_TYPE(proj_weight.scalar_type() == c10::kFloat, "proj_weight: expected dtype float32, got ",
                   dtype_name(proj_weight.scalar_type()));
  check_cuda_tensor(proj_weight, "proj_weight", k.device());
  TORCH_CHECK_VALUE(proj_weight.sizes() == c10::IntArrayRef({sk.d, sk.d}) && proj_weight.is_contiguous(),
                    "proj_weight: expected a contiguous tensor of shape ", dims_str({sk.d, sk.d}), ", got shape ",
                    dims_str(proj_weight.sizes()));
  TORCH_CHECK_VALUE(key_block >= 0 && key_block <= 1024, "key_block: expected 0 (no key sums) or a block size <= "
                    "1024, got ", num(key_block));
  const c10::cuda::CUDAGuard guard(k.device());
  const int num_sms = at::cuda::getDeviceProperties(k.device().index())->multiProcessorCount;
  const int64_t tiles = (sk.n + sla::kLinTile - 1) / sla::kLinTile;
  int resident = 0;  // co-resident CTAs of the partial kernel
  TD_DISPATCH_HEAD_DIM(sk.d, D, [&] { resident = sla_linear_resident_ctas<D>(k.scalar_type() == c10::kBFloat16, num_sms); });
  // Whole waves: at most kLinWaves x resident CTAs in all (rounding the split count up would start a
  // nearly empty extra wave).
  const int64_t target = std::max<int64_t>(1, int64_t(sla::kLinWaves) * resident / (sk.b * sk.h));
  const bool fused_sums = key_block > 0 && key_block % sla::kLinTile == 0;
  const int64_t block_tiles = fused_sums ? key_block / sla::kLinTile : 1;
  int64_t per_split = std::max<int64_t>(sla::kLinMinTiles, (tiles + target - 1) / target);
  per_split = (per_split + block_tiles - 1) / block_tiles * block_tiles;  // chunks start on key blocks
  const int64_t splits = (tiles + per_split - 1) / per_split;
  const int64_t mk = key_block > 0 ? (sk.n + key_block - 1) / key_block : 0;
  at::Tensor k_sums = at::empty({sk.b, sk.h, mk, sk.d}, k.options().dtype(at::kFloat));
  at::Tensor lin = at::empty({sk.b, sk.h, sk.d + 8, sk.d}, k.options().dtype(at::kHalf));
  at::Tensor partial = at::empty({sk.b * sk.h * splits * sk.d * (sk.d + 9)}, k.options().dtype(at::kFloat));
  at::Tensor v_amax = at::empty({sk.b, sk.h, sk.d}, k.options().dtype(at::kFloat));
  SlaLinearParams p{};
  p.k = view_of(k, sk, layout);
  p.v = view_of(v, sv, layout);
  p.heads = static_cast<int>(sk.h);
  p.slices = static_cast<int>(sk.b * sk.h);
  p.splits = static_cast<int>(splits);
  p.tiles_per_split = static_cast<int>(per_split);
  p.partial = partial.data_ptr<float>();
  p.proj_weight = proj_weight.data_ptr<float>();
  p.lin = reinterpret_cast<uint16_t*>(lin.data_ptr());
  p.v_amax = v_amax.data_ptr<float>();
  p.k_sums = fused_sums ? k_sums.data_ptr<float>() : nullptr;
  p.key_block_tiles = static_cast<int>(block_tiles);
  p.mk = static_cast<int>(mk);
  p.bf16 = k.scalar_type() == c10::kBFloat16;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  TD_DISPATCH_HEAD_DIM(sk.d, D, [&] {
    launch_sla_linear_state<D>(p, static_cast<int>(sk.b), stream);
    if (mk > 0 && !fused_sums)
      launch_sla_pool<D>(p.k, p.heads, p.bf16, static_cast<int>(key_block), static_cast<int>(mk),
                         k_sums.data_ptr<float>(), false, static_cast<int>(sk.b), stream);
  });
  return {lin, v_amax, k_sums};
}

}  // namespace td
