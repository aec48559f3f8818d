// CPU kernels of v2drop::kv_compact (out of place) and v2drop::kv_compact_ (in place).
// Gathers the entries of several KV tensors (any dtype; layers, keys and values) along the
// sequence dim with one keep_pos: out[b, j] = cache[b, keep_pos[b, j]] for [B, S, H, Dh]
// (seq_dim 1), [B, H, S, Dh] (seq_dim 2) and packed [T, H, Dh] (seq_dim 0, keep_pos [n]).
// Memory traffic: reads and writes n·H·Dh·e bytes per tensor and batch row.
// Each tensor is handled through a [B, S, H, Dh] view (a permutation or unsqueeze, no copy);
// the unit of work is one contiguous Dh-row.
// In place, rows of keep_pos must be strictly increasing, so keep_pos[b, j] >= j: processing
// j in increasing order within one (tensor, b, h) never reads an entry it has overwritten.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "../token_rows.h"
#include "drop_core.h"

namespace v2drop::cpu {
namespace {

// Checks keep_pos values against the sequence length (and strict increase for in place);
// returns it as a contiguous [B, n] tensor.
at::Tensor checked_keep_pos(const char* op, const at::Tensor& keep_pos, int64_t seq_len,
                            bool strictly_increasing) {
  at::Tensor keep = (keep_pos.dim() == 1 ? keep_pos.unsqueeze(0) : keep_pos).contiguous();
  const int64_t B = keep.size(0), n = keep.size(1);
  const int64_t* kp = keep.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t p = kp[b * n + j];
      TORCH_CHECK_VALUE(p >= 0 && p < seq_len, msg_keep_range(op, seq_len), ", got ", p, " at [",
                        b, ", ", j, "]");
      TORCH_CHECK_VALUE(!strictly_increasing || j == 0 || p > kp[b * n + j - 1],
                        msg_strictly_increasing(op), ", row ", b, " has ", kp[b * n + j - 1],
                        " then ", p);
    }
  }
  return keep;
}

// dst[b, j, h, :] = src[b, keep[b, j], h, :] for all (b, j, h), both [B, *, H, Dh] views.
void gather_rows(const at::Tensor& src, const at::Tensor& keep, at::Tensor& dst) {
  const int64_t B = keep.size(0), n = keep.size(1), H = src.size(2);
  const int64_t e = src.element_size(), row_bytes = src.size(3) * e;
  const char* s = static_cast<const char*>(src.const_data_ptr());
  char* d = static_cast<char*>(dst.mutable_data_ptr());
  const int64_t* kp = keep.const_data_ptr<int64_t>();
  // dst is a fresh contiguous tensor (seen through a view): every row starts at a multiple of row_bytes
  const RowCopier copier(d, row_bytes, dst.numel() * e);
  const int64_t grain = std::max<int64_t>(1, kParallelBytes / std::max<int64_t>(2 * row_bytes, 1));
  parallel_for(0, B * n * H, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i % H, bj = i / H, b = bj / n, j = bj % n;
      const char* from = s + (b * src.stride(0) + kp[bj] * src.stride(1) + h * src.stride(2)) * e;
      copier.copy(d + (b * dst.stride(0) + j * dst.stride(1) + h * dst.stride(2)) * e, from);
    }
    copier.finish();
  });
}

std::vector<at::Tensor> kv_compact_cpu(at::TensorList caches, const at::Tensor& keep_pos,
                                       int64_t seq_dim) {
  seq_dim = check_kv_compact(caches, keep_pos, seq_dim);
  const at::Tensor keep =
      checked_keep_pos("v2drop.kv_compact", keep_pos, caches[0].size(seq_dim), false);
  std::vector<at::Tensor> outs;
  outs.reserve(caches.size());
  for (const at::Tensor& cache : caches) {
    std::vector<int64_t> shape = cache.sizes().vec();
    shape[seq_dim] = keep.size(1);
    at::Tensor out = empty_output(shape, cache.options());
    prefer_huge_pages(out.data_ptr(), out.nbytes());
    at::Tensor out_view = kv_bshd_view(out, seq_dim);
    gather_rows(kv_bshd_view(cache, seq_dim), keep, out_view);
    outs.push_back(out);
  }
  return outs;
}

void kv_compact_inplace_cpu(at::TensorList caches, const at::Tensor& keep_pos, int64_t seq_dim) {
  seq_dim = check_kv_compact_(caches, keep_pos, seq_dim);
  const at::Tensor keep =
      checked_keep_pos("v2drop.kv_compact_", keep_pos, caches[0].size(seq_dim), true);
  const int64_t B = keep.size(0), n = keep.size(1);
  const int64_t* kp = keep.const_data_ptr<int64_t>();
  for (const at::Tensor& cache : caches) {
    const at::Tensor v = kv_bshd_view(cache, seq_dim);
    const int64_t H = v.size(2), e = v.element_size(), row_bytes = v.size(3) * e;
    char* base = static_cast<char*>(v.data_ptr());
    // (b, h) pairs per task; within one, j ascends (see the file comment).
    const int64_t grain = std::max<int64_t>(1, kParallelBytes / std::max<int64_t>(2 * n * row_bytes, 1));
    parallel_for(0, B * H, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / H, h = i % H;
        char* row = base + (b * v.stride(0) + h * v.stride(2)) * e;
        for (int64_t j = 0; j < n; ++j) {
          const int64_t p = kp[b * n + j];
          if (p != j) std::memcpy(row + j * v.stride(1) * e, row + p * v.stride(1) * e, row_bytes);
        }
      }
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(v2drop, CPU, m) {
  m.impl("kv_compact", &kv_compact_cpu);
  m.impl("kv_compact_", &kv_compact_inplace_cpu);
}

}  // namespace v2drop::cpu
