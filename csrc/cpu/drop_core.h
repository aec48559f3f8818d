// CPU building blocks shared by the CPU kernels of variation_topk, variation_drop and
// variation_drop_varlen. Both layouts are handled as rows of tokens cut into segments:
//   padded [B, S, D]  -> B rows, one segment per row covering [0, S);
//   packed [T, D]     -> one row ([1, T, D]), one segment per sequence [cu[b], cu[b+1]).
// Positions written by these functions are positions within a row (so global token indices
// for the packed layout).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/csrc/stable/c/shim.h>

#include "../token_rows.h"

#include <cstdint>
#include <cstring>
#include <vector>

namespace v2drop::cpu {

// Work below this many bytes (read plus written) runs on the calling thread, and no thread is
// given less: 256 KiB take a core about 9 us at L3 bandwidth, and a parallel region costs 3-4 us
// (measured on the 2-core VM), so splitting less than that does not pay.
constexpr int64_t kParallelBytes = int64_t{256} << 10;

// Chunks of at least `grain` of [begin, end), each given to f(chunk_begin, chunk_end), on torch's
// intra-op threads. Not at::parallel_for: in torch's OpenMP builds (the pip wheels) it is a header
// template that runs threads only in files compiled with -fopenmp, and this extension is built
// without it, so every at::parallel_for in it ran on one thread. torch_parallel_for (torch's
// stable C API, torch >= 2.10) is libtorch's own, compiled at::parallel_for: the same threads,
// thread count (torch.set_num_threads) and grain rule. Work of one grain or less runs right here.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (end - begin <= grain) {
    if (begin < end) f(begin, end);
    return;
  }
  const auto call = [](int64_t b, int64_t e, void* fn) { (*static_cast<const F*>(fn))(b, e); };
  const AOTITorchError err =
      torch_parallel_for(begin, end, grain, call, const_cast<void*>(static_cast<const void*>(&f)));
  TORCH_CHECK(err == AOTI_TORCH_SUCCESS, "v2drop: a CPU worker thread failed");
}

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

// Copies rows of `row_bytes` into a fresh output of `total_bytes` starting at `dst`: with
// non-temporal stores when the output is large (>= kStreamBytes, beyond what the caches would keep
// for the next reader) and the rows are aligned to the vector width, else memcpy. copy() moves
// `rows` consecutive rows (a contiguous run of the source). Call finish() once per thread after
// its copies.
class RowCopier {
 public:
  static constexpr int64_t kStreamBytes = int64_t{8} << 20;
  RowCopier(const void* dst, int64_t row_bytes, int64_t total_bytes);
  void copy(char* dst, const char* src, int64_t rows = 1) const;
  void finish() const;

 private:
  int64_t row_bytes_;
  bool stream_ = false;
};

// Asks Linux for transparent huge pages on a fresh output of >= 32 MiB before it is first
// written. glibc serves such sizes with a new mmap on every call, and faulting it in 4 KiB pages
// costs more than the copy itself (measured: a 46 MB gather took 31 ms, 4.9 ms into memory
// already faulted). Only a hint about memory the op just allocated; a no-op elsewhere.
void prefer_huge_pages(void* data, size_t bytes);

// Segments of a padded [B, S] mask, checked against the data (ValueError naming `op`, with
// checks.h's messages): every row holds `num_visual` visual tokens, or, when num_visual < 0
// (variation_topk), as many as row 0 and at least k.
std::vector<Segment> padded_segments(const char* op, const at::Tensor& vis_mask,
                                     int64_t num_visual, int64_t k);

// Segments of a packed [T] mask: sequence b is [cu_seqlens[b], cu_seqlens[b + 1]) and keeps
// k[b] of its num_visual[b] visual tokens. Checks cu_seqlens (starts at 0, never decreases, ends
// at T) and the visual counts against the data; writes the result's cu_seqlens into cu_out.
std::vector<Segment> packed_segments(const char* op, const at::Tensor& cu_seqlens,
                                     const at::Tensor& vis_mask, at::IntArrayRef num_visual,
                                     at::IntArrayRef k, at::Tensor& cu_out);

// scores[r, s] = ||hidden[r, s] - prev[r, s]||_2 (float32 accumulation) where vis_mask[r, s],
// 0 elsewhere; the threads share the visual tokens evenly. hidden/prev: [R, S, D], last dim
// contiguous, any row/token strides; vis_mask: [R, S] any strides; scores: contiguous float32
// [R, S].
void variation_scores(const at::Tensor& hidden, const at::Tensor& prev,
                      const at::Tensor& vis_mask, at::Tensor& scores);

// Positions (within the row) of the seg.k best-ranked visual tokens of `seg`, ascending, into
// out[0 .. seg.k). scores: [R, S] float32 with a contiguous last dim. `scratch` is reused.
// A partial selection (nth_element) finds the rank key of the k-th best visual token; one scan
// in position order then keeps the visual tokens whose key reaches it (no sort).
void select_segment(const at::Tensor& scores, const at::Tensor& vis_mask, const Segment& seg,
                    std::vector<uint64_t>& scratch, int64_t* out);

// Selection + compaction of every segment: keep_pos[r, out_begin + j] lists the segment's text
// tokens and kept visual tokens in order, and the position ids ([P, R, S] planes, or [R, S]) and
// mask of those tokens are written in the same scan (pos_out: [P, R, S'], or [R, S']).
void compact_segments(const at::Tensor& scores, const at::Tensor& vis_mask,
                      const at::Tensor& position_ids, const std::vector<Segment>& segments,
                      SelectOutputs& out);

// out[r, j, :] = hidden[r, keep_pos[r, j], :]: hidden [R, S, D] with a contiguous last dim,
// out contiguous [R, S', D]. Runs of consecutive kept tokens (text runs) are copied as one block
// when hidden's tokens are contiguous.
void gather_hidden(const at::Tensor& hidden, const at::Tensor& keep_pos, at::Tensor& out);

}  // namespace v2drop::cpu
