# The two commands of the README:
#   make demo   - sets everything up (local .venv, pinned deps, build) and runs the demo
#   make test   - sets everything up and runs the test suite
# Other targets: make bench (CPU micro-benchmarks), make build, make clean.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
BUILT  := $(VENV)/.built
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py

.PHONY: demo test bench build clean

$(STAMP): requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(BUILT): $(STAMP) $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(BUILT)

build: $(BUILT)

demo: $(BUILT)
	$(PY) -m v2drop_kernels.demo $(ARGS)

test: $(BUILT)
	$(PY) -m pytest python_tests -q $(ARGS)

bench: $(BUILT)
	$(PY) -m pytest bench/bench_cpu.py --benchmark-only --benchmark-json=bench/results/cpu_benchmark.json -q $(ARGS)

clean:
	rm -rf build $(VENV) v2drop_kernels/*.so *.egg-info
