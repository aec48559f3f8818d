#!/usr/bin/env bash
# The package as users install it: build the wheel, install it into a fresh venv that has only torch
# and numpy, and check it from outside the source tree (the ops, their fakes, opcheck, the message
# naming the [transformers] extra); then add the [transformers] extra and check a pruned generate
# and the README's quick starts (.ci/readme_quickstarts.py), run as a user pasting them would.
# Needs the venv `make test` made (.venv: torch and the build tools). About 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d /tmp/v2drop_wheel.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "== wheel: build"
.venv/bin/python -m pip wheel --quiet --no-build-isolation --no-deps -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/v2drop_kernels-*.whl)
echo "   $(basename "$WHEEL")"
echo "== wheel: fresh venv with torch and numpy only"
python3 -m venv "$WORK/venv"
PY=$WORK/venv/bin/python
"$PY" -m pip install --quiet -c requirements-dev.txt torch numpy
"$PY" -m pip install --quiet --no-deps "$WHEEL"
cd "$WORK"
"$PY" "$ROOT/.ci/wheel_check.py" core
echo "== wheel: with the [transformers] extra"
"$PY" -m pip install --quiet -c "$ROOT/requirements-dev.txt" "$WHEEL[transformers]"
"$PY" "$ROOT/.ci/wheel_check.py" transformers
"$PY" "$ROOT/.ci/readme_quickstarts.py" "$ROOT/README.md"
