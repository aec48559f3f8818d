"""Plumbing of the CPU benchmark (bench_cpu.py): the copy-bandwidth probe, and a summary table
(median, ratio to the eager reference, the compiled reference and the compiled plain version,
fraction of measured bandwidth) printed at the end and written to
bench/out/cpu_variation_drop.{json,md} (bench/results/ with --publish)."""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))

from common import copy_bandwidth_gbs, cpu_name, git_commit, markdown_table, today, write_results  # noqa: E402

ROWS: list[dict] = []
COLUMNS = [("shape", ""), ("dtype", ""), ("provider", ""), ("median ms", ".2f"), ("x vs eager reference", ".2f"),
           ("x vs compiled reference", ".2f"), ("x vs plain-compiled", ".2f"), ("GB/s", ".1f"),
           ("fraction of copy bandwidth", ".0%")]
_BANDWIDTH: list[float] = []


def pytest_addoption(parser):
    parser.addoption("--publish", action="store_true", help="write the results to bench/results (committed) instead of bench/out")


def bandwidth_gbs() -> float:
    """The CPU's copy bandwidth, measured once per run."""
    if not _BANDWIDTH:
        _BANDWIDTH.append(copy_bandwidth_gbs("cpu"))
    return _BANDWIDTH[0]


def record(row: dict) -> None:
    ROWS.append(row)


def pytest_terminal_summary(terminalreporter, config):
    if not ROWS:
        return
    for base, column in (("reference", "x vs eager reference"), ("reference-compiled", "x vs compiled reference"),
                         ("plain-compiled", "x vs plain-compiled")):
        ref = {(r["shape"], r["dtype"]): r["median ms"] for r in ROWS if r["provider"] == base}
        for r in ROWS:
            key = (r["shape"], r["dtype"])
            r[column] = ref[key] / r["median ms"] if key in ref else None
    meta = {
        "device": cpu_name(),
        "torch": torch.__version__,
        "commit": git_commit(),
        "date": today(),
        "copy bandwidth GB/s (read + write)": round(bandwidth_gbs(), 1),
        "command": "make bench",
    }
    table = markdown_table(COLUMNS, ROWS)
    terminalreporter.write_line("")
    terminalreporter.write_line("v2drop CPU benchmark — " + "; ".join(f"{k}: {v}" for k, v in meta.items()))
    for line in table:
        terminalreporter.write_line(line)
    where = write_results("cpu_variation_drop", "CPU benchmark: fused variation_drop", meta, ROWS, table,
                          publish=config.getoption("--publish"))
    terminalreporter.write_line(f"written: {os.path.relpath(where)}/cpu_variation_drop.{{json,md}}")
