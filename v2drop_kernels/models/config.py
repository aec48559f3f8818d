"""Configuration of the package's models, read from an HF ``config.json``.

- :class:`TextConfig`: the decoder, a Llama (LLaVA-1.5), a Qwen2 (LLaVA-OneVision: q/k/v biases),
  a Qwen2-VL one (Qwen2-VL, Qwen2.5-VL: q/k/v biases and multimodal RoPE), Qwen3-VL's (q/k norms,
  interleaved M-RoPE) or Qwen3.5's (hybrid: Gated DeltaNet layers, :class:`LinearAttentionConfig`,
  between gated full-attention layers);
- :class:`LlavaConfig`: LLaVA-1.5 (``llava`` model type); :class:`LlavaNextConfig`: LLaVA-NeXT
  (``llava_next``, anyres tiles); :class:`LlavaOnevisionConfig`: LLaVA-OneVision
  (``llava_onevision``: SigLIP, Qwen2, anyres tiles and videos);
- :class:`QwenVLConfig`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3.5 (``qwen2_vl``, ``qwen2_5_vl``,
  ``qwen3_vl``, ``qwen3_5``), both the nested
  layout of ``transformers`` 5 (``text_config``) and the flat one of the published checkpoints.

Only what the decoder needs is kept, in plain dataclasses. The vision towers keep their own HF
config (they are ``transformers``' modules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LinearAttentionConfig:
    """Qwen3.5's Gated DeltaNet layers: ``key_heads`` query/key heads of ``key_head_dim``,
    ``value_heads`` value heads of ``value_head_dim`` (each group of ``value_heads / key_heads``
    consecutive value heads shares a key head), a depthwise causal convolution of ``conv_kernel``
    taps over the projected queries, keys and values."""

    key_heads: int
    value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int

    @property
    def key_dim(self) -> int:
        return self.key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the convolution: queries, keys, values."""
        return 2 * self.key_dim + self.value_dim


