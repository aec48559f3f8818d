// CPU kernel of v2drop::variation_drop (padded layout).
// One call: scores of the visual tokens, per-row top-k selection, and compaction of hidden
// states, position ids ([B, S] or [3, B, S]) and the visual mask to S' = S − V + k tokens.
// Memory traffic: reads 2·B·V·D·e bytes for the scores, then reads and writes B·S'·D·e bytes
// for the compaction; the rest (masks, ids, scores) is O(B·S).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "drop_core.h"

namespace v2drop::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> variation_drop_cpu(
    const at::Tensor& hidden, const at::Tensor& prev, const at::Tensor& vis_mask,
    const at::Tensor& position_ids, int64_t num_visual, int64_t k) {
  constexpr const char* op = "v2drop.variation_drop";
  check_hidden_pair(op, hidden, prev, 3);
  check_vis_mask(op, vis_mask, hidden);
  check_position_ids(op, position_ids, hidden);
  const int64_t B = hidden.size(0), S = hidden.size(1), D = hidden.size(2);
  check_k_padded(op, num_visual, k, S);
  const std::vector<Segment> segments = padded_segments(op, vis_mask, num_visual, k);

  const int64_t Sout = S - num_visual + k;
  const bool mrope = position_ids.dim() == 3;
  const at::Tensor pos3 = mrope ? position_ids : position_ids.unsqueeze(0);
  at::Tensor scores = at::empty({B, S}, hidden.options().dtype(at::kFloat));
  at::Tensor hidden_out = at::empty({B, Sout, D}, hidden.options());
  at::Tensor pos_out = at::empty({pos3.size(0), B, Sout}, position_ids.options());
  at::Tensor keep_pos = at::empty({B, Sout}, hidden.options().dtype(at::kLong));
  at::Tensor mask_out = at::empty({B, Sout}, vis_mask.options());

  variation_scores(hidden, prev, vis_mask, scores);
  compact_segments(hidden, vis_mask, pos3, scores, segments, hidden_out, pos_out, keep_pos,
                   mask_out);
  return {hidden_out, mrope ? pos_out : pos_out.squeeze(0), keep_pos, mask_out, scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) { m.impl("variation_drop", &variation_drop_cpu); }

}  // namespace v2drop::cpu
