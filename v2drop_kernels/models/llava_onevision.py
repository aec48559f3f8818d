"""LLaVA-OneVision in plain PyTorch: a SigLIP tower (``transformers``' ``SiglipVisionModel``), LLaVA's
projector and a Qwen2 decoder; images as LLaVA-NeXT's anyres tiles, and videos.

    model = load_model("path/to/llava-onevision-qwen2-7b-ov-hf", dtype=torch.bfloat16, device="cuda")
    out = model.generate(prompts, pixel_values_videos=frames, policy=V2Drop(schedule="llava-ov"))

Inputs are what the HF processor gives:

- images: ``pixel_values [N, tiles, 3, H, W]`` and ``image_sizes [N, 2]`` (height, width), and
  ``batch_num_images`` (images per prompt) when the processor gives it. An image that is its
  prompt's only one (every image when ``batch_num_images`` is not given) is LLaVA-NeXT's base tile
  plus grid (:mod:`.llava_next`'s helpers, ``transformers``' own), except that the unpadded grid is
  shrunk bilinearly to at most ``anyres_max_N``'s ``N`` tiles' worth of patches when it is more than
  1.1 × that (in side), before the ``image_newline`` after each row; an image of a multi-image
  prompt is its base tile and one newline. :func:`image_token_count` tokens each.
- videos: ``pixel_values_videos [N, frames, 3, H, W]``: every frame through the tower and
  projector, 2×2 bilinear pooling (``⌈side / 2⌉²`` tokens a frame), the frames one after the
  other, and one ``image_newline`` after the video: :func:`video_token_count` tokens each.

This is what ``transformers``' ``LlavaOnevisionModel.get_image_features`` (``pack_image_features``)
and ``get_video_features`` (``apply_pooling``) compute.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..extras import require
from .config import LlavaOnevisionConfig
from .llava_next import LlavaNext, _grid_canvas, tile_count
from .tokens import Tokens
from .vlm import VisualInput


def _side(cfg: LlavaOnevisionConfig) -> int:
    """Patches along a tile's edge."""
    return cfg.vision["image_size"] // cfg.vision["patch_size"]


