"""Triton ``v2drop_triton::select_drop_varlen``: the contract of ``v2drop::select_drop_varlen``.

Packed [T] with cu_seqlens. Launches: selection + compaction of positions/ids/mask (1, one program
per sequence), plus the cu_seqlens/mask check and the small host-to-device copies of the
per-sequence k and output offsets. Traffic: reads T·(4 + 1) bytes of scores and mask, writes O(T').
"""

from typing import Sequence

from torch import Tensor
from torch.library import triton_op

from .. import fake
from .launching import check_device
from .score_select import launch_select, packed_segments

OP = "v2drop.select_drop_varlen"


@triton_op("v2drop_triton::select_drop_varlen", mutates_args=())
def select_drop_varlen(
    scores: Tensor, vis_mask: Tensor, position_ids: Tensor, cu_seqlens: Tensor, num_visual: Sequence[int], k: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    outs = fake.select_drop_varlen(scores, vis_mask, position_ids, cu_seqlens, num_visual, k)
    pos_out, keep_pos, mask_out, cu_out = outs
    check_device(OP, "scores", scores)
    k_per_seq = packed_segments(OP, cu_seqlens, vis_mask, num_visual, k, cu_out)
    launch_select(fake.token_rows(scores, True), fake.token_rows(vis_mask, True), cu_seqlens=cu_seqlens, k_per_seq=k_per_seq,
                  cu_out=cu_out, position_ids=fake.position_planes(position_ids, True), keep_pos=fake.token_rows(keep_pos, True),
                  position_ids_out=fake.position_planes(pos_out, True), vis_mask_out=fake.token_rows(mask_out, True))
    return outs
