# The two commands of the README:
#   make demo   - sets everything up (local .venv, pinned deps, build) and runs the demo
#   make test   - sets everything up and runs the test suite
# Other targets: make bench (CPU micro-benchmarks, results in bench/out/), make build, make clean.
# Recipes run silently (their own output only), so `make demo ARGS=--json | jq` pipes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
BUILT  := $(VENV)/.built
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py v2drop_kernels/_version.py
MAKEFLAGS += --no-print-directory

.PHONY: demo test bench build clean

$(STAMP): requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "setting up $(VENV): pinned dependencies (first time: about a minute)" >&2
	@$(PY) -m pip install --quiet -r requirements-dev.txt >&2
	@touch $(STAMP)

$(BUILT): $(STAMP) $(SOURCES)
	@echo "building v2drop_kernels._C (first time: about 2 minutes on 2 cores)" >&2
	@$(PY) -m pip install --quiet --no-build-isolation --no-deps -e . >&2
	@touch $(BUILT)

build: $(BUILT)

demo: $(BUILT)
	@$(PY) -m v2drop_kernels.demo $(ARGS)

test: $(BUILT)
	@$(PY) -m pytest python_tests -q $(ARGS)

bench: $(BUILT)
	@mkdir -p bench/out
	@$(PY) -m pytest bench/bench_cpu.py --benchmark-only --benchmark-json=bench/out/cpu_benchmark.json -q $(ARGS)

clean:
	rm -rf build $(VENV) v2drop_kernels/*.so *.egg-info
