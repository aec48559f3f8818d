"""Block sizes and warps of every Triton launch, in one place. On a GPU a tile holds about 4K
elements; under the interpreter (CPU tests) each program costs a fixed Python overhead, so tiles
are 16x larger there (same kernels, fewer programs)."""

import os

import triton

GPU_TILE = 4096
TILE = GPU_TILE * (16 if os.environ.get("TRITON_INTERPRET") == "1" else 1)


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
