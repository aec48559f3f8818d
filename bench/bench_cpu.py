"""CPU micro-benchmark of the fused v2drop.variation_drop against the eager reference and the
torch.compile'd reference, on LLaVA-1.5, LLaVA-NeXT and video shapes in float32 and bfloat16.

Run: `make bench` (or `pytest bench/bench_cpu.py --benchmark-only`; add `--publish` to write
bench/results/). Prints a table (median, ratio to the eager and the compiled reference, fraction of
measured copy bandwidth) and writes bench/out/cpu_variation_drop.{json,md}. Inputs come from
v2drop_kernels.testing, shapes from bench/common.py.
"""

from __future__ import annotations

import pytest
import torch

import v2drop_kernels  # noqa: F401
from common import CPU_SHAPES, SHAPES, drop_bytes
from conftest import bandwidth_gbs, record
from v2drop_kernels import reference
from v2drop_kernels.testing import make_hidden, make_mask

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PROVIDERS = ["v2drop-cpu", "reference", "reference-compiled"]
_compiled = torch.compile(reference.variation_drop)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", CPU_SHAPES)
def test_variation_drop(benchmark, shape, dtype, provider):
    batch, seq, dim, num_visual, images, k = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    hidden, prev = make_hidden(batch, seq, dim, DTYPES[dtype], "cpu", gen)
    mask = make_mask(batch, seq, num_visual, images, gen)
    pos = torch.arange(seq).expand(batch, seq)
    fn = {
        "v2drop-cpu": torch.ops.v2drop.variation_drop,
        "reference": reference.variation_drop,
        "reference-compiled": _compiled,
    }[provider]
    args = (hidden, prev, mask, pos, num_visual, k)
    expected = torch.ops.v2drop.variation_drop(*args)
    got = fn(*args)  # warm-up (and compilation), checked against the kernel
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])

    benchmark.pedantic(fn, args=args, rounds=40, warmup_rounds=3, iterations=1)
    median = benchmark.stats.stats.median
    moved = drop_bytes(batch, seq, dim, num_visual, k, hidden.element_size())
    record({
        "shape": shape, "dtype": dtype, "provider": provider, "median ms": median * 1e3,
        "bytes": moved, "GB/s": moved / median / 1e9, "copy GB/s": bandwidth_gbs(),
        "fraction of copy bandwidth": moved / median / 1e9 / bandwidth_gbs(),
    })
