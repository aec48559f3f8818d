"""Shared by the benchmarks: the shapes, the bytes an op must move, timing, the copy-bandwidth probe,
and result files with device, commit and date.

Results go to ``bench/out/`` (ignored by git) unless a benchmark is asked to publish them
(``--publish``), which writes ``bench/results/``, the committed record the README quotes.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from typing import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")  # committed: written only when publishing
OUT = os.path.join(HERE, "out")  # scratch: every run's default

# variation_drop shapes, name -> (B, S, D, V, images per row, k): LLaVA-1.5 (576 visual tokens),
# LLaVA-NeXT (2880), video 32/64 frames x 196 tokens; k = V / 2.
SHAPES = {
    "llava-1.5": (1, 640, 4096, 576, 1, 288),
    "llava-next": (1, 2944, 4096, 2880, 5, 1440),
    "video-32x196": (1, 6336, 3584, 6272, 32, 3136),
    "video-64x196": (1, 12608, 3584, 12544, 64, 6272),
    "llava-1.5-b8": (8, 640, 4096, 576, 1, 288),
    "llava-next-b8": (8, 2944, 4096, 2880, 5, 1440),
}
CPU_SHAPES = ["llava-1.5", "llava-next", "video-32x196"]
SMOKE_SHAPES = {"tiny": (2, 40, 16, 30, 2, 9), "tiny-b1": (1, 70, 24, 64, 4, 20)}


def drop_bytes(batch: int, seq: int, dim: int, num_visual: int, k: int, elem: int) -> int:
    """Bytes the fused variation_drop must move: the visual rows of hidden and prev once for the
    scores, the surviving rows read and written once for the compaction."""
    return 2 * batch * num_visual * dim * elem + 2 * batch * (seq - num_visual + k) * dim * elem


TIMING_METHODS = {
    "events": "CUDA events around each call (triton.testing.do_bench: median, cold L2)",
    "graph": "CUDA-graph replay of the call (triton.testing.do_bench_cudagraph: median)",
    "wall": "wall clock around each call after a warm-up (median)",
}


def median_ms(fn: Callable[[], object], method: str, *, repeats: int = 7) -> float:
    """Median time of ``fn`` in ms, timed by ``method`` (one of :data:`TIMING_METHODS`). Never
    falls back to another method: a ``graph`` timing of a callable that cannot be captured raises
    (ask :func:`capturable` first, for every callable the timings will be compared with)."""
    if method == "events":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    if method == "graph":
        import triton.testing

        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    if method != "wall":
        raise ValueError(f"timing method must be one of {sorted(TIMING_METHODS)}, got {method!r}")
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[repeats // 2] * 1e3


def capturable(fn: Callable[[], object]) -> bool:
    """Whether ``fn`` can be captured in a CUDA graph (one warm-up call on a side stream, then one
    capture; a call that synchronises the host, such as the eager reference's ``nonzero``, cannot)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
        return True
    except RuntimeError:
        return False
    finally:
        del graph
        torch.cuda.synchronize()


def copy_bandwidth_gbs(device: str, nbytes: int | None = None) -> float:
    """Measured copy bandwidth of ``device``: bytes read + written per second of a tensor copy
    (1 GiB on a GPU, 256 MiB on a CPU)."""
    nbytes = nbytes or ((1 << 30) if device == "cuda" else (256 << 20))
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    method = "events" if device == "cuda" else "wall"
    return 2 * nbytes / (median_ms(lambda: dst.copy_(src), method) * 1e-3) / 1e9


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), its cores and torch's thread count."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def git_commit() -> str:
    """The checkout's commit, "+dirty" when tracked files (other than bench/results) differ from it."""
    try:
        out = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL, cwd=HERE).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":!bench/results"], cwd=os.path.dirname(HERE)).returncode != 0
        return out + ("+dirty" if dirty else "")
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


def write_results(stem: str, title: str, meta: dict, rows: list[dict], table: list[str], *, publish: bool = False,
                  directory: str | None = None) -> str:
    """``<dir>/<stem>.json`` (meta + rows) and ``<stem>.md`` (title, meta line, table), in
    ``directory``, else ``bench/out`` or, with ``publish``, ``bench/results``. Returns the directory."""
    directory = directory or (RESULTS if publish else OUT)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(directory, stem + ".md"), "w") as f:
        f.write(f"# {title}\n\n" + "; ".join(f"{k}: {v}" for k, v in meta.items()) + "\n\n" + "\n".join(table) + "\n")
    return directory
