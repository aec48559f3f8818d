"""The argument rules of every v2drop op for the Python backends: the mirror of ``csrc/checks.h``.

The Triton ops, the reference backend and the fake kernels validate through these functions; the
C++ backends through ``csrc/checks.h``, which states the same rules with the same messages.
``python_tests/test_errors.py`` holds every backend to one exception type and message per bad input.

One function per op (``<op>(...)``) validates everything that can be known without reading tensor
data and returns what the caller needs (output length, normalised dims): RuntimeError for
shape/dtype/device/layout problems, ValueError for bad integer arguments. Every message names the
op and the argument.

Rules that need the data (visual tokens per row, cu_seqlens values, keep_pos ranges and order) are
checked where the data is. Device backends (Triton, CUDA) assert on the device
(:func:`device_assert`, no host sync: RuntimeError with the ``msg_*`` message); host backends (CPU,
the reference) check on the host (``host_*`` below: ValueError, the same message plus the offending
values).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def check(cond: bool, message: str, error: type[Exception] = RuntimeError) -> None:
    if not cond:
        raise error(message)


class TokenGrid(NamedTuple):
    """The token grid an op's per-token arguments must match: ``hidden.shape[:-1]`` for the
    variation ops, ``scores.shape`` for the select ops, on that tensor's device."""

    name: str
    shape: list[int]
    device: torch.device


def grid_of_hidden(hidden: Tensor) -> TokenGrid:
    return TokenGrid("hidden", list(hidden.shape[:-1]), hidden.device)


def grid_of_scores(scores: Tensor) -> TokenGrid:
    return TokenGrid("scores", list(scores.shape), scores.device)


def last_dim(op: str, name: str, t: Tensor) -> None:
    check(t.shape[-1] <= 1 or t.stride(-1) == 1, f"{op}: {name} must have a contiguous last dim, got strides {list(t.stride())}")


def hidden_pair(op: str, hidden: Tensor, prev: Tensor, rank: int) -> None:
    """hidden and prev: same shape, dtype and device; float32/float16/bfloat16; last dim contiguous."""
    check(hidden.dim() == rank, f"{op}: hidden must have {rank} dims, got shape {list(hidden.shape)}")
    check(hidden.dtype in FLOATS, f"{op}: hidden must be float32, float16 or bfloat16, got {hidden.dtype}")
    check(prev.shape == hidden.shape, f"{op}: prev must have the shape of hidden {list(hidden.shape)}, got {list(prev.shape)}")
    check(prev.dtype == hidden.dtype, f"{op}: prev must have the dtype of hidden ({hidden.dtype}), got {prev.dtype}")
    check(prev.device == hidden.device, f"{op}: prev must be on the device of hidden ({hidden.device}), got {prev.device}")
    last_dim(op, "hidden", hidden)
    last_dim(op, "prev", prev)


def scores_tensor(op: str, scores: Tensor, rank: int) -> None:
    """scores of the select ops: float32 of the given rank, last dim contiguous."""
    check(scores.dim() == rank, f"{op}: scores must have {rank} dims, got shape {list(scores.shape)}")
    check(scores.dtype == torch.float32, f"{op}: scores must be float32, got {scores.dtype}")
    last_dim(op, "scores", scores)


def vis_mask(op: str, mask: Tensor, grid: TokenGrid) -> None:
    check(mask.dtype == torch.bool, f"{op}: vis_mask must be bool, got {mask.dtype}")
    check(list(mask.shape) == grid.shape, f"{op}: vis_mask must have shape {grid.shape}, got {list(mask.shape)}")
    check(mask.device == grid.device, f"{op}: vis_mask must be on the device of {grid.name} ({grid.device}), got {mask.device}")


def position_ids(op: str, pos: Tensor, grid: TokenGrid) -> None:
    """int32/int64, the grid's shape or ``[3, *shape]`` (M-RoPE), on its device."""
    check(pos.dtype in (torch.int64, torch.int32), f"{op}: position_ids must be int64 or int32, got {pos.dtype}")
    shape = list(pos.shape)
    ok = shape == grid.shape or (len(shape) == len(grid.shape) + 1 and shape[0] == 3 and shape[1:] == grid.shape)
    check(ok, f"{op}: position_ids must have shape {grid.shape} or [3, {grid.shape}], got {shape}")
    check(pos.device == grid.device, f"{op}: position_ids must be on the device of {grid.name} ({grid.device}), got {pos.device}")


