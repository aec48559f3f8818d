"""Benchmark plumbing: the test helpers on the path, a CPU copy-bandwidth probe, and a summary
table (median, ratio to the eager reference, fraction of measured bandwidth) printed at the end and
written to bench/results/ as JSON and markdown."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python_tests"))

RESULTS = os.path.join(os.path.dirname(__file__), "results")
ROWS: list[dict] = []


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


@pytest.fixture(scope="session")
def bandwidth_gbs() -> float:
    return copy_bandwidth_gbs()


def record(row: dict) -> None:
    ROWS.append(row)


def _commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    ref = {(r["shape"], r["dtype"]): r["median_ms"] for r in ROWS if r["provider"] == "reference"}
    for r in ROWS:
        base = ref.get((r["shape"], r["dtype"]))
        r["speedup_vs_reference"] = round(base / r["median_ms"], 2) if base else None
    header = "| shape | dtype | provider | median ms | × vs eager reference | GB/s | fraction of copy bandwidth |"
    lines = [header, "|" + "---|" * 7]
    for r in ROWS:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['provider']} | {r['median_ms']:.2f} | {r['speedup_vs_reference']} "
            f"| {r['gbs']:.1f} | {r['bandwidth_fraction']:.0%} |"
        )
    meta = {
        "device": f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "commit": _commit(),
        "date": datetime.date.today().isoformat(),
        "copy_bandwidth_gbs": ROWS[0]["copy_gbs"],
    }
    terminalreporter.write_line("")
    terminalreporter.write_line(f"v2drop CPU benchmark — {meta['device']}, measured copy bandwidth {meta['copy_bandwidth_gbs']:.1f} GB/s")
    for line in lines:
        terminalreporter.write_line(line)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "cpu_variation_drop.json"), "w") as f:
        json.dump({"meta": meta, "rows": ROWS}, f, indent=1)
    with open(os.path.join(RESULTS, "cpu_variation_drop.md"), "w") as f:
        f.write(f"# CPU benchmark: fused variation_drop\n\n{meta['device']}; torch {meta['torch']}; commit {meta['commit']}; "
                f"{meta['date']}; measured copy bandwidth {meta['copy_bandwidth_gbs']:.1f} GB/s (read + write).\n\n")
        f.write("\n".join(lines) + "\n")
