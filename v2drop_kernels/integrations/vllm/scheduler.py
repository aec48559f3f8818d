"""vLLM's scheduler, with two things added for pruning (the rules are :mod:`.plan`'s):

- every request's :class:`~v2drop_kernels.integrations.vllm.plan.RequestPlan` is made when it
  arrives and shared with the pruned stages' KV managers (:mod:`.kv_cache`), which allocate blocks
  for the entries each stage holds; it is dropped when the request's blocks are freed;
- a step never ends inside a request's window: a prefill chunk stops before the window or covers it
  whole (also when the encoder budget or cache would have cut it), so the drop always ranks all of
  the request's visual tokens at once. The input processor (:mod:`.hooks`) refuses requests whose
  window could never fit in one step.

vLLM builds the scheduler by calling ``scheduler_cls(vllm_config=..., ...)``; :func:`make_scheduler`
picks the synchronous or asynchronous base, as vLLM would.
"""

from __future__ import annotations

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from .config import settings
from .kv_cache import PrunedAttentionManager
from .plan import RequestPlan


class _Pruning:
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.v2drop_schedule = settings(self.vllm_config).schedule
        self.v2drop_plans: dict[str, RequestPlan] = {}
        for manager in self.kv_cache_manager.coordinator.single_type_managers:
            if isinstance(manager, PrunedAttentionManager):
                manager.plans = self.v2drop_plans

    def add_request(self, request) -> None:
        if request.request_id not in self.requests:
            self.v2drop_plans[request.request_id] = self.v2drop_schedule.plan_request(request.num_prompt_tokens,
                                                                                      request.mm_features)
        super().add_request(request)

    def _free_blocks(self, request) -> None:
        super()._free_blocks(request)
        self.v2drop_plans.pop(request.request_id, None)

    def _try_schedule_encoder_inputs(self, request, num_computed_tokens: int, num_new_tokens: int,
                                     encoder_compute_budget: int, shift_computed_tokens: int = 0):
        plan = self.v2drop_plans.get(request.request_id)
        if plan is not None:
            num_new_tokens = plan.clamp(num_computed_tokens, num_new_tokens)
        out = super()._try_schedule_encoder_inputs(request, num_computed_tokens, num_new_tokens,
                                                   encoder_compute_budget, shift_computed_tokens)
        # The encoder budget or cache stopped the step inside the window: schedule up to its start.
        # (The first call may have marked items already in the encoder cache as this request's; they
        # stay so until its next step, which needs them.)
        if plan is not None and (clamped := plan.clamp(num_computed_tokens, out[1])) != out[1]:
            out = super()._try_schedule_encoder_inputs(request, num_computed_tokens, clamped,
                                                       encoder_compute_budget, shift_computed_tokens)
        return out


class PruningScheduler(_Pruning, Scheduler):
    pass


class PruningAsyncScheduler(_Pruning, AsyncScheduler):
    pass


def make_scheduler(*args, vllm_config, **kwargs):
    """The scheduler vLLM would build (asynchronous or not), with pruning's rules."""
    cls = PruningAsyncScheduler if vllm_config.scheduler_config.async_scheduling else PruningScheduler
    return cls(*args, vllm_config=vllm_config, **kwargs)
