"""Loading HF-format checkpoints (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, Qwen3.5) and building small random models.

A checkpoint folder holds ``config.json`` and ``*.safetensors`` (one file or shards); ``model_type``
in the config picks the model (:func:`load_model`). Every key layout ``transformers`` has written
is read:

    LLaVA    language_model.model.layers.0...   language_model.lm_head.weight   vision_tower.vision_model...  (llava-hf)
             model.language_model.layers.0...   lm_head.weight                  model.vision_tower...          (4.52+)
    LLaVA-NeXT   as LLaVA, plus image_newline (llava-hf) or model.image_newline (4.52+)
    LLaVA-OneVision   as LLaVA-NeXT (its SigLIP tower under vision_tower.vision_model. or model.vision_tower.)
    Qwen-VL  model.layers.0...                  lm_head.weight                  visual.blocks.0...            (published)
             model.language_model.layers.0...   lm_head.weight                  model.visual.blocks.0...      (4.52+;
                                                                                 Qwen3-VL's and Qwen3.5's
                                                                                 published layout)
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import nn

from ..extras import require
from .config import LlavaConfig, LlavaNextConfig, LlavaOnevisionConfig, QwenVLConfig
from .llava import Llava
from .llava_next import LlavaNext
from .llava_onevision import LlavaOnevision
from .qwen3_5 import Qwen3_5
from .qwen3_vl import Qwen3VL
from .qwen_vl import QwenVL, build_vision_tower

_QWEN_PREFIXES = (  # checkpoint prefix -> this model's prefix, first match wins
    ("model.language_model.", "language_model."),
    ("model.visual.", "visual."),
    ("visual.", "visual."),
    ("model.", "language_model."),
    ("lm_head.", "lm_head."),
)

_PREFIXES = (  # checkpoint prefix -> this model's prefix, first match wins
    ("language_model.model.", "language_model."),
    ("model.language_model.", "language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
    ("vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.vision_tower.", "vision_tower."),
    ("vision_tower.", "vision_tower."),
    ("multi_modal_projector.", "multi_modal_projector."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)

_NEXT_PREFIXES = _PREFIXES + (("model.image_newline", "image_newline"), ("image_newline", "image_newline"))  # LLaVA-NeXT, -OneVision

# the LLaVA family: config class -> (model class, key map); the most derived config first
_LLAVA_FAMILY = ((LlavaOnevisionConfig, LlavaOnevision, _NEXT_PREFIXES), (LlavaNextConfig, LlavaNext, _NEXT_PREFIXES),
                 (LlavaConfig, Llava, _PREFIXES))
# transformers' model_type -> config class
_LLAVA_CONFIGS = {"llava": LlavaConfig, "llava_next": LlavaNextConfig, "llava_onevision": LlavaOnevisionConfig}


def _llava_class(cfg: LlavaConfig):
    """(model class, key map) of a LLaVA-family config."""
    return next((model, prefixes) for config, model, prefixes in _LLAVA_FAMILY if isinstance(cfg, config))


def map_key(key: str, prefixes=_PREFIXES) -> str | None:
    """This model's parameter name for a checkpoint key (``None``: not one of its weights)."""
    for old, new in prefixes:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def read_config(path: str | Path) -> dict:
    """``config.json`` of a checkpoint folder."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected an HF checkpoint folder)")
    return json.loads((path / "config.json").read_text())


def _generation_config(path: str | Path) -> dict:
    """``generation_config.json`` of a checkpoint folder (``{}`` when there is none)."""
    file = Path(path) / "generation_config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _hf_generation_eos(hf_model):
    config = getattr(hf_model, "generation_config", None)
    return None if config is None else config.eos_token_id


def with_generation_eos(cfg, eos):
    """``cfg`` whose end-of-sequence ids also hold ``eos`` (from ``generation_config.json``, what
    ``transformers``' ``generate`` stops on: Qwen2-VL Instruct lists ``<|im_end|>`` and
    ``<|endoftext|>`` there, ``config.json`` only the first)."""
    if eos is None:
        return cfg
    ids = lambda x: [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]  # noqa: E731
    merged = list(dict.fromkeys(ids(cfg.text.eos_token_id) + ids(eos)))
    if merged == ids(cfg.text.eos_token_id):
        return cfg
    return replace(cfg, text=replace(cfg.text, eos_token_id=merged if len(merged) > 1 else merged[0]))


def _read_weights(path: Path, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    load_file = require("safetensors.torch", "loading checkpoint weights").load_file
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    state = {}
    for file in files:
        state.update((key, tensor.to(dtype)) for key, tensor in load_file(str(file), device=str(device)).items())
    return state


def load_model(path: str | Path, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Llava | LlavaNext | LlavaOnevision | QwenVL:
    """The model of a local checkpoint folder, by its ``model_type`` (:data:`LOADERS`): ``llava``
    (or none) → :class:`Llava`, ``llava_next`` → :class:`LlavaNext`, ``llava_onevision`` →
    :class:`LlavaOnevision`, ``qwen2_vl`` / ``qwen2_5_vl`` → :class:`QwenVL`, ``qwen3_vl`` →
    :class:`Qwen3VL`."""
    model_type = read_config(path).get("model_type")
    if model_type not in LOADERS:
        raise NotImplementedError(f"{path}: model_type {model_type!r} is not supported (llava, llava_next, llava_onevision, "
                                  "qwen2_vl, qwen2_5_vl and qwen3_vl are)")
    return LOADERS[model_type](path, dtype, device)


def _load_llava_family(path: str | Path, dtype: torch.dtype, device, config: type[LlavaConfig]) -> Llava:
    """A LLaVA-family model (the class ``config`` reads: :func:`_llava_class`) from a local checkpoint
    folder; every weight must be found."""
    cfg = with_generation_eos(config.from_hf(read_config(path)), _generation_config(path).get("eos_token_id"))
    return _assemble_llava(cfg, _read_weights(Path(path), dtype, device), device, str(path))


def load_llava(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Llava:
    """Builds :class:`Llava` from a local checkpoint folder; every weight must be found."""
    return _load_llava_family(path, dtype, device, LlavaConfig)


def load_llava_next(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> LlavaNext:
    """Builds :class:`LlavaNext` from a local checkpoint folder; every weight must be found."""
    return _load_llava_family(path, dtype, device, LlavaNextConfig)


def load_llava_onevision(path: str | Path, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu") -> LlavaOnevision:
    """Builds :class:`LlavaOnevision` from a local checkpoint folder; every weight must be found."""
    return _load_llava_family(path, dtype, device, LlavaOnevisionConfig)


def load_qwen_vl(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> QwenVL:
    """Builds :class:`QwenVL` (Qwen2-VL or Qwen2.5-VL), :class:`Qwen3VL` or :class:`Qwen3_5` from a local
    checkpoint folder (Qwen3.5's multi-token-prediction head, ``mtp.*``, is not read)."""
    cfg = with_generation_eos(QwenVLConfig.from_hf(read_config(path)), _generation_config(path).get("eos_token_id"))
    return _assemble_qwen_vl(cfg, _read_weights(Path(path), dtype, device), device, str(path))


# The registry: a checkpoint's model_type -> its loader (adding an architecture adds its line here).
LOADERS = {None: load_llava, "llava": load_llava, "llava_next": load_llava_next, "qwen2_vl": load_qwen_vl,
           "qwen2_5_vl": load_qwen_vl, "qwen3_vl": load_qwen_vl, "qwen3_5": load_qwen_vl, "llava_onevision": load_llava_onevision}
# the Qwen-VL family: arch -> model class
_QWEN_CLASSES = {"qwen2_vl": QwenVL, "qwen2_5_vl": QwenVL, "qwen3_vl": Qwen3VL, "qwen3_5": Qwen3_5}


def llava_from_transformers(hf_model) -> Llava:
    """:class:`Llava` on the weights of an in-memory ``transformers`` ``LlavaForConditionalGeneration``
    (the same tensors, not copies; its device and dtype); :class:`LlavaNext` on a
    ``LlavaNextForConditionalGeneration``'s (as :func:`llava_next_from_transformers`), :class:`LlavaOnevision`
    on a ``LlavaOnevisionForConditionalGeneration``'s (as :func:`llava_onevision_from_transformers`)."""
    config = _LLAVA_CONFIGS.get(hf_model.config.model_type, LlavaConfig)
    cfg = with_generation_eos(config.from_hf(hf_model.config.to_dict()), _hf_generation_eos(hf_model))
    device = next(hf_model.parameters()).device
    return _assemble_llava(cfg, hf_model.state_dict(), device, type(hf_model).__name__)


def llava_next_from_transformers(hf_model) -> LlavaNext:
    """:class:`LlavaNext` on the weights of an in-memory ``transformers``
    ``LlavaNextForConditionalGeneration`` (the same tensors, not copies)."""
    if hf_model.config.model_type != "llava_next":
        raise NotImplementedError(f"{type(hf_model).__name__} (model_type {hf_model.config.model_type!r}) is not LLaVA-NeXT")
    return llava_from_transformers(hf_model)


def llava_onevision_from_transformers(hf_model) -> LlavaOnevision:
    """:class:`LlavaOnevision` on the weights of an in-memory ``transformers``
    ``LlavaOnevisionForConditionalGeneration`` (the same tensors, not copies)."""
    if hf_model.config.model_type != "llava_onevision":
        raise NotImplementedError(f"{type(hf_model).__name__} (model_type {hf_model.config.model_type!r}) is not LLaVA-OneVision")
    return llava_from_transformers(hf_model)


def qwen_vl_from_transformers(hf_model) -> QwenVL:
    """:class:`QwenVL` on the weights of an in-memory ``Qwen2VLForConditionalGeneration`` or
    ``Qwen2_5_VLForConditionalGeneration``, :class:`Qwen3VL` on a ``Qwen3VLForConditionalGeneration``'s,
    :class:`Qwen3_5` on a ``Qwen3_5ForConditionalGeneration``'s (the same tensors, not copies)."""
    cfg = with_generation_eos(QwenVLConfig.from_hf(hf_model.config.to_dict()), _hf_generation_eos(hf_model))
    device = next(hf_model.parameters()).device
    return _assemble_qwen_vl(cfg, hf_model.state_dict(), device, type(hf_model).__name__)


def _load_by_name(model: nn.Module, checkpoint: dict[str, torch.Tensor], prefixes, tied: bool, source: str) -> None:
    """Makes the checkpoint's tensors ``model``'s parameters (by name, see :func:`map_key`); every
    weight must be found."""
    state = {}
    for key, tensor in checkpoint.items():
        name = map_key(key, prefixes)
        if name is not None:
            state[name] = tensor
    if tied:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (tied and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if tied:
        model.lm_head.weight = model.language_model.embed_tokens.weight


def _assemble_llava(cfg: LlavaConfig, checkpoint: dict[str, torch.Tensor], device, source: str) -> Llava:
    """:class:`Llava`, :class:`LlavaNext` or :class:`LlavaOnevision` (by the config's class) on ``checkpoint``."""
    model_class, prefixes = _llava_class(cfg)
    with torch.device("meta"):
        model = model_class(cfg)
    _load_by_name(model, checkpoint, prefixes, cfg.text.tie_word_embeddings, source)
    _fix_vision_buffers(model, device)
    return model.fuse_projections().eval()


def _assemble_qwen_vl(cfg: QwenVLConfig, checkpoint: dict[str, torch.Tensor], device, source: str) -> QwenVL:
    with torch.device("meta"):
        model = _QWEN_CLASSES[cfg.arch](cfg)
    _load_by_name(model, checkpoint, _QWEN_PREFIXES, cfg.text.tie_word_embeddings, source)
    # The tower's non-persistent buffers (rotary frequencies) are not in checkpoints: take them from
    # a tower of no blocks built on the CPU.
    twin = dict(build_vision_tower(cfg, depth=0).named_buffers())
    for name, buf in list(model.visual.named_buffers()):
        if buf.is_meta:
            if name not in twin:
                raise ValueError(f"{source}: vision tower buffer {name!r} has no value")
            owner, _, leaf = name.rpartition(".")
            model.visual.get_submodule(owner).register_buffer(leaf, twin[name].to(device), persistent=False)
    return model.fuse_projections().eval()


def _fix_vision_buffers(model: Llava, device) -> None:
    """Non-persistent buffers of the CLIP / SigLIP tower (position ids) were built on meta; rebuild them."""
    for module in model.vision_tower.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.is_meta:
                if name == "position_ids":
                    module.register_buffer(name, torch.arange(buf.shape[-1], device=device).expand(buf.shape), persistent=False)
                else:
                    raise ValueError(f"vision tower buffer {name!r} has no value")


def tiny_config(layers: int = 32, hidden: int = 128, image_size: int = 336, patch: int = 14, vocab: int = 512) -> LlavaConfig:
    """A small LLaVA-1.5-shaped config (576 visual tokens per 336 px image by default)."""
    return LlavaConfig.from_hf({
        "model_type": "llava",
        "image_token_id": vocab - 1,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_hidden_act": "gelu",
        "text_config": {
            "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden + hidden // 2,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
            "num_attention_heads": 4, "image_size": image_size, "patch_size": patch, "hidden_act": "quick_gelu",
        },
    })


def mrope_section(freqs: int, proportions: tuple[int, int, int]) -> list[int]:
    """M-RoPE sections (temporal, height, width) over ``freqs`` rotary frequencies in the
    ``proportions`` of a published model's sections (e.g. Qwen2-VL-7B's (16, 24, 24)): height and
    width rounded down, temporal takes the rest."""
    total = sum(proportions)
    height, width = freqs * proportions[1] // total, freqs * proportions[2] // total
    return [freqs - height - width, height, width]


def tiny_qwen_config(arch: str = "qwen2_vl", layers: int = 28, hidden: int = 128, vocab: int = 512) -> QwenVLConfig:
    """A small Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5-shaped config: 28 layers like the 7B models by
    default, M-RoPE sections in the 7B's (Qwen3-VL: 8B's) proportions, a vision tower with 14 px
    (Qwen3-VL, Qwen3.5: 16 px) patches and 2×2 merging: 2 blocks, Qwen3-VL 3 with a DeepStack merger
    on each, so that DeepStack adds features after decoder layers 0, 1, 2 (the 8B: 3 levels too).
    Qwen3.5: every fourth layer full attention (pass ``layers=32`` for the published depth), the
    linear-attention heads in its proportions (twice as many value heads as key heads), a quarter
    of each head rotated, M-RoPE sections (11, 11, 10)'s proportions."""
    heads = 4
    vision = {"depth": 2, "hidden_size": hidden, "num_heads": 4, "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2, "in_channels": 3}
    freqs = hidden // heads // 2 // (4 if arch == "qwen3_5" else 1)  # Qwen3.5 rotates a quarter of each head
    proportions = {"qwen3_vl": (24, 20, 20), "qwen3_5": (11, 11, 10)}.get(arch, (16, 24, 24))  # the 8B's, 9B's, 7B's
    text = {"mrope_section": mrope_section(freqs, proportions), "rope_theta": 1e6}
    if arch == "qwen2_vl":
        vision.update(embed_dim=64, mlp_ratio=2)
    elif arch == "qwen2_5_vl":
        vision.update(hidden_size=64, out_hidden_size=hidden, intermediate_size=128, window_size=56,
                      fullatt_block_indexes=[1], tokens_per_second=2)
    elif arch == "qwen3_vl":
        vision.update(depth=3, hidden_size=64, out_hidden_size=hidden, intermediate_size=128, patch_size=16,
                      num_position_embeddings=2304, deepstack_visual_indexes=[0, 1, 2])
        text.update(rope_theta=5e6, mrope_interleaved=True)
    elif arch == "qwen3_5":
        vision.update(hidden_size=64, out_hidden_size=hidden, intermediate_size=128, patch_size=16,
                      num_position_embeddings=2304)
        text.update(rope_theta=1e7, mrope_interleaved=True, partial_rotary_factor=0.25)
    else:
        raise ValueError(f"arch must be one of 'qwen2_vl', 'qwen2_5_vl', 'qwen3_vl', 'qwen3_5', got {arch!r}")
    hybrid = {}
    if arch == "qwen3_5":
        head = hidden // heads
        hybrid = {"full_attention_interval": 4, "head_dim": head, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
                  "linear_key_head_dim": head, "linear_value_head_dim": head, "linear_conv_kernel_dim": 4}
    return QwenVLConfig.from_hf({
        "model_type": arch, "image_token_id": vocab - 3, "video_token_id": vocab - 2, "vision_start_token_id": vocab - 5,
        "vision_end_token_id": vocab - 4,
        "text_config": {
            "model_type": arch + "_text", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden + hidden // 2,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", **text}, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
            **hybrid,
        },
        "vision_config": vision,
    })


def random_qwen_vl(cfg: QwenVLConfig | None = None, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> QwenVL:
    """A randomly initialised :class:`QwenVL` or :class:`Qwen3VL` (by ``cfg.arch``; ``std = 0.02`` linears)."""
    cfg = cfg or tiny_qwen_config()
    return _randomise(_QWEN_CLASSES[cfg.arch](cfg), seed).to(device, dtype).fuse_projections().eval()


def random_llava(cfg: LlavaConfig | None = None, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> Llava:
    """A randomly initialised :class:`Llava` (``std = 0.02`` linears, as HF initialises Llama);
    :class:`LlavaNext` for a :class:`LlavaNextConfig` (:func:`tiny_llava_next_config`), :class:`LlavaOnevision`
    for a :class:`LlavaOnevisionConfig` (:func:`tiny_llava_onevision_config`)."""
    cfg = cfg or tiny_config()
    model = _llava_class(cfg)[0](cfg)
    return _randomise(model, seed).to(device, dtype).fuse_projections().eval()


def tiny_llava_next_config(layers: int = 32, hidden: int = 128, vocab: int = 512, tile: int = 56) -> LlavaNextConfig:
    """A small LLaVA-NeXT-shaped config: :func:`tiny_config`'s with a ``tile`` px, 14 px patch tower
    (16 patches a 56 px tile) and LLaVA-NeXT's five grids at that scale (1×2, 2×1, 2×2, 3×1, 1×3
    tiles: at ``tile=336``, LLaVA-1.6's own ``image_grid_pinpoints`` and 576 patches a tile)."""
    base = tiny_config(layers, hidden, image_size=tile, patch=14, vocab=vocab)
    grids = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))
    return LlavaNextConfig(**{f.name: getattr(base, f.name) for f in fields(LlavaConfig)},
                           image_grid_pinpoints=tuple((tile * h, tile * w) for h, w in grids))


def tiny_llava_onevision_config(layers: int = 28, hidden: int = 128, vocab: int = 512, tile: int = 56,
                                grids: int = 3, max_tiles: int = 4) -> LlavaOnevisionConfig:
    """A small LLaVA-OneVision-shaped config: 28 Qwen2 layers like the 7B by default, a 2-layer SigLIP
    tower of ``tile`` px tiles and 14 px patches (16 patches a 56 px tile, 4 a pooled video frame),
    grids of 1 to ``grids`` × 1 to ``grids`` tiles, ``anyres_max_<max_tiles>`` (the 7B's: ``tile=384,
    grids=6, max_tiles=9``: 729 patches a tile, 196 a pooled frame)."""
    return LlavaOnevisionConfig.from_hf({
        "model_type": "llava_onevision", "image_token_index": vocab - 2, "video_token_index": vocab - 1,
        "vision_aspect_ratio": f"anyres_max_{max_tiles}",
        "image_grid_pinpoints": [[tile * h, tile * w] for h in range(1, grids + 1) for w in range(1, grids + 1)],
        "text_config": {
            "model_type": "qwen2", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 2 * hidden + hidden // 2,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "bos_token_id": 1, "eos_token_id": 2,
            "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": tile, "patch_size": 14, "vision_use_head": False,
        },
    })


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """``std = 0.02`` weights, zero biases, norms (any module whose class is a norm) left as built."""
    gen = torch.Generator().manual_seed(seed)
    norms = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if id(param) in norms:
                continue
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model
