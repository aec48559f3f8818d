"""Triton backend: the fused drop, selection and compaction ops in Triton, registered with
``torch.library.triton_op`` as ``torch.ops.v2drop_triton.*`` (one op name cannot hold both the C++
CUDA kernel and a triton_op). Same contract as ``torch.ops.v2drop.*``, except that the rules that
need the data (equal visual counts per row, cu_seqlens values, keep_pos ranges) are checked on the
device and raise RuntimeError (a device-side assert on CUDA) instead of ValueError.

Runs on CUDA tensors, and on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set
before this package is imported), which is how the tests run it without a GPU.
Importing it requires ``triton``; v2drop_kernels imports it when triton is installed.
"""

import os

import triton  # noqa: F401  (ImportError when absent: the backend is then unavailable)

from . import kv_compact, variation_drop, variation_drop_varlen, variation_topk  # noqa: F401  (register the ops)

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def runs_on(device_type: str) -> bool:
    """Whether the Triton ops can run on tensors of this device type here."""
    return device_type == "cuda" or (device_type == "cpu" and INTERPRETER)
