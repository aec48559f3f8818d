"""The token sequence a decoder layer sees during prefill, and how pruning shrinks it.

Two layouts, one class:
- padded: ``hidden [B, S, D]``; prompts of different lengths are left-padded (``valid`` marks real
  tokens); every row holds the same number of visual tokens (the ops' padded contract);
- packed: ``hidden [T, D]`` plus int32 ``cu_seqlens [B + 1]`` (flash-attn's varlen convention);
  rows may hold different numbers of visual tokens, or none.

Every count a shape depends on is kept on the host too (``num_visual``, and ``lengths`` of the packed
rows), so that pruning never reads the device: after a drop the new counts follow from the old ones
and the kept counts. Pruning never reorders: survivors keep their original order, their original
RoPE position ids and (``orig_pos``) their index in their own prompt, so the caller can tell which
tokens each layer saw. Applying a drop (the selection and the compaction, through the ops) is
:mod:`.dropping`'s; this module only describes the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import itertools

import torch
from torch import Tensor



def cu_seqlens(lengths: list[int], device) -> Tensor:
    """int32 ``[B + 1]`` offsets of packed rows of ``lengths`` tokens (flash-attn's varlen convention)."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def packed_coordinates(lengths: list[int], device, width: int | None = None) -> tuple[Tensor, Tensor]:
    """``(row, column)`` of every token of packed rows of ``lengths`` tokens (int64 ``[T]`` each; the
    column counts from 0 within the row, or, with ``width``, is where the token sits in a
    left-padded row of ``width`` columns), built from the host counts: nothing is read back."""
    total = sum(lengths)
    counts = torch.tensor(lengths, dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(lengths)), counts, output_size=total)
    first = torch.tensor([0, *itertools.accumulate(lengths)][:-1], dtype=torch.long)  # each row's first token
    if width is not None:
        first = first - (width - counts)  # a row's tokens are its last columns
    return rows.to(device), (torch.arange(total) - first[rows]).to(device)


def pack_left_padded(tokens: "Tokens", lengths: list[int]) -> "Tokens":
    """Left-padded ``tokens`` (rows ``[B, S]`` whose last ``lengths[b]`` entries are real) in the
    packed layout, by one gather per tensor."""
    device = tokens.hidden.device
    rows, cols = packed_coordinates(lengths, device, width=tokens.hidden.shape[1])
    return Tokens(tokens.hidden[rows, cols], tokens.position_ids[..., rows, cols], tokens.orig_pos[rows, cols],
                  tokens.vis_mask[rows, cols], list(tokens.num_visual), cu_seqlens=cu_seqlens(lengths, device),
                  lengths=list(lengths), prompt_visual=list(tokens.prompt_visual), deepstack=tokens.deepstack,
                  visual_row=None if tokens.visual_row is None else tokens.visual_row[rows, cols])


