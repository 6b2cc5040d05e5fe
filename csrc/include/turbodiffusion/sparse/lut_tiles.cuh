// Block-sparse attention pieces shared by the attention kernels (ARCHITECTURE §4.2-4.3): the KV-tile
// sequence a CTA walks (all tiles, or the tiles of the key blocks its query block's LUT lists), and
// SLA's linear term added in the epilogue.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "turbodiffusion/attention/params.h"
#include "turbodiffusion/common/launch.cuh"
#include "turbodiffusion/common/sm80_primitives.cuh"
#include "turbodiffusion/common/vec.cuh"

namespace td {
namespace sla_detail {

// Dense: tiles 0 .. num_tiles - 1 of kTileKeys keys each.
template <int kTileKeys>
struct DenseTiles {
  static constexpr int hi = -1;  // (no second tile: PairTiles' interface)
  int i, num_tiles;
  __device__ DenseTiles(const AttnInt8Fp8Params& p, int64_t /*slice*/, int /*q_block*/)
      : i(0), num_tiles(static_cast<int>((p.nk + kTileKeys - 1) / kTileKeys)) {}
  __device__ __forceinline__ int next() { return i < num_tiles ? i++ : -1; }
};

// Sparse: for each LUT entry (in LUT order, the partial last block moved last) the tiles of that key
// block that hold at least one key (< nk), so no tile is entirely masked and the first one gives every
// row a finite max. Entries outside [0, Mk) are skipped (never read out of bounds); count 0 walks
// nothing, and so does a query block past the last (q_block >= sparse_q_blocks, rows >= nq: never
// asked for by the kernels, which take query rows < nq only). Every thread that walks a query block holds
// the same state, so the loop stays uniform. slice = b * heads + h.
// The tile size is a template parameter and the key count is kept as a tile count, so the walker holds
// as few registers as possible (the sm90 kernel at D = 128 has none to spare).
template <int kTileKeys>
struct SparseTiles {
  const int32_t* lut;
  int count, e, j, tiles_per_block, k_blocks;
  int partial_block;  // the last key block when nk is not a multiple of blkk (its tiles go last), else -1
  int deferred;       // LUT entries naming partial_block, walked after all others
  int key_tiles;      // tiles holding at least one key < nk
  __device__ SparseTiles(const AttnInt8Fp8Params& p, int64_t slice, int q_block)
      : lut(p.lut + (slice * p.sparse_q_blocks + q_block) * p.lut_width),
        count(q_block < p.sparse_q_blocks  // past the last block: rows >= nq, nothing to walk
                  ? min(p.lut_width, __ldg(p.count + slice * p.sparse_q_blocks + q_block))
                  : 0),
        e(0), j(0), tiles_per_block(p.blkk / kTileKeys), k_blocks(static_cast<int>((p.nk + p.blkk - 1) / p.blkk)),
        partial_block(p.nk % p.blkk ? static_cast<int>(p.nk / p.blkk) : -1), deferred(0),
        key_tiles(static_cast<int>((p.nk + kTileKeys - 1) / kTileKeys)) {}
  // The partial block's tiles come last (its masked tail then ends the walk, the order the emulation
  // reference.sla.attention_int8_fp8_sparse_mma uses: online softmax in FP8 depends on the order).
  __device__ __forceinline__ int next() {
    while (e < count) {
      const int kb = __ldg(lut + e);
      if (kb == partial_block) {
        ++deferred;
        ++e;
        continue;
      }
      const int tile = kb * tiles_per_block + j;
      if (kb >= 0 && kb < k_blocks && j < tiles_per_block) {
        ++j;
        return tile;
      }
      ++e;
      j = 0;
    }
    while (deferred > 0) {
      const int tile = partial_block * tiles_per_block + j;
      if (j < tiles_per_block && tile < key_tiles) {
        ++j;
        return tile;
      }
      --deferred;
      j = 0;
    }
    return -1;
  }
  // How many tiles the walk has, counted by a warp (lane 0..31) in parallel over the LUT row (the walk itself
  // reads one entry after another): each valid entry gives its block's tiles, the partial block those < key_tiles.
  __device__ __forceinline__ int count_warp(int lane) const {
    int n = 0;
    for (int x = lane; x < count; x += 32) {
      const int kb = __ldg(lut + x);
      n += kb < 0 || kb >= k_blocks ? 0 : kb == partial_block ? key_tiles - kb * tiles_per_block : tiles_per_block;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
    return n;
  }
};

// The sm90 kernel's sparse walk: SparseTiles<64> two at a time, so that every 128-key tile of the kernel
// holds two consecutive 64-key tiles of the walk, whatever the key blocks (next() the first, `hi` the
// second; hi = -1 where the walk has an odd number of tiles: the upper half of the last tile is masked).
// That is the emulation's online softmax in 128-key steps over the kept keys in walk order
// (reference.sla.attention_int8_fp8_sparse_sm90). With blkk % 128 == 0 the pairs are the block's aligned
// 128-key tiles, and with a full LUT the dense kernel's tiles.
struct PairTiles {
  SparseTiles<64> tiles;
  int hi = -1;
  __device__ PairTiles(const AttnInt8Fp8Params& p, int64_t slice, int q_block) : tiles(p, slice, q_block) {}
  __device__ __forceinline__ int next() {
    const int lo = tiles.next();
    hi = lo >= 0 ? tiles.next() : -1;
    return lo;
  }
  // The walk's length in pairs (a warp's count, every lane gets it).
  __device__ __forceinline__ int count_warp(int lane) const { return (tiles.count_warp(lane) + 1) / 2; }
};

// SLA's linear term for a warp's 16 query rows, evaluated with tensor cores in the epilogue:
//   phi(q) (H W^T) / (1e-5 + phi(q) . z) + b  =  (e . G) / den + b,  den = eps sum(e) / nk + e . zeta
// with e = exp(q - max q) (phi(q) = e / sum e: the 1 / sum e cancels), G = lin rows < D (H W^T / nk)
// and zeta = lin row D (z / nk). e is rounded to fp16 ((0, 1]: 11-bit mantissa) to be the A operand
// (the mma.sync m16n8k16 A fragment, which is also the per-warp A fragment of a 16-bit wgmma); the
// products accumulate in fp32. Lane (g, t) holds the A fragment of rows g and g + 8: channels
// 16 s + 2 t + {0, 1, 8, 9} for every k16 step s, which the lane reads from q itself.
// B (lin) comes in one of two layouts, made from sla_linear_state's lin by a small kernel per call:
//  - LinFragments (mma.sync kernel, read from global memory by LinFragmentsB): a warp reads the B
//    fragments of two k16 steps as 512 contiguous bytes (16 per lane); read straight from lin's rows,
//    each 4-byte fragment piece touched 8 rows, and the epilogue was bound by L1 wavefronts.
//  - LinWgmma (sm90 kernel, bulk-copied into shared memory and read by wgmma: sm90_attn::LinWgmmaB).
template <int D>
struct LinFragments {
  static constexpr int kBlocks = D / 8 + 1;  // n8 blocks of lin's D + 8 rows
  static constexpr int kPairs = D / 32;      // pairs of k16 steps
  static constexpr int64_t kPerSlice = int64_t(kBlocks) * kPairs * 32;  // uint4 per (b, h)
};

// lin [slices, D + 8, D] fp16 -> frag [slices, D / 8 + 1, D / 32, 32 lanes] uint4: lane (g, t) of n8 block
// n, step pair u holds row 8 n + g, channels 32 u + 2 t + {0, 1 | 8, 9 | 16, 17 | 24, 25}, i.e. the
// (b0, b1) B registers of k16 steps 2 u and 2 u + 1.
template <int D>
__global__ void lin_fragments_kernel(const __half* __restrict__ lin, uint4* __restrict__ frag, int64_t total) {
  using F = LinFragments<D>;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int lane = static_cast<int>(i % 32), g = lane / 4, t = lane % 4;
  const int u = static_cast<int>((i / 32) % F::kPairs), n = static_cast<int>((i / (32 * F::kPairs)) % F::kBlocks);
  const int64_t slice = i / F::kPerSlice;
  const uint32_t* row = reinterpret_cast<const uint32_t*>(lin + (slice * (D + 8) + 8 * n + g) * D + 32 * u + 2 * t);
  frag[i] = make_uint4(__ldg(row), __ldg(row + 4), __ldg(row + 8), __ldg(row + 12));
}

// The wgmma layout: per slice D / 64 column halves, each [D + 8 rows][64 channels] fp16 = rows of 128 bytes
// whose 16-byte chunks are permuted like TMA's 128-byte swizzle (chunk j of row r at j ^ (r % 8)). Copied
// byte for byte into 1024-aligned shared memory, a half is a K-major tile that kmajor_desc<128> describes:
// rows 0..D-1 the N = D operand of e . G, rows D..D+7 (zeta) one more 8-row swizzle atom (1024 bytes).
template <int D>
struct LinWgmma {
  static constexpr int kHalves = D / 64;
  static constexpr uint32_t kHalfBytes = (D + 8) * 128;
  static constexpr uint32_t kBytes = kHalves * kHalfBytes;  // per slice (= LinFragments' size)
};

template <int D>
__global__ void lin_wgmma_kernel(const __half* __restrict__ lin, uint4* __restrict__ out, int64_t total) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // destination chunk
  if (i >= total) return;
  const int j = static_cast<int>(i % 8), r = static_cast<int>((i / 8) % (D + 8));
  const int half = static_cast<int>((i / (8 * (D + 8))) % LinWgmma<D>::kHalves);
  const int64_t slice = i / (8 * (D + 8) * LinWgmma<D>::kHalves);
  const uint32_t* src =  // (4-byte loads: lin need only be 4-byte aligned)
      reinterpret_cast<const uint32_t*>(lin + (slice * (D + 8) + r) * D + 64 * half + 8 * (j ^ (r % 8)));
  out[i] = make_uint4(__ldg(src), __ldg(src + 1), __ldg(src + 2), __ldg(src + 3));
}

// Host launcher: lin in the layout the kernel wants (wgmma: LinWgmma, else LinFragments), on `stream`.
// out: LinWgmma<D>::kBytes per slice either way.
template <int D>
void launch_lin_layout(const __half* lin, uint4* out, int64_t slices, bool wgmma, cudaStream_t stream) {
  const int64_t total = slices * (LinWgmma<D>::kBytes / 16);
  static_assert(LinWgmma<D>::kBytes == LinFragments<D>::kPerSlice * 16, "both layouts hold lin's D + 8 rows");
  if (total == 0) return;
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>(cdiv(total, kThreads));
  if (wgmma) lin_wgmma_kernel<D><<<blocks, kThreads, 0, stream>>>(lin, out, total);
  else lin_fragments_kernel<D><<<blocks, kThreads, 0, stream>>>(lin, out, total);
  TD_CHECK_LAUNCH();
}

// Element e of a raw pair of bf16 / fp16 values, as float (exact).
template <typename T>
__device__ __forceinline__ float pair_elem(uint32_t word, int e) {
  return to_float(reinterpret_cast<const T*>(&word)[e]);
}

// A warp's unquantized query rows as lane (g, t) holds the m16n8k16 A fragment: rows g and g + 8 (q_lo,
// q_hi; nullptr past nq: zeros), channels 16 s + 2 t + 8 hf + {0, 1} as raw pairs w[r][s][hf], read 4
// bytes at a time; qkm[r] = the lane's part of q . k_mean (km) over those channels, in a fixed order
// (the caller sums the quad). The attention epilogue reads q this way with and without SLA's linear term,
// so the LSE does not depend on it. kSmemRows: the rows are copies in shared memory (plain loads), else q in
// global memory (read-only loads).
template <int D, typename T, bool kSmemRows = false>
__device__ __forceinline__ void load_q_pairs(const T* q_lo, const T* q_hi, const float* km, int t,
                                             uint32_t (&w)[2][D / 16][2], float (&qkm)[2]) {
  const T* rows[2] = {q_lo, q_hi};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    qkm[r] = 0.f;
#pragma unroll
    for (int s = 0; s < D / 16; ++s)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int c = 16 * s + 2 * t + 8 * hf;
        const unsigned int* pair = reinterpret_cast<const unsigned int*>(rows[r] + c);
        w[r][s][hf] = !rows[r] ? 0u : kSmemRows ? *pair : __ldg(pair);
        // (scalar loads: k_mean is only required contiguous, not 8-byte aligned)
        qkm[r] = __fmaf_rn(pair_elem<T>(w[r][s][hf], 0), __ldg(km + c), qkm[r]);
        qkm[r] = __fmaf_rn(pair_elem<T>(w[r][s][hf], 1), __ldg(km + c + 1), qkm[r]);
      }
  }
}