def _shrunk(cfg: LlavaOnevisionConfig, height: int, width: int) -> tuple[int, int]:
    """The grid's ``(height, width)`` in patches after the ``anyres_max_N`` shrink (unchanged when it
    holds at most 1.1² × ``N`` tiles' worth of patches)."""
    ratio = math.sqrt(height * width / (cfg.max_tiles * _side(cfg) ** 2))
    return (int(height // ratio), int(width // ratio)) if ratio > 1.1 else (height, width)


def image_tiles(cfg: LlavaOnevisionConfig, image_sizes, batch_num_images=None) -> list[int]:
    """Tiles of each image of ``image_sizes`` (``[N, 2]``): the anyres tiles (base + grid) when the
    image is its prompt's only one (``batch_num_images``: images per prompt; ``None``: every image),
    else 1."""
    sizes = torch.as_tensor(image_sizes).tolist()
    alone = [True] * len(sizes) if batch_num_images is None else [
        n == 1 for n in torch.as_tensor(batch_num_images).tolist() for _ in range(n)]
    if len(alone) != len(sizes):
        raise ValueError(f"batch_num_images adds up to {len(alone)} images; image_sizes has {len(sizes)} rows")
    return [tile_count(cfg, size) if one else 1 for size, one in zip(sizes, alone)]


def image_token_count(cfg: LlavaOnevisionConfig, image_size, tiled: bool = True) -> int:
    """Image tokens of an image of ``image_size = (height, width)``: the base tile's patches, then
    the (shrunk) unpadded grid's ``rows × (columns + 1)`` (a newline after each row), or one
    newline when the image is not tiled (``tiled=False``: an image of a multi-image prompt)."""
    side = _side(cfg)
    if not tiled:
        return side * side + 1
    grid = torch.empty(tile_count(cfg, image_size) - 1, side * side, 0)
    rows, cols = _shrunk(cfg, *_grid_canvas(cfg, image_size, grid).shape[1:])
    return side * side + rows * (cols + 1)


def video_token_count(cfg: LlavaOnevisionConfig, frames: int) -> int:
    """Video tokens of a video of ``frames`` frames: ``⌈side / 2⌉²`` a frame, one newline."""
    return frames * math.ceil(_side(cfg) / 2) ** 2 + 1


class LlavaOnevision(LlavaNext):
    """LLaVA-OneVision: :class:`~v2drop_kernels.models.llava_next.LlavaNext` (projector,
    ``image_newline``, anyres grids, per-tile features) with a SigLIP tower, a Qwen2 decoder, the
    ``anyres_max_N`` shrink, and videos (their own token).

    Default schedule: V²Drop's LLaVA-OneVision video setting (the paper's −74.2 % latency), before
    layers 3, 16 and 22 keep 25 % and then 5 % of the prompt's visual tokens and then one
    (``V2Drop(schedule="llava-ov")``; the paper released no code for it)."""

    v2drop_schedule = "llava-ov"  # V²Drop's published LLaVA-OneVision video setting (see policies.v2drop)

    def __init__(self, cfg: LlavaOnevisionConfig, vision_tower: bool = True):
        super().__init__(cfg, vision_tower=False)  # projector, image_newline, language side
        if vision_tower:
            transformers = require("transformers", "LLaVA-OneVision's vision tower (SigLIP)")
            self.vision_tower = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**cfg.vision))

    def visual_inputs(self) -> tuple[VisualInput, ...]:
        return (VisualInput(self.cfg.image_token_id, "image", "pixel_values"),
                VisualInput(self.cfg.video_token_id, "video", "pixel_values_videos"))

    # -- inputs -------------------------------------------------------------------------------------
    def anyres_features(self, pixel_values: Tensor, image_sizes, batch_num_images=None) -> Tensor:
        """``pixel_values [N, tiles, 3, H, W]`` (or the used tiles of every image concatenated,
        ``[T, 3, H, W]``), ``image_sizes [N, 2]`` (height, width) and ``batch_num_images`` →
        ``[tokens, hidden]``, the images' features one after the other (:func:`image_token_count` each)."""
        sizes = torch.as_tensor(image_sizes).tolist()
        counts = image_tiles(self.cfg, sizes, batch_num_images)
        if pixel_values.dim() == 5 and pixel_values.shape[0] == len(sizes) and pixel_values.shape[1] >= max(counts):
            pixel_values = torch.cat([pix[:n] for pix, n in zip(pixel_values, counts)])
        if pixel_values.dim() != 4 or pixel_values.shape[0] != sum(counts):
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)} for image_sizes {sizes}: expected "
                             f"[{len(sizes)}, >= {max(counts)}, 3, H, W] or the {sum(counts)} used tiles as [{sum(counts)}, 3, H, W]")
        newline = self.image_newline.to(self.multi_modal_projector.linear_1.weight.dtype)
        out = []
        for size, feature in zip(sizes, self.image_features(pixel_values).split(counts)):
            if feature.shape[0] == 1:  # not tiled: the base tile and one newline
                out += [feature[0], newline[None]]
                continue
            canvas = _grid_canvas(self.cfg, size, feature[1:])  # [C, rows, cols]
            shape = _shrunk(self.cfg, *canvas.shape[1:])
            if shape != tuple(canvas.shape[1:]):
                canvas = nn.functional.interpolate(canvas[None], list(shape), mode="bilinear")[0]
            rows = torch.cat([canvas, newline[:, None, None].expand(-1, shape[0], 1)], dim=2)
            out += [feature[0], rows.flatten(1).T]
        return torch.cat(out)

    def video_features(self, pixel_values_videos: Tensor) -> Tensor:
        """``[N, frames, 3, H, W]`` → ``[N, video_token_count, hidden]``: each frame's patches
        pooled 2×2 (bilinear), the frames in order, then one ``image_newline``."""
        if pixel_values_videos.dim() != 5:
            raise ValueError(f"pixel_values_videos of shape {tuple(pixel_values_videos.shape)}: expected [N, frames, 3, H, W]")
        videos, side = pixel_values_videos.shape[0], _side(self.cfg)
        frames = self.image_features(pixel_values_videos.flatten(0, 1))  # [N·frames, side², C]
        grid = frames.unflatten(1, (side, side)).permute(0, 3, 1, 2)
        pooled = nn.functional.interpolate(grid, size=[math.ceil(side / 2)] * 2, mode="bilinear")
        pooled = pooled.permute(0, 2, 3, 1).reshape(videos, -1, frames.shape[-1])
        newline = self.image_newline.to(pooled.dtype)[None, None].expand(videos, 1, -1)
        return torch.cat([pooled, newline], dim=1)

    def tokens(self, prompts: Sequence[Tensor], features: Tensor | None, layout: str,
               video_features: Tensor | None = None) -> Tokens:
        """The prefill input of image ``features`` and ``video_features`` (in prompt order, any
        leading dims): ``padded``, ``packed`` or ``auto``; positions ``0 .. n-1``."""
        return self._prefill_tokens(self._host_prompts(prompts), layout, [features, video_features])

    def inputs(self, prompts: Sequence[Tensor], layout: str, pixel_values: Tensor | None = None,
               image_sizes: Tensor | None = None, pixel_values_videos: Tensor | None = None,
               batch_num_images: Tensor | None = None, image_features: Tensor | None = None,
               video_features: Tensor | None = None) -> Tokens:
        """The prefill tokens of ``prompts``: images as ``pixel_values``, ``image_sizes`` (and
        ``batch_num_images``), videos as ``pixel_values_videos`` (what the HF processor gives), or
        precomputed ``image_features`` / ``video_features`` (:meth:`anyres_features` /
        :meth:`video_features` outputs)."""
        if pixel_values is not None:
            if image_sizes is None:
                raise ValueError("pixel_values needs image_sizes (each image's height and width)")
            image_features = self.anyres_features(pixel_values, image_sizes, batch_num_images)
        if pixel_values_videos is not None:
            video_features = self.video_features(pixel_values_videos)
        return self.tokens(prompts, image_features, layout, video_features)
