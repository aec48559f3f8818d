"""LLaVA-OneVision (SigLIP, Qwen2, anyres_max tiles, videos): parity with transformers'
LlavaOnevisionForConditionalGeneration, pruned generation through enable_pruning, the kept sets
against the reference rule and against an independent plain-torch implementation of the published
rules (oracle.py), loading."""

from __future__ import annotations

import pytest
import torch

from model_helpers import (SMALL_POLICIES, Recorder, assert_generate_matches_transformers, assert_prunes_like_the_oracle,
                           assert_transformers_prunes_like, assert_v2drop_keeps_the_reference_choice, hf_generate,
                           save_three_layouts, tile_pixels)

pytest.importorskip("transformers")
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,  # noqa: E402
                          SiglipVisionConfig)

from v2drop_kernels.models import (LlavaOnevision, V2Drop, llava_onevision_from_transformers,  # noqa: E402
                                   load_model, random_llava, tiny_llava_onevision_config)
from v2drop_kernels.models.llava_onevision import image_tiles, image_token_count, video_token_count  # noqa: E402

IMAGE, VIDEO, TILE, LAYERS, FRAMES = 298, 299, 28, 6, 4
GRIDS = [[TILE * h, TILE * w] for h in range(1, 4) for w in range(1, 4)]  # 1 to 3 × 1 to 3 tiles of 28 px
# (height, width): grids 1×2 (as is), 3×2, 3×3 (shrunk by anyres_max_2), 1×1, 1×3 and 3×1 (shrunk), 2×3 cropped
SIZES = [(50, 100), (100, 50), (60, 60), (28, 28), (40, 160), (160, 40), (56, 84)]


def build_hf(seed: int = 0) -> LlavaOnevisionForConditionalGeneration:
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=TILE, patch_size=7, vision_use_head=False)  # 16 patches a tile
    text = Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=LAYERS, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=300, max_position_embeddings=1024, initializer_range=0.08,
                       pad_token_id=0, eos_token_id=2, bos_token_id=1,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, video_token_id=VIDEO,
                               image_grid_pinpoints=GRIDS, vision_aspect_ratio="anyres_max_2")
    return LlavaOnevisionForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def hf():
    return build_hf()


@pytest.fixture(scope="module")
def ours(hf):
    return llava_onevision_from_transformers(hf)


_CFG = []


def build_cfg():
    if not _CFG:
        from v2drop_kernels.models import LlavaOnevisionConfig as Ours

        _CFG.append(Ours.from_hf(build_hf().config.to_dict()))
    return _CFG[0]


def images(sizes, seed: int = 0) -> dict:
    """What the HF processor gives for images of ``sizes``: ``pixel_values`` and ``image_sizes``."""
    return tile_pixels(image_tiles(build_cfg(), sizes), sizes, TILE, seed)


def videos(n: int, seed: int = 0) -> dict:
    return {"pixel_values_videos": torch.randn(n, FRAMES, 3, TILE, TILE, generator=torch.Generator().manual_seed(seed))}


def prompt(before, items, after) -> torch.Tensor:
    """Text, then each item's tokens (an image size, or "video"; separated by one text token), then text."""
    parts = [torch.tensor(before)]
    for i, item in enumerate(items):
        if item == "video":
            parts.append(torch.full((video_token_count(build_cfg(), FRAMES),), VIDEO))
        else:
            parts.append(torch.full((image_token_count(build_cfg(), item),), IMAGE))
        if i + 1 < len(items):
            parts.append(torch.tensor([11 + i]))
    parts.append(torch.tensor(after))
    return torch.cat(parts)


# batches of three (prompts, image sizes, videos): the same visual-token count per row (52: grids 1×2
# and 3×1 shrunk), videos only (17 tokens each), and different counts with images and videos mixed
EQUAL = ([prompt([1, 5, 6], [SIZES[0]], [7, 8, 9]), prompt([1, 21, 22, 23, 24], [SIZES[5]], [30]),
          prompt([1], [SIZES[0]], [4, 4, 5, 6, 7])], [SIZES[0], SIZES[5], SIZES[0]], 0)
