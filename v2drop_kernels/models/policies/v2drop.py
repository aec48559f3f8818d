"""V²Drop: before layer ``l``, keep the visual tokens whose hidden state changed most in layer ``l − 1``.

Score ``‖x_l − x_{l−1}‖₂`` per visual token (``x_l`` is layer ``l``'s input, before any norm), keep
the top ``k`` in their original order with their original position ids, drop the rest from the
hidden states and so from every later layer's KV cache. One fused op call per drop
(:func:`v2drop_kernels.variation_drop`, or its varlen twin for packed batches).

Named schedules (:data:`SCHEDULES`); a ratio keeps that share of the visual tokens still left, a
percentage that share of the prompt's (:class:`~.base.OfPrompt`), each at least one
(``max(1, int(n × ratio))``):

- ``"llava-1.5"`` (the default): before layers 3, 17, 22 keep 50%, 50%, 0% of what is left;
- ``"qwen2-vl"`` (the official Qwen2-VL port, also for Qwen2.5-VL): before layers 3, 16, 22 keep
  25%, 5%, 0% of what is left;
- ``"llava-ov"`` (the paper's LLaVA-OneVision-7B video setting, for which no code was released):
  before layers 3, 16, 22 keep 25% and then 5% of the prompt's visual tokens, then one.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ... import ops
from ..dropping import Drop
from ..pruning import PruningContext
from ..tokens import Selection, Tokens
from .base import Keep, Needs, OfPrompt, Policy, Rule, kept_counts, parse_keep, parse_layers


SCHEDULES: dict[str, tuple[tuple[int, ...], tuple[Rule, ...]]] = {
    "llava-1.5": ((3, 17, 22), (0.5, 0.5, 0.0)),
    "qwen2-vl": ((3, 16, 22), (0.25, 0.05, 0.0)),
    "llava-ov": ((3, 16, 22), (OfPrompt(0.25), OfPrompt(0.05), 0.0)),
}


class V2Drop(Policy):
    """``layers`` and ``keep`` override those of the named ``schedule``."""

    name = "v2drop"

    def __init__(self, layers: Sequence[int] | None = None, keep: Keep | None = None, schedule: str = "llava-1.5"):
        if schedule not in SCHEDULES:
            raise ValueError(f"v2drop: unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
        default_layers, default_keep = SCHEDULES[schedule]
        self.layers = parse_layers("v2drop", default_layers if layers is None else layers)
        self.keep = parse_keep(default_keep if keep is None else keep, len(self.layers))

    def needs(self, layer: int) -> Needs:
        return Needs(input_of=layer - 1) if layer in self.layers else Needs()

    def before_layer(self, layer: int, tokens: Tokens, ctx: PruningContext, *, prev: Tensor | None = None,
                     scores: Tensor | None = None) -> Drop | None:
        if layer not in self.layers or not any(tokens.num_visual):
            return None
        rule = self.keep[self.layers.index(layer)]
        k = kept_counts(rule, tokens)
        if tokens.packed:
            out = ops.variation_drop_varlen(tokens.hidden, prev, tokens.vis_mask, tokens.position_ids,
                                            tokens.cu_seqlens, k, num_visual=tokens.num_visual, backend=ctx.backend)
        else:
            out = ops.variation_drop(tokens.hidden, prev, tokens.vis_mask, tokens.position_ids, k[0],
                                     num_visual=tokens.num_visual[0], backend=ctx.backend)
        ctx.record_drop(layer, out.scores, tokens.orig_pos)
        return Drop(Selection(out.keep_pos, k, out.cu_seqlens, out.position_ids, out.vis_mask), hidden=out.hidden)

    @property
    def keep_rules(self) -> tuple[Rule, ...]:
        return self.keep

    def describe(self) -> str:
        return f"v2drop(layers={list(self.layers)}, keep={list(self.keep)})"
