"""Configuration of the reference LLaVA model, read from an HF ``config.json`` (``llava`` model type).

Only what the decoder needs is kept, in plain dataclasses. The CLIP vision tower keeps its own HF
config (it is ``transformers``' ``CLIPVisionModel``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TextConfig:
    """A Llama decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_linear_factor: float = 1.0  # "linear" RoPE scaling divides positions by this
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "TextConfig":
        if cfg.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"text_config.hidden_act={cfg['hidden_act']!r}: only SwiGLU ('silu') is implemented")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "linear"):
            raise NotImplementedError(f"RoPE type {rope_type!r} is not implemented (default and linear are)")
        heads = cfg["num_attention_heads"]
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
            rope_linear_factor=float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0,
            attention_bias=cfg.get("attention_bias", False),
            mlp_bias=cfg.get("mlp_bias", False),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            bos_token_id=cfg.get("bos_token_id", 1),
            eos_token_id=cfg.get("eos_token_id", 2),
            pad_token_id=cfg.get("pad_token_id"),
        )


@dataclass(frozen=True)
class LlavaConfig:
    """LLaVA-1.5: CLIP vision tower → 2-layer MLP projector → Llama decoder."""

    text: TextConfig
    vision: dict[str, Any] = field(repr=False)  # HF CLIPVisionConfig as a dict
    image_token_id: int = 32000
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"  # "default" drops the CLS token, "full" keeps it
    projector_hidden_act: str = "gelu"
    projector_bias: bool = True

    @property
    def tokens_per_image(self) -> int:
        patches = (self.vision["image_size"] // self.vision["patch_size"]) ** 2
        return patches + (self.vision_feature_select_strategy == "full")

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "LlavaConfig":
        if cfg.get("model_type", "llava") != "llava":
            raise NotImplementedError(f"model_type {cfg.get('model_type')!r}: only 'llava' (LLaVA-1.5) checkpoints load")
        text = dict(cfg["text_config"])
        if text.get("model_type", "llama") != "llama":
            raise NotImplementedError(f"text model {text.get('model_type')!r}: only Llama decoders are implemented")
        vision = dict(cfg["vision_config"])
        if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
            raise NotImplementedError(f"vision tower {vision.get('model_type')!r}: only CLIP is implemented")
        if "tie_word_embeddings" in cfg:
            text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
        return cls(
            text=TextConfig.from_hf(text),
            vision=vision,
            image_token_id=cfg.get("image_token_id", cfg.get("image_token_index", 32000)),
            vision_feature_layer=cfg.get("vision_feature_layer", -2),
            vision_feature_select_strategy=cfg.get("vision_feature_select_strategy", "default"),
            projector_hidden_act=cfg.get("projector_hidden_act", "gelu"),
            projector_bias=cfg.get("multimodal_projector_bias", True),
        )
