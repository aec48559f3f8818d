"""Tiny random HF Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 models and processor-style inputs for them (no
download)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Token ids (vocab of 300; 3..294 are plain text, 299 is unused).
VOCAB = 300
PAD, BOS, EOS = 0, 1, 2
VISION_START = 295
VISION_END = 296
IMAGE_TOKEN = 297
VIDEO_TOKEN = 298

# Text model.
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS  # 16: 8 rotary frequencies
MROPE_SECTION = [2, 3, 3]  # temporal, height, width frequencies (sum = HEAD_DIM // 2)
ROPE_THETA = 10000.0
TEXT_LAYERS = 6

# Vision tower / pixel layout (same for both archs).
CHANNELS = 3
PATCH = 4
TEMPORAL_PATCH = 2
MERGE = 2  # spatial_merge_size: one visual token per MERGE x MERGE patches
PATCH_DIM = CHANNELS * TEMPORAL_PATCH * PATCH * PATCH  # 96 values per flattened patch
TOKENS_PER_SECOND = 2  # Qwen2.5-VL: temporal position step = TOKENS_PER_SECOND * second_per_grid_t

ARCHS = ("qwen2-vl", "qwen2.5-vl")  # the Qwen2 family (what the Qwen2-VL tests parametrize over)

# Qwen3-VL: q/k RMSNorm over head_dim, interleaved M-RoPE, DeepStack, per-frame video spans.
QWEN3_ARCH = "qwen3-vl"
ALL_ARCHS = (*ARCHS, QWEN3_ARCH)
# Interleaved M-RoPE: frequency j is H for j % 3 == 1, j < 3 * 2; W for j % 3 == 2, j < 3 * 2; else T. So
# j = 0..7 -> T H W T H W T T: like Qwen3-VL's [24, 20, 20] over 64 frequencies, the tail is temporal.
QWEN3_MROPE_SECTION = [4, 2, 2]
QWEN3_ROPE_THETA = 5000.0
QWEN3_VISION_DEPTH = 3
DEEPSTACK_INDEXES = [0, 1]  # vision blocks whose merged outputs are added after decoder layers 0 and 1
DEEPSTACK_LEVELS = len(DEEPSTACK_INDEXES)
QWEN3_POSITION_EMBEDDINGS = 16  # the vision tower's learned 4 x 4 position grid, resampled to each grid

# Qwen3.5: hybrid decoder (Gated DeltaNet linear attention, every third layer full attention with an output
# gate), partial rotary (the first 8 of each head's 16 channels: 4 interleaved M-RoPE frequencies T H W T),
# Qwen3-VL's vision tower without DeepStack, timestamped per-frame video spans like Qwen3-VL.
QWEN35_ARCH = "qwen3.5"
HYBRID_ARCHS = (QWEN35_ARCH,)  # not in ALL_ARCHS: the tests over ALL_ARCHS run attention-only decoders
QWEN35_MROPE_SECTION = [2, 1, 1]  # over rotary_dim // 2 = 4 frequencies: j = 0..3 -> T H W T
QWEN35_PARTIAL_ROTARY = 0.5
QWEN35_LAYER_PATTERN = ("linear_attention", "linear_attention", "full_attention")
LINEAR_KEY_HEADS, LINEAR_VALUE_HEADS = 2, 4
LINEAR_KEY_DIM, LINEAR_VALUE_DIM = 8, 8
LINEAR_CONV_KERNEL = 4


def qwen35_layer_types(layers: int) -> list[str]:
    """Qwen3.5 tiny ``layer_types``: ``linear, linear, full`` repeated (full attention at ``l % 3 == 2``)."""
    return [QWEN35_LAYER_PATTERN[i % len(QWEN35_LAYER_PATTERN)] for i in range(layers)]


# Qwen3-VL video prompts: "<{seconds:.1f} seconds>" as text before each frame's span, tokenized here as
# "<" digits... "." digit " seconds>" with these (plain text) ids.
TIME_OPEN, TIME_DOT, TIME_CLOSE = 50, 51, 52
TIME_DIGIT0 = 60  # digit d -> 60 + d


def _text_config(layers: int) -> dict:
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=160, num_hidden_layers=layers,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=1024,
                rms_norm_eps=1e-6, initializer_range=0.08, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": MROPE_SECTION})


def _qwen3_text_config(layers: int) -> dict:
    text = _text_config(layers)
    text.update(head_dim=HEAD_DIM, attention_bias=False,
                rope_parameters={"rope_type": "default", "rope_theta": QWEN3_ROPE_THETA,
                                 "mrope_section": QWEN3_MROPE_SECTION, "mrope_interleaved": True})
    return text


def _qwen35_text_config(layers: int) -> dict:
    text = _text_config(layers)
    text.update(head_dim=HEAD_DIM, attention_bias=False, layer_types=qwen35_layer_types(layers),
                linear_num_key_heads=LINEAR_KEY_HEADS, linear_num_value_heads=LINEAR_VALUE_HEADS,
                linear_key_head_dim=LINEAR_KEY_DIM, linear_value_head_dim=LINEAR_VALUE_DIM,
                linear_conv_kernel_dim=LINEAR_CONV_KERNEL,
                rope_parameters={"rope_type": "default", "rope_theta": QWEN3_ROPE_THETA,
                                 "partial_rotary_factor": QWEN35_PARTIAL_ROTARY,
                                 "mrope_section": QWEN35_MROPE_SECTION, "mrope_interleaved": True})
    return text


def tiny_qwen_config(arch: str, layers: int = TEXT_LAYERS):
    """The ``transformers`` config of a tiny Qwen2-VL (``"qwen2-vl"``), Qwen2.5-VL (``"qwen2.5-vl"``),
    Qwen3-VL (``"qwen3-vl"``: 3 vision blocks, DeepStack from blocks 0 and 1 into decoder layers 0 and 1) or
    Qwen3.5 (``"qwen3.5"``: 2 vision blocks, :func:`qwen35_layer_types` decoder layers)."""
    tokens = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                  vision_end_token_id=VISION_END, tie_word_embeddings=False)
    if arch == "qwen2-vl":
        from transformers import Qwen2VLConfig

        vision = dict(depth=2, embed_dim=32, hidden_size=HIDDEN, mlp_ratio=2, num_heads=4, in_channels=CHANNELS,
                      patch_size=PATCH, temporal_patch_size=TEMPORAL_PATCH, spatial_merge_size=MERGE,
                      initializer_range=0.05)
        return Qwen2VLConfig(text_config=_text_config(layers), vision_config=vision, **tokens)
    if arch == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig

        # window_size 16 px = 2x2 merged tokens per window; block 0 windowed, block 1 full attention.
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=HIDDEN, num_heads=4,
                      in_channels=CHANNELS, patch_size=PATCH, temporal_patch_size=TEMPORAL_PATCH,
                      spatial_merge_size=MERGE, window_size=16, fullatt_block_indexes=[1],
                      tokens_per_second=TOKENS_PER_SECOND, initializer_range=0.05)
        return Qwen2_5_VLConfig(text_config=_text_config(layers), vision_config=vision, **tokens)
    if arch == QWEN3_ARCH:
        from transformers import Qwen3VLConfig

        vision = dict(depth=QWEN3_VISION_DEPTH, hidden_size=32, intermediate_size=64, num_heads=4,
                      out_hidden_size=HIDDEN, in_channels=CHANNELS, patch_size=PATCH,
                      temporal_patch_size=TEMPORAL_PATCH, spatial_merge_size=MERGE,
                      num_position_embeddings=QWEN3_POSITION_EMBEDDINGS, deepstack_visual_indexes=DEEPSTACK_INDEXES,
                      initializer_range=0.05)
        return Qwen3VLConfig(text_config=_qwen3_text_config(layers), vision_config=vision, **tokens)
    if arch == QWEN35_ARCH:
        from transformers import Qwen3_5Config

        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=HIDDEN,
                      in_channels=CHANNELS, patch_size=PATCH, temporal_patch_size=TEMPORAL_PATCH,
                      spatial_merge_size=MERGE, num_position_embeddings=QWEN3_POSITION_EMBEDDINGS,
                      initializer_range=0.05)
        return Qwen3_5Config(text_config=_qwen35_text_config(layers), vision_config=vision, **tokens)
    raise ValueError(f"unknown arch {arch!r}, expected one of {ALL_ARCHS + HYBRID_ARCHS}")


def tiny_qwen_vl(arch: str, seed: int = 0, layers: int = TEXT_LAYERS, attn_implementation: str | None = None):
    """A random float32 Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 ``...ForConditionalGeneration`` in eval mode."""
    import transformers

    cls = getattr(transformers, {"qwen2-vl": "Qwen2VLForConditionalGeneration",
                                 "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
                                 QWEN3_ARCH: "Qwen3VLForConditionalGeneration",
                                 QWEN35_ARCH: "Qwen3_5ForConditionalGeneration"}[arch])
    config = tiny_qwen_config(arch, layers)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    if arch == QWEN35_ARCH:
        _perturb_qwen35(model, seed)
    return model


def _perturb_qwen35(model, seed: int) -> None:
    """Qwen3.5's init leaves every zero-centred RMSNorm weight at 0, the gated norms' at 1 and ``dt_bias`` at 1,
    so that a swapped or misapplied norm would go unseen: spread them (reproducibly, from ``seed``). And the
    padding token's embedding row, zero at init (``padding_idx``), gets values as in a trained checkpoint, so that
    left padding reaching a linear-attention layer unmasked would show."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for name, param in model.model.language_model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("dt_bias"):
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
        embed = model.model.language_model.embed_tokens.weight
        embed[PAD] = torch.randn(embed.shape[1], generator=gen) * embed.std()


