// Row gathers along the sequence dim, for the compacted hidden states and for KV caches.
// A row is the contiguous last dim of one (b, s, h) entry; tensors of any dtype are copied as
// bytes, 16 at a time when the row and its address are 16-byte aligned (4 or 1 otherwise).
//  - gather_kernel (out of place): one warp per output row, grid.y = tensor (up to 24 tensors,
//    e.g. K and V of 12 layers, in one launch).
//  - compact_inplace_kernel: one block per (tensor, b, h); j ascends in tiles of up to 16 KB that
//    are read whole into shared memory before any of them is written. With strictly increasing
//    keep rows keep[b, j] >= j, so a tile never reads a row that an earlier tile wrote, and a
//    row read by a later j' is never overwritten before that tile is loaded.
// Memory traffic: reads and writes n·row_bytes per (tensor, b, h), plus keep (8 B a row).
#include "common.cuh"
#include "launch.h"

namespace v2drop::cuda {
namespace {

constexpr int kGatherWarps = 8;
constexpr int kInplaceThreads = 256;
constexpr int kTileBytes = 16384;

template <typename U>
__device__ __forceinline__ void copy_units(const char* src, char* dst, int64_t bytes, int start, int step) {
  const U* s = reinterpret_cast<const U*>(src);
  U* d = reinterpret_cast<U*>(dst);
  for (int64_t i = start; i < bytes / static_cast<int64_t>(sizeof(U)); i += step) d[i] = s[i];
}

__device__ __forceinline__ void copy_row(const char* src, char* dst, int64_t bytes, int lane) {
  const uintptr_t align = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) | static_cast<uintptr_t>(bytes);
  if (align % 16 == 0) {
    copy_units<uint4>(src, dst, bytes, lane, 32);
  } else if (align % 4 == 0) {
    copy_units<uint32_t>(src, dst, bytes, lane, 32);
  } else {
    copy_units<unsigned char>(src, dst, bytes, lane, 32);
  }
}

__global__ void __launch_bounds__(kGatherWarps * 32) gather_kernel(const GatherArgs a) {
  const RowTensor& t = a.t[blockIdx.y];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kGatherWarps + (threadIdx.x >> 5);
  if (row >= a.B * a.n * t.H) return;
  const int64_t h = row % t.H, bj = row / t.H, b = bj / a.n, j = bj % a.n;
  const int64_t p = a.keep[bj];
  if (p < 0 || p >= a.S) return;
  copy_row(t.src + b * t.src_sb + p * t.src_ss + h * t.src_sh, t.dst + b * t.dst_sb + j * t.dst_sj + h * t.dst_sh,
           t.row_bytes, threadIdx.x & 31);
}

// One tile of the in-place walk, in units of U: load rows [j0, j0 + rows) (bytes [c0, c0 + width)
// of each) into shared memory, then store them at their destinations.
template <typename U>
__device__ __forceinline__ void inplace_tile(const RowTensor& t, const int64_t* keep, int64_t S, int64_t b, int64_t h, int64_t j0,
                             int64_t rows, int64_t c0, int64_t width, U* buf) {
  // A tile holds at most kTileBytes, so unit indices fit 32 bits (no 64-bit division here).
  const int per_row = static_cast<int>(width / static_cast<int64_t>(sizeof(U)));
  const int units = static_cast<int>(rows) * per_row;
  char* base = const_cast<char*>(t.src) + b * t.src_sb + h * t.src_sh + c0;
  for (int u = threadIdx.x; u < units; u += kInplaceThreads) {
    const int64_t p = keep[j0 + u / per_row];
    if (p >= 0 && p < S) buf[u] = reinterpret_cast<const U*>(base + p * t.src_ss)[u % per_row];
  }
  __syncthreads();
  for (int u = threadIdx.x; u < units; u += kInplaceThreads) {
    const int64_t j = j0 + u / per_row, p = keep[j];
    if (p >= 0 && p < S && p != j) reinterpret_cast<U*>(base + j * t.src_ss)[u % per_row] = buf[u];
  }
  __syncthreads();
}

template <typename U>
__device__ __forceinline__ void inplace_walk(const RowTensor& t, const int64_t* keep, int64_t n, int64_t S, int64_t b, int64_t h,
                             U* buf) {
  if (t.row_bytes <= kTileBytes) {
    const int64_t rows_per_tile = kTileBytes / t.row_bytes;
    for (int64_t j0 = 0; j0 < n; j0 += rows_per_tile) {
      inplace_tile<U>(t, keep, S, b, h, j0, min(rows_per_tile, n - j0), 0, t.row_bytes, buf);
    }
  } else {  // a row longer than the tile: one row at a time, in column chunks
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t c0 = 0; c0 < t.row_bytes; c0 += kTileBytes) {
        inplace_tile<U>(t, keep, S, b, h, j, 1, c0, min(static_cast<int64_t>(kTileBytes), t.row_bytes - c0), buf);
      }
    }
  }
}

__global__ void __launch_bounds__(kInplaceThreads) compact_inplace_kernel(const GatherArgs a) {
  __shared__ uint4 tile[kTileBytes / sizeof(uint4)];
  const RowTensor& t = a.t[blockIdx.y];
  const int64_t b = blockIdx.x / t.H, h = blockIdx.x % t.H;
  if (b >= a.B || t.row_bytes == 0) return;
  const int64_t* keep = a.keep + b * a.n;
  const uintptr_t align = reinterpret_cast<uintptr_t>(t.src) | static_cast<uintptr_t>(t.src_sb) |
                          static_cast<uintptr_t>(t.src_ss) | static_cast<uintptr_t>(t.src_sh) |
                          static_cast<uintptr_t>(t.row_bytes);
  if (align % 16 == 0) {
    inplace_walk<uint4>(t, keep, a.n, a.S, b, h, tile);
  } else if (align % 4 == 0) {
    inplace_walk<uint32_t>(t, keep, a.n, a.S, b, h, reinterpret_cast<uint32_t*>(tile));
  } else {
    inplace_walk<unsigned char>(t, keep, a.n, a.S, b, h, reinterpret_cast<unsigned char*>(tile));
  }
}

int64_t max_of(const GatherArgs& a, int64_t (*f)(const RowTensor&, const GatherArgs&)) {
  int64_t m = 0;
  for (int i = 0; i < a.count; ++i) m = f(a.t[i], a) > m ? f(a.t[i], a) : m;
  return m;
}

}  // namespace

cudaError_t launch_gather(const GatherArgs& a, cudaStream_t stream) {
  const int64_t rows = max_of(a, [](const RowTensor& t, const GatherArgs& g) { return g.B * g.n * t.H; });
  if (a.count == 0 || rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((rows + kGatherWarps - 1) / kGatherWarps), a.count);
  V2DROP_LAUNCH(grid, kGatherWarps * 32, stream, gather_kernel)(a);
  return cudaGetLastError();
}

cudaError_t launch_compact_inplace(const GatherArgs& a, cudaStream_t stream) {
  const int64_t blocks = max_of(a, [](const RowTensor& t, const GatherArgs& g) { return g.B * t.H; });
  if (a.count == 0 || blocks == 0 || a.n == 0) return cudaSuccess;
  V2DROP_LAUNCH(dim3(static_cast<unsigned>(blocks), a.count), kInplaceThreads, stream, compact_inplace_kernel)(a);
  return cudaGetLastError();
}

}  // namespace v2drop::cuda
