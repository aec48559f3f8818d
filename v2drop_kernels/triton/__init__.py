"""Triton backend: the drop, selection and compaction ops in Triton, registered with
``torch.library.triton_op`` as ``torch.ops.v2drop_triton.*`` (one op name cannot hold both the C++
CUDA kernel and a triton_op). Same contract, argument rules and messages as ``torch.ops.v2drop.*``
(:mod:`v2drop_kernels.checks`); the rules that need the data (equal visual counts per row,
cu_seqlens values, keep_pos ranges) are checked on the device and raise RuntimeError (a device-side
assert on CUDA) instead of ValueError.

One file per op (the ``triton_op``: checks, outputs, launches); the kernels they share live in
:mod:`.score_select` (scores, exact selection) and :mod:`.gather` (row gathers), and every launch's
block sizes in :mod:`.launching`. Runs on CUDA tensors, and on CPU tensors under the Triton
interpreter (``TRITON_INTERPRET=1`` set before this package is imported), which is how the tests run
it without a GPU. Importing it requires ``triton``; v2drop_kernels imports it when triton is installed.
"""

import triton  # noqa: F401  (ImportError when absent: the backend is then unavailable)

from . import kv_compact, select_drop, select_drop_varlen, variation_drop, variation_drop_varlen, variation_topk  # noqa: F401  (register the ops)
from .launching import DEVICES, INTERPRETER  # noqa: F401
