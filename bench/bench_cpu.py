"""CPU micro-benchmark of the fused v2drop.variation_drop against the eager reference and the
torch.compile'd reference, on LLaVA-1.5, LLaVA-NeXT and video shapes in float32 and bfloat16.

Run: `make bench` (or `pytest bench/bench_cpu.py --benchmark-only`; add `--publish` to write
bench/results/). The three providers take turns within each of 40 rounds (this 2-core VM drifts
over seconds: timed one after the other they were not comparable); the table gives each one's median,
its ratio to the eager and the compiled reference, and the fraction of measured copy bandwidth, in
bench/out/cpu_variation_drop.{json,md}; pytest-benchmark's statistics cover the fused op. Inputs
come from v2drop_kernels.testing, shapes from bench/common.py.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import v2drop_kernels  # noqa: F401
from common import CPU_SHAPES, SHAPES, drop_bytes
from conftest import bandwidth_gbs, record
from v2drop_kernels import reference
from v2drop_kernels.testing import make_hidden, make_mask

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROVIDERS = ["v2drop-cpu", "reference", "reference-compiled"]
ROUNDS = 40
_compiled = torch.compile(reference.variation_drop)


def interleaved_medians(fns: dict, args: tuple, rounds: int) -> dict[str, float]:
    """Median seconds of each callable, the callables taking turns within every round (in a rotating
    order), so that the machine's drift over the run hits all of them alike."""
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[name](*args)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", CPU_SHAPES)
def test_variation_drop(benchmark, shape, dtype):
    batch, seq, dim, num_visual, images, k = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    hidden, prev = make_hidden(batch, seq, dim, DTYPES[dtype], "cpu", gen)
    mask = make_mask(batch, seq, num_visual, images, gen)
    pos = torch.arange(seq).expand(batch, seq)
    fns = {"v2drop-cpu": torch.ops.v2drop.variation_drop, "reference": reference.variation_drop, "reference-compiled": _compiled}
    args = (hidden, prev, mask, pos, num_visual, k)
    expected = torch.ops.v2drop.variation_drop(*args)
    for fn in fns.values():  # warm-up (and compilation), checked against the kernel
        for _ in range(3):
            got = fn(*args)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])

    medians = interleaved_medians(fns, args, ROUNDS)
    moved = drop_bytes(batch, seq, dim, num_visual, k, hidden.element_size())
    for provider in PROVIDERS:
        median = medians[provider]
        record({
            "shape": shape, "dtype": dtype, "provider": provider, "median ms": median * 1e3,
            "bytes": moved, "GB/s": moved / median / 1e9, "copy GB/s": bandwidth_gbs(),
            "fraction of copy bandwidth": moved / median / 1e9 / bandwidth_gbs(),
        })
    # pytest-benchmark's own statistics (and --benchmark-json) for the fused op
    benchmark.pedantic(fns["v2drop-cpu"], args=args, rounds=ROUNDS, warmup_rounds=1, iterations=1)
