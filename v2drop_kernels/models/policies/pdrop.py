"""PyramidDrop: at each stage boundary keep the visual tokens the last instruction token attends to most.

At boundary layer ``l`` the layer's own input norm, q/k projections and RoPE give the last token's
attention to every token (one query, head mean); the top ``λ`` of the visual tokens survive. The
layer has already computed K/V for every token, so they are compacted (one
:func:`v2drop_kernels.kv_compact` call moves hidden states, q, k and v) instead of recomputed.
Published LLaVA-1.5 schedule: boundaries 8, 16, 24 with λ = 0.5 (576 → 288 → 144 → 72).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from ..dropping import Drop, select
from ..pruning import PruningContext
from ..tokens import Tokens
from .base import Keep, Needs, Policy, Rule, kept_counts, last_query_scores, parse_keep, parse_layers


class PyramidDrop(Policy):
    name = "pdrop"

    def __init__(self, layers: Sequence[int] = (8, 16, 24), keep: Keep | None = None, ratio: float = 0.5):
        self.layers = parse_layers("pdrop", layers)
        self.keep = parse_keep(keep if keep is not None else (float(ratio),) * len(self.layers), len(self.layers))

    def needs(self, layer: int) -> Needs:
        return Needs(inside_attention=layer in self.layers)

    def inside_attention(self, layer: int, tokens: Tokens, q: Tensor, k: Tensor, ctx: PruningContext) -> Drop | None:
        if layer not in self.layers or not any(tokens.num_visual):
            return None
        rule = self.keep[self.layers.index(layer)]
        scores = last_query_scores(tokens, q, k, ctx)
        ctx.record_drop(layer, scores, tokens.orig_pos)
        return Drop(select(tokens, scores, kept_counts(rule, tokens), ctx.backend))

    @property
    def keep_rules(self) -> tuple[Rule, ...]:
        return self.keep

    def describe(self) -> str:
        return f"pdrop(layers={list(self.layers)}, keep={list(self.keep)})"
