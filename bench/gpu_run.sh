#!/usr/bin/env bash
# The whole GPU run, for a lent GPU machine (no network: it uses that machine's python3, which has
# torch, triton, numpy, pytest and hypothesis; transformers is needed by the decoder tests and e2e).
# Steps, in order (each logs to bench/results/gpu_logs/<step>.log):
#   env        versions, nvidia-smi, whether torch sees the GPU
#   deps       transformers from bench/wheels (made here by bench/fetch_wheels.sh, carried along)
#   build      v2drop_kernels._C in place, CUDA kernels included
#   diag       bench/diagnostics/gpu_segv_check.sh: the bad-input crash of issue 16, separated by cause
#   tests      the whole suite on CUDA (the host-emulated CUDA backend left out: the real one runs)
#   memcheck / racecheck / synccheck / initcheck
#              compute-sanitizer over a subset of the GPU-backend tests chosen to finish in the call
#   bench      bench/bench_gpu.py --publish: kernels beside eager and compiled references
#   e2e        bench/e2e.py --publish $E2E_ARGS: decoder, policies and transformers, one run
# The device tool allows 10 minutes a command: slice with SKIP (steps to leave out) and E2E_ARGS,
#   SKIP="diag memcheck racecheck synccheck initcheck bench e2e" bash bench/gpu_run.sh    # ~6 min
#   SKIP="env build diag tests e2e" bash bench/gpu_run.sh                                # sanitizers, bench
#   SKIP="env build diag tests memcheck racecheck synccheck initcheck bench" \
#     E2E_ARGS="--models llava-1.5-7b --workloads image --batches 1" bash bench/gpu_run.sh
#   (the Qwen2.5-VL-7B slice: E2E_ARGS="--models qwen2.5-vl-7b --workloads image,video32 --batches 1")
# (a later call reuses the in-place build of an earlier one while the machine stays warm). Logs and
# results are copied to $OUT when it is set. Exit status: the first failing step's.
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
  local start=$SECONDS
  if "$@" > "$LOGS/$name.log" 2>&1; then echo "   ok ($((SECONDS - start)) s)"; else local rc=$?; echo "   FAILED ($rc, $((SECONDS - start)) s), see $LOGS/$name.log"; tail -20 "$LOGS/$name.log"; [ $status -ne 0 ] || status=$rc; fi
}
versions() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  git rev-parse --short HEAD 2>/dev/null; date -u
  "$PY" -c "import sys, torch, numpy; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('numpy', numpy.__version__)"
  "$PY" -c "import triton; print('triton', triton.__version__)"
  "$PY" -c "import transformers; print('transformers', transformers.__version__)" || echo "no transformers"
  nvcc --version | tail -1; c++ --version | head -1
}
sanitize() {  # sanitize TOOL: compute-sanitizer TOOL over a small CUDA/Triton subset
  timeout 540 compute-sanitizer --tool "$1" --error-exitcode 3 "$PY" -m pytest -q -x -p no:cacheprovider \
    python_tests/test_variation_drop.py python_tests/test_variation_drop_varlen.py python_tests/test_select_drop.py \
    python_tests/test_kv_compact.py -k "(cuda or triton) and not emulated and (exact or tiny or B1-S7 or B3-S83 or disjoint)"
}
GPU_TESTS_K="not emulated and not emulator"
step env versions
if [ -d bench/wheels ]; then
  step deps "$PY" -m pip install --quiet --no-index --find-links bench/wheels transformers safetensors
fi
step build "$PY" setup.py build_ext --inplace
step diag env OUT="$LOGS/diag" PYTHON="$PY" bash bench/diagnostics/gpu_segv_check.sh
step tests "$PY" -m pytest python_tests -q -p no:cacheprovider -k "$GPU_TESTS_K"
step memcheck sanitize memcheck
step racecheck sanitize racecheck
step synccheck sanitize synccheck
step initcheck sanitize initcheck
step bench "$PY" bench/bench_gpu.py --publish
# shellcheck disable=SC2086
step e2e "$PY" bench/e2e.py --publish ${E2E_ARGS:-}
tail -3 "$LOGS"/*.log 2>/dev/null | tail -60
if [ -n "${OUT:-}" ]; then cp -r bench/results "$OUT/"; fi
exit $status
