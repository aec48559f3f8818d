// The CUDA kernels of csrc/cuda/scores.cu, built for the host against the emulator (include/).
#include <cuda_runtime.h>  // nvcc includes it implicitly

#include "../../csrc/cuda/scores.cu"
