"""Triton ``v2drop_triton::variation_drop``: the contract of ``v2drop::variation_drop``.

Launches: scores (1), selection + compaction of positions/ids/mask (1, one program per row),
gather of the hidden rows (1), plus the mask-count check. Traffic: reads 2·B·V·D·e bytes for the
scores, reads and writes B·S'·D·e for the compaction.
"""

import torch
from torch import Tensor
from torch.library import triton_op

from . import _checks as C
from .gather import launch_gather
from .variation import launch_scores, launch_select

OP = "v2drop_triton.variation_drop"


@triton_op("v2drop_triton::variation_drop", mutates_args=())
def variation_drop(
    hidden: Tensor, prev: Tensor, vis_mask: Tensor, position_ids: Tensor, num_visual: int, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    C.hidden_pair(OP, hidden, prev, 3)
    C.vis_mask(OP, vis_mask, hidden)
    C.position_ids(OP, position_ids, hidden)
    batch, seq, dim = hidden.shape
    C.k_padded(OP, num_visual, k, seq)
    C.device_assert((vis_mask.sum(1) == num_visual).all(), f"{OP}: every row of vis_mask must hold num_visual={num_visual} visual tokens")

    seq_out = seq - num_visual + k
    pos3 = position_ids if position_ids.dim() == 3 else position_ids.unsqueeze(0)
    hidden_out = hidden.new_empty((batch, seq_out, dim))
    pos_out = position_ids.new_empty((pos3.shape[0], batch, seq_out))
    keep_pos = hidden.new_empty((batch, seq_out), dtype=torch.long)
    mask_out = vis_mask.new_empty((batch, seq_out))
    scores = launch_scores(hidden, prev, vis_mask)
    if batch:
        launch_select(scores, vis_mask, k=k, position_ids=pos3, keep_pos=keep_pos, position_ids_out=pos_out, vis_mask_out=mask_out)
        launch_gather(hidden.unsqueeze(2), keep_pos, hidden_out.unsqueeze(2))
    return hidden_out, pos_out if position_ids.dim() == 3 else pos_out[0], keep_pos, mask_out, scores
