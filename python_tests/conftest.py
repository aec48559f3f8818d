"""Test configuration: the package is imported here so that the ops are registered once."""

import os

# Keep CPU kernels and the reference on the same thread count in every test run.
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))

import v2drop_kernels  # noqa: E402,F401  (registers torch.ops.v2drop.*)
