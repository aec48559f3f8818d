"""Triton ``v2drop_triton::variation_topk``: the contract of ``v2drop::variation_topk``.

Launches: scores (1) + selection (1, one program per row), plus the mask-count checks. Traffic:
reads 2·B·V·D·e bytes of hidden/prev, writes B·S·4 + B·k·8.
"""

import torch
from torch import Tensor
from torch.library import triton_op

from . import _checks as C
from .variation import launch_scores, launch_select

OP = "v2drop_triton.variation_topk"


def check_equal_rows(op: str, vis_mask: Tensor, k: int) -> None:
    """Every row holds the same number V >= k of visual tokens (checked on the device)."""
    if vis_mask.shape[0] == 0:
        return
    counts = vis_mask.sum(1)
    C.device_assert((counts == counts[0]).all(), f"{op}: every row of vis_mask must hold the same number of visual tokens")
    C.device_assert(counts[0] >= k, f"{op}: k must be in [1, V] (visual tokens per row in vis_mask), got {k}")


@triton_op("v2drop_triton::variation_topk", mutates_args=())
def variation_topk(hidden: Tensor, prev: Tensor, vis_mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    C.hidden_pair(OP, hidden, prev, 3)
    C.vis_mask(OP, vis_mask, hidden)
    C.check(k >= 1, f"{OP}: k must be >= 1, got {k}", ValueError)
    check_equal_rows(OP, vis_mask, k)
    scores = launch_scores(hidden, prev, vis_mask)
    keep_idx = hidden.new_empty((hidden.shape[0], k), dtype=torch.long)
    if hidden.shape[0]:
        launch_select(scores, vis_mask, k=k, keep_idx=keep_idx)
    return keep_idx, scores
