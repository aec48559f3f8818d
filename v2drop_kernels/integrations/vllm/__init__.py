"""V²Drop, PyramidDrop and FastV inside vLLM: visual tokens dropped between the LLM's layers, and
every layer after a drop holding only the survivors in its KV cache.

Installed with this package, the plugin is registered through vLLM's ``vllm.general_plugins``
entry point (``setup.py``); vLLM loads it in every process. It does nothing unless vLLM's
``additional_config`` holds the key ``"v2drop"``::

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --enforce-eager --no-enable-prefix-caching \\
        --additional-config '{"v2drop": {"policy": "v2drop", "schedule": "qwen2-vl"}}'

    LLM(model=..., enforce_eager=True, enable_prefix_caching=False,
        additional_config={"v2drop": {"policy": "pdrop", "layers": [8, 16, 24], "ratio": 0.5}})

The keys are the policy's name and its keyword arguments in this package (:mod:`.config`).

Supported: vLLM 0.32.x (checked at start-up), vLLM's ``LlavaForConditionalGeneration``,
``Qwen2VLForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration``, images and videos,
tensor parallelism, chunked prefill (a request's window is never split), on CPUs (tested) and NVIDIA
GPUs (untested). How it works, one file each:

- :mod:`.plan`: the counts (the rules; no vLLM);
- :mod:`.config`: the ``"v2drop"`` dict, the refusals, vLLM pointed at the scheduler and worker below;
- :mod:`.kv_cache`: each pruned stage's KV-cache spec and block manager (fewer blocks per request);
- :mod:`.scheduler`: request plans, and steps that never split a window;
- :mod:`.runner`, :mod:`.worker`: the model runner's per-stage slot mappings and attention metadata;
- :mod:`.decoder`: the decoder loop with the policy's hooks between vLLM's layers;
- :mod:`.hooks`: where the plugin steps into vLLM.

Importing this package needs neither vLLM nor anything else beyond this package.
"""

from __future__ import annotations

from ...extras import require


def register() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: installs the hooks (idempotent, per process)."""
    require("vllm", "the vLLM plugin")
    from .hooks import install

    install()
