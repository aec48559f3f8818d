// The CUDA kernels of csrc/cuda/gather.cu, built for the host against the emulator (include/).
#include <cuda_runtime.h>  // nvcc includes it implicitly

#include "../../csrc/cuda/gather.cu"
