// CPU kernel of v2drop::variation_drop (padded layout).
// One call: scores of the visual tokens, per-row top-k selection, and compaction of hidden
// states, position ids ([B, S] or [3, B, S]) and the visual mask to S' = S − V + k tokens.
// Memory traffic: reads 2·B·V·D·e bytes for the scores, then reads and writes B·S'·D·e bytes
// for the compaction; the rest (masks, ids, scores) is O(B·S).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "../token_rows.h"
#include "drop_core.h"

namespace v2drop::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> variation_drop_cpu(
    const at::Tensor& hidden, const at::Tensor& prev, const at::Tensor& vis_mask,
    const at::Tensor& position_ids, int64_t num_visual, int64_t k) {
  const int64_t s_out = check_variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k);
  const std::vector<Segment> segments =
      padded_segments("v2drop.variation_drop", vis_mask, num_visual, k);
  // Position ids as given ([B, S] or [3, B, S]): no view is made, so the call makes no
  // dispatcher round trip (the first one of a call costs 8 us when the caches are cold).
  DropOutputs o = empty_drop_outputs(hidden, position_ids, vis_mask, s_out);
  variation_scores(hidden, prev, vis_mask, o.scores);
  compact_segments(o.scores, vis_mask, position_ids, segments, o.sel);
  gather_hidden(hidden, o.sel.keep_pos, o.hidden_out);
  return drop_result(o, position_ids);
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) { m.impl("variation_drop", &variation_drop_cpu); }

}  // namespace v2drop::cpu