def save_tiny_qwen_vl(folder: Path, arch: str, seed: int = 0, layers: int = TEXT_LAYERS) -> Path:
    """Builds :func:`tiny_qwen_vl` and saves it (safetensors) into ``folder``."""
    tiny_qwen_vl(arch, seed, layers).save_pretrained(folder)
    return Path(folder)


def patchify(frames: torch.Tensor) -> torch.Tensor:
    """``[F, C, H, W]`` frames -> ``[F/2 * H/4 * W/4, 96]`` patches in the Qwen2-VL processor layout.

    Rows are ordered (t, h-block, w-block, h-in-block, w-in-block) so that every MERGE x MERGE group
    of patches is contiguous; each row is (C, temporal_patch, patch, patch) flattened.
    """
    f, c, h, w = frames.shape
    gt, gh, gw = f // TEMPORAL_PATCH, h // PATCH, w // PATCH
    x = frames.reshape(gt, TEMPORAL_PATCH, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * TEMPORAL_PATCH * PATCH * PATCH).contiguous()


def visual_tokens(grid: tuple[int, ...]) -> int:
    """Number of LLM tokens of an image grid ``(h, w)`` or video grid ``(t, h, w)`` (in patches)."""
    t, h, w = (1, *grid) if len(grid) == 2 else grid
    return t * h * w // (MERGE * MERGE)


