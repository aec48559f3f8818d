"""The pruning context of one prefill: which ops backend prunes, and what pruning did.

The decoder owns one :class:`PruningContext` per prefill and hands it to every policy hook. Policies
prune through ``ctx.backend`` and report each drop with :meth:`PruningContext.record_drop` (what a
hook needs from earlier layers, the decoder hands it: see :mod:`.policies.base`). The
caller reads ``ctx.trace`` afterwards: :meth:`Llava.generate <v2drop_kernels.models.llava.Llava.generate>`
returns it, the transformers integration keeps it on its handle, ``bench/e2e.py`` reads the time
spent pruning from it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor


@dataclass
class PrefillTrace:
    """What pruning did during one prefill."""

    visual_per_layer: list[list[int]] = field(default_factory=list)  # visual tokens per row each layer attended to
    tokens_per_layer: list[int] = field(default_factory=list)  # sequence length (padded) / total tokens (packed)
    scores: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # layer -> (scores, orig_pos) of its drop
    pruning_ms: float | None = None  # wall time in the policy's hooks (synchronised), when timed


class PruningContext:
    """``backend``: the ops backend that prunes (``None``: the fastest for the device).
    ``time_pruning``: measure the time spent in the policy's hooks (synchronising the device around
    each hook, so only for measurement runs). ``all_ranks_mean``: where the attention heads are split
    across tensor-parallel ranks (the vLLM integration), the function that turns one rank's head
    mean into the mean over every rank's heads (an all-reduce); ``None``: this process has them all."""

    def __init__(self, backend: str | None = None, *, time_pruning: bool = False,
                 all_ranks_mean: Callable[[Tensor], Tensor] | None = None):
        self.backend = backend
        self.trace = PrefillTrace(pruning_ms=0.0 if time_pruning else None)
        self._timed = time_pruning
        self._all_ranks_mean = all_ranks_mean

    def mean_over_ranks(self, head_mean: Tensor) -> Tensor:
        """A score averaged over this rank's attention heads, averaged over every rank's (every rank
        holds as many heads, so this is the mean over all heads, the same bits on every rank)."""
        return head_mean if self._all_ranks_mean is None else self._all_ranks_mean(head_mean)

    def record_drop(self, layer: int, scores: Tensor, orig_pos: Tensor) -> None:
        """The scores that ranked the tokens dropped before (or inside) ``layer``, and the prompt index
        of each scored token."""
        self.trace.scores[layer] = (scores, orig_pos)

    def record_layer(self, num_visual: list[int], tokens: int) -> None:
        """What one layer's attention and KV cache see."""
        self.trace.visual_per_layer.append(list(num_visual))
        self.trace.tokens_per_layer.append(tokens)

    @contextmanager
    def hook(self, device: torch.device):
        """Around a policy hook: adds its time to ``trace.pruning_ms`` when timing."""
        if not self._timed:
            yield
            return
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.trace.pruning_ms += (time.perf_counter() - start) * 1e3
