// Torch binding of the CUDA kernels: TORCH_LIBRARY_IMPL(v2drop, CUDA). Validates arguments with
// the checks every backend shares (checks.h), allocates outputs, and calls the framework-free
// launchers (launch.h) on the current CUDA stream of the tensors' device.
// Rules that need the data (visual tokens per row, cu_seqlens values, keep_pos ranges and order)
// are checked on the device with at::_assert_async: no host sync, CUDA-graph capturable. A
// failure raises RuntimeError (a device-side assert), not ValueError as on CPU; the kernels
// never read or write out of bounds on such input.
// Launches: variation_topk 2 (scores, select), variation_drop 3 (+ gather), variation_drop_varlen
// 3, kv_compact / kv_compact_ 1 per 24 tensors.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../checks.h"
#include "../drop_outputs.h"
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
  a.mask = mask.const_data_ptr<bool>();
  a.m_s0 = mask.stride(0), a.m_s1 = mask.stride(1);
  a.R = mask.size(0), a.S = mask.size(1);
  a.counts = counts;
  return a;
}

// Drop-mode outputs of the select kernel: survivors' positions, position ids [P, R, S] and mask.
void set_drop_outputs(SelectArgs& a, const at::Tensor& pos3, at::Tensor& keep_pos, at::Tensor& pos_out,
                      at::Tensor& mask_out) {
  a.keep_pos = keep_pos.mutable_data_ptr<int64_t>();
  a.S_out = keep_pos.size(1);
  a.pos = pos3.const_data_ptr();
  a.pos_bytes = static_cast<int>(pos3.element_size());
  a.P = pos3.size(0), a.pos_sp = pos3.stride(0), a.pos_s0 = pos3.stride(1), a.pos_s1 = pos3.stride(2);
  a.pos_out = pos_out.mutable_data_ptr();
  a.mask_out = mask_out.mutable_data_ptr<bool>();
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

std::tuple<at::Tensor, at::Tensor> variation_topk_cuda(const at::Tensor& hidden, const at::Tensor& prev,
                                                       const at::Tensor& vis_mask, int64_t k) {
  constexpr const char* op = "v2drop.variation_topk";
  check_hidden_pair(op, hidden, prev, 3);
  check_vis_mask(op, vis_mask, hidden);
  TORCH_CHECK_VALUE(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK_VALUE(k <= hidden.size(1), op, ": k must be <= S=", hidden.size(1), ", got ", k);
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
  device_assert((counts == counts[0]).all(),
                "v2drop.variation_topk: every row of vis_mask must hold the same number of visual tokens");
  device_assert(counts[0] >= k, "v2drop.variation_topk: k must be in [1, V] (visual tokens per row in vis_mask), "
                                "got " + std::to_string(k));
  return {keep_idx, scores};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> variation_drop_cuda(
    const at::Tensor& hidden, const at::Tensor& prev, const at::Tensor& vis_mask, const at::Tensor& position_ids,
    int64_t num_visual, int64_t k) {
  constexpr const char* op = "v2drop.variation_drop";
  check_hidden_pair(op, hidden, prev, 3);
  check_vis_mask(op, vis_mask, hidden);
  check_position_ids(op, position_ids, hidden);
  const int64_t B = hidden.size(0), S = hidden.size(1);
  check_k_padded(op, num_visual, k, S);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool mrope = position_ids.dim() == 3;
  const at::Tensor pos3 = mrope ? position_ids : position_ids.unsqueeze(0);
  DropOutputs o = empty_drop_outputs(hidden, pos3, vis_mask, S - num_visual + k);
  at::Tensor counts = at::empty({B}, hidden.options().dtype(at::kInt));
  if (B > 0) {
    run_scores(hidden, prev, vis_mask, o.scores, stream, op);
    SelectArgs a = select_args(o.scores, vis_mask, counts.mutable_data_ptr<int32_t>());
    a.segments = B, a.k = k;
    set_drop_outputs(a, pos3, o.keep_pos, o.pos_out, o.mask_out);
    check_launch(launch_select(a, stream), op);
    gather_tokens(hidden, o.keep_pos, o.hidden_out, stream, op);
    device_assert((counts == num_visual).all(),
                  "v2drop.variation_drop: every row of vis_mask must hold num_visual=" + std::to_string(num_visual) +
                      " visual tokens");
  }
  return {o.hidden_out, mrope ? o.pos_out : o.pos_out.squeeze(0), o.keep_pos, o.mask_out, o.scores};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> variation_drop_varlen_cuda(
    const at::Tensor& hidden, const at::Tensor& prev, const at::Tensor& vis_mask, const at::Tensor& position_ids,
    const at::Tensor& cu_seqlens, at::IntArrayRef num_visual, at::IntArrayRef k) {
  constexpr const char* op = "v2drop.variation_drop_varlen";
  check_hidden_pair(op, hidden, prev, 2);
  check_vis_mask(op, vis_mask, hidden);
  check_position_ids(op, position_ids, hidden);
  check_varlen_args(op, cu_seqlens, hidden, num_visual, k);
  const c10::cuda::CUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t T = hidden.size(0), B = cu_seqlens.size(0) - 1;

  // Per-sequence k, the tokens dropped before each sequence, and the expected visual counts:
  // known on the host, copied to the device in one small transfer.
  at::Tensor host = at::empty({3, B}, at::TensorOptions().dtype(at::kLong));
  int64_t* h = host.mutable_data_ptr<int64_t>();
  int64_t dropped = 0;
  for (int64_t b = 0; b < B; ++b) {
    h[b] = k[b];
    h[B + b] = dropped;
    h[2 * B + b] = num_visual[b];
    dropped += num_visual[b] - k[b];
  }
  const at::Tensor dev = host.to(hidden.device());
  const int64_t Tout = T - dropped;
  TORCH_CHECK_VALUE(Tout >= 0, op, ": the sequences drop more tokens than T=", T, " holds");

  const bool mrope = position_ids.dim() == 2;
  const at::Tensor pos3 = (mrope ? position_ids : position_ids.unsqueeze(0)).unsqueeze(1);  // [P, 1, T]
  const at::Tensor hidden3 = hidden.unsqueeze(0);
  const at::Tensor mask2 = vis_mask.unsqueeze(0);
  DropOutputs o = empty_drop_outputs(hidden3, pos3, mask2, Tout);
  at::Tensor cu_out = at::empty({B + 1}, cu_seqlens.options());
  at::Tensor counts = at::empty({B}, hidden.options().dtype(at::kInt));
  const at::Tensor cu = cu_seqlens.contiguous();

  run_scores(hidden3, prev.unsqueeze(0), mask2, o.scores, stream, op);
  SelectArgs a = select_args(o.scores, mask2, counts.mutable_data_ptr<int32_t>());
  a.segments = B;
  a.cu = cu.const_data_ptr<int32_t>();
  a.k_per_seg = dev[0].const_data_ptr<int64_t>();
  a.drop_before = dev[1].const_data_ptr<int64_t>();
  a.cu_out = cu_out.mutable_data_ptr<int32_t>();
  set_drop_outputs(a, pos3, o.keep_pos, o.pos_out, o.mask_out);
  check_launch(launch_select(a, stream), op);
  gather_tokens(hidden3, o.keep_pos, o.hidden_out, stream, op);
  // One check for all the data rules (the select kernel counts -1 where cu_seqlens is malformed).
  device_assert((counts.to(at::kLong) == dev[2]).all(),
                "v2drop.variation_drop_varlen: bad cu_seqlens or vis_mask: cu_seqlens[0] must be 0, cu_seqlens must be "
                "non-decreasing, cu_seqlens[-1] must equal T=" + std::to_string(T) +
                    ", sequence b must hold num_visual[b] visual tokens");
  at::Tensor pos_flat = o.pos_out.squeeze(1);
  return {o.hidden_out.squeeze(0), mrope ? pos_flat : pos_flat.squeeze(0), o.keep_pos.squeeze(0),
          o.mask_out.squeeze(0),   cu_out,                                  o.scores.squeeze(0)};
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
    device_assert(keep.ge(0).logical_and(keep.lt(S)).all(),
                  std::string(op) + ": keep_pos values must be in [0, " + std::to_string(S) + ")");
  }
}

std::vector<at::Tensor> kv_compact_cuda(at::TensorList caches, const at::Tensor& keep_pos, int64_t seq_dim) {
  constexpr const char* op = "v2drop.kv_compact";
  seq_dim = check_kv_args(op, caches, keep_pos, seq_dim);
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
  seq_dim = check_kv_args(op, caches, keep_pos, seq_dim);
  check_writable_caches(op, caches);
  const c10::cuda::CUDAGuard guard(keep_pos.device());
  const at::Tensor keep = keep_rows(keep_pos);
  const int64_t S = caches[0].size(seq_dim);
  TORCH_CHECK_VALUE(keep.size(1) <= S, op, ": keep_pos has ", keep.size(1), " entries per row, more than S=", S);
  assert_keep_in_range(keep, S, op);
  if (keep.size(1) > 1) {
    device_assert(keep.slice(1, 1).gt(keep.slice(1, 0, -1)).all(),
                  "v2drop.kv_compact_: keep_pos rows must be strictly increasing for in-place compaction");
  }
  std::vector<at::Tensor> views;
  for (const at::Tensor& cache : caches) {
    if (cache.numel() > 0) views.push_back(kv_bshd_view(cache, seq_dim));
  }
  run_kv(views, views, keep, S, true, op);
}

}  // namespace

// The test suite builds this file on the host against the CUDA emulator, with CPU tensors, as
// its own library (python_tests/cuda_emulator/ops.cpp defines the schemas there).
#ifdef V2DROP_CUDA_EMULATION
#define V2DROP_CUDA_LIBRARY v2drop_cuda_emulated
#define V2DROP_CUDA_KEY CPU
#else
#define V2DROP_CUDA_LIBRARY v2drop
#define V2DROP_CUDA_KEY CUDA
#endif

TORCH_LIBRARY_IMPL(V2DROP_CUDA_LIBRARY, V2DROP_CUDA_KEY, m) {
  m.impl("variation_topk", &variation_topk_cuda);
  m.impl("variation_drop", &variation_drop_cuda);
  m.impl("variation_drop_varlen", &variation_drop_varlen_cuda);
  m.impl("kv_compact", &kv_compact_cuda);
  m.impl("kv_compact_", &kv_compact_inplace_cuda);
}

}  // namespace v2drop::cuda
