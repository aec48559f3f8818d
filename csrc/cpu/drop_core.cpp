// CPU implementation of the shared pieces declared in drop_core.h.
//
// Memory traffic of a fused drop (padded, R rows, S tokens, V visual, k kept, D hidden, e bytes
// per element): the scores read 2·R·V·D·e (hidden and prev, visual tokens only), the
// compaction reads and writes R·(S − V + k)·D·e; masks, scores and indices are O(R·S).
// Parallelism: scores over tokens, selection over segments, gathers over output tokens.
// Instruction sets: the scores run explicit AVX-512 or AVX2 loops when the CPU has them (16-bit
// floats widened 16 at a time), outputs of 8 MiB or more are written with non-temporal stores;
// every path gives the same bits (test_semantics.py compares them).
#include "drop_core.h"

#include "../checks.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
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

// x86-64 paths: explicit AVX-512 / AVX2 loops, chosen at run time (the extension is built for the
// baseline ISA, where the portable loop runs 4 lanes at a time and widens 16-bit floats one by
// one). Each keeps the portable loop's 16 lanes (element i in lane i % 16) and multiplies and adds
// separately (no FMA), then finish_lanes sums the same tree: every path gives the same bits.
#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw")
inline __m512 widen16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 widen16(const c10::BFloat16* p) {  // a bfloat16 is the top half of a float32
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
inline __m512 widen16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <typename scalar_t>
float squared_distance_avx512(const scalar_t* a, const scalar_t* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m512 d = _mm512_sub_ps(widen16(a + i), widen16(b + i));
    acc = _mm512_add_ps(acc, _mm512_mul_ps(d, d));
  }
  float lanes[kLanes];
  _mm512_storeu_ps(lanes, acc);
  return finish_lanes(lanes, a, b, i, n);
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,f16c")
// Lanes 0-7 and 8-15 of the 16.
inline void widen8x2(const float* p, __m256& lo, __m256& hi) {
  lo = _mm256_loadu_ps(p);
  hi = _mm256_loadu_ps(p + 8);
}
inline void widen8x2(const c10::BFloat16* p, __m256& lo, __m256& hi) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(bits)), 16));
  hi = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(bits, 1)), 16));
}
inline void widen8x2(const c10::Half* p, __m256& lo, __m256& hi) {
  const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(bits));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(bits, 1));
}
template <typename scalar_t>
float squared_distance_avx2(const scalar_t* a, const scalar_t* b, int64_t n) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    __m256 a_lo, a_hi, b_lo, b_hi;
    widen8x2(a + i, a_lo, a_hi);
    widen8x2(b + i, b_lo, b_hi);
    const __m256 d_lo = _mm256_sub_ps(a_lo, b_lo), d_hi = _mm256_sub_ps(a_hi, b_hi);
    lo = _mm256_add_ps(lo, _mm256_mul_ps(d_lo, d_lo));
    hi = _mm256_add_ps(hi, _mm256_mul_ps(d_hi, d_hi));
  }
  float lanes[kLanes];
  _mm256_storeu_ps(lanes, lo);
  _mm256_storeu_ps(lanes + 8, hi);
  return finish_lanes(lanes, a, b, i, n);
}
#pragma GCC pop_options

// Row copies with non-temporal stores: a large output is written without first reading each
// destination line into the cache (a third of a gather's traffic) and without evicting the inputs.
#pragma GCC push_options
#pragma GCC target("avx512f")
void stream_copy_avx512(char* dst, const char* src, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), _mm512_loadu_si512(src + i));
  }
}
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2")
void stream_copy_avx2(char* dst, const char* src, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
  }
}
#pragma GCC pop_options

enum class Isa { kPortable, kAvx2, kAvx512 };

// The widest path this CPU runs; V2DROP_CPU_ISA=portable|avx2 asks for a narrower one (the tests
// compare the paths' bits).
Isa pick_isa() {
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  const char* want = std::getenv("V2DROP_CPU_ISA");
  const std::string asked = want == nullptr ? "" : want;
  if (asked == "portable") return Isa::kPortable;
  if (asked == "avx2" && avx2) return Isa::kAvx2;
  return avx512 ? Isa::kAvx512 : avx2 ? Isa::kAvx2 : Isa::kPortable;
}
const Isa kIsa = pick_isa();
#endif

// Sum of squared differences in float32 with kLanes independent accumulators and a fixed-order
// tree reduction: the result depends only on the row's data, never on threads, position or
// instruction set, so equal rows give bit-equal scores.
template <typename scalar_t>
float squared_distance(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                       int64_t n) {
#if defined(__x86_64__)
  if (kIsa == Isa::kAvx512) return squared_distance_avx512(a, b, n);
  if (kIsa == Isa::kAvx2) return squared_distance_avx2(a, b, n);
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

RowCopier::RowCopier(const void* dst, int64_t row_bytes, int64_t total_bytes) : row_bytes_(row_bytes) {
#if defined(__x86_64__)
  const int64_t width = kIsa == Isa::kAvx512 ? 64 : kIsa == Isa::kAvx2 ? 32 : 0;
  stream_ = width > 0 && total_bytes >= kStreamBytes && row_bytes % width == 0 &&
            reinterpret_cast<uintptr_t>(dst) % width == 0;
#else
  (void)dst;
  (void)total_bytes;
#endif
}

void RowCopier::copy(char* dst, const char* src) const {
#if defined(__x86_64__)
  if (stream_) {
    if (kIsa == Isa::kAvx512) return stream_copy_avx512(dst, src, row_bytes_);
    return stream_copy_avx2(dst, src, row_bytes_);
  }
#endif
  std::memcpy(dst, src, row_bytes_);
}

void RowCopier::finish() const {
#if defined(__x86_64__)
  if (stream_) _mm_sfence();  // streaming stores are weakly ordered: make them visible
#endif
}

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
  switch (hidden.scalar_type()) {  // the dtypes check_hidden_pair admits
    case at::kFloat: return variation_scores_impl<float>(hidden, prev, vis_mask, scores);
    case at::kHalf: return variation_scores_impl<c10::Half>(hidden, prev, vis_mask, scores);
    case at::kBFloat16: return variation_scores_impl<c10::BFloat16>(hidden, prev, vis_mask, scores);
    default: TORCH_INTERNAL_ASSERT(false, "variation_scores: unsupported dtype ", hidden.scalar_type());
  }
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
  const RowCopier copier(ho, row_bytes, out.nbytes());
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, R * Sout, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      copier.copy(ho + t * row_bytes, h + (t / Sout) * hr + keep[t] * hs);
    }
    copier.finish();
  });
}

}  // namespace v2drop::cpu
