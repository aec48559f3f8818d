"""Triton kernels shared by the variation and select ops: scores and exact selection.

``_scores_kernel`` — scores[t] = ‖hidden[t] − prev[t]‖₂ (float32 accumulation, correctly rounded
sqrt) for visual tokens, 0 elsewhere. Grid: (cdiv(R·S, BLOCK_T),), BLOCK_T tokens × BLOCK_D columns
per step. Traffic: reads 2·V·D·e bytes (visual rows only), writes R·S·4.

``_select_kernel`` — one program per segment (a padded row, or one packed sequence). Exact top-k
without a sort: each visual token gets a 32-bit rank key of its score (NaN lowest, −0 == +0), a
bitwise search of 32 counting passes finds the k-th largest key T, and one ordered pass keeps
every key > T plus the first (k − #keys > T) tokens with key == T (lower position first), using
prefix sums for output slots. It writes keep_idx (topk) or keep_pos, position_ids_out and
vis_mask_out (drop). Traffic: 34 passes over the segment's scores and mask (5 bytes a token, L2
resident), plus the outputs. Works for any length (no power-of-two limit, no tl.sort).
"""

from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from .. import checks

from .launching import launchable, scores_config, select_config


@triton.jit
def _scores_kernel(
    h_ptr, p_ptr, m_ptr, out_ptr, n_tokens, S, D,
    h_sr, h_ss, p_sr, p_ss, m_sr, m_ss,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = t < n_tokens
    r = t // S
    s = t % S
    vis = tl.load(m_ptr + r * m_sr + s * m_ss, mask=valid, other=0) != 0
    h_row = h_ptr + (r * h_sr + s * h_ss)[:, None]
    p_row = p_ptr + (r * p_sr + s * p_ss)[:, None]
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)[None, :]
        m = vis[:, None] & (d < D)
        diff = tl.load(h_row + d, mask=m, other=0.0).to(tl.float32) - tl.load(p_row + d, mask=m, other=0.0).to(tl.float32)
        acc += diff * diff
    score = tl.sqrt_rn(tl.sum(acc, axis=1))
    tl.store(out_ptr + t, tl.where(vis, score, 0.0), mask=valid)


@triton.jit
def _rank_keys(scores_ptr, m_ptr, m_ss, idx, inb):
    """Rank key in [0, 2^32) of each visual token (larger ranks higher; NaN 0), -1 otherwise."""
    vis = inb & (tl.load(m_ptr + idx * m_ss, mask=inb, other=0) != 0)
    score = tl.load(scores_ptr + idx, mask=vis, other=0.0)
    score = tl.where(score == 0.0, 0.0, score)  # -0 ranks as +0
    bits = score.to(tl.int32, bitcast=True)
    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) + 2147483648  # float order as integers
    key = tl.where(score != score, 0, key)
    return tl.where(vis, key, -1)


