"""End-to-end benchmark: latency, throughput and memory of a 7B-sized LLaVA decoder with and without pruning.

    python bench/e2e.py                 # GPU: LLaVA-1.5-7B and LLaVA-OneVision-7B shapes, every workload
    python bench/e2e.py --cpu           # CPU mode: small models and workloads (exercises the script; no claim)
    python bench/e2e.py --models llava-1.5-7b --workloads image,video64 --batches 1 --no-long

Per model shape (random weights: latency does not depend on their values), workload (image 576
visual tokens, high-resolution 2880, video 32×196 and 64×196), batch (1, 8) and policy (none;
V²Drop through the fastest ops backend; V²Drop through the eager reference ops, the way the public
code prunes; PyramidDrop; FastV) it measures:

- TTFT: time to first token (prefill, including the drops, and the first greedy token);
- latency of a short answer (1 and 8 new tokens) and of a long one (256), TPOT and tokens/s;
- peak GPU memory (allocator peak over the 8-token generation, weights included) and the KV bytes
  after prefill;
- the pruning share of prefill: time in the policy's hooks and compactions (synchronised run).

Medians over repeated runs, timed with CUDA events (wall clock on CPU), after a warm-up run.
The LLM alone is timed: the prompt's image features are random tensors (no vision tower).
Results: one table on stdout; bench/results/e2e_<device>.{json,md,png}.

Schedules: images use V²Drop's LLaVA-1.5 schedule (before layers 3, 17, 22 keep 50%, 50%, 0% of
what is left); videos the published video schedule (layers 3, 16, 22 keeping 25% and 5% of the
visual tokens, then one). PyramidDrop: boundaries 8, 16, 24 with λ = 0.5. FastV: K = 2, R = 50%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import git_commit, markdown_table, today, write_results  # noqa: E402

from v2drop_kernels.models import FastV, LlavaConfig, Policy, PyramidDrop, V2Drop  # noqa: E402
from v2drop_kernels.models.llava import Llava  # noqa: E402
from v2drop_kernels.models.tokens import Tokens  # noqa: E402

# name: (layers, hidden, mlp, heads, kv heads, vocab)
MODELS = {
    "llava-1.5-7b": (32, 4096, 11008, 32, 32, 32064),
    "llava-ov-7b": (28, 3584, 18944, 28, 4, 152064),  # Qwen2-7B shape (its q/k/v biases left out)
}
CPU_MODELS = {
    "tiny-llava-1.5": (32, 128, 344, 4, 4, 512),
    "tiny-llava-ov": (28, 112, 592, 4, 1, 512),
}
WORKLOADS = {"image": 576, "highres": 2880, "video32": 32 * 196, "video64": 64 * 196}
CPU_WORKLOADS = {"image": 576, "video8": 8 * 196}
TEXT_BEFORE, TEXT_AFTER = 35, 20  # system prompt, question
PUBLISHED = {  # reductions the papers report, for the README beside ours
    "v2drop_image_latency": 31.5, "v2drop_video_latency": 74.2,
}


def build(name: str, shape, device: str, dtype: torch.dtype) -> Llava:
    layers, hidden, mlp, heads, kv_heads, vocab = shape
    cfg = LlavaConfig.from_hf({
        "model_type": "llava", "image_token_id": vocab - 1,
        "text_config": {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": mlp,
                        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                        "eos_token_id": None, "pad_token_id": 0},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
    })
    with torch.device(device):
        model = Llava(cfg, vision_tower=False).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
    return model.eval()


def policies(workload: str, num_visual: int) -> dict[str, tuple[Policy, str | None]]:
    """Policy name → (policy, ops backend); ``None`` is the fastest backend for the device."""
    if workload.startswith("video"):
        counts = (max(1, round(0.25 * num_visual)), max(1, round(0.05 * num_visual)), 1)
        v2 = lambda: V2Drop(layers=(3, 16, 22), keep=counts)  # noqa: E731
    else:
        v2 = lambda: V2Drop(layers=(3, 17, 22), keep=(0.5, 0.5, 0.0))  # noqa: E731
    return {
        "none": (Policy(), None),
        "v2drop": (v2(), None),
        "v2drop-eager-ops": (v2(), "reference"),
        "pdrop": (PyramidDrop(layers=(8, 16, 24), ratio=0.5), None),
        "fastv": (FastV(k=2, r=0.5), None),
    }


class Timer:
    """Medians of CUDA-event (GPU) or wall-clock (CPU) times, in ms, after one warm-up call."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn, repeats: int) -> tuple[float, object]:
        out = fn()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                out = fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), out