def token_args(op: str, grid: TokenGrid, mask: Tensor, pos: Tensor) -> None:
    """The per-token arguments of the drop and select ops: vis_mask and position_ids on the grid."""
    vis_mask(op, mask, grid)
    position_ids(op, pos, grid)


def k_padded(op: str, num_visual: int, k: int, seq: int) -> int:
    """``1 <= num_visual <= S`` and ``1 <= k <= num_visual``; returns ``S' = S − num_visual + k``."""
    check(1 <= num_visual <= seq, f"{op}: num_visual must be in [1, S={seq}], got {num_visual}", ValueError)
    check(1 <= k <= num_visual, f"{op}: k must be in [1, num_visual={num_visual}], got {k}", ValueError)
    return seq - num_visual + k


def varlen_args(op: str, cu_seqlens: Tensor, grid: TokenGrid, num_visual: Sequence[int], k: Sequence[int]) -> int:
    """cu_seqlens int32 ``[B + 1]`` on the grid's device, per-sequence lists of length B; returns
    ``T' = T − Σ num_visual + Σ k``. cu_seqlens values are data (:func:`msg_varlen`)."""
    check(cu_seqlens.dtype == torch.int32, f"{op}: cu_seqlens must be int32, got {cu_seqlens.dtype}")
    check(cu_seqlens.dim() == 1 and cu_seqlens.shape[0] >= 2, f"{op}: cu_seqlens must have shape [B + 1] with B >= 1, got {list(cu_seqlens.shape)}")
    check(cu_seqlens.device == grid.device, f"{op}: cu_seqlens must be on the device of {grid.name} ({grid.device}), got {cu_seqlens.device}")
    batch = cu_seqlens.shape[0] - 1
    check(len(num_visual) == batch, f"{op}: num_visual must have B={batch} entries, got {len(num_visual)}", ValueError)
    check(len(k) == batch, f"{op}: k must have B={batch} entries, got {len(k)}", ValueError)
    tokens_out = grid.shape[0]
    for b, (v, kb) in enumerate(zip(num_visual, k)):
        check(v >= 0, f"{op}: num_visual[{b}] must be >= 0, got {v}", ValueError)
        lo = 1 if v > 0 else 0
        check(lo <= kb <= v, f"{op}: k[{b}] must be in [{lo}, num_visual[{b}]={v}], got {kb}", ValueError)
        tokens_out -= v - kb
    check(tokens_out >= 0, f"{op}: num_visual sums to more than the T={grid.shape[0]} tokens", ValueError)
    return tokens_out


# ---- the ops ---------------------------------------------------------------------------------------

def variation_topk(hidden: Tensor, prev: Tensor, mask: Tensor, k: int) -> None:
    op = "v2drop.variation_topk"
    hidden_pair(op, hidden, prev, 3)
    vis_mask(op, mask, grid_of_hidden(hidden))
    check(1 <= k <= hidden.shape[1], f"{op}: k must be in [1, S={hidden.shape[1]}], got {k}", ValueError)


def variation_drop(hidden: Tensor, prev: Tensor, mask: Tensor, pos: Tensor, num_visual: int, k: int) -> int:
    """Returns S'."""
    op = "v2drop.variation_drop"
    hidden_pair(op, hidden, prev, 3)
    token_args(op, grid_of_hidden(hidden), mask, pos)
    return k_padded(op, num_visual, k, hidden.shape[1])


def variation_drop_varlen(hidden: Tensor, prev: Tensor, mask: Tensor, pos: Tensor, cu_seqlens: Tensor,
                          num_visual: Sequence[int], k: Sequence[int]) -> int:
    """Returns T'."""
    op = "v2drop.variation_drop_varlen"
    hidden_pair(op, hidden, prev, 2)
    grid = grid_of_hidden(hidden)
    token_args(op, grid, mask, pos)
    return varlen_args(op, cu_seqlens, grid, num_visual, k)


