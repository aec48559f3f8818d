"""vLLM's V1 model runner, extended for pruning: one mixin for the CPU runner and the GPU runner.

vLLM's CPU runner derives from its GPU runner and overrides none of the methods below, so
:class:`PruningRunner` is the same code on both (:mod:`.worker` builds the two classes); the GPU
path is untested (no GPU was available to this project when it was written). Per step:

1. ``_prepare_inputs`` (vLLM's, then :meth:`PruningRunner._plan_step`): the counts of every pruned
   stage (:func:`~v2drop_kernels.integrations.vllm.plan.plan_step`, host only), their device
   tensors, and each pruned group's slot mapping (its tokens' cache indices through its block table);
   nothing when no request of the batch has visual tokens (every stage then holds every token);
2. ``_get_slot_mappings``: the pruned groups' slot mappings are those, of their own length;
3. ``_build_attention_metadata``: a pruned stage's layers run a backend whose metadata builder
   rewrites vLLM's per-step ``CommonAttentionMetadata`` with the stage's tokens and lengths
   (``query_start_loc``, ``seq_lens``, token counts); block tables are already the group's;
4. the forward: the language model's ``forward`` is :class:`~.decoder.PrunedDecoder`.

At start-up the runner reports a :class:`~.kv_cache.PrunedAttentionSpec` for every layer of a
pruned stage, so the engine gives each stage KV-cache groups of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from vllm.distributed import (get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size,
                              tensor_model_parallel_all_reduce)
from vllm.v1.attention.backend import subclass_attention_backend
from vllm.v1.kv_cache_interface import AttentionSpec, FullAttentionSpec

from .config import settings
from .decoder import DeviceStep, KeptTrace, PrunedDecoder
from .kv_cache import PrunedAttentionSpec
from .plan import RequestPlan, plan_step

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class StageTensors:
    """A pruned stage's counts for the step, as the attention metadata takes them."""

    query_start_loc: Tensor
    query_start_loc_cpu: Tensor
    seq_lens: Tensor
    seq_lens_cpu: Tensor
    cache_index: Tensor  # where each of the stage's tokens goes in the stage's cache (for the slot mapping)
    num_tokens: int
    max_query_len: int
    max_seq_len: int


