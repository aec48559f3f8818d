// CPU kernel of v2drop::select_drop (padded layout): variation_drop's selection and compaction
// of position ids ([B, S] or [3, B, S]) and the visual mask, ranking by given float32 scores
// [B, S] (PyramidDrop's and FastV's attention scores). Hidden states are not touched: the
// caller moves them, with its K/V, through kv_compact.
// Memory traffic: reads B·S·(4 + 1) bytes of scores and mask, O(B·S') of ids; writes O(B·S').
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "../token_rows.h"
#include "drop_core.h"

namespace v2drop::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_drop_cpu(const at::Tensor& scores,
                                                               const at::Tensor& vis_mask,
                                                               const at::Tensor& position_ids,
                                                               int64_t num_visual, int64_t k) {
  const int64_t s_out = check_select_drop(scores, vis_mask, position_ids, num_visual, k);
  const std::vector<Segment> segments =
      padded_segments("v2drop.select_drop", vis_mask, num_visual, k);
  SelectOutputs o = empty_select_outputs(position_ids, vis_mask, s_out);  // ids as given, no view
  compact_segments(scores, vis_mask, position_ids, segments, o);
  return select_result(o, position_ids, false);
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) { m.impl("select_drop", &select_drop_cpu); }

}  // namespace v2drop::cpu
