"""Triton ``v2drop_triton::select_drop``: the contract of ``v2drop::select_drop``.

Launches: selection + compaction of positions/ids/mask (1, one program per row), plus the
mask-count check. Traffic: reads B·S·(4 + 1) bytes of scores and mask (the selection's passes run
from L2), writes O(B·S').
"""

from torch import Tensor
from torch.library import triton_op

from .. import checks, fake
from .launching import check_device
from .score_select import launch_select

OP = "v2drop.select_drop"


@triton_op("v2drop_triton::select_drop", mutates_args=())
def select_drop(scores: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    pos_out, keep_pos, mask_out = fake.select_drop(scores, vis_mask, position_ids, num_visual, k)
    check_device(OP, "scores", scores)
    if scores.shape[0]:
        checks.device_assert((vis_mask.sum(1) == num_visual).all(), checks.msg_rows_hold(OP, num_visual))
        launch_select(scores, vis_mask, k=k, position_ids=fake.position_planes(position_ids, False), keep_pos=keep_pos,
                      position_ids_out=fake.position_planes(pos_out, False), vis_mask_out=mask_out)
    return pos_out, keep_pos, mask_out
