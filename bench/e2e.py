"""End-to-end benchmark: latency, throughput and memory of 7B-sized vision-language models with and
without pruning, beside transformers on the same weights, in one run.

    python bench/e2e.py                 # GPU: LLaVA-1.5-7B, LLaVA-OneVision-7B, Qwen2.5-VL-7B shapes, every workload
    python bench/e2e.py --cpu           # CPU mode: small models and workloads (exercises the script; no claim)
    python bench/e2e.py --models qwen2.5-vl-7b --workloads image,video32 --batches 1 --publish

Per model shape (random weights: latency does not depend on their values), workload (image 576
visual tokens, high-resolution 5×576, video 32×196 and 64×196), and batch (1, 8), one
``transformers`` model is built (SDPA attention, a one-layer vision tower that yields the workload's
visual tokens) and this package's model runs on the same tensors: ``LlavaForConditionalGeneration``
with a CLIP tower (:func:`~v2drop_kernels.models.llava_from_transformers`; the workload's images or
frames are separate images), or ``Qwen2_5_VLForConditionalGeneration``
(:func:`~v2drop_kernels.models.qwen_vl_from_transformers`; the workload is one image of as many
merged patches, high-resolution included, or one video of 32 / 64 grid steps of 14 × 14 tokens).
Rows, by ``policy`` and ``decoder``:

- this decoder (``decoder`` = ``fast``: compiled dense maths, and the decode step in a CUDA graph
  on a GPU): ``none``, ``v2drop`` (fastest ops backend), ``v2drop-eager-ops`` (the reference ops,
  the way the public code prunes), ``pdrop``, ``fastv``;
- this decoder without compilation or graphs (``decoder`` = ``eager``): ``none``, ``v2drop``;
- transformers' stock ``generate`` (``transformers``) and the same with
  ``enable_pruning(V2Drop())`` (``transformers+v2drop``).

Measured: TTFT (a 1-token answer), the latency of an 8-token answer, TPOT (timed per step within
one long answer: our decode lap over its steps; transformers' between its streamed tokens), the
weight-read floor of a decode step (bytes of the decoder weights a step reads / measured copy
bandwidth) and TPOT / floor, tokens/s, peak GPU memory (of the timed 8-token answers: the counter
reset right before each, after the warm-up, the same for every row; the largest of the repeats), KV
bytes after prefill, and the pruning share of prefill (synchronised time in the policy's hooks, from
the decoder's pruning context).
Times are medians (with their range) of ``--repeats`` runs after a warm-up, by CUDA events on a
GPU and wall clock on CPU; reductions are against ``none`` of the same decoder (transformers+v2drop
against transformers). A figure that cannot be (not positive, not finite) stops the run.
Results: a table on stdout; bench/out/e2e_<device>.{json,md,png} (bench/results/ with --publish).

Schedules: LLaVA images use V²Drop's LLaVA-1.5 schedule (before layers 3, 17, 22 keep 50%, 50%, 0%
of what is left); LLaVA videos the published video schedule (layers 3, 16, 22 keeping 25% and 5% of
the visual tokens, then one); Qwen2.5-VL the official Qwen2-VL port's (layers 3, 16, 22 keep 25%,
5%, 0% of what is left). PyramidDrop: boundaries 8, 16, 24 with λ = 0.5. FastV: K = 2, R = 50%.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth_gbs, cpu_name, git_commit, markdown_table, today, write_results  # noqa: E402

from v2drop_kernels.models import (FastV, Policy, PyramidDrop, V2Drop, llava_from_transformers,  # noqa: E402
                                   qwen_vl_from_transformers)

# name: (family, (layers, hidden, mlp, heads, kv heads, vocab))
MODELS = {
    "llava-1.5-7b": ("llava", (32, 4096, 11008, 32, 32, 32064)),
    "llava-ov-7b": ("llava", (28, 3584, 18944, 28, 4, 152064)),  # Qwen2-7B shape (its q/k/v biases left out)
    "qwen2.5-vl-7b": ("qwen2.5-vl", (28, 3584, 18944, 28, 4, 152064)),  # q/k/v biases and M-RoPE
}
CPU_MODELS = {
    "tiny-llava-1.5": ("llava", (32, 128, 344, 4, 4, 512)),
    "tiny-llava-ov": ("llava", (28, 112, 592, 4, 1, 512)),
    "tiny-qwen2.5-vl": ("qwen2.5-vl", (28, 128, 592, 4, 2, 512)),
}
# name: (images or frames, visual tokens each)
WORKLOADS = {"image": (1, 576), "highres": (5, 576), "video32": (32, 196), "video64": (64, 196)}
# Qwen2.5-VL: the same visual tokens as one image or one video, grid (t, h, w) in 14 px patches, merged 2×2
QWEN_GRIDS = {"image": (1, 48, 48), "highres": (1, 96, 120), "video32": (32, 28, 28), "video64": (64, 28, 28),
              "video8": (8, 28, 28)}
CPU_WORKLOADS = {"image": (1, 576), "video8": (8, 196)}
TEXT_BEFORE, TEXT_AFTER = 35, 20  # system prompt, question
# the rows of one (model, workload, batch), selectable with --policies
ROWS = ("none", "v2drop", "v2drop-eager-ops", "pdrop", "fastv", "eager", "transformers", "transformers+v2drop")
PUBLISHED = {"v2drop_image_latency": 31.5, "v2drop_video_latency": 74.2}  # reductions the paper reports


def build(family: str, shape, tokens_per_image: int, device: str, dtype: torch.dtype):
    """transformers' model of ``shape`` (random weights, SDPA, a one-layer vision tower) and this
    package's model on the same tensors."""
    if family == "qwen2.5-vl":
        return build_qwen(shape, device, dtype)
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    layers, hidden, mlp, heads, kv_heads, vocab = shape
    side = math.isqrt(tokens_per_image) * 14
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=side, patch_size=14),
        text_config=LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
                                eos_token_id=None, pad_token_id=0, initializer_range=0.02),
        image_token_id=vocab - 1, vision_feature_layer=-1,
    )
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        hf = LlavaForConditionalGeneration(cfg).to(dtype).eval()
    hf.generation_config.eos_token_id = None
    return hf, llava_from_transformers(hf)


