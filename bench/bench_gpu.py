"""GPU benchmark of the fused V²Drop step: every backend beside the eager and the compiled reference.

    python bench/bench_gpu.py              # CUDA machine: prints the table, writes bench/out/gpu_<device>.{json,md}
                                           # (--publish: bench/results/, the committed record)
    python bench/bench_gpu.py --smoke      # tiny shapes on CPU (Triton under the interpreter): exercises the
                                           # script end to end; its times mean nothing and nothing is written

Per shape (bf16): the CUDA op (torch.ops.v2drop, when built with CUDA), the Triton op
(torch.ops.v2drop_triton), the eager reference and torch.compile of the reference. Every provider's
output is compared with the eager reference first: one that differs stops the run (nothing of it is
written). Every provider of a shape is timed the same way, and the table names how: CUDA events
(triton.testing.do_bench, median, cold L2) for all; and, for shapes under GRAPH_BYTES where every
provider can be captured (the eager reference, which syncs on nonzero, cannot), CUDA-graph replay
for all as a second column. The device's copy bandwidth is measured first; each row reports the
time, the ratio to the eager and compiled references and to the CUDA op (from the events column),
and the fraction of measured bandwidth achieved by the bytes the op must move (bench/common.py:
drop_bytes). The smoke run times by the wall clock.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (SHAPES, SMOKE_SHAPES, TIMING_METHODS, capturable, copy_bandwidth_gbs, drop_bytes, git_commit,  # noqa: E402
                    markdown_table, median_ms, today, write_results)

GRAPH_BYTES = 64 << 20  # below this many bytes moved, also time by CUDA-graph replay (launch overhead matters)


class ProviderMismatch(RuntimeError):
    """A provider's output differs from the reference's: its time must not be published."""


def measure_shape(shape: str, providers: dict, call: tuple, expected: tuple, device: str, moved: int) -> list[dict]:
    """One row per provider for one shape: checked against ``expected`` (the reference's outputs:
    hidden, position ids, keep_pos and vis_mask must be equal) before anything is timed, then every provider timed by the same
    method(s). Raises :class:`ProviderMismatch` naming the first provider that differs."""
    for provider, fn in providers.items():
        out = fn(*call)
        wrong = [name for i, name in enumerate(("hidden", "position ids", "keep_pos", "vis_mask")) if not torch.equal(out[i], expected[i])]
        if wrong:
            raise ProviderMismatch(f"{provider} differs from the reference on {shape} ({', '.join(wrong)}): not published")
    if device != "cuda":
        methods = ["wall"]
    else:
        methods = ["events"]
        if moved < GRAPH_BYTES and all(capturable(lambda fn=fn: fn(*call)) for fn in providers.values()):
            methods.append("graph")
    rows = []
    for provider, fn in providers.items():
        row = {"shape": shape, "provider": provider, "timing": " + ".join(methods), "bytes": moved}
        for method in methods:
            row[f"{method} ms"] = median_ms(lambda: fn(*call), method)
        row["ms"] = row[f"{methods[0]} ms"]
        row["GB/s"] = moved / (row["ms"] * 1e-3) / 1e9
        rows.append(row)
    times = {r["provider"]: r["ms"] for r in rows}
    for r in rows:
        r["x vs eager"] = times["reference"] / r["ms"]
        r["x vs compiled"] = times["reference-compiled"] / r["ms"]
        r["time / cuda"] = r["ms"] / times["cuda"] if "cuda" in times else None
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: exercise the script only")
    parser.add_argument("--shapes", default=None, help="comma-separated subset of " + ",".join(SHAPES))
    parser.add_argument("--publish", action="store_true", help="write bench/results/ (the committed record) instead of bench/out/")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (use --smoke to exercise the script on CPU)")

    import v2drop_kernels as v2d
    from v2drop_kernels import reference
    from v2drop_kernels.testing import make_hidden, make_mask

    device = "cpu" if args.smoke else "cuda"
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.shapes:
        unknown = sorted(set(args.shapes.split(",")) - set(shapes))
        if unknown:
            parser.error(f"unknown shapes {unknown}; choose from {', '.join(shapes)}")
        shapes = {name: shapes[name] for name in args.shapes.split(",")}
    compiled_reference = torch.compile(reference.variation_drop)
    providers = {"reference": reference.variation_drop, "reference-compiled": compiled_reference}
    # Every native backend of the device (on a GPU: cuda and triton; in the smoke run: cpu and the
    # interpreted triton).
    for name in v2d.available_backends(device):
        if name != "reference":
            providers[name] = v2d.registered_backends()[name].ops.variation_drop

    bandwidth = copy_bandwidth_gbs(device, None if device == "cuda" else 64 << 20)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run, times mean nothing)"
    print(f"v2drop GPU benchmark — {name}; measured copy bandwidth {bandwidth:.0f} GB/s (read + write)")
    rows = []
    for shape, (batch, seq, dim, num_visual, images, k) in shapes.items():
        gen = torch.Generator().manual_seed(0)
        hidden, prev = make_hidden(batch, seq, dim, torch.bfloat16, device, gen)
        mask = make_mask(batch, seq, num_visual, images, gen).to(device)
        pos = torch.arange(seq, device=device).expand(batch, seq)
        call = (hidden, prev, mask, pos, num_visual, k)
        moved = drop_bytes(batch, seq, dim, num_visual, k, hidden.element_size())
        shape_rows = measure_shape(shape, providers, call, reference.variation_drop(*call), device, moved)
        for r in shape_rows:
            r["fraction of copy bandwidth"] = r["GB/s"] / bandwidth
        rows += shape_rows
        del hidden, prev, mask, call
        if device == "cuda":
            torch.cuda.empty_cache()

    timed = [m for m in TIMING_METHODS if any(f"{m} ms" in r for r in rows)]
    columns = [("shape", ""), ("provider", ""), ("timing", ""), *[(f"{m} ms", ".3f") for m in timed], ("x vs eager", ".1f"),
               ("x vs compiled", ".1f"), ("time / cuda", ".2f"), ("GB/s", ".0f"), ("fraction of copy bandwidth", ".0%")]
    table = markdown_table(columns, rows)
    print("\n".join(table))
    if not args.smoke:
        meta = {"device": name, "torch": torch.__version__, "triton": __import__("triton").__version__, "commit": git_commit(),
                "date": today(), "dtype": "bf16", "copy bandwidth GB/s (read + write)": round(bandwidth),
                "timing": "; ".join(f"{m}: {TIMING_METHODS[m]}" for m in timed),
                "checked": "every provider's hidden, position ids, keep_pos and vis_mask equal the eager reference's",
                "command": "python bench/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])}
        stem = "gpu_" + name.lower().replace(" ", "_")
        where = write_results(stem, "GPU benchmark: fused variation_drop (bf16)", meta, rows, table, publish=args.publish)
        print(f"written: {os.path.relpath(where)}/{stem}.{{json,md}}")
    return rows


if __name__ == "__main__":
    main()
