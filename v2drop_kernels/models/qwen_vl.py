"""Qwen2-VL and Qwen2.5-VL in plain PyTorch: ``transformers``' vision tower → Qwen2 decoder with M-RoPE.

    model = load_qwen_vl("path/to/Qwen2.5-VL-7B-Instruct", dtype=torch.bfloat16, device="cuda")
    out = model.generate(prompts, pixel_values=pixels, image_grid_thw=grids, policy=V2Drop(schedule="qwen2-vl"))

Inputs are what the HF processor gives, one prompt per row: token ids in which an image is a span of
``t·h·w / merge²`` image tokens (``grid_thw = (t, h, w)`` in patches, ``t = 1``) and a video a span
of video tokens; ``pixel_values`` / ``pixel_values_videos`` hold the flattened patches and
``image_grid_thw`` / ``video_grid_thw`` one row per image / video, in prompt order across the batch.

Position ids are M-RoPE planes ``[3, ...]`` (temporal, height, width), computed as ``transformers``
computes them (:func:`rope_planes`): text tokens count up on all three planes; a visual span starts
at the current position ``p`` with ids ``(p + t·interval, p + row, p + column)`` (``interval``: 1,
or Qwen2.5-VL's ``tokens_per_second · seconds per grid step`` for videos), and the text after it
continues from ``p + max(h, w) / merge``. Pruning keeps the survivors' three planes; generated
tokens continue one by one from the last prompt token's ids, as ``transformers``' ``generate``
does (Qwen's original code continued from the largest id of the prompt; the two differ after a
video whose temporal ids outrun the text that follows it).
"""

from __future__ import annotations

import importlib
from typing import Sequence

import torch
from torch import Tensor, nn

from ..extras import require
from .config import QwenVLConfig
from .tokens import Tokens
from .vlm import VisionLanguageModel, VisualInput

TEXT, IMAGE, VIDEO = 0, 1, 2  # token types, as transformers' mm_token_type_ids

# arch -> (module, vision tower class, vision config class) in transformers
_VISION = {
    "qwen2_vl": ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VisionTransformerPretrainedModel", "Qwen2VLVisionConfig"),
    "qwen2_5_vl": ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VisionTransformerPretrainedModel",
                   "Qwen2_5_VLVisionConfig"),
    "qwen3_vl": ("transformers.models.qwen3_vl.modeling_qwen3_vl", "Qwen3VLVisionModel", "Qwen3VLVisionConfig"),
    "qwen3_5": ("transformers.models.qwen3_5.modeling_qwen3_5", "Qwen3_5VisionModel", "Qwen3_5VisionConfig"),
}


def build_vision_tower(cfg: QwenVLConfig, **overrides) -> nn.Module:
    """``transformers``' vision tower of ``cfg.arch`` (patch embedding, ViT blocks, 2×2 patch merger)."""
    transformers = require("transformers", "Qwen-VL's vision tower")
    module, tower, config = _VISION[cfg.arch]
    vision_cfg = getattr(transformers, config)(**{**cfg.vision, **overrides})
    return getattr(importlib.import_module(module), tower)(vision_cfg)


