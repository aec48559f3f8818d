// CUDA emulator: cub::BlockScan's ExclusiveSum for 1-D blocks, with cub's contract on the temp
// storage: it may be reused only after a __syncthreads, and this version does not add one, so a
// kernel that forgets it reads overwritten values here too.
#pragma once

#include <cuda_runtime.h>

namespace cub {

template <typename T, int kBlockThreads>
class BlockScan {
 public:
  struct TempStorage {
    T values[kBlockThreads];
  };
  explicit BlockScan(TempStorage& storage) : storage_(storage) {}

  void ExclusiveSum(T input, T& output, T& block_aggregate) {
    const int tid = static_cast<int>(threadIdx.x);
    storage_.values[tid] = input;
    __syncthreads();
    T before{}, total{};
    for (int i = 0; i < kBlockThreads; ++i) {
      if (i == tid) before = total;
      total += storage_.values[i];
    }
    output = before;
    block_aggregate = total;
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
