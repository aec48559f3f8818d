// Outputs of variation_drop and variation_drop_varlen, allocated alike by every backend on a
// rows-of-tokens view: padded [B, S, D] is R = B rows; packed [T, D] is one row (R = 1).
#pragma once

#include <ATen/ATen.h>

namespace v2drop {

struct DropOutputs {
  at::Tensor scores;      // float32 [R, S]
  at::Tensor hidden_out;  // [R, S', D], hidden's dtype
  at::Tensor pos_out;     // [P, R, S'], position ids' dtype (P = 1, or 3 for M-RoPE)
  at::Tensor keep_pos;    // int64 [R, S']
  at::Tensor mask_out;    // bool [R, S']
};

// hidden3 [R, S, D], pos3 [P, R, S] (views), s_out = S' survivors per row.
inline DropOutputs empty_drop_outputs(const at::Tensor& hidden3, const at::Tensor& pos3,
                                      const at::Tensor& vis_mask, int64_t s_out) {
  const int64_t R = hidden3.size(0), S = hidden3.size(1), D = hidden3.size(2);
  return DropOutputs{
      at::empty({R, S}, hidden3.options().dtype(at::kFloat)),
      at::empty({R, s_out, D}, hidden3.options()),
      at::empty({pos3.size(0), R, s_out}, pos3.options()),
      at::empty({R, s_out}, hidden3.options().dtype(at::kLong)),
      at::empty({R, s_out}, vis_mask.options()),
  };
}

}  // namespace v2drop
