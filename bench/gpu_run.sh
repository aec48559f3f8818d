#!/usr/bin/env bash
# The whole GPU run in one command, for a lent GPU machine (no network: it uses that machine's
# python3, which has torch, triton, pytest and hypothesis):
#   1. build v2drop_kernels._C in place (CUDA kernels too, when csrc/cuda/ has them);
#   2. run the whole test suite on CUDA (every backend, opcheck and torch.compile included);
#   3. compute-sanitizer memcheck and racecheck over the GPU-backend tests;
#   4. the GPU benchmark (bench/bench_gpu.py), which writes bench/results/gpu_<device>.{json,md}.
# Logs go to bench/results/gpu_logs/ (and are copied to $OUT when it is set). Exit status: the
# first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=bench/results/gpu_logs
mkdir -p "$LOGS"
status=0
step() {  # step NAME COMMAND...: run, log, remember the first failure
  local name=$1; shift
  echo "== $name: $*"
  if "$@" > "$LOGS/$name.log" 2>&1; then echo "   ok"; else local rc=$?; echo "   FAILED ($rc), see $LOGS/$name.log"; tail -20 "$LOGS/$name.log"; [ $status -ne 0 ] || status=$rc; fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$LOGS/device.txt" 2>&1
git rev-parse --short HEAD >> "$LOGS/device.txt" 2>/dev/null || true
step build "$PY" setup.py build_ext --inplace
step tests "$PY" -m pytest python_tests -q -p no:cacheprovider
GPU_TESTS=(python_tests/test_variation_topk.py python_tests/test_variation_drop.py python_tests/test_varlen.py python_tests/test_kv_compact.py)
step memcheck timeout 1500 compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" -m pytest "${GPU_TESTS[@]}" -q -x -p no:cacheprovider -k "cuda or triton"
step racecheck timeout 1500 compute-sanitizer --tool racecheck --error-exitcode 3 "$PY" -m pytest "${GPU_TESTS[@]}" -q -x -p no:cacheprovider -k "(cuda or triton) and (exact or B1-S7 or B3-S83)"
step bench "$PY" bench/bench_gpu.py
tail -3 "$LOGS"/tests.log "$LOGS"/memcheck.log "$LOGS"/racecheck.log 2>/dev/null
if [ -n "${OUT:-}" ]; then cp -r bench/results "$OUT/" ; fi
exit $status