def build_qwen(shape, device: str, dtype: torch.dtype):
    """transformers' Qwen2.5-VL of ``shape`` (a one-block ViT of width 64, 14 px patches merged 2×2)
    and this package's :class:`~v2drop_kernels.models.QwenVL` on the same tensors."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    layers, hidden, mlp, heads, kv_heads, vocab = shape
    head_dim = hidden // heads
    section = [head_dim // 8, 3 * head_dim // 16, head_dim // 2 - head_dim // 8 - 3 * head_dim // 16]  # 7B: 16, 24, 24
    cfg = Qwen2_5_VLConfig(
        text_config={"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
                     "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": 32768,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
                     "eos_token_id": None, "pad_token_id": 0, "initializer_range": 0.02},
        vision_config={"depth": 1, "hidden_size": 64, "out_hidden_size": hidden, "intermediate_size": 128, "num_heads": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                       "fullatt_block_indexes": [0], "tokens_per_second": 2},
        image_token_id=vocab - 3, video_token_id=vocab - 2, vision_start_token_id=vocab - 5, vision_end_token_id=vocab - 4,
    )
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        hf = Qwen2_5_VLForConditionalGeneration(cfg).to(dtype).eval()
    hf.generation_config.eos_token_id = None
    return hf, qwen_vl_from_transformers(hf)


def policies(workload: str, num_visual: int, family: str = "llava") -> dict[str, tuple[Policy, str | None]]:
    """Policy name → (policy, ops backend); ``None`` is the fastest backend for the device."""
    if family == "qwen2.5-vl":
        v2 = lambda: V2Drop(schedule="qwen2-vl")  # noqa: E731
    elif workload.startswith("video"):
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
    """Times a call by CUDA events (GPU) or the wall clock (CPU), in ms, and measures its peak GPU
    memory: the peak counter is reset right before the call and read right after it, for every row
    alike (the callers warm up first, so compilation and first allocations are not in it)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn) -> tuple[float, object, int | None]:
        """(ms, what ``fn`` returned, peak bytes allocated during the call or None on CPU)."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out, torch.cuda.max_memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t0) * 1e3, out, None


def peak_gib(peaks: list) -> float | None:
    """The largest of the timed calls' peaks, in GiB (None on CPU)."""
    return None if peaks[0] is None else max(peaks) / 2**30


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def check_figure(row: dict, key: str) -> None:
    value = row.get(key)
    if value is not None and not (math.isfinite(value) and value > 0):
        raise RuntimeError(f"impossible figure {key}={value} in {row['model']}/{row['workload']}/b{row['batch']}/{row['policy']}")