def unpack_left_padded(tokens: "Tokens", x: Tensor | None = None,
                       coordinates: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """A packed per-token tensor ``x [T, ...]`` (default ``tokens.hidden``) as left-padded rows
    ``[B, max_len, ...]`` (zeros on padding): row ``b``'s last entry is its last token.
    ``coordinates``: ``packed_coordinates(tokens.lengths, device, width=tokens.max_len)``, when the
    caller lays out several tensors (or gathers them back) with the same ones."""
    x = tokens.hidden if x is None else x
    rows, cols = coordinates if coordinates is not None else packed_coordinates(tokens.lengths, x.device, width=tokens.max_len)
    out = x.new_zeros(tokens.batch, tokens.max_len, *x.shape[1:])
    out[rows, cols] = x
    return out


LAYOUTS = ("padded", "packed", "auto")


def resolve_layout(layout: str, visual: list[int], what: str = "visual tokens") -> str:
    """The prefill layout of rows holding ``visual`` visual tokens each: ``auto`` is ``padded`` when
    every row holds as many, else ``packed``. Refuses an unknown layout, and ``padded`` for rows that
    differ (a padded batch drops the same count from every row); ``what`` names the tokens."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'padded', 'packed' or 'auto', got {layout!r}")
    if layout == "auto":
        return "padded" if len(set(visual)) <= 1 else "packed"
    if layout == "padded" and len(set(visual)) > 1:
        raise ValueError(f"layout='padded' needs the same number of {what} per row, got {visual}; use layout='packed'")
    return layout


@dataclass
class Selection:
    """Survivors of one pruning step: positions into the current sequence, ascending."""

    keep: Tensor  # int64 [B, n] (padded) or [n] (packed, global indices)
    num_visual: list[int]  # visual tokens per row after the step
    cu_seqlens: Tensor | None = None  # packed: int32 [B + 1] of the result
    position_ids: Tensor | None = None  # the survivors' position ids and visual mask, when the op
    vis_mask: Tensor | None = None  # that selected them compacted those too


@dataclass
class Tokens:
    hidden: Tensor  # [B, S, D] / [T, D]: the residual stream entering the next layer
    position_ids: Tensor  # int64 [B, S] / [T]: original RoPE positions; M-RoPE: [3, B, S] / [3, T]
    orig_pos: Tensor  # int64 [B, S] / [T]: index of each token in its own prompt (-1: left padding)
    vis_mask: Tensor  # bool [B, S] / [T]
    num_visual: list[int]  # visual tokens per row (host)
    valid: Tensor | None = None  # padded: bool [B, S], False on left padding; None when there is none
    cu_seqlens: Tensor | None = None  # packed: int32 [B + 1]
    lengths: list[int] | None = None  # packed: tokens per row (host), so that cu_seqlens is never read back
    prompt_visual: list[int] | None = None  # visual tokens per row in the prompt (host; default: num_visual)
    # Qwen3-VL's DeepStack: features added to the visual tokens after layers 0 .. L-1, [L, N, D] (N: the
    # batch's visual tokens in prompt order), and each token's row of them (int64 like orig_pos; 0 on text)
    deepstack: Tensor | None = None
    visual_row: Tensor | None = None

    def __post_init__(self):
        if self.prompt_visual is None:  # built from a prompt: nothing dropped yet
            self.prompt_visual = list(self.num_visual)

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def planes(self) -> bool:
        """Whether the position ids are M-RoPE planes (``[3, B, S]`` / ``[3, T]``)."""
        return self.position_ids.ndim == self.hidden.ndim

    @property
    def batch(self) -> int:
        return len(self.num_visual)

    @property
    def bounds(self) -> list[int]:
        """Packed: ``cu_seqlens`` on the host."""
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + n)
        return out

    @property
    def max_len(self) -> int:
        """Packed: the longest row."""
        return max(self.lengths, default=0)

    def next_positions(self) -> Tensor:
        """int64 ``[B]`` (``[3, B]`` with planes): the position ids of each row's first generated
        token, one past its last token's, as ``transformers``' ``generate`` continues them (for
        Qwen-VL too: not from the largest id of the prompt, Qwen's original ``rope_deltas``, which
        differs after a video whose temporal ids outrun the text that follows it)."""
        if not self.packed:
            return self.position_ids[..., -1] + 1
        return self.position_ids.index_select(-1, self.last_index()) + 1

    def last_index(self) -> Tensor:
        """Index of each row's last token (the last instruction token during prefill)."""
        if self.packed:
            return self.cu_seqlens[1:].long() - 1
        return torch.full((self.hidden.shape[0],), self.hidden.shape[1] - 1, device=self.hidden.device)

    def shrink(self, sel: Selection, hidden: Tensor) -> "Tokens":
        """The tokens after a drop to ``sel``, given the survivors' hidden states (already compacted,
        by the fused op or :func:`~v2drop_kernels.models.dropping.apply_drop`); position ids and mask
        are gathered unless ``sel`` has them.
        Each row loses ``num_visual − kept`` tokens: the host counts follow without reading the device."""
        def take(x: Tensor) -> Tensor:  # the survivors' entries of a per-token tensor (with planes or not)
            if self.packed:
                return x.index_select(-1, sel.keep)
            return x.gather(-1, sel.keep.expand(*x.shape[:-2], *sel.keep.shape))

        lengths = None
        if self.packed:
            lengths = [n - v + k for n, v, k in zip(self.lengths, self.num_visual, sel.num_visual)]
        return replace(
            self,
            hidden=hidden,
            position_ids=take(self.position_ids) if sel.position_ids is None else sel.position_ids,
            vis_mask=take(self.vis_mask) if sel.vis_mask is None else sel.vis_mask,
            orig_pos=take(self.orig_pos),
            valid=None if self.valid is None else take(self.valid),
            visual_row=None if self.visual_row is None else take(self.visual_row),
            num_visual=list(sel.num_visual),
            cu_seqlens=sel.cu_seqlens,
            lengths=lengths,
        )
