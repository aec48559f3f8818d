"""Reference vision-language models (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, Qwen3.5) with visual-token pruning through the package's ops.

- :mod:`.config`: configs read from HF ``config.json``;
- :mod:`.llama`: decoder modules (HF parameter names); :mod:`.attention`: SDPA / varlen attention;
  :mod:`.linear_attention`: Qwen3.5's Gated DeltaNet layers (chunked prefill, recurrent decode);
- :mod:`.tokens`: the sequence a layer sees and how pruning compacts it; :mod:`.cache`: per-layer KV;
- :mod:`.decoder`: the prefill/decode loop with a policy; :mod:`.policies`: none, V²Drop, PyramidDrop, FastV;
- :mod:`.generation`: greedy generation (static decode, CUDA graph);
- :mod:`.vlm`: what every vision-language model shares (prefill tokens in both layouts, embedding,
  forward); :mod:`.llava`: LLaVA-1.5; :mod:`.llava_next`: LLaVA-NeXT (anyres tiles);
  :mod:`.llava_onevision`: LLaVA-OneVision (SigLIP, Qwen2, anyres_max tiles, videos); :mod:`.qwen_vl`:
  Qwen2-VL / Qwen2.5-VL (M-RoPE); :mod:`.qwen3_vl`: Qwen3-VL (DeepStack, interleaved M-RoPE, q/k norms);
  :mod:`.qwen3_5`: Qwen3.5 (hybrid linear / gated full attention);
- :mod:`.loading`: checkpoints (the ``model_type`` registry, ``LOADERS``) and small random models.

Adding an architecture is one file (a :class:`~.vlm.VisionLanguageModel` subclass holding only what
differs: its vision modules, visual tokens, encoder, positions and default schedule; see
:mod:`.vlm`) plus its key map and a line of ``LOADERS`` in :mod:`.loading`.
"""

from .config import LlavaConfig, LlavaNextConfig, LlavaOnevisionConfig, QwenVLConfig, TextConfig
from .generation import Generation
from .llava import Llava
from .llava_next import LlavaNext
from .llava_onevision import LlavaOnevision
from .loading import (llava_from_transformers, llava_next_from_transformers, llava_onevision_from_transformers, load_llava,
                      load_llava_next, load_llava_onevision, load_model, load_qwen_vl, qwen_vl_from_transformers, random_llava,
                      random_qwen_vl, tiny_config, tiny_llava_next_config, tiny_llava_onevision_config, tiny_qwen_config)
from .policies import POLICIES, FastV, OfPrompt, Policy, PyramidDrop, V2Drop, make_policy
from .qwen3_5 import Qwen3_5
from .qwen3_vl import Qwen3VL
from .qwen_vl import QwenVL
from .vlm import VisionLanguageModel

__all__ = [
    "POLICIES", "FastV", "Generation", "Llava", "LlavaConfig", "LlavaNext", "LlavaNextConfig", "LlavaOnevision",
    "LlavaOnevisionConfig", "OfPrompt", "Policy", "PyramidDrop", "Qwen3_5", "Qwen3VL", "QwenVL", "QwenVLConfig", "TextConfig", "V2Drop", "VisionLanguageModel",
    "llava_from_transformers", "llava_next_from_transformers", "llava_onevision_from_transformers", "load_llava",
    "load_llava_next", "load_llava_onevision", "load_model", "load_qwen_vl", "make_policy", "qwen_vl_from_transformers",
    "random_llava", "random_qwen_vl", "tiny_config", "tiny_llava_next_config", "tiny_llava_onevision_config",
    "tiny_qwen_config",
]
