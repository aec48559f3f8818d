// Exact per-segment top-k of the visual tokens, and the ordered pass that writes the survivors.
// One 512-thread block per segment (a padded row, or a packed sequence between cu_seqlens).
//  1. Radix select, no sort: every visual token's score becomes a 32-bit order-preserving key
//     (common.cuh: NaN lowest, -0 == +0). Four passes build a 256-bin shared histogram of the
//     next 8 bits among the keys that match the prefix found so far, and pick the bin holding
//     the k-th largest key. After them T is the k-th largest key, and `need_eq` says how many
//     keys equal to T are kept: the lowest positions among them (the contract's tie rule).
//  2. Ordered pass over the segment in 512-token chunks: one block-wide exclusive scan of three
//     packed 10-bit counters (text, key > T, key == T) gives each token its rank among the
//     survivors; survivors write their position, position ids (every M-RoPE plane) and mask.
// Scales from 576 to 64k+ visual tokens per segment with no power-of-two padding.
// Memory traffic: 5 reads of the segment's scores and mask (4 B + 1 B a token, from L2), writes
// O(S') survivors. Integer atomics only: the result does not depend on scheduling.
#include <cub/block/block_scan.cuh>

#include "common.cuh"
#include "launch.h"

namespace v2drop::cuda {
namespace {

constexpr int kThreads = 512;  // chunk of the ordered pass; 10-bit counters hold up to 1023
using Scan = cub::BlockScan<uint32_t, kThreads>;

struct SegmentView {
  int64_t row, begin, end, k, out_begin;
  bool malformed;
};

__device__ SegmentView segment_of(const SelectArgs& a, int64_t seg) {
  SegmentView v{seg, 0, a.S, a.k, 0, false};
  if (a.cu != nullptr) {
    int64_t begin = a.cu[seg], end = a.cu[seg + 1];
    v.malformed = (seg == 0 && begin != 0) || end < begin || (seg == a.segments - 1 && end != a.S);
    begin = min(max(begin, int64_t{0}), a.S);
    end = min(max(end, begin), a.S);
    v = SegmentView{0, begin, end, a.k_per_seg[seg], begin - a.drop_before[seg], v.malformed};
  }
  return v;
}

__global__ void __launch_bounds__(kThreads) select_kernel(const SelectArgs a) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_prefix, s_remaining;
  __shared__ int s_visual;
  __shared__ typename Scan::TempStorage scan_storage;

  const int64_t seg = blockIdx.x;
  const SegmentView v = segment_of(a, seg);
  const float* scores = a.scores + v.row * a.sc_s0;
  const bool* mask = a.mask + v.row * a.m_s0;
  const int tid = threadIdx.x;

  // 1. radix select of the k-th largest key, 8 bits a pass, most significant first
  uint32_t prefix = 0, prefix_mask = 0, remaining = static_cast<uint32_t>(max(v.k, int64_t{0}));
  if (tid == 0) s_visual = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
    __syncthreads();
    int visual = 0;
    for (int64_t t = v.begin + tid; t < v.end; t += kThreads) {
      if (!mask[t * a.m_s1]) continue;
      const uint32_t key = rank_key(scores[t]);
      ++visual;
      if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    if (shift == 24) atomicAdd(&s_visual, visual);
    __syncthreads();
    if (tid == 0) {
      uint32_t above = 0;
      int bin = 255;
      for (; bin > 0 && above + hist[bin] < remaining; --bin) above += hist[bin];
      s_prefix = prefix | (static_cast<uint32_t>(bin) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    prefix_mask |= 255u << shift;
  }
  const uint32_t threshold = prefix;
  const uint32_t need_eq = remaining;  // keys == threshold to keep, lowest positions first
  if (tid == 0) {
    a.counts[seg] = v.malformed ? -1 : s_visual;
    if (a.cu_out != nullptr) {
      a.cu_out[seg] = static_cast<int32_t>(v.out_begin);
      if (seg == a.segments - 1) a.cu_out[a.segments] = static_cast<int32_t>(a.S_out);
    }
  }

  // 2. ordered pass: ranks among survivors from one scan of packed (text, gt, eq) counters
  const bool drop_mode = a.keep_pos != nullptr;
  uint32_t seen_text = 0, seen_gt = 0, seen_eq = 0;  // before the current chunk
  for (int64_t base = v.begin; base < v.end; base += kThreads) {
    const int64_t t = base + tid;
    const bool valid = t < v.end;
    const bool vis = valid && mask[t * a.m_s1];
    const uint32_t key = vis ? rank_key(scores[t]) : 0u;
    const bool is_text = valid && !vis, is_gt = vis && key > threshold, is_eq = vis && key == threshold;
    const uint32_t mine = uint32_t{is_text} | (uint32_t{is_gt} << 10) | (uint32_t{is_eq} << 20);
    uint32_t before, total;
    Scan(scan_storage).ExclusiveSum(mine, before, total);
    const uint32_t text_b = seen_text + (before & 1023u), gt_b = seen_gt + ((before >> 10) & 1023u);
    const uint32_t eq_b = seen_eq + (before >> 20);
    const bool kept_visual = is_gt || (is_eq && eq_b < need_eq);
    const uint32_t kept_before = gt_b + min(eq_b, need_eq);
    if (drop_mode && (is_text || kept_visual)) {
      const int64_t slot = v.out_begin + text_b + kept_before;
      if (slot >= 0 && slot < a.S_out) {  // a wrong num_visual cannot write out of bounds
        const int64_t out = v.row * a.S_out + slot;
        a.keep_pos[out] = t;
        a.mask_out[out] = vis;
        for (int64_t p = 0; p < a.P; ++p) {
          const int64_t src = p * a.pos_sp + v.row * a.pos_s0 + t * a.pos_s1;
          const int64_t dst = (p * a.R + v.row) * a.S_out + slot;
          if (a.pos_bytes == 8) {
            static_cast<int64_t*>(a.pos_out)[dst] = static_cast<const int64_t*>(a.pos)[src];
          } else {
            static_cast<int32_t*>(a.pos_out)[dst] = static_cast<const int32_t*>(a.pos)[src];
          }
        }
      }
    } else if (!drop_mode && kept_visual && kept_before < static_cast<uint64_t>(a.k)) {
      a.keep_idx[seg * a.k + kept_before] = t;
    }
    seen_text += total & 1023u;
    seen_gt += (total >> 10) & 1023u;
    seen_eq += total >> 20;
    __syncthreads();  // scan_storage is reused by the next chunk
  }
}

}  // namespace

cudaError_t launch_select(const SelectArgs& a, cudaStream_t stream) {
  if (a.segments == 0) return cudaSuccess;
  V2DROP_LAUNCH(static_cast<unsigned>(a.segments), kThreads, stream, select_kernel)(a);
  return cudaGetLastError();
}

}  // namespace v2drop::cuda
