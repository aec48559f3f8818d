"""Python API of the v2drop ops.

Each function runs the op on a backend (:mod:`v2drop_kernels.backends`): ``backend="cpu"`` or
``"cuda"`` (the C++ kernels, ``torch.ops.v2drop``), ``"triton"`` (``torch.ops.v2drop_triton``),
``"reference"`` (the plain-PyTorch specification, :mod:`v2drop_kernels.reference`) or any backend
registered with :func:`~v2drop_kernels.backends.register_backend`; ``backend=None`` picks the
fastest available for the tensors' device. Every backend validates its arguments by the same rules
(:mod:`v2drop_kernels.checks`). Semantics of every op: README.md and the reference. The ops are for
inference: they have no autograd formula.
"""

from __future__ import annotations

import operator
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .backends import available_backends, resolve

__all__ = [
    "DropOutput", "SelectOutput", "available_backends", "kv_compact", "kv_compact_", "select_drop", "select_drop_varlen",
    "variation_drop", "variation_drop_varlen", "variation_topk",
]


class DropOutput(NamedTuple):
    """Result of :func:`variation_drop` (padded) and :func:`variation_drop_varlen` (packed)."""

    hidden: Tensor  # compacted hidden states [B, S', D] / [T', D], input dtype
    position_ids: Tensor  # original position ids of the survivors [B, S'] / [3, B, S'] / [T'] / [3, T']
    keep_pos: Tensor  # int64 original positions of the survivors, ascending (global for packed)
    vis_mask: Tensor  # bool, which survivors are visual tokens
    scores: Tensor  # float32 [B, S] / [T], ‖hidden − prev‖₂ at visual positions, 0 elsewhere
    cu_seqlens: Tensor | None = None  # packed only: int32 [B + 1] of the result


class SelectOutput(NamedTuple):
    """Result of :func:`select_drop` (padded) and :func:`select_drop_varlen` (packed)."""

    position_ids: Tensor  # original position ids of the survivors [B, S'] / [3, B, S'] / [T'] / [3, T']
    keep_pos: Tensor  # int64 original positions of the survivors, ascending (global for packed)
    vis_mask: Tensor  # bool, which survivors are visual tokens
    cu_seqlens: Tensor | None = None  # packed only: int32 [B + 1] of the result


def _count(name: str, value) -> int:
    """An integer argument: ints (and integer scalars such as numpy ints), not bools or floats."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got a bool ({value})")
    if isinstance(value, (int, torch.SymInt)):
        return value
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {type(value).__name__} ({value!r})") from None


def _counts(name: str, values: Sequence) -> list[int]:
    return [_count(f"{name}[{i}]", v) for i, v in enumerate(values)]


def _default_positions(position_ids: Tensor | None, vis_mask: Tensor) -> Tensor:
    """Padded layout: ``None`` means ``arange(S)`` for every row (an expanded view)."""
    if position_ids is not None:
        return position_ids
    seq = vis_mask.shape[-1] if vis_mask.dim() else 0
    return torch.arange(seq, device=vis_mask.device).expand(*vis_mask.shape[:-1], seq)


def _padded_num_visual(op: str, num_visual: int | None, vis_mask: Tensor) -> int:
    """``num_visual``, or V read from row 0 of ``vis_mask`` (a host sync). A mask of the wrong
    shape or dtype gets a count here and the op's own error."""
    if num_visual is not None:
        return _count("num_visual", num_visual)
    if vis_mask.dim() == 2 and vis_mask.shape[0] == 0:
        raise ValueError(f"{op}: num_visual=None reads V from row 0 of vis_mask, and the batch is empty; pass num_visual")
    return int(vis_mask[0].sum()) if vis_mask.dim() and vis_mask.shape[0] else 0


