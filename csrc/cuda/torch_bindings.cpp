// Torch binding of the CUDA kernels: TORCH_LIBRARY_IMPL(v2drop, CUDA). Validates arguments with
// the checks every backend shares (checks.h), allocates outputs, and calls the framework-free
// launchers (launch.h) on the current CUDA stream of the tensors' device.
// Rules that need the data (visual tokens per row, cu_seqlens values, keep_pos ranges and order)
// are checked on the device with at::_assert_async: no host sync, CUDA-graph capturable. A
// failure raises RuntimeError (a device-side assert), not ValueError as on CPU; the kernels
// never read or write out of bounds on such input.
// Launches: variation_topk 2 (scores, select), variation_drop 3 (+ gather), variation_drop_varlen
// 3, select_drop / select_drop_varlen 1 (select), kv_compact / kv_compact_ 1 per 24 tensors.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../checks.h"
#include "../token_rows.h"
#include "launch.h"

namespace v2drop::cuda {
namespace {

DType dtype_of(at::ScalarType t) {
  return t == at::kFloat ? DType::F32 : t == at::kHalf ? DType::F16 : DType::BF16;
}

// at::_assert_async with a message: CUDA copies the message into its assert kernel's parameters
// and rejects, on the host and at every call, a message of 255 bytes or more.
constexpr size_t kMaxAssertMessage = 254;
void device_assert(const at::Tensor& cond, const std::string& message) {
  TORCH_INTERNAL_ASSERT(message.size() <= kMaxAssertMessage, "device-assert message too long: ", message);
  at::_assert_async(cond, message);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// hidden/prev [R, S, D], mask [R, S] -> scores [R, S]
void run_scores(const at::Tensor& hidden, const at::Tensor& prev, const at::Tensor& mask, at::Tensor& scores,
                cudaStream_t stream, const char* op) {
  ScoresArgs a{};
  a.dtype = dtype_of(hidden.scalar_type());
  a.hidden = hidden.const_data_ptr();
  a.h_s0 = hidden.stride(0), a.h_s1 = hidden.stride(1);
  a.prev = prev.const_data_ptr();
  a.p_s0 = prev.stride(0), a.p_s1 = prev.stride(1);
  a.mask = mask.const_data_ptr<bool>();
  a.m_s0 = mask.stride(0), a.m_s1 = mask.stride(1);
  a.R = hidden.size(0), a.S = hidden.size(1), a.D = hidden.size(2);
  a.scores = scores.mutable_data_ptr<float>();
  check_launch(launch_scores(a, stream), op);
}

SelectArgs select_args(const at::Tensor& scores, const at::Tensor& mask, int32_t* counts) {
  SelectArgs a{};
  a.scores = scores.const_data_ptr<float>();
  a.sc_s0 = scores.stride(0);
  a.mask = mask.const_data_ptr<bool>();
  a.m_s0 = mask.stride(0), a.m_s1 = mask.stride(1);
  a.R = mask.size(0), a.S = mask.size(1);
  a.counts = counts;
  return a;
}

// The packed layout's segments: cu_seqlens (contiguous), the result's cu_seqlens, and per
// sequence k, the tokens dropped before it and the expected visual count (dev[0..2], known on
// the host, copied to the device in one small asynchronous transfer from pinned memory: a
// pageable copy would wait for the device; the caching host allocator keeps the pinned block
// alive until the copy has run).
struct PackedSegments {
  at::Tensor cu, cu_out, dev;
};

PackedSegments packed_segments(const at::Tensor& cu_seqlens, at::IntArrayRef num_visual, at::IntArrayRef k) {
  const int64_t B = cu_seqlens.size(0) - 1;
  const bool cuda = cu_seqlens.is_cuda();
  at::Tensor host = at::empty({3, B}, at::TensorOptions().dtype(at::kLong).pinned_memory(cuda));
  int64_t* h = host.mutable_data_ptr<int64_t>();
  int64_t dropped = 0;
  for (int64_t b = 0; b < B; ++b) {
    h[b] = k[b];
    h[B + b] = dropped;
    h[2 * B + b] = num_visual[b];
    dropped += num_visual[b] - k[b];
  }
  return {cu_seqlens.contiguous(), at::empty({B + 1}, cu_seqlens.options()),
          host.to(cu_seqlens.device(), /*non_blocking=*/true)};
}

// One device check for all the data rules of the packed layout (the select kernel counts -1
// where cu_seqlens is malformed).
void assert_segments(const PackedSegments& packed, const at::Tensor& counts, int64_t tokens, const char* op) {
  device_assert((counts.to(at::kLong) == packed.dev[2]).all(), msg_varlen(op, tokens));
}

// dst[r, j, :] = src[r, keep[r, j], :] for [R, S, D] src and contiguous [R, n, D] dst.
void gather_tokens(const at::Tensor& src, const at::Tensor& keep, at::Tensor& dst, cudaStream_t stream,
                   const char* op) {
  const int64_t e = src.element_size();
  GatherArgs g{};
  g.t[0] = RowTensor{static_cast<const char*>(src.const_data_ptr()), static_cast<char*>(dst.mutable_data_ptr()),
                     src.stride(0) * e, src.stride(1) * e, 0, dst.stride(0) * e, dst.stride(1) * e, 0, 1,
                     src.size(2) * e};
  g.count = 1;
  g.keep = keep.const_data_ptr<int64_t>();
  g.B = keep.size(0), g.n = keep.size(1), g.S = src.size(1);
  check_launch(launch_gather(g, stream), op);
}

// The selection of every segment in drop mode: survivors' positions, position ids and mask.
// counts receives each segment's visual tokens (-1 where cu_seqlens is malformed).
void run_select_drop(const at::Tensor& scores, const at::Tensor& mask2, const at::Tensor& pos3, SelectOutputs& o,
                     int32_t* counts, int64_t k, const PackedSegments* packed, cudaStream_t stream, const char* op) {
  SelectArgs a = select_args(scores, mask2, counts);
  a.keep_pos = o.keep_pos.mutable_data_ptr<int64_t>();
  a.S_out = o.keep_pos.size(1);
  a.pos = pos3.const_data_ptr();
  a.pos_bytes = static_cast<int>(pos3.element_size());
  a.P = pos3.size(0), a.pos_sp = pos3.stride(0), a.pos_s0 = pos3.stride(1), a.pos_s1 = pos3.stride(2);
  a.pos_out = o.pos_out.mutable_data_ptr();
  a.mask_out = o.mask_out.mutable_data_ptr<bool>();
  if (packed != nullptr) {
    a.segments = packed->cu.size(0) - 1;
    a.cu = packed->cu.const_data_ptr<int32_t>();
    a.k_per_seg = packed->dev[0].const_data_ptr<int64_t>();
    a.drop_before = packed->dev[1].const_data_ptr<int64_t>();
    a.cu_out = packed->cu_out.mutable_data_ptr<int32_t>();
  } else {
    a.segments = mask2.size(0), a.k = k;
  }
  check_launch(launch_select(a, stream), op);
}

std::tuple<at::Tensor, at::Tensor> variation_topk_cuda(const at::Tensor& hidden, const at::Tensor& prev,
                                                       const at::Tensor& vis_mask, int64_t k) {
  constexpr const char* op = "v2drop.variation_topk";
  check_variation_topk(hidden, prev, vis_mask, k);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = hidden.size(0), S = hidden.size(1);
  at::Tensor scores = at::empty({B, S}, hidden.options().dtype(at::kFloat));
  at::Tensor keep_idx = at::empty({B, k}, hidden.options().dtype(at::kLong));
  at::Tensor counts = at::empty({B}, hidden.options().dtype(at::kInt));
  if (B == 0) return {keep_idx, scores};
  run_scores(hidden, prev, vis_mask, scores, stream, op);
  SelectArgs a = select_args(scores, vis_mask, counts.mutable_data_ptr<int32_t>());
  a.segments = B, a.k = k;
  a.keep_idx = keep_idx.mutable_data_ptr<int64_t>();
  check_launch(launch_select(a, stream), op);
  device_assert((counts == counts[0]).all(), msg_equal_rows(op));
  device_assert(counts[0] >= k, msg_k_above_visual(op, k));
  return {keep_idx, scores};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> variation_drop_cuda(
    const at::Tensor& hidden, const at::Tensor& prev, const at::Tensor& vis_mask, const at::Tensor& position_ids,
    int64_t num_visual, int64_t k) {
  constexpr const char* op = "v2drop.variation_drop";
  const int64_t s_out = check_variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor pos3 = position_planes(position_ids, false);
  DropOutputs o = empty_drop_outputs(hidden, pos3, vis_mask, s_out);
  if (hidden.size(0) > 0) {
    at::Tensor counts = at::empty({hidden.size(0)}, hidden.options().dtype(at::kInt));
    run_scores(hidden, prev, vis_mask, o.scores, stream, op);
    run_select_drop(o.scores, vis_mask, pos3, o.sel, counts.mutable_data_ptr<int32_t>(), k, nullptr, stream, op);
    gather_tokens(hidden, o.sel.keep_pos, o.hidden_out, stream, op);
    device_assert((counts == num_visual).all(), msg_rows_hold(op, num_visual));
  }
  return drop_result(o, position_ids);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> variation_drop_varlen_cuda(
    const at::Tensor& hidden, const at::Tensor& prev, const at::Tensor& vis_mask, const at::Tensor& position_ids,
    const at::Tensor& cu_seqlens, at::IntArrayRef num_visual, at::IntArrayRef k) {
  constexpr const char* op = "v2drop.variation_drop_varlen";
  const int64_t t_out =
      check_variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu_seqlens, num_visual, k);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const PackedSegments packed = packed_segments(cu_seqlens, num_visual, k);
  const at::Tensor hidden3 = token_rows(hidden, true), mask2 = token_rows(vis_mask, true);
  const at::Tensor pos3 = position_planes(position_ids, true);
  DropOutputs o = empty_drop_outputs(hidden3, pos3, mask2, t_out);
  at::Tensor counts = at::empty({packed.cu.size(0) - 1}, hidden.options().dtype(at::kInt));
  run_scores(hidden3, token_rows(prev, true), mask2, o.scores, stream, op);
  run_select_drop(o.scores, mask2, pos3, o.sel, counts.mutable_data_ptr<int32_t>(), 0, &packed, stream, op);
  gather_tokens(hidden3, o.sel.keep_pos, o.hidden_out, stream, op);
  assert_segments(packed, counts, hidden.size(0), op);
  return drop_varlen_result(o, position_ids, packed.cu_out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> select_drop_cuda(const at::Tensor& scores, const at::Tensor& vis_mask,
                                                                const at::Tensor& position_ids, int64_t num_visual,
                                                                int64_t k) {
  constexpr const char* op = "v2drop.select_drop";
  const int64_t s_out = check_select_drop(scores, vis_mask, position_ids, num_visual, k);
  const c10::cuda::CUDAGuard guard(scores.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor pos3 = position_planes(position_ids, false);
  SelectOutputs o = empty_select_outputs(pos3, vis_mask, s_out);
  if (scores.size(0) > 0) {
    at::Tensor counts = at::empty({scores.size(0)}, scores.options().dtype(at::kInt));
    run_select_drop(scores, vis_mask, pos3, o, counts.mutable_data_ptr<int32_t>(), k, nullptr, stream, op);
    device_assert((counts == num_visual).all(), msg_rows_hold(op, num_visual));
  }
  return select_result(o, position_ids, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> select_drop_varlen_cuda(
    const at::Tensor& scores, const at::Tensor& vis_mask, const at::Tensor& position_ids,
    const at::Tensor& cu_seqlens, at::IntArrayRef num_visual, at::IntArrayRef k) {
  constexpr const char* op = "v2drop.select_drop_varlen";
  const int64_t t_out = check_select_drop_varlen(scores, vis_mask, position_ids, cu_seqlens, num_visual, k);
  const c10::cuda::CUDAGuard guard(scores.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const PackedSegments packed = packed_segments(cu_seqlens, num_visual, k);
  const at::Tensor mask2 = token_rows(vis_mask, true), pos3 = position_planes(position_ids, true);
  SelectOutputs o = empty_select_outputs(pos3, mask2, t_out);
  at::Tensor counts = at::empty({packed.cu.size(0) - 1}, scores.options().dtype(at::kInt));
  run_select_drop(token_rows(scores, true), mask2, pos3, o, counts.mutable_data_ptr<int32_t>(), 0, &packed, stream,
                  op);
  assert_segments(packed, counts, scores.size(0), op);
  auto [pos, keep, mask] = select_result(o, position_ids, true);
  return {pos, keep, mask, packed.cu_out};
}

// Launches the gather (or in-place compaction) over [B, S, H, Dh] views, 24 tensors a launch.
void run_kv(const std::vector<at::Tensor>& srcs, const std::vector<at::Tensor>& dsts, const at::Tensor& keep,
            int64_t S, bool in_place, const char* op) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (size_t first = 0; first < srcs.size(); first += kMaxTensorsPerLaunch) {
    GatherArgs g{};
    g.keep = keep.const_data_ptr<int64_t>();
    g.B = keep.size(0), g.n = keep.size(1), g.S = S;
    for (size_t i = first; i < std::min(srcs.size(), first + kMaxTensorsPerLaunch); ++i) {
      const at::Tensor& s = srcs[i];
      const at::Tensor& d = dsts[i];
      const int64_t e = s.element_size();
      g.t[g.count++] = RowTensor{static_cast<const char*>(s.const_data_ptr()), static_cast<char*>(d.data_ptr()),
                                 s.stride(0) * e, s.stride(1) * e, s.stride(2) * e, d.stride(0) * e, d.stride(1) * e,
                                 d.stride(2) * e, s.size(2), s.size(3) * e};
    }
    check_launch(in_place ? launch_compact_inplace(g, stream) : launch_gather(g, stream), op);
  }
}

at::Tensor keep_rows(const at::Tensor& keep_pos) {
  return (keep_pos.dim() == 1 ? keep_pos.unsqueeze(0) : keep_pos).contiguous();
}

void assert_keep_in_range(const at::Tensor& keep, int64_t S, const char* op) {
  if (keep.numel() > 0) {
    device_assert(keep.ge(0).logical_and(keep.lt(S)).all(), msg_keep_range(op, S));
  }
}

std::vector<at::Tensor> kv_compact_cuda(at::TensorList caches, const at::Tensor& keep_pos, int64_t seq_dim) {
  constexpr const char* op = "v2drop.kv_compact";
  seq_dim = check_kv_compact(caches, keep_pos, seq_dim);
  const c10::cuda::CUDAGuard guard(keep_pos.device());
  const at::Tensor keep = keep_rows(keep_pos);
  const int64_t S = caches[0].size(seq_dim);
  assert_keep_in_range(keep, S, op);
  std::vector<at::Tensor> outs, srcs, dsts;
  for (const at::Tensor& cache : caches) {
    std::vector<int64_t> shape = cache.sizes().vec();
    shape[seq_dim] = keep.size(1);
    outs.push_back(at::empty(shape, cache.options()));
    if (cache.numel() > 0 && outs.back().numel() > 0) {
      srcs.push_back(kv_bshd_view(cache, seq_dim));
      dsts.push_back(kv_bshd_view(outs.back(), seq_dim));
    }
  }
  run_kv(srcs, dsts, keep, S, false, op);
  return outs;
}

void kv_compact_inplace_cuda(at::TensorList caches, const at::Tensor& keep_pos, int64_t seq_dim) {
  constexpr const char* op = "v2drop.kv_compact_";
  seq_dim = check_kv_compact_(caches, keep_pos, seq_dim);
  const c10::cuda::CUDAGuard guard(keep_pos.device());
  const at::Tensor keep = keep_rows(keep_pos);
  const int64_t S = caches[0].size(seq_dim);
  assert_keep_in_range(keep, S, op);
  if (keep.size(1) > 1) {
    device_assert(keep.slice(1, 1).gt(keep.slice(1, 0, -1)).all(), msg_strictly_increasing(op));
  }
  std::vector<at::Tensor> views;
  for (const at::Tensor& cache : caches) {
    if (cache.numel() > 0) views.push_back(kv_bshd_view(cache, seq_dim));
  }
  run_kv(views, views, keep, S, true, op);
}

}  // namespace

// The library and dispatch key the kernels register under: torch.ops.v2drop on CUDA tensors. A
// host build of this file against a CUDA emulator (the test suite's) defines its own.
#ifndef V2DROP_CUDA_LIBRARY
#define V2DROP_CUDA_LIBRARY v2drop
#define V2DROP_CUDA_KEY CUDA
#endif

TORCH_LIBRARY_IMPL(V2DROP_CUDA_LIBRARY, V2DROP_CUDA_KEY, m) {
  m.impl("variation_topk", &variation_topk_cuda);
  m.impl("variation_drop", &variation_drop_cuda);
  m.impl("variation_drop_varlen", &variation_drop_varlen_cuda);
  m.impl("select_drop", &select_drop_cuda);
  m.impl("select_drop_varlen", &select_drop_varlen_cuda);
  m.impl("kv_compact", &kv_compact_cuda);
  m.impl("kv_compact_", &kv_compact_inplace_cuda);
}

}  // namespace v2drop::cuda