@contextmanager
def pruning_clock(policy: Policy, cuda: bool):
    """Accumulates the time spent in ``policy``'s hooks and in compactions (synchronised)."""
    spent = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            spent[0] += (time.perf_counter() - t0) * 1e3
            return out
        return wrapper

    compact = Tokens.compact
    Tokens.compact = timed(compact)
    policy.before_layer, policy.inside_attention = timed(policy.before_layer), timed(policy.inside_attention)
    try:
        yield spent
    finally:
        Tokens.compact = compact
        del policy.before_layer, policy.inside_attention


def measure(model: Llava, workload: str, num_visual: int, batch: int, name: str, policy: Policy, backend, args, timer):
    cfg, device = model.cfg, model.lm_head.weight.device
    gen = torch.Generator().manual_seed(0)
    text = lambda n: torch.randint(3, cfg.text.vocab_size - 1, (n,), generator=gen)  # noqa: E731
    prompts = [torch.cat([text(TEXT_BEFORE), torch.full((num_visual,), cfg.image_token_id), text(TEXT_AFTER)])
               for _ in range(batch)]
    dtype = model.lm_head.weight.dtype
    features = torch.randn(batch, num_visual, cfg.text.hidden_size, generator=gen).to(device, dtype)

    def run(new: int):
        return model.generate(prompts, image_features=features, max_new_tokens=new, policy=policy, backend=backend)

    ttft, _ = timer(lambda: run(1), args.repeats)
    lat8, out8 = timer(lambda: run(8), args.repeats)
    row = {
        "model": args.model_name, "workload": workload, "batch": batch, "policy": name,
        "prompt tokens": TEXT_BEFORE + num_visual + TEXT_AFTER,
        "visual per layer (avg)": sum(v[0] for v in out8.trace.visual_per_layer) / len(out8.trace.visual_per_layer),
        "TTFT ms": ttft, "latency 1 tok ms": ttft, "latency 8 tok ms": lat8,
        "peak memory GiB": None if out8.peak_memory_bytes is None else out8.peak_memory_bytes / 2**30,
        "KV after prefill GiB": out8.kv_cache_bytes / 2**30,
    }
    if args.long:
        lat_long, _ = timer(lambda: run(args.long), args.long_repeats)
        row[f"latency {args.long} tok ms"] = lat_long
        row["TPOT ms"] = (lat_long - ttft) / (args.long - 1)
        row["tokens/s"] = batch * args.long / lat_long * 1e3
    else:
        row["TPOT ms"] = (lat8 - ttft) / 7
        row["tokens/s"] = batch * 8 / lat8 * 1e3
    if name != "none":
        cuda = device.type == "cuda"
        with pruning_clock(policy, cuda) as spent:
            out = run(1)
        row["pruning % of prefill"] = 100 * spent[0] / out.timings_ms["prefill"]
    return row


def add_reductions(rows: list[dict]) -> None:
    """Per (model, workload, batch): each policy's reduction vs no pruning, in %."""
    base = {(r["model"], r["workload"], r["batch"]): r for r in rows if r["policy"] == "none"}
    for r in rows:
        b = base.get((r["model"], r["workload"], r["batch"]))
        if b is None or r is b:
            continue
        r["TTFT −%"] = 100 * (1 - r["TTFT ms"] / b["TTFT ms"])
        r["latency 1 tok −%"] = r["TTFT −%"]
        r["latency 8 tok −%"] = 100 * (1 - r["latency 8 tok ms"] / b["latency 8 tok ms"])
        mem, base_mem = r["peak memory GiB"], b["peak memory GiB"]
        r["peak memory −%"] = None if mem is None else 100 * (1 - mem / base_mem)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["workload"], r["batch"]) for r in rows}, key=lambda g: [str(x) for x in g])
    names = list(dict.fromkeys(r["policy"] for r in rows))
    memory_key = "peak memory GiB" if any(r["peak memory GiB"] for r in rows) else "KV after prefill GiB"
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(groups) + 4), 4.5))
    width = 0.8 / len(names)
    for ax, key in zip(axes, ("TTFT ms", memory_key)):
        for i, name in enumerate(names):
            values = [next((r[key] for r in rows if (r["model"], r["workload"], r["batch"]) == g and r["policy"] == name), 0)
                      for g in groups]
            ax.bar([x + i * width for x in range(len(groups))], values, width, label=name)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))])
        ax.set_xticklabels([f"{m}\n{w} b{b}" for m, w, b in groups], fontsize=7)
        ax.set_ylabel(key)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = [("model", ""), ("workload", ""), ("batch", ""), ("policy", ""), ("visual per layer (avg)", ".0f"),
           ("TTFT ms", ".2f"), ("TTFT −%", ".1f"), ("latency 8 tok ms", ".2f"), ("latency 8 tok −%", ".1f"),
           ("TPOT ms", ".2f"), ("tokens/s", ".1f"), ("peak memory GiB", ".2f"), ("peak memory −%", ".1f"),
           ("KV after prefill GiB", ".3f"), ("pruning % of prefill", ".2f")]


