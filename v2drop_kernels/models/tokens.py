"""The token sequence a decoder layer sees during prefill, and how pruning shrinks it.

Two layouts, one class:
- padded: ``hidden [B, S, D]``; prompts of different lengths are left-padded (``valid`` marks real
  tokens); every row holds the same number of visual tokens (the ops' padded contract);
- packed: ``hidden [T, D]`` plus int32 ``cu_seqlens [B + 1]`` (flash-attn's varlen convention);
  rows may hold different numbers of visual tokens, or none.

Pruning never reorders: survivors keep their original order, their original RoPE position ids and
(``orig_pos``) their index in their own prompt, so the caller can tell which tokens each layer saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .. import ops


@dataclass
class Selection:
    """Survivors of one pruning step: positions into the current sequence, ascending."""

    keep: Tensor  # int64 [B, n] (padded) or [n] (packed, global indices)
    num_visual: list[int]  # visual tokens per row after the step
    cu_seqlens: Tensor | None = None  # packed: int32 [B + 1] of the result


@dataclass
class Tokens:
    hidden: Tensor  # [B, S, D] / [T, D]: the residual stream entering the next layer
    position_ids: Tensor  # int64 [B, S] / [T]: original RoPE positions
    orig_pos: Tensor  # int64 [B, S] / [T]: index of each token in its own prompt (-1: left padding)
    vis_mask: Tensor  # bool [B, S] / [T]
    num_visual: list[int]  # visual tokens per row
    valid: Tensor | None = None  # padded: bool [B, S], False on left padding; None when there is none
    cu_seqlens: Tensor | None = None  # packed: int32 [B + 1]
    max_len: int = 0  # packed: longest row
    prev: Tensor | None = None  # input of the previous layer, kept while a policy needs it (V²Drop)
    backend: str | None = None  # ops backend for pruning (None: the fastest available)
    notes: dict[str, Any] = field(default_factory=dict)  # policies' scratch (FastV's scores)

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def batch(self) -> int:
        return len(self.num_visual)

    def last_index(self) -> Tensor:
        """Index of each row's last token (the last instruction token during prefill)."""
        if self.packed:
            return self.cu_seqlens[1:].long() - 1
        return torch.full((self.hidden.shape[0],), self.hidden.shape[1] - 1, device=self.hidden.device)

    def select(self, scores: Tensor, keep_visual: list[int]) -> Selection:
        """Keeps every text token and, per row, the ``keep_visual[b]`` visual tokens of highest score.

        The ranking (ties to the lower position, NaN last) is the ops' contract: the scores go through
        the fused op as one-wide hidden states against a zero ``prev`` (``‖s − 0‖ = s`` for ``s >= 0``).
        """
        col = scores.float().unsqueeze(-1)
        zero = torch.zeros_like(col)
        if self.packed:
            pos = torch.arange(col.shape[0], device=col.device)
            out = ops.variation_drop_varlen(col, zero, self.vis_mask, pos, self.cu_seqlens, keep_visual,
                                            num_visual=self.num_visual, backend=self.backend)
            return Selection(out.keep_pos, list(keep_visual), out.cu_seqlens)
        out = ops.variation_drop(col, zero, self.vis_mask, None, keep_visual[0], num_visual=self.num_visual[0],
                                 backend=self.backend)
        return Selection(out.keep_pos, list(keep_visual))

    def compact(self, sel: Selection, *extras: Tensor) -> tuple["Tokens", list[Tensor]]:
        """The survivors of ``sel``, and the same rows of ``extras`` (``[B, H, S, Dh]`` / ``[T, H, Dh]``).

        The hidden states and every extra tensor move in one :func:`v2drop_kernels.kv_compact` call.
        """
        seq_dim = 0 if self.packed else 2
        moved = ops.kv_compact([self.hidden.unsqueeze(1), *extras], sel.keep, seq_dim, backend=self.backend)
        return self.shrink(sel, moved[0].squeeze(1)), list(moved[1:])

    def shrink(self, sel: Selection, hidden: Tensor, position_ids: Tensor | None = None,
               vis_mask: Tensor | None = None) -> "Tokens":
        """The tokens after a drop to ``sel``, given the survivors' hidden states (already compacted,
        by the fused op or :meth:`compact`); position ids and mask are gathered unless given."""
        if self.packed:
            take = lambda x: x.index_select(0, sel.keep)  # noqa: E731
            lengths = torch.diff(sel.cu_seqlens)
            max_len = int(lengths.max()) if lengths.numel() else 0
        else:
            take = lambda x: x.gather(1, sel.keep)  # noqa: E731
            max_len = 0
        return replace(
            self,
            hidden=hidden,
            position_ids=take(self.position_ids) if position_ids is None else position_ids,
            vis_mask=take(self.vis_mask) if vis_mask is None else vis_mask,
            orig_pos=take(self.orig_pos),
            valid=None if self.valid is None else take(self.valid),
            num_visual=sel.num_visual,
            cu_seqlens=sel.cu_seqlens,
            max_len=max_len,
            prev=None,
        )
