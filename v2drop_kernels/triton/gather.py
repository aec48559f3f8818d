"""Triton row gathers shared by variation_drop (hidden states) and kv_compact (KV caches).

Tensors are seen as [B, S, H, Dh] views (any strides, Dh contiguous); hidden states are the case
H = 1, Dh = D.

``_gather_kernel`` — out[b, j, h, :] = src[b, keep[b, j], h, :]. A row is one (b, j, h) run of Dh
contiguous elements; grid: (cdiv(B·n·H, BLOCK_R),), [BLOCK_R, BLOCK_D] tiles (many rows a program
when Dh is small). Traffic: reads and writes n·H·Dh·e bytes per batch row.

``_compact_inplace_kernel`` — the same with out = src (a static cache compacted into [0, n)).
Grid: (B·H,); each program walks j upward in tiles of BLOCK_J rows, loading a whole tile before
storing it (a barrier between the two). Rows of keep are strictly increasing, so keep[b, j] >= j:
a tile only reads rows at or after its own, which no earlier tile wrote and no later tile has
written yet. Traffic: reads and writes n·Dh·e bytes per (b, h).
"""

import triton
import triton.language as tl
from torch import Tensor

from .launching import gather_config, inplace_config, launchable


@triton.jit
def _gather_kernel(
    src_ptr, keep_ptr, out_ptr, n_rows, n, H, Dh,
    s_sb, s_ss, s_sh, o_sb, o_ss, o_sh,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # rows (b, j, h), h fastest
    mr = r < n_rows
    h = r % H
    bj = r // H
    b = bj // n
    src = tl.load(keep_ptr + bj, mask=mr, other=0)
    src_row = src_ptr + (b * s_sb + src * s_ss + h * s_sh)[:, None]
    out_row = out_ptr + (b * o_sb + (bj % n) * o_ss + h * o_sh)[:, None]
    for d0 in range(0, Dh, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)[None, :]
        m = mr[:, None] & (d < Dh)
        tl.store(out_row + d, tl.load(src_row + d, mask=m), mask=m)


@triton.jit
def _compact_inplace_kernel(
    ptr, keep_ptr, n, H, Dh, sb, ss, sh,
    BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    base = ptr + b * sb + (pid % H) * sh
    for j0 in range(0, n, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        mj = j < n
        src = tl.load(keep_ptr + b * n + j, mask=mj, other=0)
        for d0 in range(0, Dh, BLOCK_D):
            d = d0 + tl.arange(0, BLOCK_D)[None, :]
            m = mj[:, None] & (d < Dh)
            tile = tl.load(base + src[:, None] * ss + d, mask=m)
            tl.debug_barrier()
            tl.store(base + j[:, None] * ss + d, tile, mask=m)
            tl.debug_barrier()


def launch_gather(src: Tensor, keep: Tensor, out: Tensor) -> None:
    """out[b, j] = src[b, keep[b, j]] for [B, S, H, Dh] views and contiguous keep [B, n] (one launch)."""
    batch, n = keep.shape
    if batch * n == 0:
        return
    heads, dh = src.shape[2], src.shape[3]
    rows = batch * n * heads
    block_r, block_d, warps = gather_config(dh)
    launchable(_gather_kernel)[(triton.cdiv(rows, block_r),)](
        src, keep, out, rows, n, heads, dh,
        src.stride(0), src.stride(1), src.stride(2), out.stride(0), out.stride(1), out.stride(2),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
    )


def launch_compact_inplace(cache: Tensor, keep: Tensor) -> None:
    """cache[b, j] = cache[b, keep[b, j]] for j < n, a [B, S, H, Dh] view (one launch)."""
    batch, n = keep.shape
    heads, dh = cache.shape[2], cache.shape[3]
    if batch * heads * n == 0:
        return
    block_j, block_d, warps = inplace_config(dh)
    launchable(_compact_inplace_kernel)[(batch * heads,)](
        cache, keep, n, heads, dh, cache.stride(0), cache.stride(1), cache.stride(2),
        BLOCK_J=block_j, BLOCK_D=block_d, num_warps=warps,
    )
