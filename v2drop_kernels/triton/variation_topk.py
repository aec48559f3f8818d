"""Triton ``v2drop_triton::variation_topk``: the contract of ``v2drop::variation_topk``.

Launches: scores (1) + selection (1, one program per row), plus the mask-count checks. Traffic:
reads 2·B·V·D·e bytes of hidden/prev, writes B·S·4 + B·k·8.
"""

from torch import Tensor
from torch.library import triton_op

from .. import checks, fake
from .launching import check_device
from .score_select import launch_scores, launch_select

OP = "v2drop.variation_topk"


@triton_op("v2drop_triton::variation_topk", mutates_args=())
def variation_topk(hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    keep_idx, scores = fake.variation_topk(hidden, prev, vis_mask, k)
    check_device(OP, "hidden", hidden)
    if hidden.shape[0]:
        counts = vis_mask.sum(1)
        checks.device_assert((counts == counts[0]).all(), checks.msg_equal_rows(OP))
        checks.device_assert(counts[0] >= k, checks.msg_k_above_visual(OP, k))
        launch_scores(hidden, prev, vis_mask, scores)
        launch_select(scores, vis_mask, k=k, keep_idx=keep_idx)
    return keep_idx, scores