class Workload:
    """Prompts (text, the visual tokens, text) and vision inputs for one workload and batch:
    ``vision_args`` for this package's ``generate``, ``hf_kwargs`` for transformers'."""

    def __init__(self, hf, family: str, workload: str, images: int, per_image: int, batch: int, device: str):
        cfg = hf.config
        gen = torch.Generator().manual_seed(0)
        text = lambda n: torch.randint(3, cfg.text_config.vocab_size - 8, (n,), generator=gen)  # noqa: E731
        if family == "qwen2.5-vl":
            t, h, w = QWEN_GRIDS[workload]
            video = workload.startswith("video")
            token = cfg.video_token_id if video else cfg.image_token_id
            span = torch.tensor([cfg.vision_start_token_id, *[token] * (t * h * w // 4), cfg.vision_end_token_id])
            row = torch.cat([text(TEXT_BEFORE), span, text(TEXT_AFTER)])
            patches = torch.randn(batch * t * h * w, 3 * 2 * 14 * 14, generator=gen).to(device, hf.dtype)
            grid = torch.tensor([[t, h, w]] * batch, device=device)
            self.vision_args = (None, None, patches, grid) if video else (patches, grid)
            types = torch.zeros(batch, row.numel(), dtype=torch.int32)
            types[:, row.eq(token)] = 2 if video else 1
            self.hf_kwargs = ({"pixel_values_videos": patches, "video_grid_thw": grid} if video else
                              {"pixel_values": patches, "image_grid_thw": grid}) | {"mm_token_type_ids": types.to(device)}
            self.num_visual = t * h * w // 4
        else:
            row = torch.cat([text(TEXT_BEFORE), torch.full((images * per_image,), cfg.image_token_id), text(TEXT_AFTER)])
            side = cfg.vision_config.image_size
            pixels = torch.randn(batch * images, 3, side, side, generator=gen).to(device, hf.dtype)
            self.vision_args, self.hf_kwargs = (pixels,), {"pixel_values": pixels}
            self.num_visual = images * per_image
        self.prompts = [row] * batch
        self.ids = torch.stack(self.prompts).to(device)


def measure_ours(model, work: Workload, policy: Policy, backend, args, timer, graph: bool) -> dict:
    def run(new: int, **kw):
        return model.generate(work.prompts, *work.vision_args, max_new_tokens=new, policy=policy, backend=backend,
                              cuda_graph=graph, **kw)

    def timed_runs(new: int) -> tuple[list[float], list, list]:
        # A warm-up of each answer length first: the decode buffers and the captured graph depend on
        # it (compilation, allocation and capture stay out of the timed runs).
        run(new)
        times, outs, peaks = zip(*[timer(lambda: run(new)) for _ in range(args.repeats)])
        return list(times), list(outs), list(peaks)

    model.release_decode_buffers()  # the previous row's buffers must not count in this row's memory
    ttft, _, _ = timed_runs(1)
    lat8, outs8, peaks8 = timed_runs(8)
    _, longs, _ = timed_runs(args.long)
    out8 = outs8[-1]
    row = {
        "visual per layer (avg)": sum(v[0] for v in out8.trace.visual_per_layer) / len(out8.trace.visual_per_layer),
        "TTFT": stats(ttft), "latency 8 tok": stats(lat8),
        "TPOT": stats([o.timings_ms["decode"] / (o.tokens.shape[1] - 1) for o in longs]),
        "peak memory GiB": peak_gib(peaks8),
        "KV after prefill GiB": out8.kv_cache_bytes / 2**30,
    }
    if policy.layers:
        timed = run(1, time_pruning=True)
        row["pruning % of prefill"] = 100 * timed.trace.pruning_ms / timed.timings_ms["prefill"]
    return row


def measure_transformers(hf, work: Workload, policy: Policy | None, args, timer) -> dict:
    from transformers.generation.streamers import BaseStreamer

    from v2drop_kernels.integrations.transformers import enable_pruning

    class Stamps(BaseStreamer):  # the time each new token reaches the streamer
        def __init__(self):
            self.times = []

        def put(self, value):
            if timer.cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

        def end(self):
            pass

    def run(new: int, streamer=None):
        return hf.generate(input_ids=work.ids, **work.hf_kwargs, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=0, streamer=streamer)

    handle = enable_pruning(hf, policy) if policy is not None else None
    try:
        with torch.inference_mode():
            run(args.long)  # warm-up
            ttft = [timer(lambda: run(1))[0] for _ in range(args.repeats)]
            lat8, _, peaks8 = zip(*[timer(lambda: run(8)) for _ in range(args.repeats)])
            tpot = []
            for _ in range(args.repeats):
                stamps = Stamps()
                run(args.long, stamps)
                new_tokens = stamps.times[1:]  # the first put is the prompt
                tpot.append((new_tokens[-1] - new_tokens[0]) * 1e3 / (len(new_tokens) - 1))
        row = {"TTFT": stats(ttft), "latency 8 tok": stats(list(lat8)), "TPOT": stats(tpot), "peak memory GiB": peak_gib(list(peaks8))}
        if handle is not None:
            visual = handle.trace.visual_per_layer
            row["visual per layer (avg)"] = sum(v[0] for v in visual) / len(visual)
        else:
            row["visual per layer (avg)"] = float(work.num_visual)
        return row
    finally:
        if handle is not None:
            handle.disable()


def weight_bytes(model) -> int:
    """Bytes of the weights a decode step reads: every decoder layer, the final norm, the LM head
    (the embedding table is read one row a token)."""
    lm = model.language_model
    tensors = [p for p in lm.layers.parameters()] + [p for p in lm.norm.parameters()] + [model.lm_head.weight]
    return sum(p.numel() * p.element_size() for p in tensors)


def finish_row(row: dict, base: dict | None, floor_ms: float) -> None:
    """Flattens the medians, adds the floor ratio, tokens/s and the reductions against ``base``."""
    for key in ("TTFT", "latency 8 tok", "TPOT"):
        s = row.pop(key)
        row[f"{key} ms"] = s["median"]
        row[f"{key} ms range"] = [s["min"], s["max"]]
    row["weight floor ms"] = floor_ms
    row["TPOT / floor"] = row["TPOT ms"] / floor_ms
    row["tokens/s"] = row["batch"] * 1e3 / row["TPOT ms"]
    for key in ("TTFT ms", "latency 8 tok ms", "TPOT ms", "weight floor ms"):
        check_figure(row, key)
    if base is not None and base is not row:
        row["TTFT −%"] = 100 * (1 - row["TTFT ms"] / base["TTFT ms"])
        row["latency 8 tok −%"] = 100 * (1 - row["latency 8 tok ms"] / base["latency 8 tok ms"])
        mem, base_mem = row.get("peak memory GiB"), base.get("peak memory GiB")
        row["peak memory −%"] = None if mem is None or not base_mem else 100 * (1 - mem / base_mem)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["workload"], r["batch"]) for r in rows}, key=lambda g: [str(x) for x in g])
    names = list(dict.fromkeys(label(r) for r in rows))
    memory_key = "peak memory GiB" if any(r.get("peak memory GiB") for r in rows) else "KV after prefill GiB"
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 1.8 * len(groups) + 5), 4.8))
    width = 0.8 / len(names)
    for ax, key in zip(axes, ("TTFT ms", memory_key)):
        for i, name in enumerate(names):
            values = [next((r.get(key) or 0 for r in rows if (r["model"], r["workload"], r["batch"]) == g and label(r) == name), 0)
                      for g in groups]
            ax.bar([x + i * width for x in range(len(groups))], values, width, label=name)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))])
        ax.set_xticklabels([f"{m}\n{w} b{b}" for m, w, b in groups], fontsize=7)
        ax.set_ylabel(key)
    axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def label(row: dict) -> str:
    return row["policy"] if row["decoder"] in ("fast", "transformers") else f"{row['policy']} ({row['decoder']})"


