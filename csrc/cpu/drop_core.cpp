// CPU implementation of the shared pieces declared in drop_core.h.
//
// Memory traffic of a fused drop (padded, R rows, S tokens, V visual, k kept, D hidden, e bytes
// per element): the scores read 2·R·V·D·e (hidden and prev, visual tokens only), the
// compaction reads and writes R·(S − V + k)·D·e; masks, scores and indices are O(R·S).
// Parallelism (torch's threads, through drop_core.h's parallel_for; work under kParallelBytes stays
// on the calling thread): scores over the visual tokens, shared evenly; selection over segments
// (a partial selection, then one scan that writes every compacted output but the hidden states);
// the hidden-state gather over output tokens, runs of consecutive tokens copied as one block.
// Instruction sets: the scores run explicit AVX-512 or AVX2 loops when the CPU has them (16-bit
// floats widened 16 at a time), outputs of 8 MiB or more are written with non-temporal stores;
// every path gives the same bits (test_semantics.py compares them).
#include "drop_core.h"

#include "../checks.h"

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
  const int64_t R = hidden.size(0), S = hidden.size(1), D = hidden.size(2);
  const scalar_t* h = hidden.const_data_ptr<scalar_t>();
  const scalar_t* p = prev.const_data_ptr<scalar_t>();
  const bool* m = vis_mask.const_data_ptr<bool>();
  float* out = scores.mutable_data_ptr<float>();
  const int64_t hr = hidden.stride(0), hs = hidden.stride(1);
  const int64_t pr = prev.stride(0), ps = prev.stride(1);
  const int64_t mr = vis_mask.stride(0), ms = vis_mask.stride(1);
  // One pass over the mask: zeros at the other tokens, and the list of visual tokens (r * S + s),
  // which the threads then share evenly however the visual tokens lie in the rows.
  std::vector<int64_t> visual;
  visual.reserve(R * S);
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t s = 0; s < S; ++s) {
      if (m[r * mr + s * ms]) {
        visual.push_back(r * S + s);
      } else {
        out[r * S + s] = 0.0f;
      }
    }
  }
  const int64_t token_bytes = 2 * D * static_cast<int64_t>(sizeof(scalar_t));
  const int64_t grain = std::max<int64_t>(1, kParallelBytes / std::max<int64_t>(token_bytes, 1));
  parallel_for(0, static_cast<int64_t>(visual.size()), grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = visual[i], r = t / S, s = t % S;
      out[t] = std::sqrt(squared_distance(h + r * hr + s * hs, p + r * pr + s * ps, D));
    }
  });
}

// Rank key of the seg.k-th best visual token of `seg` (sc, m: the segment's row): the segment
// keeps exactly the visual tokens whose key is >= it, since keys are unique within a segment.
// k = 0 gives a key above every rank key (their high half is at most +inf's, 0xff800000).
uint64_t kth_key(const float* sc, const bool* m, int64_t ms, const Segment& seg,
                 std::vector<uint64_t>& scratch) {
  TORCH_INTERNAL_ASSERT(seg.len < (int64_t{1} << 32));
  scratch.clear();
  for (int64_t i = 0; i < seg.len; ++i) {
    const int64_t s = seg.begin + i;
    if (m[s * ms]) scratch.push_back(rank_key(sc[s], i));
  }
  const int64_t n = static_cast<int64_t>(scratch.size());
  TORCH_INTERNAL_ASSERT(seg.k <= n);
  if (seg.k == 0) return ~uint64_t{0};
  if (seg.k == n) return 0;  // every visual token
  std::nth_element(scratch.begin(), scratch.begin() + (seg.k - 1), scratch.end(),
                   std::greater<uint64_t>());
  return scratch[seg.k - 1];
}

