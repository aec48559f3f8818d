"""Triton ``v2drop_triton::kv_compact`` and ``v2drop_triton::kv_compact_``: the contract of
``v2drop::kv_compact`` / ``kv_compact_``.

Each tensor is seen as a [B, S, H, Dh] view (no copy); one gather launch per tensor (plus the
keep_pos checks). Traffic: reads and writes n·H·Dh·e bytes per tensor and batch row.
"""

from typing import Sequence

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op

from . import _checks as C
from .gather import launch_compact_inplace, launch_gather


def bshd_view(cache: Tensor, seq_dim: int) -> Tensor:
    if cache.dim() == 3:
        return cache.unsqueeze(0)
    return cache.permute(0, 2, 1, 3) if seq_dim == 2 else cache


def checked_keep(op: str, keep_pos: Tensor, seq_len: int, strictly_increasing: bool) -> Tensor:
    keep = (keep_pos.unsqueeze(0) if keep_pos.dim() == 1 else keep_pos).contiguous()
    C.device_assert(((keep >= 0) & (keep < seq_len)).all(), f"{op}: keep_pos values must be in [0, {seq_len})")
    if strictly_increasing:
        C.device_assert((keep[:, 1:] > keep[:, :-1]).all(), f"{op}: keep_pos rows must be strictly increasing for in-place compaction")
    return keep


def _share_bytes(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors of one storage may touch the same bytes (spans first to last element)."""
    if a.numel() == 0 or b.numel() == 0 or is_fake(a) or is_fake(b):
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: Tensor) -> tuple[int, int]:
        lo = hi = t.data_ptr()
        for size, stride in zip(t.shape, t.stride()):
            step = (size - 1) * stride * t.element_size()
            lo, hi = (lo + step, hi) if step < 0 else (lo, hi + step)
        return lo, hi + t.element_size()

    (a_lo, a_hi), (b_lo, b_hi) = span(a), span(b)
    return a_lo < b_hi and b_lo < a_hi


@triton_op("v2drop_triton::kv_compact", mutates_args=())
def kv_compact(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> list[Tensor]:
    op = "v2drop_triton.kv_compact"
    seq_dim = C.kv_args(op, caches, keep_pos, seq_dim)
    keep = checked_keep(op, keep_pos, caches[0].shape[seq_dim], False)
    outs = []
    for cache in caches:
        shape = list(cache.shape)
        shape[seq_dim] = keep.shape[1]
        out = cache.new_empty(shape)
        launch_gather(bshd_view(cache, seq_dim), keep, bshd_view(out, seq_dim))
        outs.append(out)
    return outs


@triton_op("v2drop_triton::kv_compact_", mutates_args={"caches"})
def kv_compact_(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> None:
    op = "v2drop_triton.kv_compact_"
    seq_dim = C.kv_args(op, caches, keep_pos, seq_dim)
    for i, cache in enumerate(caches):
        overlap = torch._debug_has_internal_overlap(cache) == 1
        C.check(not overlap, f"{op}: caches[{i}] has overlapping elements (an expanded tensor?) and cannot be written in place")
        for j in range(i):
            C.check(not _share_bytes(cache, caches[j]), f"{op}: caches[{j}] and caches[{i}] share memory")
    keep = checked_keep(op, keep_pos, caches[0].shape[seq_dim], True)
    for cache in caches:
        launch_compact_inplace(bshd_view(cache, seq_dim), keep)

