// Variation scores: scores[r, s] = ||hidden[r, s, :] - prev[r, s, :]||_2 at visual tokens, 0 elsewhere.
// One warp per token row, 4 rows per 128-thread block, grid over all R·S tokens. Each lane reads
// 16-byte vectors of hidden and prev (scalar loads when a row is not 16-byte aligned), converts
// to float32, accumulates (h - p)^2 in float32, and the warp sums with a fixed butterfly, so a
// row's score is deterministic. Text rows write 0 without reading.
// Memory traffic: reads 2·V·D·e bytes (visual rows only) plus the mask; writes R·S·4 bytes.
#include "common.cuh"
#include "launch.h"

namespace v2drop::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;

template <typename T, bool kVec16>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    scores_kernel(const T* __restrict__ hidden, int64_t h_s0, int64_t h_s1, const T* __restrict__ prev,
                  int64_t p_s0, int64_t p_s1, const bool* __restrict__ mask, int64_t m_s0, int64_t m_s1,
                  int64_t R, int64_t S, int64_t D, float* __restrict__ scores) {
  const int lane = threadIdx.x & 31;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (token >= R * S) return;
  const int64_t r = token / S, s = token % S;
  if (!mask[r * m_s0 + s * m_s1]) {  // warp-uniform branch
    if (lane == 0) scores[token] = 0.0f;
    return;
  }
  const T* h = hidden + r * h_s0 + s * h_s1;
  const T* p = prev + r * p_s0 + s * p_s1;
  float acc = 0.0f;
  if constexpr (kVec16) {
    constexpr int kPer = 16 / sizeof(T);
    const uint4* hv = reinterpret_cast<const uint4*>(h);
    const uint4* pv = reinterpret_cast<const uint4*>(p);
    const int64_t vectors = D / kPer;
    for (int64_t i = lane; i < vectors; i += 32) {
      const uint4 a = __ldg(hv + i), b = __ldg(pv + i);
      const T* x = reinterpret_cast<const T*>(&a);
      const T* y = reinterpret_cast<const T*>(&b);
#pragma unroll
      for (int e = 0; e < kPer; ++e) {
        const float d = Elem<T>::to_float(x[e]) - Elem<T>::to_float(y[e]);
        acc += d * d;
      }
    }
  } else {
    for (int64_t i = lane; i < D; i += 32) {
      const float d = Elem<T>::to_float(h[i]) - Elem<T>::to_float(p[i]);
      acc += d * d;
    }
  }
  acc = warp_sum(acc);
  if (lane == 0) scores[token] = sqrtf(acc);
}

bool aligned16(const void* ptr, int64_t s0, int64_t s1, int64_t D, int64_t elem) {
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (s0 * elem) % 16 == 0 &&
         (s1 * elem) % 16 == 0 && (D * elem) % 16 == 0;
}

template <typename T>
cudaError_t launch_typed(const ScoresArgs& a, cudaStream_t stream) {
  const int64_t tokens = a.R * a.S;
  if (tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((tokens + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const dim3 block(kWarpsPerBlock * 32);
  const T* h = static_cast<const T*>(a.hidden);
  const T* p = static_cast<const T*>(a.prev);
  const bool vec = aligned16(h, a.h_s0, a.h_s1, a.D, sizeof(T)) && aligned16(p, a.p_s0, a.p_s1, a.D, sizeof(T));
  if (vec) {
    V2DROP_LAUNCH(grid, block, stream, scores_kernel<T, true>)(h, a.h_s0, a.h_s1, p, a.p_s0, a.p_s1, a.mask, a.m_s0,
                                                               a.m_s1, a.R, a.S, a.D, a.scores);
  } else {
    V2DROP_LAUNCH(grid, block, stream, scores_kernel<T, false>)(h, a.h_s0, a.h_s1, p, a.p_s0, a.p_s1, a.mask, a.m_s0,
                                                                a.m_s1, a.R, a.S, a.D, a.scores);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_scores(const ScoresArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case DType::F32: return launch_typed<float>(a, stream);
    case DType::F16: return launch_typed<__half>(a, stream);
    case DType::BF16: return launch_typed<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace v2drop::cuda
