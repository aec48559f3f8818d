"""A LLaVA-1.5-style model in plain PyTorch: CLIP vision tower → projector → Llama decoder.

    model = load_llava("path/to/llava-1.5-7b-hf", dtype=torch.bfloat16, device="cuda")
    out = model.generate(prompts, pixel_values, max_new_tokens=32, policy=V2Drop())

``prompts`` are token ids in which every image appears as ``tokens_per_image`` copies of the
image token (what the HF processor produces); ``pixel_values`` hold the images in prompt order.
A batch of prompts of different lengths runs either left-padded (``layout="padded"``: SDPA, every
row must hold the same number of images) or packed (``layout="packed"``: varlen attention, any
number of images per row). The vision tower is ``transformers``' ``CLIPVisionModel``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..extras import require
from .config import LlavaConfig
from .tokens import Tokens
from .vlm import VisionLanguageModel, VisualInput


_ACTIVATIONS = {"gelu": nn.GELU, "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}


class Projector(nn.Module):
    """``linear_2(act(linear_1(features)))``: vision width → text width."""

    def __init__(self, cfg: LlavaConfig):
        super().__init__()
        layers = 1 if isinstance(cfg.vision_feature_layer, int) else len(cfg.vision_feature_layer)
        width = cfg.text.hidden_size
        self.linear_1 = nn.Linear(cfg.vision["hidden_size"] * layers, width, bias=cfg.projector_bias)
        if cfg.projector_hidden_act not in _ACTIVATIONS:
            raise NotImplementedError(f"projector_hidden_act={cfg.projector_hidden_act!r}; known: {sorted(_ACTIVATIONS)}")
        self.act = _ACTIVATIONS[cfg.projector_hidden_act]()
        self.linear_2 = nn.Linear(width, width, bias=cfg.projector_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class Llava(VisionLanguageModel):
    """LLaVA-1.5: what it adds to :class:`~v2drop_kernels.models.vlm.VisionLanguageModel` is its
    CLIP tower and projector, and its image token. ``vision_tower=False`` builds the language side
    only (no ``transformers`` needed): prompts then take precomputed ``image_features`` (the
    end-to-end benchmark does this)."""

    v2drop_schedule = "llava-1.5"  # V²Drop's published LLaVA-1.5 schedule (see policies.v2drop)

    def __init__(self, cfg: LlavaConfig, vision_tower: bool = True):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = None
        if vision_tower:
            transformers = require("transformers", "LLaVA's vision tower (CLIP)")
            self.vision_tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**cfg.vision))
        self.multi_modal_projector = Projector(cfg)
        self._build_language(cfg.text)

    def visual_inputs(self) -> tuple[VisualInput, ...]:
        return (VisualInput(self.cfg.image_token_id, "image", "pixel_values"),)

    # -- inputs -------------------------------------------------------------------------------------
    def image_features(self, pixel_values: Tensor) -> Tensor:
        """``[N, 3, H, W]`` → ``[N, tokens_per_image, hidden]`` in the decoder's dtype."""
        if self.vision_tower is None:
            raise RuntimeError("this model was built without a vision tower: pass image_features")
        dtype = self.multi_modal_projector.linear_1.weight.dtype
        out = self.vision_tower(pixel_values.to(dtype), output_hidden_states=True)
        layers = self.cfg.vision_feature_layer
        picked = [out.hidden_states[i] for i in ([layers] if isinstance(layers, int) else layers)]
        if self.cfg.vision_feature_select_strategy == "default":
            picked = [h[:, 1:] for h in picked]  # drop CLS
        return self.multi_modal_projector(torch.cat(picked, dim=-1))

    def tokens(self, prompts: Sequence[Tensor], features: Tensor | None, layout: str) -> Tokens:
        """The prefill input: ``padded`` (left padding, same image count per row), ``packed``, or
        ``auto`` (padded when every row holds as many image tokens); positions ``0 .. n-1``."""
        return self._prefill_tokens(self._host_prompts(prompts), layout, [features])

    def inputs(self, prompts: Sequence[Tensor], layout: str, pixel_values: Tensor | None = None,
               image_features: Tensor | None = None) -> Tokens:
        """The prefill tokens of ``prompts``: images as ``pixel_values [N, 3, H, W]`` (through the
        tower and projector) or precomputed ``image_features`` (``[N, tokens_per_image, hidden]``,
        projector outputs, which can serve several prompts)."""
        features = image_features if pixel_values is None else self.image_features(pixel_values)
        return self.tokens(prompts, features, layout)
