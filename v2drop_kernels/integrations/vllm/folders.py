"""Tiny random model folders vLLM can serve (no download), and synthetic images and videos for them.

For the vLLM integration's tests and its serving benchmark (``bench/vllm_serving.py``). Each folder
is what a user would point ``vllm serve`` at: ``config.json`` and safetensors, a tokenizer (a
word-level one over ``w<id>`` words, with the model's special tokens at their ids, and a chat
template) and the HF processor's configuration. Sizes suit vLLM's CPU attention (head size 32; 16 is
refused). LLaVA folders are written in the published llava-hf key layout (``language_model.model.*``,
``vision_tower.vision_model.*``), which vLLM 0.32 loads (transformers 5's own ``save_pretrained``
layout it does not). Images and videos are made from seeds, so that a vLLM engine in another
process and this package's model see the same pixels. Needs ``transformers`` (and PIL for images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

VOCAB = 300
PAD, BOS, EOS = 0, 1, 2
VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN = 295, 296, 297, 298  # Qwen-VL
LLAVA_IMAGE = 299
PATCH = 4
LAYERS = 8  # decoder layers of the folders by default
FPS = 2.0  # of the test videos

_QWEN_SPECIAL = {PAD: "<|endoftext|>", BOS: "<|im_start|>", EOS: "<|im_end|>", VISION_START: "<|vision_start|>",
                 VISION_END: "<|vision_end|>", IMAGE_TOKEN: "<|image_pad|>", VIDEO_TOKEN: "<|video_pad|>"}
_LLAVA_SPECIAL = {PAD: "<pad>", BOS: "<s>", EOS: "</s>", LLAVA_IMAGE: "<image>"}

# Each message's text, then a space; its parts in order, each followed by a space, the model's placeholder
# for an image part; then the generation prompt "w42".
_CHAT_TEMPLATE = ("{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }} "
                  "{% else %}{% for part in message['content'] %}{% if part['type'] in ['image', 'image_url'] %}"
                  "{{ '@IMAGE@' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{{ ' ' }}"
                  "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}w42{% endif %}")


def _tokenizer(special: dict[int, str], placeholder: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {special.get(i, f"w{i}"): i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    names = [special[i] for i in sorted(special) if i not in (PAD, EOS)]
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=special[PAD], eos_token=special[EOS],
                                  additional_special_tokens=names)
    out.chat_template = _CHAT_TEMPLATE.replace("@IMAGE@", placeholder)
    return out


def _text_config(layers: int, qwen: bool) -> dict:
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=layers, num_attention_heads=2,
               num_key_value_heads=1, head_dim=32, max_position_embeddings=1024, rms_norm_eps=1e-6,
               initializer_range=0.08, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False)
    if qwen:
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]}
    return cfg


def save_qwen(folder: Path, arch: str = "qwen2-vl", layers: int = LAYERS, seed: int = 0) -> Path:
    """A random float32 Qwen2-VL (``"qwen2-vl"``) or Qwen2.5-VL (``"qwen2.5-vl"``) folder: 4 px patches,
    2×2 merging (one visual token per 8×8 pixels), 2 frames per temporal patch."""
    import transformers
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokens = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                  vision_end_token_id=VISION_END, tie_word_embeddings=False)
    vision = dict(depth=2, num_heads=2, in_channels=3, patch_size=PATCH, temporal_patch_size=2, spatial_merge_size=2,
                  initializer_range=0.05)
    if arch == "qwen2-vl":
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
        config = transformers.Qwen2VLConfig(text_config=_text_config(layers, True), vision_config=vision, **tokens)
        model_cls, processor_cls = transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLProcessor
    elif arch == "qwen2.5-vl":
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16, fullatt_block_indexes=[1],
                      tokens_per_second=2)
        config = transformers.Qwen2_5_VLConfig(text_config=_text_config(layers, True), vision_config=vision, **tokens)
        model_cls, processor_cls = transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLProcessor
    else:
        raise ValueError(f"unknown arch {arch!r}")
    torch.manual_seed(seed)
    model_cls(config).float().eval().save_pretrained(folder)
    sizes = dict(min_pixels=8 * 8 * 4, max_pixels=8 * 8 * 256, patch_size=PATCH, temporal_patch_size=2, merge_size=2,
                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = processor_cls(image_processor=transformers.Qwen2VLImageProcessor(**sizes),
                              video_processor=Qwen2VLVideoProcessor(**sizes),
                              tokenizer=_tokenizer(_QWEN_SPECIAL, "<|vision_start|><|image_pad|><|vision_end|>"))
    processor.save_pretrained(folder)
    return Path(folder)


def save_llava(folder: Path, layers: int = LAYERS, seed: int = 0) -> Path:
    """A random float32 LLaVA-1.5 folder (llava-hf layout): CLIP at 28 px / 4 px patches, 49 image tokens."""
    import transformers
    from safetensors.torch import save_file

    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=28, patch_size=4)
    config = transformers.LlavaConfig(vision_config=vision, text_config=transformers.LlamaConfig(**_text_config(layers, False)),
                                      image_token_id=LLAVA_IMAGE, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).float().eval()
    model.save_pretrained(folder)  # config.json and generation_config.json; the weights are rewritten below
    for file in Path(folder).glob("*.safetensors*"):
        file.unlink()
    renames = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
               ("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.", "multi_modal_projector."))
    state = {}
    for key, value in model.state_dict().items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state[key] = value.contiguous()
    save_file(state, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=_tokenizer(_LLAVA_SPECIAL, "<image>"),
                                            patch_size=4, vision_feature_select_strategy="default",
                                            num_additional_image_tokens=1)
    processor.save_pretrained(folder)
    return Path(folder)


def image(seed: int, height: int = 32, width: int = 32):
    """A random RGB image (PIL)."""
    from PIL import Image

    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"))


def video(seed: int, frames: int = 4, height: int = 32, width: int = 32) -> tuple[np.ndarray, dict]:
    """A random RGB video ``[frames, H, W, 3]`` (uint8) and its metadata (2 frames per second, every
    frame kept), as vLLM takes a decoded video."""
    frames_array = (np.random.RandomState(1000 + seed).rand(frames, height, width, 3) * 255).astype("uint8")
    metadata = {"fps": FPS, "duration": frames / FPS, "total_num_frames": frames, "frames_indices": list(range(frames)),
                "video_backend": "opencv", "do_sample_frames": False}
    return frames_array, metadata


def request_media(request: dict) -> dict:
    """vLLM's ``multi_modal_data`` of a request spec (``{"images": [[seed, h, w], ...], "videos": [[seed, frames, h, w], ...]}``)."""
    data = {}
    if request.get("images"):
        items = [image(*spec) for spec in request["images"]]
        data["image"] = items[0] if len(items) == 1 else items
    if request.get("videos"):
        items = [video(*spec) for spec in request["videos"]]
        data["video"] = items[0] if len(items) == 1 else items
    return data


def vllm_prompt(request: dict) -> dict:
    """The prompt vLLM takes for a request spec: its text, and its media when it has any."""
    media = request_media(request)
    return {"prompt": request["prompt"], **({"multi_modal_data": media} if media else {})}