VIDEOS = ([prompt([1, 5], ["video"], [7, 8]), prompt([1, 9, 9, 4, 3], ["video"], [3]),
           prompt([1, 3], ["video"], [6, 6, 7])], [], 3)
MIXED = ([prompt([1, 5], [SIZES[2]], [7, 8]), prompt([1, 9, 9, 4], ["video", SIZES[3]], [3]),
          prompt([1, 3, 3], ["video"], [6, 6, 7])], [SIZES[2], SIZES[3]], 2)
BATCHES = {"equal-images": EQUAL, "videos": VIDEOS, "mixed-counts": MIXED}


def visual_of(batch, seed: int) -> dict:
    _, sizes, n_videos = batch
    return {**(images(sizes, seed) if sizes else {}), **(videos(n_videos, seed + 100) if n_videos else {})}


def test_features_and_token_counts_are_transformers(hf, ours):
    """Image features of every grid (shrunk or not) equal LlavaOnevisionModel.get_image_features,
    also for a multi-image prompt's untiled images (batch_num_images); video features equal
    get_video_features; the token counts are their lengths."""
    visual = images(SIZES, seed=1)
    with torch.no_grad():
        expected = hf.model.get_image_features(**visual).pooler_output
    assert [e.shape[0] for e in expected] == [image_token_count(ours.cfg, s) for s in SIZES]
    assert len({e.shape[0] for e in expected}) >= 5
    torch.testing.assert_close(ours.anyres_features(**visual), torch.cat(expected), atol=1e-5, rtol=0)
    flat = torch.cat([p[:n] for p, n in zip(visual["pixel_values"], image_tiles(ours.cfg, SIZES))])
    torch.testing.assert_close(ours.anyres_features(flat, visual["image_sizes"]), torch.cat(expected), atol=0, rtol=0)
    per_prompt = torch.tensor([1, 2, 4])  # the first image alone, then two prompts of several images
    with torch.no_grad():
        expected = hf.model.get_image_features(**visual, batch_num_images=per_prompt).pooler_output
    assert [e.shape[0] for e in expected] == [image_token_count(ours.cfg, s, tiled=i == 0) for i, s in enumerate(SIZES)]
    torch.testing.assert_close(ours.anyres_features(**visual, batch_num_images=per_prompt), torch.cat(expected), atol=1e-5, rtol=0)
    clip = videos(2, seed=1)
    with torch.no_grad():
        expected = hf.model.get_video_features(**clip).pooler_output
    assert expected.shape[1] == video_token_count(ours.cfg, FRAMES) == FRAMES * 4 + 1
    torch.testing.assert_close(ours.video_features(**clip), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("item", SIZES[:6] + ["video"], ids=[f"{h}x{w}" for h, w in SIZES[:6]] + ["video"])
def test_single_item_greedy_tokens_match_transformers(hf, ours, item):
    prompts = [prompt([1, 5, 6], [item], [7, 8, 9, 10])]
    visual = videos(1, seed=2) if item == "video" else images([item], seed=2)
    assert_generate_matches_transformers(hf, ours, prompts, visual)


def test_multi_image_prompt_matches_transformers(hf, ours):
    """batch_num_images (the processor gives it): a prompt of two images has them untiled."""
    sizes = [SIZES[0], SIZES[2]]
    counts = [image_token_count(ours.cfg, s, tiled=False) for s in sizes]
    prompts = [torch.cat([torch.tensor([1, 5]), torch.full((counts[0],), IMAGE), torch.tensor([9]),
                          torch.full((counts[1],), IMAGE), torch.tensor([7])])]
    visual = {**images(sizes, seed=8), "batch_num_images": torch.tensor([2])}
    expected, _ = hf_generate(hf, prompts, visual, 6)
    assert ours.generate(prompts, **visual, max_new_tokens=6).tokens.tolist() == expected.tolist()


@pytest.mark.parametrize("name, layouts", [("equal-images", ("padded", "packed", "auto")), ("videos", ("padded", "packed")),
                                           ("mixed-counts", ("packed", "auto"))])
def test_batch_greedy_tokens_match_transformers(hf, ours, name, layouts):
    batch = BATCHES[name]
    prompts, visual = batch[0], visual_of(batch, seed=3)
    assert_generate_matches_transformers(hf, ours, prompts, visual, layouts)
    _, tokens = ours(prompts, **visual, layout="auto")
    assert tokens.packed == (batch is MIXED)
    if batch is MIXED:
        with pytest.raises(ValueError, match="same number of visual tokens"):
            ours(prompts, **visual, layout="padded")


POLICIES = SMALL_POLICIES


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_transformers_generate_prunes_like_the_package_model(hf, ours, name, batch):
    batch = BATCHES[batch]
    assert_transformers_prunes_like(hf, ours, batch[0], visual_of(batch, seed=4), POLICIES[name])


@pytest.mark.parametrize("name, layout", [("equal-images", "padded"), ("videos", "padded"), ("videos", "packed"),
                                          ("mixed-counts", "packed")])
def test_v2drop_keeps_what_the_reference_chooses(ours, name, layout):
    batch = BATCHES[name]
    policy = Recorder(layers=(2, 4), keep=(0.5, 0.25))
    out = ours.generate(batch[0], **visual_of(batch, seed=5), max_new_tokens=3, policy=policy, layout=layout)
    assert_v2drop_keeps_the_reference_choice(policy, out, [int(((p == IMAGE) | (p == VIDEO)).sum()) for p in batch[0]])


# (prompts, image sizes, videos): an image alone, a video alone, and the batches of three
ORACLE_CASES = {"image": ([prompt([1, 5, 6], [SIZES[0]], [7, 8, 9, 10])], [SIZES[0]], 0),
                "video": ([prompt([1, 5, 6], ["video"], [7, 8, 9, 10])], [], 1), **BATCHES}


@pytest.mark.parametrize("case", list(ORACLE_CASES))
@pytest.mark.parametrize("name", ["none", *sorted(POLICIES)])
def test_kept_sets_equal_the_oracle(hf, ours, name, case):
    """Every layer's KV cache holds what the oracle's layer sees; last-token logits equal the oracle's."""
    batch = ORACLE_CASES[case]
    assert_prunes_like_the_oracle(hf, ours, batch[0], visual_of(batch, seed=9), name)


def test_load_model_reads_both_key_layouts(tmp_path, hf, ours):
    """A saved LlavaOnevisionForConditionalGeneration (llava-hf's layout: language_model.model.*,
    image_newline) loads by its model_type; so do the model.* layout of transformers 4.52+ and the
    hub checkpoints' vision_tower.vision_model.* names (SigLIP)."""
    state, renamed, hub = save_three_layouts(hf, tmp_path)
    loaded = load_model(tmp_path / "a")
    assert isinstance(loaded, LlavaOnevision) and loaded.v2drop_schedule == "llava-ov"
    assert "image_newline" in state and "language_model.lm_head.weight" in state  # the llava-hf layout
    assert "model.image_newline" in renamed and "model.language_model.layers.0.self_attn.q_proj.bias" in renamed
    assert "vision_tower.vision_model.post_layernorm.weight" in hub
    prompts = [prompt([1, 5], [SIZES[2]], [7]), prompt([1, 5, 6], ["video"], [7])]
    visual = {**images([SIZES[2]], seed=6), **videos(1, seed=6)}
    with torch.no_grad():
        expected = [hf(input_ids=p[None], **v).logits[0] for p, v in
                    ((prompts[0], images([SIZES[2]], seed=6)), (prompts[1], videos(1, seed=6)))]
    reference_logits, _ = ours(prompts, **visual, layout="packed")
    for folder in ("a", "b", "c"):
        logits, _ = load_model(tmp_path / folder)(prompts, **visual, layout="packed")
        assert torch.equal(logits, reference_logits), folder
    torch.testing.assert_close(reference_logits, torch.cat(expected), atol=1e-4, rtol=0)


def test_clear_errors(ours):
    visual = images([SIZES[0]])
    good = prompt([1, 5], [SIZES[0]], [7])
    with pytest.raises(ValueError, match="pixel_values needs image_sizes"):
        ours([good], pixel_values=visual["pixel_values"])
    with pytest.raises(ValueError, match="the prompts hold 36 image tokens but the image inputs give 52 features"):
        ours([prompt([1, 5], [SIZES[3]], [7])], **visual)
    with pytest.raises(ValueError, match="no pixel_values_videos"):
        ours([prompt([1, 5], ["video"], [7])])
    with pytest.raises(ValueError, match="the prompts hold 17 video tokens but the video inputs give 34 features"):
        ours([prompt([1, 5], ["video"], [7])], **videos(2))
    with pytest.raises(ValueError, match=r"expected \[1, >= 7, 3, H, W\]"):
        ours([good], pixel_values=visual["pixel_values"][:, :3], image_sizes=visual["image_sizes"])
    with pytest.raises(ValueError, match="batch_num_images adds up to 2 images"):
        ours([good], **visual, batch_num_images=torch.tensor([2]))
    with pytest.raises(ValueError, match=r"expected \[N, frames, 3, H, W\]"):
        ours([good], **visual, pixel_values_videos=torch.zeros(FRAMES, 3, TILE, TILE))
    from v2drop_kernels.models import LlavaOnevisionConfig

    config = build_hf().config.to_dict()
    with pytest.raises(NotImplementedError, match="'full'"):
        LlavaOnevisionConfig.from_hf({**config, "vision_feature_select_strategy": "default"})
    with pytest.raises(NotImplementedError, match="anyres_max_N"):
        LlavaOnevisionConfig.from_hf({**config, "vision_aspect_ratio": "anyres"})
    with pytest.raises(NotImplementedError, match="qwen2 decoders"):
        LlavaOnevisionConfig.from_hf({**config, "text_config": {**config["text_config"], "model_type": "llama"}})


def test_random_model_runs_the_default_schedule():
    """random_llava on tiny_llava_onevision_config (28 layers like the 7B): ``v2drop_schedule``
    ("llava-ov", the paper's video setting: before layers 3, 16, 22 keep 25 % and then 5 % of the
    video's tokens, then one) equals the same written as percentages and as ratios of what is left
    (0.25, 0.2, 0.0: ⌊⌊n/4⌋/5⌋ = ⌊n/20⌋), and is not "qwen2-vl" (25 %, then 5 % *of what is left*)."""
    model = random_llava(tiny_llava_onevision_config(hidden=64))
    assert isinstance(model, LlavaOnevision) and model.image_newline.abs().sum() > 0
    assert model.vision_tower.config.model_type == "siglip_vision_model"
    frames = 20
    count = video_token_count(model.cfg, frames)
    assert count == 81  # 4 pooled tokens a frame, one newline
    clip = torch.randn(1, frames, 3, 56, 56, generator=torch.Generator().manual_seed(9))
    prompts = [torch.cat([torch.tensor([1, 5]), torch.full((count,), model.cfg.video_token_id), torch.tensor([7])])]
    runs = {name: model.generate(prompts, pixel_values_videos=clip, max_new_tokens=2, policy=policy).trace.visual_per_layer
            for name, policy in (("named", V2Drop(schedule=model.v2drop_schedule)),
                                 ("percent", V2Drop(layers=(3, 16, 22), keep=("25%", "5%", 0.0))),
                                 ("left", V2Drop(layers=(3, 16, 22), keep=(0.25, 0.2, 0.0))),
                                 ("qwen2-vl", V2Drop(schedule="qwen2-vl")))}
    assert [runs["named"][i] for i in (2, 3, 15, 16, 21, 22)] == [[81], [20], [20], [4], [4], [1]]  # 25 % and 5 % of 81
    assert runs["percent"] == runs["left"] == runs["named"]
    assert [runs["qwen2-vl"][i] for i in (3, 16, 22)] == [[20], [1], [1]]
