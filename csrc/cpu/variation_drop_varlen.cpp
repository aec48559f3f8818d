// CPU kernel of v2drop::variation_drop_varlen (packed layout, flash-attn varlen convention).
// hidden/prev [T, D], vis_mask [T], position_ids [T] or [3, T], cu_seqlens int32 [B + 1];
// sequence b holds num_visual[b] visual tokens and keeps k[b] of them. Outputs the compacted
// packed tensors (T' = T − Σ num_visual + Σ k tokens), keep_pos (global token indices,
// ascending), the result's cu_seqlens and the scores [T].
// Memory traffic: as variation_drop — 2·ΣV·D·e bytes read for the scores, T'·D·e read and
// written for the compaction.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "../drop_outputs.h"
#include "drop_core.h"

namespace v2drop::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
variation_drop_varlen_cpu(const at::Tensor& hidden, const at::Tensor& prev,
                          const at::Tensor& vis_mask, const at::Tensor& position_ids,
                          const at::Tensor& cu_seqlens, at::IntArrayRef num_visual,
                          at::IntArrayRef k) {
  constexpr const char* op = "v2drop.variation_drop_varlen";
  check_hidden_pair(op, hidden, prev, 2);
  check_vis_mask(op, vis_mask, hidden);
  check_position_ids(op, position_ids, hidden);
  check_varlen_args(op, cu_seqlens, hidden, num_visual, k);
  const int64_t T = hidden.size(0), B = cu_seqlens.size(0) - 1;

  // The sequences as segments of one row, checked against cu_seqlens and the mask.
  const at::Tensor cu = cu_seqlens.contiguous();
  const int32_t* c = cu.const_data_ptr<int32_t>();
  TORCH_CHECK_VALUE(c[0] == 0, op, ": cu_seqlens[0] must be 0, got ", c[0]);
  TORCH_CHECK_VALUE(c[B] == T, op, ": cu_seqlens[-1] must equal T=", T,
                    " (hidden.shape[0]), got ", c[B]);
  const at::Tensor mask2 = vis_mask.unsqueeze(0);
  const bool* m = vis_mask.const_data_ptr<bool>();
  const int64_t ms = vis_mask.stride(0);
  std::vector<Segment> segments(B);
  at::Tensor cu_out = at::empty({B + 1}, cu_seqlens.options());
  int32_t* co = cu_out.mutable_data_ptr<int32_t>();
  co[0] = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(c[b + 1] >= c[b], op, ": cu_seqlens must be non-decreasing, got ",
                      c[b], " then ", c[b + 1], " at index ", b);
    int64_t count = 0;
    for (int64_t t = c[b]; t < c[b + 1]; ++t) count += m[t * ms];
    TORCH_CHECK_VALUE(count == num_visual[b], op, ": sequence ", b, " must hold num_visual[",
                      b, "]=", num_visual[b], " visual tokens, vis_mask marks ", count);
    segments[b] = Segment{0, c[b], c[b + 1] - c[b], k[b], co[b]};
    co[b + 1] = static_cast<int32_t>(co[b] + segments[b].len - num_visual[b] + k[b]);
  }

  const int64_t Tout = co[B];
  const bool mrope = position_ids.dim() == 2;
  const at::Tensor pos3 = (mrope ? position_ids : position_ids.unsqueeze(0)).unsqueeze(1);
  const at::Tensor hidden3 = hidden.unsqueeze(0);
  DropOutputs o = empty_drop_outputs(hidden3, pos3, mask2, Tout);

  variation_scores(hidden3, prev.unsqueeze(0), mask2, o.scores);
  compact_segments(hidden3, mask2, pos3, o.scores, segments, o.hidden_out, o.pos_out, o.keep_pos,
                   o.mask_out);
  at::Tensor pos_flat = o.pos_out.squeeze(1);
  return {o.hidden_out.squeeze(0), mrope ? pos_flat : pos_flat.squeeze(0), o.keep_pos.squeeze(0),
          o.mask_out.squeeze(0),   cu_out,                                  o.scores.squeeze(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) {
  m.impl("variation_drop_varlen", &variation_drop_varlen_cpu);
}

}  // namespace v2drop::cpu