// The survivors of one segment, in position order: its text tokens and the visual tokens whose
// rank key reaches `threshold`. Writes each one's position within the row (keep), mask value and
// position ids: P planes, read at pos[q * pp + s * ps] and written `plane` elements apart.
template <typename index_t>
void compact_one(const float* sc, const bool* m, int64_t ms, const index_t* pos, int64_t P,
                 int64_t pp, int64_t ps, const Segment& seg, uint64_t threshold, int64_t* keep,
                 bool* mask_out, index_t* pos_out, int64_t plane) {
  int64_t j = 0;
  for (int64_t i = 0; i < seg.len; ++i) {
    const int64_t s = seg.begin + i;
    const bool visual = m[s * ms];
    if (visual && rank_key(sc[s], i) < threshold) continue;
    keep[j] = s;
    mask_out[j] = visual;
    for (int64_t q = 0; q < P; ++q) pos_out[q * plane + j] = pos[q * pp + s * ps];
    ++j;
  }
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

void RowCopier::copy(char* dst, const char* src, int64_t rows) const {
  const int64_t bytes = rows * row_bytes_;
#if defined(__x86_64__)
  if (stream_) {
    if (kIsa == Isa::kAvx512) return stream_copy_avx512(dst, src, bytes);
    return stream_copy_avx2(dst, src, bytes);
  }
#endif
  std::memcpy(dst, src, bytes);
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
  const float* sc = scores.const_data_ptr<float>() + seg.row * scores.stride(0);
  const bool* m = vis_mask.const_data_ptr<bool>() + seg.row * vis_mask.stride(0);
  const int64_t ms = vis_mask.stride(1);
  const uint64_t threshold = kth_key(sc, m, ms, seg, scratch);
  for (int64_t i = 0; i < seg.len; ++i) {
    const int64_t s = seg.begin + i;
    if (m[s * ms] && rank_key(sc[s], i) >= threshold) *out++ = s;
  }
}

void compact_segments(const at::Tensor& scores, const at::Tensor& vis_mask,
                      const at::Tensor& position_ids, const std::vector<Segment>& segments,
                      SelectOutputs& out) {
  const bool planes = position_ids.dim() == 3;  // [P, R, S], else [R, S]: one plane
  const int64_t P = planes ? position_ids.size(0) : 1, pp = planes ? position_ids.stride(0) : 0;
  const int64_t pr = position_ids.stride(planes ? 1 : 0), ps = position_ids.stride(planes ? 2 : 1);
  const int64_t Sout = out.keep_pos.size(1);
  const int64_t plane = out.keep_pos.numel();  // pos_out is [P, R, S'] (or [R, S']), contiguous
  int64_t* keep = out.keep_pos.mutable_data_ptr<int64_t>();
  bool* mask_out = out.mask_out.mutable_data_ptr<bool>();
  const int64_t ms = vis_mask.stride(1);
  const auto run = [&](auto* pos_out, const auto* pos) {
    // One segment per task: its selection is a pass over its scores (nth_element) and a scan.
    parallel_for(0, static_cast<int64_t>(segments.size()), 1, [&](int64_t i0, int64_t i1) {
      std::vector<uint64_t> scratch;
      for (int64_t i = i0; i < i1; ++i) {
        const Segment& seg = segments[i];
        const float* sc = scores.const_data_ptr<float>() + seg.row * scores.stride(0);
        const bool* m = vis_mask.const_data_ptr<bool>() + seg.row * vis_mask.stride(0);
        const int64_t at = seg.row * Sout + seg.out_begin;
        compact_one(sc, m, ms, pos + seg.row * pr, P, pp, ps, seg,
                    kth_key(sc, m, ms, seg, scratch), keep + at, mask_out + at, pos_out + at,
                    plane);
      }
    });
  };
  if (position_ids.scalar_type() == at::kLong) {
    run(out.pos_out.mutable_data_ptr<int64_t>(), position_ids.const_data_ptr<int64_t>());
  } else {
    run(out.pos_out.mutable_data_ptr<int32_t>(), position_ids.const_data_ptr<int32_t>());
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
  const bool runs = hs == row_bytes;  // consecutive tokens are consecutive rows in memory
  const int64_t grain = std::max<int64_t>(1, kParallelBytes / std::max<int64_t>(2 * row_bytes, 1));
  parallel_for(0, R * Sout, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1;) {
      // A run: tokens of one row at consecutive positions.
      const int64_t row_end = std::min(t1, (t / Sout + 1) * Sout);
      int64_t n = 1;
      while (runs && t + n < row_end && keep[t + n] == keep[t] + n) ++n;
      copier.copy(ho + t * row_bytes, h + (t / Sout) * hr + keep[t] * hs, n);
      t += n;
    }
    copier.finish();
  });
}

}  // namespace v2drop::cpu
