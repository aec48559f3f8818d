"""Where this plugin steps into vLLM, installed once per process by
:func:`~v2drop_kernels.integrations.vllm.register` (vLLM loads the plugin in every process: the one
that parses the arguments, the engine core, each worker).

vLLM has no extension point for these two, so the plugin wraps one function for each; each
wrapper calls vLLM's own, and changes nothing unless the config asks for pruning:

- ``VllmConfig.try_verify_and_update_config``: vLLM's per-model config hook, run while the config is
  built; with the ``"v2drop"`` key, :func:`~.config.configure` checks and sets the config up;
- ``InputProcessor.process_inputs`` (the front end, per request): refuses, with a message, a request
  pruning cannot serve exactly (:func:`check_request`).

It also registers :class:`~.kv_cache.PrunedAttentionSpec` with vLLM's KV-cache spec registry, after
vLLM's own specs (registering it first would stop vLLM from registering its built-in ones).
"""

from __future__ import annotations

import functools

from .config import KEY, configure, requested, settings


def install() -> None:
    from vllm.config import VllmConfig
    from vllm.v1.core.single_type_kv_cache_manager import register_all_kvcache_specs
    from vllm.v1.engine.input_processor import InputProcessor

    from .kv_cache import register_spec

    if getattr(VllmConfig.try_verify_and_update_config, "v2drop", False):
        return

    verify = VllmConfig.try_verify_and_update_config

    @functools.wraps(verify)
    def try_verify_and_update_config(self):
        verify(self)
        if self.model_config is not None and requested(self):
            configure(self)

    try_verify_and_update_config.v2drop = True
    VllmConfig.try_verify_and_update_config = try_verify_and_update_config

    process = InputProcessor.process_inputs

    @functools.wraps(process)
    def process_inputs(self, *args, **kwargs):
        request = process(self, *args, **kwargs)
        if requested(self.vllm_config):
            check_request(self, request)
        return request

    InputProcessor.process_inputs = process_inputs

    # vLLM registers its own specs on first use unless some are registered already: register them
    # first (what vLLM would do; no platform needs the config for it), then this one.
    register_all_kvcache_specs(None)
    register_spec()


def check_request(processor, request) -> None:
    """Refuses (``VLLMValidationError``, a 400 from the server) a request with visual tokens that
    pruning cannot serve exactly: its window must fit in one step (the scheduler never splits it),
    its prompt-token log-probabilities do not exist for the tokens it drops, and a streamed prompt
    would change its visual tokens after the drop."""
    from vllm.exceptions import VLLMValidationError

    state = processor.__dict__.get("_v2drop")
    if state is None:
        state = processor.__dict__["_v2drop"] = (settings(processor.vllm_config).schedule, _encoder_budget(processor))
    schedule, (encoder_budget, encoder_cache) = state
    if not request.mm_features:
        return
    num_prompt = len(request.prompt_token_ids) if request.prompt_token_ids is not None else request.prompt_embeds.shape[0]
    plan = schedule.plan_request(num_prompt, request.mm_features)
    if plan.num_visual == 0:
        return
    start, end = plan.window
    what = "the whole prompt" if schedule.whole_prompt else "its visual tokens (the first to the last)"
    config = processor.vllm_config.scheduler_config
    budget = config.max_num_scheduled_tokens or config.max_num_batched_tokens  # the scheduler's token budget
    if config.long_prefill_token_threshold > 0:
        budget = min(budget, config.long_prefill_token_threshold)
    if end - start > budget:
        raise VLLMValidationError(f"{KEY}: pruning needs {what} in one step, {end - start} tokens, but a step takes at "
                                  f"most {budget} (--max-num-batched-tokens, --max-num-scheduled-tokens, "
                                  f"--long-prefill-token-threshold)")
    embeds = sum(f.mm_position.get_num_embeds() for f in request.mm_features or []
                 if f.mm_position.offset < end and f.mm_position.offset + f.mm_position.length > start)
    if embeds > min(encoder_budget, encoder_cache):
        raise VLLMValidationError(f"{KEY}: pruning needs every image and video of {what} encoded in one step, "
                                  f"{embeds} embeddings, but the encoder budget is {min(encoder_budget, encoder_cache)}")
    params = request.sampling_params
    if params is not None and params.prompt_logprobs is not None:
        raise VLLMValidationError(f"{KEY}: prompt_logprobs are not defined for the visual tokens pruning drops; "
                                  "remove prompt_logprobs from this request")
    if getattr(request, "resumable", False):
        raise VLLMValidationError(f"{KEY}: a streamed (resumable) prompt cannot be pruned; send it whole")


def _encoder_budget(processor) -> tuple[int, int]:
    """The scheduler's encoder compute budget and encoder cache size, in embeddings."""
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    budget = MultiModalBudget(processor.vllm_config, MULTIMODAL_REGISTRY)
    try:
        return budget.encoder_compute_budget, budget.encoder_cache_size
    finally:
        budget.reset_cache()
