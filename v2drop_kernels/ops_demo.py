"""Kernel-level demo: V²Drop's progressive pruning on a LLaVA-NeXT-sized input, through the ops alone.

    python -m v2drop_kernels.ops_demo [--dtype bf16] [--batch 1] [--device cpu] [--repeats 5] [--json]

Builds the hidden states of a LLaVA-NeXT prompt (system text, 2880 visual tokens = 5 tiles of
24×24, a question) with a synthetic "salient object" whose tokens change more from layer to layer,
then applies the V²Drop schedule (before layers 3, 17 and 22: keep 50%, 50%, then 0% with a floor
of one token: 2880 → 1440 → 720 → 1) with the fused op, compacts that layer's KV cache, and prints
what was kept, how long each op took, and the same step through the eager reference.
The end-to-end demo with a LLaVA decoder is ``python -m v2drop_kernels.demo``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import v2drop_kernels as v2d
from v2drop_kernels import reference

TEXT_BEFORE, TEXT_AFTER = 35, 40  # system prompt and question tokens
TILES, GRID = 5, 24  # LLaVA-NeXT AnyRes: base image + 4 crops, 24x24 patches each
HIDDEN, LAYERS_KEPT = 4096, (3, 17, 22)
KV_HEADS, HEAD_DIM = 32, 128
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def keep_counts(num_visual: int, ratios=(0.5, 0.5, 0.0)) -> list[int]:
    """Visual tokens left after each drop: a ratio of what is left, with a floor of one."""
    counts, left = [], num_visual
    for r in ratios:
        left = max(1, int(left * r))
        counts.append(left)
    return counts


def salient_map(gen: torch.Generator) -> torch.Tensor:
    """[TILES, GRID, GRID] in [0, 1]: a blob (the object the question is about) in every tile."""
    yy, xx = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    maps = []
    for _ in range(TILES):
        cy, cx = torch.randint(6, GRID - 6, (2,), generator=gen).tolist()
        maps.append(torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0))
    return torch.stack(maps)


def build_inputs(batch: int, dtype: torch.dtype, device: str, gen: torch.Generator):
    num_visual = TILES * GRID * GRID
    seq = TEXT_BEFORE + num_visual + TEXT_AFTER
    vis_mask = torch.zeros(batch, seq, dtype=torch.bool)
    vis_mask[:, TEXT_BEFORE : TEXT_BEFORE + num_visual] = True
    saliency = salient_map(gen).flatten()
    prev = torch.randn(batch, seq, HIDDEN, generator=gen)
    change = 0.2 + 2.0 * saliency  # salient tokens change more between layers
    step = torch.randn(batch, seq, HIDDEN, generator=gen) * 0.2
    step[:, TEXT_BEFORE : TEXT_BEFORE + num_visual] *= change[None, :, None] / 0.2
    hidden = prev + step
    return hidden.to(device, dtype), prev.to(device, dtype), vis_mask.to(device), saliency, num_visual


def timed(fn, repeats: int, device: str):
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, sorted(times)[repeats // 2] * 1e3


def kept_map(keep_pos: torch.Tensor, tile: int = 0) -> str:
    """ASCII map of one tile: '#' kept visual token, '.' dropped."""
    grid = torch.zeros(GRID * GRID, dtype=torch.bool)
    local = keep_pos - TEXT_BEFORE - tile * GRID * GRID
    local = local[(local >= 0) & (local < GRID * GRID)]
    grid[local.cpu()] = True
    return "\n".join("    " + "".join("#" if v else "." for v in row) for row in grid.view(GRID, GRID).tolist())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary only")
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(args.seed)
    dtype = DTYPES[args.dtype]
    hidden, prev, vis_mask, saliency, num_visual = build_inputs(args.batch, dtype, args.device, gen)
    batch, seq, _ = hidden.shape
    position_ids = torch.arange(seq, device=args.device).expand(batch, seq)
    summary = {"device": args.device, "dtype": args.dtype, "batch": batch, "seq": seq, "hidden": HIDDEN, "stages": []}
    say = (lambda *a: None) if args.json else print
    say(f"v2drop ops demo: LLaVA-NeXT-sized prompt, batch {batch}, {seq} tokens ({num_visual} visual, {TILES} tiles of "
        f"{GRID}x{GRID}), hidden {HIDDEN}, {args.dtype} on {args.device}, {torch.get_num_threads()} threads")

    visual_left = num_visual
    for layer, k in zip(LAYERS_KEPT, keep_counts(num_visual)):
        args_drop = (hidden, prev, vis_mask, position_ids, visual_left, k)
        out, t_op = timed(lambda: torch.ops.v2drop.variation_drop(*args_drop), args.repeats, args.device)
        ref, t_ref = timed(lambda: reference.variation_drop(*args_drop), args.repeats, args.device)
        hidden_out, pos_out, keep_pos, mask_out, scores = out
        assert all(torch.equal(a, b) for a, b in zip(out[:4], ref[:4])), "kernel and reference disagree"
        # That layer's KV cache (the tokens that reached it), compacted in place: PyramidDrop's use.
        kv = [torch.randn(batch, KV_HEADS, seq, HEAD_DIM, generator=gen).to(args.device, dtype) for _ in range(2)]
        _, t_kv = timed(lambda: v2d.kv_compact(kv, keep_pos, 2), args.repeats, args.device)
        kept_visual = keep_pos[0][mask_out[0]]
        if layer == LAYERS_KEPT[0]:
            kept = torch.zeros(num_visual, dtype=torch.bool)
            kept[(kept_visual - TEXT_BEFORE).cpu()] = True
            salient = saliency > 0.5
            say(f"\nbefore layer {layer}: {visual_left} -> {k} visual tokens; kept {float(kept[salient].float().mean()):.0%} "
                f"of the tokens on the salient object and {float(kept[~salient].float().mean()):.0%} of the others. "
                f"Tile 0, kept = '#':")
            say(kept_map(kept_visual))
        else:
            say(f"before layer {layer}: {visual_left} -> {k} visual tokens")
        say(f"    variation_drop {t_op:7.2f} ms   eager reference {t_ref:7.2f} ms   ({t_ref / t_op:5.1f}x)   "
            f"kv_compact K+V [{batch}, {KV_HEADS}, {seq}, {HEAD_DIM}] {t_kv:6.2f} ms   tokens {seq} -> {hidden_out.shape[1]}")
        summary["stages"].append({
            "layer": layer, "visual_before": visual_left, "visual_after": k, "seq_after": hidden_out.shape[1],
            "variation_drop_ms": round(t_op, 3), "reference_ms": round(t_ref, 3), "kv_compact_ms": round(t_kv, 3),
            "first_kept_positions": keep_pos[0][mask_out[0]][:8].tolist(),
        })
        # The next layers see the compacted sequence; positions keep their original values.
        prev = hidden_out
        hidden = hidden_out + (0.1 * torch.randn(hidden_out.shape, generator=gen)).to(args.device, dtype)
        vis_mask, position_ids, visual_left, seq = mask_out, pos_out, k, hidden_out.shape[1]
    say(f"\nfinal sequence: {seq} tokens; position ids of the last 3 kept tokens: {position_ids[0, -3:].tolist()} (original)")
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
