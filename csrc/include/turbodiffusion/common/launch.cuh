// Launch helpers shared by the kernels' host code (torch-free).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "turbodiffusion/common/cuda_check.h"
#include "turbodiffusion/common/slice_groups.cuh"

namespace td {

constexpr int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Function attributes (cudaFuncSetAttribute) belong to the current device's context: a process that
// drives several GPUs must set them on each. The helpers below keep what they did per (kernel, device),
// so the driver calls run once per device instead of on every launch.
inline int current_device() {
  int device = 0;
  TD_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// Asks for the largest shared-memory carveout (the rest of the 256 KB stays L1): kernels that stage
// tiles in shared memory are otherwise limited to fewer CTAs per SM than their registers allow.
template <typename Kernel>
void prefer_shared_memory(Kernel kernel) {
  TD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                     cudaSharedmemCarveoutMaxShared));
}

// The int that `update` keeps per (kernel, device), -1 until it first sets it, updated under a lock
// (launches may come from several threads); returns its value. Each helper below has its own table.
template <typename Kernel, typename Update>
int per_kernel_and_device(Kernel kernel, Update update) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> slots;
  const std::lock_guard<std::mutex> lock(mutex);
  int& slot = slots.try_emplace({reinterpret_cast<const void*>(kernel), current_device()}, -1).first->second;
  update(slot);
  return slot;
}

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device (above 48 KB this
// must be asked for explicitly); max_carveout also asks for the largest carveout (several such CTAs
// per SM).
template <typename Kernel>
void allow_dynamic_shared_memory(Kernel kernel, int bytes, bool max_carveout = false) {
  per_kernel_and_device(kernel, [&](int& allowed) {  // the most bytes allowed so far
    if (allowed >= bytes) return;
    if (max_carveout) prefer_shared_memory(kernel);
    TD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    allowed = bytes;
  });
}

// CTAs of `kernel` (with `threads` threads) that fit on one SM of the current device, after asking for
// the largest shared carveout.
template <typename Kernel>
int ctas_per_sm(Kernel kernel, int threads) {
  return per_kernel_and_device(kernel, [&](int& per_sm) {
    if (per_sm >= 0) return;
    prefer_shared_memory(kernel);
    int n = 0;
    TD_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, 0));
    per_sm = n;
  });
}

// Sizes the co-resident grid of a slice-grouped kernel (slice_groups.cuh) and launches it
// cooperatively, which fails loudly instead of deadlocking if the grid could not be co-resident.
template <typename Kernel, typename... Args>
void launch_slice_groups(Kernel kernel, int threads, int num_sms, int slices, int tiles_per_slice,
                         unsigned* arrived, cudaStream_t stream, Args... args) {
  const int resident = std::max(1, ctas_per_sm(kernel, threads) * num_sms);
  SliceGroups g;
  g.group_size = static_cast<int>(std::min<int64_t>(tiles_per_slice, resident));
  // As many groups as fit, then as few as give the same number of rounds: 16 slices on 10 groups
  // would run a second round 60% full; on 8 groups both rounds are full.
  const int max_groups = std::max(1, std::min(slices, resident / g.group_size));
  const int rounds = static_cast<int>(cdiv(slices, max_groups));
  g.num_groups = static_cast<int>(cdiv(slices, rounds));
  g.arrived = arrived;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(g.num_groups * g.group_size);
  cfg.blockDim = dim3(threads);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  TD_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, args..., g));
}

}  // namespace td
