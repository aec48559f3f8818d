// CPU building blocks shared by the CPU kernels of variation_topk, variation_drop and
// variation_drop_varlen. Both layouts are handled as rows of tokens cut into segments:
//   padded [B, S, D]  -> B rows, one segment per row covering [0, S);
//   packed [T, D]     -> one row ([1, T, D]), one segment per sequence [cu[b], cu[b+1]).
// Positions written by these functions are positions within a row (so global token indices
// for the packed layout).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace v2drop::cpu {

struct Segment {
  int64_t row;         // row of hidden / vis_mask
  int64_t begin;       // first token of the segment within the row
  int64_t len;         // tokens in the segment
  int64_t k;           // visual tokens to keep
  int64_t out_begin;   // where the segment's surviving tokens start in the output row
};

// The contract's ranking as one unsigned key: a larger key ranks higher. The high 32 bits
// order the score (NaN below every number, -0 == +0), the low 32 bits prefer the lower
// position within the segment on equal scores. Keys are unique within a segment.
inline uint64_t rank_key(float score, int64_t local_pos) {
  uint32_t bits = 0;
  if (score == 0.0f) score = 0.0f;  // -0 ranks as +0
  std::memcpy(&bits, &score, sizeof bits);
  uint32_t ordered;
  if (score != score) {
    ordered = 0u;  // NaN: below every number (the smallest float, -inf, maps to 0x007fffff)
  } else {
    ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  }
  return (static_cast<uint64_t>(ordered) << 32) |
         static_cast<uint32_t>(~static_cast<uint32_t>(local_pos));
}

// Asks Linux for transparent huge pages on a fresh output of >= 32 MiB before it is first
// written. glibc serves such sizes with a new mmap on every call, and faulting it in 4 KiB pages
// costs more than the copy itself (measured: a 46 MB gather took 31 ms, 4.9 ms into memory
// already faulted). Only a hint about memory the op just allocated; a no-op elsewhere.
void prefer_huge_pages(void* data, size_t bytes);

// Visual tokens per row of a [R, S] bool mask.
std::vector<int64_t> count_visual_rows(const at::Tensor& vis_mask);

// Segments of a padded [B, S] mask where every row must hold the same number of visual
// tokens: `num_visual` when it is >= 0, else row 0's count (then 1 <= k <= V is checked).
// Throws ValueError naming `op` otherwise.
std::vector<Segment> padded_segments(const char* op, const at::Tensor& vis_mask,
                                     int64_t num_visual, int64_t k);

// scores[r, s] = ||hidden[r, s] - prev[r, s]||_2 (float32 accumulation) where vis_mask[r, s],
// 0 elsewhere. hidden/prev: [R, S, D], last dim contiguous, any row/token strides;
// vis_mask: [R, S] any strides; scores: contiguous float32 [R, S].
void variation_scores(const at::Tensor& hidden, const at::Tensor& prev,
                      const at::Tensor& vis_mask, at::Tensor& scores);

// Positions (within the row) of the seg.k best-ranked visual tokens of `seg`, ascending, into
// out[0 .. seg.k). `scratch` is reused between calls.
void select_segment(const at::Tensor& scores, const at::Tensor& vis_mask, const Segment& seg,
                    std::vector<uint64_t>& scratch, int64_t* out);

// Selection + compaction of every segment: keep_pos[r, out_begin + j] lists the segment's
// text tokens and kept visual tokens in order; hidden_out, position_ids_out and vis_mask_out
// gather those tokens. position_ids is [P, R, S] (P = 1, or 3 for M-RoPE); outputs are
// contiguous: hidden_out [R, S', D], position_ids_out [P, R, S'], keep_pos int64 [R, S'],
// vis_mask_out [R, S'].
void compact_segments(const at::Tensor& hidden, const at::Tensor& vis_mask,
                      const at::Tensor& position_ids, const at::Tensor& scores,
                      const std::vector<Segment>& segments, at::Tensor& hidden_out,
                      at::Tensor& position_ids_out, at::Tensor& keep_pos,
                      at::Tensor& vis_mask_out);

}  // namespace v2drop::cpu