def _default_before(row: int) -> list[int]:
    return [BOS] + [10 + 7 * row + i for i in range(2 + 2 * row)]  # rows of different lengths


DEFAULT_AFTER = [40, 41, 42]


def frame_times(t: int, fps: float = 2.0) -> list[float]:
    """Qwen3-VL processor timestamps of a video's ``t`` temporal groups: frames ``0 .. 2t-1`` at ``fps``, each
    group at the mean time of its first and last frame (``Qwen3VLProcessor._calculate_timestamps``)."""
    return [(g * TEMPORAL_PATCH + (g + 1) * TEMPORAL_PATCH - 1) / 2 / fps for g in range(t)]


def timestamp_ids(seconds: float) -> list[int]:
    """Text ids of Qwen3-VL's ``f"<{seconds:.1f} seconds>"``: ``<``, the digits, ``.``, the tenth, `` seconds>``."""
    whole, tenth = f"{seconds:.1f}".split(".")
    return [TIME_OPEN, *(TIME_DIGIT0 + int(d) for d in whole), TIME_DOT, TIME_DIGIT0 + int(tenth), TIME_CLOSE]


def visual_item_ids(grid: tuple[int, ...], arch: str = "qwen2-vl", fps: float = 2.0) -> list[int]:
    """Prompt ids of one image ``(h, w)`` or video ``(t, h, w)`` (patch grid) as the arch's processor writes it.

    Qwen2-VL / 2.5-VL, and Qwen3-VL / Qwen3.5 images: ``<vision_start> pad * n <vision_end>``. Qwen3-VL / Qwen3.5
    videos: per temporal group (frame) ``g``, the timestamp text ``<t_g seconds>`` then ``<vision_start> video_pad *
    (h w / 4) <vision_end>`` (so ``get_rope_index`` sees each frame as its own span, with ``t = 1``).
    """
    if len(grid) == 3 and arch in (QWEN3_ARCH, QWEN35_ARCH):
        t, h, w = grid
        frame = [VISION_START] + [VIDEO_TOKEN] * (h * w // (MERGE * MERGE)) + [VISION_END]
        return [i for s in frame_times(t, fps) for i in timestamp_ids(s) + frame]
    pad = VIDEO_TOKEN if len(grid) == 3 else IMAGE_TOKEN
    return [VISION_START] + [pad] * visual_tokens(grid) + [VISION_END]


def multimodal_inputs(rows: list[list[tuple[int, ...]]], arch: str = "qwen2-vl",
                      before: list[list[int]] | None = None, after: list[list[int]] | None = None,
                      seed: int = 0, fps: float = 2.0) -> dict[str, torch.Tensor]:
    """Processor-style, left-padded inputs for ``model(**inputs)`` / ``model.generate(**inputs)``.

    ``rows[b]`` lists the visual items of prompt ``b`` in order: ``(h, w)`` is an image, ``(t, h, w)``
    a video (``t`` temporal groups = ``2t`` frames); sizes are in patches, ``h`` and ``w`` even.
    Prompt ``b`` is ``before[b]``, then per item ``<vision_start> pad*n <vision_end>`` (items separated by
    one text token), then ``after[b]``; on ``"qwen3-vl"`` and ``"qwen3.5"`` a video is one such span per temporal
    group, each after its timestamp text (:func:`visual_item_ids`). Images go to ``pixel_values`` / ``image_grid_thw``,
    videos to ``pixel_values_videos`` / ``video_grid_thw`` (plus ``second_per_grid_ts = 2 / fps`` for
    Qwen2.5-VL), each in prompt order, row-major, like the HF processor.
    """
    if arch not in ALL_ARCHS + HYBRID_ARCHS:
        raise ValueError(f"unknown arch {arch!r}, expected one of {ALL_ARCHS + HYBRID_ARCHS}")
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    images, image_grids, videos, video_grids = [], [], [], []
    for b, items in enumerate(rows):
        ids = list(before[b]) if before is not None else _default_before(b)
        for i, grid in enumerate(items):
            if i:
                ids.append(30 + i)
            is_video = len(grid) == 3
            t, h, w = grid if is_video else (1, *grid)
            if h % MERGE or w % MERGE or t < 1:
                raise ValueError(f"bad grid {grid}: h and w must be multiples of {MERGE}")
            if is_video:
                frames = torch.randn(t * TEMPORAL_PATCH, CHANNELS, h * PATCH, w * PATCH, generator=gen)
                videos.append(patchify(frames))
                video_grids.append([t, h, w])
            else:
                image = torch.randn(1, CHANNELS, h * PATCH, w * PATCH, generator=gen)
                images.append(patchify(image.expand(TEMPORAL_PATCH, -1, -1, -1)))
                image_grids.append([1, h, w])
            ids += visual_item_ids(grid, arch, fps)
        ids += list(after[b]) if after is not None else DEFAULT_AFTER
        prompts.append(torch.tensor(ids))
    input_ids, attention_mask = left_pad(prompts)
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": token_types(input_ids)}
    if images:
        out["pixel_values"] = torch.cat(images)
        out["image_grid_thw"] = torch.tensor(image_grids)
    if videos:
        out["pixel_values_videos"] = torch.cat(videos)
        out["video_grid_thw"] = torch.tensor(video_grids)
        if arch == "qwen2.5-vl":
            out["second_per_grid_ts"] = torch.full((len(videos),), TEMPORAL_PATCH / fps)
    return out


def _rows(grids: list) -> list[list[tuple[int, ...]]]:
    return [list(g) if isinstance(g, list) else [tuple(g)] for g in grids]


def image_inputs(grids: list, arch: str = "qwen2-vl", before: list[list[int]] | None = None,
                 after: list[list[int]] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """One prompt per entry of ``grids``: an ``(h, w)`` patch grid (one image) or a list of them (several)."""
    return multimodal_inputs(_rows(grids), arch, before, after, seed)


def video_inputs(grids: list, arch: str = "qwen2-vl", before: list[list[int]] | None = None,
                 after: list[list[int]] | None = None, seed: int = 0, fps: float = 2.0) -> dict[str, torch.Tensor]:
    """One prompt per entry of ``grids``: a ``(t, h, w)`` video grid or a list of them (Qwen3-VL, Qwen3.5:
    timestamped per-frame spans)."""
    return multimodal_inputs(_rows(grids), arch, before, after, seed, fps)


def text_inputs(prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """Left-padded text-only inputs (``input_ids``, ``attention_mask``, ``mm_token_type_ids`` all 0)."""
    input_ids, attention_mask = left_pad([torch.tensor(p) for p in prompts])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": token_types(input_ids)}


def prompt_ids(length: int, seed: int = 0) -> list[int]:
    """A random text prompt of ``length`` tokens starting with BOS (ids 3..294)."""
    gen = torch.Generator().manual_seed(seed)
    return [BOS] + torch.randint(3, VISION_START, (length - 1,), generator=gen).tolist()


def left_pad(prompts: list[torch.Tensor], pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """HF-style left padding: ``input_ids [B, S]`` and ``attention_mask [B, S]``."""
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - p.numel():] = p
        mask[row, width - p.numel():] = 1
    return ids, mask


def token_types(input_ids: torch.Tensor) -> torch.Tensor:
    """``mm_token_type_ids``: 0 text (incl. vision start/end and padding), 1 image pad, 2 video pad."""
    return (input_ids == IMAGE_TOKEN).long() + 2 * (input_ids == VIDEO_TOKEN).long()


def select_row(inputs: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """Batch-1 inputs of prompt ``row`` of a batch (padding stripped, its own images/videos only)."""
    valid = inputs["attention_mask"][row].bool()
    ids = inputs["input_ids"][row][valid][None]
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
           "mm_token_type_ids": inputs["mm_token_type_ids"][row][valid][None]}
    for token, pix, thw in ((IMAGE_TOKEN, "pixel_values", "image_grid_thw"),
                            (VIDEO_TOKEN, "pixel_values_videos", "video_grid_thw")):
        if thw not in inputs:
            continue
        grids = inputs[thw]
        per_item = (grids.prod(-1) // (MERGE * MERGE)).tolist()
        counts = (inputs["input_ids"] == token).sum(-1).tolist()  # visual tokens per row
        first, seen = 0, 0
        while seen < sum(counts[:row]):
            seen += per_item[first]
            first += 1
        last, seen = first, 0
        while seen < counts[row]:
            seen += per_item[last]
            last += 1
        if last == first:
            continue
        patches = grids.prod(-1)
        start = int(patches[:first].sum())
        out[pix] = inputs[pix][start:start + int(patches[first:last].sum())]
        out[thw] = grids[first:last]
        if token == VIDEO_TOKEN and "second_per_grid_ts" in inputs:
            out["second_per_grid_ts"] = inputs["second_per_grid_ts"][first:last]
    return out


# -- comparing the package's model with transformers' and with the oracle ---------------------------------

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def ours_args(inputs: dict) -> tuple[list[torch.Tensor], dict]:
    """Unpadded prompts and the vision inputs, as the package's ``generate`` takes them."""
    prompts = [ids[mask.bool()] for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"])]
    return prompts, {k: inputs[k] for k in VISION_KEYS if k in inputs}


def hf_generate(hf, inputs: dict, new: int) -> list[list[int]]:
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[:, inputs["input_ids"].shape[1]:].tolist()


def pruned_generate(hf, inputs: dict, policy, new: int):
    """transformers' own generate with ``policy`` enabled: the new tokens and the prefill's trace."""
    from v2drop_kernels.integrations.transformers import enable_pruning

    handle = enable_pruning(hf, policy)
    try:
        return hf_generate(hf, inputs, new), handle.trace
    finally:
        handle.disable()


def visual_seen(positions: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """The visual prompt indices among the entries of one cache row (``-1``: padding or a hole)."""
    entries = positions[positions >= 0]
    return entries[(prompt[entries] == IMAGE_TOKEN) | (prompt[entries] == VIDEO_TOKEN)]


def assert_transformers_keeps_the_package_tokens(hf, ours, inputs: dict, make) -> None:
    """Pruned by ``make()``, transformers' generate (through ``enable_pruning``) gives the package
    model's tokens and per-layer counts, and every layer of its cache holds the KV of the same prompt
    tokens (column = prompt index + the row's left padding)."""
    from v2drop_kernels.integrations.transformers import enable_pruning

    handle = enable_pruning(hf, make())
    try:
        got = hf_generate(hf, inputs, 3)
        columns, trace = handle.layer_columns(), handle.trace
    finally:
        handle.disable()
    prompts, vision = ours_args(inputs)
    expected = ours.generate(prompts, **vision, max_new_tokens=3, policy=make())
    assert got == expected.tokens.tolist()
    assert trace.visual_per_layer == expected.trace.visual_per_layer
    pad = (inputs["attention_mask"] == 0).sum(1)
    kept_somewhere = False
    for layer, (cols, positions) in enumerate(zip(columns, expected.layer_positions)):
        for b in range(len(prompts)):
            got = cols[b][cols[b] >= pad[b]] - pad[b]
            got = got[got < prompts[b].numel()]  # prompt entries only (the decode steps' columns come after)
            want = positions[b][positions[b] >= 0]
            assert torch.equal(got, want), (layer, b)
            kept_somewhere |= want.numel() < prompts[b].numel()
    assert kept_somewhere  # pruning is on


def assert_kept_like_the_oracle(hf, ours, inputs: dict, make, oracle_args) -> None:
    """Pruned by ``make()``, every layer of the package model's KV cache holds, row by row, exactly
    the tokens the oracle (``oracle_args``: its policy, layers, keep) lets that layer see, and the
    last prompt token's logits equal the oracle's (1e-4)."""
    from oracle import oracle_prefill

    prompts, vision = ours_args(inputs)
    out = ours.generate(prompts, **vision, max_new_tokens=1, policy=make())
    for row, prompt in enumerate(prompts):
        oracle = oracle_prefill(hf, select_row(inputs, row), *oracle_args)
        for layer, (entries, kept, seen) in enumerate(zip(out.layer_positions, oracle.kept, oracle.seen)):
            assert torch.equal(entries[row][entries[row] >= 0], seen), (row, layer)  # the KV cache holds the survivors only
            assert torch.equal(visual_seen(entries[row], prompt), kept), (row, layer)
        torch.testing.assert_close(out.prefill_logits[row], oracle.last_logits, atol=1e-4, rtol=0)
    if len(prompts) == 1:
        attention = ours.cfg.text.attention_layers  # a linear-attention layer keeps no KV entries
        assert out.cache_lengths == [len(s) if i in attention else 0 for i, s in enumerate(oracle.seen)]