COLUMNS = [("model", ""), ("workload", ""), ("batch", ""), ("policy", ""), ("decoder", ""), ("visual per layer (avg)", ".0f"),
           ("TTFT ms", ".2f"), ("TTFT −%", ".1f"), ("latency 8 tok ms", ".2f"), ("latency 8 tok −%", ".1f"),
           ("TPOT ms", ".2f"), ("weight floor ms", ".2f"), ("TPOT / floor", ".1f"), ("tokens/s", ".1f"),
           ("peak memory GiB", ".2f"), ("peak memory −%", ".1f"), ("KV after prefill GiB", ".3f"), ("pruning % of prefill", ".2f")]
SUMMARY = [("model", ""), ("workload", ""), ("batch", ""), ("policy", ""), ("decoder", ""), ("TTFT ms", ".1f"), ("TTFT −%", ".1f"),
           ("latency 8 tok −%", ".1f"), ("TPOT ms", ".2f"), ("TPOT / floor", ".1f"), ("peak memory −%", ".1f"),
           ("pruning % of prefill", ".2f")]


def summarize(path: str) -> str:
    """The README's results section for one recorded run (``e2e_*.json``); refuses impossible figures."""
    import json

    with open(path) as f:
        run = json.load(f)
    for row in run["rows"]:
        for key in ("TTFT ms", "latency 8 tok ms", "TPOT ms"):
            check_figure(row, key)
    meta = run["meta"]
    head = (f"{meta['device']}, {meta['dtype']}, torch {meta['torch']}, commit {meta['commit']}, {meta['date']} ({meta['mode']}); "
            f"copy bandwidth {meta['copy bandwidth GB/s (read + write)']} GB/s; `{meta['command']}`")
    return head + "\n\n" + "\n".join(markdown_table(SUMMARY, run["rows"]))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="small models and workloads on CPU (exercises the script)")
    parser.add_argument("--models", help="comma list of " + ", ".join([*MODELS, *CPU_MODELS]))
    parser.add_argument("--workloads", help="comma list of " + ", ".join([*WORKLOADS, *CPU_WORKLOADS]))
    parser.add_argument("--batches", default=None, help="comma list (default 1,8; CPU mode 1,2)")
    parser.add_argument("--policies", default=None, help="comma list of rows (default: all): " + ", ".join(ROWS)
                                                         + " (eager: the eager-decoder rows)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5, CPU 3)")
    parser.add_argument("--long", type=int, default=None, help="new tokens of the answer TPOT is timed on (default 64, CPU 16)")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    parser.add_argument("--no-compile", action="store_true", help="the fast rows without torch.compile")
    parser.add_argument("--out", default=None, help="directory for the JSON, markdown and PNG (default bench/out)")
    parser.add_argument("--publish", action="store_true", help="write to bench/results (the committed record)")
    parser.add_argument("--summarize", metavar="JSON", help="print the README summary of a recorded run and exit")
    parser.add_argument("--plan", action="store_true", help="check the arguments, print the runs they select and exit "
                                                            "(no model is built; no GPU needed)")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return []

    def pick(what: str, text: str | None, pool) -> dict | set:
        if not text:
            return pool
        unknown = sorted(set(text.split(",")) - set(pool))
        if unknown:
            parser.error(f"unknown {what} {unknown} {'in CPU mode ' if args.cpu else ''}(choose from {', '.join(pool)})")
        return {k: pool[k] for k in text.split(",")} if isinstance(pool, dict) else set(text.split(","))

    models = pick("models", args.models, CPU_MODELS if args.cpu else MODELS)
    workloads = pick("workloads", args.workloads, CPU_WORKLOADS if args.cpu else WORKLOADS)
    batches = [int(b) for b in (args.batches or ("1,2" if args.cpu else "1,8")).split(",")]
    wanted = pick("policies", args.policies, set(ROWS))
    if args.plan:
        for model_name in models:
            for workload in workloads:
                print(f"{model_name} {workload} batches {batches}: {', '.join(r for r in ROWS if r in wanted)}")
        return []
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu (the small CPU mode)")
    args.repeats = args.repeats or (3 if args.cpu else 5)
    args.long = args.long or (16 if args.cpu else 64)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype or ("fp32" if args.cpu else "bf16")]
    timer = Timer(device)
    graph = device == "cuda"
    bandwidth = copy_bandwidth_gbs(device)

    rows = []
    for model_name, (family, shape) in models.items():
        # LLaVA: one model per tokens-per-image (its CLIP tower's image size); Qwen: one for every workload
        sizes = [None] if family == "qwen2.5-vl" else sorted({per for _, per in workloads.values()})
        for per_image in sizes:
            torch.compiler.reset()  # the previous model's compiled graphs are of no further use
            hf, ours = build(family, shape, per_image, device, dtype)
            floor_ms = weight_bytes(ours) / (bandwidth * 1e9) * 1e3
            for workload, (images, per) in workloads.items():
                if per_image is not None and per != per_image:
                    continue
                for batch in batches:
                    work = Workload(hf, family, workload, images, per, batch, device)
                    head = {"model": model_name, "workload": workload, "batch": batch, "prompt tokens": work.ids.shape[1]}
                    measured: list[dict] = []

                    def add(policy_name: str, decoder: str, row: dict) -> None:
                        row.update(head, policy=policy_name, decoder=decoder)
                        if "KV after prefill GiB" not in row:
                            row["KV after prefill GiB"] = None
                        measured.append(row)
                        print(f"{model_name:15s} {workload:8s} b{batch:<2d} {policy_name:19s} {decoder:12s} "
                              f"TTFT {row['TTFT']['median']:9.2f} ms  8 tok {row['latency 8 tok']['median']:9.2f} ms  "
                              f"TPOT {row['TPOT']['median']:7.2f} ms", flush=True)

                    # (decoder, compiled, CUDA graph, rows): the fast decoder for every policy; the eager
                    # one (no compilation, no graph) for none and v2drop
                    configs = [("fast", not args.no_compile, graph, [n for n in policies(workload, 1, family) if n in wanted])]
                    if "eager" in wanted:
                        configs.append(("eager", False, False, ["none", "v2drop"]))
                    for decoder, compiled, use_graph, names in configs:
                        ours.decoder.compile(compiled)
                        for name in names:
                            policy, backend = policies(workload, work.num_visual, family)[name]
                            add(name, decoder, measure_ours(ours, work, policy, backend, args, timer, use_graph))
                    ours.release_decode_buffers()
                    for name, policy in (("transformers", None),
                                         ("transformers+v2drop", policies(workload, work.num_visual, family)["v2drop"][0])):
                        if name in wanted:
                            add(name, "transformers", measure_transformers(hf, work, policy, args, timer))
                    bases = {(r["decoder"]): r for r in measured if r["policy"] in ("none", "transformers")}
                    for r in measured:
                        finish_row(r, bases.get(r["decoder"]), floor_ms)
                    rows.extend(measured)
            del hf, ours
            if device == "cuda":
                torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    import transformers

    meta = {"device": device_name, "torch": torch.__version__, "transformers": transformers.__version__,
            "dtype": str(dtype).removeprefix("torch."), "commit": git_commit(), "date": today(),
            "mode": "cpu (small models, not a performance claim)" if args.cpu else "gpu", "repeats": args.repeats,
            "long answer tokens": args.long, "copy bandwidth GB/s (read + write)": round(bandwidth, 1),
            "command": "python bench/e2e.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    table = markdown_table(COLUMNS, rows)
    print("\n" + "\n".join(table))
    stem = "e2e_cpu" if args.cpu else "e2e_" + torch.cuda.get_device_name().split()[-1].lower()
    out = write_results(stem, "End-to-end VLM decoders: pruning policies beside transformers", meta, rows, table,
                        publish=args.publish, directory=args.out)
    plot(rows, os.path.join(out, stem + ".png"), f"{meta['device']} · {meta['dtype']} · commit {meta['commit']} · {meta['date']}")
    print(f"\nwritten: {os.path.join(out, stem)}.{{json,md,png}}")
    return rows


if __name__ == "__main__":
    main()
