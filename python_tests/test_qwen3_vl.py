"""Qwen3-VL's own parts: DeepStack under pruning, interleaved M-RoPE, and their errors.

The schedules here drop before or inside the layers after which DeepStack adds the tower's features
(layers 0 and 1 of the tiny model): FastV with K = 1, V²Drop and PyramidDrop at layer 1. The kept
sets, planes and last logits equal the plain-torch oracle's (``oracle.py``), and transformers' own
generate through ``enable_pruning`` equals the package's model in tokens and kept tokens per layer.
Parity with transformers unpruned, and the Qwen2-VL schedules, run in test_qwen_vl.py for all three
architectures.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from qwen_helpers import (DEEPSTACK_LEVELS, QWEN3_ARCH, VIDEO_TOKEN, assert_kept_like_the_oracle,  # noqa: E402
                          assert_transformers_keeps_the_package_tokens, hf_generate, multimodal_inputs, ours_args,
                          save_tiny_qwen_vl, tiny_qwen_vl)

from v2drop_kernels.models import (FastV, PyramidDrop, Qwen3VL, V2Drop, load_model, qwen_vl_from_transformers,  # noqa: E402
                                   random_qwen_vl, tiny_qwen_config)
from v2drop_kernels.models.llama import Rotary  # noqa: E402

CASES = {  # visual items per row: (h, w) an image, (t, h, w) a video, in patches
    "image": [[(8, 8)]],
    "video": [[(3, 4, 4)]],  # three frames, a timestamp before each
    "image+video": [[(4, 4), (2, 4, 4)]],
    "batch3-packed": [[(8, 8)], [(4, 8)], [(8, 4), (2, 4, 4)]],  # different counts per row
    "batch3-padded": [[(4, 8)], [(2, 4, 4)], [(4, 8)]],  # the same count per row
    "batch3-one-text": [[(8, 4)], [], [(2, 4, 4)]],  # a row without visual tokens (DeepStack adds it nothing)
}
# drops before or inside a DeepStack layer (DeepStack adds after layers 0 and 1)
POLICIES = {
    "fastv-k1": (lambda: FastV(k=1, keep=0.5), ("fastv", [1], [0.5])),
    "v2drop-1-3": (lambda: V2Drop(layers=(1, 3), keep=(0.5, 0.25)), ("v2drop", [1, 3], [0.5, 0.25])),
    "pdrop-1-3": (lambda: PyramidDrop(layers=(1, 3), keep=(0.5, 0.5)), ("pdrop", [1, 3], [0.5, 0.5])),
}


@pytest.fixture(scope="module")
def models():
    hf = tiny_qwen_vl(QWEN3_ARCH, seed=5)
    return hf, qwen_vl_from_transformers(hf)


def test_the_tiny_model_has_what_this_file_tests(models):
    hf, ours = models
    assert isinstance(ours, Qwen3VL) and ours.cfg.deepstack_levels == DEEPSTACK_LEVELS == 2
    assert ours.cfg.text.qk_norm and ours.cfg.text.mrope_interleaved
    assert ours.language_model.layers[0].self_attn.q_norm.weight.data_ptr() == \
        hf.model.language_model.layers[0].self_attn.q_norm.weight.data_ptr()  # the same tensors


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_drops_at_deepstack_layers_keep_what_the_oracle_keeps(models, name, case):
    hf, ours = models
    assert_kept_like_the_oracle(hf, ours, multimodal_inputs(CASES[case], arch=QWEN3_ARCH, seed=1), *POLICIES[name])


@pytest.mark.parametrize("case", ["image+video", "batch3-packed", "batch3-padded", "batch3-one-text"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_transformers_generate_prunes_like_the_package_model(models, name, case):
    hf, ours = models
    assert_transformers_keeps_the_package_tokens(hf, ours, multimodal_inputs(CASES[case], arch=QWEN3_ARCH, seed=2),
                                                 POLICIES[name][0])


def test_deepstack_rows_follow_their_tokens(models):
    """The DeepStack features are what makes the match: without them (precomputed features with
    zero DeepStack rows) the prefill logits move; with them in a shuffled order, too."""
    hf, ours = models
    inputs = multimodal_inputs(CASES["image"], arch=QWEN3_ARCH, seed=3)
    prompts, vision = ours_args(inputs)
    features, deepstack = ours.encode(vision["pixel_values"], vision["image_grid_thw"])
    grid = vision["image_grid_thw"]
    policy = FastV(k=1, keep=0.5)
    logits, _ = ours(prompts, **vision, policy=policy)
    same, _ = ours(prompts, image_features=features, image_deepstack=deepstack, image_grid_thw=grid, policy=policy)
    torch.testing.assert_close(same, logits, atol=0, rtol=0)
    zero, _ = ours(prompts, image_features=features, image_deepstack=torch.zeros_like(deepstack), image_grid_thw=grid,
                   policy=policy)
    shuffled, _ = ours(prompts, image_features=features, image_deepstack=deepstack.flip(1), image_grid_thw=grid,
                       policy=policy)
    assert (zero[:, -1] - logits[:, -1]).abs().max() > 1e-3 and (shuffled[:, -1] - logits[:, -1]).abs().max() > 1e-3


def test_interleaved_rope_equals_transformers(models):
    hf, ours = models
    rotary = hf.model.language_model.rotary_emb
    planes = torch.randint(0, 50, (3, 2, 7))
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), planes)
    ours_cos, ours_sin = Rotary(ours.cfg.text)(planes, torch.float32, planes=True)
    torch.testing.assert_close(ours_cos, cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_sin, sin, atol=1e-6, rtol=0)


def test_video_positions_step_per_frame_span(models):
    """Each frame of a video is its own span (a timestamp before it): its temporal ids are its
    start, and the text after it continues from start + max(h, w) / merge, as transformers'
    get_rope_index computes them."""
    hf, ours = models
    inputs = multimodal_inputs([[(3, 4, 6)]], arch=QWEN3_ARCH, seed=4)
    with torch.no_grad():
        planes, _ = hf.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], None, inputs["video_grid_thw"],
                                            attention_mask=inputs["attention_mask"])
    prompts, vision = ours_args(inputs)
    features, deepstack = ours.encode(vision["pixel_values_videos"], vision["video_grid_thw"])
    tokens = ours.tokens(prompts, "packed", video_features=features, video_deepstack=deepstack,
                         video_grid_thw=vision["video_grid_thw"])
    assert torch.equal(tokens.position_ids, planes[:, 0])
    spans = (prompts[0] == VIDEO_TOKEN).int().diff().eq(1).sum()
    assert int(spans) == 3


def test_precomputed_features_need_their_deepstack(models):
    hf, ours = models
    inputs = multimodal_inputs(CASES["image"], arch=QWEN3_ARCH, seed=6)
    prompts, vision = ours_args(inputs)
    features, deepstack = ours.encode(vision["pixel_values"], vision["image_grid_thw"])
    with pytest.raises(ValueError, match="image_features need image_deepstack"):
        ours.generate(prompts, image_features=features, image_grid_thw=vision["image_grid_thw"])
    grid = vision["image_grid_thw"]
    with pytest.raises(ValueError, match=r"image_deepstack of shape \(1, 16, 64\): this model adds \[2, tokens, hidden\]"):
        ours.generate(prompts, image_features=features, image_deepstack=deepstack[:1], image_grid_thw=grid)
    with pytest.raises(ValueError, match=r"image_deepstack of shape \(2, 15, 64\): .* each of the image features' 16"):
        ours.generate(prompts, image_features=features, image_deepstack=deepstack[:, 1:], image_grid_thw=grid)
    with pytest.raises(ValueError, match=r"video_deepstack of shape \(2, 16, 64\): .*\(none given\)"):  # a stray one
        ours.generate(prompts, image_features=features, image_deepstack=deepstack, video_deepstack=deepstack,
                      image_grid_thw=grid)
    with pytest.raises(ValueError, match="second_per_grid_ts is a Qwen2.5-VL input"):
        ours.generate(prompts, **vision, second_per_grid_ts=torch.tensor([1.0]))


def test_loads_a_checkpoint_folder(tmp_path, models):
    folder = save_tiny_qwen_vl(tmp_path / "qwen3", QWEN3_ARCH, seed=7)
    from transformers import Qwen3VLForConditionalGeneration

    hf = Qwen3VLForConditionalGeneration.from_pretrained(folder).eval()
    model = load_model(folder)
    assert isinstance(model, Qwen3VL)
    inputs = multimodal_inputs(CASES["image+video"], arch=QWEN3_ARCH, seed=7)
    prompts, vision = ours_args(inputs)
    assert model.generate(prompts, **vision, max_new_tokens=4).tokens.tolist() == hf_generate(hf, inputs, 4)


def test_a_random_28_layer_model_runs_its_default_schedule():
    """No V²Drop schedule is published for Qwen3-VL: the default is the Qwen2-VL port's."""
    model = random_qwen_vl(tiny_qwen_config("qwen3_vl", hidden=64))
    assert isinstance(model, Qwen3VL) and model.v2drop_schedule == "qwen2-vl" and model.cfg.deepstack_levels == 3
    cfg = model.cfg
    grid = torch.tensor([[1, 16, 16]])  # 64 visual tokens
    pix = torch.randn(256, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(8))
    ids = torch.tensor([1, 5, cfg.vision_start_token_id, *[cfg.image_token_id] * 64, cfg.vision_end_token_id, 7])
    out = model.generate([ids], pix, grid, max_new_tokens=2, policy=V2Drop(schedule=model.v2drop_schedule))
    assert [v[0] for v in out.trace.visual_per_layer] == [64] * 3 + [16] * 13 + [1] * 12
