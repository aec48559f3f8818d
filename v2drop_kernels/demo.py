"""Demo: a vision-language model generating with and without visual-token pruning.

    v2drop-demo [--model PATH | --arch llava-1.5|llava-next|llava-ov|qwen2-vl|qwen2.5-vl|qwen3-vl|qwen3.5]
                [--image IMG]
                [--prompt TEXT] [--max-new-tokens N]
                [--policy none|v2drop|pdrop|fastv] [--layers 3,17,22] [--keep 0.5,0.5,0]
                [--device cpu|cuda] [--dtype fp32|bf16|fp16] [--repeats N] [--json]
                [--heatmap out.png]

(``python -m v2drop_kernels.demo`` is the same command; both need ``v2drop_kernels[demo]``.)

Without ``--model`` it builds, in process and with nothing downloaded, a small randomly initialised
model of the shape ``--arch`` names and a synthetic image: LLaVA-1.5 (the default: 32 decoder
layers of width 128, a 336 px CLIP tower, 576 visual tokens), LLaVA-NeXT (the same with
LLaVA-1.6's anyres grids: the 672 × 448 synthetic image is a base tile and 2 × 2 tiles, 2,144
visual tokens), LLaVA-OneVision (28 Qwen2 layers of width 128, a 384 px SigLIP tower, the 7B's
grids and ``anyres_max_9``: the same image gives 2,709 visual tokens), Qwen2-VL / Qwen2.5-VL (28
layers of width 128 with M-RoPE, a 2-block ViT with 14 px patches merged 2×2: a 672 px image gives
576 visual tokens), Qwen3-VL (the same with q/k norms, interleaved M-RoPE and a 3-block ViT of
16 px patches whose DeepStack features are added after decoder layers 0-2: a 768 px image) or
Qwen3.5 (32 layers, every fourth gated full attention and the others Gated DeltaNet; a 768 px image).
Random weights generate meaningless token ids; the demo shows the mechanics: which visual tokens
each layer keeps, the time of each phase, the memory. With ``--model`` it loads an HF checkpoint
folder (LLaVA-1.5 ``llava-hf`` layout, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL or
Qwen3.5, told apart by ``model_type``), and its processor or tokenizer when the folder has one. LLaVA-NeXT and
-OneVision images are cut into tiles by ``transformers``' image processor for the model's grids
(the folder's own when it has one); Qwen images are resized here to 24 × 24 merged patches
(672 × 672 px, Qwen3-VL and Qwen3.5 768: 576 visual tokens), so the flags can be checked before any work.
V²Drop's default schedule is the model's: LLaVA-1.5's (layers 3, 17, 22 keep 50%, 50%, 0%; also
LLaVA-NeXT's), the paper's LLaVA-OneVision video setting (layers 3, 16, 22 keep 25% and 5% of the
prompt's visual tokens, then one) or the official Qwen2-VL port's (layers 3, 16, 22 keep 25%, 5%,
0% of what is left; also Qwen3-VL's and Qwen3.5's, for which none is published). PyramidDrop's and
FastV's default layers are the model's too: the published 8, 16, 24 and K = 2, or on Qwen3.5, whose
scores exist at its full-attention layers only, 7, 15, 23 and K = 4. ``--heatmap`` draws the image the vision tower saw (LLaVA-NeXT and -OneVision:
the base tile, the whole image at one tile's size).

``--keep`` lists, per pruning layer, the visual tokens kept: counts (``288,144,1``), ratios of
what is left (``0.5,0.5,0``) or percentages of the prompt's (``25%,5%,0``), floor of one token. Every flag is checked before any work starts.
Timings: after a warm-up, the policy and the unpruned run alternate ``--repeats`` times; the
medians are printed with their range, and a speed-up only where the ranges do not overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .backends import available_backends
from .extras import MissingExtra, require
from .models import (Llava, LlavaConfig, LlavaNext, LlavaNextConfig, LlavaOnevision, LlavaOnevisionConfig, Qwen3_5, Qwen3VL, QwenVL,
                     QwenVLConfig, load_model, make_policy, random_llava, random_qwen_vl, tiny_config, tiny_llava_next_config,
                     tiny_llava_onevision_config, tiny_qwen_config)
from .models import llava_next, llava_onevision
from .models.policies import OfPrompt, kept_count
from .models.policies.base import parse_rule

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PROMPT = "USER: <image>\nWhat is the red object in the picture? ASSISTANT:"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
DEFAULT_LAYERS = {"v2drop": 3, "pdrop": 3, "fastv": 1}  # pruning layers of each policy's default schedule
PHASES = ("vision", "prefill", "decode")
QWEN_GRID = 24  # Qwen images are resized to 24 × 24 merged patches (672 px for 14 px patches): 576 visual tokens


@dataclass(frozen=True)
class Arch:
    """What the demo needs of an architecture: its config and model classes, the small random config
    of ``--arch``, that model in words, and the synthetic image's size (width, height)."""

    config: type
    model: type
    random_config: Callable
    description: str
    image: tuple[int, int] = (336, 336)


