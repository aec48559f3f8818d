"""Optional dependencies and the extra that installs each: the one place that knows them.

The core (the ops, their fakes and backends) needs only torch. The models, loading and the
transformers integration need ``v2drop_kernels[transformers]``; the demo ``[demo]``; the vLLM plugin
``[vllm]`` (setup.py reads the extras' requirements from requirements-dev.txt). :func:`require`
imports an optional module or fails with one message naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

# top-level module -> (distribution, extra that installs it)
EXTRAS = {
    "transformers": ("transformers", "transformers"),
    "safetensors": ("safetensors", "transformers"),
    "PIL": ("pillow", "demo"),
    "tqdm": ("tqdm", "demo"),
    "matplotlib": ("matplotlib", "demo"),
    "numpy": ("numpy", "demo"),
    "vllm": ("vllm", "vllm"),
}


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``; when its top-level package is not installed, raises
    :class:`MissingExtra` (a ``ModuleNotFoundError``): "<purpose> needs <dist>, which is not
    installed: pip install 'v2drop_kernels[<extra>]'". A module missing *inside* an installed
    package (a broken install) is re-raised as it is."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        if top not in EXTRAS or not _absent(top):
            raise
        dist, extra = EXTRAS[top]
        raise MissingExtra(f"{purpose} needs {dist}, which is not installed: pip install 'v2drop_kernels[{extra}]'",
                           name=top) from None


def _absent(top: str) -> bool:
    """Whether the top-level package ``top`` is not installed (or blocked: None in sys.modules)."""
    if top in sys.modules:
        return sys.modules[top] is None
    return importlib.util.find_spec(top) is None
