"""Fake (meta) kernels of the v2drop ops: the outputs' shapes, dtypes and devices, without data.

Each one validates its arguments with the same rules as every backend (:mod:`v2drop_kernels.checks`)
and allocates the outputs of the op: ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck``
trace through them, the Triton ops allocate their real outputs with them, and the reference backend
answers an empty batch with them. Every output shape follows from the arguments' shapes and integer
arguments alone (static shapes, CUDA-graph friendly).

:func:`token_rows` and :func:`position_planes` are the views every backend works on (the mirror of
``csrc/token_rows.h``): padded ``[B, S(, D)]`` is ``B`` rows of tokens, packed ``[T(, D)]`` one row;
position ids are ``[P, R, S]`` planes (``P = 1``, or 3 for M-RoPE).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from . import checks

# Every op of the v2drop schemas (csrc/schemas.h); each has a fake kernel of the same name below.
OPS = ("variation_topk", "variation_drop", "variation_drop_varlen", "select_drop", "select_drop_varlen", "kv_compact",
       "kv_compact_")


def token_rows(t: Tensor, packed: bool) -> Tensor:
    """``[B, S, ...]`` stays; packed ``[T, ...]`` becomes ``[1, T, ...]`` (a view)."""
    return t.unsqueeze(0) if packed else t


def position_planes(position_ids: Tensor, packed: bool) -> Tensor:
    """Position ids ``[B, S]`` / ``[3, B, S]`` / ``[T]`` / ``[3, T]`` as ``[P, R, S]`` planes (a view)."""
    mrope = position_ids.dim() == (2 if packed else 3)
    planes = position_ids if mrope else position_ids.unsqueeze(0)
    return planes.unsqueeze(1) if packed else planes


def _select_outputs(vis_mask: Tensor, position_ids: Tensor, tokens_out: int, packed: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(position_ids_out, keep_pos, vis_mask_out)`` with ``tokens_out`` tokens per row."""
    rows = () if packed else (vis_mask.shape[0],)
    pos_shape = (*position_ids.shape[: position_ids.dim() - vis_mask.dim()], *rows, tokens_out)
    return (position_ids.new_empty(pos_shape), vis_mask.new_empty((*rows, tokens_out), dtype=torch.long),
            vis_mask.new_empty((*rows, tokens_out)))


@torch.library.register_fake("v2drop::variation_topk")
def variation_topk(hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    checks.variation_topk(hidden, prev, vis_mask, k)
    batch, seq = hidden.shape[0], hidden.shape[1]
    return hidden.new_empty((batch, k), dtype=torch.long), hidden.new_empty((batch, seq), dtype=torch.float32)


@torch.library.register_fake("v2drop::variation_drop")
def variation_drop(hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int):
    seq_out = checks.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)
    batch, seq, dim = hidden.shape
    return (hidden.new_empty((batch, seq_out, dim)), *_select_outputs(vis_mask, position_ids, seq_out, False),
            hidden.new_empty((batch, seq), dtype=torch.float32))


@torch.library.register_fake("v2drop::variation_drop_varlen")
def variation_drop_varlen(hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, cu_seqlens: Tensor,
                          num_visual: Sequence[int], k: Sequence[int]):
    tokens_out = checks.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu_seqlens, num_visual, k)
    tokens, dim = hidden.shape
    return (hidden.new_empty((tokens_out, dim)), *_select_outputs(vis_mask, position_ids, tokens_out, True),
            cu_seqlens.new_empty(cu_seqlens.shape), hidden.new_empty((tokens,), dtype=torch.float32))


@torch.library.register_fake("v2drop::select_drop")
def select_drop(scores: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int):
    seq_out = checks.select_drop(scores, vis_mask, position_ids, num_visual, k)
    return _select_outputs(vis_mask, position_ids, seq_out, False)


@torch.library.register_fake("v2drop::select_drop_varlen")
def select_drop_varlen(scores: Tensor, vis_mask: Tensor, position_ids: Tensor, cu_seqlens: Tensor,
                       num_visual: Sequence[int], k: Sequence[int]):
    tokens_out = checks.select_drop_varlen(scores, vis_mask, position_ids, cu_seqlens, num_visual, k)
    return (*_select_outputs(vis_mask, position_ids, tokens_out, True), cu_seqlens.new_empty(cu_seqlens.shape))


def _kv_outputs(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> list[Tensor]:
    outs = []
    for cache in caches:
        shape = list(cache.shape)
        shape[seq_dim] = keep_pos.shape[-1]
        outs.append(cache.new_empty(shape))
    return outs


@torch.library.register_fake("v2drop::kv_compact")
def kv_compact(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> list[Tensor]:
    return _kv_outputs(caches, keep_pos, checks.kv_compact(caches, keep_pos, seq_dim))


@torch.library.register_fake("v2drop::kv_compact_")
def kv_compact_(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> None:
    checks.kv_compact_(caches, keep_pos, seq_dim, storage=False)
