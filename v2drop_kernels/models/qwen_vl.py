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
from .decoder import Decoder
from .generation import Generation, GenerativeModel
from .llama import LlamaModel, Rotary
from .policies import Policy
from .pruning import PruningContext
from .tokens import Tokens, cu_seqlens, resolve_layout

TEXT, IMAGE, VIDEO = 0, 1, 2  # token types, as transformers' mm_token_type_ids

# arch -> (module, vision tower class, vision config class) in transformers
_VISION = {
    "qwen2_vl": ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VisionTransformerPretrainedModel", "Qwen2VLVisionConfig"),
    "qwen2_5_vl": ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VisionTransformerPretrainedModel",
                   "Qwen2_5_VLVisionConfig"),
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


class QwenVL(GenerativeModel):
    """Qwen2-VL / Qwen2.5-VL. ``vision_tower=False`` builds the language side only: prompts then take
    precomputed ``image_features`` / ``video_features`` (``[tokens, hidden]``, merger outputs)."""

    v2drop_schedule = "qwen2-vl"  # the official Qwen2-VL port's V²Drop schedule (see policies.v2drop)

    def __init__(self, cfg: QwenVLConfig, vision_tower: bool = True):
        super().__init__()
        self.cfg = cfg
        self.visual = build_vision_tower(cfg) if vision_tower else None
        self.language_model = LlamaModel(cfg.text)
        self.lm_head = nn.Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)
        if cfg.text.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight
        self.rotary = Rotary(cfg.text)
        self.decoder = Decoder(self.language_model, cfg.text, self.rotary)
        self._init_generation()

    # -- inputs -------------------------------------------------------------------------------------
    def visual_features(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        """Flattened patches ``[patches, C·T·P·P]`` of the images (or videos) of ``grid_thw`` →
        ``[tokens, hidden]``, one token per ``merge × merge`` patches, in the decoder's dtype."""
        if self.visual is None:
            raise RuntimeError("this model was built without a vision tower: pass image_features / video_features")
        dtype = self.lm_head.weight.dtype
        out = self.visual(pixel_values.to(self.visual.dtype), grid_thw=grid_thw)
        return getattr(out, "pooler_output", out).to(dtype)

    def _planes(self, prompts: list[Tensor], image_grid_thw, video_grid_thw, second_per_grid_ts) -> list[Tensor]:
        """Each prompt's ``[3, n]`` M-RoPE position ids (host), checking spans against the grids."""
        cfg = self.cfg
        grids = {IMAGE: [] if image_grid_thw is None else torch.as_tensor(image_grid_thw).tolist(),
                 VIDEO: [] if video_grid_thw is None else torch.as_tensor(video_grid_thw).tolist()}
        intervals = None
        if cfg.arch == "qwen2_5_vl":
            seconds = [1.0] * len(grids[VIDEO]) if second_per_grid_ts is None else torch.as_tensor(second_per_grid_ts).tolist()
            if len(seconds) != len(grids[VIDEO]):
                raise ValueError(f"second_per_grid_ts has {len(seconds)} entries for {len(grids[VIDEO])} videos")
            intervals = [cfg.tokens_per_second * s for s in seconds]
        elif second_per_grid_ts is not None:
            raise ValueError("second_per_grid_ts is a Qwen2.5-VL input; Qwen2-VL's temporal ids step by 1")
        out = []
        for ids in prompts:
            types = torch.zeros_like(ids)
            types[ids == cfg.image_token_id] = IMAGE
            types[ids == cfg.video_token_id] = VIDEO
            out.append(rope_planes(types.tolist(), grids, cfg.spatial_merge_size, intervals))
        for kind, name in ((IMAGE, "image"), (VIDEO, "video")):
            if grids[kind]:
                raise ValueError(f"{name}_grid_thw has {len(grids[kind])} more rows than the prompts have {name} spans")
        return out

    def _embed(self, ids: Tensor, image_features: Tensor | None, video_features: Tensor | None) -> tuple[Tensor, Tensor]:
        """Token embeddings with the visual features written over their tokens (in order), and the
        visual mask (image or video tokens)."""
        hidden = self.language_model.embed_tokens(ids)
        masks = []
        for token, features, name in ((self.cfg.image_token_id, image_features, "image"),
                                      (self.cfg.video_token_id, video_features, "video")):
            mask = ids == token
            count = int(mask.sum())
            if features is None:
                if count:
                    raise ValueError(f"the prompts hold {name} tokens but no {name} inputs were given")
            else:
                if count != features.shape[0]:
                    raise ValueError(f"the prompts hold {count} {name} tokens but the {name} inputs give {features.shape[0]} features")
                hidden = hidden.masked_scatter(mask.unsqueeze(-1), features.to(hidden.dtype))
            masks.append(mask)
        return hidden, masks[0] | masks[1]

    def tokens(self, prompts: Sequence[Tensor], layout: str, *, image_features: Tensor | None = None,
               image_grid_thw: Tensor | None = None, video_features: Tensor | None = None,
               video_grid_thw: Tensor | None = None, second_per_grid_ts: Tensor | None = None) -> Tokens:
        """The prefill input: ``padded`` (left padding, same number of visual tokens per row),
        ``packed``, or ``auto`` (padded when every row holds as many visual tokens)."""
        device = self.lm_head.weight.device
        host = [torch.as_tensor(p, dtype=torch.long).flatten().cpu() for p in prompts]
        if not host or min(p.numel() for p in host) < 1:
            raise ValueError("every prompt needs at least one token")
        planes = self._planes(host, image_grid_thw, video_grid_thw, second_per_grid_ts)
        visual = [int(((p == self.cfg.image_token_id) | (p == self.cfg.video_token_id)).sum()) for p in host]
        layout = resolve_layout(layout, visual)
        lengths = [p.numel() for p in host]
        if layout == "packed":
            hidden, vis = self._embed(torch.cat(host).to(device), image_features, video_features)
            cu = cu_seqlens(lengths, device)
            index = torch.cat([torch.arange(n) for n in lengths]).to(device)
            pos = torch.cat(planes, dim=1).to(device)
            return Tokens(hidden, pos, index, vis, visual, cu_seqlens=cu, lengths=lengths)
        width, pad = max(lengths), self.cfg.text.pad_token_id or 0
        ids = torch.full((len(host), width), pad, dtype=torch.long)
        pos = torch.zeros(3, len(host), width, dtype=torch.long)  # transformers' rule: left padding at 0
        index = torch.full((len(host), width), -1, dtype=torch.long)
        for row, (p, plane) in enumerate(zip(host, planes)):
            ids[row, width - p.numel():] = p
            pos[:, row, width - p.numel():] = plane
            index[row, width - p.numel():] = torch.arange(p.numel())
        hidden, vis = self._embed(ids.to(device), image_features, video_features)
        valid = None if min(lengths) == width else (index >= 0).to(device)
        return Tokens(hidden, pos.to(device), index.to(device), vis, visual, valid=valid)

    def _inputs(self, prompts, layout, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw,
                second_per_grid_ts, image_features=None, video_features=None) -> Tokens:
        """The prefill tokens of ``prompts`` from pixels (through the vision tower) or given features."""
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values needs image_grid_thw")
            image_features = self.visual_features(pixel_values, torch.as_tensor(image_grid_thw, device=pixel_values.device))
        if pixel_values_videos is not None:
            if video_grid_thw is None:
                raise ValueError("pixel_values_videos needs video_grid_thw")
            video_features = self.visual_features(pixel_values_videos,
                                                  torch.as_tensor(video_grid_thw, device=pixel_values_videos.device))
        return self.tokens(prompts, layout, image_features=image_features, image_grid_thw=image_grid_thw,
                           video_features=video_features, video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts)

    # -- forward and generation ---------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, prompts: Sequence[Tensor], pixel_values: Tensor | None = None, image_grid_thw: Tensor | None = None,
                pixel_values_videos: Tensor | None = None, video_grid_thw: Tensor | None = None,
                second_per_grid_ts: Tensor | None = None, policy: Policy | None = None, layout: str = "padded",
                backend: str | None = None) -> tuple[Tensor, Tokens]:
        """Prefill only: logits of every surviving token and the final :class:`Tokens`."""
        tokens = self._inputs(prompts, layout, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw,
                              second_per_grid_ts)
        tokens = self.decoder.prefill(tokens, policy or Policy(), ctx=PruningContext(backend))
        return self.lm_head(tokens.hidden).float(), tokens

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Tensor],
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        second_per_grid_ts: Tensor | None = None,
        *,
        max_new_tokens: int = 16,
        policy: Policy | None = None,
        layout: str = "auto",
        backend: str | None = None,
        progress: bool = False,
        image_features: Tensor | None = None,
        video_features: Tensor | None = None,
        cuda_graph: bool | None = None,
        time_pruning: bool = False,
    ) -> Generation:
        """Greedy generation. ``layout="auto"`` packs only when rows hold different numbers of
        visual tokens. ``image_features`` / ``video_features`` (merger outputs ``[tokens, hidden]``)
        replace the pixels, with their grids still given. ``cuda_graph``, ``time_pruning``: see
        :meth:`~v2drop_kernels.models.generation.GenerativeModel.run_generation`."""
        def inputs() -> Tokens:
            return self._inputs(prompts, layout, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw,
                                second_per_grid_ts, image_features, video_features)

        return self.run_generation(inputs, max_new_tokens=max_new_tokens, policy=policy, backend=backend,
                                   progress=progress, cuda_graph=cuda_graph, time_pruning=time_pruning)
