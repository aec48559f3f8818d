// Framework-free launcher API of the CUDA kernels: raw pointers, strides, sizes and a stream.
// No torch headers here or in the .cu files, so every .cu compiles with plain nvcc; the torch
// binding (torch_bindings.cpp) validates arguments, allocates outputs and calls these on the
// current stream. Strides are in elements unless a name says bytes. Every launcher returns the
// launch's cudaError_t.
//
// Launches of the fused op variation_drop: 3 (scores, select, gather of the hidden rows):
// scores need the whole grid of token rows to saturate bandwidth, selection needs one block
// per segment to see every score of its segment, and the hidden gather needs the selection.
// Position ids and the visual mask are compacted inside the select kernel (they are small).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace v2drop::cuda {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

// scores[r * S + s] = ||hidden[r, s, :] - prev[r, s, :]||_2 in float32 where mask[r, s], else 0.
// hidden/prev: [R, S, D], last dim contiguous; mask: [R, S] with any strides.
struct ScoresArgs {
  DType dtype;
  const void* hidden;
  int64_t h_s0, h_s1;
  const void* prev;
  int64_t p_s0, p_s1;
  const bool* mask;
  int64_t m_s0, m_s1;
  int64_t R, S, D;
  float* scores;  // contiguous [R, S]
};
cudaError_t launch_scores(const ScoresArgs& a, cudaStream_t stream);

// Per segment: exact top-k of the visual tokens by score (higher first; equal scores: lower
// position first; NaN below every number; -0 == +0), then an ordered pass writing outputs.
// Padded: segment b is row b, tokens [0, S). Packed (cu != nullptr): one row (R = 1), segment b
// is tokens [cu[b], cu[b + 1]).
struct SelectArgs {
  const float* scores;  // [R, S], contiguous rows
  int64_t sc_s0;        // row stride of scores
  const bool* mask;
  int64_t m_s0, m_s1;
  int64_t R, S;
  int64_t segments;
  const int32_t* cu;         // packed: [segments + 1], else nullptr
  int64_t k;                 // padded: visual tokens kept per row
  const int64_t* k_per_seg;  // packed: [segments] on the device, else nullptr
  const int64_t* drop_before;  // packed: [segments], sum over earlier segments of (V - k)
  // Outputs. topk mode (keep_pos == nullptr): keep_idx [segments, k] (kept visual positions).
  int64_t* keep_idx;
  // drop mode: survivors (text + kept visual), ascending, into rows of length S_out.
  int64_t* keep_pos;  // [R, S_out]; packed: global token indices
  int64_t S_out;
  const void* pos;  // position ids [P, R, S] with strides below (int32 or int64), or nullptr
  int pos_bytes;    // 4 or 8
  int64_t P, pos_sp, pos_s0, pos_s1;
  void* pos_out;    // contiguous [P, R, S_out]
  bool* mask_out;   // contiguous [R, S_out]
  int32_t* cu_out;  // packed: [segments + 1]
  int32_t* counts;  // [segments]: visual tokens found; -1 when cu_seqlens is malformed there
};
cudaError_t launch_select(const SelectArgs& a, cudaStream_t stream);

// One tensor of a gather: dst[b, j, h, :] = src[b, keep[b, j], h, :] over a [B, S, H, *] view.
// Strides in bytes; row_bytes contiguous bytes per (b, s, h) entry.
struct RowTensor {
  const char* src;
  char* dst;
  int64_t src_sb, src_ss, src_sh;
  int64_t dst_sb, dst_sj, dst_sh;
  int64_t H, row_bytes;
};
constexpr int kMaxTensorsPerLaunch = 24;  // descriptors travel as kernel parameters (< 4 KB)
struct GatherArgs {
  RowTensor t[kMaxTensorsPerLaunch];
  int count;
  const int64_t* keep;  // [B, n] contiguous
  int64_t B, n, S;      // entries outside [0, S) are skipped (the binding asserts on them)
};
// Out of place: every (tensor, b, j, h) row in parallel, 16-byte copies when aligned.
cudaError_t launch_gather(const GatherArgs& a, cudaStream_t stream);
// In place (dst == src): one block per (tensor, b, h) walks j upward in tiles, each tile read
// whole before it is written; needs strictly increasing keep rows (keep[b, j] >= j).
cudaError_t launch_compact_inplace(const GatherArgs& a, cudaStream_t stream);

}  // namespace v2drop::cuda
