// CUDA emulator, host side: the subset of the CUDA runtime and device language that the
// package's kernels use, for a C++ compiler, so the tests run the kernels on the CPU.
//
// A launch runs its blocks one after another; each CUDA thread of a block is a fiber on the
// calling OS thread, resumed in a freshly drawn order every round (runtime.cpp). __syncthreads
// and warp shuffles suspend the fiber until every live thread of the block (or all 32 lanes of
// the warp) has arrived, so the kernels' barrier logic is exercised for real. What it checks,
// and what it cannot:
//  - a barrier that not every thread reaches (divergence, deadlock) and a full-mask shuffle in a
//    warp where a lane has exited fail the launch with cudaErrorLaunchFailure and a message;
//  - shared memory is one static object per kernel, and a block's threads interleave only at
//    barriers: a missing barrier shows up as a wrong result when a thread overwrites data that
//    others have not read yet (cub's temp storage, tiles), not as a reported race;
//  - floating point is the host's (no FMA contraction), so float sums differ from the GPU's in the
//    last bits; memory accesses are bounds-checked only in the AddressSanitizer build (__init__.py).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
using cudaStream_t = struct cuda_emulator_stream*;

namespace cuda_emulator {

extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;

// Runs body() for every thread of every block of the grid; returns the launch's error.
cudaError_t run_grid(dim3 grid, dim3 block, const std::function<void()>& body);
void sync_block();                 // __syncthreads
void sync_warp(unsigned mask);     // both halves of a shuffle
uint64_t* warp_exchange_slot(int lane);  // the calling warp's exchange buffer, one slot a lane
cudaError_t last_error();          // cudaGetLastError: returns and clears
const char* error_string(cudaError_t err);

template <typename Kernel>
struct Launch {
  dim3 grid, block;
  Kernel* kernel;
  template <typename... Args>
  void operator()(const Args&... args) const {
    run_grid(grid, block, [&] { kernel(args...); });  // each thread gets its own parameter copies
  }
};

template <typename Kernel>
Launch<Kernel> launch(dim3 grid, dim3 block, cudaStream_t, Kernel* kernel) {
  return Launch<Kernel>{grid, block, kernel};
}

}  // namespace cuda_emulator

// The package's kernels launch through V2DROP_LAUNCH (csrc/cuda/common.cuh); here a launch is a
// call into the emulator.
#define V2DROP_LAUNCH(grid, block, stream, ...) ::cuda_emulator::launch(grid, block, stream, __VA_ARGS__)

#define threadIdx (::cuda_emulator::thread_idx)
#define blockIdx (::cuda_emulator::block_idx)
#define blockDim (::cuda_emulator::block_dim)
#define gridDim (::cuda_emulator::grid_dim)

inline void __syncthreads() { cuda_emulator::sync_block(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 8 bytes");
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int partner = (lane & ~(width - 1)) | ((lane ^ lane_mask) & (width - 1));
  std::memcpy(cuda_emulator::warp_exchange_slot(lane), &value, sizeof(T));
  cuda_emulator::sync_warp(mask);  // every lane has published its value
  T result;
  std::memcpy(&result, cuda_emulator::warp_exchange_slot(partner), sizeof(T));
  cuda_emulator::sync_warp(mask);  // every lane has read before the slots are reused
  return result;
}

// One OS thread runs a block's fibers and switches only at barriers: atomics need no locking.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}

inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

using std::max;
using std::min;

inline cudaError_t cudaGetLastError() { return cuda_emulator::last_error(); }
inline const char* cudaGetErrorString(cudaError_t err) { return cuda_emulator::error_string(err); }
