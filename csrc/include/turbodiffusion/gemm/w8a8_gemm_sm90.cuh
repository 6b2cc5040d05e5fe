// w8a8_gemm_sm90: INT8 / FP8 E4M3 GEMM for Hopper (sm_90a) built from CUTLASS 3.x collectives:
// TMA loads, wgmma, warp-specialized cooperative persistent kernel, and the scale + bias epilogue as an
// epilogue visitor tree (EVT), so the int32 / float32 accumulator never leaves registers unscaled:
//
//   y[m, n] = fma(a_scale[m], float(acc[m, n]) * w_scale[n], bias[n])   -> bf16 / fp16, TMA store
//
// a_scale is a column broadcast (one value per output row, read straight from global memory by the
// threads that own the row), w_scale and bias are row broadcasts (staged once per tile in shared
// memory). A null bias pointer reads as 0 (EnableNullptr), so one kernel serves both cases.
// The CTA tile and schedule come from the tables in heuristics.h (one instantiation per table entry,
// each in its own csrc/ops/gemm_sm90_<type>_t<index>.cu so the builds run in parallel; candidate tiles
// only in a TD_GEMM_ALL_CONFIGS=1 build); raster order and swizzle are run-time arguments in
// W8A8GemmParams. Torch-free: csrc/ops/gemm.cu fills the params.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_compute_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_load_tma_warpspecialized.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/float8.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/cluster_launch.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "turbodiffusion/common/cuda_check.h"
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/gemm/heuristics.h"
#include "turbodiffusion/gemm/params.h"

namespace td {
namespace sm90_gemm {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

// The kernel type for one (input, output) element pair and one tile-table entry.
template <class ElementAB, class ElementOut, gemm::Sm90Tile kTile>
struct Kernel {
  static_assert(std::is_same_v<ElementAB, int8_t> || std::is_same_v<ElementAB, cutlass::float_e4m3_t>,
                "w8a8_gemm_sm90: inputs are int8 or float8_e4m3");
  static_assert(std::is_same_v<ElementOut, cutlass::bfloat16_t> || std::is_same_v<ElementOut, cutlass::half_t>,
                "w8a8_gemm_sm90: output is bf16 or fp16");
  static constexpr bool kFp8 = std::is_same_v<ElementAB, cutlass::float_e4m3_t>;
  static_assert(kTile.k == 128, "w8a8_gemm_sm90: 128 bytes of K per stage (the 128-byte TMA swizzle)");
  static_assert(kTile.cooperative ? kTile.m % 128 == 0 : kTile.m % 64 == 0,
                "w8a8_gemm_sm90: tile M is 64 per consumer warpgroup (x2 when cooperative)");
  static_assert(gemm::sm90_acc_registers(kTile, kFp8) <= (kFp8 ? 192 : 128),
                "w8a8_gemm_sm90: accumulators would not fit the consumers' 232 registers (heuristics.h)");
  using TileShape = Shape<Int<kTile.m>, Int<kTile.n>, Int<kTile.k>>;
  using ClusterShape = Shape<Int<kTile.cluster_m>, _1, _1>;
  // INT8 accumulates exactly in int32 (|acc| < 2^31 for K <= 131072); FP8 in float32.
  using ElementAcc = std::conditional_t<kFp8, float, int32_t>;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;
  // 16-byte global accesses: 16 8-bit inputs, 8 16-bit outputs (hence K % 16 == 0, N % 8 == 0).
  static constexpr int kAlignAB = 16;
  static constexpr int kAlignOut = 16 / sizeof(ElementOut);

  // EVT: Fma(a_scale, Mul(acc, w_scale), bias). Compute nodes convert their inputs to float first
  // (int32 -> float32 rounds to nearest, exact below 2^24).
  using AScale = fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>;
  using WScale = fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>;
  using Bias = fusion::Sm90RowBroadcast<0, TileShape, ElementOut, float, Stride<_0, _1, int64_t>>;
  using AccTimesW = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::multiplies, float, float, kRound>,
                                    fusion::Sm90AccFetch, WScale>;
  using Epilogue = fusion::Sm90EVT<fusion::Sm90Compute<cutlass::homogeneous_multiply_add, ElementOut, float, kRound>,
                                   AScale, AccTimesW, Bias>;

