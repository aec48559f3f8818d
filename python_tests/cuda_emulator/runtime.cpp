// CUDA emulator, scheduler: the blocks of a launch run one after another on the calling thread;
// the threads of a block are fibers with stacks of their own. In each round every ready fiber
// runs, in an order drawn afresh (seeded, so runs repeat), until it finishes or reaches a
// barrier; then every barrier whose live threads have all arrived opens. The changing order makes a missing barrier
// (a thread reading what another has not written yet, or overwriting what another has not read)
// give wrong results rather than pass by luck. A round in which no fiber can run and no barrier
// opens is a deadlock: the launch stops and returns cudaErrorLaunchFailure, whose error string
// then says why.
#include <ucontext.h>

#include <mutex>
#include <string>
#include <vector>

#include "include/cuda_runtime.h"

namespace cuda_emulator {

uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;

namespace {

// Stack switching. On x86-64 (outside AddressSanitizer builds, which must see every switch) a
// few instructions save the callee-saved registers and the floating-point control words and
// swap stack pointers; elsewhere ucontext, whose swapcontext also saves the signal mask with a
// system call, several times slower. A fiber's entry function never returns.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
extern "C" void cuda_emulator_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl cuda_emulator_switch
  .hidden cuda_emulator_switch
  .type cuda_emulator_switch, @function
cuda_emulator_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emulator_switch, .-cuda_emulator_switch
)");

struct Context {
  void* sp = nullptr;
};

// A fresh stack laid out as cuda_emulator_switch leaves a suspended one: control words, six
// registers, then `entry` as the return address (and a null one above it, so that entry starts
// with the stack alignment of a called function).
void make_context(Context& c, std::vector<char>& stack, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack.data() + stack.size()) & ~uintptr_t{15};
  auto* words = reinterpret_cast<uint64_t*>(top);
  words[-1] = 0;
  words[-2] = reinterpret_cast<uint64_t>(entry);
  for (int i = 3; i <= 8; ++i) words[-i] = 0;  // rbp, rbx, r12-r15
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  words[-9] = 0;
  std::memcpy(&words[-9], &mxcsr, sizeof mxcsr);
  std::memcpy(reinterpret_cast<char*>(&words[-9]) + 4, &fpucw, sizeof fpucw);
  c.sp = &words[-9];
}

void switch_context(Context& from, Context& to) { cuda_emulator_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};

