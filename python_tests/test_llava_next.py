"""LLaVA-NeXT (anyres tiles, image_newline): parity with transformers' LlavaNextForConditionalGeneration,
pruned generation through enable_pruning, the kept sets against the reference rule and against an
independent plain-torch implementation of the published rules (oracle.py), loading."""

from __future__ import annotations

import pytest
import torch

from model_helpers import (SMALL_POLICIES, Recorder, assert_generate_matches_transformers, assert_prunes_like_the_oracle,
                           assert_transformers_prunes_like, assert_v2drop_keeps_the_reference_choice, save_three_layouts,
                           tile_pixels)

pytest.importorskip("transformers")
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig,  # noqa: E402
                          LlavaNextForConditionalGeneration)

from v2drop_kernels.models import (LlavaNext, PyramidDrop, V2Drop, llava_next_from_transformers,  # noqa: E402
                                   load_model, random_llava, tiny_llava_next_config)
from v2drop_kernels.models.llava_next import image_token_count, tile_count  # noqa: E402

IMAGE, TILE, LAYERS = 299, 56, 6
GRIDS = [[TILE * h, TILE * w] for h, w in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]  # LLaVA-NeXT's five, at 56 px
# (height, width) of images whose best grids differ: 1×2, 2×1, 2×2, 1×3, 3×1, 1×2 cropped to a square, 1×3 cropped
SIZES = [(100, 200), (200, 100), (120, 120), (60, 170), (170, 60), (56, 56), (90, 200)]


def build_hf(seed: int = 0) -> LlavaNextForConditionalGeneration:
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=TILE, patch_size=14)
    text = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=LAYERS, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=300, max_position_embeddings=1024, initializer_range=0.08,
                       pad_token_id=0, eos_token_id=2, bos_token_id=1)
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, image_grid_pinpoints=GRIDS)
    return LlavaNextForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def hf():
    return build_hf()


@pytest.fixture(scope="module")
def ours(hf):
    return llava_next_from_transformers(hf)


def images(sizes, seed: int = 0) -> dict:
    """What the HF processor gives for images of ``sizes``: ``pixel_values`` and ``image_sizes``."""
    return tile_pixels([tile_count(build_cfg(), s) for s in sizes], sizes, TILE, seed)


_CFG = []


def build_cfg():
    if not _CFG:
        from v2drop_kernels.models import LlavaNextConfig as Ours

        _CFG.append(Ours.from_hf(build_hf().config.to_dict()))
    return _CFG[0]


def prompt(before, sizes, after) -> torch.Tensor:
    """Text, then each image's tokens (separated by one text token), then text."""
    parts = [torch.tensor(before)]
    for i, size in enumerate(sizes):
        parts.append(torch.full((image_token_count(build_cfg(), size),), IMAGE))
        if i + 1 < len(sizes):
            parts.append(torch.tensor([11 + i]))
    parts.append(torch.tensor(after))
    return torch.cat(parts)


# batches of three: the same image-token count per row (52: grids 1×2 and 1×3), and different counts
EQUAL = ([prompt([1, 5, 6], [SIZES[0]], [7, 8, 9]), prompt([1, 21, 22, 23, 24], [SIZES[6]], [30]),
          prompt([1], [SIZES[0]], [4, 4, 5, 6, 7])], [SIZES[0], SIZES[6], SIZES[0]])
UNEQUAL = ([prompt([1, 5], [SIZES[2]], [7, 8]), prompt([1, 9, 9, 4], [SIZES[3], SIZES[1]], [3]),
            prompt([1, 3, 3], [SIZES[5]], [6, 6, 7])], [SIZES[2], SIZES[3], SIZES[1], SIZES[5]])