# model_type -> the architecture; --arch -> model_type
ARCHITECTURES = {
    "llava": Arch(LlavaConfig, Llava, tiny_config,
                  "random LLaVA-1.5-shaped model (32 layers x 128 wide, CLIP 336 px / 14: 576 visual tokens)"),
    "llava_next": Arch(LlavaNextConfig, LlavaNext, lambda: tiny_llava_next_config(tile=336),
                       "random LLaVA-NeXT-shaped model (32 layers x 128 wide, CLIP 336 px / 14 tiles, LLaVA-1.6's grids)",
                       (672, 448)),
    "llava_onevision": Arch(LlavaOnevisionConfig, LlavaOnevision,
                            lambda: tiny_llava_onevision_config(tile=384, grids=6, max_tiles=9),
                            "random LLaVA-OneVision-shaped model (28 Qwen2 layers x 128 wide, SigLIP 384 px / 14 tiles, "
                            "grids up to 6 x 6, anyres_max_9)", (672, 448)),
    "qwen2_vl": Arch(QwenVLConfig, QwenVL, lambda: tiny_qwen_config("qwen2_vl"),
                     f"random Qwen2-VL-shaped model (28 layers x 128 wide, M-RoPE; ViT 14 px patches merged 2x2: "
                     f"a 672 px image gives {QWEN_GRID ** 2} visual tokens)"),
    "qwen2_5_vl": Arch(QwenVLConfig, QwenVL, lambda: tiny_qwen_config("qwen2_5_vl"),
                       f"random Qwen2.5-VL-shaped model (28 layers x 128 wide, M-RoPE; ViT 14 px patches merged 2x2: "
                       f"a 672 px image gives {QWEN_GRID ** 2} visual tokens)"),
    "qwen3_vl": Arch(QwenVLConfig, Qwen3VL, lambda: tiny_qwen_config("qwen3_vl"),
                     f"random Qwen3-VL-shaped model (28 layers x 128 wide, q/k norms, interleaved M-RoPE, DeepStack after "
                     f"layers 0-2; ViT 16 px patches merged 2x2: a 768 px image gives {QWEN_GRID ** 2} visual tokens)"),
    "qwen3_5": Arch(QwenVLConfig, Qwen3_5, lambda: tiny_qwen_config("qwen3_5", layers=32),
                    f"random Qwen3.5-shaped model (32 layers x 128 wide, every fourth full attention, the others Gated "
                    f"DeltaNet; ViT 16 px patches merged 2x2: a 768 px image gives {QWEN_GRID ** 2} visual tokens)"),
}
ARCHS = {"llava-1.5": "llava", "llava-next": "llava_next", "llava-ov": "llava_onevision", "qwen2-vl": "qwen2_vl",
         "qwen2.5-vl": "qwen2_5_vl", "qwen3-vl": "qwen3_vl", "qwen3.5": "qwen3_5"}


# -- flags --------------------------------------------------------------------------------------------

def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 3,17,22, got {text!r}") from None


