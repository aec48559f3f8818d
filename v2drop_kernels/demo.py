"""Demo: a LLaVA model generating with and without visual-token pruning.

    python -m v2drop_kernels.demo [--model PATH] [--image IMG] [--prompt TEXT] [--max-new-tokens N]
                                  [--policy none|v2drop|pdrop|fastv] [--layers 3,17,22] [--keep 0.5,0.5,0]
                                  [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--json] [--heatmap out.png]

Without ``--model`` it builds, in process and with nothing downloaded, a small randomly initialised
LLaVA-1.5-shaped model (32 decoder layers of width 128, a 336 px CLIP tower: 576 visual tokens)
and a synthetic image. Random weights generate meaningless token ids; the demo shows the
mechanics: which visual tokens each layer keeps, the time of each phase, the memory. With
``--model`` it loads an HF LLaVA-1.5 checkpoint folder (``llava-hf`` layout), and its processor or
tokenizer when the folder has one.

``--keep`` lists, per pruning layer, the visual tokens kept: counts (``288,144,1``) or ratios of
what is left (``0.5,0.5,0``, floor of one token).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from .models import Llava, load_llava, make_policy, random_llava, tiny_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PROMPT = "USER: <image>\nWhat is the red object in the picture? ASSISTANT:"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def parse_list(text: str | None, kind):
    return None if text is None else [kind(v) for v in text.split(",") if v.strip()]


def parse_keep(text: str | None):
    """``288,144,1`` → counts; ``0.5,0.5,0`` → ratios (a value with a '.' or below 1 is a ratio)."""
    if text is None:
        return None
    values = []
    for v in text.split(","):
        v = v.strip()
        values.append(float(v) if "." in v or float(v) < 1 else int(v))
    return values


def synthetic_image(size: int = 336):
    """A grey gradient with a red disk in the upper left: the 'object' the default prompt asks about."""
    from PIL import Image, ImageDraw

    img = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((size * 0.15, size * 0.2, size * 0.45, size * 0.5), fill=(220, 30, 30))
    draw.rectangle((size * 0.6, size * 0.6, size * 0.9, size * 0.75), fill=(40, 90, 200))
    return img


def pixel_values(image, size: int) -> torch.Tensor:
    """CLIP preprocessing: resize the short side, centre crop, normalise. ``[1, 3, size, size]``."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    image = image.convert("RGB").resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None])[None]


def byte_tokens(text: str, model: Llava) -> torch.Tensor:
    """Prompt ids without a tokenizer (random model): one id per byte, ``<image>`` → the image tokens."""
    cfg, vocab = model.cfg, model.cfg.text.vocab_size
    ids = [cfg.text.bos_token_id or 1]
    for i, part in enumerate(text.split("<image>")):
        if i:
            ids += [cfg.image_token_id] * cfg.tokens_per_image
        ids += [3 + b % (vocab - 4) for b in part.encode()]
    return torch.tensor(ids)


def build_inputs(model: Llava, folder: Path | None, image, prompt: str):
    """``(input_ids, pixel_values, decode)``: the folder's processor/tokenizer when there is one."""
    size = model.cfg.vision["image_size"]
    if folder is not None:
        try:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(folder)
            inputs = processor(images=image, text=prompt, return_tensors="pt")
            return inputs["input_ids"][0], inputs["pixel_values"], processor.tokenizer.decode
        except (OSError, ValueError, TypeError, KeyError):
            pass
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(folder)
            parts = [tok(p, add_special_tokens=(i == 0))["input_ids"] for i, p in enumerate(prompt.split("<image>"))]
            ids = parts[0]
            for part in parts[1:]:
                ids = ids + [model.cfg.image_token_id] * model.cfg.tokens_per_image + part
            return torch.tensor(ids), pixel_values(image, size), tok.decode
        except (OSError, ValueError, TypeError, KeyError):
            pass
    return byte_tokens(prompt, model), pixel_values(image, size), None


def layer_runs(per_layer: list[int]) -> str:
    """``[576, 576, 576, 288, ...]`` → ``layers 0-2: 576 | 3-16: 288 | ...``."""
    runs, start = [], 0
    for i in range(1, len(per_layer) + 1):
        if i == len(per_layer) or per_layer[i] != per_layer[start]:
            span = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            runs.append(f"{span}: {per_layer[start]}")
            start = i
    return "layers " + " | ".join(runs)


def save_heatmap(path: str, image, scores: torch.Tensor, kept: torch.Tensor) -> None:
    """The image beside the same image overlaid with one score per patch (blue low, yellow high);
    ``kept`` (bool, one per patch) leaves the kept patches bright and darkens the dropped ones."""
    from PIL import Image

    grid = math.isqrt(scores.numel())
    heat = scores[: grid * grid].float().cpu().view(grid, grid)
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    shade = torch.where(kept[: grid * grid].cpu().view(grid, grid), 1.0, 0.35)[..., None]
    rgb = torch.stack([heat, heat * 0.85 + 0.1, 1 - heat], dim=-1) * shade
    size = 336
    base = image.convert("RGB").resize((size, size))
    overlay = Image.fromarray((rgb * 255).byte().numpy(), "RGB").resize((size, size), Image.NEAREST)
    canvas = Image.new("RGB", (2 * size + 8, size), "white")
    canvas.paste(base, (0, 0))
    canvas.paste(Image.blend(base, overlay, 0.75), (size + 8, 0))
    canvas.save(path)


