// CPU implementation of the shared pieces declared in drop_core.h.
//
// Memory traffic of a fused drop (padded, R rows, S tokens, V visual, k kept, D hidden, e bytes
// per element): the scores read 2·R·V·D·e (hidden and prev, visual tokens only), the
// compaction reads and writes R·(S − V + k)·D·e; masks, scores and indices are O(R·S).
// Parallelism: scores over tokens, selection over segments, gathers over output tokens.
#include "drop_core.h"

#include "../checks.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace v2drop::cpu {
namespace {

constexpr int kLanes = 16;

// Adds the tail i..n of a row to the lanes, then sums the lanes in a fixed tree order.
template <typename scalar_t>
float finish_lanes(float (&acc)[kLanes], const scalar_t* a, const scalar_t* b, int64_t i,
                   int64_t n) {
  for (int l = 0; i < n; ++i, ++l) {
    const float d = static_cast<float>(a[i]) - static_cast<float>(b[i]);
    acc[l] += d * d;
  }
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0];
}

#if defined(__x86_64__)
// float16 with F16C: the same 16 lanes and order as the portable loop below (lanes 0-7 in lo,
// 8-15 in hi; multiply and add separately, no FMA), so the result is the same bits. c10::Half's
// scalar conversion does not vectorise, which made float16 4x slower than bfloat16.
__attribute__((target("avx2,f16c"))) float squared_distance_f16c(const c10::Half* a,
                                                                  const c10::Half* b,
                                                                  int64_t n) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256i va = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i));
    const __m256i vb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i));
    const __m256 d_lo = _mm256_sub_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(va)),
                                      _mm256_cvtph_ps(_mm256_castsi256_si128(vb)));
    const __m256 d_hi = _mm256_sub_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(va, 1)),
                                      _mm256_cvtph_ps(_mm256_extracti128_si256(vb, 1)));
    lo = _mm256_add_ps(lo, _mm256_mul_ps(d_lo, d_lo));
    hi = _mm256_add_ps(hi, _mm256_mul_ps(d_hi, d_hi));
  }
  float acc[kLanes];
  _mm256_storeu_ps(acc, lo);
  _mm256_storeu_ps(acc + 8, hi);
  return finish_lanes(acc, a, b, i, n);
}

const bool kHasF16C = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#endif

// Sum of squared differences in float32 with kLanes independent accumulators (vectorised by
// the compiler) and a fixed-order tree reduction: the result depends only on the row's data,
// never on threads, position or instruction set, so equal rows give bit-equal scores.
template <typename scalar_t>
float squared_distance(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                       int64_t n) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (kHasF16C) return squared_distance_f16c(a, b, n);
  }
#endif
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float d = static_cast<float>(a[i + l]) - static_cast<float>(b[i + l]);
      acc[l] += d * d;
    }
  }
  return finish_lanes(acc, a, b, i, n);
}

template <typename scalar_t>
void variation_scores_impl(const at::Tensor& hidden, const at::Tensor& prev,
                           const at::Tensor& vis_mask, at::Tensor& scores) {
  const int64_t S = hidden.size(1), D = hidden.size(2);
  const scalar_t* h = hidden.const_data_ptr<scalar_t>();
  const scalar_t* p = prev.const_data_ptr<scalar_t>();
  const bool* m = vis_mask.const_data_ptr<bool>();
  float* out = scores.mutable_data_ptr<float>();
  const int64_t hr = hidden.stride(0), hs = hidden.stride(1);
  const int64_t pr = prev.stride(0), ps = prev.stride(1);
  const int64_t mr = vis_mask.stride(0), ms = vis_mask.stride(1);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, scores.numel(), grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / S, s = t % S;
      out[t] = m[r * mr + s * ms]
                   ? std::sqrt(squared_distance(h + r * hr + s * hs, p + r * pr + s * ps, D))
                   : 0.0f;
    }
  });
}

