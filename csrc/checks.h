// The argument rules of every v2drop op, written once for the C++ backends (CPU and CUDA
// bindings). v2drop_kernels/checks.py states the same rules, with the same messages, for the
// Python backends (Triton, the reference) and the fake kernels; python_tests/test_errors.py holds
// every backend to one exception type and message per bad input.
//
// One function per op (check_<op>) validates everything that can be known without reading
// tensor data and returns what the binding needs (output length, normalised dims):
//   RuntimeError (TORCH_CHECK) for shape/dtype/device/layout problems, ValueError
//   (TORCH_CHECK_VALUE) for bad integer arguments. Every message names the op and the argument.
// Rules that need the data (visual tokens per row, cu_seqlens values, keep_pos ranges and order)
// are checked where the data is: on the host by the CPU kernels (ValueError, with the offending
// row) and on the device by the CUDA kernels (RuntimeError, a device-side assert, no host sync).
// Their messages are built here, msg_* below, so both say the same thing.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <utility>
#include <vector>

namespace v2drop {

// "torch.float32": dtypes named as Python names them, so C++ and Python messages agree.
inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// The token grid an op's per-token arguments must match: hidden.shape[:-1] for the variation
// ops, scores.shape for the select ops, on that tensor's device.
struct TokenGrid {
  const char* name;  // "hidden" or "scores"
  at::IntArrayRef shape;
  at::Device device;
};

inline TokenGrid grid_of_hidden(const at::Tensor& hidden) {
  return {"hidden", hidden.sizes().slice(0, hidden.dim() - 1), hidden.device()};
}

inline TokenGrid grid_of_scores(const at::Tensor& scores) {
  return {"scores", scores.sizes(), scores.device()};
}

inline void check_last_dim(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, op, ": ", name,
              " must have a contiguous last dim, got strides ", t.strides());
}

// hidden and prev: same shape, dtype and device; float32/float16/bfloat16; last dim contiguous.
inline void check_hidden_pair(const char* op, const at::Tensor& hidden, const at::Tensor& prev,
                              int64_t rank) {
  TORCH_CHECK(hidden.dim() == rank, op, ": hidden must have ", rank, " dims, got shape ",
              hidden.sizes());
  TORCH_CHECK(is_supported_float(hidden.scalar_type()), op,
              ": hidden must be float32, float16 or bfloat16, got ",
              dtype_name(hidden.scalar_type()));
  TORCH_CHECK(prev.sizes() == hidden.sizes(), op, ": prev must have the shape of hidden ",
              hidden.sizes(), ", got ", prev.sizes());
  TORCH_CHECK(prev.scalar_type() == hidden.scalar_type(), op,
              ": prev must have the dtype of hidden (", dtype_name(hidden.scalar_type()),
              "), got ", dtype_name(prev.scalar_type()));
  TORCH_CHECK(prev.device() == hidden.device(), op, ": prev must be on the device of hidden (",
              hidden.device(), "), got ", prev.device());
  check_last_dim(op, "hidden", hidden);
  check_last_dim(op, "prev", prev);
}

// scores of the select ops: float32 of the given rank, last dim contiguous.
inline void check_scores(const char* op, const at::Tensor& scores, int64_t rank) {
  TORCH_CHECK(scores.dim() == rank, op, ": scores must have ", rank, " dims, got shape ",
              scores.sizes());
  TORCH_CHECK(scores.scalar_type() == at::kFloat, op, ": scores must be float32, got ",
              dtype_name(scores.scalar_type()));
  check_last_dim(op, "scores", scores);
}

// vis_mask: bool, the grid's shape, on its device.
inline void check_vis_mask(const char* op, const at::Tensor& vis_mask, const TokenGrid& grid) {
  TORCH_CHECK(vis_mask.scalar_type() == at::kBool, op, ": vis_mask must be bool, got ",
              dtype_name(vis_mask.scalar_type()));
  TORCH_CHECK(vis_mask.sizes() == grid.shape, op, ": vis_mask must have shape ", grid.shape,
              ", got ", vis_mask.sizes());
  TORCH_CHECK(vis_mask.device() == grid.device, op, ": vis_mask must be on the device of ",
              grid.name, " (", grid.device, "), got ", vis_mask.device());
}

