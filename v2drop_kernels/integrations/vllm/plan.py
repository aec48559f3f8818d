"""The counts pruning gives each request inside vLLM, computed on the host before a step runs.

vLLM plans every step (which tokens of which requests run, how many KV slots they need) before the
model runs, so every count pruning changes must follow from what the engine already knows: the
prompt token ids and the policy's schedule. Nothing here reads the device or imports vLLM; the
scheduler's KV managers, the scheduler and the model runner all read the same rules from here.

- A request's **visual tokens** are the positions its images and videos fill (vLLM's placeholder
  ranges of the request's multimodal items: ``V`` of them). Not token ids: a text prompt may hold
  an image token id with no image behind it, and a model may generate one.
- **Stages**: the policy's layers cut the decoder into stages; stage 0 (the layers before the first
  drop) keeps every token, stage ``s`` holds the layers from ``policy.layers[s - 1]`` up to the next
  drop and sees ``kept[s]`` of the visual tokens (:func:`~v2drop_kernels.models.policies.visual_per_stage`).
  Each stage's layers hold their own KV cache, of survivors only.
- **The drop** happens in the step that computes the request's last visual token. From then on
  stage ``s`` holds ``num_tokens - (V - kept[s])`` entries of the request; before, all of them.
- **The window**: the token range one step must cover whole, so that the drop ranks all of the
  request's visual tokens at once: the visual span ``[first, last + 1)`` for V²Drop (its scores are
  per token), the whole prompt for policies ranking by the last instruction token's attention (its
  query and every key must be in the step, and that token must be the step's last: a prompt
  computed again after a preemption is followed by the tokens already generated). The scheduler
  never ends a step inside it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...models.policies import Policy, visual_per_stage


def visual_ranges(mm_features) -> list[tuple[int, int]]:
    """``[start, end)`` of the positions each multimodal item of a vLLM request fills with its
    embeddings (its placeholder range, less the positions its ``is_embed`` mask leaves out), in
    prompt order. ``mm_features``: vLLM's ``MultiModalFeatureSpec`` list (or ``None``)."""
    ranges = []
    for feature in mm_features or ():
        ranges += [(start, end + 1) for start, end in feature.mm_position.extract_embeds_range()]
    return sorted(ranges)


@dataclass(frozen=True)
class RequestPlan:
    """What the schedule does to one request (fixed for its lifetime)."""

    num_visual: int
    window: tuple[int, int]  # [start, end) a step must cover whole; (0, 0) without visual tokens
    drop_end: int  # one past the last visual token; 0 without visual tokens
    kept: tuple[int, ...]  # visual tokens reaching each stage; kept[0] == num_visual
    visual: tuple[tuple[int, int], ...] = ()  # [start, end) of each run of visual tokens
    stop_at_window_end: bool = False  # a step covering the window ends with it

    def dropped(self, stage: int) -> int:
        """Visual tokens stage ``stage`` does not hold."""
        return self.num_visual - self.kept[stage]

    def stage_tokens(self, stage: int, num_tokens: int) -> int:
        """Entries stage ``stage`` holds once the request's first ``num_tokens`` tokens are computed."""
        if self.num_visual == 0 or num_tokens < self.drop_end:
            return num_tokens
        return num_tokens - self.dropped(stage)

    def drops_in(self, computed: int, scheduled: int) -> bool:
        """Whether the step computing tokens ``[computed, computed + scheduled)`` drops."""
        return self.num_visual > 0 and computed < self.drop_end <= computed + scheduled

    def clamp(self, computed: int, scheduled: int) -> int:
        """The most of ``scheduled`` tokens (from ``computed`` on) a step may take without ending
        inside the window: all of them, up to the window's start (possibly none), or, where the
        window must end the step, up to its end."""
        start, end = self.window
        stop = computed + scheduled
        if self.num_visual == 0 or stop <= start or computed >= end:
            return scheduled
        if computed <= start and stop >= end:
            return end - computed if self.stop_at_window_end else scheduled
        if computed > start:
            raise RuntimeError(f"v2drop: a request was computed up to token {computed}, inside its window "
                               f"[{start}, {end}) that one step must cover whole")
        return start - computed


