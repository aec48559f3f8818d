"""Fake (meta) kernels of the v2drop ops: output shapes, dtypes and devices without data.

They let ``torch.compile(fullgraph=True)`` trace through the ops and ``torch.library.opcheck``
check them. Every output shape follows from the arguments' shapes and integer arguments alone
(static shapes, CUDA-graph friendly); value checks are the real kernels' job.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _position_ids_out(position_ids: Tensor, tokens_out: Sequence[int]) -> Tensor:
    return position_ids.new_empty((*position_ids.shape[: position_ids.dim() - len(tokens_out)], *tokens_out))


@torch.library.register_fake("v2drop::variation_topk")
def _variation_topk_fake(hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int):
    torch._check(hidden.dim() == 3, lambda: f"v2drop.variation_topk: hidden must have 3 dims, got {hidden.dim()}")
    torch._check(k >= 1, lambda: f"v2drop.variation_topk: k must be >= 1, got {k}")
    batch, seq = hidden.shape[0], hidden.shape[1]
    return hidden.new_empty((batch, k), dtype=torch.long), hidden.new_empty((batch, seq), dtype=torch.float32)


@torch.library.register_fake("v2drop::variation_drop")
def _variation_drop_fake(hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int):
    torch._check(hidden.dim() == 3, lambda: f"v2drop.variation_drop: hidden must have 3 dims, got {hidden.dim()}")
    batch, seq, dim = hidden.shape
    torch._check(1 <= num_visual <= seq, lambda: f"v2drop.variation_drop: num_visual must be in [1, {seq}]")
    torch._check(1 <= k <= num_visual, lambda: f"v2drop.variation_drop: k must be in [1, {num_visual}]")
    seq_out = seq - num_visual + k
    return (
        hidden.new_empty((batch, seq_out, dim)),
        _position_ids_out(position_ids, (batch, seq_out)),
        hidden.new_empty((batch, seq_out), dtype=torch.long),
        vis_mask.new_empty((batch, seq_out)),
        hidden.new_empty((batch, seq), dtype=torch.float32),
    )


@torch.library.register_fake("v2drop::variation_drop_varlen")
def _variation_drop_varlen_fake(
    hidden: Tensor,
    prev: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    num_visual: Sequence[int],
    k: Sequence[int],
):
    torch._check(hidden.dim() == 2, lambda: f"v2drop.variation_drop_varlen: hidden must have 2 dims, got {hidden.dim()}")
    torch._check(len(num_visual) == len(k) == cu_seqlens.shape[0] - 1, lambda: "v2drop.variation_drop_varlen: num_visual and k need B entries")
    tokens, dim = hidden.shape
    tokens_out = tokens - sum(num_visual) + sum(k)
    return (
        hidden.new_empty((tokens_out, dim)),
        _position_ids_out(position_ids, (tokens_out,)),
        hidden.new_empty((tokens_out,), dtype=torch.long),
        vis_mask.new_empty((tokens_out,)),
        cu_seqlens.new_empty(cu_seqlens.shape),
        hidden.new_empty((tokens,), dtype=torch.float32),
    )


@torch.library.register_fake("v2drop::kv_compact")
def _kv_compact_fake(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int):
    torch._check(len(caches) > 0, lambda: "v2drop.kv_compact: caches must hold at least one tensor")
    outs = []
    for cache in caches:
        shape = list(cache.shape)
        shape[seq_dim % cache.dim()] = keep_pos.shape[-1]
        outs.append(cache.new_empty(shape))
    return outs


@torch.library.register_fake("v2drop::kv_compact_")
def _kv_compact_inplace_fake(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> None:
    torch._check(len(caches) > 0, lambda: "v2drop.kv_compact_: caches must hold at least one tensor")
    return None
