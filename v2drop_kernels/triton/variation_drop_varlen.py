"""Triton ``v2drop_triton::variation_drop_varlen``: the contract of ``v2drop::variation_drop_varlen``.

Packed [T, D] with cu_seqlens. Launches: scores (1), selection + compaction of positions/ids/mask
(1, one program per sequence), gather of the hidden rows (1), plus the cu_seqlens/mask check and
the small host-to-device copies of the per-sequence k and output offsets. Traffic as the padded
op: 2·ΣV·D·e bytes read for the scores, T'·D·e read and written for the compaction.
"""

from typing import Sequence

from torch import Tensor
from torch.library import triton_op

from .. import fake
from .gather import launch_gather
from .launching import check_device
from .score_select import launch_scores, launch_select, packed_segments

OP = "v2drop.variation_drop_varlen"


@triton_op("v2drop_triton::variation_drop_varlen", mutates_args=())
def variation_drop_varlen(
    hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, cu_seqlens: Tensor,
    num_visual: Sequence[int], k: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    outs = fake.variation_drop_varlen(hidden, prev, vis_mask, position_ids, cu_seqlens, num_visual, k)
    hidden_out, pos_out, keep_pos, mask_out, cu_out, scores = outs
    check_device(OP, "hidden", hidden)
    k_per_seq = packed_segments(OP, cu_seqlens, vis_mask, num_visual, k, cu_out)
    mask2 = fake.token_rows(vis_mask, True)
    launch_scores(fake.token_rows(hidden, True), fake.token_rows(prev, True), mask2, fake.token_rows(scores, True))
    launch_select(fake.token_rows(scores, True), mask2, cu_seqlens=cu_seqlens, k_per_seq=k_per_seq, cu_out=cu_out,
                  position_ids=fake.position_planes(position_ids, True), keep_pos=fake.token_rows(keep_pos, True),
                  position_ids_out=fake.position_planes(pos_out, True), vis_mask_out=fake.token_rows(mask_out, True))
    launch_gather(hidden[None, :, None, :], keep_pos[None], hidden_out[None, :, None, :])
    return outs
