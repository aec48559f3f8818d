"""Applying a drop decision to the tokens, through the package's ops: the selection by scores
(:func:`~v2drop_kernels.select_drop`, or its varlen twin when packed) and the compaction of the
hidden states and any per-token tensors (:func:`~v2drop_kernels.kv_compact`). A policy hook returns
a :class:`Drop`; the decoder applies it with :func:`apply_drop`. :class:`~.tokens.Tokens` stays a
record.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import ops
from .tokens import Selection, Tokens


@dataclass
class Drop:
    """A policy's decision: the survivors, and their hidden states when the policy's op already
    moved them (V²Drop's fused ``variation_drop``); otherwise :func:`apply_drop` moves them."""

    selection: Selection
    hidden: Tensor | None = None


def select(tokens: Tokens, scores: Tensor, keep_visual: list[int], backend: str | None = None) -> Selection:
    """Keeps every text token and, per row, the ``keep_visual[b]`` visual tokens of highest
    ``scores`` (float32 ``[B, S]`` / ``[T]``): the ops' ranking (ties to the lower position, NaN last)."""
    if tokens.packed:
        out = ops.select_drop_varlen(scores, tokens.vis_mask, tokens.position_ids, tokens.cu_seqlens, keep_visual,
                                     num_visual=tokens.num_visual, backend=backend)
    else:
        out = ops.select_drop(scores, tokens.vis_mask, tokens.position_ids, keep_visual[0],
                              num_visual=tokens.num_visual[0], backend=backend)
    return Selection(out.keep_pos, list(keep_visual), out.cu_seqlens, out.position_ids, out.vis_mask)


def apply_drop(tokens: Tokens, drop: Drop, *extras: Tensor, backend: str | None = None) -> tuple[Tokens, list[Tensor]]:
    """The tokens after ``drop``, and the same rows of ``extras`` (``[B, H, S, Dh]`` / ``[T, H, Dh]``:
    a layer's q, k, v). What has to move goes in one :func:`~v2drop_kernels.kv_compact` call."""
    sel = drop.selection
    seq_dim = 0 if tokens.packed else 2
    if drop.hidden is not None:
        moved = ops.kv_compact(list(extras), sel.keep, seq_dim, backend=backend) if extras else []
        return tokens.shrink(sel, drop.hidden), list(moved)
    moved = ops.kv_compact([tokens.hidden.unsqueeze(1), *extras], sel.keep, seq_dim, backend=backend)
    return tokens.shrink(sel, moved[0].squeeze(1)), list(moved[1:])
