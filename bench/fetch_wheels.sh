#!/usr/bin/env bash
# Wheels of transformers (and what it needs beyond torch and numpy) for the GPU machine, which has
# no network and no transformers: the decoder tests and bench/e2e.py need it. Run here, then carry
# bench/wheels with the device tool's `carry`; bench/gpu_run.sh installs them (step `deps`).
# PYTHON_VERSION is the GPU machine's (3.12 when this was written).
# `--check`: only says what it would download (the pins it reads from requirements-dev.txt), and fails
# when one is missing (gpu_run.sh --dry-run runs this).
set -euo pipefail
cd "$(dirname "$0")"
PINS=()
for name in transformers safetensors; do
  pin=$(grep -E "^$name==" ../requirements-dev.txt | cut -d' ' -f1)
  [ -n "$pin" ] || { echo "requirements-dev.txt pins no $name" >&2; exit 1; }
  PINS+=("$pin")
done
if [ "${1:-}" = --check ]; then echo "would download: ${PINS[*]} and their dependencies (cp${PYTHON_VERSION:-3.12})"; exit 0; fi
rm -rf wheels && mkdir -p wheels
pip download --quiet --dest wheels --only-binary=:all: --implementation cp --python-version "${PYTHON_VERSION:-3.12}" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "${PINS[@]}"
rm -f wheels/numpy-*.whl  # the GPU machine's own numpy stays
du -sh wheels