class PruningRunner:
    """Mixed in before vLLM's ``GPUModelRunner`` / ``CPUModelRunner``; :meth:`init_pruning` runs once,
    after the runner is built and before the model is loaded."""

    def init_pruning(self) -> None:
        config = settings(self.vllm_config)
        self.v2drop_schedule = config.schedule
        self.v2drop_trace_dir = config.trace_dir
        self.v2drop_plans: dict[str, RequestPlan] = {}
        self.v2drop_step: DeviceStep | None = None  # the running step (None between steps and in dummy runs)
        self.v2drop_stages: list[StageTensors] | None = None
        self.v2drop_stage_of_group: dict[int, int] = {}  # KV-cache group id -> pruned stage
        self.v2drop_backends: dict[tuple[type, int], type] = {}
        # Host/device buffers (pinned on a GPU), filled every step as vLLM fills its own: which of the
        # step's tokens are visual, and per pruned stage its query_start_loc, seq_lens and cache indices.
        self.v2drop_visual = self._make_buffer(self.max_num_tokens, dtype=torch.bool)
        self.v2drop_buffers = [(self._make_buffer(self.max_num_reqs + 1, dtype=torch.int32),
                                self._make_buffer(self.max_num_reqs, dtype=torch.int32),
                                self._make_buffer(self.max_num_tokens, dtype=torch.int64))
                               for _ in range(self.v2drop_schedule.num_stages - 1)]

    # -- start-up ---------------------------------------------------------------------------------
    def load_model(self, *args, **kwargs) -> None:
        super().load_model(*args, **kwargs)
        tp = get_tensor_model_parallel_world_size()
        mean = None if tp == 1 else (lambda scores: tensor_model_parallel_all_reduce(scores) / tp)
        trace = None if self.v2drop_trace_dir is None else KeptTrace(self.v2drop_trace_dir, get_tensor_model_parallel_rank())
        PrunedDecoder(self.model.language_model.model, self.v2drop_schedule, lambda: self.v2drop_step, mean, trace)

    def get_kv_cache_spec(self):
        specs = super().get_kv_cache_spec()
        for name, spec in specs.items():
            match = _LAYER.search(name)
            stage = 0 if match is None else self.v2drop_schedule.stage_of(int(match.group(1)))
            if stage == 0:
                continue
            if type(spec) is not FullAttentionSpec or spec.sliding_window or spec.attention_chunk_size:
                raise NotImplementedError(f"v2drop: layer {name} has a {type(spec).__name__}; pruned stages need full attention")
            specs[name] = PrunedAttentionSpec(stage=stage, **{f.name: getattr(spec, f.name) for f in fields(AttentionSpec)})
        return specs

    def initialize_attn_backend(self, kv_cache_config, is_profiling: bool = False) -> None:
        layers = self.compilation_config.static_forward_context
        self.v2drop_stage_of_group = {}
        for gid, group in enumerate(kv_cache_config.kv_cache_groups):
            if isinstance(group.kv_cache_spec, PrunedAttentionSpec):
                stage = group.kv_cache_spec.stage
                self.v2drop_stage_of_group[gid] = stage
                for name in group.layer_names:
                    base = getattr(layers[name], "v2drop_base_backend", layers[name].attn_backend)
                    layers[name].v2drop_base_backend = base
                    layers[name].attn_backend = self._stage_backend(base, stage)
        super().initialize_attn_backend(kv_cache_config, is_profiling=is_profiling)

    def _stage_backend(self, base: type, stage: int) -> type:
        """``base`` whose metadata builder describes stage ``stage``'s tokens (one class per stage)."""
        key = (base, stage)
        if key not in self.v2drop_backends:
            runner = self

            class StageBuilder(base.get_builder_cls()):
                def build(self, common_prefix_len, common_attn_metadata, *args, **kwargs):
                    metadata = runner._stage_metadata(stage, common_attn_metadata)
                    return super().build(common_prefix_len, metadata, *args, **kwargs)

            StageBuilder.__name__ = StageBuilder.__qualname__ = f"V2DropStage{stage}{base.get_builder_cls().__name__}"
            self.v2drop_backends[key] = subclass_attention_backend(f"V2DropStage{stage}", base, StageBuilder)
        return self.v2drop_backends[key]

    # -- per step ---------------------------------------------------------------------------------
    def execute_model(self, *args, **kwargs):
        try:
            return super().execute_model(*args, **kwargs)
        finally:
            self.v2drop_step, self.v2drop_stages = None, None

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        out = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)
        self._plan_step(num_scheduled_tokens)
        return out

    def _plan_step(self, num_scheduled_tokens) -> None:
        batch = self.input_batch
        num_reqs = batch.num_reqs
        req_ids = batch.req_ids[:num_reqs]
        plans = [self._request_plan(req_id) for req_id in req_ids]
        if not any(p.num_visual for p in plans):  # every stage holds every token: vLLM's own metadata
            return
        plan = plan_step(self.v2drop_schedule, req_ids, plans, batch.num_computed_tokens_cpu[:num_reqs],
                         num_scheduled_tokens[:num_reqs])
        self.v2drop_stages = []
        for counts, (qsl, seq_lens, cache_index) in zip(plan.stages, self.v2drop_buffers):
            qsl.np[: num_reqs + 1] = counts.query_start_loc
            seq_lens.np[:num_reqs] = counts.seq_lens
            cache_index.np[: counts.num_tokens] = counts.cache_index
            self.v2drop_stages.append(StageTensors(
                qsl.copy_to_gpu(num_reqs + 1), qsl.cpu[: num_reqs + 1], seq_lens.copy_to_gpu(num_reqs),
                seq_lens.cpu[:num_reqs], cache_index.copy_to_gpu(counts.num_tokens), counts.num_tokens,
                counts.max_query_len, counts.max_seq_len))
        for gid, stage in self.v2drop_stage_of_group.items():
            tensors = self.v2drop_stages[stage - 1]
            batch.block_table[gid].compute_slot_mapping(num_reqs, tensors.query_start_loc, tensors.cache_index)
        vis_mask = None
        if plan.drops:
            num_tokens = sum(plan.lengths)
            self.v2drop_visual.np[:num_tokens] = False
            self.v2drop_visual.np[plan.visual_index] = True
            vis_mask = self.v2drop_visual.copy_to_gpu(num_tokens)
        self.v2drop_step = DeviceStep(plan, vis_mask, self.query_start_loc.gpu[: num_reqs + 1])

    def _request_plan(self, req_id: str) -> RequestPlan:
        plan = self.v2drop_plans.get(req_id)
        if plan is None:
            state = self.requests[req_id]
            plan = self.v2drop_schedule.plan_request(state.num_prompt_tokens, state.mm_features)
            self.v2drop_plans[req_id] = plan
        return plan

    def _on_request_state_removed(self, req_id, req_state) -> None:
        self.v2drop_plans.pop(req_id, None)
        super()._on_request_state_removed(req_id, req_state)

    def _get_slot_mappings(self, *args, **kwargs):
        by_group, by_layer = super()._get_slot_mappings(*args, **kwargs)
        if by_group is None or self.v2drop_stages is None:
            return by_group, by_layer
        for gid, stage in self.v2drop_stage_of_group.items():
            mapping = self.input_batch.block_table[gid].slot_mapping.gpu[: self.v2drop_stages[stage - 1].num_tokens]
            by_group[gid] = mapping
            for name in self.kv_cache_config.kv_cache_groups[gid].layer_names:
                by_layer[name] = mapping
        return by_group, by_layer

    def _stage_metadata(self, stage: int, common):
        """vLLM's ``CommonAttentionMetadata`` of the step, with stage ``stage``'s tokens and lengths."""
        if self.v2drop_stages is None:  # a dummy run or a text-only batch: every stage sees every token
            return common
        t = self.v2drop_stages[stage - 1]
        # ``positions`` (the tokens' RoPE positions, read by no backend these models use) exist for the
        # stage's tokens on the device only once the drop has run: left out rather than wrong.
        return replace(common, query_start_loc=t.query_start_loc, query_start_loc_cpu=t.query_start_loc_cpu,
                       seq_lens=t.seq_lens, seq_lens_cpu_upper_bound=t.seq_lens_cpu, num_actual_tokens=t.num_tokens,
                       max_query_len=t.max_query_len, max_seq_len=t.max_seq_len, positions=None)
