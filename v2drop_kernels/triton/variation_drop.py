"""Triton ``v2drop_triton::variation_drop``: the contract of ``v2drop::variation_drop``.

Launches: scores (1), selection + compaction of positions/ids/mask (1, one program per row),
gather of the hidden rows (1), plus the mask-count check. Traffic: reads 2·B·V·D·e bytes for the
scores, reads and writes B·S'·D·e for the compaction.
"""

from torch import Tensor
from torch.library import triton_op

from .. import checks, fake
from .gather import launch_gather
from .launching import check_device
from .score_select import launch_scores, launch_select

OP = "v2drop.variation_drop"


@triton_op("v2drop_triton::variation_drop", mutates_args=())
def variation_drop(
    hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    hidden_out, pos_out, keep_pos, mask_out, scores = fake.variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k)
    check_device(OP, "hidden", hidden)
    if hidden.shape[0]:
        checks.device_assert((vis_mask.sum(1) == num_visual).all(), checks.msg_rows_hold(OP, num_visual))
        launch_scores(hidden, prev, vis_mask, scores)
        launch_select(scores, vis_mask, k=k, position_ids=fake.position_planes(position_ids, False), keep_pos=keep_pos,
                      position_ids_out=fake.position_planes(pos_out, False), vis_mask_out=mask_out)
        launch_gather(hidden.unsqueeze(2), keep_pos, hidden_out.unsqueeze(2))
    return hidden_out, pos_out, keep_pos, mask_out, scores
