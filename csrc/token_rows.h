// The views and outputs of the drop and select ops, shared by every C++ backend. Both layouts
// are handled as rows of tokens:
//   padded [B, S(, D)]  -> R = B rows of S tokens;
//   packed [T(, D)]     -> R = 1 row of T tokens (the sequences are segments of it).
// Position ids become [P, R, S] planes (P = 1, or 3 for M-RoPE). Outputs are allocated on these
// views and returned in the caller's layout. KV caches are walked as [B, S, H, Dh] views.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#include <tuple>

namespace v2drop {

// [B, S, ...] stays; packed [T, ...] becomes [1, T, ...] (a view).
inline at::Tensor token_rows(const at::Tensor& t, bool packed) { return packed ? t.unsqueeze(0) : t; }

// Position ids [B, S] / [3, B, S] / [T] / [3, T] as [P, R, S] planes (a view).
inline at::Tensor position_planes(const at::Tensor& position_ids, bool packed) {
  const bool mrope = position_ids.dim() == (packed ? 2 : 3);
  const at::Tensor planes = mrope ? position_ids : position_ids.unsqueeze(0);
  return packed ? planes.unsqueeze(1) : planes;
}

// Outputs of the selection and compaction, on the rows view.
struct SelectOutputs {
  at::Tensor pos_out;   // [P, R, S'] ([R, S'] for padded [R, S] ids), the position ids' dtype
  at::Tensor keep_pos;  // int64 [R, S']
  at::Tensor mask_out;  // bool [R, S']
};

// Outputs of the fused drop: the selection's, plus the scores and the compacted hidden states.
struct DropOutputs {
  SelectOutputs sel;
  at::Tensor scores;      // float32 [R, S]
  at::Tensor hidden_out;  // [R, S', D], hidden's dtype
};

// at::empty; on the CPU, at::detail::empty_cpu: the same tensor without the dispatcher round
// trip (measured: 2 us per tensor against 0.25 us, on a call that allocates five).
inline at::Tensor empty_output(at::IntArrayRef size, const at::TensorOptions& options) {
  if (options.device().is_cpu()) return at::detail::empty_cpu(size, options);
  return at::empty(size, options);
}

// pos3 [P, R, S] planes, or padded [R, S] ids as they are (the CPU kernels take both: no view to
// make and undo); mask2 [R, S]; s_out = S' survivors per row.
inline SelectOutputs empty_select_outputs(const at::Tensor& pos3, const at::Tensor& mask2,
                                          int64_t s_out) {
  const int64_t R = mask2.size(0);
  return SelectOutputs{
      pos3.dim() == 3 ? empty_output({pos3.size(0), R, s_out}, pos3.options())
                      : empty_output({R, s_out}, pos3.options()),
      empty_output({R, s_out}, mask2.options().dtype(at::kLong)),
      empty_output({R, s_out}, mask2.options()),
  };
}

// hidden3 [R, S, D] view.
inline DropOutputs empty_drop_outputs(const at::Tensor& hidden3, const at::Tensor& pos3,
                                      const at::Tensor& mask2, int64_t s_out) {
  return DropOutputs{
      empty_select_outputs(pos3, mask2, s_out),
      empty_output({hidden3.size(0), hidden3.size(1)}, hidden3.options().dtype(at::kFloat)),
      empty_output({hidden3.size(0), s_out, hidden3.size(2)}, hidden3.options()),
  };
}

// The selection's outputs in the caller's layout: (position_ids_out, keep_pos, vis_mask_out).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> select_result(const SelectOutputs& o,
                                                                   const at::Tensor& position_ids,
                                                                   bool packed) {
  const bool mrope = position_ids.dim() == (packed ? 2 : 3);
  at::Tensor pos = packed ? o.pos_out.squeeze(1) : o.pos_out;
  if (!mrope && pos.dim() == position_ids.dim() + 1) pos = pos.squeeze(0);
  if (packed) return {pos, o.keep_pos.squeeze(0), o.mask_out.squeeze(0)};
  return {pos, o.keep_pos, o.mask_out};
}

// variation_drop's outputs (padded): (hidden_out, position_ids_out, keep_pos, vis_mask_out, scores).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> drop_result(
    const DropOutputs& o, const at::Tensor& position_ids) {
  auto [pos, keep, mask] = select_result(o.sel, position_ids, false);
  return {o.hidden_out, pos, keep, mask, o.scores};
}

// variation_drop_varlen's outputs (packed):
// (hidden_out, position_ids_out, keep_pos, vis_mask_out, cu_seqlens_out, scores).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
drop_varlen_result(const DropOutputs& o, const at::Tensor& position_ids,
                   const at::Tensor& cu_out) {
  auto [pos, keep, mask] = select_result(o.sel, position_ids, true);
  return {o.hidden_out.squeeze(0), pos, keep, mask, cu_out, o.scores.squeeze(0)};
}

// [B, S, H, Dh] view (a permutation or unsqueeze, no copy) of a KV cache given its normalised
// sequence dim: how every backend's kv_compact walks [B, H, S, Dh], [B, S, H, Dh] and [T, H, Dh].
inline at::Tensor kv_bshd_view(const at::Tensor& cache, int64_t seq_dim) {
  if (cache.dim() == 3) return cache.unsqueeze(0);
  return seq_dim == 2 ? cache.permute({0, 2, 1, 3}) : cache;
}

}  // namespace v2drop
