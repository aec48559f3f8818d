"""v2drop_kernels: fused variation-aware visual token dropping (V²Drop) for LVLMs.

Importing the package loads the compiled library (``v2drop_kernels._C``), which registers the
``torch.ops.v2drop.*`` ops, their fake kernels, the Triton ops (``torch.ops.v2drop_triton.*``, when
triton is installed) and the backends. The Python API is in :mod:`v2drop_kernels.ops`; the
specification is :mod:`v2drop_kernels.reference`; the argument rules are :mod:`v2drop_kernels.checks`.
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)

from ._version import __version__  # noqa: E402
from . import _C  # noqa: F401,E402  (registers torch.ops.v2drop.*)
from . import fake  # noqa: F401  (registers the fake kernels)
from .backends import available_backends, register_backend, registered_backends  # registers the built-in backends
from .ops import (
    DropOutput,
    SelectOutput,
    kv_compact,
    kv_compact_,
    select_drop,
    select_drop_varlen,
    variation_drop,
    variation_drop_varlen,
    variation_topk,
)

__all__ = [
    "__version__",
    "DropOutput",
    "SelectOutput",
    "available_backends",
    "kv_compact",
    "kv_compact_",
    "register_backend",
    "registered_backends",
    "select_drop",
    "select_drop_varlen",
    "variation_drop",
    "variation_drop_varlen",
    "variation_topk",
]