@dataclass(frozen=True)
class TextConfig:
    """A Llama-style decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU. Qwen2 differs only by
    biases on q/k/v (``qkv_bias``, none on o) and, in Qwen2-VL, by multimodal RoPE: ``mrope_section``
    splits the ``head_dim / 2`` rotary frequencies into temporal, height and width sections, each
    turned by its own plane of ``[3, ...]`` position ids. Qwen3-VL's decoder has no biases, an
    RMSNorm over each head's queries and keys before RoPE (``qk_norm``) and interleaved M-RoPE
    (``mrope_interleaved``: frequencies T, H, W, T, H, W, ... within the sections' counts).

    Qwen3.5's decoder is hybrid: ``layer_types`` names each layer ``"full_attention"`` or
    ``"linear_attention"`` (Gated DeltaNet, ``linear``); its attention layers gate their output
    (``attn_output_gate``: ``q_proj`` gives each head's queries and then as many gate values,
    ``out · sigmoid(gate)`` before ``o_proj``) and rotate only the first ``rotary_dim`` channels of
    each head; its RMSNorms scale by ``1 + weight`` (``zero_centred_norms``)."""

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
    qkv_bias: bool = False  # biases on the q, k and v projections
    o_bias: bool = False  # bias on the output projection
    mrope_section: tuple[int, ...] | None = None  # multimodal RoPE (Qwen2-VL); None: one position plane
    mrope_interleaved: bool = False  # Qwen3-VL: the planes' frequencies interleaved, not in contiguous sections
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on queries and keys (q_norm, k_norm) before RoPE
    layer_types: tuple[str, ...] | None = None  # per layer "full_attention" / "linear_attention"; None: all full
    linear: LinearAttentionConfig | None = None  # the linear-attention layers' shapes (Qwen3.5)
    attn_output_gate: bool = False  # Qwen3.5: a sigmoid gate per attention output channel, from q_proj
    rotary_dim: int | None = None  # channels of each head that RoPE turns (partial rotary); None: head_dim
    zero_centred_norms: bool = False  # Qwen3.5: RMSNorm weights w scale by (1 + w), in float32
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "TextConfig":
        """From an HF text config: ``llama``, ``qwen2`` (q/k/v biases, plain RoPE), a Qwen2-VL /
        Qwen2.5-VL text model (q/k/v biases, M-RoPE), Qwen3-VL's (q/k norms, interleaved M-RoPE) or
        Qwen3.5's (hybrid linear / gated full attention, partial rotary, norms scaling by 1 + w)."""
        model_type = cfg.get("model_type", "llama")
        if model_type in _MOE_TEXT_TYPES:
            raise NotImplementedError(f"text model {model_type!r}: mixture-of-experts decoders are not implemented "
                                      "(the dense Qwen3-VL and Qwen3.5 ones are)")
        hybrid = model_type in _QWEN35_TEXT_TYPES
        qwen3 = hybrid or model_type in _QWEN3_TEXT_TYPES
        qwen = qwen3 or model_type in _QWEN_TEXT_TYPES  # M-RoPE
        qwen2 = model_type == "qwen2"
        if not qwen and not qwen2 and model_type != "llama":
            raise NotImplementedError(f"text model {model_type!r}: Llama, Qwen2, Qwen2-VL / Qwen2.5-VL, Qwen3-VL and "
                                      "Qwen3.5 decoders are implemented")
        if cfg.get("hidden_act", "silu") != "silu":
            raise NotImplementedError(f"text_config.hidden_act={cfg['hidden_act']!r}: only SwiGLU ('silu') is implemented")
        if cfg.get("use_sliding_window"):
            raise NotImplementedError("use_sliding_window=True: sliding-window attention is not implemented")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if qwen and rope_type == "mrope":  # the published checkpoints' name for default M-RoPE
            rope_type = "default"
        if rope_type not in ("default", "linear"):
            raise NotImplementedError(f"RoPE type {rope_type!r} is not implemented (default and linear are)")
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        # partial rotary: transformers' Qwen3.5 default is a quarter of each head
        factor = float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25 if hybrid else 1.0)))
        rotary_dim = int(head_dim * factor)
        if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
            raise ValueError(f"partial_rotary_factor {factor} gives {rotary_dim} rotary channels of head_dim {head_dim}; "
                             "they must be even and at most head_dim")
        mrope = None
        if qwen:  # transformers' default section when the config names none
            default = (11, 11, 10) if hybrid else (24, 20, 20) if qwen3 else (16, 24, 24)
            mrope = tuple(int(n) for n in rope.get("mrope_section", default))
            if sum(mrope) != rotary_dim // 2:
                raise ValueError(f"mrope_section {list(mrope)} must add up to the rotary frequencies, "
                                 f"{'rotary_dim' if rotary_dim != head_dim else 'head_dim'} / 2 = {rotary_dim // 2}")
        layer_types, linear = None, None
        if hybrid:
            layer_types, linear = _hybrid_layers(cfg)
        elif "linear_attention" in (cfg.get("layer_types") or ()):
            raise NotImplementedError(f"text model {model_type!r} with linear-attention layers: only Qwen3.5's "
                                      "(qwen3_5_text) are implemented")
        bias = cfg.get("attention_bias", False)
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 1e6 if qwen else 10000.0)),
            rope_linear_factor=float(rope.get("factor", 1.0)) if rope_type == "linear" else 1.0,
            qkv_bias=bias if qwen3 else True if qwen or qwen2 else bias,
            o_bias=bias if qwen3 else False if qwen or qwen2 else bias,
            mrope_section=mrope,
            mrope_interleaved=qwen3,  # transformers' Qwen3-VL and Qwen3.5 always interleave
            qk_norm=qwen3,
            layer_types=layer_types,
            linear=linear,
            attn_output_gate=hybrid,
            rotary_dim=None if rotary_dim == head_dim else rotary_dim,
            zero_centred_norms=hybrid,
            mlp_bias=cfg.get("mlp_bias", False),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            bos_token_id=cfg.get("bos_token_id", 1),
            eos_token_id=cfg.get("eos_token_id", 2),
            pad_token_id=cfg.get("pad_token_id"),
        )


    def is_linear(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` is a linear-attention (Gated DeltaNet) layer."""
        return self.layer_types is not None and self.layer_types[layer] == "linear_attention"

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """The layers with softmax attention (and so a KV cache and last-token attention scores)."""
        return tuple(i for i in range(self.num_layers) if not self.is_linear(i))


_QWEN_TEXT_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text")
_QWEN3_TEXT_TYPES = ("qwen3_vl", "qwen3_vl_text")
_QWEN35_TEXT_TYPES = ("qwen3_5", "qwen3_5_text")
_MOE_TEXT_TYPES = ("qwen3_vl_moe", "qwen3_vl_moe_text", "qwen3_5_moe", "qwen3_5_moe_text")


def _hybrid_layers(cfg: dict[str, Any]) -> tuple[tuple[str, ...], LinearAttentionConfig]:
    """Qwen3.5's ``layer_types`` (transformers' default when absent: every ``full_attention_interval``-th
    layer full attention, 4 when unnamed) and linear-attention shapes (transformers' defaults)."""
    layers = cfg["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is None:
        every = int(cfg.get("full_attention_interval", 4))
        types = ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(layers)]
    types = tuple(types)
    unknown = sorted(set(types) - {"full_attention", "linear_attention"})
    if unknown or len(types) != layers:
        raise ValueError(f"layer_types must name each of the {layers} layers 'full_attention' or 'linear_attention', "
                         f"got {list(types)}")
    linear = LinearAttentionConfig(
        key_heads=cfg.get("linear_num_key_heads", 16), value_heads=cfg.get("linear_num_value_heads", 32),
        key_head_dim=cfg.get("linear_key_head_dim", 128), value_head_dim=cfg.get("linear_value_head_dim", 128),
        conv_kernel=cfg.get("linear_conv_kernel_dim", 4))
    if linear.value_heads % linear.key_heads:
        raise ValueError(f"linear_num_value_heads {linear.value_heads} must be a multiple of linear_num_key_heads "
                         f"{linear.key_heads}")
    return types, linear


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
        return cls(**cls._fields_from_hf(cfg))

    @staticmethod
    def _fields_from_hf(cfg: dict[str, Any], text_type: str = "llama", vision_type: str = "clip_vision_model",
                        default_layer: int = -2, default_strategy: str = "default") -> dict[str, Any]:
        """The fields LLaVA-1.5, LLaVA-NeXT and LLaVA-OneVision share, from an HF config (the
        architecture's text and vision model types and its transformers defaults)."""
        text = dict(cfg["text_config"])
        text.setdefault("model_type", text_type)
        if text["model_type"] != text_type:
            raise NotImplementedError(f"text model {text['model_type']!r}: {cfg.get('model_type') or 'llava'} checkpoints "
                                      f"with {'Llama' if text_type == 'llama' else text_type} decoders are implemented")
        vision = dict(cfg["vision_config"])
        if vision.get("model_type", vision_type) != vision_type:
            raise NotImplementedError(f"vision tower {vision.get('model_type')!r}: only "
                                      f"{'CLIP' if vision_type == 'clip_vision_model' else vision_type} is implemented")
        if "tie_word_embeddings" in cfg:
            text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
        return dict(
            text=TextConfig.from_hf(text),
            vision=vision,
            image_token_id=cfg.get("image_token_id", cfg.get("image_token_index", 32000)),
            vision_feature_layer=cfg.get("vision_feature_layer", default_layer),
            vision_feature_select_strategy=cfg.get("vision_feature_select_strategy", default_strategy),
            projector_hidden_act=cfg.get("projector_hidden_act", "gelu"),
            projector_bias=cfg.get("multimodal_projector_bias", True),
        )


# transformers' LlavaNextConfig default: the grids of LLaVA-NeXT's 336 px CLIP tower
_LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


@dataclass(frozen=True)
class LlavaNextConfig(LlavaConfig):
    """LLaVA-NeXT (``llava_next``): LLaVA-1.5's tower, projector and decoder, images as "anyres"
    tiles: a base tile of the whole image plus the tiles of the best grid of
    ``image_grid_pinpoints`` (``(height, width)`` resolutions, in pixels), unpadded to the image's
    aspect ratio with an ``image_newline`` vector after each row of features."""

    image_grid_pinpoints: tuple[tuple[int, int], ...] = _LLAVA_NEXT_PINPOINTS

    @property
    def tokens_per_image(self) -> int:
        raise AttributeError("LLaVA-NeXT's image-token count depends on each image's size (see llava_next.image_token_count)")

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "LlavaNextConfig":
        if cfg.get("model_type") != "llava_next":
            raise NotImplementedError(f"model_type {cfg.get('model_type')!r}: LlavaNextConfig reads 'llava_next' checkpoints")
        if cfg.get("vision_feature_select_strategy", "default") != "default":
            raise NotImplementedError(f"vision_feature_select_strategy {cfg['vision_feature_select_strategy']!r}: LLaVA-NeXT's "
                                      "tiles are laid out as a grid of patches, which needs 'default' (CLS dropped)")
        pinpoints = cfg.get("image_grid_pinpoints") or _LLAVA_NEXT_PINPOINTS
        return cls(**cls._fields_from_hf(cfg), image_grid_pinpoints=tuple((int(h), int(w)) for h, w in pinpoints))


@dataclass(frozen=True)
class LlavaOnevisionConfig(LlavaNextConfig):
    """LLaVA-OneVision (``llava_onevision``): a SigLIP tower (every patch kept: ``"full"``, last
    layer), LLaVA's projector, a Qwen2 decoder. Images are LLaVA-NeXT's anyres tiles, the grid's
    features bilinearly shrunk when they exceed ``vision_aspect_ratio = "anyres_max_N"`` (``N``
    tiles' worth); videos are frames through the tower, 2×2 bilinear pooling, one newline each."""

    video_token_id: int = 151647
    vision_aspect_ratio: str = "anyres_max_9"

    @property
    def max_tiles(self) -> int:
        """``N`` of ``vision_aspect_ratio = "anyres_max_N"``."""
        return int(self.vision_aspect_ratio.strip("anyres_max_"))

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "LlavaOnevisionConfig":
        if cfg.get("model_type") != "llava_onevision":
            raise NotImplementedError(f"model_type {cfg.get('model_type')!r}: LlavaOnevisionConfig reads 'llava_onevision' checkpoints")
        fields_ = cls._fields_from_hf(cfg, "qwen2", "siglip_vision_model", default_layer=-1, default_strategy="full")
        if fields_["vision_feature_select_strategy"] != "full":
            raise NotImplementedError(f"vision_feature_select_strategy {fields_['vision_feature_select_strategy']!r}: SigLIP has "
                                      "no CLS token, so LLaVA-OneVision's tiles need 'full' (every patch kept)")
        aspect = cfg.get("vision_aspect_ratio") or "anyres_max_9"
        if not aspect.startswith("anyres_max_") or not aspect[len("anyres_max_"):].isdigit():
            raise NotImplementedError(f"vision_aspect_ratio {aspect!r}: only 'anyres_max_N' is implemented")
        pinpoints = cfg.get("image_grid_pinpoints") or _ONEVISION_PINPOINTS
        return cls(**fields_, image_grid_pinpoints=tuple((int(h), int(w)) for h, w in pinpoints),
                   video_token_id=cfg.get("video_token_id", cfg.get("video_token_index", 151647)), vision_aspect_ratio=aspect)


# transformers' LlavaOnevisionConfig default: every grid of 1 to 6 × 1 to 6 tiles of 384 px
_ONEVISION_PINPOINTS = tuple((384 * h, 384 * w) for h in range(1, 7) for w in range(1, 7))


QWEN_ARCHS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")


@dataclass(frozen=True)
class QwenVLConfig:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: a ViT whose patch merger emits one token per 2×2 patches →
    a Qwen2 decoder with M-RoPE (Qwen3-VL: a Qwen3 decoder, interleaved M-RoPE, DeepStack; Qwen3.5:
    Qwen3-VL's inputs without DeepStack, a hybrid linear / full attention decoder). Images
    and videos are spans of ``image_token_id`` / ``video_token_id`` tokens, ``t·h·w / merge²`` per
    item of ``grid_thw`` (Qwen3-VL and Qwen3.5 videos: one span per grid step)."""

    arch: str  # one of QWEN_ARCHS
    text: TextConfig
    vision: dict[str, Any] = field(repr=False)  # HF vision config as a dict
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    @property
    def spatial_merge_size(self) -> int:
        return int(self.vision.get("spatial_merge_size", 2))

    @property
    def tokens_per_second(self) -> float:
        """Qwen2.5-VL: temporal position ids advance ``tokens_per_second · seconds`` per grid step."""
        return float(self.vision.get("tokens_per_second", 4))

    @property
    def deepstack_levels(self) -> int:
        """Qwen3-VL: the decoder layers (the first ones) after which DeepStack adds visual features."""
        if self.arch != "qwen3_vl":
            return 0
        return len(self.vision.get("deepstack_visual_indexes", (8, 16, 24)))  # transformers' default when unnamed

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "QwenVLConfig":
        arch = cfg.get("model_type")
        if arch in ("qwen3_vl_moe", "qwen3_5_moe"):
            raise NotImplementedError(f"model_type {arch!r}: mixture-of-experts decoders are not implemented (the dense "
                                      "'qwen3_vl' and 'qwen3_5' are)")
        if arch not in QWEN_ARCHS:
            raise NotImplementedError(f"model_type {arch!r}: only {', '.join(map(repr, QWEN_ARCHS))} load as Qwen-VL models")
        if "text_config" in cfg and cfg["text_config"]:  # transformers 5: nested
            text = dict(cfg["text_config"])
        else:  # the published checkpoints: the text model's keys at the top level
            text = {k: v for k, v in cfg.items() if k != "vision_config"}
        text.setdefault("model_type", arch)
        if "tie_word_embeddings" in cfg:
            text["tie_word_embeddings"] = cfg["tie_word_embeddings"]
        return cls(
            arch=arch,
            text=TextConfig.from_hf(text),
            vision=dict(cfg["vision_config"]),
            image_token_id=cfg.get("image_token_id", 151655),
            video_token_id=cfg.get("video_token_id", 151656),
            vision_start_token_id=cfg.get("vision_start_token_id", 151652),
            vision_end_token_id=cfg.get("vision_end_token_id", 151653),
        )