def parse_keep(text: str) -> list[int | float | OfPrompt]:
    """``288,144,1`` → counts; ``0.5,0.5,0`` → ratios of what is left (a value with a '.' is a ratio,
    as is 0); ``25%,5%`` → shares of the prompt's visual tokens."""
    values = []
    for v in text.split(","):
        v = v.strip()
        try:
            rule = parse_rule(v) if v.endswith("%") else float(v) if "." in v or v == "0" else int(v)
            if isinstance(rule, str):  # not a percentage after all
                raise ValueError(v)
            values.append(rule)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected counts such as 288,144,1, ratios such as 0.5,0.5,0 or percentages "
                                             f"such as 25%,5%,0, got {text!r}") from None
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser(prog: str = "python -m v2drop_kernels.demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL or Qwen3.5 folder "
                                        "(default: a small random model built here)")
    parser.add_argument("--arch", choices=list(ARCHS), default=None,
                        help="shape of the random model (default llava-1.5); with --model, the folder's must match")
    parser.add_argument("--image", help="image file (default: a synthetic picture)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text with one <image> placeholder")
    parser.add_argument("--max-new-tokens", type=_positive, default=32)
    parser.add_argument("--policy", choices=["none", "v2drop", "pdrop", "fastv"], default="v2drop")
    parser.add_argument("--layers", type=_int_list, help="pruning layers, e.g. 3,17,22 (fastv: K)")
    parser.add_argument("--keep", type=parse_keep, help="visual tokens kept after each pruning layer: counts 288,144,1, "
                                                        "ratios of what is left 0.5,0.5,0 or percentages of the prompt's 25%%,5%%,0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--backend", choices=["cpu", "cuda", "triton", "reference"], default=None,
                        help="ops backend (default: the fastest for the device)")
    parser.add_argument("--repeats", type=_positive, default=3, help="timed runs of each policy, interleaved (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary only")
    parser.add_argument("--heatmap", help="save the first drop's scores over the image the model saw, as a PNG")
    return parser


@dataclass
class Plan:
    """What the flags ask for, checked."""

    arch: Arch
    cfg: LlavaConfig | QwenVLConfig
    policy: object
    device: torch.device
    dtype: torch.dtype
    visual: int  # visual tokens of the prompt
    image_size: tuple[int, int]  # (width, height) of the image given or made


