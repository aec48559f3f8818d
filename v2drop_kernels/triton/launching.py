"""Where and how the Triton kernels launch, in one place: the devices they run on, and the block
sizes and warps of every launch. On a GPU a tile holds about 4K elements; under the interpreter
(CPU tests) each program costs a fixed Python overhead, so tiles are 16x larger there (same
kernels, fewer programs)."""

import os

import triton
from torch import Tensor
from torch.library import wrap_triton

from .. import checks

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETER and tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7):
    import numpy

    if tuple(int(v) for v in numpy.__version__.split(".")[:2]) >= (2, 4):  # triton issue 9171
        raise ImportError(f"the interpreter of triton {triton.__version__} fails on numpy {numpy.__version__} "
                          "(it converts 1-element arrays to ints, an error since numpy 2.4): use triton >= 3.7 or numpy < 2.4")
# Device types whose tensors the kernels take: CUDA, and CPU under the interpreter.
DEVICES = ("cpu", "cuda") if INTERPRETER else ("cuda",)

GPU_TILE = 4096
TILE = GPU_TILE * (16 if INTERPRETER else 1)


def launchable(kernel):
    """``wrap_triton(kernel)`` (so torch.compile traces the launch), except for a kernel defined under
    the interpreter: ``@triton.jit`` then returns an ``InterpretedFunction``, which torch 2.13's
    ``wrap_triton`` passes through unchanged and torch 2.11's rejects ("wrap_triton only works on
    functions annotated with triton.jit or triton.autotune"). Decided by the kernel's type."""
    if INTERPRETER:
        from triton.runtime.interpreter import InterpretedFunction

        if isinstance(kernel, InterpretedFunction):
            return kernel
    return wrap_triton(kernel)


def check_device(op: str, name: str, t: Tensor) -> None:
    """A clear error, before any launch, for tensors the kernels cannot read."""
    checks.check(t.device.type in DEVICES, f"{op}: the Triton backend takes CUDA tensors (CPU tensors only under "
                                           f"TRITON_INTERPRET=1 set before import), got {name} on {t.device}")


def scores_config(dim: int, tile: int = TILE) -> tuple[int, int, int]:
    """(BLOCK_T tokens, BLOCK_D columns, warps) of _scores_kernel: TILE elements a step."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), 1024)
    block_t = max(1, tile // block_d)
    return block_t, block_d, 4


def select_config() -> tuple[int, int]:
    """(BLOCK tokens a step, warps) of _select_kernel: one program walks a whole segment."""
    return 2048, 16


def gather_config(dh: int, tile: int = TILE) -> tuple[int, int, int]:
    """(BLOCK_R rows, BLOCK_D, warps) of _gather_kernel: tiles of TILE elements."""
    block_d = min(triton.next_power_of_2(max(dh, 1)), 2048)
    return max(1, tile // block_d), block_d, 8


def inplace_config(dh: int, tile: int = TILE) -> tuple[int, int, int]:
    """(BLOCK_J rows, BLOCK_D, warps) of _compact_inplace_kernel."""
    block_d = min(triton.next_power_of_2(max(dh, 1)), 256)
    return max(1, tile // block_d), block_d, 4