def summarise(name: str, out, decode) -> dict:
    tokens = out.tokens[0].tolist()
    return {
        "policy": name,
        "generated_ids": tokens,
        "generated_text": decode(tokens) if decode else None,
        "visual_tokens_per_layer": [v[0] for v in out.trace.visual_per_layer],
        "timings_ms": {k: round(v, 2) for k, v in out.timings_ms.items()},
        "kv_cache_bytes": out.kv_cache_bytes,
        "peak_memory_bytes": out.peak_memory_bytes,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF LLaVA-1.5 checkpoint folder (default: a small random model built here)")
    parser.add_argument("--image", help="image file (default: a synthetic picture)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text with one <image> placeholder")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--policy", choices=["none", "v2drop", "pdrop", "fastv"], default="v2drop")
    parser.add_argument("--layers", help="pruning layers, e.g. 3,17,22 (fastv: K)")
    parser.add_argument("--keep", help="visual tokens kept after each pruning layer: counts 288,144,1 or ratios 0.5,0.5,0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--backend", choices=["cpu", "cuda", "triton", "reference"], default=None,
                        help="ops backend (default: the fastest for the device)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary only")
    parser.add_argument("--heatmap", help="save the first drop's scores over the image grid as a PNG")
    args = parser.parse_args(argv)
    say = (lambda *a: None) if args.json else print
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    torch.manual_seed(args.seed)

    if args.model:
        model = load_llava(args.model, dtype=dtype, device=args.device)
        source = args.model
    else:
        model = random_llava(tiny_config(), seed=args.seed, dtype=dtype, device=args.device)
        source = "random LLaVA-1.5-shaped model (32 layers x 128 wide, CLIP 336 px / 14: 576 visual tokens)"
    from PIL import Image

    image = Image.open(args.image) if args.image else synthetic_image()
    ids, pix, decode = build_inputs(model, Path(args.model) if args.model else None, image, args.prompt)
    ids, pix = ids.to(args.device), pix.to(args.device)
    policy = make_policy(args.policy, parse_list(args.layers, int), parse_keep(args.keep))
    num_layers = len(model.language_model.layers)
    say(f"v2drop demo: {source}\n  {ids.numel()} prompt tokens ({int((ids == model.cfg.image_token_id).sum())} visual), "
        f"{args.dtype or ('bf16' if dtype == torch.bfloat16 else 'fp32')} on {args.device}, policy {policy.describe()}")

    progress = not args.json and args.max_new_tokens >= 64
    model.generate([ids], pix, max_new_tokens=2, policy=policy, backend=args.backend)  # warm-up
    runs = {}
    for name, pol in ((policy.describe(), policy), ("none", make_policy("none"))):
        if name not in runs:
            out = model.generate([ids], pix, max_new_tokens=args.max_new_tokens, policy=pol, backend=args.backend,
                                 progress=progress)
            runs[name] = (out, summarise(name, out, decode))
    pruned, baseline = runs[policy.describe()], runs["none"]

    for name, (out, s) in runs.items():
        t = s["timings_ms"]
        say(f"\n[{name}]")
        say(f"  generated ids: {s['generated_ids']}")
        if s["generated_text"] is not None:
            say(f"  generated text: {s['generated_text']!r}")
        say(f"  visual tokens per layer: {layer_runs(s['visual_tokens_per_layer'])}")
        say(f"  time: vision {t['vision']:.1f} ms, prefill {t['prefill']:.1f} ms, decode {t['decode']:.1f} ms "
            f"({len(s['generated_ids'])} tokens)")
        mem = f"peak CUDA memory {s['peak_memory_bytes'] / 2**20:.1f} MiB, " if s["peak_memory_bytes"] else ""
        say(f"  memory: {mem}KV cache after prefill {s['kv_cache_bytes'] / 2**20:.2f} MiB")
    if policy.name != "none":
        a, b = pruned[1], baseline[1]
        avg = sum(a["visual_tokens_per_layer"]) / num_layers
        say(f"\n{policy.name} vs none: visual tokens per layer on average {avg:.0f} vs {b['visual_tokens_per_layer'][0]}; "
            f"prefill {b['timings_ms']['prefill'] / a['timings_ms']['prefill']:.2f}x faster; "
            f"KV cache {a['kv_cache_bytes'] / b['kv_cache_bytes']:.0%} of unpruned")

    if args.heatmap and policy.name != "none":
        out = pruned[0]
        layer = min(out.trace.scores)
        scores, orig = out.trace.scores[layer]
        vis_pos = torch.nonzero(ids == model.cfg.image_token_id)[:, 0]  # the first image's patches, row-major
        visual_scores = scores[0][torch.isin(orig[0], vis_pos)]
        kept = torch.isin(vis_pos, out.layer_positions[layer][0])
        save_heatmap(args.heatmap, image, visual_scores, kept)
        say(f"\nheatmap of the scores before layer {layer} -> {args.heatmap}")

    summary = {"model": source, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
               "prompt_tokens": ids.numel(), "num_layers": num_layers, "runs": [s for _, s in runs.values()]}
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
