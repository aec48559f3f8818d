// The CUDA backend's torch binding (csrc/cuda/torch_bindings.cpp), built for the host against
// the emulator: the ops of torch.ops.v2drop_cuda_emulated take CPU tensors and run the CUDA
// kernels' code in the emulator, so the suite can check them against the reference without a GPU.
#include <torch/library.h>

#include "../../csrc/schemas.h"

TORCH_LIBRARY(v2drop_cuda_emulated, m) { v2drop::define_ops(m); }

#include "../../csrc/cuda/torch_bindings.cpp"