def test_image_token_counts_and_features_are_transformers(hf, ours):
    """The features of every grid equal LlavaNextModel.get_image_features + pack_image_features, and
    image_token_count is their length."""
    visual = images(SIZES, seed=1)
    with torch.no_grad():
        expected = hf.model.get_image_features(**visual).pooler_output
    assert [e.shape[0] for e in expected] == [image_token_count(ours.cfg, s) for s in SIZES]
    assert len({tile_count(ours.cfg, s) for s in SIZES}) == 3 and len({e.shape[0] for e in expected}) >= 6
    torch.testing.assert_close(ours.anyres_features(**visual), torch.cat(expected), atol=1e-5, rtol=0)
    # the used tiles concatenated ([T, 3, H, W]) give the same features
    flat = torch.cat([p[:tile_count(ours.cfg, s)] for p, s in zip(visual["pixel_values"], SIZES)])
    torch.testing.assert_close(ours.anyres_features(flat, visual["image_sizes"]), torch.cat(expected), atol=0, rtol=0)


@pytest.mark.parametrize("size", SIZES[:6])
def test_single_image_greedy_tokens_match_transformers(hf, ours, size):
    assert_generate_matches_transformers(hf, ours, [prompt([1, 5, 6], [size], [7, 8, 9, 10])], images([size], seed=2))


@pytest.mark.parametrize("batch, layouts", [(EQUAL, ("padded", "packed", "auto")), (UNEQUAL, ("packed", "auto"))],
                         ids=["equal-counts", "different-counts"])
def test_batch_greedy_tokens_match_transformers(hf, ours, batch, layouts):
    prompts, sizes = batch
    visual = images(sizes, seed=3)
    assert_generate_matches_transformers(hf, ours, prompts, visual, layouts)
    _, tokens = ours(prompts, **visual, layout="auto")
    assert tokens.packed == (batch is UNEQUAL)
    if batch is UNEQUAL:
        with pytest.raises(ValueError, match="same number of image tokens"):
            ours(prompts, **visual, layout="padded")


POLICIES = SMALL_POLICIES