SUMMARY = [("model", ""), ("workload", ""), ("batch", ""), ("policy", ""), ("visual per layer (avg)", ".0f"),
           ("TTFT ms", ".1f"), ("TTFT −%", ".1f"), ("latency 8 tok −%", ".1f"), ("peak memory −%", ".1f"),
           ("KV after prefill GiB", ".3f"), ("pruning % of prefill", ".2f")]


def summarize(path: str) -> str:
    """The README's results section for one recorded run (``bench/results/e2e_*.json``)."""
    import json

    with open(path) as f:
        run = json.load(f)
    meta = run["meta"]
    head = f"{meta['device']}, {meta['dtype']}, torch {meta['torch']}, commit {meta['commit']}, {meta['date']} ({meta['mode']})"
    return head + "\n\n" + "\n".join(markdown_table(SUMMARY, run["rows"]))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="small models and workloads on CPU (exercises the script)")
    parser.add_argument("--models", help="comma list of " + ", ".join([*MODELS, *CPU_MODELS]))
    parser.add_argument("--workloads", help="comma list of " + ", ".join([*WORKLOADS, *CPU_WORKLOADS]))
    parser.add_argument("--batches", default=None, help="comma list (default 1,8; CPU mode 1,2)")
    parser.add_argument("--policies", default=None, help="comma list (default: none,v2drop,v2drop-eager-ops,pdrop,fastv)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per short measurement (default 5, CPU 3)")
    parser.add_argument("--long", type=int, default=None, help="new tokens of the long answer (default 256, CPU 32)")
    parser.add_argument("--no-long", action="store_true", help="skip the long answer")
    parser.add_argument("--long-repeats", type=int, default=2)
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    parser.add_argument("--out", default=None, help="directory for the JSON, markdown and PNG (default bench/out)")
    parser.add_argument("--publish", action="store_true", help="write to bench/results (the committed record)")
    parser.add_argument("--summarize", metavar="JSON", help="print the README summary of a recorded run and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return []

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu (the small CPU mode)")
    models = CPU_MODELS if args.cpu else MODELS
    workloads = CPU_WORKLOADS if args.cpu else WORKLOADS
    pick = lambda text, pool: {k: pool[k] for k in text.split(",")} if text else pool  # noqa: E731
    models, workloads = pick(args.models, models), pick(args.workloads, workloads)
    batches = [int(b) for b in (args.batches or ("1,2" if args.cpu else "1,8")).split(",")]
    wanted = (args.policies or "none,v2drop,v2drop-eager-ops,pdrop,fastv").split(",")
    args.repeats = args.repeats or (3 if args.cpu else 5)
    args.long = None if args.no_long else (args.long or (32 if args.cpu else 256))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype or ("fp32" if args.cpu else "bf16")]
    timer = Timer(device)

    rows = []
    for model_name, shape in models.items():
        model = build(model_name, shape, device, dtype)
        args.model_name = model_name
        for workload, num_visual in workloads.items():
            for batch in batches:
                for name, (policy, backend) in policies(workload, num_visual).items():
                    if name not in wanted:
                        continue
                    row = measure(model, workload, num_visual, batch, name, policy, backend, args, timer)
                    rows.append(row)
                    print(f"{model_name:15s} {workload:8s} b{batch:<2d} {name:17s} TTFT {row['TTFT ms']:9.2f} ms  "
                          f"8 tok {row['latency 8 tok ms']:9.2f} ms  TPOT {row['TPOT ms']:7.2f} ms", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    add_reductions(rows)

    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU {os.uname().machine}, {torch.get_num_threads()} threads"
    meta = {"device": device_name, "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
            "commit": git_commit(), "date": today(), "mode": "cpu (small models, not a performance claim)" if args.cpu else "gpu",
            "repeats": args.repeats, "long answer tokens": args.long}
    columns = COLUMNS + ([(f"latency {args.long} tok ms", ".1f")] if args.long else [])
    table = markdown_table(columns, rows)
    print("\n" + "\n".join(table))
    stem = "e2e_cpu" if args.cpu else "e2e_" + torch.cuda.get_device_name().split()[-1].lower()
    out = write_results(stem, "End-to-end LLaVA decoder: pruning policies", meta, rows, table, publish=args.publish, directory=args.out)
    plot(rows, os.path.join(out, stem + ".png"), f"{meta['device']} · {meta['dtype']} · commit {meta['commit']} · {meta['date']}")
    print(f"\nwritten: {os.path.join(out, stem)}.{{json,md,png}}")
    return rows


if __name__ == "__main__":
    main()
