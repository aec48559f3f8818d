#!/usr/bin/env bash
# The prepared GPU run for a lent H100/H200, and its dry run on any CPU machine (CI runs the dry run
# on every change, so a renamed test, flag or file breaks CI, not the one GPU call).
#
#   bash bench/gpu_run.sh             # GPU machine: every step in order, until the call's deadline
#   bash bench/gpu_run.sh --resume    # the next call: skips the steps the record marks ok
#   bash bench/gpu_run.sh --dry-run   # any machine: the same steps in the same order, CPU stand-ins
#   bash bench/gpu_run.sh --list      # the steps and their budgets; runs nothing
#
# A task gets 15 minutes of device time, start-up included, and a command at most 10 minutes: not
# enough for every step, so the order below is the priority (issue 24's), and the run is cut into
# calls by a deadline. A step starts only if its budget fits in what is left of the call's
# CALL_SECONDS (default 560: the device tool's 600 less a margin for the copies and kills), and is
# killed at its budget; the logs and the record (bench/results/gpu_logs/steps.tsv: step, result, seconds, commit, date) are
# copied to $OUT after every step, so a cut call (or one the device tool stops) still returns what
# it did. Commit what came back; call again with --resume at once, while the machine is warm (the
# record travels with the tree; env, deps and build always run, the build in seconds when up to date).
#
# Steps and their budgets (caps) on an H100/H200 with 16 cores: estimates, since no step has run on
# one since the rebuild; the first run's seconds (in the record) replace them.
#   step        budget  GPU machine                                      dry run (CPU stand-in)
#   env           10 s  versions, nvidia-smi                              the same (no nvidia-smi here)
#   deps          40 s  transformers + safetensors from bench/wheels      fetch_wheels.sh --check: its pins exist
#                       (bench/fetch_wheels.sh, carried along)
#   build        150 s  setup.py build_ext --inplace, CUDA kernels        the same (CPU kernels)
#   diag         130 s  bench/diagnostics/gpu_segv_check.sh               the same script
#   tests        230 s  the whole suite on CUDA                           collects the whole suite; runs two files
#   memcheck      75 s  compute-sanitizer over the GPU-backend subset     the subset without a sanitizer
#   racecheck     75 s    (SANITIZE_FILES / SANITIZE_K below)             collects the subset
#   synccheck     60 s                                                    collects the subset
#   initcheck     60 s                                                    collects the subset
#   e2e-llava    240 s  e2e.py: LLaVA-1.5-7B image, batch 1 and 8, all   --plan of the slice, then e2e.py --cpu
#                       rows and the transformers anchors                  on one tiny slice
#   e2e-video    180 s  e2e.py: LLaVA-1.5-7B video 64x196, batch 1        --plan of the slice
#   e2e-qwen     180 s  e2e.py: Qwen2.5-VL-7B image, batch 1              --plan of the slice
#   bench        100 s  bench_gpu.py --publish: the kernels               bench_gpu.py --smoke
# So call 1 = env deps build diag tests (560 s of caps); call 2 (--resume) = the sanitizers and
# e2e-llava, if the device time lasts (start-up takes minutes of the 15); the rest stays
# "not started" in the record for the next task with a GPU.
# Exit status: the first failing step's (a step cut at its budget: 124), else 0.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu; RESUME=0
for arg in "$@"; do
  case $arg in
    --dry-run) MODE=dry;;
    --resume) RESUME=1;;
    --list) MODE=list;;
    *) echo "usage: bash bench/gpu_run.sh [--dry-run | --resume | --list]" >&2; exit 2;;
  esac
done

STEPS="env deps build diag tests memcheck racecheck synccheck initcheck e2e-llava e2e-video e2e-qwen bench"
declare -A BUDGET=([env]=10 [deps]=40 [build]=150 [diag]=130 [tests]=230 [memcheck]=75 [racecheck]=75 [synccheck]=60
                   [initcheck]=60 [e2e-llava]=240 [e2e-video]=180 [e2e-qwen]=180 [bench]=100)