@pytest.mark.parametrize("batch", [EQUAL, UNEQUAL], ids=["equal-counts", "different-counts"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_transformers_generate_prunes_like_the_package_model(hf, ours, name, batch):
    prompts, sizes = batch
    assert_transformers_prunes_like(hf, ours, prompts, images(sizes, seed=4), POLICIES[name])


@pytest.mark.parametrize("batch, layout", [(EQUAL, "padded"), (EQUAL, "packed"), (UNEQUAL, "packed")],
                         ids=["equal-padded", "equal-packed", "different-packed"])
def test_v2drop_keeps_what_the_reference_chooses(ours, batch, layout):
    prompts, sizes = batch
    policy = Recorder(layers=(2, 4), keep=(0.5, 0.25))
    out = ours.generate(prompts, **images(sizes, seed=5), max_new_tokens=3, policy=policy, layout=layout)
    assert_v2drop_keeps_the_reference_choice(policy, out, [int((p == IMAGE).sum()) for p in prompts])


# (prompts, image sizes): one image at two aspect ratios (grids 1×2 and 2×1), and the batches of three
ORACLE_CASES = {"1x2": ([prompt([1, 5, 6], [SIZES[0]], [7, 8, 9, 10])], [SIZES[0]]),
                "2x1": ([prompt([1, 5, 6], [SIZES[1]], [7, 8, 9, 10])], [SIZES[1]]),
                "equal-counts": EQUAL, "different-counts": UNEQUAL}  # padded, packed


@pytest.mark.parametrize("case", list(ORACLE_CASES))
@pytest.mark.parametrize("name", ["none", *sorted(POLICIES)])
def test_kept_sets_equal_the_oracle(hf, ours, name, case):
    """Every layer's KV cache holds what the oracle's layer sees; last-token logits equal the oracle's."""
    prompts, sizes = ORACLE_CASES[case]
    assert_prunes_like_the_oracle(hf, ours, prompts, images(sizes, seed=9), name)


def test_load_model_reads_both_key_layouts(tmp_path, hf, ours):
    """A saved LlavaNextForConditionalGeneration (llava-hf's layout: language_model.model.*,
    image_newline) loads by its model_type; so do the model.* layout of transformers 4.52+ and the
    hub checkpoints' vision_tower.vision_model.* names."""
    state, renamed, hub = save_three_layouts(hf, tmp_path)
    loaded = load_model(tmp_path / "a")
    assert isinstance(loaded, LlavaNext) and loaded.v2drop_schedule == "llava-1.5"
    assert "image_newline" in state and "language_model.lm_head.weight" in state  # the llava-hf layout
    assert "model.image_newline" in renamed and "model.vision_tower.post_layernorm.weight" in renamed
    prompts, visual = [prompt([1, 5], [SIZES[2]], [7])], images([SIZES[2]], seed=6)
    with torch.no_grad():
        expected = hf(input_ids=prompts[0][None], **visual).logits[0]
    reference_logits = ours(prompts, **visual)[0][0]
    for folder in ("a", "b", "c"):
        logits = load_model(tmp_path / folder)(prompts, **visual)[0][0]
        assert torch.equal(logits, reference_logits), folder
    torch.testing.assert_close(reference_logits, expected, atol=1e-4, rtol=0)


def test_clear_errors(ours):
    visual = images([SIZES[0]])
    good = prompt([1, 5], [SIZES[0]], [7])
    with pytest.raises(ValueError, match="pixel_values needs image_sizes"):
        ours([good], pixel_values=visual["pixel_values"])
    with pytest.raises(ValueError, match="the prompts hold 36 image tokens but the image inputs give 52 features"):
        ours([prompt([1, 5], [SIZES[5]], [7])], **visual)
    with pytest.raises(ValueError, match="no pixel_values"):
        ours([good])
    with pytest.raises(ValueError, match="image_sizes has 2 rows for 1 images"):
        ours([good], pixel_values=visual["pixel_values"], image_sizes=torch.tensor([SIZES[0], SIZES[1]]))
    with pytest.raises(ValueError, match="needs 5 tiles; pixel_values holds 3"):
        ours([good], pixel_values=visual["pixel_values"], image_sizes=torch.tensor([SIZES[2]]))
    with pytest.raises(NotImplementedError, match="'full'"):
        from v2drop_kernels.models import LlavaNextConfig

        LlavaNextConfig.from_hf({**build_hf().config.to_dict(), "vision_feature_select_strategy": "full"})


def test_random_model_runs_the_default_schedules():
    """random_llava on tiny_llava_next_config (32 layers like the 7B): the package's default
    schedules, V²Drop's LLaVA-1.5 one (``v2drop_schedule``) and PyramidDrop's (8, 16, 24, λ = 0.5)."""
    model = random_llava(tiny_llava_next_config(hidden=64))
    assert isinstance(model, LlavaNext) and model.image_newline.abs().sum() > 0
    sizes = [(100, 200), (120, 120)]
    counts = [image_token_count(model.cfg, s) for s in sizes]
    assert counts == [52, 88]  # the same grids as the transformers model's above (56 px tiles, 14 px patches)
    visual = images(sizes, seed=7)
    prompts = [torch.cat([torch.tensor([1, 5]), torch.full((n,), model.cfg.image_token_id), torch.tensor([7])]) for n in counts]
    v2 = model.generate(prompts, **visual, max_new_tokens=2, policy=V2Drop(schedule=model.v2drop_schedule))
    assert [v2.trace.visual_per_layer[i] for i in (2, 3, 17, 22)] == [counts, [26, 44], [13, 22], [1, 1]]
    pd = model.generate(prompts, **visual, max_new_tokens=2, policy=PyramidDrop())
    assert [pd.trace.visual_per_layer[i] for i in (7, 8, 16, 24)] == [counts, [26, 44], [13, 22], [6, 11]]
