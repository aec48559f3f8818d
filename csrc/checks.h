// Input validation shared by every backend's binding (CPU and CUDA): shapes, dtypes,
// devices, strides and integer arguments. Checks that need the data (per-row visual counts,
// cu_seqlens values, keep_pos ranges) are done by the kernels, which read that data anyway.
// RuntimeError (TORCH_CHECK) for shape/dtype/device/layout problems, ValueError
// (TORCH_CHECK_VALUE) for bad values. Every message names the op and the argument.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <utility>
#include <vector>

namespace v2drop {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// hidden and prev: same shape, dtype and device; float32/float16/bfloat16; last dim contiguous.
inline void check_hidden_pair(const char* op, const at::Tensor& hidden, const at::Tensor& prev,
                              int64_t rank) {
  TORCH_CHECK(hidden.dim() == rank, op, ": hidden must have ", rank, " dims, got shape ",
              hidden.sizes());
  TORCH_CHECK(is_supported_float(hidden.scalar_type()), op,
              ": hidden must be float32, float16 or bfloat16, got ", hidden.scalar_type());
  TORCH_CHECK(prev.sizes() == hidden.sizes(), op, ": prev must have the shape of hidden ",
              hidden.sizes(), ", got ", prev.sizes());
  TORCH_CHECK(prev.scalar_type() == hidden.scalar_type(), op,
              ": prev must have the dtype of hidden (", hidden.scalar_type(), "), got ",
              prev.scalar_type());
  TORCH_CHECK(prev.device() == hidden.device(), op, ": prev must be on the device of hidden (",
              hidden.device(), "), got ", prev.device());
  TORCH_CHECK(hidden.size(-1) <= 1 || hidden.stride(-1) == 1, op,
              ": hidden must have a contiguous last dim, got strides ", hidden.strides());
  TORCH_CHECK(prev.size(-1) <= 1 || prev.stride(-1) == 1, op,
              ": prev must have a contiguous last dim, got strides ", prev.strides());
}

// vis_mask: bool, shape hidden.shape[:-1], on hidden's device.
inline void check_vis_mask(const char* op, const at::Tensor& vis_mask, const at::Tensor& hidden) {
  TORCH_CHECK(vis_mask.scalar_type() == at::kBool, op, ": vis_mask must be bool, got ",
              vis_mask.scalar_type());
  const auto want = hidden.sizes().slice(0, hidden.dim() - 1);
  TORCH_CHECK(vis_mask.sizes() == want, op, ": vis_mask must have shape ", want, ", got ",
              vis_mask.sizes());
  TORCH_CHECK(vis_mask.device() == hidden.device(), op,
              ": vis_mask must be on the device of hidden (", hidden.device(), "), got ",
              vis_mask.device());
}

// position_ids: int32/int64, shape tokens or [3, *tokens] (M-RoPE), on hidden's device.
inline void check_position_ids(const char* op, const at::Tensor& position_ids,
                               const at::Tensor& hidden) {
  const auto tokens = hidden.sizes().slice(0, hidden.dim() - 1);
  TORCH_CHECK(position_ids.scalar_type() == at::kLong || position_ids.scalar_type() == at::kInt,
              op, ": position_ids must be int64 or int32, got ", position_ids.scalar_type());
  const bool plain = position_ids.sizes() == tokens;
  const bool mrope = position_ids.dim() == static_cast<int64_t>(tokens.size()) + 1 &&
                     position_ids.size(0) == 3 && position_ids.sizes().slice(1) == tokens;
  TORCH_CHECK(plain || mrope, op, ": position_ids must have shape ", tokens, " or [3, ",
              tokens, "], got ", position_ids.sizes());
  TORCH_CHECK(position_ids.device() == hidden.device(), op,
              ": position_ids must be on the device of hidden (", hidden.device(), "), got ",
              position_ids.device());
}

inline void check_k_padded(const char* op, int64_t num_visual, int64_t k, int64_t seq_len) {
  TORCH_CHECK_VALUE(num_visual >= 1 && num_visual <= seq_len, op,
                    ": num_visual must be in [1, S=", seq_len, "], got ", num_visual);
  TORCH_CHECK_VALUE(k >= 1 && k <= num_visual, op, ": k must be in [1, num_visual=", num_visual,
                    "], got ", k);
}

// cu_seqlens: int32 [B + 1] on hidden's device; per-row lists of length B. The values of
// cu_seqlens are checked by the kernel (they live on the device).
inline void check_varlen_args(const char* op, const at::Tensor& cu_seqlens,
                              const at::Tensor& hidden, at::IntArrayRef num_visual,
                              at::IntArrayRef k) {
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt, op, ": cu_seqlens must be int32, got ",
              cu_seqlens.scalar_type());
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 2, op,
              ": cu_seqlens must have shape [B + 1] with B >= 1, got ", cu_seqlens.sizes());
  TORCH_CHECK(cu_seqlens.device() == hidden.device(), op,
              ": cu_seqlens must be on the device of hidden (", hidden.device(), "), got ",
              cu_seqlens.device());
  const int64_t batch = cu_seqlens.size(0) - 1;
  TORCH_CHECK_VALUE(static_cast<int64_t>(num_visual.size()) == batch, op,
                    ": num_visual must have B=", batch, " entries, got ", num_visual.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(k.size()) == batch, op, ": k must have B=", batch,
                    " entries, got ", k.size());
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK_VALUE(num_visual[b] >= 0, op, ": num_visual[", b, "] must be >= 0, got ",
                      num_visual[b]);
    const int64_t lo = num_visual[b] > 0 ? 1 : 0;
    TORCH_CHECK_VALUE(k[b] >= lo && k[b] <= num_visual[b], op, ": k[", b, "] must be in [", lo,
                      ", num_visual[", b, "]=", num_visual[b], "], got ", k[b]);
  }
}

