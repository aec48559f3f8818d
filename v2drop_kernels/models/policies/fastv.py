"""FastV: after layer ``K``, keep the visual tokens the last token attends to most, once.

Layer ``K − 1``'s attention of the last token (one query, head mean, computed from that layer's
q/k by whoever runs the layers, as ``needs`` asks, not read out of the attention kernel) ranks the
visual tokens; before layer ``K`` a fraction ``1 − R`` of them is kept. Published setting: ``K = 2``, ``R = 50%``.
"""

from __future__ import annotations

from torch import Tensor

from ..dropping import Drop, select
from ..pruning import PruningContext
from ..tokens import Tokens
from .base import Needs, Policy, Rule, kept_counts, parse_keep


class FastV(Policy):
    name = "fastv"

    def __init__(self, k: int = 2, r: float = 0.5, keep: Rule | str | None = None):
        if not 0.0 <= r < 1.0:
            raise ValueError(f"fastv: the dropped ratio R must lie in [0, 1), got {r}")
        self.layers = (int(k),)
        self.rule = parse_keep((keep,), 1)[0] if keep is not None else 1.0 - float(r)

    def needs(self, layer: int) -> Needs:
        return Needs(attention_of=layer - 1) if layer == self.layers[0] else Needs()

    def before_layer(self, layer: int, tokens: Tokens, ctx: PruningContext, *, prev: Tensor | None = None,
                     scores: Tensor | None = None) -> Drop | None:
        if layer != self.layers[0] or not any(tokens.num_visual):
            return None
        ctx.record_drop(layer, scores, tokens.orig_pos)
        return Drop(select(tokens, scores, kept_counts(self.rule, tokens), ctx.backend))

    @property
    def keep_rules(self) -> tuple[Rule, ...]:
        return (self.rule,)

    def describe(self) -> str:
        return f"fastv(K={self.layers[0]}, keep={self.rule})"
