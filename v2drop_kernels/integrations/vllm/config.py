"""Turning pruning on from vLLM's config, and every refusal at engine start-up.

The user asks for pruning with vLLM's own ``additional_config``, under the key ``"v2drop"``::

    vllm serve MODEL --enforce-eager --no-enable-prefix-caching \\
        --additional-config '{"v2drop": {"policy": "v2drop", "schedule": "qwen2-vl"}}'

The dict holds the policy's name (``"v2drop"``, ``"pdrop"``, ``"fastv"``; default ``"v2drop"``), the
keyword arguments of that policy class of this package (:mod:`v2drop_kernels.models.policies`:
``layers``, ``keep``, ``schedule``, ``ratio``, ``k``, ``r``) and, optionally, ``"trace"``: a folder where
every worker writes, per request and drop, the prompt index of each visual token it kept
(``rank<N>.jsonl``; it reads those indices back from the device, so it is for inspection, not
for serving). V²Drop without ``layers`` or ``schedule`` takes the model's published schedule.

:func:`configure` runs while vLLM builds its config (in the process that parses the arguments,
before any engine process starts): it checks the dict and every setting pruning cannot honour,
raising one ``ValueError`` that names the flag to add or remove, and points vLLM at this
integration's scheduler and worker. Without the key it is never called and vLLM runs as stock.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

from ...models.policies import POLICIES
from .plan import PruningSchedule

KEY = "v2drop"
SUPPORTED_VLLM = "0.32"  # the internals this integration relies on change between releases
SCHEDULER = "v2drop_kernels.integrations.vllm.scheduler.make_scheduler"
WORKERS = {"cpu": "v2drop_kernels.integrations.vllm.worker.PruningCPUWorker",
           "cuda": "v2drop_kernels.integrations.vllm.worker.PruningGPUWorker"}

# architecture -> V²Drop's default schedule on it (v2drop_kernels.models.policies.v2drop.SCHEDULES)
ARCHITECTURES = {
    "LlavaForConditionalGeneration": "llava-1.5",
    "Qwen2VLForConditionalGeneration": "qwen2-vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2-vl",
}
_OPTIONS = ("policy", "trace")  # keys of the dict that are not the policy's arguments


@dataclass(frozen=True)
class Settings:
    schedule: PruningSchedule
    trace_dir: str | None = None


def requested(vllm_config) -> bool:
    extra = getattr(vllm_config, "additional_config", None)
    return isinstance(extra, dict) and KEY in extra


def settings(vllm_config) -> Settings | None:
    """The pruning asked for in ``vllm_config`` (``None``: none), checked against the model."""
    if not requested(vllm_config):
        return None
    options = vllm_config.additional_config[KEY]
    if not isinstance(options, dict):
        raise ValueError(f"{KEY}: additional_config[{KEY!r}] must be a dict such as "
                         f'{{"policy": "v2drop", "schedule": "qwen2-vl"}}, got {options!r}')
    arch = vllm_config.model_config.architecture
    if arch not in ARCHITECTURES:
        raise ValueError(f"{KEY}: pruning inside vLLM is implemented for {sorted(ARCHITECTURES)}, not {arch}; "
                         f"remove {KEY!r} from --additional-config")
    default_schedule = ARCHITECTURES[arch]
    name = options.get("policy", "v2drop")
    if name not in POLICIES or name == "none":
        raise ValueError(f"{KEY}: unknown policy {name!r}; choose one of {sorted(set(POLICIES) - {'none'})}")
    kwargs = {k: v for k, v in options.items() if k not in _OPTIONS}
    accepted = [p for p in inspect.signature(POLICIES[name]).parameters]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{KEY}: {name} takes {accepted} (and {list(_OPTIONS)}), not {unknown}")
    if name == "v2drop" and "layers" not in kwargs and "schedule" not in kwargs:
        kwargs["schedule"] = default_schedule
    try:
        policy = POLICIES[name](**kwargs)
    except ValueError as error:
        raise ValueError(f"{KEY}: {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {error}") from None
    num_layers = vllm_config.model_config.hf_text_config.num_hidden_layers
    policy.check(num_layers)
    trace = options.get("trace")
    if trace is not None and not isinstance(trace, str):
        raise ValueError(f"{KEY}: trace is a folder path, got {trace!r}")
    return Settings(PruningSchedule(policy, num_layers), trace)


def _refusals(vllm_config) -> list[str]:
    """What this configuration asks for that pruning cannot do, each with the flag that fixes it."""
    cache, parallel = vllm_config.cache_config, vllm_config.parallel_config
    scheduler, compilation = vllm_config.scheduler_config, vllm_config.compilation_config
    out = []
    if cache.enable_prefix_caching:
        out.append("prefix caching shares KV blocks by token content, but a pruned stage's blocks depend on "
                   "the whole image: add --no-enable-prefix-caching (enable_prefix_caching=False)")
    if vllm_config.speculative_config is not None:
        out.append("speculative decoding is not supported with pruning: remove --speculative-config")
    compiled = compilation.mode is not None and int(compilation.mode) != 0  # None: vLLM's default, resolved later
    graphs = compilation.cudagraph_mode is not None and int(compilation.cudagraph_mode.value) != 0
    if not vllm_config.model_config.enforce_eager or compiled or graphs:
        out.append("pruning changes the number of tokens inside the model, which compiled graphs and CUDA graphs "
                   "cannot follow: add --enforce-eager (enforce_eager=True)")
    if parallel.pipeline_parallel_size > 1:
        out.append("pipeline parallelism is not supported with pruning: remove --pipeline-parallel-size")
    if parallel.decode_context_parallel_size > 1:
        out.append("decode context parallelism is not supported with pruning: remove --decode-context-parallel-size")
    if parallel.use_ubatching:
        out.append("micro-batching is not supported with pruning: remove --enable-dbo / --ubatch-size")
    if vllm_config.lora_config is not None:
        out.append("LoRA maps adapters by token position, which pruning moves: remove --enable-lora")
    if vllm_config.kv_transfer_config is not None:
        out.append("KV transfer is not supported with pruning: remove --kv-transfer-config")
    if scheduler.scheduler_cls not in (None, SCHEDULER):
        out.append(f"pruning brings its own scheduler: remove --scheduler-cls ({scheduler.scheduler_cls})")
    if parallel.worker_cls not in ("auto", *WORKERS.values()):
        out.append(f"pruning brings its own worker: remove --worker-cls ({parallel.worker_cls})")
    if scheduler.disable_hybrid_kv_cache_manager:
        out.append("each pruned stage needs KV-cache groups of its own: remove --disable-hybrid-kv-cache-manager")
    text = vllm_config.model_config.hf_text_config
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        out.append("sliding-window attention is not supported with pruning (the model's config uses it)")
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower() in ("1", "true"):
        out.append("pruning runs in vLLM's V1 model runner: unset VLLM_USE_V2_MODEL_RUNNER")
    return out


def configure(vllm_config) -> None:
    """Checks the request for pruning and sets vLLM up for it (see the module docstring)."""
    import vllm

    from vllm.platforms import current_platform

    if not vllm.__version__.startswith(SUPPORTED_VLLM + "."):
        raise ValueError(f"{KEY}: this integration supports vLLM {SUPPORTED_VLLM}.x, found {vllm.__version__}; "
                         f"install vllm=={SUPPORTED_VLLM}.* or remove {KEY!r} from --additional-config")
    settings(vllm_config)  # the dict and the model
    problems = _refusals(vllm_config)
    if problems:
        raise ValueError(f"{KEY}: " + "; ".join(problems))
    device = "cpu" if current_platform.is_cpu() else "cuda" if current_platform.is_cuda() else None
    if device is None:
        raise ValueError(f"{KEY}: pruning inside vLLM runs on CPUs and NVIDIA GPUs, not on {current_platform.device_name}")
    vllm_config.scheduler_config.scheduler_cls = SCHEDULER
    vllm_config.parallel_config.worker_cls = WORKERS[device]
    if vllm_config.scheduler_config.disable_hybrid_kv_cache_manager is None:
        vllm_config.scheduler_config.disable_hybrid_kv_cache_manager = False
    # The model runner this integration extends is V1's; child processes inherit the choice.
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
