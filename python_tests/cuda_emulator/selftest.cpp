// Kernels that check the emulator itself: that a barrier makes other threads' writes visible,
// that a missing barrier gives a wrong result, and that divergent barriers and shuffles with
// exited lanes fail the launch. torch.ops.cuda_emulator_selftest.run(case, seed) returns the
// kernel's result, or raises when the launch fails; read_past_end(t) reads one element past a
// tensor, for the AddressSanitizer build to catch (python_tests/test_cuda_emulator.py).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <string>

namespace {

constexpr int kThreads = 256;

// Every thread stores tid + seed; thread 0 sums them after (or, wrongly, without) a barrier.
__global__ void block_sum_kernel(int64_t seed, bool barrier, int64_t* out) {
  __shared__ int64_t values[kThreads];
  values[threadIdx.x] = threadIdx.x + seed;
  if (barrier) __syncthreads();
  if (threadIdx.x == 0) {
    int64_t sum = 0;
    for (int i = 0; i < kThreads; ++i) sum += values[i];
    *out = sum;
  }
}

// A warp-wide butterfly sum over every lane: 32 * seed + 0 + 1 + ... + 31.
__global__ void warp_sum_kernel(int64_t seed, int64_t* out) {
  int64_t v = threadIdx.x + seed;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x == 5) *out = v;
}

// Lane 31 exits before a full-mask shuffle.
__global__ void exited_lane_kernel(int64_t* out) {
  if (threadIdx.x == 31) return;
  *out = __shfl_xor_sync(0xffffffffu, int64_t{threadIdx.x}, 1);
}

// Lane 0 waits at __syncthreads while the rest of its warp waits at a shuffle.
__global__ void divergent_kernel(int64_t* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    *out = __shfl_xor_sync(0xffffffffu, int64_t{threadIdx.x}, 1);
  }
}

// Thread i reads x[i + 1]: the last thread reads one element past the end.
__global__ void shifted_sum_kernel(const float* x, int64_t n, float* out) {
  if (threadIdx.x < n) atomicAdd(out, x[threadIdx.x + 1]);
}

double read_past_end(const at::Tensor& t) {
  TORCH_CHECK(t.dtype() == at::kFloat && t.is_contiguous() && t.numel() > 0 && t.numel() <= 1024,
              "read_past_end takes a contiguous float32 tensor of 1 to 1024 elements");
  float out = 0.0f;
  const unsigned threads = static_cast<unsigned>(t.numel());
  cuda_emulator::launch(1, threads, nullptr, shifted_sum_kernel)(t.const_data_ptr<float>(), t.numel(), &out);
  return out;
}

int64_t run(const std::string& name, int64_t seed) {
  int64_t out = -1;
  if (name == "block_sum") {
    cuda_emulator::launch(1, kThreads, nullptr, block_sum_kernel)(seed, true, &out);
  } else if (name == "block_sum_without_barrier") {
    cuda_emulator::launch(1, kThreads, nullptr, block_sum_kernel)(seed, false, &out);
  } else if (name == "warp_sum") {
    cuda_emulator::launch(1, 32, nullptr, warp_sum_kernel)(seed, &out);
  } else if (name == "exited_lane") {
    cuda_emulator::launch(1, 32, nullptr, exited_lane_kernel)(&out);
  } else if (name == "divergent") {
    cuda_emulator::launch(1, 64, nullptr, divergent_kernel)(&out);
  } else {
    TORCH_CHECK_VALUE(false, "unknown case ", name);
  }
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, name, ": ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY(cuda_emulator_selftest, m) {
  m.def("run(str name, int seed) -> int", &run);
  m.def("read_past_end(Tensor t) -> float", &read_past_end);
}