@triton.jit
def _select_kernel(
    scores_ptr, scores_sr, m_ptr, m_sr, m_ss,
    seq_len, k_value, cu_ptr, k_ptr, cu_out_ptr,
    pos_ptr, pos_sq, pos_sr, pos_ss,
    keep_idx_ptr, keep_idx_sr,
    keep_pos_ptr, pos_out_ptr, mask_out_ptr, out_sr, out_plane,
    PACKED: tl.constexpr, DROP: tl.constexpr, NPOS: tl.constexpr, BLOCK: tl.constexpr,
):
    seg = tl.program_id(0).to(tl.int64)
    if PACKED:  # sequence seg of the single packed row
        row = 0
        begin = tl.load(cu_ptr + seg).to(tl.int64)
        length = tl.load(cu_ptr + seg + 1).to(tl.int64) - begin
        k = tl.load(k_ptr + seg)
        out_begin = tl.load(cu_out_ptr + seg).to(tl.int64)
    else:  # padded row seg, all of it
        row = seg
        begin = 0
        length = seq_len
        k = k_value
        out_begin = 0
    sc = scores_ptr + row * scores_sr
    mk = m_ptr + row * m_sr

    # The k-th largest key, bit by bit from the top: the largest T with #(key >= T) >= k.
    thr = tl.full([], 0, tl.int64)
    for i in range(32):
        cand = thr | (tl.full([], 1, tl.int64) << (31 - i))
        count = tl.full([], 0, tl.int64)
        for start in range(0, length, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            key = _rank_keys(sc, mk, m_ss, begin + offs, offs < length)
            count += tl.sum((key >= cand).to(tl.int64), axis=0)
        thr = tl.where(count >= k, cand, thr)
    greater = tl.full([], 0, tl.int64)
    for start in range(0, length, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        key = _rank_keys(sc, mk, m_ss, begin + offs, offs < length)
        greater += tl.sum((key > thr).to(tl.int64), axis=0)
    ties_kept = k - greater  # tokens with key == thr to keep, lowest positions first

    # One ordered pass: survivors get consecutive output slots.
    written = tl.full([], 0, tl.int64)
    ties_seen = tl.full([], 0, tl.int64)
    for start in range(0, length, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inb = offs < length
        idx = begin + offs
        key = _rank_keys(sc, mk, m_ss, idx, inb)
        tie = key == thr
        tie_rank = ties_seen + tl.cumsum(tie.to(tl.int64), axis=0) - 1
        kept_vis = (key > thr) | (tie & (tie_rank < ties_kept))
        if DROP:
            keep = kept_vis | (inb & (key == -1))
        else:
            keep = kept_vis
        slot = written + tl.cumsum(keep.to(tl.int64), axis=0) - 1
        if DROP:
            dst = row * out_sr + out_begin + slot
            tl.store(keep_pos_ptr + dst, idx, mask=keep)
            tl.store(mask_out_ptr + dst, key >= 0, mask=keep)
            for q in tl.static_range(NPOS):
                p = tl.load(pos_ptr + q * pos_sq + row * pos_sr + idx * pos_ss, mask=keep)
                tl.store(pos_out_ptr + q * out_plane + dst, p, mask=keep)
        else:
            tl.store(keep_idx_ptr + seg * keep_idx_sr + slot, idx, mask=keep)
        written += tl.sum(keep.to(tl.int64), axis=0)
        ties_seen += tl.sum(tie.to(tl.int64), axis=0)


def launch_scores(hidden: Tensor, prev: Tensor, vis_mask: Tensor, scores: Tensor) -> None:
    """Writes the float32 scores (contiguous [R, S]) of [R, S, D] hidden/prev and a [R, S] mask (one launch)."""
    rows, seq, dim = hidden.shape
    if rows * seq == 0:
        return
    block_t, block_d, warps = scores_config(dim)
    launchable(_scores_kernel)[(triton.cdiv(rows * seq, block_t),)](
        hidden, prev, vis_mask, scores, rows * seq, seq, dim,
        hidden.stride(0), hidden.stride(1), prev.stride(0), prev.stride(1), vis_mask.stride(0), vis_mask.stride(1),
        BLOCK_T=block_t, BLOCK_D=block_d, num_warps=warps,
    )


def launch_select(
    scores: Tensor, vis_mask: Tensor, *, k: int = 0, cu_seqlens: Tensor | None = None, k_per_seq: Tensor | None = None,
    cu_out: Tensor | None = None, keep_idx: Tensor | None = None, position_ids: Tensor | None = None,
    keep_pos: Tensor | None = None, position_ids_out: Tensor | None = None, vis_mask_out: Tensor | None = None,
) -> None:
    """Selection (one launch, one program per segment). Padded: segments are the rows of
    ``scores [R, S]`` with ``k`` each. Packed (``cu_seqlens`` given): one row, segments from
    ``cu_seqlens`` with ``k_per_seq`` and output offsets ``cu_out``. Writes ``keep_idx [R, k]``
    (topk), or ``keep_pos``, ``position_ids_out [P, R, S']`` and ``vis_mask_out`` (drop; position_ids
    as [P, R, S])."""
    packed = cu_seqlens is not None
    drop = keep_pos is not None
    segments = cu_seqlens.shape[0] - 1 if packed else scores.shape[0]
    if segments == 0:
        return
    dummy = scores  # stands for pointers a specialisation never reads
    block, warps = select_config()
    launchable(_select_kernel)[(segments,)](
        scores, scores.stride(0), vis_mask, vis_mask.stride(0), vis_mask.stride(1),
        scores.shape[1], k, cu_seqlens if packed else dummy, k_per_seq if packed else dummy, cu_out if packed else dummy,
        position_ids if drop else dummy,
        position_ids.stride(0) if drop else 0, position_ids.stride(1) if drop else 0, position_ids.stride(2) if drop else 0,
        keep_idx if not drop else dummy, keep_idx.stride(0) if not drop else 0,
        keep_pos if drop else dummy, position_ids_out if drop else dummy, vis_mask_out if drop else dummy,
        keep_pos.stride(0) if drop else 0, position_ids_out[0].numel() if drop else 0,
        PACKED=packed, DROP=drop, NPOS=position_ids.shape[0] if drop else 1, BLOCK=block, num_warps=warps,
    )


def packed_segments(op: str, cu_seqlens: Tensor, vis_mask: Tensor, num_visual: Sequence[int], k: Sequence[int],
                    cu_out: Tensor) -> Tensor:
    """The packed layout's segments: checks cu_seqlens and the visual counts on the device (one
    assert, the message of :func:`v2drop_kernels.checks.msg_varlen`), writes the result's
    cu_seqlens into ``cu_out`` and returns ``k`` per sequence as a device tensor."""
    tokens = vis_mask.shape[0]
    running = torch.nn.functional.pad(vis_mask.cumsum(0), (1, 0))
    bounds = cu_seqlens.long()
    counts = running[bounds[1:].clamp(0, tokens)] - running[bounds[:-1].clamp(0, tokens)]
    expected = host_to_device(list(num_visual), counts.dtype, cu_seqlens)
    ok = (bounds[0] == 0) & (bounds[-1] == tokens) & (bounds[1:] >= bounds[:-1]).all() & (counts == expected).all()
    checks.device_assert(ok, checks.msg_varlen(op, tokens))
    shift = [0]
    for v, kb in zip(num_visual, k):
        shift.append(shift[-1] + kb - v)
    cu_out.copy_(cu_seqlens + host_to_device(shift, torch.int32, cu_seqlens))
    return host_to_device(list(k), torch.int64, cu_seqlens)


def host_to_device(values: Sequence[int], dtype: torch.dtype, like: Tensor) -> Tensor:
    """Host integers as a tensor on ``like``'s device. On CUDA through pinned memory and an
    asynchronous copy: a plain ``torch.tensor(..., device="cuda")`` waits for the device (a sync)."""
    if like.device.type != "cuda" or torch.compiler.is_compiling() or is_fake(like):
        return torch.tensor(values, dtype=dtype, device=like.device)
    return torch.tensor(values, dtype=dtype).pin_memory().to(like.device, non_blocking=True)
