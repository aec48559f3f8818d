"""End-to-end benchmark: latency, throughput and memory of 7B-sized vision-language models with and
without pruning, beside transformers on the same weights, in one run.

    python bench/e2e.py                 # GPU: LLaVA-1.5-7B, LLaVA-NeXT-7B, LLaVA-OV-7B, Qwen2.5-VL-7B, Qwen3-VL-8B, Qwen3.5-9B
    python bench/e2e.py --cpu           # CPU mode: tiny twins and small workloads (exercises the script; no claim)
    python bench/e2e.py --models qwen2.5-vl-7b --workloads image,video32 --batches 1 --publish

Per model, workload and batch (1, 8), one ``transformers`` model is built (random weights: latency
does not depend on their values; SDPA attention; a one-layer vision tower of tiny width, as the
latency of the tower is not what is measured, but of the real image and patch sizes, so that the
visual-token counts are the real ones) and this package's model runs on the same tensors:

- ``llava-1.5-7b``: ``LlavaForConditionalGeneration`` (:func:`~v2drop_kernels.models.llava_from_transformers`),
  a Llama decoder of Vicuna-7B widths (32 layers, hidden 4096, MLP 11008, 32 heads, 32 KV heads,
  vocabulary 32064: llava-1.5-7b's), a CLIP tower; a workload's images or frames are separate images
  (336 px for 576 tokens, 196 px for 196).
- ``llava-next-7b``: ``LlavaNextForConditionalGeneration`` (:func:`~v2drop_kernels.models.llava_next_from_transformers`),
  the same decoder (llava-v1.6-vicuna-7b / open-llava-next-vicuna-7b), a CLIP tower of 336 px tiles
  and 14 px patches (576 a tile), llava-v1.6's ``image_grid_pinpoints`` (336×672, 672×336, 672×672,
  1008×336, 336×1008).
- ``llava-ov-7b``: ``LlavaOnevisionForConditionalGeneration`` (:func:`~v2drop_kernels.models.llava_onevision_from_transformers`),
  a Qwen2 decoder of Qwen2-7B widths (28 layers, 3584, 18944, 28 heads, 4 KV heads, vocabulary
  152064, q/k/v biases, RoPE θ = 10⁶: llava-onevision-qwen2-7b's), a SigLIP tower of 384 px tiles
  and 14 px patches (27 × 27 a tile; a video frame pooled to 14 × 14 = 196), grids of 1 to 6 × 1 to
  6 tiles, ``anyres_max_9``.
- ``qwen2.5-vl-7b``: ``Qwen2_5_VLForConditionalGeneration`` (:func:`~v2drop_kernels.models.qwen_vl_from_transformers`),
  the same Qwen2-7B widths with M-RoPE, a ViT of 14 px patches merged 2 × 2.
- ``qwen3-vl-8b``: ``Qwen3VLForConditionalGeneration`` (the same loader), a Qwen3 decoder of
  Qwen3-VL-8B-Instruct's ``text_config`` widths (36 layers, 4096, MLP 12288, 32 heads, 8 KV heads,
  head_dim 128, vocabulary 151936, q/k norms, interleaved M-RoPE (24, 20, 20), θ = 5·10⁶), a ViT of
  16 px patches merged 2 × 2 with three DeepStack levels (the 8B's count; added after decoder
  layers 0, 1, 2 here, as there).
- ``qwen3.5-9b``: ``Qwen3_5ForConditionalGeneration`` (the same loader), a hybrid decoder of the
  widths of transformers' ``Qwen3_5TextConfig`` defaults (its docstring's "Qwen3.5-9B style
  configuration"; not a downloaded ``config.json``, which this script cannot fetch): 32 layers,
  three Gated DeltaNet linear-attention layers to one gated full-attention layer (layers 3, 7, ...,
  31), hidden 4096, MLP 12288, 16 heads, 4 KV heads, head_dim 256, linear attention 16 key and 32
  value heads of 128, convolution kernel 4, vocabulary 248320, a quarter of each head rotated,
  interleaved M-RoPE (11, 11, 10) (the section transformers' Qwen3.5 rotary embedding falls back
  to; its config has none), θ = 10⁷ (the published Qwen3.5 models' value as far as known, not
  checked against a checkpoint; transformers' default is 10⁴); a ViT of 16 px patches merged 2 × 2,
  no DeepStack.

Workloads (visual tokens of a prompt):

- ``image``: LLaVA-1.5 one 336 px image (576); Qwen2.5-VL, Qwen3-VL and Qwen3.5 one image of
  48 × 48 patches (576);
- ``highres``: LLaVA-1.5 five images of 576 (2,880: an anyres image's five tiles, as separate
  images); Qwen2.5-VL, Qwen3-VL and Qwen3.5 one image of 96 × 120 patches (2,880);
- ``anyres``: LLaVA-NeXT one 672 × 672 image, for which anyres picks the 2 × 2 grid: the base
  tile's 576 and the unpadded grid's 48 rows of 48 and a newline (2,928, PyramidDrop's LLaVA-NeXT
  setting of ≈ 5 × 576); LLaVA-OneVision one 768 × 768 image, its 2 × 2 grid (729 + 54 × 55 = 3,699);
- ``video32``, ``video64``: LLaVA-1.5 32 / 64 frames as separate images of 196 (6,272 / 12,544);
  LLaVA-OneVision one video of 32 / 64 frames through ``pixel_values_videos``, 196 a frame and a
  newline (6,273 / 12,545); Qwen2.5-VL one video of 32 / 64 grid steps of 14 × 14 tokens; Qwen3-VL
  and Qwen3.5 the same, each grid step its own span after a six-token timestamp, as their processors
  write it.

CPU mode (``--cpu``): tiny twins of the same six architectures (``tiny-llava-1.5``,
``tiny-llava-next``, ``tiny-llava-ov``, ``tiny-qwen2.5-vl``, ``tiny-qwen3-vl``, ``tiny-qwen3.5``:
the layer counts (Qwen3.5: and layer pattern) of the full models, widths 112 to 128, vocabulary
512; ``tiny-qwen3.5``: head_dim 32 (8 rotary channels, M-RoPE (2, 1, 1)), linear attention 2 key
and 4 value heads of 32), batches 1 and 2, workloads ``image`` (576) and ``video8`` (8 × 196) for
LLaVA-1.5, Qwen2.5-VL, Qwen3-VL and Qwen3.5, and anyres at a third of the tile
size: LLaVA-NeXT 112 px tiles, a 224 × 224 image (64 + 16 × 17 = 336); LLaVA-OneVision 128 px
tiles (9 × 9 patches), a 256 × 256 image (81 + 18 × 19 = 423) and ``video8`` (8 frames of 5 × 5
pooled tokens and a newline: 201).

Rows, by ``policy`` and ``decoder``:

- this decoder (``decoder`` = ``fast``: compiled dense maths, and the decode step in a CUDA graph
  on a GPU): ``none``, ``v2drop`` (fastest ops backend), ``v2drop-eager-ops`` (the reference ops,
  the way the public code prunes), ``pdrop``, ``fastv``;
- this decoder without compilation or graphs (``decoder`` = ``eager``): ``none``, ``v2drop``;
- transformers' stock ``generate`` (``transformers``) and the same with ``enable_pruning`` and the
  family's V²Drop schedule (``transformers+v2drop``).

Measured: TTFT (a 1-token answer), the latency of an 8-token answer, TPOT (timed per step within
one long answer: our decode lap over its steps; transformers' between its streamed tokens), the
weight-read floor of a decode step (bytes of the decoder weights a step reads / measured copy
bandwidth) and TPOT / floor, tokens/s, peak GPU memory (of the timed 8-token answers: the counter
reset right before each, after the warm-up, the same for every row; the largest of the repeats), KV
bytes after prefill (Qwen3.5: its full-attention layers' entries; the linear-attention layers'
fixed-size state, the same whatever is pruned, is not in it), and the pruning share of prefill
(synchronised time in the policy's hooks, from the decoder's pruning context).
Times are medians (with their range) of ``--repeats`` runs after a warm-up, by CUDA events on a
GPU and wall clock on CPU; reductions are against ``none`` of the same decoder (transformers+v2drop
against transformers). A figure that cannot be (not positive, not finite) stops the run.
Results: a table on stdout; bench/out/e2e_<device>.{json,md,png} (bench/results/ with --publish).

Schedules: LLaVA-1.5 images and LLaVA-NeXT use V²Drop's LLaVA-1.5 schedule (before layers 3, 17,
22 keep 50%, 50%, 0% of what is left; V²Drop publishes no LLaVA-NeXT schedule); LLaVA-1.5 videos
and every LLaVA-OneVision workload the published LLaVA-OneVision video setting (layers 3, 16, 22
keeping 25% and 5% of the prompt's visual tokens, then one; no image setting is published for it);
Qwen2.5-VL the official Qwen2-VL port's (layers 3, 16, 22 keep 25%, 5%, 0% of what is left), and
Qwen3-VL and Qwen3.5 too (no schedule is published for either).
PyramidDrop: boundaries 8, 16, 24 with λ = 0.5 (PyramidDrop's LLaVA-1.5 and LLaVA-NeXT setting);
Qwen3.5 the package's ``Qwen3_5.pdrop_layers`` (7, 15, 23: the full-attention layers nearest 8, 16,
24, as PyramidDrop ranks by attention scores, which linear-attention layers have none of).
FastV: K = 2, R = 50%; Qwen3.5 ``Qwen3_5.fastv_k`` (K = 4: ranked by layer 3, its first
full-attention layer).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import copy_bandwidth_gbs, cpu_name, git_commit, markdown_table, today, write_results  # noqa: E402

from v2drop_kernels.models import (FastV, Policy, PyramidDrop, Qwen3_5, V2Drop, VisionLanguageModel,  # noqa: E402
                                   llava_from_transformers, llava_next_from_transformers, llava_onevision_from_transformers,
                                   qwen_vl_from_transformers)
from v2drop_kernels.models.loading import mrope_section  # noqa: E402

# name: (family, (layers, hidden, mlp, heads, kv heads, vocab)); Qwen3.5 adds the linear-attention widths
# (key heads, value heads, head dim)
MODELS = {
    "llava-1.5-7b": ("llava", (32, 4096, 11008, 32, 32, 32064)),  # Vicuna-7B
    "llava-next-7b": ("llava-next", (32, 4096, 11008, 32, 32, 32064)),  # Vicuna-7B, as llava-v1.6-vicuna-7b
    "llava-ov-7b": ("llava-ov", (28, 3584, 18944, 28, 4, 152064)),  # Qwen2-7B: q/k/v biases, RoPE θ 1e6
    "qwen2.5-vl-7b": ("qwen2.5-vl", (28, 3584, 18944, 28, 4, 152064)),  # Qwen2-7B widths: q/k/v biases and M-RoPE
    "qwen3-vl-8b": ("qwen3-vl", (36, 4096, 12288, 32, 8, 151936)),  # Qwen3-8B widths (Qwen3-VL-8B-Instruct's text_config)
    "qwen3.5-9b": ("qwen3.5", (32, 4096, 12288, 16, 4, 248320, (16, 32, 128))),  # transformers' Qwen3_5TextConfig defaults
}
CPU_MODELS = {
    "tiny-llava-1.5": ("llava", (32, 128, 344, 4, 4, 512)),
    "tiny-llava-next": ("llava-next", (32, 128, 344, 4, 4, 512)),
    "tiny-llava-ov": ("llava-ov", (28, 112, 592, 4, 1, 512)),
    "tiny-qwen2.5-vl": ("qwen2.5-vl", (28, 128, 592, 4, 2, 512)),
    "tiny-qwen3-vl": ("qwen3-vl", (36, 128, 384, 4, 2, 512)),
    "tiny-qwen3.5": ("qwen3.5", (32, 128, 384, 4, 2, 512, (2, 4, 32))),
}
TEXT_BEFORE, TEXT_AFTER = 35, 20  # system prompt, question
TIMESTAMP = 6  # text tokens of a Qwen3-VL / Qwen3.5 frame's timestamp ("<1.5 seconds>")
# the rows of one (model, workload, batch), selectable with --policies
ROWS = ("none", "v2drop", "v2drop-eager-ops", "pdrop", "fastv", "eager", "transformers", "transformers+v2drop")
PUBLISHED = {"v2drop_image_latency": 31.5, "v2drop_video_latency": 74.2}  # reductions the paper reports


# -- workloads: what a prompt's visual part is, per kind of input -----------------------------------------
class Images(NamedTuple):
    """``count`` separate images (or a video's frames as images) of ``tokens`` each: LLaVA-1.5's CLIP
    tower at √tokens × 14 px (``tower``: one model per tokens-per-image)."""

    count: int
    tokens: int

    @property
    def tower(self) -> int:
        return self.tokens

    def inputs(self, hf, ours, batch: int, gen, device: str):
        pixels = randn(gen, device, hf.dtype, batch * self.count, 3, *[hf.config.vision_config.image_size] * 2)
        return full(hf.config.image_token_id, self.count * self.tokens), {"pixel_values": pixels}


class Anyres(NamedTuple):
    """One image of ``size = (height, width)`` px cut into anyres tiles of ``tile`` px (the tower's
    image size): LLaVA-NeXT and LLaVA-OneVision, ``pixel_values [B, tiles, 3, tile, tile]`` and
    ``image_sizes``; the token count is the package's (its tests hold it to transformers')."""

    tile: int
    size: tuple[int, int]

    @property
    def tower(self) -> int:
        return self.tile

    def inputs(self, hf, ours, batch: int, gen, device: str):
        from v2drop_kernels.models import llava_next, llava_onevision

        counts = llava_onevision if hf.config.model_type == "llava_onevision" else llava_next  # its token count
        tiles, tokens = counts.tile_count(ours.cfg, self.size), counts.image_token_count(ours.cfg, self.size)
        pixels = randn(gen, device, hf.dtype, batch, tiles, 3, self.tile, self.tile)
        sizes = torch.tensor([self.size] * batch, device=device)
        return full(hf.config.image_token_id, tokens), {"pixel_values": pixels, "image_sizes": sizes}


class Video(NamedTuple):
    """One video of ``frames`` frames of ``tile`` px: LLaVA-OneVision's ``pixel_values_videos
    [B, frames, 3, tile, tile]`` (each frame's patches pooled 2 × 2, one newline after the video)."""

    tile: int
    frames: int

    @property
    def tower(self) -> int:
        return self.tile

    def inputs(self, hf, ours, batch: int, gen, device: str):
        from v2drop_kernels.models.llava_onevision import video_token_count

        pixels = randn(gen, device, hf.dtype, batch, self.frames, 3, self.tile, self.tile)
        return full(hf.config.video_token_id, video_token_count(ours.cfg, self.frames)), {"pixel_values_videos": pixels}


class QwenGrid(NamedTuple):
    """One Qwen-VL image or video of grid ``(t, h, w)`` in patches (14 px, Qwen3-VL and Qwen3.5 16 px),
    merged 2 × 2 (one model for every grid); a Qwen3-VL or Qwen3.5 video is one span per grid step,
    each after a timestamp (``TIMESTAMP`` text tokens), as their processors write it."""

    t: int
    h: int
    w: int
    video: bool = False
    tower = None

    def inputs(self, hf, ours, batch: int, gen, device: str):
        cfg, n, patch = hf.config, self.t * self.h * self.w, hf.config.vision_config.patch_size
        patches = randn(gen, device, hf.dtype, batch * n, 3 * 2 * patch * patch)
        grid = torch.tensor([[self.t, self.h, self.w]] * batch, device=device)
        token = cfg.video_token_id if self.video else cfg.image_token_id
        spans = self.t if self.video and cfg.model_type in ("qwen3_vl", "qwen3_5") else 1
        span = torch.cat([full(cfg.vision_start_token_id, 1), full(token, n // 4 // spans), full(cfg.vision_end_token_id, 1)])
        if spans > 1:  # timestamp text before each frame's span
            span = torch.cat([torch.cat([torch.randint(3, cfg.text_config.vocab_size - 8, (TIMESTAMP,), generator=gen), span])
                              for _ in range(spans)])
        return span, ({"pixel_values_videos": patches, "video_grid_thw": grid} if self.video else
                      {"pixel_values": patches, "image_grid_thw": grid})

    def hf_extra(self, hf, row: torch.Tensor, batch: int) -> dict:
        """transformers' Qwen-VL also takes each token's modality (1 image, 2 video)."""
        token = hf.config.video_token_id if self.video else hf.config.image_token_id
        types = torch.zeros(batch, row.numel(), dtype=torch.int32)
        types[:, row.eq(token)] = 2 if self.video else 1
        return {"mm_token_type_ids": types}


def randn(gen, device: str, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(device, dtype)


def full(token: int, n: int) -> torch.Tensor:
    return torch.full((n,), token)


# -- model families: how each is built, its workloads (GPU, CPU) and its V²Drop schedule ----------------------
def _text_llama(shape):
    from transformers import LlamaConfig

    layers, hidden, mlp, heads, kv_heads, vocab = shape
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
                       eos_token_id=None, pad_token_id=0, initializer_range=0.02)


def _clip(side: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=side, patch_size=14)


def _instantiate(model_class, cfg, device: str, dtype: torch.dtype):
    """transformers' ``model_class`` of ``cfg``: random weights, SDPA, no end-of-sequence token."""
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        hf = model_class(cfg).to(dtype).eval()
    hf.generation_config.eos_token_id = None
    return hf


def build_llava(shape, tokens_per_image: int, device: str, dtype: torch.dtype):
    """LLaVA-1.5: a CLIP tower whose image gives ``tokens_per_image`` patches."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = LlavaConfig(vision_config=_clip(math.isqrt(tokens_per_image) * 14), text_config=_text_llama(shape),
                      image_token_id=shape[-1] - 1, vision_feature_layer=-1)
    hf = _instantiate(LlavaForConditionalGeneration, cfg, device, dtype)
    return hf, llava_from_transformers(hf)


LLAVA_V16_GRIDS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))  # (height, width) px of 336 px tiles


def build_llava_next(shape, tile: int, device: str, dtype: torch.dtype):
    """LLaVA-NeXT: a CLIP tower of ``tile`` px tiles, llava-v1.6's grids scaled to that tile."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    grids = [[h * tile // 336, w * tile // 336] for h, w in LLAVA_V16_GRIDS]
    cfg = LlavaNextConfig(vision_config=_clip(tile), text_config=_text_llama(shape), image_token_index=shape[-1] - 1,
                          vision_feature_layer=-1, image_grid_pinpoints=grids)
    hf = _instantiate(LlavaNextForConditionalGeneration, cfg, device, dtype)
    return hf, llava_next_from_transformers(hf)


def build_llava_ov(shape, tile: int, device: str, dtype: torch.dtype):
    """LLaVA-OneVision: a SigLIP tower of ``tile`` px tiles, a Qwen2 decoder (q/k/v biases), grids of
    1 to 6 × 1 to 6 tiles, ``anyres_max_9`` (llava-onevision-qwen2-7b's)."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    layers, hidden, mlp, heads, kv_heads, vocab = shape
    text = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32768,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6}, eos_token_id=None, pad_token_id=0,
                       initializer_range=0.02)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=tile, patch_size=14, vision_use_head=False)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=vocab - 2, video_token_index=vocab - 1,
                               image_grid_pinpoints=[[tile * h, tile * w] for h in range(1, 7) for w in range(1, 7)],
                               vision_aspect_ratio="anyres_max_9")
    hf = _instantiate(LlavaOnevisionForConditionalGeneration, cfg, device, dtype)
    return hf, llava_onevision_from_transformers(hf)


def build_qwen(shape, _tower, device: str, dtype: torch.dtype):
    """Qwen2.5-VL (a one-block ViT of width 64, 14 px patches merged 2×2)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config=_text_qwen(shape, (16, 24, 24), 1e6),
        vision_config={"depth": 1, "hidden_size": 64, "out_hidden_size": shape[1], "intermediate_size": 128, "num_heads": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                       "fullatt_block_indexes": [0], "tokens_per_second": 2},
        **_qwen_tokens(shape[-1]),
    )
    hf = _instantiate(Qwen2_5_VLForConditionalGeneration, cfg, device, dtype)
    return hf, qwen_vl_from_transformers(hf)


def build_qwen3(shape, _tower, device: str, dtype: torch.dtype):
    """Qwen3-VL: a Qwen3 decoder (q/k norms, interleaved M-RoPE of the 8B's (24, 20, 20) proportions,
    θ = 5·10⁶, head_dim 128 at full width) and a three-block ViT of width 64, 16 px patches merged
    2×2, a DeepStack merger on every block: features added after decoder layers 0, 1, 2, as the 8B's
    three DeepStack levels are."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = _text_qwen(shape, (24, 20, 20), 5e6) | {"head_dim": shape[1] // shape[3]}
    text["rope_parameters"]["mrope_interleaved"] = True
    cfg = Qwen3VLConfig(
        text_config=text,
        vision_config={"depth": 3, "hidden_size": 64, "out_hidden_size": shape[1], "intermediate_size": 128, "num_heads": 2,
                       "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304,
                       "deepstack_visual_indexes": [0, 1, 2]},
        tie_word_embeddings=False, **_qwen_tokens(shape[-1]),
    )
    hf = _instantiate(Qwen3VLForConditionalGeneration, cfg, device, dtype)
    return hf, qwen_vl_from_transformers(hf)


def build_qwen3_5(shape, _tower, device: str, dtype: torch.dtype):
    """Qwen3.5: a hybrid decoder (every fourth layer gated full attention, the others Gated DeltaNet
    linear attention with ``shape[-1]`` = (key heads, value heads, head dim); q/k norms, a quarter
    of each head rotated by interleaved M-RoPE of the (11, 11, 10) proportions, θ = 10⁷, head_dim
    hidden / heads) and a one-block ViT of width 64, 16 px patches merged 2×2, no DeepStack."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    *dense, (linear_k, linear_v, linear_dim) = shape
    text = _text_qwen(dense, (11, 11, 10), 1e7, rotary=4)  # a quarter of each head rotated
    text["rope_parameters"] |= {"partial_rotary_factor": 0.25, "mrope_interleaved": True}
    text |= {"head_dim": shape[1] // shape[3], "linear_num_key_heads": linear_k, "linear_num_value_heads": linear_v,
             "linear_key_head_dim": linear_dim, "linear_value_head_dim": linear_dim, "linear_conv_kernel_dim": 4,
             "full_attention_interval": 4}
    cfg = Qwen3_5Config(
        text_config=text,
        vision_config={"depth": 1, "hidden_size": 64, "out_hidden_size": shape[1], "intermediate_size": 128, "num_heads": 2,
                       "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 2304},
        tie_word_embeddings=False, **_qwen_tokens(dense[-1]),
    )
    hf = _instantiate(Qwen3_5ForConditionalGeneration, cfg, device, dtype)
    return hf, qwen_vl_from_transformers(hf)


def _text_qwen(shape, proportions: tuple[int, int, int], theta: float, rotary: int = 1) -> dict:
    """A Qwen-VL text config of ``shape`` whose M-RoPE sections keep ``proportions`` (a published
    model's sections), over the rotary frequencies of ``1 / rotary`` of each head."""
    layers, hidden, mlp, heads, kv_heads, vocab = shape
    section = mrope_section(hidden // heads // rotary // 2, proportions)
    return {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": mlp, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta, "mrope_section": section},
            "eos_token_id": None, "pad_token_id": 0, "initializer_range": 0.02}


def _qwen_tokens(vocab: int) -> dict:
    return {"image_token_id": vocab - 3, "video_token_id": vocab - 2, "vision_start_token_id": vocab - 5,
            "vision_end_token_id": vocab - 4}


def llava15_schedule(workload: str, num_visual: int) -> V2Drop:
    """V²Drop's LLaVA-1.5 schedule: before layers 3, 17, 22 keep 50%, 50%, 0% of what is left."""
    return V2Drop(layers=(3, 17, 22), keep=(0.5, 0.5, 0.0))


def video_schedule(workload: str, num_visual: int) -> V2Drop:
    """V²Drop's published LLaVA-OneVision video setting (``"llava-ov"``): before layers 3, 16, 22
    keep 25% and 5% of the prompt's visual tokens, then one."""
    return V2Drop(schedule="llava-ov")


def llava_schedule(workload: str, num_visual: int) -> V2Drop:
    """LLaVA-1.5: images the LLaVA-1.5 schedule, videos (frames as images) the published video setting."""
    return (video_schedule if workload.startswith("video") else llava15_schedule)(workload, num_visual)


class Family(NamedTuple):
    """How one architecture is benchmarked: ``build(shape, tower, device, dtype)`` → (transformers'
    model, this package's on the same tensors), one model per ``tower`` its workloads need; the
    workloads (name → :class:`Images` / :class:`Anyres` / :class:`Video` / :class:`QwenGrid`) on a
    GPU and on CPU; ``v2drop(workload, visual tokens of a prompt)`` → its V²Drop schedule;
    ``pdrop_layers`` and ``fastv_k``: PyramidDrop's boundaries and FastV's K on it (the package's
    defaults for the architecture: the published ones unless its model class has its own)."""

    build: Callable
    workloads: dict
    cpu_workloads: dict
    v2drop: Callable[[str, int], V2Drop]
    pdrop_layers: tuple[int, ...] = VisionLanguageModel.pdrop_layers
    fastv_k: int = VisionLanguageModel.fastv_k


FAMILIES = {
    "llava": Family(build_llava,
                    {"image": Images(1, 576), "highres": Images(5, 576), "video32": Images(32, 196), "video64": Images(64, 196)},
                    {"image": Images(1, 576), "video8": Images(8, 196)},
                    llava_schedule),
    "llava-next": Family(build_llava_next, {"anyres": Anyres(336, (672, 672))}, {"anyres": Anyres(112, (224, 224))},
                         llava15_schedule),
    "llava-ov": Family(build_llava_ov,
                       {"anyres": Anyres(384, (768, 768)), "video32": Video(384, 32), "video64": Video(384, 64)},
                       {"anyres": Anyres(128, (256, 256)), "video8": Video(128, 8)},
                       video_schedule),
    "qwen2.5-vl": Family(build_qwen,
                         {"image": QwenGrid(1, 48, 48), "highres": QwenGrid(1, 96, 120),
                          "video32": QwenGrid(32, 28, 28, video=True), "video64": QwenGrid(64, 28, 28, video=True)},
                         {"image": QwenGrid(1, 48, 48), "video8": QwenGrid(8, 28, 28, video=True)},
                         lambda w, n: V2Drop(schedule="qwen2-vl")),
    "qwen3-vl": Family(build_qwen3,
                       {"image": QwenGrid(1, 48, 48), "highres": QwenGrid(1, 96, 120),
                        "video32": QwenGrid(32, 28, 28, video=True), "video64": QwenGrid(64, 28, 28, video=True)},
                       {"image": QwenGrid(1, 48, 48), "video8": QwenGrid(8, 28, 28, video=True)},
                       lambda w, n: V2Drop(schedule="qwen2-vl")),  # no published Qwen3-VL schedule
    "qwen3.5": Family(build_qwen3_5,
                      {"image": QwenGrid(1, 48, 48), "highres": QwenGrid(1, 96, 120),
                       "video32": QwenGrid(32, 28, 28, video=True), "video64": QwenGrid(64, 28, 28, video=True)},
                      {"image": QwenGrid(1, 48, 48), "video8": QwenGrid(8, 28, 28, video=True)},
                      lambda w, n: V2Drop(schedule=Qwen3_5.v2drop_schedule),  # "qwen2-vl": none published for Qwen3.5
                      pdrop_layers=Qwen3_5.pdrop_layers, fastv_k=Qwen3_5.fastv_k),  # only full-attention layers rank
}


def policies(workload: str, num_visual: int, family: str = "llava") -> dict[str, tuple[Policy, str | None]]:
    """Policy name → (policy, ops backend); ``None`` is the fastest backend for the device."""
    spec = FAMILIES[family]
    v2 = lambda: spec.v2drop(workload, num_visual)  # noqa: E731
    return {
        "none": (Policy(), None),
        "v2drop": (v2(), None),
        "v2drop-eager-ops": (v2(), "reference"),
        "pdrop": (PyramidDrop(layers=spec.pdrop_layers, ratio=0.5), None),
        "fastv": (FastV(k=spec.fastv_k, r=0.5), None),
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
    ``visual`` (under transformers' names) for this package's ``generate``, ``hf_kwargs`` for
    transformers' (``visual`` and what only transformers takes)."""

    def __init__(self, hf, ours, spec, batch: int, device: str):
        gen = torch.Generator().manual_seed(0)
        text = lambda n: torch.randint(3, hf.config.text_config.vocab_size - 8, (n,), generator=gen)  # noqa: E731
        span, self.visual = spec.inputs(hf, ours, batch, gen, device)  # the prompt's visual part, the vision inputs
        row = torch.cat([text(TEXT_BEFORE), span, text(TEXT_AFTER)])
        extra = spec.hf_extra(hf, row, batch) if hasattr(spec, "hf_extra") else {}
        self.hf_kwargs = self.visual | {k: v.to(device) for k, v in extra.items()}
        visual_ids = [getattr(hf.config, name, None) for name in ("image_token_id", "video_token_id")]
        self.num_visual = sum(int(row.eq(i).sum()) for i in visual_ids if i is not None)
        self.prompts = [row] * batch
        self.ids = torch.stack(self.prompts).to(device)


def measure_ours(model, work: Workload, policy: Policy, backend, args, timer, graph: bool) -> dict:
    def run(new: int, **kw):
        return model.generate(work.prompts, **work.visual, max_new_tokens=new, policy=policy, backend=backend,
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
    parser.add_argument("--workloads", help="comma list of " + ", ".join(dict.fromkeys(
        w for f in FAMILIES.values() for w in [*f.workloads, *f.cpu_workloads])) + " (each model runs those of its family)")
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

    def family_workloads(family: str) -> dict:
        return FAMILIES[family].cpu_workloads if args.cpu else FAMILIES[family].workloads

    # each model runs the selected workloads its family has
    names = pick("workloads", args.workloads, {w: None for family, _ in models.values() for w in family_workloads(family)})
    runs = {m: {w: spec for w, spec in family_workloads(family).items() if w in names} for m, (family, _) in models.items()}
    if not any(runs.values()):
        parser.error(f"no selected model has any of the workloads {', '.join(names)}")
    batches = [int(b) for b in (args.batches or ("1,2" if args.cpu else "1,8")).split(",")]
    wanted = pick("policies", args.policies, set(ROWS))
    if args.plan:
        for model_name, workloads in runs.items():
            for workload, spec in workloads.items():
                print(f"{model_name} {workload} batches {batches}: {', '.join(r for r in ROWS if r in wanted)}  [{spec}]")
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
        # one model per vision tower the workloads need (LLaVA-1.5: per tokens-per-image; LLaVA-NeXT and
        # -OneVision: per tile size; Qwen: one for every workload)
        workloads = runs[model_name]
        for tower in dict.fromkeys(spec.tower for spec in workloads.values()):
            torch.compiler.reset()  # the previous model's compiled graphs are of no further use
            hf, ours = FAMILIES[family].build(shape, tower, device, dtype)
            floor_ms = weight_bytes(ours) / (bandwidth * 1e9) * 1e3
            for workload, spec in workloads.items():
                if spec.tower != tower:
                    continue
                for batch in batches:
                    work = Workload(hf, ours, spec, batch, device)
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
