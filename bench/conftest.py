"""Plumbing of the CPU benchmark (bench_cpu.py): the test helpers on the path, a CPU
copy-bandwidth probe, and a summary table (median, ratio to the eager reference, fraction of
measured bandwidth) printed at the end and written to bench/results/cpu_variation_drop.{json,md}."""

from __future__ import annotations

import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python_tests"))
sys.path.insert(0, os.path.dirname(__file__))

from common import git_commit, markdown_table, today, write_results  # noqa: E402

ROWS: list[dict] = []
COLUMNS = [("shape", ""), ("dtype", ""), ("provider", ""), ("median ms", ".2f"), ("x vs eager reference", ".2f"),
           ("GB/s", ".1f"), ("fraction of copy bandwidth", ".0%")]


def copy_bandwidth_gbs(nbytes: int = 256 << 20, repeats: int = 7) -> float:
    """Measured CPU copy bandwidth (bytes read + written per second), median of ``repeats``."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / sorted(times)[repeats // 2] / 1e9


def record(row: dict) -> None:
    ROWS.append(row)


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    ref = {(r["shape"], r["dtype"]): r["median ms"] for r in ROWS if r["provider"] == "reference"}
    for r in ROWS:
        base = ref.get((r["shape"], r["dtype"]))
        r["x vs eager reference"] = base / r["median ms"] if base else None
    meta = {
        "device": f"CPU {platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "commit": git_commit(),
        "date": today(),
        "copy bandwidth GB/s (read + write)": round(ROWS[0]["copy GB/s"], 1),
    }
    table = markdown_table(COLUMNS, ROWS)
    terminalreporter.write_line("")
    terminalreporter.write_line("v2drop CPU benchmark — " + "; ".join(f"{k}: {v}" for k, v in meta.items()))
    for line in table:
        terminalreporter.write_line(line)
    write_results("cpu_variation_drop", "CPU benchmark: fused variation_drop", meta, ROWS, table)