def select_drop(scores: Tensor, mask: Tensor, pos: Tensor, num_visual: int, k: int) -> int:
    """Returns S'."""
    op = "v2drop.select_drop"
    scores_tensor(op, scores, 2)
    token_args(op, grid_of_scores(scores), mask, pos)
    return k_padded(op, num_visual, k, scores.shape[1])


def select_drop_varlen(scores: Tensor, mask: Tensor, pos: Tensor, cu_seqlens: Tensor,
                       num_visual: Sequence[int], k: Sequence[int]) -> int:
    """Returns T'."""
    op = "v2drop.select_drop_varlen"
    scores_tensor(op, scores, 1)
    grid = grid_of_scores(scores)
    token_args(op, grid, mask, pos)
    return varlen_args(op, cu_seqlens, grid, num_visual, k)


def kv_args(op: str, caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> int:
    """Caches of rank 4 with keep_pos ``[B, n]`` and seq_dim in {1, 2}, or rank 3 with keep_pos
    ``[n]`` and seq_dim 0; all on keep_pos's device, last dim contiguous, with the same batch size
    and sequence length. Returns seq_dim normalised to ``[0, rank)``."""
    check(len(caches) > 0, f"{op}: caches must hold at least one tensor")
    check(keep_pos.dtype == torch.int64, f"{op}: keep_pos must be int64, got {keep_pos.dtype}")
    check(keep_pos.dim() in (1, 2), f"{op}: keep_pos must have shape [B, n] or [n] (packed), got {list(keep_pos.shape)}")
    rank = 4 if keep_pos.dim() == 2 else 3
    first = caches[0]
    check(first.dim() == rank, f"{op}: with keep_pos of shape {list(keep_pos.shape)} caches must have {rank} dims, got caches[0] of shape {list(first.shape)}")
    dim = seq_dim + rank if seq_dim < 0 else seq_dim
    if rank == 4:
        check(dim in (1, 2), f"{op}: seq_dim must be 1 or -3 ([B, S, H, Dh]) or 2 or -2 ([B, H, S, Dh]), got {seq_dim}", ValueError)
    else:
        check(dim == 0, f"{op}: seq_dim must be 0 or -3 for packed [T, H, Dh] caches, got {seq_dim}", ValueError)
    for i, c in enumerate(caches):
        check(c.dim() == rank, f"{op}: caches[{i}] must have {rank} dims, got shape {list(c.shape)}")
        check(c.device == keep_pos.device, f"{op}: caches[{i}] must be on the device of keep_pos ({keep_pos.device}), got {c.device}")
        check(c.shape[dim] == first.shape[dim], f"{op}: caches[{i}] must have sequence length {first.shape[dim]} along dim {dim}, got shape {list(c.shape)}")
        if rank == 4:
            check(c.shape[0] == keep_pos.shape[0], f"{op}: caches[{i}] must have batch size {keep_pos.shape[0]} (keep_pos.shape[0]), got shape {list(c.shape)}")
        last_dim(op, f"caches[{i}]", c)
    return dim


def _byte_ranges_intersect(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors of one storage may touch the same bytes (conservative: compares the spans
    from their first to their last element; disjoint slices of one buffer pass)."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t: Tensor) -> tuple[int, int]:
        lo = hi = t.data_ptr()
        for size, stride in zip(t.shape, t.stride()):
            step = (size - 1) * stride * t.element_size()
            lo, hi = (lo + step, hi) if step < 0 else (lo, hi + step)
        return lo, hi + t.element_size()

    (a_lo, a_hi), (b_lo, b_hi) = span(a), span(b)
    return a_lo < b_hi and b_lo < a_hi


def kv_compact(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int) -> int:
    return kv_args("v2drop.kv_compact", caches, keep_pos, seq_dim)


def kv_compact_(caches: Sequence[Tensor], keep_pos: Tensor, seq_dim: int, *, storage: bool = True) -> int:
    """Also: every cache writable in place, no two sharing memory, at most S entries per row.
    ``storage=False`` skips the memory rules (fake tensors have no storage to compare)."""
    op = "v2drop.kv_compact_"
    dim = kv_args(op, caches, keep_pos, seq_dim)
    if storage:
        for i, cache in enumerate(caches):
            overlap = torch._debug_has_internal_overlap(cache) == 1
            check(not overlap, f"{op}: caches[{i}] has overlapping elements (an expanded tensor?) and cannot be written in place")
            for j in range(i):
                check(not _byte_ranges_intersect(cache, caches[j]), f"{op}: caches[{j}] and caches[{i}] share memory")
    seq = caches[0].shape[dim]
    check(keep_pos.shape[-1] <= seq, f"{op}: keep_pos has {keep_pos.shape[-1]} entries per row, more than S={seq}", ValueError)
    return dim


# ---- rules that need the data ----------------------------------------------------------------------
# msg_*: the device form (Triton and CUDA asserts). host_*: the checks of the reference backend,
# which raise ValueError with the same message plus the offending values (as the CPU kernels do).

def msg_equal_rows(op: str) -> str:
    return f"{op}: every row of vis_mask must hold the same number of visual tokens"


def msg_k_above_visual(op: str, k: int) -> str:
    return f"{op}: k must be at most V, the visual tokens per row of vis_mask, got k={k}"


def msg_rows_hold(op: str, num_visual: int) -> str:
    return f"{op}: every row of vis_mask must hold num_visual={num_visual} visual tokens"


def msg_varlen(op: str, tokens: int) -> str:
    return f"{op}: cu_seqlens must start at 0, never decrease and end at T={tokens}, and sequence b must hold num_visual[b] visual tokens"


def msg_keep_range(op: str, seq: int) -> str:
    return f"{op}: keep_pos values must be in [0, {seq})"


def msg_strictly_increasing(op: str) -> str:
    return f"{op}: keep_pos rows must be strictly increasing for in-place compaction"


def device_assert(cond: Tensor, message: str) -> None:
    """Checks a bool tensor on its device without a host sync. CUDA copies the message into its
    assert kernel's parameters and rejects one of 255 bytes or more at every call."""
    assert len(message.encode()) < 255, f"device-assert message too long: {message}"
    torch._assert_async(cond, message)


def host_rows(op: str, mask: Tensor, num_visual: int | None, k: int) -> None:
    """Padded rows: each holds ``num_visual`` visual tokens (``None``: as many as row 0, and at
    least ``k``)."""
    counts = mask.sum(1).tolist()
    if not counts:
        return
    for b, c in enumerate(counts):
        if num_visual is None:
            check(c == counts[0], f"{msg_equal_rows(op)}, row {b} holds {c}, row 0 holds {counts[0]}", ValueError)
        else:
            check(c == num_visual, f"{msg_rows_hold(op, num_visual)}, row {b} holds {c}", ValueError)
    if num_visual is None:
        check(k <= counts[0], f"{msg_k_above_visual(op, k)} and V={counts[0]}", ValueError)


def host_varlen(op: str, cu_seqlens: Tensor, mask: Tensor, num_visual: Sequence[int]) -> None:
    bounds, tokens = cu_seqlens.tolist(), mask.shape[0]
    base = msg_varlen(op, tokens)
    check(bounds[0] == 0, f"{base}: cu_seqlens[0] is {bounds[0]}", ValueError)
    for b in range(len(bounds) - 1):
        check(bounds[b + 1] >= bounds[b], f"{base}: cu_seqlens[{b + 1}]={bounds[b + 1]} < cu_seqlens[{b}]={bounds[b]}", ValueError)
    check(bounds[-1] == tokens, f"{base}: cu_seqlens[-1] is {bounds[-1]}", ValueError)
    for b, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        count = int(mask[start:end].sum())
        check(count == num_visual[b], f"{base}: sequence {b} holds {count}, num_visual[{b}]={num_visual[b]}", ValueError)


def host_keep_pos(op: str, keep_pos: Tensor, seq: int, strictly_increasing: bool) -> None:
    rows = (keep_pos[None] if keep_pos.dim() == 1 else keep_pos).tolist()
    for b, row in enumerate(rows):
        for j, p in enumerate(row):
            check(0 <= p < seq, f"{msg_keep_range(op, seq)}, got {p} at [{b}, {j}]", ValueError)
            if strictly_increasing and j:
                check(p > row[j - 1], f"{msg_strictly_increasing(op)}, row {b} has {row[j - 1]} then {p}", ValueError)