// Position ids ([P, R, S] planes) and mask of the survivors listed in keep_pos [R, S'].
template <typename index_t>
void gather_ids(const at::Tensor& vis_mask, const at::Tensor& position_ids, SelectOutputs& o) {
  const int64_t R = o.keep_pos.size(0), Sout = o.keep_pos.size(1), P = position_ids.size(0);
  const bool* m = vis_mask.const_data_ptr<bool>();
  const int64_t mr = vis_mask.stride(0), ms = vis_mask.stride(1);
  const index_t* pos = position_ids.const_data_ptr<index_t>();
  const int64_t pp = position_ids.stride(0), pr = position_ids.stride(1),
                ps = position_ids.stride(2);
  const int64_t* keep = o.keep_pos.const_data_ptr<int64_t>();
  index_t* po = o.pos_out.mutable_data_ptr<index_t>();
  bool* mo = o.mask_out.mutable_data_ptr<bool>();
  const int64_t n = R * Sout;
  at::parallel_for(0, n, 4096, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = t / Sout, src = keep[t];
      mo[t] = m[r * mr + src * ms];
      for (int64_t q = 0; q < P; ++q) po[q * n + t] = pos[q * pp + r * pr + src * ps];
    }
  });
}

}  // namespace

void prefer_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr size_t kHuge = size_t{2} << 20, kMinBytes = size_t{32} << 20;
  if (bytes < kMinBytes) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

std::vector<Segment> padded_segments(const char* op, const at::Tensor& vis_mask,
                                     int64_t num_visual, int64_t k) {
  const int64_t B = vis_mask.size(0), S = vis_mask.size(1);
  const bool* m = vis_mask.const_data_ptr<bool>();
  const int64_t mr = vis_mask.stride(0), ms = vis_mask.stride(1);
  std::vector<int64_t> counts(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < S; ++s) counts[b] += m[b * mr + s * ms];
  }
  std::vector<Segment> segments(B);
  for (int64_t b = 0; b < B; ++b) {
    if (num_visual < 0) {
      TORCH_CHECK_VALUE(counts[b] == counts[0], msg_equal_rows(op), ", row ", b, " holds ",
                        counts[b], ", row 0 holds ", counts[0]);
    } else {
      TORCH_CHECK_VALUE(counts[b] == num_visual, msg_rows_hold(op, num_visual), ", row ", b,
                        " holds ", counts[b]);
    }
    segments[b] = Segment{b, 0, S, k, 0};
  }
  if (num_visual < 0 && B > 0) {
    TORCH_CHECK_VALUE(k <= counts[0], msg_k_above_visual(op, k), " and V=", counts[0]);
  }
  return segments;
}

std::vector<Segment> packed_segments(const char* op, const at::Tensor& cu_seqlens,
                                     const at::Tensor& vis_mask, at::IntArrayRef num_visual,
                                     at::IntArrayRef k, at::Tensor& cu_out) {
  const int64_t T = vis_mask.size(0), B = cu_seqlens.size(0) - 1;
  const at::Tensor cu = cu_seqlens.contiguous();
  const int32_t* c = cu.const_data_ptr<int32_t>();
  const std::string base = msg_varlen(op, T);
  TORCH_CHECK_VALUE(c[0] == 0, base, ": cu_seqlens[0] is ", c[0]);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(c[b + 1] >= c[b], base, ": cu_seqlens[", b + 1, "]=", c[b + 1],
                      " < cu_seqlens[", b, "]=", c[b]);
  }
  TORCH_CHECK_VALUE(c[B] == T, base, ": cu_seqlens[-1] is ", c[B]);
  const bool* m = vis_mask.const_data_ptr<bool>();
  const int64_t ms = vis_mask.stride(0);
  int32_t* co = cu_out.mutable_data_ptr<int32_t>();
  co[0] = 0;
  std::vector<Segment> segments(B);
  for (int64_t b = 0; b < B; ++b) {
    int64_t count = 0;
    for (int64_t t = c[b]; t < c[b + 1]; ++t) count += m[t * ms];
    TORCH_CHECK_VALUE(count == num_visual[b], base, ": sequence ", b, " holds ", count,
                      ", num_visual[", b, "]=", num_visual[b]);
    segments[b] = Segment{0, c[b], c[b + 1] - c[b], k[b], co[b]};
    co[b + 1] = static_cast<int32_t>(co[b] + segments[b].len - num_visual[b] + k[b]);
  }
  return segments;
}

