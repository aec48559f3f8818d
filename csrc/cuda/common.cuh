// Device helpers shared by the CUDA kernels: element loads as float, the contract's rank key,
// the launch macro.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

// kernel<<<grid, block, 0, stream>>>(args...) is written V2DROP_LAUNCH(grid, block, stream, kernel)(args...),
// so that the kernels can also be built with a host C++ compiler against a CUDA emulator whose
// cuda_runtime.h defines its own V2DROP_LAUNCH (the test suite runs them on the CPU that way).
#ifndef V2DROP_LAUNCH
#define V2DROP_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#endif

namespace v2drop::cuda {

template <typename T>
struct Elem;
template <>
struct Elem<float> {
  __device__ static float to_float(float x) { return x; }
};
template <>
struct Elem<__half> {
  __device__ static float to_float(__half x) { return __half2float(x); }
};
template <>
struct Elem<__nv_bfloat16> {
  __device__ static float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
};

// Order-preserving 32-bit key of a score: a larger key ranks higher. NaN maps to 0 (below
// -inf, which maps to 0x007fffff); -0 ranks as +0. Ties between equal keys are broken by
// position in the kernels (lower position first).
__device__ __forceinline__ uint32_t rank_key(float score) {
  if (score != score) return 0u;
  if (score == 0.0f) score = 0.0f;
  const uint32_t bits = __float_as_uint(score);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float warp_sum(float v) {
  // Butterfly with a fixed pattern: every lane ends with the same, deterministic sum.
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace v2drop::cuda
