#!/usr/bin/env bash
# The whole GPU run in one command, for a lent GPU machine (no network: it uses that machine's
# python3, which has torch, triton, pytest and hypothesis):
#   1. build v2drop_kernels._C in place (CUDA kernels too, when csrc/cuda/ has them);
#   2. run the whole test suite on CUDA (every backend, opcheck and torch.compile included);
#   3. compute-sanitizer memcheck and racecheck over the GPU-backend tests;
#   4. the GPU benchmark (bench/bench_gpu.py), which writes bench/results/gpu_<device>.{json,md};
#   5. the end-to-end benchmark (bench/e2e.py $E2E_ARGS), bench/results/e2e_<device>.{json,md,png}.
# The device tool allows 10 minutes a command: the full e2e grid (2 models x 4 workloads x 2 batches
# x 5 policies) does not fit one call next to steps 1-4; run it in slices, e.g.
#   E2E_ARGS="--models llava-1.5-7b --workloads image,highres" SKIP="tests memcheck racecheck bench" bash bench/gpu_run.sh
# (each call rewrites e2e_<device>.*; pass --out to keep slices apart). The decoder tests need
# transformers, which the GPU machine lacks: carry a wheel to run them there; bench/e2e.py does not.
# Logs go to bench/results/gpu_logs/ (and are copied to $OUT when it is set). Exit status: the
# first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=bench/results/gpu_logs
mkdir -p "$LOGS"
status=0
step() {  # step NAME COMMAND...: run, log, remember the first failure; skipped when NAME is in $SKIP
  local name=$1; shift
  case " ${SKIP:-} " in *" $name "*) echo "== $name: skipped"; return;; esac
  echo "== $name: $*"
  if "$@" > "$LOGS/$name.log" 2>&1; then echo "   ok"; else local rc=$?; echo "   FAILED ($rc), see $LOGS/$name.log"; tail -20 "$LOGS/$name.log"; [ $status -ne 0 ] || status=$rc; fi
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$LOGS/device.txt" 2>&1
git rev-parse --short HEAD >> "$LOGS/device.txt" 2>/dev/null || true
step build "$PY" setup.py build_ext --inplace
# The host build of the CUDA backend (backend "cuda_emulated") stands in for the GPU elsewhere;
# here the real one runs, so those tests are left out to keep the call short.
step tests "$PY" -m pytest python_tests -q -p no:cacheprovider -k "not emulated and not emulator"
GPU_TESTS=(python_tests/test_variation_topk.py python_tests/test_variation_drop.py python_tests/test_variation_drop_varlen.py python_tests/test_select_drop.py python_tests/test_kv_compact.py)
step memcheck timeout 1500 compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" -m pytest "${GPU_TESTS[@]}" -q -x -p no:cacheprovider -k "(cuda or triton) and not emulated"
step racecheck timeout 1500 compute-sanitizer --tool racecheck --error-exitcode 3 "$PY" -m pytest "${GPU_TESTS[@]}" -q -x -p no:cacheprovider -k "(cuda or triton) and not emulated and (exact or B1-S7 or B3-S83)"
step bench "$PY" bench/bench_gpu.py
# shellcheck disable=SC2086
step e2e "$PY" bench/e2e.py ${E2E_ARGS:-}
tail -3 "$LOGS"/tests.log "$LOGS"/memcheck.log "$LOGS"/racecheck.log "$LOGS"/e2e.log 2>/dev/null
if [ -n "${OUT:-}" ]; then cp -r bench/results "$OUT/" ; fi
exit $status
