"""LLaVA-NeXT (LLaVA-1.6) in plain PyTorch: LLaVA-1.5's CLIP tower, projector and Llama decoder,
images as "anyres" tiles.

    model = load_model("path/to/llava-v1.6-vicuna-7b-hf", dtype=torch.bfloat16, device="cuda")
    out = model.generate(prompts, pixel_values=pixels, image_sizes=sizes, policy=PyramidDrop())

Inputs are what the HF processor gives: ``pixel_values [N, tiles, 3, H, W]`` (an image's tiles,
padded to the batch's largest count) and ``image_sizes [N, 2]`` (each image's original height and
width). An image is a base tile of the whole image plus the tiles of the grid of
``image_grid_pinpoints`` that fits it best; its features (:meth:`LlavaNext.anyres_features`, as
``transformers``' ``LlavaNextModel.get_image_features`` + ``pack_image_features`` make them) are
the base tile's patches, then the grid's patches as one picture, cropped of the padding that
fitted the image into the grid, with the ``image_newline`` vector after each of its rows. A prompt
holds :func:`image_token_count` image tokens per image. The grid, unpad and tile-count helpers
are ``transformers``' own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..extras import require
from .config import LlavaNextConfig
from .llava import Llava
from .tokens import Tokens


def _anyres():
    """``transformers``' LLaVA-NeXT module (grid choice, unpadding, tile counts)."""
    require("transformers", "LLaVA-NeXT's anyres tiles")
    from transformers.models.llava_next import modeling_llava_next

    return modeling_llava_next


def tile_count(cfg: LlavaNextConfig, image_size) -> int:
    """Tiles of an image of ``image_size = (height, width)``: the grid's plus the base tile."""
    return _anyres().image_size_to_num_patches(list(map(int, image_size)), [list(p) for p in cfg.image_grid_pinpoints],
                                               cfg.vision["image_size"])


def _grid_canvas(cfg: LlavaNextConfig, image_size, feature: Tensor) -> Tensor:
    """``feature [tiles - 1, side², C]`` (the grid's tiles, row-major) → ``[C, rows·side, cols·side]``
    unpadded to the image's aspect ratio (``side``: patches along a tile's edge)."""
    hf = _anyres()
    side = cfg.vision["image_size"] // cfg.vision["patch_size"]
    rows, cols = hf.get_anyres_image_grid_shape(list(map(int, image_size)), [list(p) for p in cfg.image_grid_pinpoints],
                                                cfg.vision["image_size"])
    canvas = feature.view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3).reshape(feature.shape[-1], rows * side, cols * side)
    return hf.unpad_image(canvas, list(map(int, image_size)))


def image_token_count(cfg: LlavaNextConfig, image_size) -> int:
    """Image tokens of an image of ``image_size = (height, width)`` (what the prompt must hold, and
    what ``transformers``' processor writes): the base tile's patches, and, with more than one tile,
    the unpadded grid's ``rows × (columns + 1)`` (a newline after each row)."""
    side = cfg.vision["image_size"] // cfg.vision["patch_size"]
    _, rows, cols = _grid_canvas(cfg, image_size, torch.empty(tile_count(cfg, image_size) - 1, side * side, 0)).shape
    return side * side + rows * (cols + 1)


class LlavaNext(Llava):
    """LLaVA-NeXT: :class:`~v2drop_kernels.models.llava.Llava` (its CLIP tower, projector, per-tile
    :meth:`~v2drop_kernels.models.llava.Llava.image_features` and image token) plus the
    ``image_newline`` vector and the anyres packing of an image's tiles.

    Default schedules: PyramidDrop's LLaVA-NeXT setting is its LLaVA-1.5 one (layers 8, 16, 24,
    λ = 0.5: ``PyramidDrop()``'s default). V²Drop publishes no LLaVA-NeXT schedule, so
    ``v2drop_schedule`` is its LLaVA-1.5 one (``"llava-1.5"``), a choice of this package."""

    v2drop_schedule = "llava-1.5"  # no published LLaVA-NeXT schedule: LLaVA-1.5's (see the class docstring)

    def __init__(self, cfg: LlavaNextConfig, vision_tower: bool = True):
        super().__init__(cfg, vision_tower)
        self.image_newline = nn.Parameter(torch.empty(cfg.text.hidden_size))

    def anyres_features(self, pixel_values: Tensor, image_sizes) -> Tensor:
        """``pixel_values [N, tiles, 3, H, W]`` (or the used tiles of every image concatenated,
        ``[T, 3, H, W]``) and ``image_sizes [N, 2]`` (height, width) → ``[tokens, hidden]``, the
        images' features one after the other (:func:`image_token_count` each)."""
        sizes = torch.as_tensor(image_sizes).tolist()
        counts = [tile_count(self.cfg, size) for size in sizes]
        if pixel_values.dim() == 5:
            if len(sizes) != pixel_values.shape[0]:
                raise ValueError(f"image_sizes has {len(sizes)} rows for {pixel_values.shape[0]} images in pixel_values")
            if max(counts) > pixel_values.shape[1]:
                raise ValueError(f"an image of size {sizes[counts.index(max(counts))]} needs {max(counts)} tiles; "
                                 f"pixel_values holds {pixel_values.shape[1]} per image")
            pixel_values = torch.cat([pix[:n] for pix, n in zip(pixel_values, counts)])
        elif pixel_values.dim() != 4 or pixel_values.shape[0] != sum(counts):
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}: expected [N, tiles, 3, H, W] or the "
                             f"{sum(counts)} tiles of image_sizes as [{sum(counts)}, 3, H, W]")
        out = []
        newline = self.image_newline.to(self.multi_modal_projector.linear_1.weight.dtype)
        for size, feature in zip(sizes, self.image_features(pixel_values).split(counts)):
            base, canvas = feature[0], _grid_canvas(self.cfg, size, feature[1:])  # [side², C], [C, rows, cols]
            canvas = torch.cat([canvas, newline[:, None, None].expand(-1, canvas.shape[1], 1)], dim=2)
            out += [base, canvas.flatten(1).T]
        return torch.cat(out)

    def inputs(self, prompts: Sequence[Tensor], layout: str, pixel_values: Tensor | None = None,
               image_sizes: Tensor | None = None, image_features: Tensor | None = None) -> Tokens:
        """The prefill tokens of ``prompts``: images as ``pixel_values`` and ``image_sizes`` (what the
        HF processor gives, through :meth:`anyres_features`) or precomputed ``image_features``
        (``[tokens, hidden]``, :meth:`anyres_features` outputs)."""
        if pixel_values is not None:
            if image_sizes is None:
                raise ValueError("pixel_values needs image_sizes (each image's height and width)")
            image_features = self.anyres_features(pixel_values, image_sizes)
        return self.tokens(prompts, image_features, layout)  # features [tokens, hidden], in prompt order
