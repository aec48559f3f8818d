// The CUDA backend's torch binding (csrc/cuda/torch_bindings.cpp), built for the host against
// the emulator: the ops of torch.ops.v2drop_cuda_emulated take CPU tensors and run the CUDA
// kernels' code in the emulator, so the suite can check them against the reference without a GPU.
#include <torch/library.h>

#include "../../csrc/schemas.h"

TORCH_LIBRARY(v2drop_cuda_emulated, m) { v2drop::define_ops(m); }

// The binding registers its kernels under this library and dispatch key (CPU tensors here).
#define V2DROP_CUDA_LIBRARY v2drop_cuda_emulated
#define V2DROP_CUDA_KEY CPU
#include "../../csrc/cuda/torch_bindings.cpp"