@dataclass(frozen=True)
class PruningSchedule:
    """The policy on one model: which layers drop, how many visual tokens each stage keeps."""

    policy: Policy
    num_layers: int

    @property
    def boundaries(self) -> tuple[int, ...]:
        """The first layer of each pruned stage."""
        return tuple(self.policy.layers)

    @property
    def num_stages(self) -> int:
        return len(self.boundaries) + 1

    def stage_of(self, layer: int) -> int:
        return bisect.bisect_right(self.boundaries, layer)

    @property
    def whole_prompt(self) -> bool:
        """Whether the policy ranks by attention (it reads a layer's queries and keys): then a
        request's whole prompt is its window."""
        return any(self.policy.needs_qk(layer) for layer in range(self.num_layers))

    def plan(self, num_prompt_tokens: int, visual: Sequence[tuple[int, int]]) -> RequestPlan:
        """The plan of a prompt of ``num_prompt_tokens`` whose visual tokens fill the ``[start, end)``
        ranges ``visual`` (:func:`visual_ranges`)."""
        visual = tuple(sorted((int(a), int(b)) for a, b in visual if b > a))
        count = sum(b - a for a, b in visual)
        if count == 0:
            return RequestPlan(0, (0, 0), 0, (0,) * self.num_stages)
        end = visual[-1][1]
        window = (0, num_prompt_tokens) if self.whole_prompt else (visual[0][0], end)
        return RequestPlan(count, window, end, (count, *visual_per_stage(self.policy, count)), visual,
                           stop_at_window_end=self.whole_prompt)

    def plan_request(self, num_prompt_tokens: int, mm_features) -> RequestPlan:
        """The plan of a vLLM request from its prompt length and multimodal items (what the front
        end, the scheduler and the model runner each know of it)."""
        return self.plan(num_prompt_tokens, visual_ranges(mm_features))


@dataclass(frozen=True)
class StageCounts:
    """One pruned stage's view of a step: its tokens per request and where they go in its cache."""

    query_start_loc: np.ndarray  # int32 [B + 1]: the stage's tokens of each request, packed
    seq_lens: np.ndarray  # int32 [B]: entries of each request in the stage's cache after the step
    cache_index: np.ndarray  # int64 [T_s]: where each token that reaches the stage goes in the stage's cache

    @property
    def num_tokens(self) -> int:
        return int(self.query_start_loc[-1])

    @property
    def max_query_len(self) -> int:
        return int(np.diff(self.query_start_loc).max(initial=0))

    @property
    def max_seq_len(self) -> int:
        return int(self.seq_lens.max(initial=0))


@dataclass(frozen=True)
class StepPlan:
    """One engine step: ``lengths`` tokens per request (the step's packed rows), of which
    ``num_visual`` are visual in the rows that drop in this step (0 in every other row; their
    indices among the step's tokens are ``visual_index``), and each pruned stage's counts
    (``stages[s - 1]`` for stage ``s``)."""

    req_ids: list[str]
    computed: np.ndarray  # int64 [B]: tokens of each request computed before the step
    lengths: list[int]
    num_visual: list[int]
    visual_index: np.ndarray  # int64: the visual tokens of the rows that drop, as indices into the step's tokens
    stages: list[StageCounts]

    @property
    def drops(self) -> bool:
        return any(self.num_visual)


def plan_step(schedule: PruningSchedule, req_ids: Sequence[str], plans: Sequence[RequestPlan],
              computed: np.ndarray, scheduled: np.ndarray) -> StepPlan:
    """The counts of a step that computes ``scheduled[i]`` tokens of request ``i`` from token
    ``computed[i]`` on. Raises when a step covers part of a request's window (the scheduler
    prevents it: pruning such a step would rank only part of the request's visual tokens)."""
    computed = np.asarray(computed, dtype=np.int64)
    scheduled = np.asarray(scheduled, dtype=np.int64)
    drops = np.zeros(len(plans), dtype=bool)
    for row, (req_id, plan) in enumerate(zip(req_ids, plans)):
        c, n = int(computed[row]), int(scheduled[row])
        if plan.clamp(c, n) != n:
            raise RuntimeError(f"v2drop: request {req_id!r} was scheduled for tokens [{c}, {c + n}), part of its "
                               f"window {list(plan.window)}; pruning it would rank only some of its visual tokens")
        drops[row] = plan.drops_in(c, n)
    stages = []
    for stage in range(1, schedule.num_stages):
        before = np.array([p.stage_tokens(stage, int(c)) for p, c in zip(plans, computed)], dtype=np.int64)
        dropped = np.array([p.dropped(stage) for p in plans], dtype=np.int64)
        counts = scheduled - np.where(drops, dropped, 0)
        qsl = np.zeros(len(plans) + 1, dtype=np.int64)
        np.cumsum(counts, out=qsl[1:])
        cache_index = np.arange(qsl[-1], dtype=np.int64) - np.repeat(qsl[:-1] - before, counts)
        stages.append(StageCounts(qsl.astype(np.int32), (before + counts).astype(np.int32), cache_index))
    num_visual = [p.num_visual if d else 0 for p, d in zip(plans, drops)]
    starts = np.concatenate([[0], np.cumsum(scheduled)])
    visual_index = [np.arange(a, b) + starts[row] - computed[row]
                    for row in np.flatnonzero(drops) for a, b in plans[row].visual]
    visual_index = np.concatenate(visual_index) if visual_index else np.zeros(0, dtype=np.int64)
    return StepPlan(list(req_ids), computed, [int(n) for n in scheduled], num_visual, visual_index, stages)
