// CPU kernel of v2drop::variation_topk.
// Computes scores[b, s] = ||hidden[b, s] - prev[b, s]||_2 (float32) at visual positions and the
// positions of the k best-ranked visual tokens of each row, ascending.
// Memory traffic: reads 2·B·V·D·e bytes of hidden/prev (visual rows only), writes B·S·4 + B·k·8.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "drop_core.h"

namespace v2drop::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> variation_topk_cpu(const at::Tensor& hidden,
                                                      const at::Tensor& prev,
                                                      const at::Tensor& vis_mask, int64_t k) {
  check_variation_topk(hidden, prev, vis_mask, k);
  const std::vector<Segment> segments =
      padded_segments("v2drop.variation_topk", vis_mask, -1, k);

  const int64_t B = hidden.size(0), S = hidden.size(1);
  at::Tensor scores = empty_output({B, S}, hidden.options().dtype(at::kFloat));
  at::Tensor keep_idx = empty_output({B, k}, hidden.options().dtype(at::kLong));
  variation_scores(hidden, prev, vis_mask, scores);
  int64_t* out = keep_idx.mutable_data_ptr<int64_t>();
  parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<uint64_t> scratch;
    for (int64_t b = b0; b < b1; ++b) select_segment(scores, vis_mask, segments[b], scratch, out + b * k);
  });
  return {keep_idx, scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) { m.impl("variation_topk", &variation_topk_cpu); }

}  // namespace v2drop::cpu
