// CUDA emulator: the current stream of the torch binding; the emulator runs launches in order.
#pragma once

#include <cuda_runtime.h>

namespace c10::cuda {
struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace c10::cuda
