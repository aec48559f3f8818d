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
#include "../token_rows.h"
#include "drop_core.h"

namespace v2drop::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
variation_drop_varlen_cpu(const at::Tensor& hidden, const at::Tensor& prev,
                          const at::Tensor& vis_mask, const at::Tensor& position_ids,
                          const at::Tensor& cu_seqlens, at::IntArrayRef num_visual,
                          at::IntArrayRef k) {
  const int64_t t_out = check_variation_drop_varlen(hidden, prev, vis_mask, position_ids,
                                                    cu_seqlens, num_visual, k);
  at::Tensor cu_out = empty_output({cu_seqlens.size(0)}, cu_seqlens.options());
  const std::vector<Segment> segments = packed_segments(
      "v2drop.variation_drop_varlen", cu_seqlens, vis_mask, num_visual, k, cu_out);
  const at::Tensor hidden3 = token_rows(hidden, true), mask2 = token_rows(vis_mask, true);
  const at::Tensor pos3 = position_planes(position_ids, true);
  DropOutputs o = empty_drop_outputs(hidden3, pos3, mask2, t_out);
  // The result's views are made first, while the tensors' metadata is still in the caches.
  auto result = drop_varlen_result(o, position_ids, cu_out);
  variation_scores(hidden3, token_rows(prev, true), mask2, o.scores);
  compact_segments(o.scores, mask2, pos3, segments, o.sel);
  gather_hidden(hidden3, o.sel.keep_pos, o.hidden_out);
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) {
  m.impl("variation_drop_varlen", &variation_drop_varlen_cpu);
}

}  // namespace v2drop::cpu