// The mma.sync kernel's B source: the slice's LinFragments in global memory.
template <int D>
struct LinFragmentsB {
  const uint4* frag = nullptr;  // the slice's fragments (nullptr: no linear term)
  static constexpr int kSteps = D / 16;
  __device__ __forceinline__ bool active() const { return frag != nullptr; }
  // c (+)= e . lin[8 n .. 8 n + 7]^T for the lane's rows (C fragment of n8 block n).
  template <bool kAccumulate>
  __device__ __forceinline__ void block(const uint32_t (&a)[kSteps][4], int n, float (&c)[4]) const {
    using F = LinFragments<D>;
    const uint4* f = frag + n * F::kPairs * 32 + threadIdx.x % 32;
    if (!kAccumulate) c[0] = c[1] = c[2] = c[3] = 0.f;
#pragma unroll
    for (int u = 0; u < F::kPairs; ++u) {
      const uint4 b = f[32 * u];
      mma_16bit<false>(c, a[2 * u], b.x, b.y);
      mma_16bit<false>(c, a[2 * u + 1], b.z, b.w);
    }
  }
  // c = e . zeta (the n8 block of rows D..D+7; column 0 lands in lane t = 0 of each quad).
  __device__ __forceinline__ void zeta(const uint32_t (&a)[kSteps][4], float (&c)[4]) const { block<false>(a, D / 8, c); }
  // o += e . G, every n8 block (16 independent MMA chains; no store in between, so the loads overlap).
  __device__ __forceinline__ void accumulate(const uint32_t (&a)[kSteps][4], float (&o)[D / 8][4]) const {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) block<true>(a, n, o[n]);
  }
};