def check_flags(parser: argparse.ArgumentParser, args) -> Plan:
    """Every flag against the machine, the model's config and the policy, before any work; a
    problem exits through ``parser.error`` (one line naming the flag, status 2)."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"argument --device: not a device: {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {args.device} is not available here (torch {torch.__version__}, "
                     f"{'no CUDA device found' if torch.version.cuda else 'a build without CUDA'}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"argument --device: cpu or cuda, got {args.device!r}")
    if args.backend is not None and args.backend not in available_backends(device):
        parser.error(f"argument --backend: {args.backend!r} does not run on {device.type} here; "
                     f"available: {', '.join(available_backends(device))}")
    if args.model:
        config = Path(args.model) / "config.json"
        if not config.is_file():
            parser.error(f"argument --model: {args.model} has no config.json (expected an HF checkpoint folder)")
        try:
            raw = json.loads(config.read_text())
            model_type = raw.get("model_type", "llava")
            if model_type not in ARCHITECTURES:
                raise NotImplementedError(f"model_type {model_type!r} is not supported ({', '.join(ARCHITECTURES)} are)")
            cfg = ARCHITECTURES[model_type].config.from_hf(raw)
        except (ValueError, KeyError, NotImplementedError) as e:
            parser.error(f"argument --model: {config}: {e}")
        if args.arch is not None and ARCHS[args.arch] != model_type:
            parser.error(f"argument --arch: {args.arch}, but {args.model} holds a {model_type} model")
    else:
        model_type = ARCHS[args.arch or "llava-1.5"]
        cfg = ARCHITECTURES[model_type].random_config()
    arch = ARCHITECTURES[model_type]
    image_size = arch.image
    if args.image:
        if not os.access(args.image, os.R_OK):
            parser.error(f"argument --image: cannot read {args.image}")
        try:
            with require("PIL.Image", "the demo's image").open(args.image) as img:  # reads the header only
                image_size = img.size
        except OSError as e:
            parser.error(f"argument --image: {args.image}: {e}")
    images = args.prompt.count("<image>")
    if images != 1:
        parser.error(f"argument --prompt: needs exactly one <image> placeholder, got {images}")
    visual = image_token_count(cfg, image_size)
    num_layers = cfg.text.num_layers

    if args.policy == "none":
        for flag in ("layers", "keep", "heatmap"):
            if getattr(args, flag) is not None:
                parser.error(f"argument --{flag}: policy none drops nothing, so --{flag} means nothing; choose a policy")
    else:
        stages = len(args.layers) if args.layers is not None else DEFAULT_LAYERS[args.policy]
        if args.policy == "fastv" and stages != 1:
            parser.error(f"argument --layers: fastv prunes once, after layer K: give one layer, got {args.layers}")
        for layer in args.layers or []:
            if not 1 <= layer < num_layers:
                parser.error(f"argument --layers: layer {layer} is outside 1..{num_layers - 1} of this {num_layers}-layer model")
        if args.keep is not None:
            if len(args.keep) != stages:
                parser.error(f"argument --keep: {len(args.keep)} values for {stages} pruning layer(s) of {args.policy}")
            left = visual
            for i, rule in enumerate(args.keep):
                if isinstance(rule, int) and rule > left:
                    where = "the prompt's" if i == 0 else f"the visual tokens left at stage {i + 1}:"
                    parser.error(f"argument --keep: {rule} is more than {where} {left} visual tokens")
                ratio = rule.ratio if isinstance(rule, OfPrompt) else rule
                if isinstance(rule, (float, OfPrompt)) and not 0.0 <= ratio <= 1.0:
                    parser.error(f"argument --keep: a ratio must lie in [0, 1], got {rule}")
                if isinstance(rule, int) and rule < 1:
                    parser.error(f"argument --keep: a count must be >= 1, got {rule}")
                left = kept_count(rule, left, visual)
    if args.heatmap:
        folder = os.path.dirname(os.path.abspath(args.heatmap))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or (os.path.exists(args.heatmap) and not os.access(args.heatmap, os.W_OK)):
            parser.error(f"argument --heatmap: cannot write {args.heatmap}")
    try:
        layers = args.layers if args.layers is not None else arch.model.default_layers(args.policy)
        policy = make_policy(args.policy, layers, args.keep, schedule=arch.model.v2drop_schedule)
        policy.check(num_layers, cfg.text.attention_layers)
    except ValueError as e:
        parser.error(f"argument --policy: {e}")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return Plan(arch, cfg, policy, device, dtype, visual, image_size)


def image_token_count(cfg, image_size: tuple[int, int]) -> int:
    """Visual tokens of the demo's image of ``image_size = (width, height)`` in a model of ``cfg``."""
    width, height = image_size
    if isinstance(cfg, LlavaOnevisionConfig):
        return llava_onevision.image_token_count(cfg, (height, width))
    if isinstance(cfg, LlavaNextConfig):
        return llava_next.image_token_count(cfg, (height, width))
    return cfg.tokens_per_image if isinstance(cfg, LlavaConfig) else QWEN_GRID ** 2


# -- inputs -------------------------------------------------------------------------------------------

def synthetic_image(size: tuple[int, int] = (336, 336)):
    """A grey gradient of ``size = (width, height)`` with a red disk in the upper left (the 'object'
    the default prompt asks about) and a blue bar."""
    Image, ImageDraw = require("PIL.Image", "the demo's image"), require("PIL.ImageDraw", "the demo's image")
    width, height = size
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.ellipse((width * 0.15, height * 0.2, width * 0.15 + height * 0.3, height * 0.5), fill=(220, 30, 30))
    draw.rectangle((width * 0.6, height * 0.6, width * 0.9, height * 0.75), fill=(40, 90, 200))
    return img


def pixel_values(image, size: int) -> torch.Tensor:
    """CLIP preprocessing: resize the short side, centre crop, normalise. ``[1, 3, size, size]``."""
    Image = require("PIL.Image", "the demo's image preprocessing")
    w, h = image.size
    scale = size / min(w, h)
    image = image.convert("RGB").resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1).float() / 255
    return ((x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None])[None]


