"""Reference implementation of every v2drop op: plain PyTorch, written to be obviously right.

This module is the specification: every backend is tested against it, and it is the "eager"
baseline of the benchmarks (it prunes the way the public V²Drop code does: norm, topk, sort,
index). It makes the copies and host syncs a plain implementation makes; speed is the kernels'
job. Arguments are not validated here: every backend, this one included
(:class:`v2drop_kernels.backends.ReferenceOps`), validates through the same rules
(:mod:`v2drop_kernels.checks`) before it runs, and answers an empty batch there.

Ranking rule (all selections): higher score first; equal scores -> lower position first; NaN
ranks below every number, so a NaN token is kept only when fewer than k others exist.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def variation_scores(hidden: Tensor, prev: Tensor, vis_mask: Tensor) -> Tensor:
    """``‖hidden − prev‖₂`` over the last dim in float32 where ``vis_mask``, 0 elsewhere."""
    norm = torch.linalg.vector_norm(hidden.float() - prev.float(), dim=-1)
    return torch.where(vis_mask, norm, torch.zeros_like(norm))


def select_topk(scores: Tensor, vis_mask: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` best-ranked visual tokens of each row of ``scores [B, S]``, ascending.

    Every row of ``vis_mask [B, S]`` must hold the same number V >= k of visual tokens.
    """
    batch = vis_mask.shape[0]
    vis_pos = vis_mask.nonzero()[:, 1].view(batch, -1)  # [B, V], ascending in each row
    vis_scores = scores.gather(1, vis_pos)
    # A stable ascending sort of −score ranks higher scores first, keeps equal scores in position
    # order, and puts NaN (which sorts above every number) last.
    order = torch.sort(-vis_scores, dim=1, stable=True).indices[:, :k]
    return vis_pos.gather(1, order).sort(dim=1).values


def variation_topk(hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Reference of ``v2drop.variation_topk``: ``(keep_idx int64[B, k], scores float32[B, S])``."""
    scores = variation_scores(hidden, prev, vis_mask)
    return select_topk(scores, vis_mask, k), scores


def survivors(vis_mask: Tensor, keep_idx: Tensor) -> Tensor:
    """``int64[B, S']``: the text tokens and the visual tokens at ``keep_idx``, ascending."""
    keep = (~vis_mask).scatter(1, keep_idx, True)
    return keep.nonzero()[:, 1].view(vis_mask.shape[0], -1)


def select_drop(
    scores: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference of ``v2drop.select_drop``: keeps the text tokens and the ``k`` best-ranked visual
    tokens of each row of ``scores [B, S]``, in their original order.

    Returns ``(position_ids_out [B, S'] or [3, B, S'], keep_pos int64[B, S'], vis_mask_out bool[B, S'])``
    with ``S' = S − num_visual + k`` (``num_visual`` is the op's static output length; the
    reference reads the same count from ``vis_mask``).
    """
    keep_pos = survivors(vis_mask, select_topk(scores, vis_mask, k))
    index = keep_pos.expand(*position_ids.shape[:-2], *keep_pos.shape)
    position_ids_out = position_ids.expand(*position_ids.shape[:-2], keep_pos.shape[0], -1).gather(-1, index)
    return position_ids_out, keep_pos, vis_mask.gather(1, keep_pos)


def variation_drop(
    hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reference of ``v2drop.variation_drop``: :func:`select_drop` by the variation scores, and the
    survivors' hidden states.

    Returns ``(hidden_out [B, S', D], position_ids_out, keep_pos, vis_mask_out, scores [B, S])``.
    """
    scores = variation_scores(hidden, prev, vis_mask)
    position_ids_out, keep_pos, vis_mask_out = select_drop(scores, vis_mask, position_ids, num_visual, k)
    hidden_out = hidden.gather(1, keep_pos[..., None].expand(-1, -1, hidden.shape[-1]))
    return hidden_out, position_ids_out, keep_pos, vis_mask_out, scores


def select_drop_varlen(
    scores: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    num_visual: Sequence[int],
    k: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of ``v2drop.select_drop_varlen``: :func:`select_drop` applied to each sequence.

    ``scores [T]``, ``vis_mask [T]``, ``position_ids [T]`` or ``[3, T]``, ``cu_seqlens`` int32
    ``[B + 1]``. Returns ``(position_ids_out, keep_pos int64[T']`` (global indices into the input,
    ascending)``, vis_mask_out [T'], cu_seqlens_out int32[B + 1])``.
    """
    bounds = cu_seqlens.tolist()
    parts = []
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        pos, keep, mask = select_drop(scores[None, start:end], vis_mask[None, start:end],
                                      position_ids[..., None, start:end], num_visual[b], k[b])
        parts.append((pos[..., 0, :], keep[0] + start, mask[0]))
    lengths = torch.tensor([0] + [part[1].numel() for part in parts], dtype=torch.int32)
    cu_out = lengths.cumsum(0, dtype=torch.int32).to(cu_seqlens.device)
    position_ids_out = torch.cat([part[0] for part in parts], dim=-1)
    keep_pos = torch.cat([part[1] for part in parts])
    vis_mask_out = torch.cat([part[2] for part in parts])
    return position_ids_out, keep_pos, vis_mask_out, cu_out


def variation_drop_varlen(
    hidden: Tensor,
    prev: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    num_visual: Sequence[int],
    k: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reference of ``v2drop.variation_drop_varlen``: :func:`select_drop_varlen` by the variation
    scores, and the survivors' hidden states.

    ``hidden/prev [T, D]``. Returns ``(hidden_out [T', D], position_ids_out, keep_pos, vis_mask_out,
    cu_seqlens_out, scores float32[T])``.
    """
    scores = variation_scores(hidden, prev, vis_mask)
    position_ids_out, keep_pos, vis_mask_out, cu_out = select_drop_varlen(scores, vis_mask, position_ids, cu_seqlens, num_visual, k)
    return hidden[keep_pos], position_ids_out, keep_pos, vis_mask_out, cu_out, scores


def _seq_index(cache: Tensor, keep_pos: Tensor, seq_dim: int) -> Tensor:
    """``keep_pos`` shaped to gather ``cache`` along ``seq_dim``."""
    shape = [1] * cache.dim()
    shape[0], shape[seq_dim] = keep_pos.shape
    size = list(cache.shape)
    size[seq_dim] = keep_pos.shape[1]
    return keep_pos.view(shape).expand(size)


def kv_compact(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> list[Tensor]:
    """Reference of ``v2drop.kv_compact``: ``cache[b, keep_pos[b, j]]`` along ``seq_dim``.

    ``[B, S, H, Dh]`` (seq_dim 1) and ``[B, H, S, Dh]`` (seq_dim 2) with ``keep_pos [B, n]``; packed
    ``[T, H, Dh]`` (seq_dim 0) with ``keep_pos [n]``.
    """
    if keep_pos.dim() == 1:
        return [cache.index_select(0, keep_pos) for cache in caches]
    seq_dim = seq_dim % 4
    return [cache.gather(seq_dim, _seq_index(cache, keep_pos, seq_dim)) for cache in caches]


def kv_compact_(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> None:
    """Reference of ``v2drop.kv_compact_``: the first n entries along ``seq_dim`` of each cache
    become the kept ones; the rest is left as it was."""
    n = keep_pos.shape[-1]
    seq_dim = seq_dim % caches[0].dim()
    for cache, out in zip(caches, kv_compact(caches, keep_pos, seq_dim)):
        cache.narrow(seq_dim, 0, n).copy_(out)
