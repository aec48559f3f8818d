"""CPU micro-benchmark of the fused v2drop.variation_drop against the eager reference, the
torch.compile'd reference and the same step written plainly in torch and compiled, on LLaVA-1.5,
LLaVA-NeXT and video shapes in float32 and bfloat16.

Run: `make bench` (or `pytest bench/bench_cpu.py --benchmark-only`; add `--publish` to write
bench/results/). The four providers take turns within each of 40 rounds, in a rotating order (this
2-core VM drifts over seconds: timed one after the other they were not comparable); every provider's
hidden states, position ids, kept positions and mask are checked equal to the fused op's first. The
table gives each one's median, its ratio to the eager reference, the compiled reference and the
compiled plain version, and the fraction of measured copy bandwidth, in
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
PROVIDERS = ["v2drop-cpu", "reference", "reference-compiled", "plain-compiled"]
ROUNDS = 40
_compiled = torch.compile(reference.variation_drop)


def plain_variation_drop(hidden, prev, vis_mask, position_ids, num_visual, k):
    """The fused step as a user writes it in plain torch: float32 norms of the change, top-k of the
    visual tokens, a keep mask, the kept positions in order, gathers. Static shapes, so it compiles
    into one graph. It ranks as the op does on the bench's inputs (no NaN; random scores, no ties)."""
    seq = vis_mask.shape[1]
    scores = torch.linalg.vector_norm(hidden.float() - prev.float(), dim=-1).masked_fill(~vis_mask, 0)
    top = scores.masked_fill(~vis_mask, -1).topk(k, dim=1).indices  # scores >= 0: text tokens rank last
    keep = (~vis_mask).scatter(1, top, True)
    keep_pos = torch.where(keep, torch.arange(seq), seq).sort(dim=1).values[:, : seq - num_visual + k]
    hidden_out = hidden.gather(1, keep_pos[..., None].expand(-1, -1, hidden.shape[-1]))
    return hidden_out, position_ids.gather(-1, keep_pos), keep_pos, vis_mask.gather(1, keep_pos), scores


# One static graph per shape and dtype (six, within dynamo's recompile limit), none for dynamic shapes.
_plain_compiled = torch.compile(plain_variation_drop, dynamic=False)


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
    fns = {"v2drop-cpu": torch.ops.v2drop.variation_drop, "reference": reference.variation_drop,
           "reference-compiled": _compiled, "plain-compiled": _plain_compiled}
    args = (hidden, prev, mask, pos, num_visual, k)
    expected = torch.ops.v2drop.variation_drop(*args)
    for name, fn in fns.items():  # warm-up (and compilation), checked against the kernel
        for _ in range(3):
            got = fn(*args)
        for i, what in enumerate(("hidden states", "position ids", "kept positions", "mask")):
            assert torch.equal(got[i], expected[i]), f"{name} differs from v2drop-cpu on {shape} {dtype} ({what})"

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