def qwen_patches(pix: torch.Tensor, patch: int, temporal: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image ``[1, 3, H, W]`` as the Qwen-VL processor flattens it: ``(patches [h·w, 3·T·P·P],
    grid_thw [[1, h, w]])``, the frame repeated ``T`` times, patches in ``merge × merge`` groups so
    that the merger's tokens come out row-major over the ``h/merge × w/merge`` grid."""
    _, c, height, width = pix.shape
    h, w = height // patch, width // patch
    frames = pix.expand(temporal, c, height, width)
    x = frames.reshape(1, temporal, c, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(h * w, c * temporal * patch * patch), torch.tensor([[1, h, w]])


def anyres_processor(cfg: LlavaNextConfig):
    """``transformers``' image processor for the grids and tile size of a LLaVA-NeXT or -OneVision
    ``cfg`` (its PIL flavour where there is one: it needs no torchvision)."""
    transformers = require("transformers", "the demo's anyres tiles")
    tile, grids = cfg.vision["image_size"], [list(p) for p in cfg.image_grid_pinpoints]
    if isinstance(cfg, LlavaOnevisionConfig):
        cls = getattr(transformers, "LlavaOnevisionImageProcessorPil", None) or transformers.LlavaOnevisionImageProcessor
        return cls(image_grid_pinpoints=grids, size={"height": tile, "width": tile})
    cls = getattr(transformers, "LlavaNextImageProcessorPil", None) or transformers.LlavaNextImageProcessor
    return cls(image_grid_pinpoints=grids, size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile})


def image_span(model, visual: int) -> list[int]:
    """The token ids that stand for the demo's one image, of ``visual`` visual tokens, in the prompt."""
    cfg = model.cfg
    if isinstance(model, QwenVL):
        return [cfg.vision_start_token_id] + [cfg.image_token_id] * visual + [cfg.vision_end_token_id]
    return [cfg.image_token_id] * visual


def prompt_ids(prompt: str, span: list[int], model, tokenizer=None) -> torch.Tensor:
    """The prompt's ids with ``<image>`` replaced by ``span``: by ``tokenizer``, or (a random model)
    one id per byte after a BOS."""
    if tokenizer is not None:
        parts = [tokenizer(p, add_special_tokens=(i == 0))["input_ids"] for i, p in enumerate(prompt.split("<image>"))]
    else:
        vocab = model.cfg.text.vocab_size
        parts = [[3 + b % (vocab - 8) for b in p.encode()] for p in prompt.split("<image>")]
        parts[0] = [model.cfg.text.bos_token_id or 1] + parts[0]
    ids = parts[0]
    for part in parts[1:]:
        ids = ids + span + part
    return torch.tensor(ids)


@dataclass
class Inputs:
    ids: torch.Tensor  # prompt ids with the image tokens
    pixel_values: torch.Tensor  # [1, 3, H, W]: what the heatmap draws (anyres: the base tile)
    mean: tuple[float, ...]  # the normalisation that made them
    std: tuple[float, ...]
    decode: Callable | None  # ids -> text, when a tokenizer is known
    vision_args: tuple = ()  # what generate takes after the prompts (default: the pixel values)
    cell: int = 14  # px of the image per visual token (the heatmap's cell)


def _from_folder(folder: Path | None, kind: str, errors: tuple):
    """``transformers.<kind>.from_pretrained(folder)``, or None when the folder has none."""
    if folder is None:
        return None
    try:
        return getattr(require("transformers", f"the demo's {kind}"), kind).from_pretrained(folder)
    except errors:
        return None


def build_inputs(model, folder: Path | None, image, prompt: str, visual: int) -> Inputs:
    """The folder's processor when there is one; else its tokenizer, or byte ids, with CLIP
    preprocessing (LLaVA-1.5), ``transformers``' anyres tiles (LLaVA-NeXT, -OneVision) or the Qwen
    patches. ``visual``: the image's visual tokens (from :func:`image_token_count`)."""
    if isinstance(model, QwenVL):
        return build_qwen_inputs(model, folder, image, prompt, visual)
    anyres = isinstance(model, LlavaNext)
    processor = _from_folder(folder, "AutoProcessor", (OSError, ValueError, TypeError, KeyError, AttributeError))
    if processor is not None:
        try:
            inputs = processor(images=image, text=prompt, return_tensors="pt")
            ip, ids, decode = processor.image_processor, inputs["input_ids"][0], processor.tokenizer.decode
        except (ValueError, TypeError, KeyError, AttributeError):
            processor = None
    if processor is None:
        tokenizer = _from_folder(folder, "AutoTokenizer", (OSError, ValueError, TypeError, KeyError))
        ids, decode = prompt_ids(prompt, image_span(model, visual), model, tokenizer), tokenizer and tokenizer.decode
        if anyres:
            ip = anyres_processor(model.cfg)
            inputs = ip(images=image, return_tensors="pt")
        else:
            ip, inputs = None, {"pixel_values": pixel_values(image, model.cfg.vision["image_size"])}
    mean, std = (tuple(ip.image_mean), tuple(ip.image_std)) if ip is not None else (CLIP_MEAN, CLIP_STD)
    pix = inputs["pixel_values"]
    if anyres:  # [1, tiles, 3, H, W] and the image's (height, width)
        return Inputs(ids, pix[:, 0], mean, std, decode, (pix, inputs["image_sizes"]))
    return Inputs(ids, pix, mean, std, decode)


def build_qwen_inputs(model: QwenVL, folder: Path | None, image, prompt: str, visual: int) -> Inputs:
    """Qwen-VL: the image resized to ``QWEN_GRID`` merged patches a side and flattened as the
    processor does; the folder's tokenizer for the text when there is one, else byte ids."""
    vision = model.cfg.vision
    pix = pixel_values(image, QWEN_GRID * vision["patch_size"] * model.cfg.spatial_merge_size)
    patches, grid = qwen_patches(pix, vision["patch_size"], vision.get("temporal_patch_size", 2), model.cfg.spatial_merge_size)
    tokenizer = _from_folder(folder, "AutoTokenizer", (OSError, ValueError, TypeError, KeyError))
    ids = prompt_ids(prompt, image_span(model, visual), model, tokenizer)
    return Inputs(ids, pix, CLIP_MEAN, CLIP_STD, tokenizer and tokenizer.decode, (patches, grid),
                  vision["patch_size"] * model.cfg.spatial_merge_size)


# -- output -------------------------------------------------------------------------------------------

def layer_runs(per_layer: list[int]) -> str:
    """``[576, 576, 576, 288, ...]`` → ``layers 0-2: 576 | 3-16: 288 | ...``."""
    runs, start = [], 0
    for i in range(1, len(per_layer) + 1):
        if i == len(per_layer) or per_layer[i] != per_layer[start]:
            span = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            runs.append(f"{span}: {per_layer[start]}")
            start = i
    return "layers " + " | ".join(runs)


def heatmap_arrays(pix: torch.Tensor, mean, std, scores: torch.Tensor, kept: torch.Tensor, patch: int):
    """What the heatmap draws, at the pixels the model saw: ``(image [H, W, 3] in [0, 1], heat [H, W]
    (each patch's score), kept [H, W] bool)``. ``pix [1, 3, H, W]`` are the pixel values given to
    the vision tower (so any crop or padding of the preprocessing is in them); ``scores`` and
    ``kept`` hold one entry per patch, row-major."""
    image = (pix[0].float().cpu() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
    rows, cols = image.shape[1] // patch, image.shape[2] // patch
    grid = lambda x: x[: rows * cols].cpu().view(rows, cols).repeat_interleave(patch, 0).repeat_interleave(patch, 1)  # noqa: E731
    return image.permute(1, 2, 0), grid(scores.float()), grid(kept)


def save_heatmap(path: str, arrays, title: str, score_name: str) -> None:
    """The image the model saw beside the same image under its per-patch scores, dropped patches
    darkened and hatched, with a colour bar and a legend."""
    np = require("numpy", "--heatmap")
    require("matplotlib", "--heatmap").use("Agg")
    plt = require("matplotlib.pyplot", "--heatmap")
    Patch = require("matplotlib.patches", "--heatmap").Patch

    image, heat, kept = (a.numpy() for a in arrays)
    dropped = (~kept).astype(float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [1, 1.22]})
    axes[0].imshow(image)
    axes[0].set_title(f"what the model saw ({image.shape[1]}x{image.shape[0]} px)", fontsize=9)
    axes[1].imshow(image)
    shown = axes[1].imshow(heat, cmap="viridis", alpha=0.65, interpolation="nearest")
    shade = np.zeros((*dropped.shape, 4))
    shade[..., 3] = 0.45 * dropped  # dropped patches darkened
    axes[1].imshow(shade, interpolation="nearest")
    axes[1].contourf(dropped, levels=[0.5, 1.5], colors="none", hatches=["////"])
    axes[1].set_title(f"{score_name} per patch", fontsize=9)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03, label=score_name)
    axes[1].legend(handles=[Patch(facecolor="white", edgecolor="black", label="kept"),
                            Patch(facecolor="grey", hatch="////", label="dropped")], loc="lower right", fontsize=8, framealpha=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compare(name: str, a: dict, b: dict) -> str:
    """``a`` vs ``b`` (phase stats of two policies): a ratio only where their ranges do not overlap."""
    if a["max"] < b["min"]:
        return f"{name} {b['median'] / a['median']:.2f}x faster"
    if b["max"] < a["min"]:
        return f"{name} {a['median'] / b['median']:.2f}x slower"
    return f"{name}: no difference beyond the run-to-run range"


def summarise(name: str, runs: list, decode) -> dict:
    out = runs[-1]
    tokens = out.tokens[0].tolist()
    timings = {phase: _stats([r.timings_ms[phase] for r in runs]) for phase in PHASES}
    return {
        "policy": name,
        "generated_ids": tokens,
        "generated_text": decode(tokens) if decode else None,
        "visual_tokens_per_layer": [v[0] for v in out.trace.visual_per_layer],
        "timings_ms": {phase: round(t["median"], 2) for phase, t in timings.items()},
        "timings_ms_range": {phase: [round(t["min"], 2), round(t["max"], 2)] for phase, t in timings.items()},
        "repeats": len(runs),
        "kv_cache_bytes": out.kv_cache_bytes,
        "peak_memory_bytes": out.peak_memory_bytes,
    }


def main(argv=None, prog: str = "python -m v2drop_kernels.demo") -> dict:
    """Runs the demo with the command line ``argv``; returns the summary (what ``--json`` prints)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    plan = check_flags(parser, args)
    require("PIL.Image", "the demo")  # the optional dependencies, before any work
    if args.heatmap:
        require("matplotlib.pyplot", "--heatmap")
    say = (lambda *a: None) if args.json else print
    torch.manual_seed(args.seed)

    if args.model:
        model = load_model(args.model, dtype=plan.dtype, device=plan.device)
        source = args.model
    else:
        build = random_qwen_vl if isinstance(plan.cfg, QwenVLConfig) else random_llava
        model = build(plan.cfg, seed=args.seed, dtype=plan.dtype, device=plan.device)
        source = plan.arch.description
    Image = require("PIL.Image", "the demo")
    image = Image.open(args.image) if args.image else synthetic_image(plan.image_size)
    inputs = build_inputs(model, Path(args.model) if args.model else None, image, args.prompt, plan.visual)
    found = int(torch.isin(inputs.ids, torch.tensor([model.cfg.image_token_id])).sum())
    if found != plan.visual:  # the flags were checked against plan.visual
        raise SystemExit(f"{prog}: the processor of {args.model} wrote {found} image tokens for this image; "
                         f"its config gives {plan.visual}")
    ids = inputs.ids.to(plan.device)
    vision_args = tuple(a.to(plan.device) for a in (inputs.vision_args or (inputs.pixel_values,)))
    policy, num_layers = plan.policy, plan.cfg.text.num_layers
    say(f"v2drop demo: {source}\n  {ids.numel()} prompt tokens ({plan.visual} visual), "
        f"{str(plan.dtype).removeprefix('torch.')} on {plan.device}, policy {policy.describe()}, "
        f"{args.repeats} timed runs each after a warm-up")

    policies = {policy.describe(): policy, "none": make_policy("none")}
    progress = not args.json and args.max_new_tokens >= 64

    def generate(pol, new_tokens, show=False):
        return model.generate([ids], *vision_args, max_new_tokens=new_tokens, policy=pol, backend=args.backend, progress=show)

    for pol in policies.values():  # warm-up: first calls allocate, build kernels, fill caches
        generate(pol, min(2, args.max_new_tokens))
    runs: dict[str, list] = {name: [] for name in policies}
    for r in range(args.repeats):  # interleaved, so drift of the machine hits both alike
        for name, pol in policies.items():
            runs[name].append(generate(pol, args.max_new_tokens, show=progress and r == 0))
    summaries = {name: summarise(name, outs, inputs.decode) for name, outs in runs.items()}

    for name, s in summaries.items():
        t, span = s["timings_ms"], s["timings_ms_range"]
        say(f"\n[{name}]")
        say(f"  generated ids: {s['generated_ids']}")
        if s["generated_text"] is not None:
            say(f"  generated text: {s['generated_text']!r}")
        say(f"  visual tokens per layer: {layer_runs(s['visual_tokens_per_layer'])}")
        say("  time, median (range) of " + f"{s['repeats']} runs: " + ", ".join(
            f"{phase} {t[phase]:.1f} ms ({span[phase][0]:.1f}-{span[phase][1]:.1f})" for phase in PHASES)
            + f"; {len(s['generated_ids'])} tokens")
        mem = f"peak CUDA memory {s['peak_memory_bytes'] / 2**20:.1f} MiB, " if s["peak_memory_bytes"] else ""
        say(f"  memory: {mem}KV cache after prefill {s['kv_cache_bytes'] / 2**20:.2f} MiB")
    if policy.name != "none":
        a, b = summaries[policy.describe()], summaries["none"]
        stats = lambda s, phase: {"median": s["timings_ms"][phase], "min": s["timings_ms_range"][phase][0], "max": s["timings_ms_range"][phase][1]}  # noqa: E731
        avg = sum(a["visual_tokens_per_layer"]) / num_layers
        say(f"\n{policy.name} vs none: visual tokens per layer on average {avg:.0f} vs {b['visual_tokens_per_layer'][0]}; "
            + "; ".join(compare(phase, stats(a, phase), stats(b, phase)) for phase in ("prefill", "decode"))
            + f"; KV cache {a['kv_cache_bytes'] / b['kv_cache_bytes']:.0%} of unpruned")

    if args.heatmap:
        out = runs[policy.describe()][-1]
        layer = min(out.trace.scores)
        scores, orig = out.trace.scores[layer]
        height, width = inputs.pixel_values.shape[-2:]
        drawn = (height // inputs.cell) * (width // inputs.cell)  # the first image tokens: the drawn tile's patches, row-major
        vis_pos = torch.nonzero(ids == model.cfg.image_token_id)[:, 0]
        tile = " of the base tile" if vis_pos.numel() > drawn else ""
        vis_pos = vis_pos[:drawn]
        patch_scores = scores[0][torch.isin(orig[0], vis_pos)]
        kept = torch.isin(vis_pos, out.layer_positions[layer][0])
        arrays = heatmap_arrays(inputs.pixel_values, inputs.mean, inputs.std, patch_scores, kept, inputs.cell)
        score_name = "‖x_l − x_(l−1)‖₂" if policy.name == "v2drop" else "last-token attention"
        title = f"{policy.describe()}: scores before layer {layer}; {int(kept.sum())} of {kept.numel()} patches{tile} kept"
        save_heatmap(args.heatmap, arrays, title, score_name)
        say(f"\nheatmap of the scores before layer {layer} -> {args.heatmap}")

    summary = {"model": source, "device": str(plan.device), "dtype": str(plan.dtype).removeprefix("torch."),
               "prompt_tokens": ids.numel(), "num_layers": num_layers, "runs": list(summaries.values())}
    if args.json:
        print(json.dumps(summary))
    return summary


def cli(prog: str = "v2drop-demo") -> None:
    """The ``v2drop-demo`` console script (and ``python -m v2drop_kernels.demo``): a missing optional
    dependency ends it with the message naming the extra to install, without a traceback."""
    try:
        main(prog=prog)
    except MissingExtra as e:
        raise SystemExit(f"{prog}: {e}") from None


if __name__ == "__main__":
    cli("python -m v2drop_kernels.demo")
