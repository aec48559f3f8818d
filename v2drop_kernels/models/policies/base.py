"""What a pruning policy is, and the helpers every policy shares.

A policy holds only its schedule and answers, per prefill layer ``i`` (see
:mod:`v2drop_kernels.models.decoder`):

- ``needs(i) -> Needs``: what its hooks at layer ``i`` are to be handed, asked for declaratively:
  the input of an earlier layer (V²Drop scores before layer ``i`` against layer ``i − 1``'s input),
  the last token's attention at an earlier layer (FastV ranks before layer ``K`` by layer ``K − 1``'s),
  whether ``inside_attention`` runs at ``i`` (PyramidDrop). Whoever runs the layers (the package's
  decoder, the vLLM integration) keeps or computes those and hands them over;
- ``before_layer(i, tokens, ctx, prev=, scores=) -> Drop | None``: a drop before layer ``i`` runs;
- ``inside_attention(i, tokens, q, k, ctx) -> Drop | None``: a drop inside layer ``i`` after its
  queries/keys are computed (RoPE applied), so their K/V are reused through KV compaction.

A hook returns a decision (:class:`~v2drop_kernels.models.dropping.Drop`: the survivors, and their
hidden states when the policy's own op already moved them) or ``None``; the caller applies it
(:func:`~v2drop_kernels.models.dropping.apply_drop`). Nothing is parked in shared records.

What a schedule does to a row's visual-token count needs no hook: ``keep_rules`` holds one rule per
layer of ``layers`` (:data:`Keep`: a count, a ratio of what is left, or :class:`OfPrompt`, a ratio of
the prompt's visual tokens) and :func:`visual_per_stage` applies them in turn.

``ctx`` is the prefill's :class:`~v2drop_kernels.models.pruning.PruningContext`: the ops backend to
prune with, and the trace each drop is recorded in. One policy object can serve any number of
prefills.

Adding a policy is one file in this folder plus one line in ``POLICIES`` (``__init__.py``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import torch
from torch import Tensor

from ..attention import last_query_attention
from ..dropping import Drop
from ..pruning import PruningContext
from ..tokens import Tokens, packed_coordinates


@dataclass(frozen=True)
class OfPrompt:
    """A kept-count rule: ``ratio`` of the row's visual tokens *in the prompt* (where a float rule is
    a ratio of what is left), at least one. Written ``"25%"`` in a keep list (:func:`parse_keep`),
    so that a flag or a JSON config can give it too. Kept as an exact fraction (``0.29`` is 29/100,
    not the float just below it), so that ``"29%"`` of 100 tokens is 29."""

    ratio: Fraction

    def __post_init__(self):
        exact = Fraction(str(self.ratio)) if isinstance(self.ratio, float) else Fraction(self.ratio)
        object.__setattr__(self, "ratio", exact)

    def __repr__(self) -> str:
        return f"{float(self.ratio) * 100:g}%"


Rule = int | float | OfPrompt
Keep = Sequence[Rule | str]


@dataclass(frozen=True)
class Needs:
    """What a policy's hooks at one layer are handed."""

    input_of: int | None = None  # before_layer gets ``prev``: the input of this earlier layer
    attention_of: int | None = None  # before_layer gets ``scores``: the last token's attention at this earlier layer
    inside_attention: bool = False  # inside_attention runs at this layer, with its q and k


