// Persistent two-phase processing of "slices" (one (batch, head) of a [B, H, N, D] tensor) whose
// second phase needs a reduction over the whole slice from the first: the per-channel amax of V (K's
// mean is cheaper as a reduction kernel before a single pass that reads k again: quantize_qk_int8.cuh).
//
// Reading the tensor twice from HBM would cost 2 reads + 1 write instead of 1 + 1. Instead a group
// of co-resident CTAs (a cooperative launch guarantees co-residency, so spinning cannot deadlock)
// splits a slice's tiles, one tile per CTA, and keeps its tile in shared memory across the group
// barrier: phase 2 reads shared memory, not HBM. Several groups work on different slices at once, so
// one group's barrier wait overlaps another's loads. Slices longer than the grid can hold (more
// tiles than co-resident CTAs, N > ~100k tokens at D = 128 on an H100) fall back to re-reading
// tiles in phase 2.
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
      __nanosleep(32);
    }
  }
  __syncthreads();
}

// Runs phase1(slice), the group barrier, then phase2(slice) for each of this CTA's slices.
template <typename Phase1, typename Phase2>
__device__ __forceinline__ void run_slices(const SliceGroups& g, int num_slices, Phase1&& phase1, Phase2&& phase2) {
  for (int s = blockIdx.x / g.group_size; s < num_slices; s += g.num_groups) {
    phase1(s);
    slice_arrive(g, s);
    slice_wait(g, s);
    phase2(s);
  }
}

}  // namespace td
