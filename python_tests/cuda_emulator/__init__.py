"""The CUDA backend built for the host, so the suite runs its kernels without a GPU.

``load()`` compiles csrc/cuda/*.cu (as C++, against the emulator headers in include/) and
csrc/cuda/torch_bindings.cpp into a library registering ``torch.ops.v2drop_cuda_emulated.*``: the
same schemas and binding code as ``torch.ops.v2drop.*`` on CUDA, on CPU tensors. The tests use it
as the backend "cuda_emulated" beside the real ones. What the emulator models and what it cannot
(timing, memory-model races): include/cuda_runtime.h.

With ``CUDA_EMULATOR_SANITIZE=address`` in the environment the library is built with
AddressSanitizer, which then checks every memory access of the kernels and the binding; such a
process must start with the sanitizer's runtime preloaded (``asan_preload()``), as
test_cuda_emulator.py does.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SOURCES = ["runtime.cpp", "kernels_scores.cpp", "kernels_select.cpp", "kernels_gather.cpp", "ops.cpp", "selftest.cpp"]


def available() -> bool:
    """A host C++ compiler and ninja, which torch's extension builder needs."""
    return shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja") is not None


def asan_preload() -> str | None:
    """LD_PRELOAD for a sanitized process: the compiler's AddressSanitizer runtime, then
    libstdc++ (Python does not link it, and the runtime must find it to intercept C++ throws);
    None when the compiler has no such runtime."""
    paths = []
    for lib in ("libasan.so", "libstdc++.so"):
        try:
            out = subprocess.run([os.environ.get("CXX", "c++"), f"-print-file-name={lib}"], capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        path = out.stdout.strip()
        if not (os.path.isabs(path) and os.path.exists(path)):
            return None
        paths.append(path)
    return " ".join(paths)


@functools.cache
def load():
    """Builds (once; ninja rebuilds what changed) and loads the library; returns its op namespace."""
    from torch.utils.cpp_extension import load as build_and_load

    sanitize = os.environ.get("CUDA_EMULATOR_SANITIZE", "")
    if sanitize not in ("", "address"):
        raise ValueError(f"CUDA_EMULATOR_SANITIZE must be 'address' or unset, got {sanitize!r}")
    # Kernels read 16-byte vectors as elements through pointer casts, as CUDA code does; nvcc
    # allows it, a host compiler only without type-based alias analysis.
    cflags = ["-O2", "-fno-strict-aliasing", "-ffp-contract=off"]  # the C++ standard: torch's own
    ldflags = []
    if sanitize:
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
        ldflags += ["-fsanitize=address"]
    build_dir = os.path.join(ROOT, "build", "cuda_emulator" + ("_asan" if sanitize else ""))
    os.makedirs(build_dir, exist_ok=True)
    build_and_load(
        name="v2drop_cuda_emulated",
        sources=[os.path.join(HERE, name) for name in SOURCES],
        extra_include_paths=[os.path.join(HERE, "include")],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )
    from v2drop_kernels import fake

    for op in fake.OPS:  # the same fake kernels as torch.ops.v2drop.*
        torch.library.register_fake(f"v2drop_cuda_emulated::{op}")(getattr(fake, op))
    return torch.ops.v2drop_cuda_emulated