class Policy:
    """No pruning (and the defaults of every hook)."""

    name = "none"
    layers: tuple[int, ...] = ()

    def check(self, num_layers: int, attention_layers: Sequence[int] | None = None) -> None:
        """Raises ValueError when the schedule does not fit a ``num_layers``-layer decoder whose
        softmax-attention layers are ``attention_layers`` (None: all of them; a hybrid decoder's
        linear-attention layers have no attention scores to rank tokens by)."""
        for layer in self.layers:
            if not 1 <= layer < num_layers:
                raise ValueError(f"{self.name}: layer {layer} is outside 1..{num_layers - 1} of this decoder")
        if attention_layers is None:
            return
        for layer in self.layers:
            need = self.needs(layer)
            scored = [i for i in (need.attention_of, layer if need.inside_attention else None) if i is not None]
            for i in scored:
                if i not in attention_layers:
                    raise ValueError(f"{self.name}: the drop at layer {layer} ranks by layer {i}'s attention, but layer "
                                     f"{i} is a linear-attention layer (no attention scores); this decoder's attention "
                                     f"layers are {list(attention_layers)}")

    def needs(self, layer: int) -> Needs:
        return Needs()

    def before_layer(self, layer: int, tokens: Tokens, ctx: PruningContext, *, prev: Tensor | None = None,
                     scores: Tensor | None = None) -> Drop | None:
        return None

    def inside_attention(self, layer: int, tokens: Tokens, q: Tensor, k: Tensor, ctx: PruningContext) -> Drop | None:
        return None

    def needs_qk(self, layer: int) -> bool:
        """Whether layer ``layer``'s queries and keys are read: by ``inside_attention`` there, or for
        a later layer's ``scores`` (a caller that must compute them separately, such as the vLLM
        integration, computes them only there)."""
        return self.needs(layer).inside_attention or self.keeps_attention(layer)

    def keeps_input(self, layer: int) -> bool:
        """Whether layer ``layer``'s input is handed to a later layer's ``before_layer`` (``prev``)."""
        return any(self.needs(later).input_of == layer for later in self.layers)

    def keeps_attention(self, layer: int) -> bool:
        """Whether layer ``layer``'s last-token attention is handed to a later layer's ``before_layer``
        (``scores``)."""
        return any(self.needs(later).attention_of == layer for later in self.layers)

    @property
    def keep_rules(self) -> tuple[Rule, ...]:
        """The kept-count rule (:func:`kept_count`) of each layer of ``layers``, in order."""
        return ()

    def describe(self) -> str:
        return self.name


class Handover:
    """What ``policy`` asked for (:meth:`Policy.needs`) during one prefill, kept from the layer that
    makes it until the hook that takes it: the one piece that every loop over the layers (the
    package's decoder, the vLLM plugin's) calls the hooks through."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._kept: dict[tuple[str, int], Tensor] = {}

    def before_layer(self, layer: int, tokens: Tokens, ctx: PruningContext) -> Drop | None:
        """``policy.before_layer``, handed the earlier input and attention it asked for."""
        need = self.policy.needs(layer)
        return self.policy.before_layer(layer, tokens, ctx, prev=self._kept.pop(("input", need.input_of), None),
                                        scores=self._kept.pop(("scores", need.attention_of), None))

    def inside_attention(self, layer: int, tokens: Tokens, q: Tensor, k: Tensor, ctx: PruningContext) -> Drop | None:
        """With layer ``layer``'s queries and keys: keeps its last-token attention when a later hook
        asked for it, then ``policy.inside_attention`` where the policy runs it."""
        if self.policy.keeps_attention(layer):
            self._kept[("scores", layer)] = last_query_scores(tokens, q, k, ctx)
        return self.policy.inside_attention(layer, tokens, q, k, ctx) if self.policy.needs(layer).inside_attention else None

    def keep_input(self, layer: int, hidden: Tensor) -> None:
        """Layer ``layer``'s input (the tokens that reach its attention), when a later hook asked for
        it (:meth:`Policy.keeps_input`)."""
        self._kept[("input", layer)] = hidden


def parse_layers(name: str, layers: Sequence[int]) -> tuple[int, ...]:
    """Checks a pruning schedule's layers: strictly increasing."""
    layers = tuple(int(layer) for layer in layers)
    if list(layers) != sorted(set(layers)):
        raise ValueError(f"{name}: layers must be strictly increasing, got {layers}")
    return layers


def parse_keep(keep: Keep, stages: int) -> tuple[Rule, ...]:
    """Checks a keep schedule: per stage an int count (``>= 1``), a float ratio of what is left in
    ``[0, 1]``, or a ratio of the prompt's visual tokens (:class:`OfPrompt`, or a string such as
    ``"25%"``)."""
    keep = tuple(parse_rule(value) for value in keep)
    if len(keep) != stages:
        raise ValueError(f"keep has {len(keep)} entries for {stages} pruning layers")
    for value in keep:
        if isinstance(value, bool) or not isinstance(value, (int, float, OfPrompt)):
            raise ValueError(f"keep entries are int counts, float ratios or percentages of the prompt's visual "
                             f"tokens such as '25%', got {value!r}")
        if isinstance(value, int) and value < 1:
            raise ValueError(f"a kept count must be >= 1, got {value}")
        ratio = value.ratio if isinstance(value, OfPrompt) else value
        if isinstance(value, (float, OfPrompt)) and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"a kept ratio must lie in [0, 1], got {value!r}")
    return keep