template <int D>
struct LinearTerm {
  static constexpr int kSteps = D / 16;
  uint32_t a[kSteps][4];
  float den[2], inv_den[2];

  // q_lo / q_hi: the unquantized rows g and g + 8 of the warp (nullptr past nq: those rows get e = 1 and are
  // never stored), read once by load_q_pairs, which also gives the lane's part of q . k_mean (qkm). LinB:
  // the B source (LinFragmentsB, sm90_attn::LinWgmmaB), whose zeta() gives e . zeta.
  template <bool kBf16, bool kSmemRows, typename LinB>
  __device__ __forceinline__ void load(const void* q_lo, const void* q_hi, const AttnInt8Fp8Params& p, int64_t slice,
                                       const LinB& lin_b, int lane, float (&qkm)[2]) {
    using T = std::conditional_t<kBf16, __nv_bfloat16, __half>;
    const int t = lane % 4;
    float m[2] = {-INFINITY, -INFINITY}, sum[2] = {0.f, 0.f};
    // Raw pairs (half the registers of floats; the exact conversion is redone in the exp pass).
    uint32_t w[2][kSteps][2];
    load_q_pairs<D, T, kSmemRows>(static_cast<const T*>(q_lo), static_cast<const T*>(q_hi), p.k_mean + slice * D, t, w,
                                  qkm);
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int s = 0; s < kSteps; ++s)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
          m[r] = fmaxf(m[r], fmaxf(pair_elem<T>(w[r][s][hf], 0), pair_elem<T>(w[r][s][hf], 1)));
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m[r] = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 1));
      m[r] = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 2));
    }
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      __half2 h[2][2];  // [row][low / high 8 channels]
#pragma unroll
      for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const float e0 = __expf(pair_elem<T>(w[r][s][hf], 0) - m[r]);
          const float e1 = __expf(pair_elem<T>(w[r][s][hf], 1) - m[r]);
          sum[r] += e0 + e1;
          h[r][hf] = __floats2half2_rn(e0, e1);
        }
      a[s][0] = *reinterpret_cast<uint32_t*>(&h[0][0]);
      a[s][1] = *reinterpret_cast<uint32_t*>(&h[1][0]);
      a[s][2] = *reinterpret_cast<uint32_t*>(&h[0][1]);
      a[s][3] = *reinterpret_cast<uint32_t*>(&h[1][1]);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
      sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
    }
    float c[4];
    lin_b.zeta(a, c);
    const int src = lane & ~3;
    const float ez[2] = {__shfl_sync(0xffffffffu, c[0], src), __shfl_sync(0xffffffffu, c[2], src)};
    const float eps = 1e-5f / static_cast<float>(p.nk);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      den[r] = fmaf(eps, sum[r], ez[r]);  // >= 1e-5 / nk: e <= 1 with max e = 1, zeta >= 0
      inv_den[r] = 1.f / den[r];
    }
  }
};

}  // namespace sla_detail
}  // namespace td
