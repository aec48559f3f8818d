"""The GPU benchmark script runs end to end (tiny shapes, CPU, Triton under the interpreter), so it
is ready for the next GPU machine. Its times are not checked: speed is claimed from benchmarks only."""

import importlib.util
import os

import pytest

from helpers import TRITON_OK

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_gpu.py")


@pytest.mark.skipif(not TRITON_OK, reason="needs triton")
def test_gpu_benchmark_smoke_run():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--smoke"])
    providers = {r["provider"] for r in rows}
    assert {"reference", "reference-compiled", "triton", "cpu"} <= providers
    assert len(rows) == len(providers) * len(bench.SMOKE_SHAPES)
    assert all(r["same as reference"] for r in rows), [r for r in rows if not r["same as reference"]]
    assert all(r["ms"] > 0 and r["fraction of copy bandwidth"] > 0 for r in rows)
