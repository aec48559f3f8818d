"""Shared by the benchmarks: bytes an op must move, result files with device, commit and date."""

from __future__ import annotations

import datetime
import json
import os
import subprocess

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def drop_bytes(batch: int, seq: int, dim: int, num_visual: int, k: int, elem: int) -> int:
    """Bytes the fused variation_drop must move: the visual rows of hidden and prev once for the
    scores, the surviving rows read and written once for the compaction."""
    return 2 * batch * num_visual * dim * elem + 2 * batch * (seq - num_visual + k) * dim * elem


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def today() -> str:
    return datetime.date.today().isoformat()


def markdown_table(columns: list[tuple[str, str]], rows: list[dict]) -> list[str]:
    """Lines of a markdown table; ``columns`` are (header, format spec or "") pairs keyed by header."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for header, spec in columns:
            value = r.get(header)
            cells.append("" if value is None else format(value, spec) if spec else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_results(stem: str, title: str, meta: dict, rows: list[dict], table: list[str], directory: str = RESULTS) -> None:
    """<directory>/<stem>.json (meta + rows) and <stem>.md (title, meta line, table); bench/results by default."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(directory, stem + ".md"), "w") as f:
        f.write(f"# {title}\n\n" + "; ".join(f"{k}: {v}" for k, v in meta.items()) + "\n\n" + "\n".join(table) + "\n")