void make_context(Context& c, std::vector<char>& stack, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack.data();
  c.uc.uc_stack.ss_size = stack.size();
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

constexpr size_t kStackBytes = 64 * 1024;
enum class State { kReady, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  Context context;
  std::vector<char> stack = std::vector<char>(kStackBytes);
  State state = State::kReady;
  unsigned warp_mask = 0;
};

struct Block {
  std::vector<Fiber> fibers;
  std::vector<uint64_t> exchange;  // 32 slots a warp
  Context scheduler;
  int current = -1;
  const std::function<void()>* body = nullptr;
  std::string error;
};

Block block;
std::vector<int> order;      // the fibers in this round's order
uint64_t order_state = 1;    // xorshift state, reset at every launch
std::mutex launch_mutex;  // one launch at a time: the thread indices are process-wide
cudaError_t sticky_error = cudaSuccess;
std::string failure = "unspecified launch failure";  // with the last failed launch's reason

void suspend(State state) {
  Fiber& f = block.fibers[block.current];
  f.state = state;
  switch_context(f.context, block.scheduler);
}

[[noreturn]] void fiber_main() {
  (*block.body)();
  suspend(State::kDone);  // never resumed
  __builtin_unreachable();
}

// Opens every barrier whose threads have all arrived and returns whether one opened; sets
// block.error when a shuffle names a lane that has exited.
bool open_barriers() {
  const int n = static_cast<int>(block.fibers.size());
  int live = 0, at_block = 0;
  for (const Fiber& f : block.fibers) {
    live += f.state != State::kDone;
    at_block += f.state == State::kAtBlockBarrier;
  }
  if (live > 0 && at_block == live) {
    for (Fiber& f : block.fibers) {
      if (f.state == State::kAtBlockBarrier) f.state = State::kReady;
    }
    return true;
  }
  bool opened = false;
  for (int w = 0; w * 32 < n; ++w) {
    const int first = w * 32, last = std::min(n, first + 32);
    int lanes_live = 0, lanes_waiting = 0;
    for (int i = first; i < last; ++i) {
      lanes_live += block.fibers[i].state != State::kDone;
      lanes_waiting += block.fibers[i].state == State::kAtWarpBarrier;
    }
    if (lanes_waiting == 0 || lanes_waiting != lanes_live) continue;
    for (int i = first; i < last; ++i) {
      const unsigned mask = block.fibers[i].warp_mask;
      for (int lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        if (first + lane >= last || block.fibers[first + lane].state != State::kAtWarpBarrier) {
          block.error = "warp " + std::to_string(w) + ": a shuffle names lane " + std::to_string(lane) +
                        ", which has exited or does not exist";
          return false;
        }
      }
    }
    for (int i = first; i < last; ++i) block.fibers[i].state = State::kReady;
    opened = true;
  }
  return opened;
}

bool run_block(const dim3& bid) {
  block_idx = bid;
  for (size_t i = 0; i < block.fibers.size(); ++i) {
    Fiber& f = block.fibers[i];
    f.state = State::kReady;
    make_context(f.context, f.stack, fiber_main);
  }
  const unsigned bx = block_dim.x, bxy = block_dim.x * block_dim.y;
  for (;;) {
    bool ran = false, all_done = true;
    for (size_t n = order.size(); n > 1; --n) {  // Fisher-Yates with xorshift64
      order_state ^= order_state << 13, order_state ^= order_state >> 7, order_state ^= order_state << 17;
      std::swap(order[n - 1], order[order_state % n]);
    }
    for (const int i : order) {
      Fiber& f = block.fibers[i];
      if (f.state == State::kReady) {
        const unsigned t = static_cast<unsigned>(i);
        thread_idx = uint3(t % bx, (t / bx) % block_dim.y, t / bxy);
        block.current = static_cast<int>(i);
        switch_context(block.scheduler, f.context);
        ran = true;
      }
      all_done = all_done && f.state == State::kDone;
    }
    if (all_done) return true;
    const bool opened = open_barriers();
    if (!block.error.empty()) return false;
    if (!opened && !ran) {
      block.error = "deadlock: threads wait at a barrier that not every thread reaches";
      return false;
    }
  }
}

}  // namespace

cudaError_t run_grid(dim3 grid, dim3 block_shape, const std::function<void()>& body) {
  const std::lock_guard<std::mutex> lock(launch_mutex);
  const size_t threads = size_t{block_shape.x} * block_shape.y * block_shape.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535) {
    return sticky_error = cudaErrorInvalidValue;
  }
  block.fibers.resize(threads);
  order.resize(threads);
  for (size_t i = 0; i < threads; ++i) order[i] = static_cast<int>(i);
  order_state = 0x9e3779b97f4a7c15ull;
  block.exchange.assign((threads + 31) / 32 * 32, 0);
  block.body = &body;
  block.error.clear();
  block_dim = block_shape;
  grid_dim = grid;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        if (!run_block(dim3(x, y, z))) {
          failure = "unspecified launch failure (emulated block (" + std::to_string(x) + ", " + std::to_string(y) +
                    ", " + std::to_string(z) + "): " + block.error + ")";
          return sticky_error = cudaErrorLaunchFailure;
        }
      }
    }
  }
  return cudaSuccess;
}

void sync_block() { suspend(State::kAtBlockBarrier); }

void sync_warp(unsigned mask) {
  block.fibers[block.current].warp_mask = mask;
  suspend(State::kAtWarpBarrier);
}

uint64_t* warp_exchange_slot(int lane) {
  return &block.exchange[static_cast<size_t>(block.current / 32 * 32 + lane)];
}

cudaError_t last_error() {
  const cudaError_t err = sticky_error;
  sticky_error = cudaSuccess;
  return err;
}

const char* error_string(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulated launch configuration)";
    case cudaErrorLaunchFailure: return failure.c_str();
  }
  return "unknown error";
}

}  // namespace cuda_emulator