def parse_rule(value):
    """``"25%"`` → ``OfPrompt(1/4)``; anything else unchanged (checked by :func:`parse_keep`)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return OfPrompt(Fraction(value.strip()[:-1]) / 100)
        except ValueError:
            pass
    return value


def kept_count(rule: Rule, visual: int, prompt: int | None = None) -> int:
    """Visual tokens a row keeps out of the ``visual`` it has left (``prompt``: those of its prompt,
    needed by an :class:`OfPrompt` rule): a count, a ratio of what is left or of the prompt, capped
    at what is left, with a floor of one token; a row without visual tokens keeps none."""
    if visual == 0:
        return 0
    if isinstance(rule, OfPrompt):
        if prompt is None:
            raise ValueError(f"the rule {rule!r} of the prompt's visual tokens needs the prompt's count")
        return min(visual, max(1, math.floor(rule.ratio * prompt)))
    if isinstance(rule, float):
        return max(1, math.floor(rule * visual))
    return min(rule, visual)


def kept_counts(rule: Rule, tokens: Tokens) -> list[int]:
    """:func:`kept_count` of every row of ``tokens``."""
    return [kept_count(rule, v, p) for v, p in zip(tokens.num_visual, tokens.prompt_visual)]


def visual_per_stage(policy: Policy, visual: int) -> list[int]:
    """The visual tokens a row of ``visual`` keeps after each layer of ``policy.layers`` (one entry
    per layer): each rule of ``policy.keep_rules`` applied to what the previous one left."""
    out, prompt = [], visual
    for rule in policy.keep_rules:
        visual = kept_count(rule, visual, prompt)
        out.append(visual)
    return out


def last_query_scores(tokens: Tokens, q: Tensor, k: Tensor, ctx: PruningContext) -> Tensor:
    """Attention of each row's last token (the last instruction token) to every token, head mean.

    ``q, k`` as the decoder computes them (RoPE applied): padded ``[B, H, S, Dh]`` /
    ``[B, Hkv, S, Dh]``, packed ``[T, H, Dh]`` / ``[T, Hkv, Dh]``. Returns float32 ``[B, S]`` / ``[T]``.
    When the heads are split across tensor-parallel ranks, ``ctx`` averages over all of them
    (:meth:`~v2drop_kernels.models.pruning.PruningContext.mean_over_ranks`).
    """
    return ctx.mean_over_ranks(_last_query_scores(tokens, q, k))


# float32 elements of the (token, row) logits one packed scoring call may hold (128 MiB): rows are
# scored in groups past it
_SCORE_BUDGET = 1 << 25


def _last_query_scores(tokens: Tokens, q: Tensor, k: Tensor) -> Tensor:
    if not tokens.packed:
        return last_query_attention(q[:, :, -1:], k, tokens.valid)
    # packed: the rows in as few groups as the budget allows (one, but for huge batches); no padded copy
    heads, out, start, group = q.shape[1], [], 0, []
    for n in tokens.lengths:
        if group and (sum(group) + n) * heads * (len(group) + 1) > _SCORE_BUDGET:
            out.append(_own_row_scores(q[start:start + sum(group)], k[start:start + sum(group)], group))
            start, group = start + sum(group), []
        group.append(n)
    out.append(_own_row_scores(q[start:], k[start:], group))
    return torch.cat(out) if len(out) > 1 else out[0]


def _own_row_scores(q: Tensor, k: Tensor, lengths: list[int]) -> Tensor:
    """:func:`~v2drop_kernels.models.attention.last_query_attention` of packed rows of ``lengths``
    tokens (``q [T, H, Dh]``, ``k [T, Hkv, Dh]``), each row's last query over its own keys: every
    key against every row's last query (``[T, H, B]`` float32 logits, the query heads in their key
    groups: K read once, never repeated), each token's own row's logit kept, a softmax per row."""
    t, h, dh = q.shape
    b, hkv = len(lengths), k.shape[1]
    rows, _ = packed_coordinates(lengths, q.device)
    last = torch.tensor(list(itertools.accumulate(lengths)), device=q.device) - 1
    q_last = q.index_select(0, last).float().view(b, hkv, h // hkv, dh)
    logits = torch.einsum("tkd,bkgd->tkbg", k.float(), q_last)  # [T, Hkv, B, H / Hkv]
    own = logits.gather(2, rows.view(t, 1, 1, 1).expand(t, hkv, 1, h // hkv)).reshape(t, h) * dh ** -0.5
    by_row = rows[:, None].expand(t, h)
    top = own.new_full((b, h), float("-inf")).scatter_reduce(0, by_row, own, "amax")
    exp = (own - top[rows]).exp()
    return (exp / own.new_zeros(b, h).index_add_(0, rows, exp)[rows]).mean(dim=1)