def rope_planes(types: Sequence[int], grids: dict[int, list], merge: int, intervals: list[float] | None) -> Tensor:
    """int64 ``[3, n]``: M-RoPE position ids of one prompt whose tokens have ``types`` (``TEXT``,
    ``IMAGE``, ``VIDEO``). ``grids[IMAGE]`` / ``grids[VIDEO]``: the ``(t, h, w)`` of each visual span,
    consumed in order (the lists are popped from the front); ``intervals``: temporal step of each
    video (Qwen2.5-VL), consumed likewise; ``None``: 1."""
    planes, pos, start = [], 0, 0
    n = len(types)
    while start < n:
        kind, end = types[start], start
        while end < n and types[end] == kind:
            end += 1
        length = end - start
        if kind == TEXT:
            planes.append(torch.arange(pos, pos + length).expand(3, -1))
            pos += length
        else:
            name = "image" if kind == IMAGE else "video"
            if not grids[kind]:
                raise ValueError(f"the prompts hold more {name} spans than {name}_grid_thw has rows")
            t, h, w = (int(x) for x in grids[kind].pop(0))
            if h % merge or w % merge:
                raise ValueError(f"{name}_grid_thw row {(t, h, w)}: h and w must be multiples of spatial_merge_size={merge}")
            h, w = h // merge, w // merge
            if length != t * h * w:
                raise ValueError(f"{'an' if kind == IMAGE else 'a'} {name} span of {length} tokens, but its grid (t={t}, h={h * merge}, w={w * merge}) "
                                 f"gives t·h·w/{merge * merge} = {t * h * w}")
            interval = intervals.pop(0) if (kind == VIDEO and intervals is not None) else 1.0
            frames = (torch.arange(t) * interval).long()
            grid = torch.stack(torch.meshgrid(frames, torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1)
            planes.append(grid + pos)
            pos += max(h, w)
        start = end
    return torch.cat(planes, dim=1) if planes else torch.zeros(3, 0, dtype=torch.long)


class QwenVL(VisionLanguageModel):
    """Qwen2-VL / Qwen2.5-VL: what it adds to :class:`~v2drop_kernels.models.vlm.VisionLanguageModel`
    is ``transformers``' vision tower, its image and video tokens and the M-RoPE planes.
    ``vision_tower=False`` builds the language side only: prompts then take precomputed
    ``image_features`` / ``video_features`` (``[tokens, hidden]``, merger outputs)."""

    v2drop_schedule = "qwen2-vl"  # the official Qwen2-VL port's V²Drop schedule (see policies.v2drop)

    def __init__(self, cfg: QwenVLConfig, vision_tower: bool = True):
        super().__init__()
        self.cfg = cfg
        self.visual = build_vision_tower(cfg) if vision_tower else None
        self._build_language(cfg.text)

    def visual_inputs(self) -> tuple[VisualInput, ...]:
        return (VisualInput(self.cfg.image_token_id, "image", "pixel_values"),
                VisualInput(self.cfg.video_token_id, "video", "pixel_values_videos"))

    # -- inputs -------------------------------------------------------------------------------------
    def visual_features(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """Flattened patches ``[patches, C·T·P·P]`` of the images (or videos) of ``grid_thw`` →
        ``[tokens, hidden]``, one token per ``merge × merge`` patches, in the decoder's dtype."""
        return self.encode(pixel_values, grid_thw)[0]

    def encode(self, pixel_values: Tensor, grid_thw: Tensor) -> tuple[Tensor, Tensor | None]:
        """The vision tower on flattened patches: ``(features [tokens, hidden], DeepStack features
        [levels, tokens, hidden] or None)``, in the decoder's dtype (Qwen2-VL and Qwen2.5-VL have no
        DeepStack)."""
        if self.visual is None:
            raise RuntimeError("this model was built without a vision tower: pass image_features / video_features")
        dtype = self.lm_head.weight.dtype
        out = self.visual(pixel_values.to(self.visual.dtype), grid_thw=grid_thw)
        deep = getattr(out, "deepstack_features", None)
        return getattr(out, "pooler_output", out).to(dtype), (torch.stack(list(deep)).to(dtype) if deep else None)

    def _video_grids(self, video_grid_thw, second_per_grid_ts) -> tuple[list, list[float] | None]:
        """The grids of the prompts' video spans, in order, and each span's temporal step (None: 1):
        one span per video, stepping by Qwen2.5-VL's ``tokens_per_second · seconds per grid step``."""
        grids = [] if video_grid_thw is None else torch.as_tensor(video_grid_thw).tolist()
        if self.cfg.arch != "qwen2_5_vl":
            if second_per_grid_ts is not None:
                raise ValueError(f"second_per_grid_ts is a Qwen2.5-VL input; {self.cfg.arch}'s temporal ids step by 1")
            return grids, None
        seconds = [1.0] * len(grids) if second_per_grid_ts is None else torch.as_tensor(second_per_grid_ts).tolist()
        if len(seconds) != len(grids):
            raise ValueError(f"second_per_grid_ts has {len(seconds)} entries for {len(grids)} videos")
        return grids, [self.cfg.tokens_per_second * s for s in seconds]

    def _planes(self, prompts: list[Tensor], image_grid_thw, video_grid_thw, second_per_grid_ts) -> list[Tensor]:
        """Each prompt's ``[3, n]`` M-RoPE position ids (host), checking spans against the grids."""
        cfg = self.cfg
        videos, intervals = self._video_grids(video_grid_thw, second_per_grid_ts)
        grids = {IMAGE: [] if image_grid_thw is None else torch.as_tensor(image_grid_thw).tolist(), VIDEO: videos}
        out = []
        for ids in prompts:
            types = torch.zeros_like(ids)
            types[ids == cfg.image_token_id] = IMAGE
            types[ids == cfg.video_token_id] = VIDEO
            out.append(rope_planes(types.tolist(), grids, cfg.spatial_merge_size, intervals))
        for kind, name in ((IMAGE, "image"), (VIDEO, "video")):
            if grids[kind]:
                raise ValueError(f"{name}_grid_thw has {len(grids[kind])} more {'rows' if kind == IMAGE else 'spans'} than "
                                 f"the prompts have {name} spans")
        return out

    def tokens(self, prompts: Sequence[Tensor], layout: str, *, image_features: Tensor | None = None,
               image_grid_thw: Tensor | None = None, video_features: Tensor | None = None,
               video_grid_thw: Tensor | None = None, second_per_grid_ts: Tensor | None = None,
               image_deepstack: Tensor | None = None, video_deepstack: Tensor | None = None) -> Tokens:
        """The prefill input: ``padded`` (left padding, same number of visual tokens per row),
        ``packed``, or ``auto`` (padded when every row holds as many visual tokens); positions: the
        M-RoPE planes of each prompt. ``image_deepstack`` / ``video_deepstack``: the features'
        DeepStack levels ``[levels, tokens, hidden]`` (Qwen3-VL, which needs them)."""
        host = self._host_prompts(prompts)
        planes = self._planes(host, image_grid_thw, video_grid_thw, second_per_grid_ts)
        levels = self.cfg.deepstack_levels
        for name, feats, deep in (("image", image_features, image_deepstack), ("video", video_features, video_deepstack)):
            if deep is None:
                if levels and feats is not None:
                    raise ValueError(f"{name}_features need {name}_deepstack: {self.cfg.arch} adds DeepStack features to "
                                     f"the visual tokens after its first {levels} layers")
                continue
            rows = None if feats is None else feats.reshape(-1, feats.shape[-1]).shape
            if not levels or deep.dim() != 3 or deep.shape[0] != levels or rows is None or tuple(deep.shape[1:]) != tuple(rows):
                want = (f"[{levels}, tokens, hidden] with a row for each of the {name} features' "
                        f"{'(none given)' if rows is None else rows[0]}") if levels else "no DeepStack features"
                raise ValueError(f"{name}_deepstack of shape {tuple(deep.shape)}: this model adds {want}")
        return self._prefill_tokens(host, layout, [image_features, video_features], planes,
                                    deepstack=[image_deepstack, video_deepstack] if levels else None)

    def inputs(self, prompts: Sequence[Tensor], layout: str, pixel_values: Tensor | None = None,
               image_grid_thw: Tensor | None = None, pixel_values_videos: Tensor | None = None,
               video_grid_thw: Tensor | None = None, second_per_grid_ts: Tensor | None = None,
               image_features: Tensor | None = None, video_features: Tensor | None = None,
               image_deepstack: Tensor | None = None, video_deepstack: Tensor | None = None) -> Tokens:
        """The prefill tokens of ``prompts`` from what the HF processor gives (the flattened patches
        and grids of the images and videos, Qwen2.5-VL's ``second_per_grid_ts``), through the vision
        tower, or from precomputed ``image_features`` / ``video_features`` (merger outputs
        ``[tokens, hidden]``; Qwen3-VL: with their ``*_deepstack``) with their grids still given."""
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values needs image_grid_thw")
            image_features, image_deepstack = self.encode(pixel_values, torch.as_tensor(image_grid_thw, device=pixel_values.device))
        if pixel_values_videos is not None:
            if video_grid_thw is None:
                raise ValueError("pixel_values_videos needs video_grid_thw")
            video_features, video_deepstack = self.encode(pixel_values_videos,
                                                          torch.as_tensor(video_grid_thw, device=pixel_values_videos.device))
        return self.tokens(prompts, layout, image_features=image_features, image_grid_thw=image_grid_thw,
                           video_features=video_features, video_grid_thw=video_grid_thw,
                           second_per_grid_ts=second_per_grid_ts, image_deepstack=image_deepstack,
                           video_deepstack=video_deepstack)
