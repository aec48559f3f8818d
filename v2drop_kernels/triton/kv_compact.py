"""Triton ``v2drop_triton::kv_compact`` and ``v2drop_triton::kv_compact_``: the contract of
``v2drop::kv_compact`` / ``kv_compact_``.

Each tensor is seen as a [B, S, H, Dh] view (no copy); one gather launch per tensor (plus the
keep_pos checks). Traffic: reads and writes n·H·Dh·e bytes per tensor and batch row.
"""

from typing import Sequence

from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op

from .. import checks, fake
from .gather import launch_compact_inplace, launch_gather
from .launching import check_device


def bshd_view(cache: Tensor, seq_dim: int) -> Tensor:
    """[B, S, H, Dh] view of a cache (csrc/token_rows.h: kv_bshd_view)."""
    if cache.dim() == 3:
        return cache.unsqueeze(0)
    return cache.permute(0, 2, 1, 3) if seq_dim == 2 else cache


def checked_keep(op: str, keep_pos: Tensor, seq_len: int, strictly_increasing: bool) -> Tensor:
    """keep_pos as contiguous [B, n] rows, its values checked on the device."""
    keep = (keep_pos.unsqueeze(0) if keep_pos.dim() == 1 else keep_pos).contiguous()
    checks.device_assert(((keep >= 0) & (keep < seq_len)).all(), checks.msg_keep_range(op, seq_len))
    if strictly_increasing:
        checks.device_assert((keep[:, 1:] > keep[:, :-1]).all(), checks.msg_strictly_increasing(op))
    return keep


@triton_op("v2drop_triton::kv_compact", mutates_args=())
def kv_compact(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> list[Tensor]:
    op = "v2drop.kv_compact"
    outs = fake.kv_compact(caches, keep_pos, seq_dim)
    check_device(op, "keep_pos", keep_pos)
    seq_dim = seq_dim % caches[0].dim()
    keep = checked_keep(op, keep_pos, caches[0].shape[seq_dim], False)
    for cache, out in zip(caches, outs):
        launch_gather(bshd_view(cache, seq_dim), keep, bshd_view(out, seq_dim))
    return outs


@triton_op("v2drop_triton::kv_compact_", mutates_args={"caches"})
def kv_compact_(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> None:
    op = "v2drop.kv_compact_"
    seq_dim = checks.kv_compact_(caches, keep_pos, seq_dim, storage=not any(is_fake(c) for c in caches))
    check_device(op, "keep_pos", keep_pos)
    keep = checked_keep(op, keep_pos, caches[0].shape[seq_dim], True)
    for cache in caches:
        launch_compact_inplace(bshd_view(cache, seq_dim), keep)
