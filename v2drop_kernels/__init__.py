"""v2drop_kernels: fused variation-aware visual token dropping (V²Drop) for LVLMs.

Importing the package loads the compiled library (``v2drop_kernels._C``), which registers the
``torch.ops.v2drop.*`` ops, and their fake kernels. The Python API is in :mod:`v2drop_kernels.ops`;
the specification is :mod:`v2drop_kernels.reference`.
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import _C  # noqa: F401,E402  (registers torch.ops.v2drop.*)
from . import fake  # noqa: F401  (registers the fake kernels)
from .ops import (  # ops imports the Triton backend (torch.ops.v2drop_triton.*) when triton is installed
    available_backends,
    kv_compact,
    kv_compact_,
    variation_drop,
    variation_drop_varlen,
    variation_topk,
)

__all__ = [
    "available_backends",
    "kv_compact",
    "kv_compact_",
    "variation_drop",
    "variation_drop_varlen",
    "variation_topk",
]
__version__ = "0.1.0"
