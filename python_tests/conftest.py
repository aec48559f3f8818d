"""Test configuration, run before any test module imports the package.

Without a GPU the Triton backend runs on CPU tensors under the Triton interpreter, which must be
switched on before the kernels are defined (i.e. before v2drop_kernels is imported).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Keep CPU kernels and the reference on the same thread count in every test run.
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))

import v2drop_kernels  # noqa: E402  (registers torch.ops.v2drop.* and torch.ops.v2drop_triton.*)


@pytest.fixture(autouse=True)
def _cuda_emulated_backend(request):
    """Builds (once) and registers the host build of the CUDA backend for tests that use it."""
    callspec = getattr(request.node, "callspec", None)
    params = callspec.params if callspec is not None else {}
    if params.get("backend") == "cuda_emulated" or params.get("namespace") == "v2drop_cuda_emulated":
        from helpers import register_cuda_emulated

        register_cuda_emulated()
