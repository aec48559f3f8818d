"""Inputs for testing and benchmarking the v2drop ops, shared by ``python_tests/`` and ``bench/``.

Builders take a ``torch.Generator`` so that every run draws the same data: visual masks with
several images per row at random offsets, hidden states in contiguous, strided and transposed
layouts (and small integers, whose scores are exact and tie often), rows whose scores are given
values (ties, NaN, inf), position ids (int64, int32, M-RoPE planes) and packed varlen batches.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "strided", "transposed"]  # of hidden/prev; the last dim is always contiguous
POSITION_KINDS = ["int64", "int32", "mrope"]


def k_values(num_visual: int) -> dict[str, int]:
    """k = 1, a middle value, and V (all kept)."""
    return {"one": 1, "mid": num_visual // 2 + 1 if num_visual > 1 else 1, "all": num_visual}


def make_mask(batch: int, seq: int, num_visual: int, num_images: int, gen: torch.Generator) -> Tensor:
    """bool[B, S]: each row holds ``num_visual`` visual tokens in ``num_images`` runs (images) at
    random offsets, different in every row."""
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    num_images = max(1, min(num_images, num_visual))
    for b in range(batch):
        cuts = sorted(torch.randperm(num_visual - 1, generator=gen)[: num_images - 1].add(1).tolist())
        sizes = [e - s for s, e in zip([0, *cuts], [*cuts, num_visual])]
        text = seq - num_visual
        gaps = sorted(torch.randint(0, text + 1, (num_images,), generator=gen).tolist())
        pos = 0
        for i, size in enumerate(sizes):
            start = gaps[i] + pos
            mask[b, start : start + size] = True
            pos += size
    assert bool((mask.sum(1) == num_visual).all())
    return mask


def place(values: Tensor, layout: str) -> Tensor:
    """The same values ``[B, S, D]`` in a buffer with the given layout (last dim contiguous)."""
    batch, seq, dim = values.shape
    if layout == "contiguous":
        return values.contiguous()
    if layout == "strided":  # a slice of a larger buffer: padded batch/sequence strides, odd offset
        buf = torch.full((2 * batch, seq + 3, dim + 5), float("nan"), dtype=values.dtype, device=values.device)
        view = buf[::2, 1 : seq + 1, 3 : dim + 3]
        view.copy_(values)
        return view
    if layout == "transposed":  # stored [S, B, D]
        return values.transpose(0, 1).contiguous().transpose(0, 1)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def make_hidden(
    batch: int,
    seq: int,
    dim: int,
    dtype: torch.dtype,
    device: str | torch.device,
    gen: torch.Generator,
    *,
    integer: bool = False,
    layout: str = "contiguous",
) -> tuple[Tensor, Tensor]:
    """(hidden, prev) ``[B, S, D]``. ``integer``: small integers, so every score is exact in
    float32 (and ties are common); otherwise prev ~ N(0, 1) plus a per-token amount of change."""
    if integer:
        prev = torch.randint(-3, 4, (batch, seq, dim), generator=gen).float()
        hidden = torch.randint(-3, 4, (batch, seq, dim), generator=gen).float()
    else:
        prev = torch.randn(batch, seq, dim, generator=gen)
        amount = torch.rand(batch, seq, 1, generator=gen) * 2
        hidden = prev + amount * torch.randn(batch, seq, dim, generator=gen)
    hidden = place(hidden.to(dtype=dtype, device=device), layout)
    prev = place(prev.to(dtype=dtype, device=device), layout)
    return hidden, prev


def rows_with_scores(values: Sequence[float], device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """hidden/prev ``[1, S, 1]`` whose score at position ``s`` is ``|values[s]|`` (NaN stays NaN):
    ties, NaN and inf exactly where a test wants them."""
    hidden = torch.tensor(values, dtype=torch.float32).view(1, -1, 1).to(device, dtype)
    return hidden, torch.zeros_like(hidden)


def make_position_ids(batch: int, seq: int, kind: str, device, gen: torch.Generator) -> Tensor:
    """``int64`` (an expanded arange, stride 0 over the batch), ``int32`` (offset per row) or
    ``mrope`` (``[3, B, S]`` temporal/height/width ids)."""
    if kind == "int64":
        return torch.arange(seq, device=device).expand(batch, seq)
    if kind == "int32":
        return (torch.arange(seq) + torch.randint(0, 5, (batch, 1), generator=gen)).int().to(device)
    if kind == "mrope":
        return torch.randint(0, 4 * seq, (3, batch, seq), generator=gen).to(device)
    raise ValueError(f"kind must be one of {POSITION_KINDS}, got {kind!r}")


def make_packed(
    rows: Sequence[tuple[int, int, int]],
    dim: int,
    dtype: torch.dtype,
    device,
    gen: torch.Generator,
    *,
    integer: bool = False,
    mrope: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A packed varlen batch from ``(length, visual tokens, images)`` per sequence (rows may have
    no visual tokens): ``(hidden [T, D], prev [T, D], vis_mask [T], position_ids [T] or [3, T],
    cu_seqlens int32 [B + 1])``; positions restart at 0 in each sequence (random with ``mrope``)."""
    masks = [make_mask(1, length, v, images, gen)[0] if v else torch.zeros(length, dtype=torch.bool) for length, v, images in rows]
    vis_mask = torch.cat(masks).to(device)
    total = vis_mask.numel()
    hidden, prev = make_hidden(1, total, dim, dtype, device, gen, integer=integer)
    cu_seqlens = torch.tensor([0] + [r[0] for r in rows]).cumsum(0).int().to(device)
    if mrope:
        position_ids = torch.randint(0, 10_000, (3, total), generator=gen).to(device)
    else:
        position_ids = torch.cat([torch.arange(r[0]) for r in rows]).to(device)
    return hidden[0], prev[0], vis_mask, position_ids, cu_seqlens


def make_scores(shape: Sequence[int], device, gen: torch.Generator, *, ties: bool = False) -> Tensor:
    """float32 scores of the given shape: uniform in [0, 1), or (``ties``) a few distinct values."""
    scores = torch.randint(0, 4, tuple(shape), generator=gen).float() / 4 if ties else torch.rand(tuple(shape), generator=gen)
    return scores.to(device)
