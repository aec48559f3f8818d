"""Loading HF-format LLaVA checkpoints (``llava-hf`` layout) and building small random models.

A checkpoint folder holds ``config.json`` and ``*.safetensors`` (one file or shards). Both key
layouts that ``transformers`` has written are read:

    language_model.model.layers.0...   language_model.lm_head.weight   vision_tower.vision_model...  (llava-hf)
    model.language_model.layers.0...   lm_head.weight                  model.vision_tower...          (4.52+)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import LlavaConfig
from .llava import Llava

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


def map_key(key: str) -> str | None:
    """This model's parameter name for a checkpoint key (``None``: not a LLaVA weight)."""
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def load_llava(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Llava:
    """Builds :class:`Llava` from a local checkpoint folder; every weight must be found."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected an HF LLaVA checkpoint folder)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights")
    cfg = LlavaConfig.from_hf(json.loads((path / "config.json").read_text()))
    state = {}
    for file in files:
        state.update((key, tensor.to(dtype)) for key, tensor in load_file(str(file), device=str(device)).items())
    return _assemble(cfg, state, device, str(path))


def llava_from_transformers(hf_model) -> Llava:
    """:class:`Llava` on the weights of an in-memory ``transformers`` ``LlavaForConditionalGeneration``
    (the same tensors, not copies; its device and dtype)."""
    cfg = LlavaConfig.from_hf(hf_model.config.to_dict())
    device = next(hf_model.parameters()).device
    return _assemble(cfg, hf_model.state_dict(), device, type(hf_model).__name__)


def _assemble(cfg: LlavaConfig, checkpoint: dict[str, torch.Tensor], device, source: str) -> Llava:
    """A :class:`Llava` of ``cfg`` whose parameters are the checkpoint's tensors (by name, see
    :func:`map_key`); every weight must be found."""
    with torch.device("meta"):
        model = Llava(cfg)
    state = {}
    for key, tensor in checkpoint.items():
        name = map_key(key)
        if name is not None:
            state[name] = tensor
    if cfg.text.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (cfg.text.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if cfg.text.tie_word_embeddings:
        model.lm_head.weight = model.language_model.embed_tokens.weight
    _fix_vision_buffers(model, device)
    return model.eval()


def _fix_vision_buffers(model: Llava, device) -> None:
    """Non-persistent buffers of the CLIP tower (position ids) were built on meta; rebuild them."""
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


def random_llava(cfg: LlavaConfig | None = None, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu") -> Llava:
    """A randomly initialised :class:`Llava` (``std = 0.02`` linears, as HF initialises Llama)."""
    gen = torch.Generator().manual_seed(seed)
    model = Llava(cfg or tiny_config())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name or "layrnorm" in name:
                continue
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model.to(device, dtype).eval()
