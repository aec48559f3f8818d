"""Reference LLaVA decoder with visual-token pruning through the package's ops.

- :mod:`.config`: configs read from HF ``config.json``;
- :mod:`.llama`: decoder modules (HF parameter names); :mod:`.attention`: SDPA / varlen attention;
- :mod:`.tokens`: the sequence a layer sees and how pruning compacts it; :mod:`.cache`: per-layer KV;
- :mod:`.decoder`: the prefill/decode loop with a policy; :mod:`.policies`: none, V²Drop, PyramidDrop, FastV;
- :mod:`.llava`: the full model and greedy generation; :mod:`.loading`: checkpoints and small random models.
"""

from .config import LlavaConfig, TextConfig
from .generation import Generation
from .llava import Llava
from .loading import llava_from_transformers, load_llava, random_llava, tiny_config
from .policies import POLICIES, FastV, Policy, PyramidDrop, V2Drop, make_policy

__all__ = [
    "POLICIES", "FastV", "Generation", "Llava", "LlavaConfig", "Policy", "PyramidDrop", "TextConfig", "V2Drop",
    "llava_from_transformers", "load_llava", "make_policy", "random_llava", "tiny_config",
]
