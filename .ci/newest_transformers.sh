#!/usr/bin/env bash
# Early warning for transformers API changes: runs the transformers-dependent tests (the generate
# integration, the Qwen-VL and Qwen3.5 tests and the model parity tests) against the NEWEST transformers release, with every other
# dependency pinned as in requirements-dev.txt. Run from the repo root after `make test` (or
# `make build`) has built v2drop_kernels/_C*.so; it uses a scratch venv and leaves .venv alone.
# Extra arguments go to pytest.
set -euo pipefail

ls v2drop_kernels/_C*.so >/dev/null 2>&1 || { echo "no built extension in v2drop_kernels/: run 'make build' first" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/v2drop-newest-transformers.XXXXXX")
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
grep -v '^transformers' requirements-dev.txt >"$work/requirements.txt"
sed -n 's/^\(torch==[^ #]*\).*/\1/p' requirements-dev.txt >"$work/constraints.txt"  # never a CUDA torch
"$py" -m pip install --quiet -r "$work/requirements.txt"
"$py" -m pip install --quiet --upgrade -c "$work/constraints.txt" 'transformers>=5.23'
"$py" -c 'import torch, transformers; print(f"transformers {transformers.__version__} (torch {torch.__version__})")'

PYTHONPATH="$PWD" "$py" -m pytest python_tests/test_integration_transformers.py python_tests/test_qwen_vl.py python_tests/test_qwen3_5.py \
    python_tests/test_linear_attention.py python_tests/test_models.py -q "$@"