// position_ids: int32/int64, the grid's shape or [3, *shape] (M-RoPE), on its device.
inline void check_position_ids(const char* op, const at::Tensor& position_ids,
                               const TokenGrid& grid) {
  TORCH_CHECK(position_ids.scalar_type() == at::kLong || position_ids.scalar_type() == at::kInt,
              op, ": position_ids must be int64 or int32, got ",
              dtype_name(position_ids.scalar_type()));
  const bool plain = position_ids.sizes() == grid.shape;
  const bool mrope = position_ids.dim() == static_cast<int64_t>(grid.shape.size()) + 1 &&
                     position_ids.size(0) == 3 && position_ids.sizes().slice(1) == grid.shape;
  TORCH_CHECK(plain || mrope, op, ": position_ids must have shape ", grid.shape, " or [3, ",
              grid.shape, "], got ", position_ids.sizes());
  TORCH_CHECK(position_ids.device() == grid.device, op, ": position_ids must be on the device of ",
              grid.name, " (", grid.device, "), got ", position_ids.device());
}

// The per-token arguments of the drop and select ops: vis_mask and position_ids on the grid.
inline void check_token_args(const char* op, const TokenGrid& grid, const at::Tensor& vis_mask,
                             const at::Tensor& position_ids) {
  check_vis_mask(op, vis_mask, grid);
  check_position_ids(op, position_ids, grid);
}

// Padded layout: 1 <= num_visual <= S and 1 <= k <= num_visual; returns S' = S − num_visual + k.
inline int64_t check_k_padded(const char* op, int64_t num_visual, int64_t k, int64_t seq_len) {
  TORCH_CHECK_VALUE(num_visual >= 1 && num_visual <= seq_len, op,
                    ": num_visual must be in [1, S=", seq_len, "], got ", num_visual);
  TORCH_CHECK_VALUE(k >= 1 && k <= num_visual, op, ": k must be in [1, num_visual=", num_visual,
                    "], got ", k);
  return seq_len - num_visual + k;
}

// Packed layout: cu_seqlens int32 [B + 1] on the grid's device; per-sequence lists of length B
// with 0 <= num_visual[b] and (num_visual[b] > 0 ? 1 : 0) <= k[b] <= num_visual[b]. Returns the
// tokens of the result, T' = T − Σ num_visual + Σ k. cu_seqlens values are data (msg_varlen).
inline int64_t check_varlen_args(const char* op, const at::Tensor& cu_seqlens,
                                 const TokenGrid& grid, at::IntArrayRef num_visual,
                                 at::IntArrayRef k) {
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt, op, ": cu_seqlens must be int32, got ",
              dtype_name(cu_seqlens.scalar_type()));
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 2, op,
              ": cu_seqlens must have shape [B + 1] with B >= 1, got ", cu_seqlens.sizes());
  TORCH_CHECK(cu_seqlens.device() == grid.device, op, ": cu_seqlens must be on the device of ",
              grid.name, " (", grid.device, "), got ", cu_seqlens.device());
  const int64_t batch = cu_seqlens.size(0) - 1;
  TORCH_CHECK_VALUE(static_cast<int64_t>(num_visual.size()) == batch, op,
                    ": num_visual must have B=", batch, " entries, got ", num_visual.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(k.size()) == batch, op, ": k must have B=", batch,
                    " entries, got ", k.size());
  int64_t tokens_out = grid.shape[0];
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK_VALUE(num_visual[b] >= 0, op, ": num_visual[", b, "] must be >= 0, got ",
                      num_visual[b]);
    const int64_t lo = num_visual[b] > 0 ? 1 : 0;
    TORCH_CHECK_VALUE(k[b] >= lo && k[b] <= num_visual[b], op, ": k[", b, "] must be in [", lo,
                      ", num_visual[", b, "]=", num_visual[b], "], got ", k[b]);
    tokens_out -= num_visual[b] - k[b];
  }
  TORCH_CHECK_VALUE(tokens_out >= 0, op, ": num_visual sums to more than the T=", grid.shape[0],
                    " tokens");
  return tokens_out;
}

// ---- the ops -------------------------------------------------------------------------------

inline void check_variation_topk(const at::Tensor& hidden, const at::Tensor& prev,
                                 const at::Tensor& vis_mask, int64_t k) {
  constexpr const char* op = "v2drop.variation_topk";
  check_hidden_pair(op, hidden, prev, 3);
  check_vis_mask(op, vis_mask, grid_of_hidden(hidden));
  TORCH_CHECK_VALUE(k >= 1 && k <= hidden.size(1), op, ": k must be in [1, S=", hidden.size(1),
                    "], got ", k);
}

