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
from .decoder import Decoder
from .generation import Generation, GenerativeModel
from .llama import LlamaModel, Rotary
from .policies import Policy
from .pruning import PruningContext
from .tokens import Tokens, cu_seqlens, resolve_layout


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


class Llava(GenerativeModel):
    """``vision_tower=False`` builds the language side only (no ``transformers`` needed): prompts then
    take precomputed ``image_features`` (the end-to-end benchmark does this)."""

    v2drop_schedule = "llava-1.5"  # V²Drop's published LLaVA-1.5 schedule (see policies.v2drop)

    def __init__(self, cfg: LlavaConfig, vision_tower: bool = True):
        super().__init__()
        self.cfg = cfg
        self.vision_tower = None
        if vision_tower:
            transformers = require("transformers", "LLaVA's vision tower (CLIP)")
            self.vision_tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**cfg.vision))
        self.multi_modal_projector = Projector(cfg)
        self.language_model = LlamaModel(cfg.text)
        self.lm_head = nn.Linear(cfg.text.hidden_size, cfg.text.vocab_size, bias=False)
        if cfg.text.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight
        self.rotary = Rotary(cfg.text)
        self.decoder = Decoder(self.language_model, cfg.text, self.rotary)
        self._init_generation()

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

    def _embed(self, ids: Tensor, features: Tensor | None) -> tuple[Tensor, Tensor]:
        """Token embeddings with the image features written over the image tokens (in order)."""
        hidden = self.language_model.embed_tokens(ids)
        vis = ids == self.cfg.image_token_id
        if features is not None:
            flat = features.reshape(-1, features.shape[-1])
            if int(vis.sum()) != flat.shape[0]:
                raise ValueError(f"the prompts hold {int(vis.sum())} image tokens but the images give {flat.shape[0]} features")
            hidden = hidden.masked_scatter(vis.unsqueeze(-1), flat.to(hidden.dtype))
        elif bool(vis.any()):
            raise ValueError("the prompts hold image tokens but no pixel_values were given")
        return hidden, vis

    def tokens(self, prompts: Sequence[Tensor], features: Tensor | None, layout: str) -> Tokens:
        """The prefill input: ``padded`` (left padding, same image count per row), ``packed``, or
        ``auto`` (padded when every row holds as many image tokens)."""
        device = self.lm_head.weight.device
        host = [torch.as_tensor(p, dtype=torch.long).flatten().cpu() for p in prompts]
        lengths = [p.numel() for p in host]
        if not lengths or min(lengths) < 1:
            raise ValueError("every prompt needs at least one token")
        visual = [int((p == self.cfg.image_token_id).sum()) for p in host]
        if resolve_layout(layout, visual, "image tokens") == "packed":
            hidden, vis = self._embed(torch.cat(host).to(device), features)
            cu = cu_seqlens(lengths, device)
            pos = torch.cat([torch.arange(n) for n in lengths]).to(device)
            return Tokens(hidden, pos, pos, vis, visual, cu_seqlens=cu, lengths=lengths)
        width, pad = max(lengths), self.cfg.text.pad_token_id or 0
        ids = torch.full((len(host), width), pad, dtype=torch.long)
        valid = torch.zeros(len(host), width, dtype=torch.bool)
        for row, p in enumerate(host):
            ids[row, width - p.numel():] = p
            valid[row, width - p.numel():] = True
        ids, valid = ids.to(device), valid.to(device)
        hidden, vis = self._embed(ids, features)
        index = valid.long().cumsum(1) - 1  # index in the row's own prompt; -1 on padding
        pos = index.clamp_min(0)  # HF's rule: left padding sits at position 0
        return Tokens(hidden, pos, index, vis, visual, valid=None if bool(valid.all()) else valid)

    # -- forward and generation ---------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, prompts: Sequence[Tensor], pixel_values: Tensor | None = None, policy: Policy | None = None,
                layout: str = "padded", backend: str | None = None) -> tuple[Tensor, Tokens]:
        """Prefill only: logits of every surviving token and the final :class:`Tokens`."""
        features = None if pixel_values is None else self.image_features(pixel_values)
        tokens = self.tokens(prompts, features, layout)
        tokens = self.decoder.prefill(tokens, policy or Policy(), ctx=PruningContext(backend))
        return self.lm_head(tokens.hidden).float(), tokens

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Tensor],
        pixel_values: Tensor | None = None,
        *,
        max_new_tokens: int = 16,
        policy: Policy | None = None,
        layout: str = "auto",
        backend: str | None = None,
        progress: bool = False,
        image_features: Tensor | None = None,
        cuda_graph: bool | None = None,
        time_pruning: bool = False,
    ) -> Generation:
        """Greedy generation. ``layout="auto"`` packs only when rows hold different image counts.

        ``image_features`` (``[N, tokens_per_image, hidden]``, projector outputs) replaces
        ``pixel_values``: features computed once can serve several prompts. ``cuda_graph``,
        ``time_pruning``: see :meth:`~v2drop_kernels.models.generation.GenerativeModel.run_generation`.
        """
        def inputs() -> Tokens:
            features = image_features if pixel_values is None else self.image_features(pixel_values)
            return self.tokens(prompts, features, layout)

        return self.run_generation(inputs, max_new_tokens=max_new_tokens, policy=policy, backend=backend,
                                   progress=progress, cuda_graph=cuda_graph, time_pruning=time_pruning)