  using KernelSchedule = std::conditional_t<kTile.cooperative, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                            cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
  using EpilogueSchedule = std::conditional_t<kTile.cooperative, cutlass::epilogue::TmaWarpSpecializedCooperative,
                                              cutlass::epilogue::TmaWarpSpecialized>;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float,
      void, cutlass::layout::RowMajor, kAlignOut,          // no C operand: the bias is a broadcast
      ElementOut, cutlass::layout::RowMajor, kAlignOut,
      EpilogueSchedule, Epilogue>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementAB, cutlass::layout::RowMajor, kAlignAB,     // a [M, K], K-major
      ElementAB, cutlass::layout::ColumnMajor, kAlignAB,  // w [N, K] = B [K, N] column-major, K-major
      ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                          CollectiveEpilogue, cutlass::gemm::PersistentScheduler>;
};

// Our own __global__ around the CUTLASS kernel (instead of cutlass::device_kernel): its body exists
// only in the sm_90a device pass, so the 120a pass of the one-build extension compiles an empty
// function instead of a second copy of the whole kernel, and the kernel carries our name in
// resource reports.
template <class GemmKernel>
__device__ __forceinline__ void run_kernel(typename GemmKernel::Params const& params) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ char smem[];
  GemmKernel op;
  op(params, smem);
#endif
}

// Tiles of the default build (heuristics.h default_build): must not spill (scripts/check_spills.py).
template <class GemmKernel>
__global__ void __launch_bounds__(GemmKernel::MaxThreadsPerBlock, GemmKernel::MinBlocksPerMultiprocessor)
    w8a8_gemm_sm90_kernel(CUTLASS_GRID_CONSTANT typename GemmKernel::Params const params) {
  run_kernel<GemmKernel>(params);
}

// Sweep candidates (compiled only with TD_GEMM_ALL_CONFIGS=1), under their own name so that a spill
// allowance for them never covers a default tile.
// TD_SPILL_OK(w8a8_gemm_sm90_candidate_kernel): FP8 tile 2 (64 x 192 ping-pong, 2 x 96 float32
// accumulators) spills 8 B (one 64-bit value stored once, loaded twice; nvcc 13.0) at the consumers'
// 232-register cap; the sweep measures it as built. A candidate is promoted to default_build only if it
// compiles without spills under w8a8_gemm_sm90_kernel.
template <class GemmKernel>
__global__ void __launch_bounds__(GemmKernel::MaxThreadsPerBlock, GemmKernel::MinBlocksPerMultiprocessor)
    w8a8_gemm_sm90_candidate_kernel(CUTLASS_GRID_CONSTANT typename GemmKernel::Params const params) {
  run_kernel<GemmKernel>(params);
}

inline void check_cutlass(cutlass::Status s, const char* what) {
  if (s != cutlass::Status::kSuccess) {
    throw std::runtime_error(std::string("w8a8_gemm_sm90: ") + what + " failed: " + cutlassGetStatusString(s));
  }
}

}  // namespace sm90_gemm