// Returns S'.
inline int64_t check_variation_drop(const at::Tensor& hidden, const at::Tensor& prev,
                                    const at::Tensor& vis_mask, const at::Tensor& position_ids,
                                    int64_t num_visual, int64_t k) {
  constexpr const char* op = "v2drop.variation_drop";
  check_hidden_pair(op, hidden, prev, 3);
  check_token_args(op, grid_of_hidden(hidden), vis_mask, position_ids);
  return check_k_padded(op, num_visual, k, hidden.size(1));
}

// Returns T'.
inline int64_t check_variation_drop_varlen(const at::Tensor& hidden, const at::Tensor& prev,
                                           const at::Tensor& vis_mask,
                                           const at::Tensor& position_ids,
                                           const at::Tensor& cu_seqlens,
                                           at::IntArrayRef num_visual, at::IntArrayRef k) {
  constexpr const char* op = "v2drop.variation_drop_varlen";
  check_hidden_pair(op, hidden, prev, 2);
  const TokenGrid grid = grid_of_hidden(hidden);
  check_token_args(op, grid, vis_mask, position_ids);
  return check_varlen_args(op, cu_seqlens, grid, num_visual, k);
}

// Returns S'.
inline int64_t check_select_drop(const at::Tensor& scores, const at::Tensor& vis_mask,
                                 const at::Tensor& position_ids, int64_t num_visual, int64_t k) {
  constexpr const char* op = "v2drop.select_drop";
  check_scores(op, scores, 2);
  check_token_args(op, grid_of_scores(scores), vis_mask, position_ids);
  return check_k_padded(op, num_visual, k, scores.size(1));
}

// Returns T'.
inline int64_t check_select_drop_varlen(const at::Tensor& scores, const at::Tensor& vis_mask,
                                        const at::Tensor& position_ids,
                                        const at::Tensor& cu_seqlens, at::IntArrayRef num_visual,
                                        at::IntArrayRef k) {
  constexpr const char* op = "v2drop.select_drop_varlen";
  check_scores(op, scores, 1);
  const TokenGrid grid = grid_of_scores(scores);
  check_token_args(op, grid, vis_mask, position_ids);
  return check_varlen_args(op, cu_seqlens, grid, num_visual, k);
}

// kv_compact and kv_compact_: caches of rank 4 with keep_pos [B, n] and seq_dim in {1, 2}
// ([B, S, H, Dh] or [B, H, S, Dh]), or rank 3 with keep_pos [n] and seq_dim 0 (packed
// [T, H, Dh]); all on keep_pos's device, last dim contiguous, with the same batch size and
// sequence length. Returns seq_dim normalised to [0, rank).
inline int64_t check_kv_args(const char* op, at::TensorList caches, const at::Tensor& keep_pos,
                             int64_t seq_dim) {
  TORCH_CHECK(!caches.empty(), op, ": caches must hold at least one tensor");
  TORCH_CHECK(keep_pos.scalar_type() == at::kLong, op, ": keep_pos must be int64, got ",
              dtype_name(keep_pos.scalar_type()));
  TORCH_CHECK(keep_pos.dim() == 1 || keep_pos.dim() == 2, op,
              ": keep_pos must have shape [B, n] or [n] (packed), got ", keep_pos.sizes());
  const int64_t rank = keep_pos.dim() == 2 ? 4 : 3;
  const at::Tensor& first = caches[0];
  TORCH_CHECK(first.dim() == rank, op, ": with keep_pos of shape ", keep_pos.sizes(),
              " caches must have ", rank, " dims, got caches[0] of shape ", first.sizes());
  const int64_t dim = seq_dim < 0 ? seq_dim + rank : seq_dim;
  if (rank == 4) {
    TORCH_CHECK_VALUE(dim == 1 || dim == 2, op,
                      ": seq_dim must be 1 or -3 ([B, S, H, Dh]) or 2 or -2 ([B, H, S, Dh]), got ",
                      seq_dim);
  } else {
    TORCH_CHECK_VALUE(dim == 0, op,
                      ": seq_dim must be 0 or -3 for packed [T, H, Dh] caches, got ", seq_dim);
  }
  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& c = caches[i];
    TORCH_CHECK(c.dim() == rank, op, ": caches[", i, "] must have ", rank, " dims, got shape ",
                c.sizes());
    TORCH_CHECK(c.device() == keep_pos.device(), op, ": caches[", i,
                "] must be on the device of keep_pos (", keep_pos.device(), "), got ",
                c.device());
    TORCH_CHECK(c.size(dim) == first.size(dim), op, ": caches[", i,
                "] must have sequence length ", first.size(dim), " along dim ", dim,
                ", got shape ", c.sizes());
    if (rank == 4) {
      TORCH_CHECK(c.size(0) == keep_pos.size(0), op, ": caches[", i, "] must have batch size ",
                  keep_pos.size(0), " (keep_pos.shape[0]), got shape ", c.sizes());
    }
    check_last_dim(op, ("caches[" + std::to_string(i) + "]").c_str(), c);
  }
  return dim;
}

