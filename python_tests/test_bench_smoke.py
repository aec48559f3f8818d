"""The GPU benchmark script runs end to end (tiny shapes, CPU, Triton under the interpreter), so it
is ready for the next GPU machine. Its times are not checked: speed is claimed from benchmarks only."""

import importlib.util
import os

import pytest


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_gpu.py")


def test_gpu_benchmark_smoke_run():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--smoke"])
    providers = {r["provider"] for r in rows}
    import v2drop_kernels as v2d

    native = set(v2d.available_backends("cpu")) - {"reference"}  # cpu, and triton under the interpreter
    assert providers == {"reference", "reference-compiled"} | native
    assert len(rows) == len(providers) * len(bench.SMOKE_SHAPES)
    assert all(r["same as reference"] for r in rows), [r for r in rows if not r["same as reference"]]
    assert all(r["ms"] > 0 and r["fraction of copy bandwidth"] > 0 for r in rows)


E2E = os.path.join(os.path.dirname(__file__), "..", "bench", "e2e.py")


def test_e2e_benchmark_cpu_mode_writes_its_results(tmp_path):
    """bench/e2e.py --cpu on one small model and workload: every policy measured, files written."""
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("e2e", E2E)
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    rows = e2e.main(["--cpu", "--models", "tiny-llava-1.5", "--workloads", "image", "--batches", "1",
                     "--repeats", "1", "--long", "4", "--out", str(tmp_path)])
    assert [r["policy"] for r in rows] == ["none", "v2drop", "v2drop-eager-ops", "pdrop", "fastv"]
    by = {r["policy"]: r for r in rows}
    assert by["none"]["visual per layer (avg)"] == 576
    assert by["v2drop"]["visual per layer (avg)"] == by["v2drop-eager-ops"]["visual per layer (avg)"] == (3 * 576 + 14 * 288 + 5 * 144 + 10) / 32
    assert by["v2drop"]["KV after prefill GiB"] < 0.5 * by["none"]["KV after prefill GiB"]
    assert all(r["TTFT ms"] > 0 and r["latency 4 tok ms"] > 0 for r in rows)
    assert all("pruning % of prefill" in r and "TTFT −%" in r for r in rows if r["policy"] != "none")
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"e2e_cpu.{ext}").stat().st_size > 0
    assert "| tiny-llava-1.5 | image | 1 | v2drop |" in e2e.summarize(str(tmp_path / "e2e_cpu.json"))
