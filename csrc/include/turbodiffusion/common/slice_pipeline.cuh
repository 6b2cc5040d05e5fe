// Persistent two-phase processing of "slices" (one (batch, head) of a [B, H, N, D] tensor) whose
// second phase needs a reduction over the whole slice from the first: the mean of K for smoothing,
// the per-channel amax of V.
//
// Reading the tensor twice from HBM would cost 2 reads + 1 write instead of 1 + 1. Instead, a group
// of co-resident CTAs (a cooperative launch guarantees co-residency, so spinning cannot deadlock)
// works on one slice at a time: phase 1 of slice j+1 runs before phase 2 of slice j, so the barrier
// of slice j is almost always passed on arrival, and phase 2 re-reads a slice that was read a moment
// ago and still sits in L2 (two slices in flight per group: 17 MB at Wan-1.3B-480p, 39 MB at
// Wan-14B-720p, under the H100's 50 MB L2).
#pragma once
#include <cuda_runtime.h>

namespace td {

struct SliceGroups {
  int num_groups;     // slices are dealt round-robin to groups
  int group_size;     // CTAs per group; they split a slice's tiles
  unsigned* arrived;  // [num_slices] arrival counters, zero-initialised by the launcher
};

// Signals that this CTA's phase-1 contribution to `slice` is globally visible.
__device__ __forceinline__ void slice_arrive(const SliceGroups& g, int slice) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // cumulative: orders the whole CTA's reductions (seen through the barrier)
    atomicAdd(&g.arrived[slice], 1u);
  }
}

// Waits until every CTA of the group has arrived at `slice`; reads after it must bypass L1 (__ldcg).
__device__ __forceinline__ void slice_wait(const SliceGroups& g, int slice) {
  if (threadIdx.x == 0) {
    unsigned seen;
    while (true) {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(&g.arrived[slice]) : "memory");
      if (seen >= static_cast<unsigned>(g.group_size)) break;
      __nanosleep(64);
    }
  }
  __syncthreads();
}

// Runs phase1(slice) / phase2(slice) for this CTA's slices, software-pipelined by one slice.
template <typename Phase1, typename Phase2>
__device__ __forceinline__ void run_slice_pipeline(const SliceGroups& g, int num_slices, Phase1&& phase1,
                                                   Phase2&& phase2) {
  const int group = blockIdx.x / g.group_size;
  int prev = -1;
  for (int s = group;; s += g.num_groups) {
    const bool have = s < num_slices;
    if (have) {
      phase1(s);
      slice_arrive(g, s);
    }
    if (prev >= 0) {
      slice_wait(g, prev);
      phase2(prev);
    }
    if (!have) break;
    prev = s;
  }
}

}  // namespace td