// Whether two tensors of one storage may touch the same bytes (conservative: compares the
// spans from their first to their last element; disjoint slices of one buffer pass).
inline bool byte_ranges_intersect(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0 || !a.storage().is_alias_of(b.storage())) return false;
  auto span = [](const at::Tensor& t) {
    const char* lo = static_cast<const char*>(t.data_ptr());
    const char* hi = lo;
    for (int64_t d = 0; d < t.dim(); ++d) {
      const int64_t step = (t.size(d) - 1) * t.stride(d) * t.element_size();
      (step < 0 ? lo : hi) += step;
    }
    return std::make_pair(lo, hi + t.element_size());
  };
  const auto [a_lo, a_hi] = span(a);
  const auto [b_lo, b_hi] = span(b);
  return a_lo < b_hi && b_lo < a_hi;
}

inline int64_t check_kv_compact(at::TensorList caches, const at::Tensor& keep_pos,
                                int64_t seq_dim) {
  return check_kv_args("v2drop.kv_compact", caches, keep_pos, seq_dim);
}

// kv_compact_ also needs every cache writable in place and no two sharing memory, and at most
// S entries per row.
inline int64_t check_kv_compact_(at::TensorList caches, const at::Tensor& keep_pos,
                                 int64_t seq_dim) {
  constexpr const char* op = "v2drop.kv_compact_";
  const int64_t dim = check_kv_args(op, caches, keep_pos, seq_dim);
  for (size_t i = 0; i < caches.size(); ++i) {
    TORCH_CHECK(at::has_internal_overlap(caches[i]) != at::MemOverlap::Yes, op, ": caches[", i,
                "] has overlapping elements (an expanded tensor?) and cannot be written in place");
    for (size_t j = 0; j < i; ++j) {
      TORCH_CHECK(!byte_ranges_intersect(caches[i], caches[j]), op, ": caches[", j,
                  "] and caches[", i, "] share memory");
    }
  }
  TORCH_CHECK_VALUE(keep_pos.size(-1) <= caches[0].size(dim), op, ": keep_pos has ",
                    keep_pos.size(-1), " entries per row, more than S=", caches[0].size(dim));
  return dim;
}

// ---- rules that need the data: their messages -------------------------------------------------
// The device form (CUDA asserts) is the message; the host form (CPU) adds the offending values.

inline std::string msg_equal_rows(const char* op) {
  return std::string(op) + ": every row of vis_mask must hold the same number of visual tokens";
}

inline std::string msg_k_above_visual(const char* op, int64_t k) {
  return std::string(op) + ": k must be at most V, the visual tokens per row of vis_mask, got k=" +
         std::to_string(k);
}

inline std::string msg_rows_hold(const char* op, int64_t num_visual) {
  return std::string(op) + ": every row of vis_mask must hold num_visual=" +
         std::to_string(num_visual) + " visual tokens";
}

inline std::string msg_varlen(const char* op, int64_t tokens) {
  return std::string(op) + ": cu_seqlens must start at 0, never decrease and end at T=" +
         std::to_string(tokens) + ", and sequence b must hold num_visual[b] visual tokens";
}

inline std::string msg_keep_range(const char* op, int64_t seq_len) {
  return std::string(op) + ": keep_pos values must be in [0, " + std::to_string(seq_len) + ")";
}

inline std::string msg_strictly_increasing(const char* op) {
  return std::string(op) + ": keep_pos rows must be strictly increasing for in-place compaction";
}

}  // namespace v2drop