void variation_scores(const at::Tensor& hidden, const at::Tensor& prev,
                      const at::Tensor& vis_mask, at::Tensor& scores) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, hidden.scalar_type(),
                                  "v2drop_variation_scores", [&] {
                                    variation_scores_impl<scalar_t>(hidden, prev, vis_mask,
                                                                    scores);
                                  });
}

void select_segment(const at::Tensor& scores, const at::Tensor& vis_mask, const Segment& seg,
                    std::vector<uint64_t>& scratch, int64_t* out) {
  TORCH_INTERNAL_ASSERT(seg.len < (int64_t{1} << 32));
  const float* sc = scores.const_data_ptr<float>() + seg.row * scores.stride(0);
  const bool* m = vis_mask.const_data_ptr<bool>() + seg.row * vis_mask.stride(0);
  const int64_t ms = vis_mask.stride(1);
  scratch.clear();
  for (int64_t i = 0; i < seg.len; ++i) {
    const int64_t s = seg.begin + i;
    if (m[s * ms]) scratch.push_back(rank_key(sc[s], i));
  }
  TORCH_INTERNAL_ASSERT(seg.k <= static_cast<int64_t>(scratch.size()));
  if (seg.k < static_cast<int64_t>(scratch.size())) {
    std::nth_element(scratch.begin(), scratch.begin() + seg.k, scratch.end(),
                     std::greater<uint64_t>());
  }
  for (int64_t j = 0; j < seg.k; ++j) {
    out[j] = seg.begin + static_cast<int64_t>(~static_cast<uint32_t>(scratch[j]));
  }
  std::sort(out, out + seg.k);
}

void compact_segments(const at::Tensor& scores, const at::Tensor& vis_mask,
                      const at::Tensor& position_ids, const std::vector<Segment>& segments,
                      SelectOutputs& out) {
  int64_t* keep = out.keep_pos.mutable_data_ptr<int64_t>();
  const int64_t Sout = out.keep_pos.size(1), ms = vis_mask.stride(1);
  at::parallel_for(0, static_cast<int64_t>(segments.size()), 1, [&](int64_t i0, int64_t i1) {
    std::vector<uint64_t> scratch;
    std::vector<int64_t> selected;
    for (int64_t i = i0; i < i1; ++i) {
      const Segment& seg = segments[i];
      selected.resize(seg.k);
      select_segment(scores, vis_mask, seg, scratch, selected.data());
      // Merge the text tokens with the selected visual tokens, in position order.
      const bool* m = vis_mask.const_data_ptr<bool>() + seg.row * vis_mask.stride(0);
      int64_t* dst = keep + seg.row * Sout + seg.out_begin;
      int64_t next = 0;
      for (int64_t s = seg.begin; s < seg.begin + seg.len; ++s) {
        if (!m[s * ms]) {
          *dst++ = s;
        } else if (next < seg.k && selected[next] == s) {
          *dst++ = s;
          ++next;
        }
      }
    }
  });
  if (position_ids.scalar_type() == at::kLong) {
    gather_ids<int64_t>(vis_mask, position_ids, out);
  } else {
    gather_ids<int32_t>(vis_mask, position_ids, out);
  }
}

void gather_hidden(const at::Tensor& hidden, const at::Tensor& keep_pos, at::Tensor& out) {
  const int64_t R = keep_pos.size(0), Sout = keep_pos.size(1);
  const int64_t row_bytes = hidden.size(2) * static_cast<int64_t>(hidden.element_size());
  const char* h = static_cast<const char*>(hidden.const_data_ptr());
  const int64_t hr = hidden.stride(0) * hidden.element_size();
  const int64_t hs = hidden.stride(1) * hidden.element_size();
  const int64_t* keep = keep_pos.const_data_ptr<int64_t>();
  char* ho = static_cast<char*>(out.mutable_data_ptr());
  prefer_huge_pages(ho, out.nbytes());
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, R * Sout, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::memcpy(ho + t * row_bytes, h + (t / Sout) * hr + keep[t] * hs, row_bytes);
    }
  });
}

}  // namespace v2drop::cpu
