"""Triton ``v2drop_triton::variation_drop_varlen``: the contract of ``v2drop::variation_drop_varlen``.

Packed [T, D] with cu_seqlens. Launches: scores (1), selection + compaction of positions/ids/mask
(1, one program per sequence), gather of the hidden rows (1), plus the cu_seqlens/mask checks and
the small host-to-device copies of the per-sequence k and output offsets. Traffic as the padded
op: 2·ΣV·D·e bytes read for the scores, T'·D·e read and written for the compaction.
"""

from typing import Sequence

import torch
from torch import Tensor
from torch.library import triton_op

from . import _checks as C
from .gather import launch_gather
from .variation import launch_scores, launch_select

OP = "v2drop_triton.variation_drop_varlen"


def check_segments(cu_seqlens: Tensor, vis_mask: Tensor, num_visual: Sequence[int]) -> None:
    """cu_seqlens starts at 0, never decreases, ends at T, and sequence b holds num_visual[b]
    visual tokens (checked on the device)."""
    tokens = vis_mask.shape[0]
    C.device_assert(cu_seqlens[0] == 0, f"{OP}: cu_seqlens[0] must be 0")
    C.device_assert(cu_seqlens[-1] == tokens, f"{OP}: cu_seqlens[-1] must equal T={tokens} (hidden.shape[0])")
    C.device_assert((cu_seqlens[1:] >= cu_seqlens[:-1]).all(), f"{OP}: cu_seqlens must be non-decreasing")
    running = torch.nn.functional.pad(vis_mask.cumsum(0), (1, 0))
    bounds = cu_seqlens.long().clamp(0, tokens)
    counts = running[bounds[1:]] - running[bounds[:-1]]
    expected = torch.tensor(list(num_visual), dtype=counts.dtype, device=counts.device)
    C.device_assert((counts == expected).all(), f"{OP}: sequence b must hold num_visual[b] visual tokens, as vis_mask marks")


@triton_op("v2drop_triton::variation_drop_varlen", mutates_args=())
def variation_drop_varlen(
    hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, cu_seqlens: Tensor,
    num_visual: Sequence[int], k: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    C.hidden_pair(OP, hidden, prev, 2)
    C.vis_mask(OP, vis_mask, hidden)
    C.position_ids(OP, position_ids, hidden)
    C.varlen_args(OP, cu_seqlens, hidden, num_visual, k)
    check_segments(cu_seqlens, vis_mask, num_visual)

    tokens, dim = hidden.shape
    tokens_out = tokens - sum(num_visual) + sum(k)
    shift = [0]
    for v, kb in zip(num_visual, k):
        shift.append(shift[-1] + kb - v)
    device = hidden.device
    cu_out = cu_seqlens + torch.tensor(shift, dtype=torch.int32, device=device)
    k_per_seq = torch.tensor(list(k), dtype=torch.int64, device=device)

    pos3 = (position_ids if position_ids.dim() == 2 else position_ids.unsqueeze(0)).unsqueeze(1)  # [P, 1, T]
    hidden_out = hidden.new_empty((tokens_out, dim))
    pos_out = position_ids.new_empty((pos3.shape[0], 1, tokens_out))
    keep_pos = hidden.new_empty((1, tokens_out), dtype=torch.long)
    mask_out = vis_mask.new_empty((1, tokens_out))
    mask2 = vis_mask.unsqueeze(0)
    scores = launch_scores(hidden.unsqueeze(0), prev.unsqueeze(0), mask2)
    launch_select(scores, mask2, cu_seqlens=cu_seqlens, k_per_seq=k_per_seq, cu_out=cu_out, position_ids=pos3,
                  keep_pos=keep_pos, position_ids_out=pos_out, vis_mask_out=mask_out)
    launch_gather(hidden[None, :, None, :], keep_pos, hidden_out[None, :, None, :])
    pos_flat = pos_out[:, 0]
    return hidden_out, pos_flat if position_ids.dim() == 2 else pos_flat[0], keep_pos[0], mask_out[0], cu_out, scores[0]
