// CUDA emulator: the device guard of the torch binding; tensors are on the CPU, nothing to set.
#pragma once

#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