def _packed_counts(num_visual: Sequence[int] | None, k: int | Sequence[int], vis_mask: Tensor,
                   cu_seqlens: Tensor) -> tuple[list[int], list[int]]:
    """``num_visual`` (read from the data when None: a host sync) and ``k`` per sequence (an int
    ``k`` applies to every sequence with visual tokens)."""
    if num_visual is None:
        # Visual tokens between consecutive bounds; malformed bounds are clamped here and reported
        # by the op's own checks.
        running = torch.nn.functional.pad(vis_mask.reshape(-1).long().cumsum(0), (1, 0))
        bounds = cu_seqlens.reshape(-1).long().clamp(0, running.shape[0] - 1)
        num_visual = (running[bounds[1:]] - running[bounds[:-1]]).clamp_min(0).tolist()
    num_visual = _counts("num_visual", num_visual)
    if isinstance(k, Sequence):
        return num_visual, _counts("k", k)
    k = _count("k", k)
    return num_visual, [k if v > 0 else 0 for v in num_visual]


def variation_topk(hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Scores every visual token by how much its hidden state changed and picks the top ``k``.

    Args:
        hidden: ``[B, S, D]`` float32/float16/bfloat16, input of layer ``l`` (last dim contiguous).
        prev: ``[B, S, D]``, same dtype and device, input of layer ``l − 1``.
        vis_mask: ``bool[B, S]``, visual positions; every row holds the same number ``V``.
        k: visual tokens to keep per row, ``1 <= k <= V``.

    Returns:
        ``(keep_idx int64[B, k], scores float32[B, S])``: the positions of the ``k`` visual tokens
        with the largest ``‖hidden − prev‖₂``, ascending (equal scores: lower position first; NaN
        below every number), and the scores (0 at non-visual positions).
    """
    keep_idx, scores = resolve(backend, hidden).ops.variation_topk(hidden, prev, vis_mask, _count("k", k))
    return keep_idx, scores


def variation_drop(
    hidden: Tensor,
    prev: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor | None,
    k: int,
    *,
    num_visual: int | None = None,
    backend: str | None = None,
) -> DropOutput:
    """Fused V²Drop step on the padded layout: score, keep the top ``k`` visual tokens, compact.

    Args:
        hidden, prev, vis_mask, k: as in :func:`variation_topk`.
        position_ids: int64/int32 ``[B, S]`` or ``[3, B, S]`` (M-RoPE), any strides (an expanded
            ``arange`` is fine); ``None`` means ``arange(S)`` for every row.
        num_visual: visual tokens per row ``V``. It fixes the output length ``S' = S − V + k``;
            pass it to keep shapes static (``torch.compile``, CUDA graphs) and for an empty batch.
            ``None`` reads it from row 0 of ``vis_mask`` (a device-to-host sync).

    Returns:
        :class:`DropOutput` ``(hidden, position_ids, keep_pos, vis_mask, scores)``: the text tokens
        and the kept visual tokens in their original order with their original position ids.
    """
    position_ids = _default_positions(position_ids, vis_mask)
    num_visual = _padded_num_visual("variation_drop", num_visual, vis_mask)
    out = resolve(backend, hidden).ops.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, _count("k", k))
    return DropOutput(*out)


def variation_drop_varlen(
    hidden: Tensor,
    prev: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    k: int | Sequence[int],
    *,
    num_visual: Sequence[int] | None = None,
    backend: str | None = None,
) -> DropOutput:
    """Fused V²Drop step on the packed variable-length layout (flash-attn's varlen convention).

    Args:
        hidden, prev: ``[T, D]``, the ``B`` sequences back to back.
        vis_mask: ``bool[T]``. position_ids: ``[T]`` or ``[3, T]``, int64/int32.
        cu_seqlens: int32 ``[B + 1]``, sequence ``b`` is ``[cu_seqlens[b], cu_seqlens[b + 1])``.
        k: visual tokens kept per sequence: a list, or one int for every sequence that has
            visual tokens (sequences without any keep 0). ``1 <= k[b] <= num_visual[b]``.
        num_visual: visual tokens per sequence; ``None`` reads them from the data (a host sync).

    Returns:
        :class:`DropOutput` with ``cu_seqlens`` of the result (feed it to the next layer's varlen
        attention) and ``keep_pos`` as global indices into the packed input.
    """
    num_visual, k = _packed_counts(num_visual, k, vis_mask, cu_seqlens)
    out = resolve(backend, hidden).ops.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu_seqlens, num_visual, k)
    hidden_out, position_ids_out, keep_pos, vis_mask_out, cu_out, scores = out
    return DropOutput(hidden_out, position_ids_out, keep_pos, vis_mask_out, scores, cu_out)


def select_drop(
    scores: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor | None,
    k: int,
    *,
    num_visual: int | None = None,
    backend: str | None = None,
) -> SelectOutput:
    """Keeps the text tokens and the ``k`` visual tokens of highest score per row, padded layout.

    The selection and compaction of :func:`variation_drop`, with the scores given (PyramidDrop's
    and FastV's attention of the last instruction token, for example) and no hidden states: move
    those, with any K/V, through :func:`kv_compact` with the returned ``keep_pos``.

    Args:
        scores: float32 ``[B, S]`` (last dim contiguous); only visual positions are ranked. Same
            ranking as every op: higher first, equal scores to the lower position, NaN last.
        vis_mask, k, num_visual: as in :func:`variation_drop`.
        position_ids: as in :func:`variation_drop`, over ``scores``' ``[B, S]``.

    Returns:
        :class:`SelectOutput` ``(position_ids, keep_pos, vis_mask)`` of the ``S' = S − V + k`` survivors.
    """
    position_ids = _default_positions(position_ids, vis_mask)
    num_visual = _padded_num_visual("select_drop", num_visual, vis_mask)
    return SelectOutput(*resolve(backend, scores).ops.select_drop(scores, vis_mask, position_ids, num_visual, _count("k", k)))


def select_drop_varlen(
    scores: Tensor,
    vis_mask: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    k: int | Sequence[int],
    *,
    num_visual: Sequence[int] | None = None,
    backend: str | None = None,
) -> SelectOutput:
    """:func:`select_drop` on the packed layout: ``scores [T]``, ``vis_mask [T]``, ``position_ids
    [T]`` / ``[3, T]``, ``cu_seqlens``, ``k`` and ``num_visual`` as in :func:`variation_drop_varlen`.
    Returns :class:`SelectOutput` with ``cu_seqlens`` of the result."""
    num_visual, k = _packed_counts(num_visual, k, vis_mask, cu_seqlens)
    return SelectOutput(*resolve(backend, scores).ops.select_drop_varlen(scores, vis_mask, position_ids, cu_seqlens, num_visual, k))


def kv_compact(caches: Tensor | Sequence[Tensor], keep_pos: Tensor, seq_dim: int = 2, *, backend: str | None = None):
    """Gathers the kept entries of one or several KV tensors along ``seq_dim``, in one call.

    Layouts: ``[B, H, S, Dh]`` (``seq_dim=2``) or ``[B, S, H, Dh]`` (``seq_dim=1``) with
    ``keep_pos int64[B, n]``; packed ``[T, H, Dh]`` (``seq_dim=0``) with ``keep_pos int64[n]``.
    All tensors share batch size and sequence length; dtypes and head sizes may differ.
    Returns new contiguous tensors with ``n`` entries along ``seq_dim`` (a list, or one tensor when
    one tensor was given).
    """
    single = isinstance(caches, Tensor)
    tensors = [caches] if single else list(caches)
    outs = resolve(backend, keep_pos).ops.kv_compact(tensors, keep_pos, _count("seq_dim", seq_dim))
    return outs[0] if single else list(outs)


def kv_compact_(caches: Tensor | Sequence[Tensor], keep_pos: Tensor, seq_dim: int = 2, *, backend: str | None = None) -> None:
    """In-place :func:`kv_compact` into the caches' own (preallocated, static) storage.

    Positions ``[0, n)`` along ``seq_dim`` receive the kept entries; positions ``[n, S)`` keep
    their old contents. Rows of ``keep_pos`` must be strictly increasing. Shapes never change,
    so a captured CUDA graph stays valid.
    """
    tensors = [caches] if isinstance(caches, Tensor) else list(caches)
    resolve(backend, keep_pos).ops.kv_compact_(tensors, keep_pos, _count("seq_dim", seq_dim))
