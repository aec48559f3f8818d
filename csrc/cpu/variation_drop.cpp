// CPU kernel of v2drop::variation_drop (padded layout).
// One call: scores of the visual tokens, per-row top-k selection, and compaction of hidden
// states, position ids ([B, S] or [3, B, S]) and the visual mask to S' = S − V + k tokens.
// Memory traffic: reads 2·B·V·D·e bytes for the scores, then reads and writes B·S'·D·e bytes
// for the compaction; the rest (masks, ids, scores) is O(B·S).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "../drop_outputs.h"
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
  const int64_t S = hidden.size(1);
  check_k_padded(op, num_visual, k, S);
  const std::vector<Segment> segments = padded_segments(op, vis_mask, num_visual, k);

  const int64_t Sout = S - num_visual + k;
  const bool mrope = position_ids.dim() == 3;
  const at::Tensor pos3 = mrope ? position_ids : position_ids.unsqueeze(0);
  DropOutputs o = empty_drop_outputs(hidden, pos3, vis_mask, Sout);

  variation_scores(hidden, prev, vis_mask, o.scores);
  compact_segments(hidden, vis_mask, pos3, o.scores, segments, o.hidden_out, o.pos_out,
                   o.keep_pos, o.mask_out);
  return {o.hidden_out, mrope ? o.pos_out : o.pos_out.squeeze(0), o.keep_pos, o.mask_out,
          o.scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) { m.impl("variation_drop", &variation_drop_cpu); }

}  // namespace v2drop::cpu