// Launch on `stream`. Requires M, N, K > 0, K % 16 == 0, N % 8 == 0, 16-byte aligned base pointers
// and row strides (checked by the launcher). No workspace: the persistent scheduler needs none.
template <class ElementAB, class ElementOut, gemm::Sm90Tile kTile>
void launch_w8a8_gemm_sm90(const W8A8GemmParams& p, cudaStream_t stream) {
  using K = sm90_gemm::Kernel<ElementAB, ElementOut, kTile>;
  using GemmKernel = typename K::GemmKernel;
  using StrideA = typename GemmKernel::StrideA;
  using StrideB = typename GemmKernel::StrideB;
  using StrideC = typename GemmKernel::StrideC;
  using StrideD = typename GemmKernel::StrideD;
  const int m = static_cast<int>(p.m), n = static_cast<int>(p.n), k = static_cast<int>(p.k);

  StrideA stride_a = cutlass::make_cute_packed_stride(StrideA{}, cute::make_shape(m, k, 1));
  cute::get<0>(stride_a) = p.lda;
  StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, cute::make_shape(n, k, 1));
  cute::get<0>(stride_b) = p.ldw;
  StrideC stride_c = cutlass::make_cute_packed_stride(StrideC{}, cute::make_shape(m, n, 1));
  StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, cute::make_shape(m, n, 1));
  cute::get<0>(stride_d) = p.ldo;

  typename GemmKernel::Arguments args{};
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = {m, n, k, 1};
  args.mainloop.ptr_A = static_cast<const ElementAB*>(p.a);
  args.mainloop.dA = stride_a;
  args.mainloop.ptr_B = static_cast<const ElementAB*>(p.w);
  args.mainloop.dB = stride_b;
  args.epilogue.ptr_C = nullptr;
  args.epilogue.dC = stride_c;
  args.epilogue.ptr_D = static_cast<ElementOut*>(p.out);
  args.epilogue.dD = stride_d;
  // {a_scale, {acc, w_scale, mul}, bias, fma}: children's arguments first, the node's last.
  args.epilogue.thread = {
      {p.a_scale, 0.f, {}},
      {{}, {p.w_scale, 0.f, {}}, {}},
      {static_cast<const ElementOut*>(p.bias), ElementOut(0), {}},
      {}};
  args.hw_info.device_id = p.device;
  args.hw_info.sm_count = p.sm_count;
  using Raster = typename GemmKernel::TileScheduler::RasterOrderOptions;
  args.scheduler.raster_order = p.raster_along_m ? Raster::AlongM : Raster::AlongN;
  args.scheduler.max_swizzle_size = p.swizzle;

  if (!GemmKernel::can_implement(args)) {
    throw std::invalid_argument("w8a8_gemm_sm90: CUTLASS cannot implement this problem (alignment?)");
  }
  if (GemmKernel::get_workspace_size(args) != 0) {
    throw std::runtime_error("w8a8_gemm_sm90: unexpected workspace requirement");
  }
  typename GemmKernel::Params params = GemmKernel::to_underlying_arguments(args, nullptr);
  const dim3 grid = GemmKernel::get_grid_shape(params);
  const dim3 block = GemmKernel::get_block_shape();
  const dim3 cluster(cute::size<0>(typename K::ClusterShape{}), cute::size<1>(typename K::ClusterShape{}), 1);
  constexpr int smem = GemmKernel::SharedStorageSize;
  const void* kernel;
  if constexpr (kTile.default_build) {
    kernel = reinterpret_cast<const void*>(&sm90_gemm::w8a8_gemm_sm90_kernel<GemmKernel>);
  } else {
    kernel = reinterpret_cast<const void*>(&sm90_gemm::w8a8_gemm_sm90_candidate_kernel<GemmKernel>);
  }
  allow_dynamic_shared_memory(kernel, smem);  // once per (kernel, device)
  void* kernel_params[] = {&params};
  sm90_gemm::check_cutlass(cutlass::ClusterLauncher::launch(grid, cluster, block, smem, stream, kernel, kernel_params),
                           "cluster launch");
  TD_CHECK_LAUNCH();
}

// Entry point of tile-table entry kTile of one input type (int8, or FP8 E4M3 when kFp8), bf16 or fp16
// output by p.out_bf16; explicitly instantiated once per entry in csrc/ops/gemm_sm90_*_t<kTile>.cu.
template <bool kFp8, int kTile>
void w8a8_gemm_sm90(const W8A8GemmParams& p, cudaStream_t stream) {
  static_assert(kTile >= 0 && kTile < (kFp8 ? gemm::kSm90Fp8TileCount : gemm::kSm90Int8TileCount));
  using ElementAB = std::conditional_t<kFp8, cutlass::float_e4m3_t, int8_t>;
  constexpr gemm::Sm90Tile tile = kFp8 ? gemm::kSm90Fp8Tiles[kTile] : gemm::kSm90Int8Tiles[kTile];
  if (p.out_bf16) {
    launch_w8a8_gemm_sm90<ElementAB, cutlass::bfloat16_t, tile>(p, stream);
  } else {
    launch_w8a8_gemm_sm90<ElementAB, cutlass::half_t, tile>(p, stream);
  }
}

}  // namespace td
