"""The KV cache of a pruned stage: its own cache groups, and fewer blocks per request.

Each pruning stage's attention layers report a :class:`PrunedAttentionSpec` (the model runner
swaps it in for their full-attention spec), so vLLM puts them in KV-cache groups of their own, each
with its own block table. A spec that differs only by its stage never merges with another stage's,
nor with full attention (it derives from ``AttentionSpec``, not ``FullAttentionSpec``, whose merge
would fold it back into one group).

:class:`PrunedAttentionManager` allocates blocks for the entries the stage holds, not for every
token: vLLM's managers see only a request id and a token count, so the manager maps the count
through the request's :class:`~v2drop_kernels.integrations.vllm.plan.RequestPlan`, which the
scheduler registers when the request arrives (:mod:`.scheduler`) and removes when it is freed.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.utils.math_utils import cdiv
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
from vllm.v1.kv_cache_interface import AttentionSpec

from .plan import RequestPlan


@dataclass(frozen=True, kw_only=True)
class PrunedAttentionSpec(AttentionSpec):
    """Full attention over the tokens that reach pruning stage ``stage`` (>= 1)."""

    stage: int

    def max_memory_usage_bytes(self, vllm_config) -> int:
        # At most every token (a request without visual tokens keeps them all), as full attention.
        return cdiv(vllm_config.model_config.max_model_len, self.block_size) * self.page_size_bytes


class PrunedAttentionManager(FullAttentionManager):
    """Blocks for a pruned stage: ``num_tokens`` of a request map to the entries the stage holds.
    ``plans`` (request id -> plan) is the scheduler's, shared by every pruned group."""

    plans: dict[str, RequestPlan] | None = None

    def _entries(self, request_id: str, num_tokens: int) -> int:
        plan = None if self.plans is None else self.plans.get(request_id)
        return num_tokens if plan is None else plan.stage_tokens(self.kv_cache_spec.stage, num_tokens)

    def get_num_blocks_to_allocate(self, request_id: str, num_tokens: int, new_computed_blocks, total_computed_tokens: int,
                                   num_local_computed_tokens: int, num_tokens_main_model: int, *args, **kwargs) -> int:
        return super().get_num_blocks_to_allocate(
            request_id, self._entries(request_id, num_tokens), new_computed_blocks, total_computed_tokens,
            num_local_computed_tokens, self._entries(request_id, num_tokens_main_model), *args, **kwargs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int):
        return super().allocate_new_blocks(request_id, self._entries(request_id, num_tokens),
                                           self._entries(request_id, num_tokens_main_model))


def register_spec() -> None:
    """Registers the spec and its manager with vLLM (after vLLM's own specs: registering first would
    stop vLLM from registering its built-in ones)."""
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

    KVCacheSpecRegistry.register(PrunedAttentionSpec, PrunedAttentionManager, uniform_type_base_spec=PrunedAttentionSpec)
