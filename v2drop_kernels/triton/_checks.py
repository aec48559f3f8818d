"""Argument checks of the Triton ops: the same rules and messages as csrc/checks.h (the C++ ops).

Shape/dtype/device/layout problems raise RuntimeError, bad integer arguments ValueError, before any
launch. Rules that need the data (per-row visual counts, cu_seqlens values, keep_pos ranges) are
checked on the device with torch._assert_async (no host sync, CUDA-graph and torch.compile safe);
they raise RuntimeError naming the argument (on CUDA, as a device-side assert).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check(cond: bool, message: str, error: type[Exception] = RuntimeError) -> None:
    if not cond:
        raise error(message)


def hidden_pair(op: str, hidden: Tensor, prev: Tensor, rank: int) -> None:
    check(hidden.dim() == rank, f"{op}: hidden must have {rank} dims, got shape {list(hidden.shape)}")
    check(hidden.dtype in FLOATS, f"{op}: hidden must be float32, float16 or bfloat16, got {hidden.dtype}")
    check(prev.shape == hidden.shape, f"{op}: prev must have the shape of hidden {list(hidden.shape)}, got {list(prev.shape)}")
    check(prev.dtype == hidden.dtype, f"{op}: prev must have the dtype of hidden ({hidden.dtype}), got {prev.dtype}")
    check(prev.device == hidden.device, f"{op}: prev must be on the device of hidden ({hidden.device}), got {prev.device}")
    check(hidden.shape[-1] <= 1 or hidden.stride(-1) == 1, f"{op}: hidden must have a contiguous last dim, got strides {list(hidden.stride())}")
    check(prev.shape[-1] <= 1 or prev.stride(-1) == 1, f"{op}: prev must have a contiguous last dim, got strides {list(prev.stride())}")


def vis_mask(op: str, mask: Tensor, hidden: Tensor) -> None:
    check(mask.dtype == torch.bool, f"{op}: vis_mask must be bool, got {mask.dtype}")
    check(mask.shape == hidden.shape[:-1], f"{op}: vis_mask must have shape {list(hidden.shape[:-1])}, got {list(mask.shape)}")
    check(mask.device == hidden.device, f"{op}: vis_mask must be on the device of hidden ({hidden.device}), got {mask.device}")


def position_ids(op: str, pos: Tensor, hidden: Tensor) -> None:
    tokens = tuple(hidden.shape[:-1])
    check(pos.dtype in (torch.int64, torch.int32), f"{op}: position_ids must be int64 or int32, got {pos.dtype}")
    ok = tuple(pos.shape) == tokens or (pos.dim() == len(tokens) + 1 and pos.shape[0] == 3 and tuple(pos.shape[1:]) == tokens)
    check(ok, f"{op}: position_ids must have shape {list(tokens)} or [3, {list(tokens)}], got {list(pos.shape)}")
    check(pos.device == hidden.device, f"{op}: position_ids must be on the device of hidden ({hidden.device}), got {pos.device}")


def k_padded(op: str, num_visual: int, k: int, seq: int) -> None:
    check(1 <= num_visual <= seq, f"{op}: num_visual must be in [1, S={seq}], got {num_visual}", ValueError)
    check(1 <= k <= num_visual, f"{op}: k must be in [1, num_visual={num_visual}], got {k}", ValueError)


def varlen_args(op: str, cu_seqlens: Tensor, hidden: Tensor, num_visual: Sequence[int], k: Sequence[int]) -> None:
    check(cu_seqlens.dtype == torch.int32, f"{op}: cu_seqlens must be int32, got {cu_seqlens.dtype}")
    check(cu_seqlens.dim() == 1 and cu_seqlens.shape[0] >= 2, f"{op}: cu_seqlens must have shape [B + 1] with B >= 1, got {list(cu_seqlens.shape)}")
    check(cu_seqlens.device == hidden.device, f"{op}: cu_seqlens must be on the device of hidden ({hidden.device}), got {cu_seqlens.device}")
    batch = cu_seqlens.shape[0] - 1
    check(len(num_visual) == batch, f"{op}: num_visual must have B={batch} entries, got {len(num_visual)}", ValueError)
    check(len(k) == batch, f"{op}: k must have B={batch} entries, got {len(k)}", ValueError)
    for b, (v, kb) in enumerate(zip(num_visual, k)):
        check(v >= 0, f"{op}: num_visual[{b}] must be >= 0, got {v}", ValueError)
        lo = 1 if v > 0 else 0
        check(lo <= kb <= v, f"{op}: k[{b}] must be in [{lo}, num_visual[{b}]={v}], got {kb}", ValueError)


def kv_args(op: str, caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> int:
    """Returns seq_dim normalised to [0, rank)."""
    check(len(caches) > 0, f"{op}: caches must hold at least one tensor")
    check(keep_pos.dtype == torch.int64, f"{op}: keep_pos must be int64, got {keep_pos.dtype}")
    check(keep_pos.dim() in (1, 2), f"{op}: keep_pos must have shape [B, n] or [n] (packed), got {list(keep_pos.shape)}")
    rank = 4 if keep_pos.dim() == 2 else 3
    first = caches[0]
    check(first.dim() == rank, f"{op}: with keep_pos of shape {list(keep_pos.shape)} caches must have {rank} dims, got caches[0] of shape {list(first.shape)}")
    if seq_dim < 0:
        seq_dim += rank
    if rank == 4:
        check(seq_dim in (1, 2), f"{op}: seq_dim must be 1 ([B, S, H, Dh]) or 2 ([B, H, S, Dh]), got {seq_dim}", ValueError)
    else:
        check(seq_dim == 0, f"{op}: seq_dim must be 0 for packed [T, H, Dh] caches, got {seq_dim}", ValueError)
    for i, c in enumerate(caches):
        check(c.dim() == rank, f"{op}: caches[{i}] must have {rank} dims, got shape {list(c.shape)}")
        check(c.device == keep_pos.device, f"{op}: caches[{i}] must be on the device of keep_pos ({keep_pos.device}), got {c.device}")
        check(c.shape[seq_dim] == first.shape[seq_dim], f"{op}: caches[{i}] must have sequence length {first.shape[seq_dim]} along dim {seq_dim}, got shape {list(c.shape)}")
        if rank == 4:
            check(c.shape[0] == keep_pos.shape[0], f"{op}: caches[{i}] must have batch size {keep_pos.shape[0]} (keep_pos.shape[0]), got shape {list(c.shape)}")
        check(c.shape[-1] <= 1 or c.stride(-1) == 1, f"{op}: caches[{i}] must have a contiguous last dim, got strides {list(c.stride())}")
    return seq_dim


def device_assert(cond: Tensor, message: str) -> None:
    """Checks a bool tensor on its device without a host sync. CUDA copies the message into its
    assert kernel's parameters and rejects one of 255 bytes or more at every call."""
    assert len(message.encode()) < 255, f"device-assert message too long: {message}"
    torch._assert_async(cond, message)
