// CPU kernel of v2drop::select_drop_varlen: select_drop on the packed layout (scores [T],
// vis_mask [T], position_ids [T] or [3, T], cu_seqlens int32 [B + 1]); also returns the result's
// cu_seqlens. Memory traffic: reads T·(4 + 1) bytes of scores and mask; writes O(T').
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "../token_rows.h"
#include "drop_core.h"

namespace v2drop::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_drop_varlen_cpu(
    const at::Tensor& scores, const at::Tensor& vis_mask, const at::Tensor& position_ids,
    const at::Tensor& cu_seqlens, at::IntArrayRef num_visual, at::IntArrayRef k) {
  const int64_t t_out =
      check_select_drop_varlen(scores, vis_mask, position_ids, cu_seqlens, num_visual, k);
  at::Tensor cu_out = empty_output({cu_seqlens.size(0)}, cu_seqlens.options());
  const std::vector<Segment> segments = packed_segments(
      "v2drop.select_drop_varlen", cu_seqlens, vis_mask, num_visual, k, cu_out);
  const at::Tensor mask2 = token_rows(vis_mask, true);
  const at::Tensor pos3 = position_planes(position_ids, true);
  SelectOutputs o = empty_select_outputs(pos3, mask2, t_out);
  compact_segments(token_rows(scores, true), mask2, pos3, segments, o);
  auto [pos, keep, mask] = select_result(o, position_ids, true);
  return {pos, keep, mask, cu_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) { m.impl("select_drop_varlen", &select_drop_varlen_cpu); }

}  // namespace v2drop::cpu