// kv_compact: seq_dim normalised to [0, rank); caches of rank 4 with keep_pos [B, n] and
// seq_dim in {1, 2} ([B, S, H, Dh] or [B, H, S, Dh]), or rank 3 with keep_pos [n] and
// seq_dim 0 (packed [T, H, Dh]). All caches on keep_pos's device, last dim contiguous, with
// the same batch size and sequence length.
inline int64_t check_kv_args(const char* op, at::TensorList caches, const at::Tensor& keep_pos,
                             int64_t seq_dim) {
  TORCH_CHECK(!caches.empty(), op, ": caches must hold at least one tensor");
  TORCH_CHECK(keep_pos.scalar_type() == at::kLong, op, ": keep_pos must be int64, got ",
              keep_pos.scalar_type());
  TORCH_CHECK(keep_pos.dim() == 1 || keep_pos.dim() == 2, op,
              ": keep_pos must have shape [B, n] or [n] (packed), got ", keep_pos.sizes());
  const int64_t rank = keep_pos.dim() == 2 ? 4 : 3;
  const at::Tensor& first = caches[0];
  TORCH_CHECK(first.dim() == rank, op, ": with keep_pos of shape ", keep_pos.sizes(),
              " caches must have ", rank, " dims, got caches[0] of shape ", first.sizes());
  if (seq_dim < 0) seq_dim += rank;
  if (rank == 4) {
    TORCH_CHECK_VALUE(seq_dim == 1 || seq_dim == 2, op,
                      ": seq_dim must be 1 ([B, S, H, Dh]) or 2 ([B, H, S, Dh]), got ", seq_dim);
  } else {
    TORCH_CHECK_VALUE(seq_dim == 0, op, ": seq_dim must be 0 for packed [T, H, Dh] caches, got ",
                      seq_dim);
  }
  for (size_t i = 0; i < caches.size(); ++i) {
    const at::Tensor& c = caches[i];
    TORCH_CHECK(c.dim() == rank, op, ": caches[", i, "] must have ", rank, " dims, got shape ",
                c.sizes());
    TORCH_CHECK(c.device() == keep_pos.device(), op, ": caches[", i,
                "] must be on the device of keep_pos (", keep_pos.device(), "), got ",
                c.device());
    TORCH_CHECK(c.size(seq_dim) == first.size(seq_dim), op, ": caches[", i,
                "] must have sequence length ", first.size(seq_dim), " along dim ", seq_dim,
                ", got shape ", c.sizes());
    if (rank == 4) {
      TORCH_CHECK(c.size(0) == keep_pos.size(0), op, ": caches[", i, "] must have batch size ",
                  keep_pos.size(0), " (keep_pos.shape[0]), got shape ", c.sizes());
    }
    TORCH_CHECK(c.size(-1) <= 1 || c.stride(-1) == 1, op, ": caches[", i,
                "] must have a contiguous last dim, got strides ", c.strides());
  }
  return seq_dim;
}

// [B, S, H, Dh] view (a permutation or unsqueeze, no copy) of a cache given its normalised
// sequence dim: how every backend's kv_compact walks [B, H, S, Dh], [B, S, H, Dh] and [T, H, Dh].
inline at::Tensor kv_bshd_view(const at::Tensor& cache, int64_t seq_dim) {
  if (cache.dim() == 3) return cache.unsqueeze(0);
  return seq_dim == 2 ? cache.permute({0, 2, 1, 3}) : cache;
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

// kv_compact_: every cache can be written in place, and no two share memory.
inline void check_writable_caches(const char* op, at::TensorList caches) {
  for (size_t i = 0; i < caches.size(); ++i) {
    TORCH_CHECK(at::has_internal_overlap(caches[i]) != at::MemOverlap::Yes, op, ": caches[", i,
                "] has overlapping elements (an expanded tensor?) and cannot be written in place");
    for (size_t j = 0; j < i; ++j) {
      TORCH_CHECK(!byte_ranges_intersect(caches[i], caches[j]), op, ": caches[", j,
                  "] and caches[", i, "] share memory");
    }
  }
}

}  // namespace v2drop