ALWAYS="env deps build"  # run in every call (a fresh machine has neither the wheels installed nor the build)
if [ $MODE = list ]; then
  for s in $STEPS; do printf '%-10s %4s s\n' "$s" "${BUDGET[$s]}"; done
  exit 0
fi

if [ $MODE = dry ]; then
  PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || echo python3 )}
  LOGS=${DRY_RUN_LOGS:-bench/out/gpu_dry_run}
  E2E_OUT=$LOGS/e2e
  CALL_SECONDS=${CALL_SECONDS:-3600}  # the deadline and budgets are not what the dry run tests:
  SLACK=3                             # 2 CPU cores build and test slower than the GPU machine's 16
else
  PY=${PYTHON:-python3}
  LOGS=bench/results/gpu_logs
  E2E_OUT=bench/results/gpu_e2e
  CALL_SECONDS=${CALL_SECONDS:-560}
  SLACK=1
fi
RECORD=$LOGS/steps.tsv
mkdir -p "$LOGS"
[ -f "$RECORD" ] && [ $RESUME = 1 ] || printf 'step\tresult\tseconds\tcommit\tdate\n' > "$RECORD"
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)

# -- what each step runs ------------------------------------------------------------------------------
GPU_TESTS_K="not emulated and not emulator"  # the host-emulated CUDA backend left out: the real one runs
SANITIZE_FILES="python_tests/test_variation_drop.py python_tests/test_variation_drop_varlen.py python_tests/test_select_drop.py python_tests/test_kv_compact.py"
SANITIZE_K="(cuda or triton) and not emulated and (exact or tiny or B1-S7 or B3-S83 or disjoint)"
# e2e slices: repeats 3 and a 32-token long answer keep each slice within its budget
E2E_COMMON="--repeats 3 --long 32"
declare -A E2E_SLICE=(
  [e2e-llava]="--models llava-1.5-7b --workloads image --batches 1,8"
  [e2e-video]="--models llava-1.5-7b --workloads video64 --batches 1 --policies none,v2drop,pdrop,fastv,transformers,transformers+v2drop"
  [e2e-qwen]="--models qwen2.5-vl-7b --workloads image --batches 1 --policies none,v2drop,pdrop,fastv,transformers,transformers+v2drop"
)

versions() {
  if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; else echo "no nvidia-smi"; fi
  echo "commit $COMMIT"; date -u
  "$PY" -c "import sys, torch, numpy; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('numpy', numpy.__version__)"
  "$PY" -c "import triton; print('triton', triton.__version__)"
  "$PY" -c "import transformers; print('transformers', transformers.__version__)" || echo "no transformers (yet)"
  if command -v nvcc > /dev/null; then nvcc --version | tail -1; fi
  c++ --version | head -1
}
sanitize() {  # sanitize TOOL: compute-sanitizer TOOL over the GPU-backend subset
  # shellcheck disable=SC2086
  compute-sanitizer --tool "$1" --error-exitcode 3 "$PY" -m pytest -q -x -p no:cacheprovider $SANITIZE_FILES -k "$SANITIZE_K"
}
subset() {  # subset [pytest args...]: the sanitizers' subset, without a sanitizer
  # shellcheck disable=SC2086
  "$PY" -m pytest -q -p no:cacheprovider $SANITIZE_FILES -k "$SANITIZE_K" "$@"
}
collect_suite() {  # the whole suite collects under the GPU selection, with as many tests as expected
  local n
  n=$("$PY" -m pytest -q -p no:cacheprovider --collect-only python_tests -k "$GPU_TESTS_K" | tail -1 | grep -oE '^[0-9]+')
  echo "the GPU selection collects ${n:-0} tests"
  [ "${n:-0}" -ge 1000 ]
}
e2e_slice() {  # e2e_slice STEP: the slice on the GPU, into its own folder
  # shellcheck disable=SC2086
  "$PY" bench/e2e.py ${E2E_SLICE[$1]} $E2E_COMMON --out "$E2E_OUT/${1#e2e-}"
}
e2e_dry() {  # e2e_dry STEP: the slice's arguments checked; the llava slice also runs in CPU mode
  # shellcheck disable=SC2086
  "$PY" bench/e2e.py ${E2E_SLICE[$1]} $E2E_COMMON --plan || return
  if [ "$1" = e2e-llava ]; then
    "$PY" bench/e2e.py --cpu --models tiny-llava-1.5 --workloads image --batches 1 --repeats 1 --long 4 --out "$E2E_OUT/llava"
  fi
}

