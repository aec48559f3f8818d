#!/usr/bin/env bash
# Diagnosis of the segfault seen on an H100 (torch 2.11+cu130) in test_errors.py[v2drop-*] with the
# CUDA build on CPU tensors; it does not reproduce on a CPU machine with a CUDA torch.
# Run from the project root on the GPU machine: bash bench/diagnostics/gpu_segv_check.sh  (3-5 min)
# Writes everything under $OUT (or /tmp/segv_out). Tells apart: CUDA build vs CPU-only build on
# the same machine, GPU visible vs hidden, CUDA initialised or not, and gives a native backtrace.
set -u
SELF=$(cd "$(dirname "$0")" && pwd); ROOT=$(pwd)
OUT=${OUT:-/tmp/segv_out}; mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)  # absolute: the CPU-only build runs elsewhere
PY=${PYTHON:-python3}; case $PY in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")";; esac
broken=0  # the diagnosis itself could not run (a build failed): exit 1; crashes it observes are its findings
SNIP="$SELF/snippet.py"
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  $PY -c "import sys, torch; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available())"
  c++ --version | head -1; nvcc --version | tail -1; command -v gdb; ls -la v2drop_kernels/*.so 2>&1; } > "$OUT/env.txt" 2>&1
MAX_JOBS=8 timeout 300 $PY setup.py build_ext --inplace > "$OUT/build_cuda.log" 2>&1 || { echo build failed; tail -20 "$OUT/build_cuda.log"; exit 1; }
{ ls -la v2drop_kernels/*.so; $PY -c "import torch, v2drop_kernels._C as m; print(m.__file__)"; ldd v2drop_kernels/_C*.so; } > "$OUT/so.txt" 2>&1
snippet() {  # snippet TAG [env...]: the three failing calls; rc 139/-11 = segfault
  env "${@:2}" PYTHONPATH="$ROOT" timeout 120 $PY -X faulthandler $SNIP > "$OUT/snippet_$1.log" 2>&1
  echo "snippet $1: rc=$?"; grep -v -i warn "$OUT/snippet_$1.log" | tail -4
}
snippet cuda_build
snippet cuda_build_nogpu CUDA_VISIBLE_DEVICES=
# the same calls after CUDA is initialised (as conftest's torch.cuda.is_available() does)
PYTHONPATH="$ROOT" timeout 120 $PY -X faulthandler -c "import torch; torch.cuda.init(); exec(open('$SNIP').read())" > "$OUT/snippet_cudainit.log" 2>&1; echo "snippet cudainit: rc=$?"; grep -v -i warn "$OUT/snippet_cudainit.log" | tail -4
if command -v gdb > /dev/null; then
  PYTHONPATH="$ROOT" timeout 180 gdb -batch -ex run -ex bt -ex "info sharedlibrary" --args $PY $SNIP > "$OUT/gdb_cuda_build.log" 2>&1
  grep -A25 "SIGSEGV" "$OUT/gdb_cuda_build.log" | head -40
fi
timeout 200 $PY -X faulthandler -m pytest python_tests/test_errors.py -q -x -p no:cacheprovider -k "test_bad_input and cpu-" > "$OUT/pytest_cuda_build.log" 2>&1; echo "pytest cuda build: rc=$?"; tail -3 "$OUT/pytest_cuda_build.log"
# CPU-only build of the same sources on the same machine
CPU_TREE=/tmp/v2drop_cpu_only; rm -rf "$CPU_TREE"; mkdir -p "$CPU_TREE"
cp -r setup.py requirements-dev.txt csrc v2drop_kernels "$CPU_TREE"/; rm -f "$CPU_TREE"/v2drop_kernels/*.so  # what setup.py reads
(cd "$CPU_TREE" && V2DROP_NO_CUDA=1 MAX_JOBS=8 timeout 300 $PY setup.py build_ext --inplace > "$OUT/build_cpu.log" 2>&1) || { echo "cpu build failed"; tail -20 "$OUT/build_cpu.log"; broken=1; }
(cd "$CPU_TREE" && PYTHONPATH="$CPU_TREE" timeout 120 $PY -X faulthandler $SNIP > "$OUT/snippet_cpu_build.log" 2>&1; echo "snippet cpu_build: rc=$?"; grep -v -i warn "$OUT/snippet_cpu_build.log" | tail -4)
exit $broken