run_step() {  # run_step NAME: the step's command for this mode
  case $MODE:$1 in
    *:env) versions;;
    gpu:deps) if [ -d bench/wheels ]; then "$PY" -m pip install --quiet --no-index --find-links bench/wheels transformers safetensors;
              else "$PY" -c "import transformers"; fi;;
    dry:deps) bash bench/fetch_wheels.sh --check;;
    *:build) MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" setup.py build_ext --inplace;;
    *:diag) env OUT="$LOGS/diag" PYTHON="$PY" bash bench/diagnostics/gpu_segv_check.sh;;
    gpu:tests) "$PY" -m pytest python_tests -q -p no:cacheprovider -k "$GPU_TESTS_K";;
    dry:tests) collect_suite && "$PY" -m pytest -q -p no:cacheprovider python_tests/test_errors.py python_tests/test_variation_drop.py -k "$GPU_TESTS_K";;
    gpu:memcheck|gpu:racecheck|gpu:synccheck|gpu:initcheck) sanitize "$1";;
    dry:memcheck) subset;;
    dry:racecheck|dry:synccheck|dry:initcheck) subset --collect-only;;
    gpu:e2e-*) e2e_slice "$1";;
    dry:e2e-*) e2e_dry "$1";;
    gpu:bench) "$PY" bench/bench_gpu.py --publish;;
    dry:bench) "$PY" bench/bench_gpu.py --smoke;;
    *) echo "no command for step $1 in mode $MODE"; return 2;;
  esac
}

# -- the run ------------------------------------------------------------------------------------------
status=0
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$COMMIT" "$(date -u +%FT%TZ)" >> "$RECORD"; }
passed_before() { [ $RESUME = 1 ] && grep -q "^$1"$'\t'"ok"$'\t' "$RECORD"; }
ship() { if [ -n "${OUT:-}" ] && [ $MODE = gpu ]; then mkdir -p "$OUT" && cp -r bench/results "$OUT/"; fi; }
echo "gpu_run ($MODE), commit $COMMIT, python $PY, $CALL_SECONDS s for this call"
for name in $STEPS; do
  case " ${SKIP:-} " in *" $name "*) echo "== $name: skipped (SKIP)"; continue;; esac
  if passed_before "$name" && ! [[ " $ALWAYS " == *" $name "* ]]; then echo "== $name: ok in an earlier call"; continue; fi
  left=$((CALL_SECONDS - SECONDS)); budget=$((BUDGET[$name] * SLACK))
  if [ "$left" -lt "$budget" ]; then
    echo "== $name: not started ($budget s budget, $left s left in this call)"; record "$name" "not started" 0; continue
  fi
  echo "== $name (budget $budget s)"
  start=$SECONDS
  # the step runs in a subshell of this script (its functions), killed at its budget
  timeout --kill-after=10 "$budget" bash -c "$(declare -f run_step versions sanitize subset collect_suite e2e_slice e2e_dry); $(declare -p MODE PY LOGS E2E_OUT COMMIT GPU_TESTS_K SANITIZE_FILES SANITIZE_K E2E_COMMON E2E_SLICE); run_step $name" > "$LOGS/$name.log" 2>&1
  rc=$?
  took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then
    echo "   ok ($took s)"; record "$name" ok "$took"
  else
    [ $rc -eq 124 ] && what="cut at its budget" || what="FAILED ($rc)"
    echo "   $what after $took s, see $LOGS/$name.log"; tail -20 "$LOGS/$name.log"; record "$name" "$what" "$took"
    [ $status -ne 0 ] || status=$rc
  fi
  ship
done
echo "record: $RECORD"; column -t -s "$(printf '\t')" "$RECORD" 2>/dev/null || cat "$RECORD"
ship
exit $status
